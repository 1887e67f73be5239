-- The credentials servers really have, picked from the environment as
-- DefaultAzureCredential picks them, against the fake identity platform:
-- PEM and PKCS#12 (PFX) certificates with and without a password, the x5c
-- chain, workload identity's federated token file, App Service's and Azure
-- Arc's managed identity (the challenge and its key file), the order, the
-- override, and each failure naming the kind tried, without its secret.
local support = require "support"
local sys = require "sys"
local cjson = require "cjson"

local TENANT, APP = "cred-tenant", "cred-app"
local PFX_PASSWORD = "pfx p@ss&=+"
local HEADER_SECRET = "app-service-identity-header-s3cret"

local function b64url(s)
  local b = io.popen("printf %s '" .. s .. "' | base64 -w0"):read("*l")
  return (b:gsub("+", "-"):gsub("/", "_"):gsub("=", ""))
end

-- A federated token as a platform issues it (the fake checks the claims,
-- as Entra does against the app's federated credential, not the signature).
local function federated_jwt(claims)
  return b64url('{"alg":"RS256","typ":"JWT","kid":"k1"}') .. "." .. b64url(cjson.encode(claims)) .. ".c2lnbmF0dXJl"
end

describe("credentials from the environment", function()
  local fx = support.identity_fixture({ tokens = 2 }, { tenant = TENANT, client_id = APP, client_secret = "env-secret" })
  local tmp
  setup(function()
    fx.start()
    tmp = io.popen("mktemp -d /tmp/lua-vpp-cred.XXXXXX"):read("*l")
    local c = fx.certs
    -- PFX files as the portal exports them: with a password, and without.
    assert(sys.execute(("openssl pkcs12 -export -in %s -inkey %s -out %s/with.pfx -passout 'pass:%s' 2>/dev/null")
      :format(c.cert, c.key, tmp, PFX_PASSWORD)))
    assert(sys.execute(("openssl pkcs12 -export -in %s -inkey %s -out %s/without.pfx -passout pass: 2>/dev/null")
      :format(c.cert, c.key, tmp)))
    -- A CA and a PEM of certificate, key and the CA certificate: the chain.
    assert(sys.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/ca.key -out %s/ca.pem -days 2"
      .. " -subj /CN=cred-ca 2>/dev/null"):format(tmp, tmp)))
    sys.write_file(tmp .. "/chain.pem", support.slurp(c.cert), support.slurp(c.key), support.slurp(tmp .. "/ca.pem"))
    c.der_b64 = io.popen(("openssl x509 -in %s -outform DER | base64 -w0"):format(c.cert)):read("*l")
    os.execute("mkdir -p " .. tmp .. "/tokens")
  end)
  teardown(function()
    fx.stop()
    os.execute("rm -rf " .. tmp)
  end)
  before_each(fx.fresh)

  -- new_from_env in a child Lua that sees only these variables: its
  -- credential, and what two lists gave (or the error raised or returned).
  local function run(vars, opts)
    local words = { "env -i PATH=/usr/bin:/bin HOME=/tmp" }
    for k, v in pairs(vars) do words[#words + 1] = ("%s='%s'"):format(k, v) end
    local out = support.run_lua(([[
      local vpp = require "vpp"
      local ok, c = pcall(vpp.new_from_env, %s)
      if not ok then io.write("raised: ", c) return end
      local cfg = c:config()
      local list, err = c:list_tokens()
      if list and os.getenv("TWICE") then
        os.execute("sleep 0.7")
        list, err = c:list_tokens()
      end
      io.write(cfg.credential, " ", cfg.managed_identity_source or "-", " ",
        list and ("listed " .. #list) or (err.kind .. " " .. tostring(err.code) .. ": " .. err.message))
      c:close()
    ]]):format(opts or ("{ base_url = %q }"):format(fx.server.url)), table.concat(words, " "))
    return out
  end

  local function app_env(extra)
    local v = { AZURE_TENANT_ID = TENANT, AZURE_CLIENT_ID = APP, AZURE_AUTHORITY_HOST = fx.server.url }
    for k, x in pairs(extra) do v[k] = x end
    return v
  end

  local function assertion_header()
    local form = fx.server:tokenlog()[1].form
    local h = form.client_assertion:match("^([^.]+)")
    return cjson.decode(support.b64url_decode(h)), form
  end

  describe("certificates", function()
    it("AZURE_CLIENT_CERTIFICATE_PATH may be a PFX, with AZURE_CLIENT_CERTIFICATE_PASSWORD or none", function()
      assert.equal("client_certificate - listed 2", run(app_env {
        AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/with.pfx", AZURE_CLIENT_CERTIFICATE_PASSWORD = PFX_PASSWORD }))
      local header = assertion_header()
      assert.equal(fx.certs.thumbprint, header["x5t#S256"])
      assert.is_nil(header.x5c)
      assert.equal("client_certificate - listed 2", run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/without.pfx" }))
    end)

    it("a PFX with a wrong or missing password: the kind tried and why, never the password", function()
      local out = run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/with.pfx",
        AZURE_CLIENT_CERTIFICATE_PASSWORD = "wrong" .. PFX_PASSWORD })
      assert.equal("client_certificate - auth key_password: client certificate: the PKCS#12 (PFX) file could not be"
        .. " opened: wrong or missing client_key_password", out)
      assert.falsy(out:find(PFX_PASSWORD, 1, true))
      out = run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/with.pfx" })
      assert.matches("auth key_password: client certificate: the PKCS#12", out)
      sys.write_file(tmp .. "/junk.pfx", "\48\130garbage")
      out = run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/junk.pfx" })
      assert.matches("auth certificate_invalid: client certificate: the client_certificate file is neither PEM nor"
        .. " PKCS#12", out)
      assert.same({}, fx.server:tokenlog(), "nothing sent for a certificate that does not load")
    end)

    it("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN=true puts the certificate and its chain in x5c (subject name/issuer)", function()
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = fx.certs.thumbprint, x5c = fx.certs.der_b64,
        x5c_chain = 2 }
      local out = run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/chain.pem",
        AZURE_CLIENT_SEND_CERTIFICATE_CHAIN = "true" })
      assert.equal("client_certificate - listed 2", out)
      local header = assertion_header()
      assert.equal(2, #header.x5c)
      assert.equal(fx.certs.der_b64, header.x5c[1])
      -- Without it, an app that trusts by subject name refuses.
      out = run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/chain.pem" })
      assert.matches("^client_certificate %- auth invalid_client: client certificate: AADSTS700027: Client assertion failed:"
        .. " x5c must carry the certificate", out)
      -- A PFX sends its own chain (here none but the certificate).
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = fx.certs.thumbprint, x5c = fx.certs.der_b64 }
      assert.equal("client_certificate - listed 2", run(app_env { AZURE_CLIENT_CERTIFICATE_PATH = tmp .. "/with.pfx",
        AZURE_CLIENT_CERTIFICATE_PASSWORD = PFX_PASSWORD, AZURE_CLIENT_SEND_CERTIFICATE_CHAIN = "true" }))
    end)
  end)

  describe("workload identity", function()
    local ISSUER, SUBJECT = "https://oidc.example.com/cluster-1", "system:serviceaccount:ops:vpp"

    before_each(function()
      fx.server:app { tenant = TENANT, client_id = APP, federated = { issuer = ISSUER, subject = SUBJECT }, lifetime = 1 }
    end)

    it("sends AZURE_FEDERATED_TOKEN_FILE's content as the client assertion, read anew at each fetch", function()
      local file = tmp .. "/federated-token"
      local first = federated_jwt { iss = ISSUER, sub = SUBJECT, aud = "api://AzureADTokenExchange", exp = os.time() + 600 }
      sys.write_file(file, first .. "\n")
      -- The platform renews the file while the client lives: the second
      -- fetch (the token lives 1 s) sends the new one.
      local second = federated_jwt { iss = ISSUER, sub = SUBJECT, aud = "api://AzureADTokenExchange", exp = os.time() + 900 }
      local script = tmp .. "/renew.sh"
      sys.write_file(script, ("sleep 0.3; printf '%%s' '%s' > %s"):format(second, file))
      os.execute("sh " .. script .. " &")
      local out = run(app_env { AZURE_FEDERATED_TOKEN_FILE = file, TWICE = "1" })
      assert.equal("client_assertion_file - listed 2", out)
      local log = fx.server:tokenlog()
      assert.equal(2, #log)
      assert.equal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer", log[1].form.client_assertion_type)
      assert.equal(first, log[1].form.client_assertion)
      assert.equal(second, log[2].form.client_assertion)
      assert.is_nil(log[1].form.client_secret)
    end)

    it("names the kind and Entra's reason when the token does not match, or the file cannot be read", function()
      local file = tmp .. "/other-token"
      sys.write_file(file, federated_jwt { iss = ISSUER, sub = "system:serviceaccount:ops:other",
        aud = "api://AzureADTokenExchange", exp = os.time() + 600 })
      local out = run(app_env { AZURE_FEDERATED_TOKEN_FILE = file })
      assert.matches("^client_assertion_file %- auth invalid_client: workload identity: AADSTS700213: No matching"
        .. " federated identity record found for presented assertion subject", out)
      out = run(app_env { AZURE_FEDERATED_TOKEN_FILE = tmp .. "/missing" })
      assert.equal("client_assertion_file - auth assertion_unreadable: workload identity: cannot read the federated"
        .. " token file", out)
      sys.write_file(tmp .. "/empty", "  \n")
      out = run(app_env { AZURE_FEDERATED_TOKEN_FILE = tmp .. "/empty" })
      assert.matches("workload identity: the federated token file is empty", out)
    end)
  end)

  describe("managed identity", function()
    it("App Service: IDENTITY_ENDPOINT and IDENTITY_HEADER, api-version 2019-08-01, expires_on; AZURE_CLIENT_ID picks one", function()
      fx.server:app { tenant = TENANT, client_id = APP, identity_header = HEADER_SECRET, mi_client_id = "ua-7" }
      local out = run { IDENTITY_ENDPOINT = fx.server.url .. "/msi/token", IDENTITY_HEADER = HEADER_SECRET }
      assert.equal("managed_identity app_service listed 2", out)
      local e = fx.server:tokenlog()[1]
      assert.same({ "app_service", true, "2019-08-01", "https://graph.microsoft.com" },
        { e.kind, e.has_identity_header, e.args["api-version"], e.args.resource })
      assert.is_nil(e.args.client_id)
      out = run { IDENTITY_ENDPOINT = fx.server.url .. "/msi/token", IDENTITY_HEADER = HEADER_SECRET, AZURE_CLIENT_ID = "ua-7" }
      assert.equal("managed_identity app_service listed 2", out)
      assert.equal("ua-7", fx.server:tokenlog()[1].args.client_id)
      out = run { IDENTITY_ENDPOINT = fx.server.url .. "/msi/token", IDENTITY_HEADER = "wrong" .. HEADER_SECRET }
      assert.equal("managed_identity app_service auth UnauthorizedRequest: managed identity (App Service): The"
        .. " X-IDENTITY-HEADER is missing or wrong.", out)
      assert.falsy(out:find(HEADER_SECRET, 1, true))
    end)

    describe("Azure Arc", function()
      local function arc(extra)
        local v = { IDENTITY_ENDPOINT = fx.server.url .. "/arc/token", IMDS_ENDPOINT = fx.server.url,
          VPP_ARC_KEY_DIR = tmp .. "/tokens" }
        for k, x in pairs(extra or {}) do v[k] = x end
        return run(v)
      end

      it("answers the 401 challenge with the key file it names, inside the agent's token directory", function()
        fx.server:app { tenant = TENANT, client_id = APP, arc_key_dir = tmp .. "/tokens" }
        assert.equal("managed_identity arc listed 2", arc())
        local log = fx.server:tokenlog()
        assert.equal(2, #log)
        assert.same({ "arc", "true", false, "2020-06-01" }, { log[1].kind, log[1].metadata, log[1].basic,
          log[1].args["api-version"] })
        assert.same({ "arc", true }, { log[2].kind, log[2].basic })
      end)

      it("refuses a challenge naming a file outside the directory, not a .key file, or over 4 KiB", function()
        sys.write_file(tmp .. "/tokens/notes.txt", "x")
        sys.write_file(tmp .. "/tokens/big.key", string.rep("k", 5000))
        sys.write_file(tmp .. "/outside.key", "stolen")
        os.execute(("ln -sf %s/outside.key %s/tokens/link.key"):format(tmp, tmp))
        for _, case in ipairs {
          { "/etc/passwd", "names a key file outside " },
          { tmp .. "/outside.key", "names a key file outside " },
          { tmp .. "/tokens/link.key", "names a key file outside " },
          { tmp .. "/tokens/../outside.key", "names a key file outside " },
          { tmp .. "/tokens/notes.txt", "names a file that is not a %.key file" },
          { tmp .. "/tokens/big.key", "names a key file larger than 4 KiB" },
        } do
          fx.server:app { tenant = TENANT, client_id = APP, arc_key_dir = tmp .. "/tokens", arc_realm = case[1] }
          local out = arc()
          assert.matches("^managed_identity arc auth arc_challenge: managed identity %(Azure Arc%): the challenge "
            .. case[2], out)
          assert.falsy(out:find("stolen", 1, true))
          local log = fx.server:tokenlog()
          assert.equal(1, #log, "no second request: " .. case[1])
        end
      end)

      it("has only the system-assigned identity: AZURE_CLIENT_ID is an error naming the kind", function()
        assert.equal("raised: vpp: credential managed-identity: Azure Arc has only the system-assigned identity:"
          .. " unset AZURE_CLIENT_ID", arc { AZURE_CLIENT_ID = "ua-1" })
      end)
    end)
  end)

  describe("the order and the override", function()
    it("GRAPH_ACCESS_TOKEN, then a secret or certificate, then workload identity, then a managed identity", function()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = "env-secret", identity_header = HEADER_SECRET }
      local all = app_env { AZURE_CLIENT_SECRET = "env-secret", AZURE_FEDERATED_TOKEN_FILE = tmp .. "/missing",
        IDENTITY_ENDPOINT = fx.server.url .. "/msi/token", IDENTITY_HEADER = HEADER_SECRET }
      assert.equal("client_secret - listed 2", run(all))
      all.AZURE_CLIENT_SECRET = nil
      assert.matches("^client_assertion_file ", run(all))
      all.AZURE_FEDERATED_TOKEN_FILE = nil
      all.AZURE_CLIENT_ID = nil
      assert.equal("managed_identity app_service listed 2", run(all))
      all.GRAPH_ACCESS_TOKEN = "pre-obtained"
      assert.matches("^access_token ", run(all))
    end)

    it("opts.credential takes one kind alone, whatever else is set; it says what that kind lacks", function()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = "env-secret", identity_header = HEADER_SECRET }
      local all = app_env { AZURE_CLIENT_SECRET = "env-secret", IDENTITY_ENDPOINT = fx.server.url .. "/msi/token",
        IDENTITY_HEADER = HEADER_SECRET }
      all.AZURE_CLIENT_ID = nil
      local base = ("base_url = %q"):format(fx.server.url)
      assert.equal("managed_identity app_service listed 2", run(all, "{ " .. base .. ", credential = 'managed-identity' }"))
      assert.equal("raised: vpp: credential token: set GRAPH_ACCESS_TOKEN", run(all, "{ " .. base .. ", credential = 'token' }"))
      assert.equal("raised: vpp: credential workload: set AZURE_FEDERATED_TOKEN_FILE, with AZURE_TENANT_ID and"
        .. " AZURE_CLIENT_ID", run(all, "{ " .. base .. ", credential = 'workload' }"))
      assert.matches("^raised: vpp: opts.credential must be one of token, env, workload, managed%-identity",
        run(all, "{ " .. base .. ", credential = 'kerberos' }"))
      -- The metadata endpoint has no variable: named, it is what is used.
      assert.equal("managed_identity imds", run({}, "{ " .. base .. ", credential = 'managed-identity', imds_url ="
        .. (" %q }"):format(fx.server.url .. "/metadata/identity/oauth2/token")):match("^(%S+ %S+)"))
    end)
  end)

  -- The same kinds set directly, in this process, so that the valgrind and
  -- ASan runs see their C (PKCS#12, x5c, the assertion file, Arc's key).
  describe("set directly", function()
    local vpp = require "vpp"
    local function list(settings)
      local c = vpp.new(support.merged({ base_url = fx.server.url, authority = fx.server.url, rate_limit = false }, settings))
      local got, err = c:list_tokens()
      c:close()
      return got, err
    end

    it("each kind gets a token, and a bad one its error", function()
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = fx.certs.thumbprint, x5c = fx.certs.der_b64,
        x5c_chain = 2 }
      assert(list { tenant_id = TENANT, client_id = APP, client_certificate = tmp .. "/chain.pem",
        send_certificate_chain = true })
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = fx.certs.thumbprint }
      assert(list { tenant_id = TENANT, client_id = APP, client_certificate = tmp .. "/with.pfx",
        client_key_password = PFX_PASSWORD })
      local _, err = list { tenant_id = TENANT, client_id = APP, client_certificate = tmp .. "/with.pfx" }
      assert.equal("key_password", err.code)
      assert.has_error(function() vpp.new { tenant_id = "t", client_id = "c", client_secret = "s",
        send_certificate_chain = true } end, "vpp: opts.send_certificate_chain goes with opts.client_certificate")
      local file = tmp .. "/direct-token"
      sys.write_file(file, federated_jwt { iss = "i", sub = "s", aud = "api://AzureADTokenExchange", exp = os.time() + 60 })
      fx.server:app { tenant = TENANT, client_id = APP, federated = { issuer = "i", subject = "s" } }
      assert(list { tenant_id = TENANT, client_id = APP, client_assertion_file = file })
      fx.server:app { tenant = TENANT, client_id = APP, identity_header = HEADER_SECRET, arc_key_dir = tmp .. "/tokens" }
      assert(list { managed_identity = { source = "app_service", endpoint = fx.server.url .. "/msi/token",
        identity_header = HEADER_SECRET } })
      assert(list { managed_identity = { source = "arc", endpoint = fx.server.url .. "/arc/token",
        arc_key_dir = tmp .. "/tokens" } })
      fx.server:app { tenant = TENANT, client_id = APP, arc_key_dir = tmp .. "/tokens", arc_realm = "/etc/passwd" }
      _, err = list { managed_identity = { source = "arc", endpoint = fx.server.url .. "/arc/token",
        arc_key_dir = tmp .. "/tokens" } }
      assert.equal("arc_challenge", err.code)
      assert.has_error(function() vpp.new { managed_identity = { source = "arc" } } end,
        'vpp: opts.managed_identity.endpoint is needed for source "app_service" or "arc" (IDENTITY_ENDPOINT)')
      assert.has_error(function() vpp.new { managed_identity = { source = "app_service", endpoint = "http://127.0.0.1:1" } } end,
        'vpp: opts.managed_identity.identity_header goes with source "app_service", and it needs one')
      assert.has_error(function() vpp.new { managed_identity = { source = "cloud" } } end,
        'vpp: opts.managed_identity.source must be "imds", "app_service" or "arc"')
    end)
  end)

  describe("the command", function()
    local cli
    setup(function() cli = support.install_cli() end)
    teardown(function() cli.remove() end)

    it("--credential picks the kind; its failure is one line naming the kind and its reason", function()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = "env-secret", identity_header = HEADER_SECRET }
      local env = { GRAPH_URL = fx.server.url, AZURE_TENANT_ID = TENANT, AZURE_CLIENT_ID = APP,
        AZURE_AUTHORITY_HOST = fx.server.url, AZURE_CLIENT_SECRET = "env-secret",
        IDENTITY_ENDPOINT = fx.server.url .. "/msi/token", IDENTITY_HEADER = "wrong" }
      assert.equal(0, cli.run({ "list" }, env).code)
      assert.equal("token", fx.server:tokenlog()[1].kind)
      local r = cli.run({ "--credential", "managed-identity", "list" }, env)
      assert.equal(1, r.code)
      assert.equal(1, #support.lines(r.err), r.err)
      assert.matches("^vpp: auth 401 UnauthorizedRequest: managed identity %(App Service%): The X%-IDENTITY%-HEADER", r.err)
      r = cli.run({ "--credential", "workload", "list" }, env)
      assert.equal(1, r.code)
      assert.matches("credential workload: set AZURE_FEDERATED_TOKEN_FILE", r.err)
      assert.equal(64, cli.run({ "--credential", "magic", "list" }, env).code)
      r = cli.run({ "--credential", "managed-identity", "check" }, env)
      assert.equal(3, r.code)
      assert.matches("^VPP UNKNOWN %- cannot ask Graph: .*managed identity %(App Service%)", r.out)
    end)
  end)
end)
