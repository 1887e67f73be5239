-- The vpp command across a fleet (--tenants): list, sync --all, check and
-- get on every tenant at once, --tenant and --shard, and the tenant label
-- on every Prometheus series.
local support = require "support"
local cjson = require "cjson"
local fleet_mod = require "vpp.fleet"

local APP = "0f0e0d0c-0000-4000-8000-00000000f1ee"
local T = {}
for i = 1, 4 do T[i] = ("2000000%d-0000-4000-8000-000000000000"):format(i) end

local lines = support.lines

describe("vpp --tenants", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  local path
  before_each(function()
    fx.fresh()
    fx.server:app { tenants = T, client_id = APP, client_secret = "s3cret" }
    path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(([[
# three customers and one whose secret is missing
defaults:
  client_id: %s
  client_secret_env: MSP_SECRET
  authority: %s
  labels: { msp: acme }
tenants:
  - name: contoso
    tenant_id: %s
    labels: { customer: Contoso }
  - name: fabrikam
    tenant_id: %s
  - name: tailspin
    tenant_id: %s
  - name: broken
    tenant_id: %s
    client_secret_env: UNSET_SECRET
]]):format(APP, fx.server.url, T[1], T[2], T[3], T[4]))
    f:close()
    fx.env.GRAPH_ACCESS_TOKEN = nil
    fx.env.MSP_SECRET = "s3cret"
  end)
  after_each(function() os.remove(path) end)

  local function run(args, extra)
    local all = { "--tenants", path }
    for _, a in ipairs(args) do all[#all + 1] = a end
    local env = {}
    for k, v in pairs(fx.env) do env[k] = v end
    for k, v in pairs(extra or {}) do env[k] = v end
    return fx.cli.run(all, env)
  end

  it("list prints every tenant's tokens with a TENANT column, and says which tenant failed (exit 1)", function()
    local r = run { "list" }
    assert.equal(1, r.code)
    assert.matches("vpp: tenant broken: .*%$UNSET_SECRET is not set", r.err)
    local l = lines(r.out)
    assert.matches("^TENANT%s+ID%s+NAME%s+STATE", l[1])
    local by = {}
    for i = 2, #l do
      local tenant = l[i]:match("^(%S+)")
      by[tenant] = (by[tenant] or 0) + 1
    end
    assert.same({ contoso = 3, fabrikam = 3, tailspin = 3 }, by)
    r = run({ "list", "--format", "json", "--tenant", "contoso", "--tenant", "tailspin" })
    assert.equal(0, r.code, r.err)
    local seen = {}
    for _, t in ipairs(cjson.decode(r.out)) do
      seen[t.tenant] = (seen[t.tenant] or 0) + 1
      -- The file's labels go into every output.
      assert.same(t.tenant == "contoso" and { msp = "acme", customer = "Contoso" } or { msp = "acme" }, t.labels)
    end
    assert.same({ contoso = 3, tailspin = 3 }, seen)
    r = run({ "list", "--format", "csv", "--tenant", "contoso" })
    assert.matches("^tenant,labels,id,", r.out)
    assert.matches("\ncontoso,customer=Contoso;msp=acme,", r.out)
    -- Each tenant's data is its own: the ids differ between tenants.
    r = run({ "list", "--format", "json", "--tenant", "contoso", "--tenant", "fabrikam" })
    local ids = {}
    for _, t in ipairs(cjson.decode(r.out)) do
      assert.is_nil(ids[t.id], "an id seen in two tenants")
      ids[t.id] = true
    end
  end)

  it("--shard K/N picks the tenants whose name hashes to K: the shards partition the fleet", function()
    local union = {}
    for k = 1, 3 do
      local r = run({ "list", "--format", "json", "--shard", k .. "/3", "--tenant", "contoso", "--tenant", "fabrikam",
        "--tenant", "tailspin" })
      assert.equal(0, r.code, r.err)
      local here = {}
      for _, t in ipairs(cjson.decode(r.out)) do here[t.tenant] = true end
      for name in pairs(here) do
        assert.equal(k, fleet_mod.shard_of(name, 3), name)
        assert.is_nil(union[name], name .. " in two shards")
        union[name] = true
      end
    end
    assert.same({ contoso = true, fabrikam = true, tailspin = true }, union)
    local r = run({ "list", "--shard", "4/3" })
    assert.equal(64, r.code)
    r = fx.cli.run({ "list", "--tenant", "contoso" }, fx.env)
    assert.equal(64, r.code)
    assert.matches("%-%-tenant and %-%-shard go with %-%-tenants", r.err)
    r = run({ "list", "--tenant", "nobody" })
    assert.equal(64, r.code)
    assert.matches("no tenant named 'nobody'", r.err)
  end)

  it("sync --all runs in every tenant: rows carry the tenant, the summary counts tenants", function()
    fx.server:config { sync_seconds = 0.2 }
    local r = run({ "sync", "--all", "--state", "valid", "--wait", "--wait-interval", "0.1", "--format", "json",
      "--tenant", "contoso", "--tenant", "fabrikam" })
    assert.equal(0, r.code, r.err)
    local rows = cjson.decode(r.out)
    assert.is_true(#rows > 0)
    local tenants = {}
    for _, row in ipairs(rows) do
      tenants[row.tenant] = true
      assert.is_true(row.result == "completed" or row.result == "skipped", row.result)
    end
    assert.same({ contoso = true, fabrikam = true }, tenants)
    assert.matches("in 2 tenants", r.err)
    r = run { "sync", "some-id" }
    assert.equal(64, r.code)
    assert.matches("with %-%-tenants, sync takes %-%-all", r.err)
  end)

  it("check: one status line for the fleet, a broken tenant UNKNOWN beside the others, the worst state wins", function()
    fx.server:tokens({ support.vpp_token { id = "c-1", appleId = "c@example.com" } }, T[1])
    fx.server:tokens({ support.vpp_token { id = "f-1", appleId = "f@example.com", expires_in_days = 10 } }, T[2])
    fx.server:tokens({ support.vpp_token { id = "t-1", appleId = "t@example.com", state = "expired",
      expires_in_days = -2 } }, T[3])
    local r = run { "check" }
    assert.equal(2, r.code, r.out) -- CRITICAL (tailspin) beats WARNING and UNKNOWN
    local l = lines(r.out)
    assert.matches("^VPP CRITICAL %- fleet of 4 tenants: 1 critical, 1 warning, 1 unknown; tailspin/t@example%.com: ", l[1])
    assert.matches("| tenants=4;;;0 tenants_unknown=1;;;0 tokens=3;;;0 critical=1;;;0 warning=1;;;0", l[1])
    assert.truthy(r.out:find("\nUNKNOWN: tenant broken: cannot ask Graph: ", 1, true))
    assert.truthy(r.out:find("\nWARNING: tenant fabrikam: ", 1, true))
    assert.truthy(r.out:find("\nCRITICAL: tailspin: t@example.com (t-1): expired 2 days ago", 1, true))
    -- Without the critical tenant: WARNING beats UNKNOWN.
    r = run { "check", "--tenant", "fabrikam", "--tenant", "broken" }
    assert.equal(1, r.code, r.out)
    -- Only the broken one: UNKNOWN.
    r = run { "check", "--tenant", "broken", "--tenant", "contoso" }
    assert.equal(3, r.code, r.out)
    assert.matches("^VPP UNKNOWN %- fleet of 2 tenants: 1 unknown", r.out)
    r = run { "check", "--tenant", "contoso" }
    assert.equal(0, r.code, r.out)
    r = run { "check", "--format", "json" }
    local doc = cjson.decode(r.out)
    assert.equal("CRITICAL", doc.status)
    assert.same({ "contoso", "fabrikam", "tailspin", "broken" },
      { doc.tenants[1].tenant, doc.tenants[2].tenant, doc.tenants[3].tenant, doc.tenants[4].tenant })
    assert.equal("UNKNOWN", doc.tenants[4].status)
    assert.equal("no_credential", doc.tenants[4].error.code)
  end)

  it("check: the same Apple ID in two tenants is a WARNING on both", function()
    fx.server:tokens({ support.vpp_token { id = "c-1", appleId = "shared@example.com" } }, T[1])
    fx.server:tokens({ support.vpp_token { id = "f-1", appleId = "shared@example.com" } }, T[2])
    fx.server:tokens({ support.vpp_token { id = "t-1", appleId = "own@example.com" } }, T[3])
    local r = run { "check", "--tenant", "contoso", "--tenant", "fabrikam", "--tenant", "tailspin" }
    assert.equal(1, r.code, r.out)
    assert.truthy(r.out:find("WARNING: contoso: shared@example.com (c-1): Apple ID also in tenant fabrikam", 1, true))
    assert.truthy(r.out:find("WARNING: fabrikam: shared@example.com (f-1): Apple ID also in tenant contoso", 1, true))
    assert.falsy(r.out:find("own@example.com", 1, true))
  end)

  it("--format prometheus labels every series with the tenant, and has vpp_graph_up per tenant", function()
    local r = run { "check", "--format", "prometheus" }
    assert.is_true(r.code >= 1 and r.code <= 3, r.err)
    local up = {}
    for _, line in ipairs(lines(r.out)) do
      if line ~= "" and line:sub(1, 1) ~= "#" then
        assert.matches('^[%w_]+{tenant="[%w]+"', line)
        if line:find('tenant="contoso"', 1, true) then
          assert.matches('{tenant="contoso",customer="Contoso",msp="acme"', line, 1, true)
        end
        local tenant, v = line:match('^vpp_graph_up{tenant="(%w+)"[^}]*} (%d)$')
        if tenant then up[tenant] = tonumber(v) end
      end
    end
    assert.same({ contoso = 1, fabrikam = 1, tailspin = 1, broken = 0 }, up)
    -- A single tenant's file says tenant="default".
    r = fx.cli.run({ "check", "--format", "prometheus" }, { GRAPH_URL = fx.server.url, GRAPH_ACCESS_TOKEN = support.TOKEN })
    for _, line in ipairs(lines(r.out)) do
      if line ~= "" and line:sub(1, 1) ~= "#" then assert.matches('^[%w_]+{tenant="default"', line) end
    end
    -- The other commands run on the one tenant picked.
    r = run { "--tenant", "contoso", "licenses", "--app", "com.x", "--format", "json" }
    assert.equal(0, r.code, r.err)
    r = run { "licenses", "--app", "com.x" }
    assert.equal(64, r.code)
    assert.matches("with %-%-tenants, licenses runs on one tenant: pick it with %-%-tenant NAME", r.err)
  end)

  it("get ID finds the token in whichever tenant has it", function()
    fx.server:tokens({ support.vpp_token { id = "6d1a2c3b-0000-4000-8000-0000000000f2" } }, T[2])
    local r = run { "get", "6d1a2c3b-0000-4000-8000-0000000000f2", "--format", "json", "--tenant", "contoso",
      "--tenant", "fabrikam", "--tenant", "tailspin" }
    assert.equal(0, r.code, r.err)
    local t = cjson.decode(r.out)
    assert.equal("fabrikam", t.tenant)
    assert.equal("6d1a2c3b-0000-4000-8000-0000000000f2", t.id)
    r = run { "get", "6d1a2c3b", "--tenant", "fabrikam", "--tenant", "contoso" } -- a start of it
    assert.equal(0, r.code, r.err)
    assert.matches("\ntenant%s+fabrikam\n", r.out)
    r = run { "get", "6d1a2c3b-0000-4000-8000-0000000000ff", "--tenant", "contoso" }
    assert.equal(1, r.code)
    assert.matches("no tenant has a token 6d1a2c3b%-0000%-4000%-8000%-0000000000ff", r.err)
  end)

  it("on a terminal, the progress line counts tenants and tokens", function()
    local env = {}
    for k, v in pairs(fx.env) do env[k] = v end
    local r = fx.cli.run({ "--tenants", path, "sync", "--all", "--tenant", "contoso", "--tenant", "fabrikam" }, env,
      { pty = true })
    assert.matches("tenants 2/2", r.out)
    assert.matches("%d+ tokens syncing", r.out)
  end)

  it("SIGINT ends a fleet's run at once: what finished is printed, exit 130", function()
    fx.server:config { sync_seconds = 60 }
    local core = require "vpp.core"
    local t0 = core._clock()
    local env = {}
    for k, v in pairs(fx.env) do env[k] = v end
    local r = fx.cli.run({ "--tenants", path, "sync", "--all", "--wait", "--wait-interval", "0.2", "--format", "csv",
      "--tenant", "contoso", "--tenant", "fabrikam" }, env, { signal = "INT", after = 1.5 })
    assert.equal(130, r.code, r.err)
    assert.is_true(core._clock() - t0 < 4 * support.SLOWDOWN)
    assert.matches("vpp: interrupted by SIGINT", r.err)
    assert.matches("\ncontoso,[^\n]*,interrupted,", r.out)
    assert.matches("\nfabrikam,[^\n]*,interrupted,", r.out)
  end)

  it("a bad tenants file is one line naming it (usage error; check: UNKNOWN)", function()
    local f = assert(io.open(path, "w"))
    f:write("tenants:\n  - name: a\n    tenant_id: x\n    colour: red\n")
    f:close()
    local r = run { "list" }
    assert.equal(64, r.code)
    assert.matches("vpp: tenants file " .. path:gsub("%p", "%%%0") .. ", tenant 'a' %(line 2%): unknown key 'colour'", r.err)
    r = run { "check" }
    assert.equal(3, r.code)
    r = fx.cli.run({ "list" }, { GRAPH_URL = fx.server.url, VPP_TENANTS = path })
    assert.equal(64, r.code)
  end)
end)
