-- The engine owns every request: token requests run beside Graph's and get
-- Graph's retries; a throttle holds every write (or read) of the client;
-- URLs that would leak a secret are refused; errors say what happened.
local support = require "support"
local vpp = require "vpp"

local SECRET = "engine-spec-secret"
local TENANT, APP = "contoso.onmicrosoft.com", "22222222-3333-4444-5555-666666666666"

describe("token requests on the engine", function()
  local fx = support.identity_fixture({}, { tenant = TENANT, client_id = APP, client_secret = SECRET })
  setup(fx.start)
  teardown(fx.stop)
  before_each(function()
    fx.fresh()
    fx.server:tokens { support.vpp_token { id = "a" }, support.vpp_token { id = "b" } }
  end)

  local function secret_client(extra)
    return vpp.new(support.merged({ tenant_id = TENANT, client_id = APP, client_secret = SECRET,
      authority = fx.server.url, base_url = fx.server.url, rate_limit = false }, extra))
  end

  it("a slow token endpoint delays no other transfer of a batch", function()
    local c = secret_client()
    assert(c:get_token("a")) -- a token in the cache
    -- "a" is refused with a 401 and needs a new token, which takes 2 s;
    -- "b" answers after 0.3 s with the token it has.
    fx.server:program("a", { { status = 401, error = "InvalidAuthenticationToken" } })
    fx.server:program("b", { { pass = true, delay = 0.3 } })
    fx.server:program("@token", { { pass = true, delay = 2 } })
    local t0, at = support.now(), {}
    local results = c:sync_many({ "a", "b" }, { concurrency = 2, on_result = function(r)
      at[r.id] = support.now() - t0
    end })
    c:close()
    assert.equal(2, results.ok, tostring(results[1].err))
    assert.is_true(at.b < 1.2, "b waited for the token request: " .. at.b .. " s")
    assert.is_true(at.a >= 1.9, "a did not wait for its new token: " .. at.a .. " s")
  end)

  it("retries the token endpoint after a 503, traced without the form", function()
    local traces = {}
    local c = secret_client { on_request = function(i) traces[#traces + 1] = i end }
    fx.server:program("@token", { { status = 503, json = { error = "temporarily_unavailable",
      error_description = "AADSTS50196: busy" }, headers = { ["Retry-After"] = "0.3" } } })
    local t0 = support.now()
    local tok = assert(c:get_token("a"))
    c:close()
    assert.equal("a", tok.id)
    assert.is_true(support.now() - t0 >= 0.28, "the Retry-After was not honoured")
    assert.equal(2, #fx.server:tokenlog())
    assert.same({ true, 503, 1 }, { traces[1].token_request, traces[1].status, traces[1].attempt })
    assert.same({ true, 200, 2 }, { traces[2].token_request, traces[2].status, traces[2].attempt })
    assert.equal(fx.server.url .. "/" .. TENANT .. "/oauth2/v2.0/token", traces[1].url)
    assert.is_nil(traces[3].token_request)
    assert.is_false(support.contains_secret(traces, SECRET))
  end)

  it("retries the metadata endpoint after a 429; its trace has no query", function()
    local traces = {}
    local c = vpp.new { managed_identity = true, imds_url = fx.server.url .. "/metadata/identity/oauth2/token",
      base_url = fx.server.url, rate_limit = false, on_request = function(i) traces[#traces + 1] = i end }
    fx.server:program("@imds", { { status = 429, json = { error = "throttled" }, headers = { ["Retry-After"] = "0.2" } } })
    assert(c:get_token("a"))
    c:close()
    assert.equal(2, #fx.server:tokenlog())
    assert.equal(fx.server.url .. "/metadata/identity/oauth2/token", traces[2].url)
    assert.equal("GET", traces[2].method)
  end)

  it("gives up on the token endpoint after max_retries, every job with the same error", function()
    local c = secret_client { max_retries = 1, max_retry_delay = 0.1 }
    fx.server:program("@token", { { status = 503, json = { error = "temporarily_unavailable" }, times = 2 } })
    local results = c:sync_many({ "a", "b" }, { concurrency = 2 })
    c:close()
    assert.equal(2, results.failed)
    assert.same({ "auth", 503, "temporarily_unavailable" }, { results[1].err.kind, results[1].err.status,
      results[1].err.code })
    assert.equal(tostring(results[1].err), tostring(results[2].err))
    assert.equal(2, #fx.server:tokenlog())
  end)

  it("token requests do not count against the Graph rate limit", function()
    local c = secret_client { rate_limit = { writes = 1, requests = 1, per = 60 } }
    local t0 = support.now()
    assert(c:get_token("a")) -- a token request, then the one Graph request allowed
    c:close()
    assert.is_true(support.now() - t0 < 2, "the Graph request waited for the rate limit")
    assert.equal(1, #fx.server:tokenlog())
  end)

  it("a scheme-less authority means https: the secret never goes out in plain text", function()
    local c = secret_client { authority = "127.0.0.1:" .. fx.server.port, max_retries = 0 }
    assert.equal("https://127.0.0.1:" .. fx.server.port, c:config().authority)
    local tok, err = c:get_token("a")
    c:close()
    assert.is_nil(tok)
    assert.equal("auth", err.kind)
    assert.matches("SSL", err.code)
    assert.same({}, fx.server:tokenlog())
  end)

  it("tostring of an identity platform error is one line", function()
    local c = secret_client { client_secret = "wrong" }
    local _, err = c:get_token("a")
    c:close()
    assert.matches("\r\nTrace ID: ", err.message)
    assert.matches("^vpp: auth 401 invalid_client: client secret: AADSTS7000215: Invalid client secret provided%. Trace ID: ",
      tostring(err))
    assert.is_nil(tostring(err):find("%c"))
  end)

  it("AZURE_AUTHORITY_HOST without a scheme means https too", function()
    local env = { AZURE_CLIENT_SECRET = SECRET, AZURE_TENANT_ID = TENANT, AZURE_CLIENT_ID = APP,
      AZURE_AUTHORITY_HOST = "login.microsoftonline.us" }
    local o = require("vpp.env").settings({}, function(k) return env[k] end)
    assert.equal("https://login.microsoftonline.us", vpp.new(o):config().authority)
  end)
end)

describe("URL settings", function()
  local function new(extra)
    local o = { access_token = "t" }
    for k, v in pairs(extra) do o[k] = v end
    return function() return vpp.new(o) end
  end
  local secret = { tenant_id = "t", client_id = "c", client_secret = "pw" }
  local function with_secret(extra)
    for k, v in pairs(secret) do extra[k] = v end
    extra.access_token = nil
    return function() return vpp.new(extra) end
  end

  it("refuse plain http to another machine, naming the setting", function()
    assert.has_error(new { base_url = "http://graph.example.com" },
      "vpp: opts.base_url must use https (plain http only to localhost, 127.0.0.0/8 or ::1)")
    assert.has_error(with_secret { authority = "http://login.example.com" },
      "vpp: opts.authority must use https (plain http only to localhost, 127.0.0.0/8 or ::1)")
    assert.has_error(function() vpp.new { managed_identity = true, imds_url = "http://10.0.0.1/token" } end,
      "vpp: opts.imds_url must use https (plain http only to localhost, 127.0.0.0/8 or ::1)")
  end)

  it("allow plain http to this machine, and the metadata endpoint's link-local address", function()
    for _, url in ipairs { "http://127.0.0.1:1", "http://127.9.8.7", "http://localhost:8", "http://[::1]:9" } do
      assert.equal(url, new { base_url = url }():config().base_url)
    end
    assert.equal("http://127.0.0.1:5", with_secret { authority = "http://127.0.0.1:5" }():config().authority)
    local c = vpp.new { managed_identity = true, imds_url = "http://169.254.169.254/metadata/identity/oauth2/token" }
    assert.matches("^http://169%.254", c:config().imds_url)
  end)

  it("refuse user info, and never echo it", function()
    local ok, err = pcall(new { base_url = "https://admin:hunter2@graph.microsoft.com" })
    assert.is_false(ok)
    assert.matches("opts.base_url must not contain a user name or password", err)
    assert.not_matches("hunter2", err)
    assert.has_error(with_secret { authority = "https://u:p@login.microsoftonline.com" },
      "vpp: opts.authority must not contain a user name or password")
  end)
end)

describe("throttling", function()
  local f = support.fake_graph({}, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(function()
    f.fresh()
    local list = {}
    for i = 1, 6 do list[i] = support.vpp_token { id = "w" .. i } end
    list[7] = support.vpp_token { id = "r1" }
    f.server:tokens(list)
  end)
  after_each(f.done)

  local function posts()
    local out = {}
    for _, e in ipairs(f.server:log()) do
      if e.method == "POST" then out[#out + 1] = e end
    end
    return out
  end

  it("after a 429 on a write, no other write of the client for Retry-After; reads go on", function()
    local c = support.client(f.server, { rate_limit = false, max_retries = 0 })
    f.server:program("w1", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "2" } } })
    local t0 = support.now()
    local _, err = c:sync_licenses("w1")
    assert.same({ 429, 2 }, { err.status, err.retry_after })
    assert(c:get_token("r1"))
    assert.is_true(support.now() - t0 < 0.8, "the read was held")
    assert(c:sync_licenses("w2"))
    c:close()
    local p = posts()
    assert.equal(2, #p)
    assert.is_true(p[2].at - p[1].at >= 1.9, "a write went out " .. (p[2].at - p[1].at) .. " s after the 429")
  end)

  it("after a 429 on a read, no other read for Retry-After; writes go on", function()
    local c = support.client(f.server, { rate_limit = false, max_retries = 0 })
    f.server:program("r1", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "2" } } })
    local t0 = support.now()
    assert.is_nil(c:get_token("r1"))
    assert(c:sync_licenses("w1"))
    assert.is_true(support.now() - t0 < 0.8, "the write was held")
    assert(c:get_token("w2"))
    c:close()
    local gets = {}
    for _, e in ipairs(f.server:log()) do
      if e.method == "GET" then gets[#gets + 1] = e end
    end
    assert.equal(2, #gets)
    assert.is_true(gets[2].at - gets[1].at >= 1.9, "a read went out " .. (gets[2].at - gets[1].at) .. " s after the 429")
  end)

  it("a batch stops writing to a throttled tenant until Retry-After has passed", function()
    local ids = { "w1", "w2", "w3", "w4", "w5" }
    f.server:program("w1", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "2" } } })
    for i = 2, 5 do f.server:program(ids[i], { { pass = true, delay = 0.3 } }) end
    local results = f.client:sync_many(ids, { concurrency = 2 })
    assert.equal(5, results.ok)
    local p = posts()
    assert.equal(6, #p)
    -- w1 and w2 went out together; w2's slot waited for the hold.
    assert.is_true(p[3].at - p[1].at >= 1.9, "a write went out " .. (p[3].at - p[1].at) .. " s after the 429")
  end)

  it("writes held longer than max_retry_delay end as throttled without being sent", function()
    local c = support.client(f.server, { rate_limit = false, max_retries = 0, max_retry_delay = 5 })
    f.server:program("w1", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "30" } } })
    c:sync_licenses("w1")
    local tok, err = c:sync_licenses("w2")
    c:close()
    assert.is_nil(tok)
    assert.same({ "http", 429, "throttled" }, { err.kind, err.status, err.code })
    assert.is_true(err.retry_after > 25 and err.retry_after <= 30, tostring(err.retry_after))
    assert.equal(1, #posts())
  end)
end)

describe("honest errors", function()
  local f = support.fake_graph({}, { rate_limit = false, max_retries = 0 })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  -- Decoding runs no Lua (json.c): a hook armed as the answer arrives
  -- cannot strike inside it, so its error can never pass for a bad body.
  -- Hooks are per coroutine (but in LuaJIT): this one sees only the call
  -- under test.
  local function with_hook(mask, call)
    local armed = false
    local c = support.client(f.server, { on_request = function() armed = true end })
    f.server:program("big", { { big = 2000000 } })
    local co
    co = coroutine.create(function()
      debug.sethook(function()
        -- LuaJIT's hooks are global: strike only inside the call under test.
        if armed and coroutine.running() == co then
          armed = false
          error("watchdog: out of budget", 0)
        end
      end, mask, 1000)
      return call(c)
    end)
    local results = { coroutine.resume(co) }
    debug.sethook()
    return c, results
  end

  it("a call hook armed as a large body arrives is never turned into a decode error", function()
    local c, r = with_hook("c", function(c) return c:sync_licenses("big") end)
    c:close()
    if r[1] then
      assert.equal("big", r[2] and r[2].id, tostring(r[3]))
    else
      -- Lua 5.1 runs finalizers (C functions: a call) under hooks, inside
      -- any allocation: the hook's error then comes out as raised.
      assert.equal("watchdog: out of budget", r[2])
    end
  end)

  local luajit = type(jit) == "table"
  local propagates = luajit and pending or it
  propagates("an error a hook raises in the middle of a call propagates as raised; the client goes on"
    .. (luajit and " (LuaJIT: hooks are global and see no return to C)" or ""), function()
    local c, r = with_hook("r", function(c) return c:sync_licenses("big") end)
    assert.is_false(r[1], "the call went through the hook")
    assert.equal("watchdog: out of budget", r[2])
    f.server:program("after", { { body = '{"id":"after"}' } })
    assert.equal("after", assert(c:get_token("after")).id)
    c:close()
  end)

  it("a list page whose value holds non-objects is invalid_response, for sync_all too", function()
    for _, page in ipairs { { value = { 1, 2 } }, { value = { { id = "a" }, "b" } }, { value = { a = { id = "a" } } } } do
      f.server:program("@list", { { json = page }, { json = page } })
      local list, err = f.client:list_tokens()
      assert.is_nil(list)
      assert.same({ "decode", "invalid_response" }, { err.kind, err.code })
      local report, err2 = f.client:sync_all()
      assert.is_nil(report)
      assert.equal("invalid_response", err2.code)
    end
  end)

  it("endless distinct nextLinks stop after max_pages", function()
    local pages = {}
    for i = 1, 40 do
      pages[i] = { json = { value = { support.vpp_token { id = "p" .. i } },
        ["@odata.nextLink"] = f.server.url .. "/v1.0/deviceAppManagement/vppTokens?$skiptoken=x" .. i } }
    end
    f.server:program("@list", pages)
    local c = support.client(f.server, { max_pages = 25 })
    local list, err = c:list_tokens()
    c:close()
    assert.is_nil(list)
    assert.same({ "decode", "too_many_pages" }, { err.kind, err.code })
    assert.equal(25, #f.server:log())
  end)

  it("cuts a huge Graph message and code, and prints one line", function()
    local huge = string.rep("é", 500000) -- 1 MB
    f.server:program("m", { { status = 400, error = string.rep("C", 1000), message = huge .. "\r\nsecond line" } })
    local _, err = f.client:get_token("m")
    assert.is_true(#err.message <= 4096, #err.message)
    assert.equal(" [...cut]", err.message:sub(-9))
    local kept = err.message:sub(1, -10)
    assert.equal(string.rep("é", math.floor(#kept / 2)), kept) -- no é cut in half
    assert.is_true(#err.code <= 256)
    assert.matches("%[%.%.%.cut%]$", err.code)
    local line = tostring(err)
    assert.is_nil(line:find("[%c]"))
  end)

  it("a response header line over libcurl's limit is response_too_large", function()
    f.server:program("h", { { body = '{"id":"h"}', headers = { ["X-Huge"] = string.rep("h", 200000) } } })
    local tok, err = f.client:get_token("h")
    assert.is_nil(tok)
    assert.same({ "transport", "response_too_large" }, { err.kind, err.code })
  end)

  it("results keep the ids as passed, whatever on_result does to the list", function()
    local ids = { "x1", "x2", "x3" }
    local results = f.client:get_many(ids, { concurrency = 1, on_result = function()
      for k in pairs(ids) do ids[k] = nil end
    end })
    assert.same({ "x1", "x2", "x3" }, { results[1].id, results[2].id, results[3].id })
  end)

  it("os.exit(0, true) inside on_result frees everything (valgrind, or LSan under make asan)", function()
    local asan = os.getenv("VPP_BUILD") ~= nil
    local code = ([[
      local vpp = require "vpp"
      local c = vpp.new { access_token = "t", base_url = %q, rate_limit = false }
      c:get_many({ "a", "b", "c" }, { concurrency = 2, on_result = function() os.exit(0, true) end })
      os.exit(3)
    ]]):format(f.server.url)
    local prefix = asan and "" or "valgrind --quiet --error-exitcode=99 --leak-check=full "
      .. "--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect "
      .. "--suppressions=spec/valgrind.supp "
    local out, ok, status = support.run_lua(code, "", prefix)
    assert.is_true(ok, ("exit %s: %s"):format(tostring(status), out))
    assert.not_matches("__gc", out)
  end)
end)

describe("vpp.codes", function()
  it("names every code of lua-vpp's own with a meaning, and libcurl's", function()
    local own = 0
    for code, meaning in pairs(vpp.codes) do
      assert.is_true(code:match("^[a-z][a-z_]*$") ~= nil or code:match("^[A-Z][A-Z0-9_]*$") ~= nil, code)
      assert.is_true(#meaning > 10, code)
      if code:match("^[a-z]") then own = own + 1 end
    end
    assert.is_true(own >= 15)
    assert.truthy(vpp.codes.COULDNT_CONNECT)
  end)

  it("covers every code the specs expect of lua-vpp", function()
    local served = support.slurp("fake-graph/graph.lua")
    for _, file in ipairs(support.spec_files()) do
      local text = support.slurp(file)
      for code in text:gmatch('assert%.equal%("([%w_]+)",[^\n]-%.code%)') do
        -- Graph's codes are PascalCase; the identity platform's are served by the fake.
        local from_server = code:match("^%u%l") or served:find('"' .. code .. '"', 1, true)
        assert.is_true(vpp.codes[code] ~= nil or from_server ~= nil, file .. ": " .. code .. " is not in vpp.codes")
      end
    end
  end)

  it("is the README's table", function()
    local readme = support.slurp("README.md")
    local rows = {}
    for code, meaning in readme:match("<!%-%- codes %-%->(.-)<!%-%- /codes %-%->"):gmatch("\n| `([%w_]+)` | ([^\n]-) |") do
      rows[code] = meaning
    end
    local own = {}
    for code, meaning in pairs(vpp.codes) do
      if code:match("^[a-z]") then own[code] = meaning end
    end
    assert.same(own, rows)
  end)

  it("builds Lua's errors with the one constructor, which refuses codes of its own making", function()
    local err = require("vpp.core")._error("timeout", "sync_timeout", "late", { id = "x" })
    assert.is_true(vpp.is_error(err))
    assert.equal("vpp: timeout sync_timeout: late", tostring(err))
    assert.equal("x", err.id)
    assert.has_error(function() require("vpp.core")._error("timeout", "made_up", "m") end)
  end)
end)
