-- client:sync_many / get_many: concurrency, order, isolation, on_result.
local support = require "support"
local vpp = require "vpp"

describe("sync_many", function()
  local f = support.fake_graph({ tokens = 20 }, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  local function ids_of(n)
    local ids = {}
    for i, t in ipairs(assert(f.client:list_tokens())) do
      if i <= n then ids[#ids + 1] = t.id end
    end
    f.server:log()
    return ids
  end

  it("keeps input order whatever order the answers come in", function()
    f.server:program("slow", { { delay = 0.3, body = '{"id":"slow"}' } })
    f.server:program("mid", { { delay = 0.15, body = '{"id":"mid"}' } })
    f.server:program("fast", { { body = '{"id":"fast"}' } })
    local order = {}
    local results = f.client:sync_many({ "slow", "mid", "fast" }, {
      concurrency = 3,
      on_result = function(r, done, total)
        order[#order + 1] = r.id
        assert.equal(#order, done)
        assert.equal(3, total)
      end,
    })
    assert.same({ "fast", "mid", "slow" }, order) -- completion order
    assert.equal("slow", results[1].id)
    assert.equal("slow", results[1].token.id)
    assert.equal("mid", results[2].token.id)
    assert.equal("fast", results[3].token.id)
    assert.equal(3, results.ok)
    assert.equal(0, results.failed)
  end)

  it("isolates failures: each item has its own token or error", function()
    local ids = ids_of(3)
    f.server:program("broken", { { status = 200, body = "not json" } })
    -- a body cut short: unlike a connection dropped before any answer, which
    -- libcurl itself may retry on another pooled connection, it is final
    f.server:program("dropped", { { cut = 10, body = '{"value":{"id":"dropped","state":"valid"}}' } })
    local list = { ids[1], "missing", ids[2], "broken", "dropped", ids[3] }
    local results = f.client:sync_many(list, { concurrency = 4 })
    assert.equal(6, #results)
    for i, r in ipairs(results) do
      assert.equal(list[i], r.id)
      assert.equal(1, r.attempts)
      assert.is_true((r.token == nil) ~= (r.err == nil))
    end
    assert.equal("inProgress", results[1].token.lastSyncStatus)
    assert.equal(404, results[2].err.status)
    assert.equal("decode", results[4].err.kind)
    assert.equal("transport", results[5].err.kind)
    assert.equal(ids[3], results[6].token.id)
    assert.equal(3, results.ok)
    assert.equal(3, results.failed)
  end)

  it("calls on_result once per item", function()
    local ids = ids_of(10)
    local seen = {}
    f.client:sync_many(ids, { on_result = function(r) seen[r.id] = (seen[r.id] or 0) + 1 end })
    for _, id in ipairs(ids) do assert.equal(1, seen[id]) end
  end)

  it("propagates an error raised in on_result, and the client stays usable", function()
    local ids = ids_of(12)
    f.server:config { latency = 0.05 }
    local calls = 0
    assert.has_error(function()
      f.client:sync_many(ids, { concurrency = 4, on_result = function()
        calls = calls + 1
        if calls == 2 then error({ reason = "stop" }) end
      end })
    end, { reason = "stop" })
    assert.equal(2, calls)
    -- nothing is left running: the next calls work and see only their own answers
    local results = f.client:sync_many(ids, { concurrency = 4 })
    assert.equal(12, results.ok)
    assert(f.client:get_token(ids[1]))
  end)

  it("runs really concurrently, and never more at once than asked", function()
    local ids = ids_of(16)
    f.server:reset()
    f.server:config { latency = 0.2 }
    local t0 = support.now()
    local results = f.client:sync_many(ids, { concurrency = 8 })
    local elapsed = support.now() - t0
    assert.equal(16, results.ok)
    local stats = f.server:stats()
    assert.equal(8, stats.max_active)
    assert.is_true(stats.connections <= 8, "connections: " .. stats.connections)
    assert.is_true(elapsed < 16 * 0.2 / 2, "took " .. elapsed .. " s")
  end)

  it("multiplexes a batch over one HTTP/2 connection over TLS", function()
    local s = support.start { tls = true, tokens = 10, latency = 0.05 }
    finally(function() s:stop() end)
    local c = support.client(s, { base_url = s.tls_url, ca_file = s.ca_file, rate_limit = false })
    local ids = {}
    for _, t in ipairs(assert(c:list_tokens())) do ids[#ids + 1] = t.id end
    s:reset()
    local results = c:sync_many(ids, { concurrency = 8 })
    c:close()
    assert.equal(10, results.ok)
    assert.equal(1, s:stats().connections)
    assert.is_true(s:stats().max_active >= 2)
    assert.equal("HTTP/2.0", s:log()[1].protocol)
  end)

  it("runs the legacy syncApps with action and organization_id", function()
    local ids = ids_of(2)
    local results = f.client:sync_many(ids, { action = "sync_apps", organization_id = "org/1" })
    assert.equal(2, results.ok)
    assert.equal("#microsoft.graph.appleVolumePurchaseProgramToken", results[1].token["@odata.type"])
    for _, entry in ipairs(f.server:log()) do
      assert.matches("^/beta/organization/org%%2F1/appleVolumePurchaseProgramTokens/[^/]+/syncApps$", entry.uri)
    end
  end)

  it("get_many gets tokens concurrently", function()
    local ids = ids_of(5)
    local results = f.client:get_many(ids)
    assert.equal(5, results.ok)
    for i, r in ipairs(results) do assert.equal(ids[i], r.token.id) end
    for _, entry in ipairs(f.server:log()) do assert.equal("GET", entry.method) end
  end)

  it("returns empty results for no ids, sending nothing", function()
    local results = f.client:sync_many({})
    assert.equal(0, #results)
    assert.equal(0, results.ok)
    assert.equal(0, results.failed)
    assert.same({}, f.server:log())
  end)

  it("raises on bad arguments", function()
    local c = f.client
    assert.has_error(function() c:sync_many("x") end)
    assert.has_error(function() c:sync_many({ "a", 2 }) end, "vpp: ids[2] must be a non-empty string")
    assert.has_error(function() c:sync_many({ "a", "" }) end, "vpp: ids[2] must be a non-empty string")
    assert.has_error(function() c:sync_many({ "a" }, { concurrency = 0 }) end,
      "vpp: opts.concurrency must be an integer from 1 to 256")
    assert.has_error(function() c:sync_many({ "a" }, { paralel = 2 }) end, "vpp: unknown option 'paralel'")
    assert.has_error(function() c:sync_many({ "a" }, { on_result = "print" }) end, "vpp: opts.on_result must be a function")
    assert.has_error(function() c:sync_many({ "a" }, { action = "sync_apps" }) end,
      "vpp: opts.organization_id must be a non-empty string for sync_apps")
    assert.has_error(function() c:sync_many({ "a" }, { action = "delete" }) end,
      'vpp: opts.action must be "sync_licenses" or "sync_apps"')
    assert.has_error(function() c:get_many({ "a" }, { action = "sync_apps" }) end, "vpp: unknown option 'action'")
    assert.same({}, f.server:log())
  end)

  it("keeps the bearer token out of every result", function()
    local ids = ids_of(3)
    local results = f.client:sync_many({ ids[1], "missing", ids[2] })
    assert.is_false(support.contains_secret(results))
    assert.is_true(vpp.is_error(results[2].err))
  end)
end)
