-- The client's life cycle, its settings, and programming errors that raise.
local support = require "support"
local vpp = require "vpp"

describe("client", function()
  local server

  setup(function() server = support.start { tokens = 3 } end)
  teardown(function() server:stop() end)
  before_each(function()
    server:reset()
    server:log()
  end)

  describe("close", function()
    it("is idempotent, and a call on a closed client raises", function()
      local c = support.client(server)
      assert.matches("^vpp%.client %(http://127%.0%.0%.1:%d+/v1%.0%)$", tostring(c))
      c:close()
      c:close()
      assert.equal("vpp.client (closed)", tostring(c))
      for _, call in ipairs {
        function() c:sync_licenses("x") end,
        function() c:sync_apps("o", "x") end,
        function() c:get_token("x") end,
        function() c:list_tokens() end,
      } do
        assert.has_error(call, "vpp: the client is closed")
      end
    end)

    it("happens at the end of a <close> scope", function()
      if _VERSION ~= "Lua 5.4" then
        pending("to-be-closed variables need Lua 5.4")
        return
      end
      local chunk = assert(load([[
        local vpp, opts = ...
        local kept
        do
          local c <close> = vpp.new(opts)
          kept = c
          assert(c:list_tokens())
        end
        return kept
      ]]))
      local kept = chunk(vpp, { access_token = support.TOKEN, base_url = server.url })
      assert.equal("vpp.client (closed)", tostring(kept))
    end)

    it("happens when the client is garbage-collected", function()
      local weak = setmetatable({}, { __mode = "v" })
      do
        local c = support.client(server)
        assert(c:list_tokens())
        weak[1] = c
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1])
    end)

    it("closes the connection", function()
      local c = support.client(server)
      assert(c:list_tokens())
      assert.equal(0, server:stats().active)
      c:close()
      -- a new client needs a new connection
      local d = support.client(server)
      assert(d:list_tokens())
      d:close()
      assert.equal(2, server:stats().connections)
    end)
  end)

  -- Lua names the function as it finds it ("new" or "vpp.new"): compare
  -- the argument number and the message exactly, the name loosely.
  local function raises(fn, argn, fname, message)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    err = err:gsub("^[^\n]-:%d+: ", "") -- the caller's position, when Lua adds it
    local pattern = "^bad argument #" .. argn .. " to '[%w.]*" .. fname .. "' %((.*)%)$"
    assert.matches(pattern, err)
    assert.equal(message, err:match(pattern))
  end

  describe("bad arguments raise, naming the argument", function()
    local c
    before_each(function() c = support.client(server) end)
    after_each(function() c:close() end)

    it("for a missing, empty or non-string id", function()
      raises(function() c:sync_licenses() end, 1, "sync_licenses", "token_id must be a string, got no value")
      raises(function() c:sync_licenses("") end, 1, "sync_licenses", "token_id must not be empty")
      raises(function() c:get_token(42) end, 1, "get_token", "token_id must be a string, got number")
      raises(function() c:sync_apps(nil, "x") end, 1, "sync_apps", "organization_id must be a string, got nil")
      raises(function() c:sync_apps("o", {}) end, 2, "sync_apps", "token_id must be a string, got table")
      raises(function() vpp.sync_licenses(nil) end, 1, "sync_licenses", "token_id must be a string, got nil")
      raises(function() vpp.sync_apps("o", "") end, 2, "sync_apps", "token_id must not be empty")
      assert.same({}, server:log()) -- nothing was sent
    end)

    it("for opts that are not a table", function()
      raises(function() vpp.new("x") end, 1, "new", "opts must be a table, got string")
      raises(function() vpp.sync_licenses("id", 5) end, 2, "sync_licenses", "opts must be a table, got number")
      raises(function() vpp.sync_apps("o", "id", true) end, 3, "sync_apps", "opts must be a table, got boolean")
    end)

    it("for a self that is not a client", function()
      assert.has_error(function() c.sync_licenses({}, "x") end)
      assert.has_error(function() c.close("x") end)
    end)

    it("for unknown or mistyped settings", function()
      local base = { access_token = "t", base_url = server.url }
      local function with(k, v)
        local o = {}
        for key, val in pairs(base) do o[key] = val end
        o[k] = v
        return function() vpp.new(o) end
      end
      assert.has_error(with("acess_token", "t"), "vpp: unknown option 'acess_token'")
      assert.has_error(with("timeout", "5"), "vpp: opts.timeout must be a positive number (got string)")
      assert.has_error(with("timeout", -1), "vpp: opts.timeout must be a positive number of seconds")
      assert.has_error(with("connect_timeout", 0), "vpp: opts.connect_timeout must be a positive number of seconds")
      assert.has_error(with("base_url", "ftp://x"), "vpp: opts.base_url must be an http(s) URL without query or fragment")
      assert.has_error(with("base_url", "graph.microsoft.com"), "vpp: opts.base_url must be an http(s) URL without query or fragment")
      assert.has_error(with("base_url", "https://g/?x=1"), "vpp: opts.base_url must be an http(s) URL without query or fragment")
      assert.has_error(with("api_version", "v1.0/../x"), 'vpp: opts.api_version must look like "v1.0" or "beta"')
      assert.has_error(with("max_response_bytes", 1.5), "vpp: opts.max_response_bytes must be an integer from 1 to 2147483647")
      assert.has_error(with("access_token", 42), "vpp: opts.access_token must be a non-empty string or a function")
      assert.has_error(with("access_token", ""), "vpp: opts.access_token must be a non-empty string or a function")
      assert.has_error(with("ca_file", ""), "vpp: opts.ca_file must be a non-empty string")
      assert.has_error(with("user_agent", 7), "vpp: opts.user_agent must be a non-empty string (got number)")
      assert.has_error(with("user_agent", "bot\r\nX-Injected: 1"), "vpp: opts.user_agent must not contain control characters")
    end)

    it("for a bad list query", function()
      raises(function() c:list_tokens("state eq 'valid'") end, 1, "list_tokens", "query must be a table, got string")
      assert.has_error(function() c:list_tokens { where = "x" } end, "vpp: unknown query key 'where' (expected select, top, filter or deadline)")
      assert.has_error(function() c:list_tokens { top = 0 } end, "vpp: query.top must be a positive integer")
      assert.has_error(function() c:list_tokens { top = 2.5 } end, "vpp: query.top must be a positive integer")
      assert.has_error(function() c:list_tokens { select = {} } end, "vpp: query.select must be a string or a non-empty list of strings")
      assert.has_error(function() c:list_tokens { select = { "id", 3 } } end, "vpp: query.select[2] must be a non-empty string")
      assert.has_error(function() c:list_tokens { filter = false } end, "vpp: query.filter must be a non-empty string")
    end)
  end)

  describe("access token", function()
    it("comes from GRAPH_ACCESS_TOKEN when opts has none", function()
      local out, ok = support.run_lua(([[
        local vpp = require "vpp"
        local c = vpp.new { base_url = %q }
        assert(c:list_tokens())
        print("listed")
      ]]):format(server.url), "env GRAPH_ACCESS_TOKEN=from-the-environment")
      assert.is_true(ok, out)
      assert.equal("Bearer from-the-environment", server:log()[1].authorization)
    end)

    it("opts.access_token wins over GRAPH_ACCESS_TOKEN", function()
      local out, ok = support.run_lua(([[
        local vpp = require "vpp"
        assert(vpp.new({ base_url = %q, access_token = "explicit" }):list_tokens())
      ]]):format(server.url), "env GRAPH_ACCESS_TOKEN=from-the-environment")
      assert.is_true(ok, out)
      assert.equal("Bearer explicit", server:log()[1].authorization)
    end)

    it("missing everywhere raises at vpp.new", function()
      local out, ok = support.run_lua([[
        local vpp = require "vpp"
        local ok, err = pcall(vpp.new, {})
        io.write(tostring(ok), " ", err)
      ]], "env -u GRAPH_ACCESS_TOKEN")
      assert.is_true(ok, out)
      assert.equal("false vpp: no credentials: pass access_token, client_secret or client_certificate"
        .. " (with tenant_id and client_id) or managed_identity, or set GRAPH_ACCESS_TOKEN", out)
    end)

    it("from a function that returns nothing gives an auth error", function()
      local c = support.client(server, { access_token = function() return nil end })
      local ok, err = c:sync_licenses("x")
      c:close()
      assert.is_nil(ok)
      assert.equal("auth", err.kind)
      assert.equal("no_token", err.code)
      assert.same({}, server:log())
    end)

    it("from a function that raises propagates the error and leaves the client usable", function()
      local fail = true
      local c = support.client(server, { access_token = function()
        if fail then error("vault unreachable", 0) end
        return "ok-token"
      end })
      assert.has_error(function() c:sync_licenses("x") end, "vault unreachable")
      fail = false
      assert(c:list_tokens())
      c:close()
      assert.equal("Bearer ok-token", server:log()[1].authorization)
    end)

    it("from a function that closes or calls the client raises, and the client still works", function()
      local c, action
      c = support.client(server, { access_token = function()
        if action then action() end
        return "t"
      end })
      action = function() c:close() end
      assert.has_error(function() c:list_tokens() end, "vpp: the client cannot be closed from its own callbacks")
      action = function() c:get_token("x") end
      assert.has_error(function() c:list_tokens() end, "vpp: the client is busy: it cannot be used from its own callbacks")
      action = nil
      assert(c:list_tokens())
      c:close()
    end)
  end)

  it("exposes vpp.null and vpp._VERSION", function()
    assert.equal(require("cjson").null, vpp.null)
    assert.matches("^%d+%.%d+%.%d+$", vpp._VERSION)
  end)
end)
