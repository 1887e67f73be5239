-- vpp.health: the check's rules, on token tables (no server): each rule at
-- its thresholds, severities, licences, and the numbers perfdata carries.
local health = require "vpp.health"
local check = require "vpp.cli.check"
local tenant = require "tenant"

local NOW = 1800000000
local DAY = 86400

local function tok(fields)
  local t = { id = fields.id or "t1", appleId = "a@example.com", state = "valid", lastSyncStatus = "completed",
    expirationDateTime = tenant.timestamp(NOW + (fields.days or 200) * DAY),
    lastSyncDateTime = tenant.timestamp(NOW - (fields.synced_hours or 1) * 3600) }
  for k, v in pairs(fields) do
    if k ~= "days" and k ~= "synced_hours" then t[k] = v end
  end
  return t
end

local function judge(t, opts, apps)
  local o = { now = NOW }
  for k, v in pairs(opts or {}) do o[k] = v end
  return health.judge(t, health.options(o), apps)
end

-- Nagios range "N:" alerts when the value is under N; "@N:" when it is N or more.
local function alerts(range, value)
  local at, low = range:match("^(@?)([%d.]+):$")
  low = tonumber(low)
  if at == "@" then return value >= low end
  return value < low
end

describe("vpp.health", function()
  describe("expiry", function()
    it("counts a threshold as its perfdata range does: under crit_days is CRITICAL, exactly crit_days is not", function()
      assert.equal(health.CRITICAL, judge(tok { days = 6.99 }).level)
      assert.equal(health.WARNING, judge(tok { days = 7 }).level)
      assert.equal(health.WARNING, judge(tok { days = 29.99 }).level)
      assert.equal(health.OK, judge(tok { days = 30 }).level)
    end)

    it("the text and min_days_left agree at both thresholds", function()
      for _, case in ipairs { { 6.999, health.CRITICAL }, { 7, health.WARNING }, { 7.001, health.WARNING },
        { 29.999, health.WARNING }, { 30, health.OK }, { 30.5, health.OK } } do
        local days, want = case[1], case[2]
        local opts = health.options { now = NOW }
        local report = health.evaluate({ tokens = { tok { days = days } } }, opts)
        assert.equal(want, report.status, "days " .. days)
        local perf = check.perfdata(report.numbers, report.min_days, report.max_licenses, opts)
        local value, warn, crit = perf:match("min_days_left=(%-?[%d.]+);([^;]+);([^; ]+)")
        value = tonumber(value)
        local perf_level = alerts(crit, value) and health.CRITICAL or alerts(warn, value) and health.WARNING or health.OK
        assert.equal(want, perf_level, ("days %g: perfdata %s"):format(days, perf))
      end
    end)

    it("min_days_left is there when every token has expired, negative", function()
      local report = health.evaluate({ tokens = { tok { days = -3.5, state = "expired" }, tok { id = "b", days = -1 } } },
        { now = NOW })
      assert.is_true(report.min_days < -3.4 and report.min_days > -3.6, tostring(report.min_days))
      local perf = check.perfdata(report.numbers, report.min_days, nil, health.options { now = NOW })
      assert.matches("min_days_left=%-3%.5", perf)
    end)

    it("'expired N days ago' counts as the DAYS column does (toward zero)", function()
      local j = judge(tok { days = -22.6, state = "expired" })
      assert.same({ "expired 22 days ago" }, j.reasons)
      assert.equal(-22, health.whole_days(-22.6))
      assert.equal(7, health.whole_days(7.9))
      local format = require "vpp.cli.format"
      assert.equal(-22, format.days_left(tok { days = -22.6 }, NOW))
      assert.same({ "expired today" }, judge(tok { days = -0.4 }).reasons)
    end)
  end)

  describe("stale syncs", function()
    it("a valid token synced more than stale_hours ago is WARNING, with how long ago", function()
      local j = judge(tok { synced_hours = 73 })
      assert.equal(health.WARNING, j.level)
      assert.same({ "last synced 3 days ago" }, j.reasons)
      assert.equal(health.OK, judge(tok { synced_hours = 47 }).level)
      j = judge(tok { synced_hours = 7 }, { stale_hours = 6 })
      assert.same({ "last synced 7 hours ago" }, j.reasons)
    end)

    it("Graph's never (0001-01-01) and no date are 'never synced'; expired or invalid tokens are not stale", function()
      assert.same({ "never synced" }, judge(tok { lastSyncDateTime = "0001-01-01T00:00:00Z" }).reasons)
      assert.same({ "never synced" }, judge(tok { lastSyncDateTime = false }).reasons)
      assert.same({ "invalid" }, judge(tok { state = "invalid", synced_hours = 500 }).reasons)
      local report = health.evaluate({ tokens = { tok { synced_hours = 100 }, tok { id = "b" } } }, { now = NOW })
      assert.equal(1, report.numbers.stale)
    end)
  end)

  describe("severities", function()
    it("default per state, and each one overridable", function()
      assert.equal(health.CRITICAL, judge(tok { state = "invalid" }).level)
      assert.equal(health.WARNING, judge(tok { state = "assignedToExternalMDM" }).level)
      assert.equal(health.WARNING, judge(tok { state = "someNewState" }).level)
      local sev = { severity = { assignedToExternalMDM = health.CRITICAL, invalid = health.WARNING,
        expired = health.OK, duplicateLocationId = health.OK } }
      assert.equal(health.CRITICAL, judge(tok { state = "assignedToExternalMDM" }, sev).level)
      assert.equal(health.WARNING, judge(tok { state = "invalid" }, sev).level)
      assert.equal(health.OK, judge(tok { state = "expired", days = -5 }, sev).level)
      assert.equal(health.OK, judge(tok { state = "duplicateLocationId" }, sev).level)
      -- A token past its date is expired, whatever its state says.
      assert.equal(health.OK, judge(tok { days = -1 }, sev).level)
    end)
  end)

  describe("licences", function()
    local function app(used, total, fields)
      local a = { id = "app" .. used, displayName = "Notes", vppTokenId = "t1", usedLicenseCount = used,
        totalLicenseCount = total }
      for k, v in pairs(fields or {}) do a[k] = v end
      if a.vppTokenId == false then a.vppTokenId = nil end
      return a
    end

    it("at or above licenses_warn percent used is WARNING, at or above licenses_crit CRITICAL", function()
      assert.equal(health.OK, judge(tok {}, nil, { app(89, 100) }).level)
      assert.equal(health.WARNING, judge(tok {}, nil, { app(90, 100) }).level)
      assert.equal(health.WARNING, judge(tok {}, nil, { app(99, 100) }).level)
      assert.equal(health.CRITICAL, judge(tok {}, nil, { app(100, 100) }).level)
      assert.equal(health.CRITICAL, judge(tok {}, nil, { app(12, 10) }).level)
      assert.equal(health.OK, judge(tok {}, nil, { app(0, 0) }).level, "no licences is no share")
      local j = judge(tok {}, { licenses_warn = 50, licenses_crit = 80 }, { app(50, 100) })
      assert.equal(health.WARNING, j.level)
      assert.same({ "app Notes: 50% of licences used (50/100)" }, j.reasons)
    end)

    it("perfdata's licenses_used_max range alerts exactly where the text does", function()
      for _, case in ipairs { { 89, health.OK }, { 90, health.WARNING }, { 99, health.WARNING }, { 100, health.CRITICAL } } do
        local opts = health.options { now = NOW }
        local report = health.evaluate({ tokens = { tok {} }, apps = { app(case[1], 100) } }, opts)
        assert.equal(case[2], report.status, case[1] .. "%")
        local perf = check.perfdata(report.numbers, report.min_days, report.max_licenses, opts)
        local value, warn, crit = perf:match("licenses_used_max=([%d.]+)%%;([^;]+);([^;]+);0")
        assert.truthy(value, perf)
        value = tonumber(value)
        local level = alerts(crit, value) and health.CRITICAL or alerts(warn, value) and health.WARNING or health.OK
        assert.equal(case[2], level, perf)
      end
    end)

    it("an app belongs to the token of its vppTokenId, or, without one, of its Apple ID", function()
      local t = tok { id = "t1", appleId = "one@example.com" }
      local apps = { app(1, 10, { id = "x" }), app(2, 10, { id = "y", vppTokenId = "t2" }),
        app(3, 10, { id = "z", vppTokenId = false, vppTokenAppleId = "one@example.com" }),
        app(4, 10, { id = "w", vppTokenId = false, vppTokenAppleId = "two@example.com" }) }
      local ids = {}
      for _, a in ipairs(health.apps_of(t, apps)) do ids[#ids + 1] = a.id end
      assert.same({ "x", "z" }, ids)
    end)

    it("apps that could not be read make an otherwise OK report UNKNOWN, and leave a WARNING as it is", function()
      local r = health.evaluate({ tokens = { tok {} }, apps_err = { message = "no" } }, { now = NOW })
      assert.equal(health.UNKNOWN, r.status)
      r = health.evaluate({ tokens = { tok { days = 10 } }, apps_err = { message = "no" } }, { now = NOW })
      assert.equal(health.WARNING, r.status)
    end)
  end)

  it("lastAppCount 0 after a completed sync is WARNING; absent (v1.0) or after a failed sync it is not judged", function()
    assert.same({ "no apps after its last sync" }, judge(tok { lastAppCount = 0 }).reasons)
    assert.equal(health.OK, judge(tok { lastAppCount = 3 }).level)
    assert.equal(health.OK, judge(tok {}).level)
    assert.same({ "last sync failed" }, judge(tok { lastAppCount = 0, lastSyncStatus = "failed" }).reasons)
  end)
end)
