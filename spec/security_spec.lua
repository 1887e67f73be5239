-- The security promises: ids stay one path segment, the bearer token goes
-- nowhere but the Authorization header, TLS is verified, and nothing is
-- followed to another host.
local support = require "support"
local vpp = require "vpp"

describe("security", function()
  local server, other, client

  setup(function()
    server = support.start { tls = true }
    other = support.start()
  end)
  teardown(function()
    server:stop()
    other:stop()
  end)
  before_each(function()
    server:reset()
    other:reset()
    server:log()
    other:log()
    client = support.client(server)
  end)
  after_each(function() client:close() end)

  describe("ids", function()
    local cases = {
      ["a/../b?c#d"] = "a%2F..%2Fb%3Fc%23d",
      [".."] = "%2E%2E",
      ["."] = "%2E",
      ["50%off"] = "50%25off",
      ["x y+z&w=1"] = "x%20y%2Bz%26w%3D1",
      ["Zürich"] = "Z%C3%BCrich",
      ["ok-id_1.2~3"] = "ok-id_1.2~3",
      -- longer than one piece of the encoder's buffer (found by make fuzz)
      [string.rep(".", 400) .. "x"] = string.rep(".", 400) .. "x",
      [string.rep("/", 400)] = string.rep("%2F", 400),
    }
    for id, encoded in pairs(cases) do
      it("sends " .. (#id > 40 and id:sub(1, 12) .. "... (" .. #id .. " bytes)" or id) .. " as exactly one percent-encoded path segment", function()
        server:program(id, { { body = '{"id":"echo"}' } })
        local tok = assert(client:sync_licenses(id))
        assert.equal("echo", tok.id) -- the server decoded the segment back to the id
        assert.equal("/v1.0/deviceAppManagement/vppTokens/" .. encoded .. "/syncLicenses", server:log()[1].uri)
      end)
    end

    it("encodes both segments of syncApps", function()
      server:program("t/1", { { body = '{"id":"t/1"}' } })
      assert(client:sync_apps("org/../x", "t/1"))
      assert.equal("/beta/organization/org%2F..%2Fx/appleVolumePurchaseProgramTokens/t%2F1/syncApps", server:log()[1].uri)
    end)
  end)

  describe("the bearer token", function()
    local function collect_errors(c)
      local errs = {}
      local function add(_, err) errs[#errs + 1] = err end
      server:program("e1", { { status = 401, error = "InvalidAuthenticationToken", message = "Access token validation failure." } })
      add(c:sync_licenses("e1"))
      add(c:get_token("missing"))
      server:program("e2", { { body = "not json" } })
      add(c:sync_licenses("e2"))
      server:program("e3", { { big = 2 * 1024 * 1024 } })
      add(c:get_token("e3"))
      server:program("e4", { { drop = true } })
      add(c:get_token("e4"))
      server:program("@list", { { body = '{"value":[],"@odata.nextLink":"https://evil.example/steal"}' } })
      add(c:list_tokens())
      return errs
    end

    it("appears in no error field and no error string", function()
      local c = support.client(server, { max_response_bytes = 1024 * 1024 })
      local errs = collect_errors(c)
      local probe = require("socket").bind("127.0.0.1", 0)
      local _, port = probe:getsockname()
      probe:close()
      local dead = support.client(server, { base_url = "http://127.0.0.1:" .. port, max_retry_delay = 0.01 })
      errs[#errs + 1] = select(2, dead:get_token("x"))
      dead:close()
      c:close()
      assert.equal(7, #errs)
      for _, err in ipairs(errs) do
        assert.is_true(vpp.is_error(err))
        assert.is_false(support.contains_secret(err), tostring(err))
        assert.is_nil(tostring(err):find(support.TOKEN, 1, true))
      end
    end)

    it("appears in no returned table, and only in the Authorization header", function()
      local list = assert(client:list_tokens())
      local tok = assert(client:sync_licenses(list[1].id))
      assert.is_false(support.contains_secret(list))
      assert.is_false(support.contains_secret(tok))
      assert.is_false(support.contains_secret(tostring(client)))
      for _, entry in ipairs(server:log()) do
        assert.equal("Bearer " .. support.TOKEN, entry.authorization)
        assert.is_nil(entry.uri:find(support.TOKEN, 1, true))
        assert.is_nil(entry.user_agent:find(support.TOKEN, 1, true))
      end
    end)

    it("with a control character is refused, not sent", function()
      for _, bad in ipairs { "abc\r\nX-Injected: 1", "abc\0def", "abc\n" } do
        for _, source in ipairs { bad, function() return bad end } do
          local c = support.client(server, { access_token = source })
          local ok, err = c:sync_licenses("x")
          c:close()
          assert.is_nil(ok)
          assert.equal("auth", err.kind)
          assert.equal("invalid_token", err.code)
          assert.is_false(support.contains_secret(err, "abc"))
        end
      end
      assert.same({}, server:log())
    end)

    it("from a function appears in no error either", function()
      local c = support.client(server, { access_token = function() return support.TOKEN end })
      local _, err = c:get_token("missing")
      c:close()
      assert.is_false(support.contains_secret(err))
    end)
  end)

  describe("TLS", function()
    it("works with ca_file naming the server's CA, over HTTP/2", function()
      local c = support.client(server, { base_url = server.tls_url, ca_file = server.ca_file })
      local list = assert(c:list_tokens())
      assert.is_true(#list > 0)
      assert(c:sync_licenses(list[1].id))
      c:close()
      local log = server:log()
      assert.equal("HTTP/2.0", log[1].protocol)
      assert.equal("Bearer " .. support.TOKEN, log[#log].authorization)
    end)

    it("refuses a server whose certificate it cannot verify", function()
      local c = support.client(server, { base_url = server.tls_url })
      local ok, err = c:list_tokens()
      c:close()
      assert.is_nil(ok)
      assert.equal("transport", err.kind)
      assert.equal("PEER_FAILED_VERIFICATION", err.code)
      assert.same({}, server:log()) -- no request was sent
    end)

    it("reports an unreadable ca_file as a transport error", function()
      local c = support.client(server, { base_url = server.tls_url, ca_file = "/nonexistent/ca.pem" })
      local ok, err = c:list_tokens()
      c:close()
      assert.is_nil(ok)
      assert.equal("transport", err.kind)
      assert.is_string(err.code)
    end)
  end)

  describe("redirects", function()
    it("are followed within base_url's origin, with the token", function()
      local target = server.url .. "/v1.0/deviceAppManagement/vppTokens/moved/syncLicenses"
      server:program("r1", { { status = 307, headers = { Location = target } } })
      server:program("moved", { { body = '{"id":"moved","state":"valid"}' } })
      local tok = assert(client:sync_licenses("r1"))
      assert.equal("moved", tok.id)
      local log = server:log()
      assert.equal(2, #log)
      assert.equal("POST", log[2].method)
      assert.equal("Bearer " .. support.TOKEN, log[2].authorization)
    end)

    it("are refused to another host or port, which sees no request", function()
      local target = other.url .. "/v1.0/deviceAppManagement/vppTokens/x/syncLicenses"
      server:program("r2", { { status = 302, headers = { Location = target } } })
      local ok, err = client:sync_licenses("r2")
      assert.is_nil(ok)
      assert.equal("http", err.kind)
      assert.equal(302, err.status)
      assert.equal("redirect_refused", err.code)
      assert.same({}, other:log())
    end)
  end)

  describe("@odata.nextLink", function()
    local function page(next_link)
      return { body = string.format('{"value":[{"id":"p1"}],"@odata.nextLink":%q}', next_link) }
    end

    it("to another port is an error, not followed", function()
      server:program("@list", { page(other.url .. "/v1.0/deviceAppManagement/vppTokens?$skiptoken=1") })
      local ok, err = client:list_tokens()
      assert.is_nil(ok)
      assert.equal("decode", err.kind)
      assert.equal("foreign_next_link", err.code)
      assert.same({}, other:log())
    end)

    it("to another scheme or host is an error, not followed", function()
      local same_port = tostring(server.port)
      for _, link in ipairs {
        "https://127.0.0.1:" .. same_port .. "/v1.0/deviceAppManagement/vppTokens?$skiptoken=1",
        "http://localhost.example:" .. same_port .. "/v1.0/deviceAppManagement/vppTokens?$skiptoken=1",
        "/v1.0/deviceAppManagement/vppTokens?$skiptoken=1",
        "file:///etc/passwd",
      } do
        server:program("@list", { page(link) })
        local ok, err = client:list_tokens()
        assert.is_nil(ok, link)
        assert.equal("foreign_next_link", err.code, link)
      end
      assert.equal(4, #server:log())
    end)

    it("that loops back to a page already fetched is detected", function()
      local self_link = server.url .. "/v1.0/deviceAppManagement/vppTokens"
      server:program("@list", { page(self_link .. "?$skiptoken=1"), page(self_link .. "?$skiptoken=1") })
      local ok, err = client:list_tokens()
      assert.is_nil(ok)
      assert.equal("next_link_loop", err.code)
      assert.equal(2, #server:log())
    end)
  end)
end)
