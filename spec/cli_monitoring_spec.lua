-- `vpp check`'s rules against the fake Graph (stale syncs, severities, the
-- licences of the VPP apps read from beta mobileApps, lastAppCount), the
-- new Prometheus series, and `vpp licenses`.
local support = require "support"
local cjson = require "cjson"
local tenant = require "tenant"

local tok = support.vpp_token
local A = "6d1a2c3b-0000-4000-8000-00000000000a"
local B = "7e2b3d4c-0000-4000-8000-00000000000b"

local function hours_ago(h) return tenant.timestamp(os.time() - h * 3600) end

describe("vpp check's rules", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  local function check(args)
    table.insert(args, 1, "check")
    return fx.cli.run(args, fx.env)
  end

  local function app_requests()
    local n = 0
    for _, e in ipairs(fx.server:log()) do
      if e.uri:find("/beta/deviceAppManagement/mobileApps", 1, true) then n = n + 1 end
    end
    return n
  end

  it("a valid token last synced more than --stale-hours ago (default 48) is WARNING, saying how long ago", function()
    fx.server:tokens { tok { id = A, appleId = "a@example.com", lastSyncDateTime = hours_ago(73) }, tok { id = B } }
    local r = check {}
    assert.equal(1, r.code, r.out)
    assert.matches("^VPP WARNING %- 1 warning of 2 tokens; a@example%.com: last synced 3 days ago |", r.out)
    assert.matches(" stale=1;;;0", r.out)
    assert.equal(0, check({ "--stale-hours", "100" }).code)
    r = check { "--stale-hours", "72", "--format", "json" }
    local j = cjson.decode(r.out)
    assert.same({ "last synced 3 days ago" }, j.tokens[1].reasons)
    assert.is_true(math.abs(j.tokens[1].last_sync_age_hours - 73) < 0.2)
    r = check { "--stale-hours", "0" }
    assert.equal(3, r.code)
    assert.matches("%-%-stale%-hours must be a positive number of hours", r.err)
  end)

  it("--severity STATE=LEVEL sets a state's level (repeatable); a bad one is a usage error (UNKNOWN)", function()
    fx.server:tokens { tok { id = A, appleId = "a@example.com", state = "assignedToExternalMDM" },
      tok { id = B, state = "invalid" } }
    assert.equal(2, check({}).code)
    assert.equal(1, check({ "--severity", "invalid=warning" }).code)
    assert.equal(0, check({ "--severity", "invalid=ok", "--severity", "assignedToExternalMDM=ok" }).code)
    local r = check { "--severity", "invalid=ok", "--severity", "assignedToExternalMDM=critical" }
    assert.equal(2, r.code)
    assert.matches("; a@example%.com: state assignedToExternalMDM |", r.out)
    r = check { "--severity", "bogus=warning" }
    assert.equal(3, r.code)
    assert.matches("%-%-severity must be STATE=ok|warning|critical", r.err)
    assert.equal(3, check({ "--severity", "invalid=fatal" }).code)
    assert.matches("--severity STATE=LEVEL", fx.cli.run({ "check", "--help" }, fx.env).out, 1, true)
  end)

  it("reads every page of the VPP apps: an app at --licenses-warn percent is WARNING, at --licenses-crit CRITICAL", function()
    fx.server:config { page_size = 2 }
    fx.server:tokens { tok { id = A }, tok { id = B } }
    fx.server:tokens { tok { id = A }, tok { id = B, appleId = "b@example.com" } }
    -- Six apps over three pages of two; the full one is on the last page,
    -- a non-VPP app before it that the filter leaves out.
    fx.server:apps {
      { token = A, displayName = "Notes", bundleId = "com.example.notes", total = 100, used = 10 },
      { token = B, displayName = "Maps", bundleId = "com.example.maps", total = 50, used = 20 },
      { token = A, displayName = "Keynote", bundleId = "com.apple.keynote", total = 10, used = 1, type = "macOsVppApp" },
      { token = false, type = "iosStoreApp", displayName = "Portal", bundleId = "com.microsoft.portal" },
      { token = B, displayName = "Calendar", bundleId = "com.example.cal", total = 100, used = 20 },
      { token = B, displayName = "Pages", bundleId = "com.apple.pages", total = 20, used = 18 },
    }
    local r = check {}
    assert.equal(1, r.code, r.out)
    assert.equal(3, app_requests())
    assert.matches("; b@example%.com: app Pages: 90%% of licences used %(18/20%) |", r.out)
    assert.matches(" apps=5;;;0 apps_licenses_warn=1;;;0 apps_licenses_crit=0;;;0 ", r.out)
    assert.matches(" licenses_used_max=90%.0%%;@90:;@100:;0", r.out)
    assert.equal(0, check({ "--licenses-warn", "91" }).code)
    assert.equal(2, check({ "--licenses-crit", "90" }).code)
    assert.equal(3, check({ "--licenses-warn", "95", "--licenses-crit", "90" }).code)
    fx.server:apps { { token = A, displayName = "Notes", total = 5, used = 5 } }
    r = check {}
    assert.equal(2, r.code)
    assert.matches("app Notes: 100%% of licences used %(5/5%)", r.out)
  end)

  it("--no-licenses sends no request for the apps and judges none", function()
    fx.server:tokens { tok { id = A } }
    fx.server:apps { { token = A, displayName = "Notes", total = 5, used = 5 } }
    fx.server:log()
    assert.equal(0, check({ "--no-licenses" }).code)
    assert.equal(0, app_requests())
    local r = check { "--no-licenses", "--format", "json" }
    assert.is_nil(cjson.decode(r.out).tokens[1].apps)
  end)

  it("apps Graph will not list make an OK check UNKNOWN with a line saying so; the tokens are still judged", function()
    fx.server:tokens { tok { id = A }, tok { id = B, expires_in_days = 10 } }
    fx.server:program("@apps", { { status = 403, error = "Forbidden", message = "no apps for you", times = 4 } })
    local r = check {}
    assert.equal(1, r.code, r.out)
    assert.matches("\nUNKNOWN: licences: cannot ask Graph: http 403 Forbidden: no apps for you", r.out)
    fx.server:tokens { tok { id = A } }
    r = check {}
    assert.equal(3, r.code, r.out)
    assert.matches("^VPP UNKNOWN %- 1 token, none expiring in under 30 days; licences: cannot ask Graph", r.out)
  end)

  it("beta: lastAppCount 0 after a completed sync is WARNING (v1.0 has no lastAppCount)", function()
    fx.server:tokens { tok { id = A, displayName = "Oslo", lastAppCount = 0 }, tok { id = B, lastAppCount = 12 } }
    local r = check { "--api-version", "beta", "--no-licenses" }
    assert.equal(1, r.code, r.out)
    assert.matches("; Oslo: no apps after its last sync |", r.out)
    assert.equal(0, check({ "--no-licenses" }).code)
  end)

  it("min_days_left stays in the perfdata when every token has expired, and the text counts days as DAYS does", function()
    fx.server:tokens { tok { id = A, state = "expired", expires_in_days = -22.6 } }
    local r = check { "--no-licenses" }
    assert.equal(2, r.code)
    local left = tonumber(r.out:match("min_days_left=(%-[%d.]+);30:;7:"))
    assert.is_true(left and left < -22.5 and left > -22.7, r.out)
    assert.matches("expired 22 days ago", r.out)
    r = fx.cli.run({ "list" }, fx.env)
    assert.matches("%s%-22\n$", r.out)
  end)

  it("--format prometheus adds the apps' licence gauges and each token's sync age", function()
    fx.server:tokens { tok { id = A, appleId = "a@example.com", lastSyncDateTime = hours_ago(2) } }
    fx.server:apps { { token = A, id = "app-1", displayName = 'Notes "Pro"', bundleId = "com.example.notes",
      total = 40, used = 30 } }
    local r = check { "--format", "prometheus", "--api-version", "beta" }
    assert.equal(0, r.code, r.out)
    local labels = 'tenant="default",id="' .. A .. '",display_name="' .. A .. '",apple_id="a@example.com"'
    local app = labels .. ',app_id="app-1",bundle_id="com.example.notes",app_name="Notes \\"Pro\\""'
    assert.truthy(r.out:find("\nvpp_app_licenses_total{" .. app .. "} 40\n", 1, true), r.out)
    assert.truthy(r.out:find("\nvpp_app_licenses_used{" .. app .. "} 30\n", 1, true), r.out)
    local age = tonumber(r.out:match("\nvpp_token_last_sync_age_seconds{[^}]*} (%d+)\n"))
    assert.is_true(age >= 7190 and age < 7300, tostring(age))
    assert.matches("# TYPE vpp_app_licenses_total gauge", r.out)
  end)
end)

describe("vpp licenses", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  before_each(function()
    fx.server:config { page_size = 2 }
    fx.server:tokens { tok { id = A, appleId = "a@example.com" }, tok { id = B, appleId = "b@example.com" } }
    fx.server:apps {
      { token = A, displayName = "Notes", bundleId = "com.example.notes", total = 100, used = 10 },
      { token = B, displayName = "Maps", bundleId = "com.example.maps", total = 50, used = 45 },
      { token = false, type = "win32LobApp", displayName = "7-Zip" },
      { token = A, displayName = "Keynote", bundleId = "com.apple.keynote", total = 10, used = 9, type = "macOsVppApp" },
      { token = B, displayName = "Pages", bundleId = "com.apple.pages", total = 20, used = 2 },
    }
  end)

  it("prints each token's VPP apps with used, total and free, fullest first, from every page", function()
    local r = fx.cli.run({ "licenses" }, fx.env)
    assert.equal(0, r.code, r.err)
    local l = support.lines(r.out)
    assert.matches("^TOKEN%s+TOKEN NAME%s+APP%s+BUNDLE ID%s+USED%s+TOTAL%s+FREE%s+USED %%$", l[1])
    assert.equal(5, #l)
    assert.matches("^7e2b3d4c%s+b@example%.com%s+Maps%s+com%.example%.maps%s+45%s+50%s+5%s+90%.0%%$", l[2])
    assert.matches("^6d1a2c3b%s+a@example%.com%s+Keynote%s+com%.apple%.keynote%s+9%s+10%s+1%s+90%.0%%$", l[3])
    assert.matches("Notes", l[4])
    assert.matches("Pages", l[5])
    assert.falsy(r.out:find("7-Zip", 1, true))
  end)

  it("--token ID (or its start) keeps one token's apps; json and csv carry the same rows", function()
    fx.server:log()
    local r = fx.cli.run({ "licenses", "--token", A:sub(1, 8), "--format", "json" }, fx.env)
    assert.equal(0, r.code, r.err)
    -- The start of an id is resolved against the one listing of the tokens.
    local lists = 0
    for _, e in ipairs(fx.server:log()) do
      if e.uri:find("/vppTokens", 1, true) then lists = lists + 1 end
    end
    assert.equal(1, lists)
    local rows = cjson.decode(r.out)
    assert.equal(2, #rows)
    assert.same({ "Keynote", 9, 10, 1, 90 }, { rows[1].displayName, rows[1].usedLicenseCount, rows[1].totalLicenseCount,
      rows[1].freeLicenseCount, rows[1].percentUsed })
    assert.equal(A, rows[2].vppTokenId)
    r = fx.cli.run({ "licenses", "--format", "csv" }, fx.env)
    local l = support.lines((r.out:gsub("\r", "")))
    assert.equal("vppTokenId,tokenName,appleId,id,displayName,bundleId,type,usedLicenseCount,totalLicenseCount,"
      .. "freeLicenseCount,percentUsed", l[1])
    assert.equal(5, #l)
    r = fx.cli.run({ "licenses", "--token", "ffffffff-0000-4000-8000-000000000000" }, fx.env)
    assert.equal(1, r.code)
    assert.matches("no token ffffffff", r.err)
  end)
end)
