-- Fleets: many tenants, each with its own client, credential, token cache
-- and rate buckets, run side by side on one loop.  The fake Graph keys
-- every tenant's data by the tenant its access token was issued for, as
-- Graph does, so a token given to the wrong tenant's calls would show.
local support = require "support"
local vpp = require "vpp"
local fleet_mod = require "vpp.fleet"
local sys = require "sys"

local APP = "0f0e0d0c-0000-4000-8000-00000000f1ee"
local TENANTS = {}
for i = 1, 6 do TENANTS[i] = ("1000000%d-0000-4000-8000-000000000000"):format(i) end

local function write(path, text, mode)
  local f = assert(io.open(path, "w"))
  assert(f:write(text))
  f:close()
  sys.execute(("chmod %s '%s'"):format(mode or "600", path))
end

local function env_of(t)
  return function(name) return t[name] end
end

describe("fleets", function()
  local f = { server = nil }
  local certs
  setup(function()
    f.server = support.start { tokens = 3 }
    certs = support.make_certs()
  end)
  teardown(function()
    f.server:stop()
    certs.remove()
  end)
  local dir
  before_each(function()
    f.server:reset()
    -- One multi-tenant app (an MSP's), consented in every tenant.
    f.server:app { tenants = TENANTS, client_id = APP, client_secret = "s3cret", thumbprint = certs.thumbprint }
    f.server:log()
    dir = io.popen("mktemp -d /tmp/lua-vpp-fleet.XXXXXX"):read("*l")
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function spec(tenants, defaults)
    return { defaults = defaults or { client_id = APP, client_secret_env = "MSP_SECRET", authority = f.server.url,
      base_url = f.server.url, rate_limit = false }, tenants = tenants }
  end

  local function names(n)
    local out = {}
    for i = 1, n do out[i] = { name = "t" .. i, tenant_id = TENANTS[i] } end
    return out
  end

  describe("the tenants file", function()
    it("has defaults and per-tenant overrides (credential, labels, settings), in YAML with comments", function()
      local path = dir .. "/tenants.yaml"
      write(path, ([[
# An MSP's tenants: one app, one secret, names and tenant ids below.
defaults:
  client_id: %s
  client_secret_env: MSP_SECRET   # the secret itself stays out of the file
  authority: %s
  base_url: %s
  labels: { msp: acme }
tenants:
  - name: contoso
    tenant_id: %s
    labels: { customer: Contoso }
  - name: fabrikam
    tenant_id: %s
    client_secret_env: FABRIKAM_SECRET   # its own credential
    api_version: beta
]]):format(APP, f.server.url, f.server.url, TENANTS[1], TENANTS[2]), "644")
      f.server:app { tenants = TENANTS, client_id = APP, client_secret = "s3cret", secrets = { [TENANTS[2]] = "other-s3cret" } }
      local fleet = vpp.fleet_from_file(path, { getenv = env_of { MSP_SECRET = "s3cret", FABRIKAM_SECRET = "other-s3cret" } })
      local results = fleet:run(function(client, tenant)
        return { version = client:config().api_version, labels = tenant.labels, n = #assert(client:list_tokens()) }
      end)
      assert.same({ ok = 2, failed = 0 }, { ok = results.ok, failed = results.failed })
      assert.same({ "contoso", "fabrikam" }, { results[1].tenant, results[2].tenant })
      assert.same({ version = "v1.0", labels = { msp = "acme", customer = "Contoso" }, n = 3 }, results[1].value)
      assert.same({ version = "beta", labels = { msp = "acme" }, n = 3 }, results[2].value)
      -- Each tenant's token was fetched at its own tenant's endpoint.
      local fetched = {}
      for _, e in ipairs(f.server:tokenlog()) do fetched[e.tenant] = (fetched[e.tenant] or 0) + 1 end
      assert.same({ [TENANTS[1]] = 1, [TENANTS[2]] = 1 }, fetched)
    end)

    it("takes every kind of credential reference", function()
      -- A token the fake identity platform issued for tenant 6, as a
      -- pipeline would hand one over.
      local body = ("grant_type=client_credentials&client_id=%s&client_secret=s3cret&scope=x"):format(APP)
      local answer = assert(require("socket.http").request(
        f.server.url .. "/" .. TENANTS[6] .. "/oauth2/v2.0/token", body))
      local issued = require("cjson").decode(answer).access_token
      f.server:tokenlog()
      local secret_file = dir .. "/secret"
      write(secret_file, "s3cret\n")
      local fleet = vpp.fleet(spec({
        { name = "env", tenant_id = TENANTS[1] },
        { name = "file", tenant_id = TENANTS[3], client_secret_file = secret_file },
        { name = "cert", tenant_id = TENANTS[4], client_certificate = certs.cert, client_key = certs.encrypted_key,
          client_key_password_env = "KEY_PASSWORD" },
        { name = "inline", tenant_id = TENANTS[5], client_secret = "s3cret" },
        { name = "token", tenant_id = TENANTS[6], access_token_env = "TENANT6_TOKEN" },
        { name = "mi", tenant_id = TENANTS[1], managed_identity = true,
          imds_url = f.server.url .. "/metadata/identity/oauth2/token" },
      }), { getenv = env_of { MSP_SECRET = "s3cret", KEY_PASSWORD = certs.password, TENANT6_TOKEN = issued } })
      local results = fleet:run(function(client) return #assert(client:list_tokens()) end)
      for i, r in ipairs(results) do assert.is_true(r.ok, ("%d %s: %s"):format(i, r.tenant, tostring(r.err))) end
      local kinds = {}
      for _, e in ipairs(f.server:tokenlog()) do
        kinds[#kinds + 1] = e.kind == "imds" and "imds" or (e.form.client_secret and "secret" or "assertion")
      end
      table.sort(kinds)
      assert.same({ "assertion", "imds", "secret", "secret", "secret" }, kinds)
      local bearers = {}
      for _, e in ipairs(f.server:log()) do bearers[e.authorization] = true end
      assert.is_true(bearers["Bearer " .. issued])
    end)

    it("refuses an inline secret unless only the file's owner can read it", function()
      local path = dir .. "/inline.yaml"
      local text = ([[
tenants:
  - name: contoso
    tenant_id: %s
    client_id: %s
    client_secret: s3cret
]]):format(TENANTS[1], APP)
      write(path, text, "640")
      local ok, e = pcall(vpp.fleet_from_file, path)
      assert.is_false(ok)
      assert.matches("tenants file " .. path:gsub("%p", "%%%0") .. ", tenant 'contoso' %(line 2%): an inline"
        .. " client_secret needs a tenants file only its owner can read %(chmod 600%)", e)
      write(path, text, "600")
      assert(vpp.fleet_from_file(path))
    end)

    it("gives one clear error for each kind of bad file, naming the file, the tenant and the line", function()
      local cases = {
        { "tenants:\n  - name: a\n    tenant_id: [x\n", "line 3, column 17: did not find expected ',' or '%]'" },
        { ("tenants:\n  - name: a\n    tenant_id: %s\n    client_id: x\n    client_secret_env: S\n    colour: red\n")
          :format(TENANTS[1]), "tenant 'a' %(line 2%): unknown key 'colour' %(expected " },
        { ("tenants:\n  - name: a\n    tenant_id: %s\n    client_id: x\n    client_secret_env: S\n"
          .. "  - name: a\n    tenant_id: %s\n    client_id: x\n    client_secret_env: S\n"):format(TENANTS[1], TENANTS[2]),
          "tenant 'a' %(line 2%): the name 'a' is used twice" },
        { "tenants:\n  - name: b\n    client_id: x\n    client_secret_env: S\n", "tenant 'b' %(line 2%): tenant_id is missing" },
        { "tenants:\n  - tenant_id: x\n", "tenant #1: name must be a word" },
        { ("tenants:\n  - name: c\n    tenant_id: %s\n    client_id: x\n"):format(TENANTS[1]), "tenant 'c' %(line 2%): no credential" },
        { "defaults:\n  client_id: x\n  colour: red\ntenants: []\n", "defaults: unknown key 'colour'" },
        { "tenant:\n  - name: a\n", "unknown key 'tenant' %(expected defaults, tenants%)" },
        { "tenants: []\n", "tenants must be a non%-empty list" },
        { ("tenants:\n  - name: e\n    tenant_id: %s\n    client_id: x\n    client_secret_env: S\n"
          .. "    timeout: -1\n"):format(TENANTS[1]), "tenant 'e' %(line 2%): opts%.timeout must be" },
        { ("tenants:\n  - name: d\n    tenant_id: %s\n    client_id: x\n    client_secret_env: S\n"
          .. "    labels: { state: x }\n"):format(TENANTS[1]), "tenant 'd' %(line 2%): label name 'state' is one of" },
      }
      local path = dir .. "/bad.yaml"
      for _, c in ipairs(cases) do
        write(path, c[1])
        local ok, e = pcall(vpp.fleet_from_file, path)
        assert.is_false(ok, c[1])
        assert.matches("^vpp: tenants file " .. path:gsub("%p", "%%%0") .. ".*" .. c[2], e)
        assert.equal(1, select(2, e:gsub("\n", "")) + 1, "one line")
      end
      local ok, e = pcall(vpp.fleet_from_file, dir .. "/missing.yaml")
      assert.is_false(ok)
      assert.matches("cannot be read", e)
    end)
  end)

  describe("fleet:run", function()
    it("runs `concurrency` tenants at once, as the server sees it, never more", function()
      f.server:config { latency = 0.15 }
      local fleet = vpp.fleet(spec(names(6)), { getenv = env_of { MSP_SECRET = "s3cret" } })
      f.server:app { tenants = TENANTS, client_id = APP, client_secret = "s3cret" }
      local t0 = require("vpp.core")._clock()
      local results = fleet:run(function(client) return #assert(client:list_tokens()) end, { concurrency = 3 })
      local took = require("vpp.core")._clock() - t0
      assert.equal(6, results.ok)
      assert.equal(3, f.server:stats().max_active_tenants)
      -- Two rounds of three tenants, each a 0.15 s list: well under six in a row.
      assert.is_true(took < 0.15 * 6 * 0.9 * support.SLOWDOWN, took)
      f.server:reset()
      f.server:app { tenants = TENANTS, client_id = APP, client_secret = "s3cret" }
      f.server:config { latency = 0.15 }
      results = fleet:run(function(client) return #assert(client:list_tokens()) end)
      assert.equal(6, results.ok)
      assert.equal(6, f.server:stats().max_active_tenants)
    end)

    it("keeps tenants apart: one tenant's bad secret, Graph 401, 429 and raised error touch no other", function()
      f.server:app { tenants = TENANTS, client_id = APP, client_secret = "s3cret",
        secrets = { [TENANTS[2]] = "other-s3cret" } }
      -- t3's list is throttled for longer than max_retry_delay; t4's fn raises.
      f.server:program("@list", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "120" } } },
        TENANTS[3])
      f.server:tokens({ support.vpp_token { id = "only-in-t5" } }, TENANTS[5])
      -- t6's Graph refuses its token, even a fresh one.
      local refused = { status = 401, error = "InvalidAuthenticationToken", message = "Access token validation failure." }
      f.server:program("@list", { refused, refused }, TENANTS[6])
      local fleet = vpp.fleet(spec(names(6)), { getenv = env_of { MSP_SECRET = "s3cret" } })
      local results = fleet:run(function(client, tenant)
        if tenant.name == "t4" then error("the script failed for t4") end
        local list, err = client:list_tokens()
        if not list then return nil, err end
        return list[1].id
      end)
      assert.same({ 2, 4 }, { results.ok, results.failed })
      assert.same({ "http", 401 }, { results[6].err.kind, results[6].err.status })
      assert.is_true(results[1].ok)
      assert.same({ "auth", "invalid_client" }, { results[2].err.kind, results[2].err.code }) -- t2's secret differs
      assert.same({ "http", 429 }, { results[3].err.kind, results[3].err.status })
      assert.same({ "error", "raised" }, { results[4].err.kind, results[4].err.code })
      assert.matches("the script failed for t4", results[4].err.message)
      assert.equal("only-in-t5", results[5].value)
      assert.not_equal("only-in-t5", results[1].value)
      -- Every Graph request carried the token of its own tenant.
      for _, e in ipairs(f.server:log()) do assert.is_string(e.tenant) end
    end)

    it("gives each tenant its own rate buckets", function()
      local s = spec(names(3))
      s.defaults.rate_limit = { requests = 2, per = 1 }
      local fleet = vpp.fleet(s, { getenv = env_of { MSP_SECRET = "s3cret" } })
      local core = require "vpp.core"
      local t0 = core._clock()
      local results = fleet:run(function(client)
        for _ = 1, 2 do assert(client:list_tokens()) end
        return core._clock() - t0
      end)
      assert.equal(3, results.ok)
      -- Two requests each fit one tenant's bucket: shared buckets would make
      -- the later tenants wait a second or more.
      for _, r in ipairs(results) do assert.is_true(r.value < 0.8 * support.SLOWDOWN, r.value) end
    end)

    it("ends what runs at opts.deadline, starts nothing after it, and picks tenants by name", function()
      f.server:config { latency = 0.4 }
      local fleet = vpp.fleet(spec(names(4)), { getenv = env_of { MSP_SECRET = "s3cret" } })
      local results = fleet:run(function(client)
        local list, err = client:list_tokens()
        if not list then return nil, err end
        return #list
      end, { concurrency = 2, deadline = 0.2 })
      assert.equal(4, results.failed)
      assert.equal("cancelled", results[1].err.kind)
      assert.same({ "timeout", "deadline" }, { results[4].err.kind, results[4].err.code })
      f.server:config { latency = 0 }
      results = fleet:run(function(_, tenant) return tenant.name end, { tenants = { "t3", "t1" } })
      assert.same({ "t1", "t3" }, { results[1].value, results[2].value })
      assert.has_error(function() fleet:run(function() end, { tenants = { "nope" } }) end,
        "vpp: no tenant named 'nope' in the fleet")
      assert.has_error(function() fleet:run(function() end, { concurrency = 0 }) end,
        "vpp: opts.concurrency must be a positive integer")
    end)

    it("an unset credential variable is that tenant's auth error", function()
      local s = spec(names(2))
      s.tenants[2].client_secret_env = "UNSET_SECRET"
      local results = vpp.fleet(s, { getenv = env_of { MSP_SECRET = "s3cret" } }):run(function(client)
        return #assert(client:list_tokens())
      end)
      assert.is_true(results[1].ok)
      assert.same({ "auth", "no_credential" }, { results[2].err.kind, results[2].err.code })
      assert.matches("tenant 't2': %$UNSET_SECRET is not set", results[2].err.message)
    end)
  end)

  describe("fleet methods", function()
    it("sync_all, list_tokens and check run on every tenant", function()
      f.server:config { sync_seconds = 0.2 }
      local fleet = vpp.fleet(spec(names(3)), { getenv = env_of { MSP_SECRET = "s3cret" } })
      local lists = fleet:list_tokens()
      assert.equal(3, lists.ok)
      for _, r in ipairs(lists) do assert.equal(3, #r.value) end
      local synced = fleet:sync_all({ state = false, include_in_progress = true, wait = true, wait_interval = 0.1 })
      for _, r in ipairs(synced) do assert.is_true(r.ok, tostring(r.err)) end
      for _, r in ipairs(synced) do assert.equal(3, #r.value.waited) end
      local checked = fleet:check()
      assert.equal(3, checked.ok)
      for _, r in ipairs(checked) do assert.is_number(r.value.status) end
      fleet:close()
      assert.has_error(function() fleet:list_tokens() end, "vpp: the fleet is closed")
    end)
  end)

  describe("shards", function()
    it("split a fleet exactly: every tenant in one shard of N, the same on every run", function()
      for _, n in ipairs { 1, 2, 3, 7 } do
        local seen = {}
        for i = 1, 500 do
          local k = fleet_mod.shard_of("tenant-" .. i, n)
          assert.is_true(k >= 1 and k <= n)
          seen[k] = (seen[k] or 0) + 1
        end
        for k = 1, n do assert.is_true((seen[k] or 0) > 500 / n / 2, ("shard %d of %d"):format(k, n)) end
      end
      assert.equal(fleet_mod.shard_of("contoso", 4), fleet_mod.shard_of("contoso", 4))
      -- FNV-1a: "a" is 0xe40c292c.
      assert.equal(0xe40c292c % 1000 + 1, fleet_mod.shard_of("a", 1000))
    end)
  end)
end)
