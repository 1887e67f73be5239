-- The vpp command, installed with `make install` and run as a subprocess
-- against the fake Graph: each subcommand and output format, exit codes,
-- usage errors, missing credentials and an unreachable server.
local support = require "support"
local cjson = require "cjson"
local vpp = require "vpp"
local fields = require "vpp.cli.fields"

-- RFC 4180, enough for the command's output: quoted fields with "" inside.
local function parse_csv(text)
  local rows, row, field, i, quoted = {}, {}, {}, 1, false
  while i <= #text do
    local c = text:sub(i, i)
    if quoted then
      if c == '"' and text:sub(i + 1, i + 1) == '"' then
        field[#field + 1] = '"'
        i = i + 1
      elseif c == '"' then
        quoted = false
      else
        field[#field + 1] = c
      end
    elseif c == '"' then
      quoted = true
    elseif c == "," then
      row[#row + 1] = table.concat(field)
      field = {}
    elseif c == "\r" and text:sub(i + 1, i + 1) == "\n" then
      row[#row + 1] = table.concat(field)
      rows[#rows + 1] = row
      row, field = {}, {}
      i = i + 1
    else
      field[#field + 1] = c
    end
    i = i + 1
  end
  assert(#row == 0 and #field == 0, "CSV does not end with CRLF")
  return rows
end

local lines = support.lines

describe("the vpp command", function()
  local fx = support.cli_fixture { tokens = 30, sync_seconds = 0.3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  local function library_list(query, opts)
    local c = support.client(fx.server, opts)
    local list = assert(c:list_tokens(query))
    c:close()
    return list
  end

  local function posts()
    local out = {}
    for _, e in ipairs(fx.server:log()) do
      if e.method == "POST" then out[#out + 1] = e.uri end
    end
    return out
  end

  local function no_traceback(r)
    assert.falsy((r.out .. r.err):find("traceback", 1, true), r.err)
    assert.falsy((r.out .. r.err):find("%.lua:%d+:"), r.err)
  end

  describe("list", function()
    it("prints an aligned table with a row per token, and the counts", function()
      local r = fx.cli.run({ "list" }, fx.env)
      assert.equal(0, r.code, r.err)
      local l = lines(r.out)
      assert.matches("^ID%s+NAME%s+STATE%s+SYNC%s+LAST SYNC %(UTC%)%s+EXPIRES%s+DAYS$", l[1])
      assert.equal(30 + 1, #l)
      local all = library_list()
      -- Columns line up: every row's state starts where the header's does.
      local at = l[1]:find("STATE", 1, true)
      for i, t in ipairs(all) do
        assert.equal(t.id:sub(1, 8), l[i + 1]:sub(1, 8))
        assert.equal(t.state, l[i + 1]:sub(at):match("^(%S+)"))
      end
      -- The counts are a diagnostic: stderr.
      assert.matches("^vpp: 30 tokens: [^\n]*%d+ valid[^\n]*\n$", r.err)
      assert.falsy(r.out:find("\27", 1, true), "escape codes when not on a terminal")
    end)

    it("--format json prints the tokens as Graph returned them, every property but token", function()
      local r = fx.cli.run({ "list", "--format", "json", "--api-version", "beta" }, fx.env)
      assert.equal(0, r.code, r.err)
      local printed = cjson.decode(r.out)
      local all = library_list({ select = fields.select("beta", "json") }, { api_version = "beta" })
      assert.is_nil(printed[1].token)
      assert.is_number(printed[1].lastAppCount)
      assert.equal(#all, #printed)
      for i, t in ipairs(all) do
        for k, v in pairs(t) do
          if type(v) ~= "table" then assert.equal(v, printed[i][k], k) end
        end
        assert.same(t.roleScopeTagIds, printed[i].roleScopeTagIds)
        assert.same(t.tokenActionResults, printed[i].tokenActionResults)
      end
      assert.matches('"roleScopeTagIds": %[', r.out)
    end)

    it("--format json prints [] when nothing matches, and empty arrays as []", function()
      fx.server:tokens { support.vpp_token { id = "a", roleScopeTagIds = {} } }
      local r = fx.cli.run({ "list", "--format", "json", "--state", "unknown" }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.equal("[]\n", r.out)
      r = fx.cli.run({ "list", "--format", "json", "--api-version", "beta" }, fx.env)
      assert.matches('"roleScopeTagIds": %[%]', r.out)
    end)

    it("--format csv prints a header of property names and a row per token, quoted where needed", function()
      fx.server:tokens {
        support.vpp_token { id = "t-1", displayName = 'Oslo, "North" campus' },
        support.vpp_token { id = "t-2", displayName = "Line\nbreak", state = "expired" },
      }
      local r = fx.cli.run({ "list", "--format", "csv", "--api-version", "beta" }, fx.env)
      assert.equal(0, r.code, r.err)
      local rows = parse_csv(r.out)
      assert.same({ "id", "displayName", "organizationName", "appleId", "vppTokenAccountType", "state",
        "lastSyncStatus", "lastSyncDateTime", "expirationDateTime" }, rows[1])
      assert.equal(3, #rows)
      assert.same({ "t-1", 'Oslo, "North" campus', "valid" }, { rows[2][1], rows[2][2], rows[2][6] })
      assert.same({ "t-2", "Line\nbreak", "expired" }, { rows[3][1], rows[3][2], rows[3][6] })
    end)

    it("filters by --state, --sync-status and --expiring-within as vpp.filter does", function()
      local all = library_list()
      local function ids_of(list)
        local out = {}
        for i, t in ipairs(list) do out[i] = t.id end
        return out
      end
      local r = fx.cli.run({ "list", "--format", "json", "--state", "expired", "--state", "invalid" }, fx.env)
      assert.equal(0, r.code, r.err)
      local want = ids_of(vpp.filter(all, { state = { "expired", "invalid" } }))
      assert.is_true(#want > 0)
      assert.same(want, ids_of(cjson.decode(r.out)))
      r = fx.cli.run({ "list", "--format", "json", "--sync-status", "failed" }, fx.env)
      assert.same(ids_of(vpp.filter(all, { last_sync_status = "failed" })), ids_of(cjson.decode(r.out)))
      r = fx.cli.run({ "list", "--format", "json", "--expiring-within", "30" }, fx.env)
      want = ids_of(vpp.filter(all, { expires_within = 30 * 86400 }))
      assert.is_true(#want > 0)
      assert.same(want, ids_of(cjson.decode(r.out)))
    end)

    it("never prints the Apple VPP token string itself", function()
      fx.server:tokens { support.vpp_token { id = "a", token = "APPLE-STOKEN-secret-value" } }
      for _, f in ipairs { "table", "json", "csv" } do
        local r = fx.cli.run({ "list", "--format", f }, fx.env)
        assert.equal(0, r.code, r.err)
        assert.falsy(r.out:find("APPLE-STOKEN", 1, true), f)
      end
      local r = fx.cli.run({ "get", "a", "--format", "json" }, fx.env)
      assert.equal("[redacted]", cjson.decode(r.out).token)
    end)
  end)

  describe("get", function()
    it("prints one token in each format", function()
      local t = library_list()[3]
      local r = fx.cli.run({ "get", t.id, "--format", "json" }, fx.env)
      assert.equal(0, r.code, r.err)
      local printed = cjson.decode(r.out)
      assert.equal(t.id, printed.id)
      assert.equal(t.appleId, printed.appleId)
      r = fx.cli.run({ "get", t.id }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.matches("^PROPERTY%s+VALUE\n", r.out)
      assert.matches("\nappleId%s+" .. t.appleId:gsub("%p", "%%%0") .. "\n", r.out)
      r = fx.cli.run({ "get", t.id, "--format", "csv" }, fx.env)
      local rows = parse_csv(r.out)
      assert.equal(2, #rows)
      assert.equal(t.id, rows[2][1])
    end)

    it("takes the start of an id (8 characters or more, as the tables print them) when it is unique", function()
      local all = library_list()
      local t = all[2]
      local r = fx.cli.run({ "get", t.id:sub(1, 8), "--format", "json" }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.equal(t.id, cjson.decode(r.out).id)
      local log = fx.server:log()
      assert.matches("%$select=id", log[#log - 1].uri) -- one listing of the ids, then the get
      assert.equal("/v1.0/deviceAppManagement/vppTokens/" .. t.id, log[#log].uri)
      r = fx.cli.run({ "sync", t.id:sub(1, 10):upper(), "--format", "csv" }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.truthy(r.out:find("\n" .. t.id .. ",", 1, true), r.out)
      -- a full id costs no listing
      fx.server:log()
      assert.equal(0, fx.cli.run({ "get", t.id }, fx.env).code)
      assert.equal(1, #fx.server:log())
    end)

    it("refuses an ambiguous or too short start of an id (usage error, the candidates named)", function()
      fx.server:tokens { support.vpp_token { id = "abcdef01-1111-4111-8111-111111111111" },
        support.vpp_token { id = "abcdef01-2222-4222-8222-222222222222" } }
      local r = fx.cli.run({ "get", "abcdef01" }, fx.env)
      assert.equal(64, r.code)
      assert.matches("'abcdef01' is the start of 2 token ids: abcdef01%-1111%-4111%-8111%-111111111111,"
        .. " abcdef01%-2222", r.err)
      r = fx.cli.run({ "sync", "abcdef" }, fx.env)
      assert.equal(64, r.code)
      assert.matches("too short", r.err)
      r = fx.cli.run({ "get", "abcdef01-2" }, fx.env)
      assert.equal(0, r.code, r.err)
    end)

    it("an unknown id: exit 1 and one line with Graph's error, no traceback", function()
      local r = fx.cli.run({ "get", "no-such-token" }, fx.env)
      assert.equal(1, r.code)
      assert.equal("", r.out)
      assert.equal(1, #lines(r.err))
      assert.matches("^vpp: http 404 ResourceNotFound: ", r.err)
      no_traceback(r)
    end)

    it("a list page of non-objects: exit 1 and one line, not a bug (70)", function()
      for _, args in ipairs { { "list" }, { "sync", "--all", "--dry-run" } } do
        fx.server:program("@list", { { json = { value = { 1, 2 } } } })
        local r = fx.cli.run(args, fx.env)
        assert.equal(1, r.code, r.err)
        assert.equal(1, #lines(r.err))
        assert.matches("decode 200 invalid_response", r.err)
        no_traceback(r)
      end
    end)
  end)

  describe("sync", function()
    it("syncs the given ids: exit 0, a row per token", function()
      local all = library_list()
      fx.server:log()
      local r = fx.cli.run({ "sync", all[1].id, all[2].id, "--format", "json" }, fx.env)
      assert.equal(0, r.code, r.err)
      local printed = cjson.decode(r.out)
      assert.equal(2, #printed)
      assert.same({ all[1].id, "started" }, { printed[1].id, printed[1].result })
      assert.equal("inProgress", printed[1].token.lastSyncStatus)
      local sent = posts()
      table.sort(sent)
      local want = { "/v1.0/deviceAppManagement/vppTokens/" .. all[1].id .. "/syncLicenses",
        "/v1.0/deviceAppManagement/vppTokens/" .. all[2].id .. "/syncLicenses" }
      table.sort(want)
      assert.same(want, sent)
      assert.matches("2 tokens: 2 started", r.err)
    end)

    it("--all syncs the valid tokens not already syncing; skipped ones are no failure", function()
      local all = library_list()
      fx.server:log()
      local valid = vpp.filter(all, { state = "valid" })
      local busy = vpp.filter(valid, { last_sync_status = "inProgress" })
      assert.is_true(#busy > 0, "the tenant has tokens already syncing")
      local r = fx.cli.run({ "sync", "--all", "--format", "csv" }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.equal(#valid - #busy, #posts())
      local rows = parse_csv(r.out)
      assert.same({ "id", "displayName", "result", "lastSyncStatus", "lastSyncDateTime", "error" }, rows[1])
      local skipped = 0
      for i = 2, #rows do
        if rows[i][3] == "skipped" then skipped = skipped + 1 end
      end
      assert.equal(#busy, skipped)
      assert.matches(("%d skipped %%(already syncing%%)"):format(#busy), r.err)
    end)

    it("--dry-run syncs nothing and shows what would be synced", function()
      local all = library_list()
      fx.server:log()
      local r = fx.cli.run({ "sync", "--all", "--state", "expired", "--include-in-progress", "--dry-run",
        "--format", "json" }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.same({}, posts())
      local printed = cjson.decode(r.out)
      assert.equal(#vpp.filter(all, { state = "expired" }), #printed)
      for _, p in ipairs(printed) do assert.equal("would sync", p.result) end
    end)

    it("--wait waits for the syncs to complete", function()
      local all = vpp.filter(library_list(), { state = "valid" })
      local r = fx.cli.run({ "sync", all[1].id, all[2].id, "--wait", "--wait-interval", "0.2", "--format", "json" }, fx.env)
      assert.equal(0, r.code, r.err)
      for _, p in ipairs(cjson.decode(r.out)) do
        assert.equal("completed", p.result)
        assert.equal("completed", p.token.lastSyncStatus)
      end
    end)

    it("exit 1 when a sync ends failed, with the summary on stderr", function()
      local all = library_list()
      fx.server:syncfail { all[2].id }
      local r = fx.cli.run({ "sync", all[1].id, all[2].id, "--wait", "--wait-interval", "0.2" }, fx.env)
      assert.equal(1, r.code)
      assert.matches("2 tokens: 1 completed, 1 failed", r.err)
      assert.matches("failed", r.out)
    end)

    it("exit 1 when some ids fail, after syncing the others", function()
      local all = library_list()
      fx.server:log()
      local r = fx.cli.run({ "sync", "no-such-token", all[1].id }, fx.env)
      assert.equal(1, r.code)
      assert.equal(2, #posts()) -- both were tried
      assert.matches("2 tokens: 1 started, 1 error", r.err)
      assert.matches("http 404 ResourceNotFound", r.out)
      no_traceback(r)
    end)

    it("sync-apps calls the legacy beta action for the organization", function()
      local all = library_list()
      fx.server:log()
      local r = fx.cli.run({ "sync-apps", "--organization", "org-1", all[1].id }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.same({ "/beta/organization/org-1/appleVolumePurchaseProgramTokens/" .. all[1].id .. "/syncApps" },
        posts())
    end)
  end)

  describe("usage errors", function()
    local cases = {
      { {}, "Usage: vpp ", "a command is required" },
      { { "frobnicate" }, "Usage: vpp ", "unknown command" },
      { { "list", "--format", "xml" }, "Usage: vpp list", "must be one of 'table', 'json', 'csv'" },
      { { "list", "--bogus" }, "Usage: vpp list", "unknown option '%-%-bogus'" },
      { { "get" }, "Usage: vpp get", "missing argument" },
      { { "sync" }, "Usage: vpp sync", "give token ids, or %-%-all" },
      { { "sync", "x", "--all" }, "Usage: vpp sync", "not both" },
      { { "sync", "x", "--state", "valid" }, "Usage: vpp sync", "go with %-%-all" },
      { { "sync", "--all", "--concurrency", "0" }, "Usage: vpp sync", "%-%-concurrency must be an integer" },
      { { "sync-apps", "x" }, "Usage: vpp sync-apps", "missing option '%-%-organization'" },
      { { "--timeout", "0", "list" }, "Usage: vpp", "%-%-timeout must be a positive number" },
      { { "--graph-url", "ftp://example.com", "list" }, "Usage: vpp list", "%-%-graph%-url must be an http" },
    }
    for _, case in ipairs(cases) do
      it("vpp " .. table.concat(case[1], " ") .. ": exit 64 and the usage", function()
        local r = fx.cli.run(case[1], fx.env)
        assert.equal(64, r.code, r.err)
        assert.equal("", r.out)
        assert.truthy(r.err:find(case[2], 1, true), r.err)
        assert.matches(case[3], r.err)
        no_traceback(r)
      end)
    end

    it("check's usage errors are UNKNOWN (3), as monitoring plugins do", function()
      for _, args in ipairs { { "check", "--warn-days", "x" }, { "check", "--warn-days", "3", "--crit-days", "9" } } do
        local r = fx.cli.run(args, fx.env)
        assert.equal(3, r.code, r.err)
        assert.truthy(r.err:find("Usage: vpp check", 1, true))
      end
    end)

    it("--help and --version exit 0", function()
      local r = fx.cli.run({ "--help" }, fx.env)
      assert.equal(0, r.code)
      assert.matches("^Usage: vpp", r.out)
      assert.matches("GRAPH_ACCESS_TOKEN", r.out)
      r = fx.cli.run({ "sync", "--help" }, {})
      assert.equal(0, r.code)
      assert.matches("^Usage: vpp sync", r.out)
      r = fx.cli.run({ "--version" }, {})
      assert.equal(0, r.code)
      assert.matches("^vpp " .. vpp._VERSION:gsub("%.", "%%.") .. " ", r.out)
    end)
  end)

  describe("run-time failures", function()
    it("no credentials: one line naming the variables (exit 1; check: 3)", function()
      for _, args in ipairs { { "list" }, { "sync", "--all" } } do
        local r = fx.cli.run(args, { GRAPH_URL = fx.server.url })
        assert.equal(1, r.code, args[1])
        assert.equal(1, #lines(r.err), r.err)
        for _, v in ipairs { "GRAPH_ACCESS_TOKEN", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET" } do
          assert.truthy(r.err:find(v, 1, true), v)
        end
        no_traceback(r)
      end
      local r = fx.cli.run({ "check" }, { GRAPH_URL = fx.server.url })
      assert.equal(3, r.code)
      assert.matches("^VPP UNKNOWN %- .*GRAPH_ACCESS_TOKEN", r.out)
    end)

    it("a 403 prints Intune's text and the permission the call needs (exit 1; check: 3)", function()
      local denied = { status = 403, error = "Forbidden", intune = true,
        message = "Application is not authorized to perform this operation." }
      fx.server:program("@list", { denied, denied })
      local r = fx.cli.run({ "list" }, fx.env)
      assert.equal(1, r.code)
      assert.equal(1, #lines(r.err), r.err)
      assert.matches("http 403 Forbidden: Application is not authorized to perform this operation%.", r.err)
      assert.matches("hint: the application needs the Microsoft Graph application permission"
        .. " DeviceManagementApps%.Read%.All", r.err)
      assert.not_matches("_version", r.err)
      r = fx.cli.run({ "check" }, fx.env)
      assert.equal(3, r.code)
      assert.matches("^VPP UNKNOWN %- .*DeviceManagementApps%.Read%.All", r.out)
    end)

    it("an unreachable fx.server: exit 1 for list and sync, 3 (UNKNOWN) for check", function()
      local closed = { GRAPH_URL = "http://127.0.0.1:1", GRAPH_ACCESS_TOKEN = support.TOKEN }
      local r = fx.cli.run({ "sync", "--all" }, closed)
      assert.equal(1, r.code)
      assert.matches("COULDNT_CONNECT", r.err)
      no_traceback(r)
      r = fx.cli.run({ "--max-retries", "0", "sync", "some-id" }, closed)
      assert.equal(1, r.code)
      r = fx.cli.run({ "--max-retries", "0", "list" }, closed)
      assert.equal(1, r.code)
      assert.equal(1, #lines(r.err))
      for _, f in ipairs { "text", "json", "prometheus" } do
        r = fx.cli.run({ "--max-retries", "0", "check", "--format", f }, closed)
        assert.equal(3, r.code, f)
        no_traceback(r)
      end
    end)
  end)

  describe("examples/", function()
    local function run_example(name)
      local vars = {}
      for k, v in pairs(fx.env) do vars[#vars + 1] = k .. "=" .. support.quote(v) end
      return support.run_lua(support.slurp("examples/" .. name), table.concat(vars, " "))
    end

    it("sync_and_wait.lua syncs every valid token and waits", function()
      fx.server:config { sync_seconds = 0.2 }
      local all = library_list()
      local out, ok = run_example("sync_and_wait.lua")
      assert.is_true(ok, out)
      local valid = vpp.filter(all, { state = "valid" })
      local busy = vpp.filter(valid, { last_sync_status = "inProgress" })
      assert.matches(("%d listed, %d synced, %d skipped %%(already syncing%%), 0 failed"):format(
        #all, #valid - #busy, #busy), out)
    end)

    it("luv_bot.lua syncs and waits inside a luv loop whose heartbeat keeps beating", function()
      fx.server:config { sync_seconds = 0.6 }
      local out, ok = run_example("luv_bot.lua")
      assert.is_true(ok, out)
      local all = library_list()
      assert.matches(("status: %d tokens"):format(#all), out)
      assert.matches("synced %d+ of " .. #all .. " listed; %d+ done waiting", out)
      assert.is_true(tonumber(out:match("heartbeats while working: (%d+)")) >= 5, out)
    end)

    it("expiry_report.lua lists the tokens expiring soon", function()
      local out, ok = run_example("expiry_report.lua")
      assert.is_true(ok, out)
      local soon = vpp.filter(library_list(), { expires_within = 60 * 86400 })
      assert.matches("Expiring within 60 days:", out)
      for _, t in ipairs(soon) do assert.truthy(out:find(t.appleId, 1, true), t.appleId) end
    end)
  end)
end)
