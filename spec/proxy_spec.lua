-- Proxies, through a real one (Debian's tinyproxy on loopback): HTTPS to
-- the fake Graph's TLS listener through CONNECT, Basic proxy
-- authentication, a proxy that refuses and one that is not there (each
-- error says it happened at the proxy, and which), the identity endpoint
-- kept off the proxy, and the environment variables by libcurl's rules
-- (through the command, which reads them as libcurl does).
local support = require "support"
local tinyproxy = require "tinyproxy"
local vpp = require "vpp"

local USER, PASSWORD = "alice", "pr0xy-s3cret"

describe("proxies", function()
  local server, open, guarded, refusing, cli
  setup(function()
    if not tinyproxy.available() then return end
    server = support.start { tokens = 3, tls = true }
    open = tinyproxy.start { connect_ports = { server.tls_port } }
    guarded = tinyproxy.start { connect_ports = { server.tls_port }, user = USER, password = PASSWORD }
    refusing = tinyproxy.start { connect_ports = { 1 } }
    cli = support.install_cli()
  end)
  teardown(function()
    for _, x in ipairs { open, guarded, refusing } do x:stop() end
    if server then server:stop() end
    if cli then cli.remove() end
  end)
  before_each(function()
    if not server then pending("tinyproxy is not installed (Debian: tinyproxy)") end
  end)

  local function client(extra)
    return vpp.new(support.merged({ base_url = server.tls_url, ca_file = server.ca_file, access_token = support.TOKEN,
      rate_limit = false, max_retries = 0 }, extra))
  end

  local function connects(proxy)
    local n = 0
    for _, r in ipairs(proxy:requests()) do
      if r == ("CONNECT 127.0.0.1:%d HTTP/1.1"):format(server.tls_port) then n = n + 1 end
    end
    return n
  end

  it("reaches Graph over HTTPS through the proxy's CONNECT tunnel", function()
    if not server then return end
    local before = connects(open)
    local c = client { proxy = open.url }
    finally(function() c:close() end)
    assert.equal(3, #assert(c:list_tokens()))
    assert.equal(before + 1, connects(open))
    assert.equal(open.url, c:config().proxy)
  end)

  it("authenticates to the proxy with Basic, the password never in an error, a message or config()", function()
    if not server then return end
    local guarded_url = guarded.url:gsub("//", "//" .. USER .. ":" .. PASSWORD .. "@")
    local c = client { proxy = guarded.url }
    local list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.same({ "transport", true, 407 }, { err.kind, err.proxy, err.proxy_status })
    assert.matches("at the proxy " .. guarded.url:gsub("%p", "%%%0"), err.message)
    for _, auth in ipairs { false, "basic", "any" } do
      c = client { proxy = guarded_url, proxy_auth = auth or nil }
      local ok, e = c:list_tokens()
      assert.truthy(ok, tostring(e))
      assert.is_false(support.contains_secret(c:config(), PASSWORD))
      assert.equal(guarded.url, c:config().proxy)
      c:close()
    end
    -- NTLM only: the proxy offers Basic, so no credentials go, and it refuses.
    c = client { proxy = guarded_url, proxy_auth = "ntlm" }
    list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.is_true(err.proxy)
    assert.is_false(support.contains_secret(err, PASSWORD))
    assert.falsy(tostring(err):find(PASSWORD, 1, true))
  end)

  it("a proxy that refuses the tunnel, or is not there: err.proxy, and the proxy named in the message", function()
    if not server then return end
    local c = client { proxy = refusing.url }
    local list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.same({ "transport", true, 403 }, { err.kind, err.proxy, err.proxy_status })
    assert.matches("at the proxy " .. refusing.url:gsub("%p", "%%%0"), tostring(err))
    local port = require("launcher").free_port()
    c = client { proxy = "http://127.0.0.1:" .. port }
    list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.same({ "COULDNT_CONNECT", true }, { err.code, err.proxy })
    assert.matches("at the proxy http://127%.0%.0%.1:" .. port, err.message)
    -- A failure with no proxy in the way says nothing of one.
    c = vpp.new { base_url = "http://127.0.0.1:" .. port, access_token = "t", max_retries = 0 }
    list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.is_nil(err.proxy)
    assert.falsy(err.message:find("proxy", 1, true))
  end)

  it("the managed identity's endpoint never goes through the proxy; Graph does", function()
    if not server then return end
    local before = #refusing:requests()
    local c = vpp.new { managed_identity = true, imds_url = server.url .. "/metadata/identity/oauth2/token",
      base_url = server.tls_url, ca_file = server.ca_file, proxy = refusing.url, rate_limit = false, max_retries = 0 }
    local list, err = c:list_tokens()
    c:close()
    -- The token came (from the metadata endpoint, directly); Graph's request
    -- went to the proxy, which refused it.
    assert.is_nil(list)
    assert.same({ true, 403 }, { err.proxy, err.proxy_status })
    local seen = refusing:requests()
    assert.equal(before + 1, #seen)
    assert.matches("^CONNECT 127%.0%.0%.1:" .. server.tls_port, seen[#seen])
    for _, r in ipairs(seen) do assert.falsy(r:find("metadata", 1, true), r) end
  end)

  it("refuses a setting that is no proxy URL, and a proxy_auth libcurl has no name for", function()
    if not server then return end
    assert.has_error(function() vpp.new { access_token = "t", proxy = "ftp://127.0.0.1:21" } end,
      "vpp: opts.proxy must be a proxy URL: http, https, socks4, socks4a, socks5 or socks5h://host[:port]")
    assert.has_error(function() vpp.new { access_token = "t", proxy = open.url, proxy_auth = "kerberos" } end,
      "vpp: opts.proxy_auth must be basic, ntlm, negotiate or any")
    assert.has_error(function() vpp.new { access_token = "t", proxy = "" } end)
  end)

  describe("the command", function()
    local function run(args, env)
      local e = { GRAPH_ACCESS_TOKEN = support.TOKEN }
      for k, v in pairs(env or {}) do e[k] = v end
      local all = { "--graph-url", server.tls_url, "--ca-file", server.ca_file, "--max-retries", "0" }
      for _, a in ipairs(args) do all[#all + 1] = a end
      return cli.run(all, e)
    end

    it("takes libcurl's environment: https_proxy or HTTPS_PROXY, ALL_PROXY, and NO_PROXY", function()
      if not server then return end
      for _, var in ipairs { "https_proxy", "HTTPS_PROXY", "ALL_PROXY" } do
        local before = connects(open)
        local r = run({ "list" }, { [var] = open.url })
        assert.equal(0, r.code, var .. ": " .. r.err)
        assert.equal(before + 1, connects(open), var)
      end
      for _, no in ipairs { "127.0.0.1", "*", "example.com,127.0.0.1" } do
        local before = connects(open)
        local r = run({ "list" }, { https_proxy = open.url, NO_PROXY = no })
        assert.equal(0, r.code, r.err)
        assert.equal(before, connects(open), "NO_PROXY=" .. no)
      end
      -- HTTP_PROXY (upper case) is for http:// URLs only, and libcurl ignores it.
      local before = connects(open)
      assert.equal(0, run({ "list" }, { HTTP_PROXY = open.url }).code)
      assert.equal(before, connects(open))
      -- A proxy from the environment that refuses: the one line says so.
      local r = run({ "list" }, { https_proxy = refusing.url })
      assert.equal(1, r.code)
      assert.matches("at the proxy " .. refusing.url:gsub("%p", "%%%0"), r.err)
    end)

    it("--proxy and VPP_PROXY; a password on the command line is refused, one in VPP_PROXY is never shown", function()
      if not server then return end
      local before = connects(open)
      assert.equal(0, run({ "--proxy", open.url, "list" }).code)
      assert.equal(before + 1, connects(open))
      local secret_url = guarded.url:gsub("//", "//" .. USER .. ":" .. PASSWORD .. "@")
      local r = run({ "--proxy", secret_url, "list" })
      assert.equal(64, r.code)
      assert.matches("put the URL in VPP_PROXY", r.err)
      r = run({ "-v", "list" }, { VPP_PROXY = secret_url })
      assert.equal(0, r.code, r.err)
      assert.falsy((r.out .. r.err):find(PASSWORD, 1, true))
      r = run({ "-v", "--proxy-auth", "ntlm", "list" }, { VPP_PROXY = secret_url })
      assert.equal(1, r.code)
      assert.matches("at the proxy " .. guarded.url:gsub("%p", "%%%0"), r.err)
      assert.falsy((r.out .. r.err):find(PASSWORD, 1, true))
      r = run({ "--proxy", "ftp://x", "list" })
      assert.equal(64, r.code)
      assert.matches("%-%-proxy %(or VPP_PROXY%) must be a proxy URL", r.err)
    end)
  end)
end)
