-- National clouds, and credentials from the environment (vpp.new_from_env).
local support = require "support"
local vpp = require "vpp"

local clouds = {
  global = { graph = "https://graph.microsoft.com", authority = "https://login.microsoftonline.com" },
  usgov = { graph = "https://graph.microsoft.us", authority = "https://login.microsoftonline.us" },
  dod = { graph = "https://dod-graph.microsoft.us", authority = "https://login.microsoftonline.us" },
  china = { graph = "https://microsoftgraph.chinacloudapi.cn", authority = "https://login.chinacloudapi.cn" },
}

local creds = { tenant_id = "t", client_id = "c", client_secret = "s" }

local function with(extra)
  local o = {}
  for k, v in pairs(creds) do o[k] = v end
  for k, v in pairs(extra) do o[k] = v end
  return o
end

describe("national clouds", function()
  it("vpp.clouds gives each cloud's Graph host, authority and scope", function()
    local expected = {}
    for name, c in pairs(clouds) do
      expected[name] = { graph = c.graph, authority = c.authority, scope = c.graph .. "/.default" }
    end
    assert.same(expected, vpp.clouds)
  end)

  for name, c in pairs(clouds) do
    it("cloud = " .. name .. " sets the Graph host, the authority and the scope together", function()
      local client = vpp.new(with { cloud = name })
      local cfg = client:config()
      client:close()
      assert.equal(c.graph, cfg.base_url)
      assert.equal(c.authority, cfg.authority)
      assert.equal(c.graph .. "/.default", cfg.scope)
      assert.equal(name, cfg.cloud)
      assert.equal("client_secret", cfg.credential)
    end)
  end

  it("defaults to the global cloud", function()
    local cfg = vpp.new(creds):config()
    assert.equal("https://graph.microsoft.com", cfg.base_url)
    assert.equal("https://login.microsoftonline.com", cfg.authority)
  end)

  it("lets base_url, authority and scope override the cloud one by one", function()
    local cfg = vpp.new(with { cloud = "usgov", base_url = "https://gateway.example/graph" }):config()
    assert.equal("https://gateway.example/graph", cfg.base_url)
    assert.equal("https://login.microsoftonline.us", cfg.authority)
    assert.equal("https://graph.microsoft.us/.default", cfg.scope) -- a gateway does not change the scope
    cfg = vpp.new(with { cloud = "usgov", authority = "https://login.example" }):config()
    assert.equal("https://graph.microsoft.us", cfg.base_url)
    assert.equal("https://login.example", cfg.authority)
    cfg = vpp.new(with { cloud = "china", scope = "api://custom/.default" }):config()
    assert.equal("api://custom/.default", cfg.scope)
    assert.equal("https://login.chinacloudapi.cn", cfg.authority)
  end)

  it("shows no secret in client:config()", function()
    local cfg = vpp.new(with { client_secret = "hush-hush" }):config()
    assert.is_false(support.contains_secret(cfg, "hush-hush"))
  end)

  it("sends the cloud's scope to the token endpoint", function()
    local server = support.start()
    finally(function() server:stop() end)
    server:app { tenant = "t", client_id = "c", client_secret = "s" }
    local c = vpp.new(with { cloud = "usgov", base_url = server.url, authority = server.url })
    assert(c:list_tokens())
    c:close()
    assert.equal("https://graph.microsoft.us/.default", server:tokenlog()[1].form.scope)
  end)
end)

describe("vpp.new_from_env", function()
  local fx = support.identity_fixture({ tokens = 2 }, { tenant = "env-tenant", client_id = "env-app", client_secret = "env secret&1" })
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  local function run(env, opts)
    return support.run_lua(([[
      local vpp = require "vpp"
      local ok, c = pcall(vpp.new_from_env, %s)
      if not ok then io.write("raised: ", c) return end
      local list, err = c:list_tokens()
      io.write(list and ("listed " .. #list) or tostring(err), " ", c:config().credential)
    ]]):format(opts or ("{ base_url = %q }"):format(fx.server.url)), "env -u GRAPH_ACCESS_TOKEN " .. env)
  end

  it("uses AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_AUTHORITY_HOST", function()
    local out = run(("AZURE_TENANT_ID=env-tenant AZURE_CLIENT_ID=env-app AZURE_CLIENT_SECRET='env secret&1' AZURE_AUTHORITY_HOST=%s")
      :format(fx.server.url))
    assert.equal("listed 2 client_secret", out)
    local entry = fx.server:tokenlog()[1]
    assert.equal("env-tenant", entry.tenant)
    assert.equal("env secret&1", entry.form.client_secret)
  end)

  it("uses AZURE_CLIENT_CERTIFICATE_PATH and AZURE_CLIENT_CERTIFICATE_PASSWORD", function()
    -- a PEM holding the certificate and the key encrypted with the password
    local pem = fx.certs.dir .. "/env.pem"
    support.write_file(pem, support.slurp(fx.certs.cert), support.slurp(fx.certs.encrypted_key))
    local out = run(("AZURE_TENANT_ID=env-tenant AZURE_CLIENT_ID=env-app AZURE_CLIENT_CERTIFICATE_PATH=%s"
      .. " AZURE_CLIENT_CERTIFICATE_PASSWORD='%s' AZURE_AUTHORITY_HOST=%s"):format(pem, fx.certs.password, fx.server.url))
    assert.equal("listed 2 client_certificate", out)
    assert.equal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer", fx.server:tokenlog()[1].form.client_assertion_type)
  end)

  it("prefers a pre-obtained GRAPH_ACCESS_TOKEN over the AZURE_* credentials", function()
    fx.server:config { require_issued = false }
    local out = run(("GRAPH_ACCESS_TOKEN=pre-obtained AZURE_TENANT_ID=env-tenant AZURE_CLIENT_ID=env-app"
      .. " AZURE_CLIENT_SECRET=x AZURE_AUTHORITY_HOST=%s"):format(fx.server.url))
    assert.equal("listed 2 access_token", out)
    assert.equal("Bearer pre-obtained", fx.server:log()[1].authorization)
    assert.same({}, fx.server:tokenlog())
  end)

  it("lets explicit settings win over the environment", function()
    local out = run(("AZURE_TENANT_ID=wrong AZURE_CLIENT_ID=env-app AZURE_CLIENT_SECRET=wrong AZURE_AUTHORITY_HOST=http://127.0.0.1:9"),
      ("{ base_url = %q, authority = %q, tenant_id = 'env-tenant', client_secret = 'env secret&1' }"):format(fx.server.url, fx.server.url))
    assert.equal("listed 2 client_secret", out)
    assert.equal("env-tenant", fx.server:tokenlog()[1].tenant)
  end)

  it("raises one line naming the variables when there is no credential", function()
    local out = run("-u AZURE_TENANT_ID -u AZURE_CLIENT_ID -u AZURE_CLIENT_SECRET -u AZURE_CLIENT_CERTIFICATE_PATH")
    assert.equal("raised: vpp: no credentials: set " .. require("vpp.env").variables, out)
    out = run("-u AZURE_TENANT_ID -u AZURE_CLIENT_ID AZURE_CLIENT_SECRET=x")
    assert.equal("raised: vpp: credential env: set AZURE_TENANT_ID and AZURE_CLIENT_ID with AZURE_CLIENT_SECRET", out)
  end)
end)
