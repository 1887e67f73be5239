-- The rest of the vppToken API: revokeLicenses, syncLicenseCounts,
-- getLicensesForApp and PATCH, as client methods, module-level functions
-- and subcommands, checked on the server side (what was sent, what it did).
local support = require "support"
local cjson = require "cjson"
local vpp = require "vpp"

local function token(id, fields)
  local t = support.vpp_token { id = id }
  for k, v in pairs(fields or {}) do t[k] = v end
  return t
end

-- The log entries of the requests that were not GETs.
local function writes(server)
  local out = {}
  for _, e in ipairs(server:log()) do
    if e.method ~= "GET" then out[#out + 1] = e end
  end
  return out
end

describe("the rest of the vppToken API", function()
  local f = support.fake_graph({}, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(function()
    f.fresh()
    f.server:tokens { token("t-1", { appleId = "a@example.com" }), token("t-2", { appleId = "b@example.com" }) }
    f.server:log()
  end)
  after_each(f.done)

  describe("list_vpp_apps", function()
    it("reads every page of beta mobileApps filtered to the VPP types, whatever api_version says", function()
      f.server:config { page_size = 2 }
      f.server:apps {
        { token = "t-1", displayName = "Notes", total = 10, used = 3 },
        { token = false, type = "iosStoreApp", displayName = "Portal" },
        { token = "t-2", displayName = "Keynote", total = 5, used = 5, type = "macOsVppApp" },
        { token = "t-1", displayName = "Maps", total = 1, used = 0 },
      }
      local apps = assert(f.client:list_vpp_apps())
      local names = {}
      for i, a in ipairs(apps) do names[i] = a.displayName .. "/" .. a["@odata.type"] end
      assert.same({ "Notes/#microsoft.graph.iosVppApp", "Keynote/#microsoft.graph.macOsVppApp",
        "Maps/#microsoft.graph.iosVppApp" }, names)
      assert.same({ "t-2", "b@example.com", 5, 5 }, { apps[2].vppTokenId, apps[2].vppTokenAppleId,
        apps[2].usedLicenseCount, apps[2].totalLicenseCount })
      local log = f.server:log()
      assert.equal(2, #log)
      assert.matches("^/beta/deviceAppManagement/mobileApps%?%$filter=isof%%28%%27microsoft%.graph%.iosVppApp%%27%%29"
        .. "%%20or%%20isof%%28%%27microsoft%.graph%.macOsVppApp%%27%%29$", log[1].uri)
    end)

    it("and-s a query.filter with the VPP one; a $select Graph refuses is its 400; a bad query raises", function()
      f.server:apps { { token = "t-1", displayName = "Notes", bundleId = "com.a" },
        { token = "t-2", displayName = "Maps", bundleId = "com.b" } }
      local apps = assert(f.client:list_vpp_apps { filter = "bundleId eq 'com.b'" })
      assert.same({ "Maps" }, { apps[1].displayName, apps[2] })
      local none, err = f.client:list_vpp_apps { select = "usedLicenseCount" }
      assert.is_nil(none)
      assert.same({ 400, "BadRequest" }, { err.status, err.code })
      assert.matches("usedLicenseCount", err.message)
      assert.has_error(function() f.client:list_vpp_apps { filter = 42 } end, "vpp: query.filter must be a non-empty string")
      assert.has_error(function() f.client:list_vpp_apps { colour = "red" } end)
      assert.has_error(function() f.client:list_vpp_apps("x") end)
    end)
  end)

  describe("revoke_licenses", function()
    it("POSTs beta revokeLicenses with both parameters as JSON, whatever api_version says, and gives true", function()
      f.server:licenses { ["com.example.notes"] = { { token = "t-1", available = 2, used = 5 } } }
      assert.is_true(f.client:revoke_licenses("t-1", { notify_managed_devices = true }))
      local w = writes(f.server)
      assert.equal(1, #w)
      assert.equal("POST", w[1].method)
      assert.equal("/beta/deviceAppManagement/vppTokens/t-1/revokeLicenses", w[1].uri)
      assert.equal("application/json", w[1].content_type)
      assert.same({ notifyManagedDevices = true, revokeUntrackedLicenses = false }, cjson.decode(w[1].body))
      -- The fake did it: the licences are free, the action is on the token.
      local l = assert(f.client:licenses_for_app("com.example.notes"))
      assert.same({ 0, 7 }, { l[1].usedLicenseCount, l[1].availableLicenseCount })
      local results = f.server:stored("t-1").tokenActionResults
      assert.equal("#microsoft.graph.vppTokenRevokeLicensesActionResult", results[#results]["@odata.type"])
      assert.equal(5, results[#results].totalLicensesCount)
      assert.is_true(f.client:revoke_licenses("t-2", { revoke_untracked_licenses = true }))
      assert.same({ notifyManagedDevices = false, revokeUntrackedLicenses = true }, cjson.decode(writes(f.server)[1].body))
    end)

    it("gives Graph's errors as nil, err (404; a 403 with the hint of the permission it needs)", function()
      local tok, err = f.client:revoke_licenses("nope")
      assert.is_nil(tok)
      assert.same({ "http", 404, "ResourceNotFound" }, { err.kind, err.status, err.code })
      f.server:config { forbidden = "Authorization_RequestDenied" }
      tok, err = f.client:revoke_licenses("t-1")
      assert.is_nil(tok)
      assert.equal(403, err.status)
      assert.equal("Authorization_RequestDenied", err.code)
      assert.matches("DeviceManagementServiceConfig%.ReadWrite%.All", err.hint)
      assert.not_matches("DeviceManagementApps", err.hint)
    end)

    it("is retried like any write on a 429, and refuses bad options by name", function()
      f.server:program("t-1", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "0" } } })
      assert.is_true(f.client:revoke_licenses("t-1"))
      assert.equal(2, #writes(f.server))
      assert.has_error(function() f.client:revoke_licenses("t-1", { notify = true }) end,
        "vpp: unknown option 'notify' (expected notify_managed_devices or revoke_untracked_licenses)")
      assert.has_error(function() f.client:revoke_licenses("t-1", { notify_managed_devices = "yes" }) end,
        "vpp: opts.notify_managed_devices must be a boolean")
      assert.has_error(function() f.client:revoke_licenses("") end)
    end)
  end)

  describe("sync_license_counts", function()
    it("POSTs beta syncLicenseCounts on the collection, with no body, and gives true", function()
      assert.is_true(f.client:sync_license_counts())
      local w = writes(f.server)
      assert.equal(1, #w)
      assert.equal("/beta/deviceAppManagement/vppTokens/syncLicenseCounts", w[1].uri)
      assert.is_nil(w[1].body)
      assert.equal(1, f.server:stats().license_count_syncs)
      f.server:program("@collection", { { status = 503, error = "ServiceUnavailable", headers = { ["Retry-After"] = "0" } } })
      assert.is_true(f.client:sync_license_counts())
      assert.equal(2, #writes(f.server))
      f.server:config { forbidden = "Authorization_RequestDenied" }
      local ok, err = f.client:sync_license_counts()
      assert.is_nil(ok)
      assert.same({ "http", 403 }, { err.kind, err.status })
      assert.matches("DeviceManagementServiceConfig%.ReadWrite%.All", err.hint)
    end)
  end)

  describe("licenses_for_app", function()
    it("reads every page of beta getLicensesForApp, the bundle id an OData literal (quotes doubled, encoded)", function()
      local list = {}
      for i = 1, 5 do list[i] = { token = i % 2 == 1 and "t-1" or "t-2", available = i, used = 10 * i } end
      f.server:licenses { ["com.it's.app"] = list }
      f.server:config { page_size = 2 }
      local got = assert(f.client:licenses_for_app("com.it's.app"))
      assert.equal(5, #got)
      for i, l in ipairs(got) do
        assert.same({ list[i].token, i, 10 * i }, { l.vppTokenId, l.availableLicenseCount, l.usedLicenseCount })
        assert.equal(l.vppTokenId == "t-1" and "a@example.com" or "b@example.com", l.appleId)
      end
      local log = f.server:log()
      assert.equal(3, #log)
      assert.equal("/beta/deviceAppManagement/vppTokens/getLicensesForApp(bundleId='com.it%27%27s.app')", log[1].uri)
      assert.same({}, assert(f.client:licenses_for_app("com.unknown")))
    end)

    it("a 403 names the read permission it needs", function()
      f.server:config { forbidden = "Forbidden" }
      local l, err = f.client:licenses_for_app("com.example.notes")
      assert.is_nil(l)
      assert.matches("DeviceManagementServiceConfig%.Read%.All", err.hint)
      assert.has_error(function() f.client:licenses_for_app(42) end)
    end)
  end)

  describe("update_token", function()
    it("PATCHes the fields as given (JSON) at api_version and gives the token Graph sends back", function()
      local t = assert(f.client:update_token("t-1", { automaticallyUpdateApps = true, countryOrRegion = "de" }))
      assert.is_true(t.automaticallyUpdateApps)
      assert.equal("de", t.countryOrRegion)
      local w = f.server:log()
      assert.equal(1, #w) -- no read-back: Graph sent the token
      assert.same({ "PATCH", "/v1.0/deviceAppManagement/vppTokens/t-1", "application/json" },
        { w[1].method, w[1].uri, w[1].content_type })
      assert.same({ automaticallyUpdateApps = true, countryOrRegion = "de" }, cjson.decode(w[1].body))
      assert.is_true(f.server:stored("t-1").automaticallyUpdateApps)
    end)

    it("reads the token back when Graph answers 204", function()
      f.server:config { patch_answer = "none" }
      local t = assert(f.client:update_token("t-1", { automaticallyUpdateApps = true }))
      assert.is_true(t.automaticallyUpdateApps)
      assert.equal("a@example.com", t.appleId)
      local log = f.server:log()
      assert.same({ "PATCH", "GET" }, { log[1].method, log[2].method })
      assert.equal(log[1].uri, log[2].uri)
    end)

    it("follows api_version, and sends unknown keys as given (Graph refuses them)", function()
      local beta = support.client(f.server, { api_version = "beta" })
      finally(function() beta:close() end)
      assert(beta:update_token("t-2", { displayName = "Lisbon" }))
      assert.equal("/beta/deviceAppManagement/vppTokens/t-2", writes(f.server)[1].uri)
      local t, err = f.client:update_token("t-1", { displayName = "Lisbon" }) -- not a v1.0 property
      assert.is_nil(t)
      assert.same({ 400, "BadRequest" }, { err.status, err.code })
      assert.matches("displayName", err.message)
      assert.same({ displayName = "Lisbon" }, cjson.decode(writes(f.server)[1].body))
    end)

    it("refuses fields that are not a non-empty table, or not JSON, naming the argument", function()
      assert.has_error(function() f.client:update_token("t-1") end)
      local ok, e = pcall(f.client.update_token, f.client, "t-1", "x")
      assert.is_false(ok)
      assert.matches("fields must be a table", e)
      ok, e = pcall(f.client.update_token, f.client, "t-1", {})
      assert.is_false(ok)
      assert.matches("fields must name at least one property", e)
      ok, e = pcall(f.client.update_token, f.client, "t-1", { x = print })
      assert.is_false(ok)
      assert.matches("fields cannot be sent as JSON", e)
      assert.same({}, writes(f.server))
    end)
  end)

  describe("module-level functions", function()
    it("make a client from opts for one call, like vpp.sync_licenses", function()
      local opts = { base_url = f.server.url, access_token = support.TOKEN, rate_limit = false }
      assert.is_true(vpp.revoke_licenses("t-1", { notify_managed_devices = true }, opts))
      assert.is_true(vpp.sync_license_counts(opts))
      f.server:licenses { ["com.x"] = { { token = "t-2", available = 1, used = 2 } } }
      assert.equal("t-2", assert(vpp.licenses_for_app("com.x", opts))[1].vppTokenId)
      assert.is_true(assert(vpp.update_token("t-1", { automaticallyUpdateApps = true }, opts)).automaticallyUpdateApps)
      local uris = {}
      for _, e in ipairs(f.server:log()) do uris[#uris + 1] = e.method .. " " .. e.uri end
      assert.same({
        "POST /beta/deviceAppManagement/vppTokens/t-1/revokeLicenses",
        "POST /beta/deviceAppManagement/vppTokens/syncLicenseCounts",
        "GET /beta/deviceAppManagement/vppTokens/getLicensesForApp(bundleId='com.x')",
        "PATCH /v1.0/deviceAppManagement/vppTokens/t-1",
      }, uris)
      local ok, e = pcall(vpp.licenses_for_app, nil, opts)
      assert.is_false(ok)
      assert.matches("bad argument #1 .*bundle_id must be a string", e)
    end)
  end)
end)

describe("the vpp command's vppToken subcommands", function()
  local fx = support.cli_fixture {}
  setup(fx.start)
  teardown(fx.stop)
  local ID = "6d1a2c3b-0000-4000-8000-00000000000a"
  before_each(function()
    fx.fresh()
    fx.server:tokens { token(ID, { appleId = "a@example.com" }), token("6d1a2c3b-0000-4000-8000-00000000000b") }
    fx.server:log()
  end)

  it("revoke-licenses asks on a terminal: y revokes, anything else does not", function()
    local r = fx.cli.run({ "revoke-licenses", ID, "--notify-devices" }, fx.env, { pty = true, input = "n\n" })
    assert.equal(1, r.code)
    assert.matches("revoke every app licence of token " .. ID:gsub("%-", "%%-") .. " and notify its devices%? %[y/N%]",
      r.out)
    assert.matches("nothing revoked", r.out)
    assert.same({}, writes(fx.server))
    r = fx.cli.run({ "revoke-licenses", ID, "--notify-devices", "--untracked" }, fx.env, { pty = true, input = "y\n" })
    assert.equal(0, r.code, r.out)
    local w = writes(fx.server)
    assert.equal(1, #w)
    assert.same({ notifyManagedDevices = true, revokeUntrackedLicenses = true }, cjson.decode(w[1].body))
  end)

  it("revoke-licenses needs --yes when stdin is not a terminal (usage error), and takes an id prefix", function()
    local r = fx.cli.run({ "revoke-licenses", ID }, fx.env)
    assert.equal(64, r.code)
    assert.matches("not on a terminal: give %-%-yes", r.err)
    assert.same({}, writes(fx.server))
    r = fx.cli.run({ "revoke-licenses", "--yes", ID:sub(1, 8) .. "-0000-4000-8000-00000000000a" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.equal("/beta/deviceAppManagement/vppTokens/" .. ID .. "/revokeLicenses", writes(fx.server)[1].uri)
    fx.server:config { forbidden = "Authorization_RequestDenied" }
    r = fx.cli.run({ "revoke-licenses", "-y", ID }, fx.env)
    assert.equal(1, r.code)
    assert.matches("http 403 Authorization_RequestDenied.*hint: .*DeviceManagementServiceConfig%.ReadWrite%.All", r.err)
  end)

  it("sync-license-counts POSTs the action", function()
    local r = fx.cli.run({ "sync-license-counts" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.equal("/beta/deviceAppManagement/vppTokens/syncLicenseCounts", writes(fx.server)[1].uri)
    assert.matches("licence counts are being refreshed", r.err)
  end)

  it("licenses --app prints each token's counts, fullest (largest share in use) first, in each format", function()
    -- b has fewer in use but none left: it comes first.
    fx.server:licenses { ["com.example.notes"] = {
      { token = ID, available = 40, used = 10 }, { token = "6d1a2c3b-0000-4000-8000-00000000000b", available = 0, used = 9 } } }
    local r = fx.cli.run({ "licenses", "--app", "com.example.notes" }, fx.env)
    assert.equal(0, r.code, r.err)
    local l = {}
    for line in r.out:gmatch("[^\n]+") do l[#l + 1] = line end
    assert.matches("^TOKEN%s+APPLE ID%s+ORGANIZATION%s+USED%s+AVAILABLE$", l[1])
    assert.matches("^6d1a2c3b%s+vpp@contoso%.example%.com%s+Contoso%s+9%s+0$", l[2])
    assert.matches("^6d1a2c3b%s+a@example%.com%s+Contoso%s+10%s+40$", l[3])
    r = fx.cli.run({ "licenses", "--app", "com.example.notes", "--format", "json" }, fx.env)
    local printed = cjson.decode(r.out)
    assert.same({ 9, 10 }, { printed[1].usedLicenseCount, printed[2].usedLicenseCount })
    r = fx.cli.run({ "licenses", "--app", "com.example.notes", "--format", "csv" }, fx.env)
    assert.matches("^vppTokenId,appleId,organizationName,usedLicenseCount,availableLicenseCount\r?\n", r.out)
    r = fx.cli.run({ "licenses", "--app", "com.example.notes", "--token", ID }, fx.env)
    assert.equal(64, r.code)
    assert.matches("%-%-token and %-%-app", r.err)
  end)

  it("set --auto-update on|off PATCHes automaticallyUpdateApps and prints the token", function()
    local r = fx.cli.run({ "set", ID, "--auto-update", "on", "--format", "json" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.is_true(cjson.decode(r.out).automaticallyUpdateApps)
    assert.same({ automaticallyUpdateApps = true }, cjson.decode(writes(fx.server)[1].body))
    r = fx.cli.run({ "set", ID, "--auto-update", "off" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.matches("\nautomaticallyUpdateApps%s+false\n", r.out)
    r = fx.cli.run({ "set", ID, "--auto-update", "maybe" }, fx.env)
    assert.equal(64, r.code)
  end)

  it("renew --token-file uploads the file's content, which no output, log line or trace shows", function()
    local secret = "eyJleHBEYXRlIjoiMjAyNy0xMi0wMVQwMDowMDowMCswMDAwIiwidG9rZW4iOiJTRUNSRVQifQ=="
    local path = os.tmpname()
    finally(function() os.remove(path) end)
    local file = assert(io.open(path, "w"))
    file:write(secret, "\n")
    file:close()
    fx.server:tokens { token(ID, { state = "expired", expires_in_days = -3 }) }
    local r = fx.cli.run({ "-v", "renew", ID, "--token-file", path, "--format", "json" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.equal(secret, fx.server:renewed(ID))
    local t = cjson.decode(r.out)
    assert.equal("valid", t.state)
    assert.falsy((r.out .. r.err):find(secret, 1, true))
    assert.matches("PATCH /v1%.0/deviceAppManagement/vppTokens/" .. ID:gsub("%-", "%%-"), r.err)
    -- A Graph error that quotes the value does not print it either.
    fx.server:program(ID, { { status = 400, error = "BadRequest", message = "Invalid token: " .. secret } })
    r = fx.cli.run({ "renew", ID, "--token-file", path }, fx.env)
    assert.equal(1, r.code)
    assert.matches("Invalid token: %[redacted%]", r.err)
    assert.falsy((r.out .. r.err):find(secret, 1, true))
    r = fx.cli.run({ "renew", ID, "--token-file", "/nonexistent/file" }, fx.env)
    assert.equal(1, r.code)
    assert.matches("cannot read %-%-token%-file", r.err)
  end)
end)

describe("the rest of the vppToken API under a loop", function()
  local f = support.fake_graph({}, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  local has, cqueues = pcall(require, "cqueues")
  local it_cqueues = has and it or function(title) pending(title .. " (no lua-cqueues for " .. _VERSION .. ")") end
  it_cqueues("runs under cqueues, the PATCH's 204 read back inside the same call", function()
    f.server:tokens { token("t-1") }
    f.server:config { patch_answer = "none" }
    local c = support.client(f.server, { loop = require "vpp.loop.cqueues", rate_limit = false })
    finally(function() c:close() end)
    local cq, got = cqueues.new(), {}
    cq:wrap(function()
      got.update = c:update_token("t-1", { automaticallyUpdateApps = true })
      got.revoke = c:revoke_licenses("t-1")
      got.counts = c:sync_license_counts()
      got.licenses = c:licenses_for_app("com.example")
    end)
    assert(cq:loop())
    assert.is_true(got.update.automaticallyUpdateApps)
    assert.same({ true, true, {} }, { got.revoke, got.counts, got.licenses })
    local methods = {}
    for _, e in ipairs(f.server:log()) do methods[#methods + 1] = e.method end
    assert.same({ "PATCH", "GET", "POST", "POST", "GET" }, methods)
  end)
end)
