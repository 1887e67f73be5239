-- The Graph calls: URLs, methods, headers, paging, api_version, the
-- module-level shortcuts and connection reuse.
local support = require "support"
local vpp = require "vpp"

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

describe("Graph calls", function()
  local server, client, ids

  setup(function() server = support.start { tokens = 5, page_size = 2 } end)
  teardown(function() server:stop() end)
  before_each(function()
    server:reset()
    client = support.client(server)
    ids = {}
    for _, t in ipairs(assert(client:list_tokens())) do ids[#ids + 1] = t.id end
    server:log() -- start each test with an empty request log
  end)
  after_each(function() client:close() end)

  it("POSTs syncLicenses with no body and returns the token in sync", function()
    local tok = assert(client:sync_licenses(ids[1]))
    assert.equal(ids[1], tok.id)
    assert.equal("inProgress", tok.lastSyncStatus)
    local log = server:log()
    assert.equal(1, #log)
    assert.equal("POST", log[1].method)
    assert.equal("/v1.0/deviceAppManagement/vppTokens/" .. ids[1] .. "/syncLicenses", log[1].uri)
    assert.equal("0", log[1].content_length)
    assert.is_nil(log[1].content_type) -- no body, so no form Content-Type either
  end)

  it("sends syncLicenses to /beta when api_version is beta", function()
    local beta = support.client(server, { api_version = "beta" })
    assert(beta:sync_licenses(ids[2]))
    beta:close()
    assert.equal("/beta/deviceAppManagement/vppTokens/" .. ids[2] .. "/syncLicenses", server:log()[1].uri)
  end)

  it("always sends the legacy syncApps to /beta, whatever api_version says", function()
    for _, version in ipairs { "v1.0", "beta" } do
      local c = support.client(server, { api_version = version })
      local tok = assert(c:sync_apps("org-1", ids[3]))
      c:close()
      assert.equal("#microsoft.graph.appleVolumePurchaseProgramToken", tok["@odata.type"])
      assert.equal(ids[3], tok.id)
    end
    local log = server:log()
    for i = 1, 2 do
      assert.equal("POST", log[i].method)
      assert.equal("/beta/organization/org-1/appleVolumePurchaseProgramTokens/" .. ids[3] .. "/syncApps", log[i].uri)
    end
  end)

  it("GETs one token", function()
    local tok = assert(client:get_token(ids[4]))
    assert.equal(ids[4], tok.id)
    local log = server:log()
    assert.equal("GET", log[1].method)
    assert.equal("/v1.0/deviceAppManagement/vppTokens/" .. ids[4], log[1].uri)
  end)

  it("lists every token by following each @odata.nextLink", function()
    local list = assert(client:list_tokens())
    assert.equal(5, #list)
    for i, t in ipairs(list) do
      assert.equal(ids[i], t.id)
    end
    local log = server:log()
    assert.equal(3, #log) -- pages of 2, 2 and 1
    assert.equal("/v1.0/deviceAppManagement/vppTokens", log[1].uri)
    assert.matches("^/v1%.0/deviceAppManagement/vppTokens%?%$skiptoken=[%w_-]+$", log[2].uri)
  end)

  it("sends select, top and filter as $select, $top and $filter", function()
    local list = assert(client:list_tokens { select = { "id", "state" }, top = 1, filter = "state eq 'valid'" })
    for _, t in ipairs(list) do
      assert.equal("valid", t.state)
      assert.is_nil(t.displayName)
    end
    local first = server:log()[1].uri
    assert.equal("/v1.0/deviceAppManagement/vppTokens?$select=id,state&$top=1&$filter=state%20eq%20%27valid%27", first)
    assert(client:list_tokens { select = "appleId" })
    assert.equal("/v1.0/deviceAppManagement/vppTokens?$select=appleId", server:log()[1].uri)
  end)

  it("returns an empty list for an empty tenant", function()
    server:tokens({})
    assert.same({}, client:list_tokens())
  end)

  it("sends the headers Graph expects, with a fresh client-request-id each time", function()
    assert(client:sync_licenses(ids[1]))
    assert(client:sync_licenses(ids[1]))
    local log = server:log()
    assert.equal("Bearer " .. support.TOKEN, log[1].authorization)
    assert.equal("application/json", log[1].accept)
    assert.matches("^lua%-vpp/" .. vpp._VERSION:gsub("%.", "%%.") .. " libcurl/", log[1].user_agent)
    assert.matches(UUID, log[1].client_request_id)
    assert.matches(UUID, log[2].client_request_id)
    assert.not_equal(log[1].client_request_id, log[2].client_request_id)
  end)

  it("reports the client-request-id it sent in errors", function()
    local _, err = client:get_token("missing")
    assert.equal(server:log()[1].client_request_id, err.client_request_id)
  end)

  it("sends a custom user_agent", function()
    local c = support.client(server, { user_agent = "ops-bot/2.0" })
    assert(c:get_token(ids[1]))
    c:close()
    assert.equal("ops-bot/2.0", server:log()[1].user_agent)
  end)

  it("calls an access_token function for each request", function()
    local calls = 0
    local c = support.client(server, { access_token = function()
      calls = calls + 1
      return "fn-token-" .. calls
    end })
    assert(c:get_token(ids[1]))
    assert(c:get_token(ids[1]))
    c:close()
    local log = server:log()
    assert.equal(2, calls)
    assert.equal("Bearer fn-token-1", log[1].authorization)
    assert.equal("Bearer fn-token-2", log[2].authorization)
  end)

  it("keeps a base_url path prefix and ignores a trailing slash", function()
    local c = support.client(server, { base_url = server.url .. "/gateway/graph/" })
    assert.equal(5, #assert(c:list_tokens()))
    assert(c:sync_licenses(ids[1]))
    c:close()
    local log = server:log()
    assert.equal("/gateway/graph/v1.0/deviceAppManagement/vppTokens", log[1].uri)
    assert.matches("^/gateway/graph/v1%.0/deviceAppManagement/vppTokens%?%$skiptoken=[%w_-]+$", log[2].uri)
    assert.equal("/gateway/graph/v1.0/deviceAppManagement/vppTokens/" .. ids[1] .. "/syncLicenses", log[4].uri)
  end)

  it("behind a gateway, follows nextLinks naming Graph's own host through base_url; refuses others", function()
    -- Graph names graph.microsoft.com in its links whatever the gateway in
    -- front of it was called with.
    server:config { next_link_origin = "https://graph.microsoft.com" }
    local c = support.client(server, { base_url = server.url .. "/gateway/graph" })
    local all, err = c:list_tokens()
    assert.equal(5, all and #all, tostring(err))
    local log = server:log()
    assert.equal(3, #log) -- 2 per page
    for i = 2, 3 do
      assert.matches("^/gateway/graph/v1%.0/deviceAppManagement/vppTokens%?%$skiptoken=[%w_-]+$", log[i].uri)
    end
    -- a national cloud's host, or any other, is still refused
    for _, host in ipairs { "https://graph.microsoft.us", "https://graph.microsoft.com.evil.example" } do
      server:config { next_link_origin = host }
      local none, ferr = c:list_tokens()
      assert.is_nil(none)
      assert.equal("foreign_next_link", ferr.code, host)
    end
    c:close()
    server:config { next_link_origin = false }
  end)

  it("uses one TCP connection for 20 sequential calls on one client", function()
    local c = support.client(server)
    server:reset()
    for i = 1, 20 do
      assert(c:sync_licenses(ids[(i % 5) + 1]))
    end
    c:close()
    local stats = server:stats()
    assert.equal(20, stats.requests)
    assert.equal(1, stats.connections)
  end)

  it("vpp.sync_licenses and vpp.sync_apps make one call with a client of their own", function()
    local opts = { access_token = support.TOKEN, base_url = server.url }
    local tok = assert(vpp.sync_licenses(ids[1], opts))
    assert.equal(ids[1], tok.id)
    local legacy = assert(vpp.sync_apps("org-9", ids[2], opts))
    assert.equal(ids[2], legacy.id)
    local missing, err = vpp.sync_licenses("missing", opts)
    assert.is_nil(missing)
    assert.equal(404, err.status)
    local log = server:log()
    assert.equal("/v1.0/deviceAppManagement/vppTokens/" .. ids[1] .. "/syncLicenses", log[1].uri)
    assert.equal("/beta/organization/org-9/appleVolumePurchaseProgramTokens/" .. ids[2] .. "/syncApps", log[2].uri)
  end)

  describe("on_request", function()
    it("is called once per request, retries and batches included, with what is safe to log", function()
      local seen = {}
      local c = support.client(server, { max_retry_delay = 0.01, on_request = function(info) seen[#seen + 1] = info end })
      server:program(ids[2], { { status = 503, error = "ServiceUnavailable" } })
      local results = c:sync_many({ ids[1], ids[2] })
      assert.equal(2, results.ok)
      assert(c:list_tokens())
      c:close()
      local log = server:log()
      assert.equal(#log, #seen)
      assert.equal(3 + 3, #seen) -- two syncs, one retried, then three pages
      local statuses, attempts = {}, {}
      for _, info in ipairs(seen) do
        assert.equal("string", type(info.url))
        assert.equal("number", type(info.seconds))
        assert.matches(UUID, info.client_request_id)
        assert.matches("^[%x-]+$", info.request_id)
        statuses[#statuses + 1] = info.status
        if info.url:find(ids[2], 1, true) then attempts[#attempts + 1] = info.attempt end
        assert.is_false(support.contains_secret(info))
      end
      assert.same({ 1, 2 }, attempts)
      table.sort(statuses)
      assert.same({ 200, 200, 200, 200, 200, 503 }, statuses)
      assert.equal("POST", seen[1].method)
      assert.equal("GET", seen[#seen].method)
      assert.matches("/v1%.0/deviceAppManagement/vppTokens%?%$skiptoken=", seen[#seen].url)
    end)

    it("reports transport failures by libcurl's name; what it raises propagates", function()
      local info
      local c = support.client(server, { base_url = "http://127.0.0.1:1", max_retries = 0,
        on_request = function(i) info = i end })
      assert.is_nil(c:get_token("x"))
      assert.equal("COULDNT_CONNECT", info.error)
      assert.is_nil(info.status)
      c:close()
      c = support.client(server, { on_request = function() error("log full", 0) end })
      assert.has_error(function() c:get_token(ids[1]) end, "log full")
      assert.has_error(function() c:sync_many({ ids[1], ids[2] }) end, "log full")
      assert.equal(server.url, c:config().base_url) -- not left busy
      c:close()
      assert.has_error(function() vpp.new { access_token = "t", on_request = "yes" } end,
        "vpp: opts.on_request must be a function (got string)")
    end)
  end)

  it("marks a synced token completed once the server has finished", function()
    server:config { sync_seconds = 0.2 }
    assert.equal("inProgress", assert(client:sync_licenses(ids[1])).lastSyncStatus)
    require("socket").sleep(0.3)
    assert.equal("completed", assert(client:get_token(ids[1])).lastSyncStatus)
  end)
end)
