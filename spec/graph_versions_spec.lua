-- Graph as it is, not as is convenient: the vppToken schema per API
-- version (v1.0 has 12 properties and no displayName), strict $select and
-- $filter, syncs that fail for tokens Apple refuses and take their time,
-- and waits that do not stop on the previous sync's status.
local support = require "support"
local cjson = require "cjson"
local vpp = require "vpp"
local tenant = require "tenant"
local core = require "vpp.core"

local V1_PROPERTIES = { "appleId", "automaticallyUpdateApps", "countryOrRegion", "expirationDateTime", "id",
  "lastModifiedDateTime", "lastSyncDateTime", "lastSyncStatus", "organizationName", "state", "token",
  "vppTokenAccountType" }

local function keys(t)
  local out = {}
  for k in pairs(t) do
    if k:sub(1, 1) ~= "@" then out[#out + 1] = k end
  end
  table.sort(out)
  return out
end

local function token(id, fields)
  local t = support.vpp_token { id = id }
  for k, v in pairs(fields or {}) do t[k] = v end
  return t
end

describe("the fake Graph per API version", function()
  local f = support.fake_graph({ tokens = 22 }, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  it("v1.0 serves exactly its 12 properties, and a beta-only state as unknown", function()
    f.server:tokens { token("a", { state = "duplicateLocationId" }) }
    local t = assert(f.client:get_token("a"))
    assert.same(V1_PROPERTIES, keys(t))
    assert.equal("unknown", t.state)
    assert.same(V1_PROPERTIES, keys(assert(f.client:list_tokens())[1]))
  end)

  it("beta serves its own: displayName, lastAppCount, the delivery protocol, typed action results", function()
    local beta = support.client(f.server, { api_version = "beta" })
    finally(function() beta:close() end)
    for _, t in ipairs(assert(beta:list_tokens())) do
      assert.is_string(t.displayName)
      assert.is_number(t.lastAppCount)
      assert.equal("mobileDeviceManagement", t.appleDeviceAppDeliveryProtocolType)
      assert.equal("#microsoft.graph.vppTokenActionResult", t.tokenActionResults[1]["@odata.type"])
    end
    local states = vpp.count_by(assert(beta:list_tokens()), "state")
    assert.is_true((states.duplicateLocationId or 0) > 0)
  end)

  it("refuses $select and $filter on a property or enum member the version lacks (400, as Graph)", function()
    local l, err = f.client:list_tokens { select = { "id", "displayName" } }
    assert.is_nil(l)
    assert.same({ 400, "BadRequest" }, { err.status, err.code })
    assert.matches("Could not find a property named 'displayName'", err.message)
    l, err = f.client:list_tokens { filter = "state eq 'duplicateLocationId'" }
    assert.is_nil(l)
    assert.matches("not a valid enumeration type constant", err.message)
    local _, missing = f.client:get_token("x")
    assert.equal(404, missing.status)
    local beta = support.client(f.server, { api_version = "beta" })
    finally(function() beta:close() end)
    assert(beta:list_tokens { select = { "id", "displayName" }, filter = "state eq 'duplicateLocationId'" })
    local valid = assert(f.client:list_tokens { filter = "state eq 'valid' and automaticallyUpdateApps eq true" })
    for _, t in ipairs(valid) do assert.is_true(t.automaticallyUpdateApps and t.state == "valid") end
  end)

  it("ends the syncs of expired and invalid tokens failed, each after its own time, moving lastSyncDateTime then",
    function()
      local before = tenant.timestamp(os.time() - 86400)
      f.server:tokens {
        token("ok-1", { lastSyncDateTime = before }), token("ok-2", { lastSyncDateTime = before }),
        token("exp", { state = "expired" }), token("inv", { state = "invalid" }),
      }
      f.server:config { sync_seconds = 0.6 }
      local started = os.time()
      assert.equal(4, f.client:sync_many { "ok-1", "ok-2", "exp", "inv" }.ok)
      local t = assert(f.client:get_token("ok-1"))
      assert.equal("inProgress", t.lastSyncStatus)
      assert.equal(before, t.lastSyncDateTime) -- it moves when the sync ends
      local ended, seen = {}, 0
      local deadline = core._clock() + 5
      while seen < 4 and core._clock() < deadline do
        for _, id in ipairs { "ok-1", "ok-2", "exp", "inv" } do
          local x = assert(f.client:get_token(id))
          if not ended[id] and x.lastSyncStatus ~= "inProgress" then
            ended[id] = { status = x.lastSyncStatus, at = vpp.parse_time(x.lastSyncDateTime) }
            seen = seen + 1
          end
        end
      end
      assert.equal(4, seen)
      assert.same({ "completed", "completed", "failed", "failed" },
        { ended["ok-1"].status, ended["ok-2"].status, ended.exp.status, ended.inv.status })
      for _, e in pairs(ended) do assert.is_true(e.at >= started - 1 and e.at <= os.time() + 1) end
      local times = {}
      for _, e in pairs(ended) do times[string.format("%.2f", e.at)] = true end
      local distinct = 0
      for _ in pairs(times) do distinct = distinct + 1 end
      assert.is_true(distinct > 1, "every sync took the same time")
    end)

  it("syncLicenses answers as set: value-wrapped, bare or 204; the client gives a token with its id each time",
    function()
      f.server:tokens { token("a", { appleId = "a@example.com" }) }
      for _, answer in ipairs { "value", "bare", "none" } do
        f.server:config { sync_answer = answer }
        local t = assert(f.client:sync_licenses("a"))
        assert.equal("a", t.id, answer)
        if answer == "none" then
          assert.is_nil(t.lastSyncStatus)
        else
          assert.equal("inProgress", t.lastSyncStatus, answer)
          assert.equal("a@example.com", t.appleId, answer)
          assert.is_nil(t.value, answer)
        end
      end
    end)
end)

describe("wait_for_sync's since", function()
  local f = support.fake_graph({}, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(function()
    f.fresh()
    f.server:tokens { token("a", { lastSyncStatus = "completed", lastSyncDateTime = tenant.timestamp(os.time() - 3600) }) }
  end)
  after_each(f.done)

  it("does not stop on a completed that is older than since", function()
    local t, err = f.client:wait_for_sync("a", { since = os.time(), interval = 0.1, timeout = 0.6 })
    assert.is_nil(t)
    assert.equal("sync_timeout", err.code)
    -- Without since, the stale status ends the wait at once (the old behaviour).
    assert.equal("completed", assert(f.client:wait_for_sync("a", { interval = 0.1, timeout = 0.6 })).lastSyncStatus)
    assert.has_error(function() f.client:wait_for_sync("a", { since = "now" }) end,
      "vpp: opts.since must be a number of seconds since the epoch")
  end)

  it("sync_all{wait} passes the time its syncs started by Graph's Date: a stale read does not end the wait", function()
    f.server:config { sync_seconds = 0.3 }
    -- The first read after the POST still shows the previous sync.
    local stale = token("a", { lastSyncStatus = "completed", lastSyncDateTime = tenant.timestamp(os.time() - 3600) })
    f.server:program("a", { { pass = true }, { json = stale } })
    local report = assert(f.client:sync_all { wait = true, wait_interval = 0.1, wait_timeout = 5 })
    local w = report.waited[1]
    assert.is_nil(w.err)
    assert.equal("completed", w.token.lastSyncStatus)
    assert.is_true(vpp.parse_time(w.token.lastSyncDateTime) >= os.time() - 5, w.token.lastSyncDateTime)
    assert.is_true(w.attempts >= 2)
    assert.is_number(report.results[1].date)
  end)

  it("vpp sync --wait does the same", function()
    local fx = support.cli_fixture {}
    fx.start()
    finally(fx.stop)
    fx.fresh()
    fx.server:config { sync_seconds = 0.3 }
    local stale = token("a", { lastSyncStatus = "completed", lastSyncDateTime = tenant.timestamp(os.time() - 3600) })
    fx.server:tokens { stale }
    fx.server:program("a", { { pass = true }, { json = stale } })
    local r = fx.cli.run({ "sync", "a", "--wait", "--wait-interval", "0.1", "--format", "json" }, fx.env)
    assert.equal(0, r.code, r.err)
    local row = cjson.decode(r.out)[1]
    assert.equal("completed", row.result)
    assert.is_true(vpp.parse_time(row.token.lastSyncDateTime) >= os.time() - 5)
  end)
end)

describe("the command on v1.0 and beta", function()
  local fx = support.cli_fixture {}
  setup(fx.start)
  teardown(fx.stop)
  before_each(function()
    fx.fresh()
    fx.server:tokens {
      token("6d1a2c3b-0000-4000-8000-00000000000a", { displayName = "Oslo HQ", appleId = "oslo@example.com",
        organizationName = "Contoso", token = "APPLE-VPP-SECRET" }),
      token("7e2b3d4c-0000-4000-8000-00000000000b", { displayName = "Lyon HQ", appleId = "lyon@example.com",
        organizationName = "Contoso", token = "APPLE-VPP-SECRET", state = "expired" }),
    }
    fx.server:log()
  end)

  -- The $select of each request for tokens (check's for the VPP apps
  -- have none: Graph's $select there names mobileApp's properties only).
  local function selects()
    local out = {}
    for _, e in ipairs(fx.server:log()) do
      if e.uri:find("/vppTokens", 1, true) then out[#out + 1] = e.uri:match("%$select=([^&]*)") or false end
    end
    return out
  end

  for _, version in ipairs { "v1.0", "beta" } do
    it(("%s: list and check ask with $select, never for the Apple token"):format(version), function()
      for _, args in ipairs { { "list" }, { "list", "--format", "json" }, { "list", "--format", "csv" }, { "check" },
        { "check", "--format", "prometheus" } } do
        table.insert(args, 1, version)
        table.insert(args, 1, "--api-version")
        local r = fx.cli.run(args, fx.env)
        assert.is_true(r.code == 0 or r.code == 2, r.err)
        assert.falsy((r.out .. r.err):find("APPLE-VPP-SECRET", 1, true))
        local sel = selects()
        assert.equal(1, #sel, table.concat(args, " "))
        assert.is_string(sel[1], table.concat(args, " "))
        local names = {}
        for p in sel[1]:gmatch("[^,]+") do names[p] = true end
        assert.is_nil(names.token, table.concat(args, " "))
        assert.truthy(names.state and names.expirationDateTime and names.appleId)
        assert.equal(version == "beta", names.displayName == true, table.concat(args, " "))
      end
      -- The fake would send it: the whole token has it.
      local c = support.client(fx.server, { api_version = version })
      finally(function() c:close() end)
      assert.equal("APPLE-VPP-SECRET", assert(c:list_tokens())[1].token)
    end)
  end

  it("names tokens by displayName on beta, by appleId on v1.0 (distinct where organizationName is not)", function()
    local r = fx.cli.run({ "list" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.matches("\n6d1a2c3b%s+oslo@example%.com%s", r.out)
    assert.matches("\n7e2b3d4c%s+lyon@example%.com%s", r.out)
    assert.falsy(r.out:find("Contoso", 1, true))
    r = fx.cli.run({ "--api-version", "beta", "list" }, fx.env)
    assert.matches("\n6d1a2c3b%s+Oslo HQ%s", r.out)
    r = fx.cli.run({ "check" }, fx.env)
    assert.matches("lyon@example%.com", r.out)
    fx.server:log()
    r = fx.cli.run({ "get", "6d1a2c3b-0000-4000-8000-00000000000a", "--format", "json" }, fx.env)
    assert.equal("[redacted]", cjson.decode(r.out).token) -- get reads the whole token
    assert.is_false(selects()[1])
  end)

  it("sync --all --state expired --state invalid --wait reports those syncs failed (exit 1)", function()
    fx.server:tokens {
      token("6d1a2c3b-0000-4000-8000-00000000000a", { state = "expired" }),
      token("7e2b3d4c-0000-4000-8000-00000000000b", { state = "invalid" }),
      token("8f3c4e5d-0000-4000-8000-00000000000c", { state = "valid" }),
    }
    fx.server:config { sync_seconds = 0.2 }
    local r = fx.cli.run({ "sync", "--all", "--state", "expired", "--state", "invalid", "--wait", "--wait-interval",
      "0.1", "--format", "json" }, fx.env)
    assert.equal(1, r.code)
    local rows = cjson.decode(r.out)
    assert.equal(2, #rows)
    for _, row in ipairs(rows) do assert.equal("failed", row.result) end
    assert.matches("2 tokens: 2 failed", r.err)
  end)

  it("a 204 answer to syncLicenses is a started sync", function()
    fx.server:config { sync_answer = "none" }
    local r = fx.cli.run({ "sync", "6d1a2c3b-0000-4000-8000-00000000000a", "--format", "csv" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.matches("\n6d1a2c3b%-0000%-4000%-8000%-00000000000a,[^,]*,started,", r.out)
  end)
end)
