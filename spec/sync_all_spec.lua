-- client:sync_all and client:wait_for_sync against a stateful tenant.
local support = require "support"
local vpp = require "vpp"

local function token(id, state, status)
  return { ["@odata.type"] = "#microsoft.graph.vppToken", id = id, state = state, lastSyncStatus = status,
    displayName = "Token " .. id, appleId = id .. "@example.com", expirationDateTime = "2099-01-01T00:00:00Z", vppTokenAccountType = "business" }
end

describe("sync_all", function()
  local f = support.fake_graph({ page_size = 3 }, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(function()
    f.fresh()
    f.server:tokens {
      token("v1", "valid", "completed"), token("v2", "valid", "inProgress"), token("v3", "valid", "failed"),
      token("x1", "expired", "completed"), token("i1", "invalid", "none"), token("v4", "valid", "none"),
      token("v5", "valid", "inProgress"),
    }
    f.server:log()
  end)
  after_each(f.done)

  local function posted()
    local out = {}
    for _, e in ipairs(f.server:log()) do
      if e.method == "POST" then out[#out + 1] = e.uri:match("vppTokens/([^/]+)/syncLicenses") end
    end
    table.sort(out)
    return table.concat(out, ",")
  end

  it("syncs the valid tokens, skipping those already in progress", function()
    local report = assert(f.client:sync_all())
    assert.equal(7, report.listed)
    assert.equal(3, report.selected)
    assert.equal(2, #report.skipped)
    assert.equal("v2", report.skipped[1].id)
    assert.equal("v5", report.skipped[2].id)
    assert.equal("inProgress", report.skipped[1].lastSyncStatus)
    assert.equal(3, report.results.ok)
    assert.equal("v1,v3,v4", posted())
    assert.is_nil(report.waited)
  end)

  it("includes the tokens in progress on request", function()
    local report = assert(f.client:sync_all { include_in_progress = true })
    assert.equal(5, report.selected)
    assert.same({}, report.skipped)
    assert.equal("v1,v2,v3,v4,v5", posted())
  end)

  it("takes the filter criteria, and state = false for every state", function()
    local report = assert(f.client:sync_all { state = false, last_sync_status = { "completed", "none" } })
    assert.equal(4, report.selected)
    assert.equal("i1,v1,v4,x1", posted())
    -- x1 is now in progress, from the call above
    report = assert(f.client:sync_all { state = "expired" })
    assert.equal(0, report.selected)
    assert.equal("x1", report.skipped[1].id)
  end)

  it("passes concurrency and on_result through", function()
    local seen = 0
    local report = assert(f.client:sync_all { concurrency = 2, on_result = function() seen = seen + 1 end })
    assert.equal(3, seen)
    assert.equal(3, report.results.ok)
  end)

  it("waits for every started sync with wait = true", function()
    f.server:config { sync_seconds = 0.3 }
    local report = assert(f.client:sync_all { wait = true, wait_interval = 0.1, wait_timeout = 5 })
    assert.equal(3, report.waited.ok)
    for _, r in ipairs(report.waited) do
      assert.equal("completed", r.token.lastSyncStatus)
    end
  end)

  it("gives the selected tokens, in the order of the results", function()
    local report = assert(f.client:sync_all())
    local ids = {}
    for i, t in ipairs(report.tokens) do
      ids[i] = t.id
      assert.equal(t.id, report.results[i].id)
      assert.equal(t.id .. "@example.com", t.appleId)
    end
    assert.same({ "v1", "v3", "v4" }, ids)
  end)

  it("with dry_run selects as usual and syncs nothing", function()
    local report = assert(f.client:sync_all { dry_run = true, include_in_progress = true })
    assert.equal(5, report.selected)
    assert.equal(5, #report.tokens)
    assert.same({ ok = 0, failed = 0 }, report.results)
    assert.equal("", posted())
  end)

  it("returns nil, err when the tokens cannot be listed", function()
    f.server:program("@list", { { status = 403, error = "Forbidden" } })
    local report, err = f.client:sync_all()
    assert.is_nil(report)
    assert.equal(403, err.status)
    assert.equal("", posted())
  end)

  it("raises on an unknown option", function()
    assert.has_error(function() f.client:sync_all { wiat = true } end, "vpp: unknown option 'wiat' for sync_all")
  end)
end)

describe("wait_for_sync", function()
  local f = support.fake_graph({ tokens = 6 }, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  it("polls until the sync has completed and returns the final token", function()
    f.server:config { sync_seconds = 0.5 }
    local id = assert(f.client:list_tokens())[1].id
    assert.equal("inProgress", assert(f.client:sync_licenses(id)).lastSyncStatus)
    local t0 = support.now()
    local tok = assert(f.client:wait_for_sync(id, { interval = 0.1, timeout = 5 }))
    assert.equal("completed", tok.lastSyncStatus)
    assert.equal(id, tok.id)
    assert.is_true(support.now() - t0 >= 0.3)
  end)

  it("times out with err.kind timeout", function()
    f.server:config { sync_seconds = 30 }
    local id = assert(f.client:list_tokens())[1].id
    assert(f.client:sync_licenses(id))
    local t0 = support.now()
    local tok, err = f.client:wait_for_sync(id, { interval = 0.1, timeout = 0.5 })
    local elapsed = support.now() - t0
    assert.is_nil(tok)
    assert.is_true(vpp.is_error(err))
    assert.equal("timeout", err.kind)
    assert.equal("sync_timeout", err.code)
    assert.is_true(elapsed >= 0.45 and elapsed < 3, "took " .. elapsed)
  end)

  it("returns the error of a token that cannot be read", function()
    local tok, err = f.client:wait_for_sync("missing", { interval = 0.1, timeout = 1 })
    assert.is_nil(tok)
    assert.equal(404, err.status)
  end)

  it("polls many tokens concurrently", function()
    f.server:config { sync_seconds = 0.3 }
    local ids = {}
    for _, t in ipairs(assert(f.client:list_tokens())) do ids[#ids + 1] = t.id end
    assert.equal(6, f.client:sync_many(ids).ok)
    f.server:config { latency = 0.1 }
    local results = f.client:wait_for_sync(ids, { interval = 0.1, timeout = 5, concurrency = 6 })
    assert.equal(6, results.ok)
    assert.equal(0, results.failed)
    for i, r in ipairs(results) do
      assert.equal(ids[i], r.id)
      -- Apple refuses the syncs of expired and invalid tokens.
      local refused = r.token.state == "expired" or r.token.state == "invalid"
      assert.equal(refused and "failed" or "completed", r.token.lastSyncStatus, r.id)
    end
    assert.equal(6, f.server:stats().max_active)
  end)

  it("calls on_result as each token finishes, timeouts included", function()
    f.server:config { sync_seconds = 1 }
    local list = assert(f.client:list_tokens())
    local ids = { list[1].id, list[2].id }
    assert.equal(1, f.client:sync_many({ ids[1] }).ok)
    require("socket").sleep(1.1) -- the first has completed, the second runs 1 s more
    assert.equal(1, f.client:sync_many({ ids[2] }).ok)
    local seen = {}
    local results = f.client:wait_for_sync(ids, { interval = 0.1, timeout = 0.4,
      on_result = function(r, done, total) seen[#seen + 1] = { r.id, done, total, r.err and r.err.kind } end })
    assert.equal(1, results.ok)
    assert.same({ { ids[1], 1, 2 }, { ids[2], 2, 2, "timeout" } }, seen)
    assert.has_error(function() f.client:wait_for_sync(ids, { on_result = 1 }) end,
      "vpp: opts.on_result must be a function")
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() f.client:wait_for_sync(42) end)
    assert.has_error(function() f.client:wait_for_sync("x", { interval = 0 }) end,
      "vpp: opts.interval must be a positive number of seconds")
    assert.has_error(function() f.client:wait_for_sync("x", { every = 1 }) end,
      "vpp: unknown option 'every' for wait_for_sync")
  end)
end)
