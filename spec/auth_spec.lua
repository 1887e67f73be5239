-- Credentials end to end against the fake identity platform and IMDS: client
-- secret, certificate (PS256 assertion), managed identity, token function,
-- the token cache, the one-shot refresh on 401, and auth errors.
local support = require "support"
local vpp = require "vpp"
local cjson = require "cjson"

local SECRET = "s3cr&t=+%/ ü~x"
local TENANT, APP = "contoso.onmicrosoft.com", "11111111-2222-3333-4444-555555555555"

describe("authentication", function()
  local fx = support.identity_fixture({ tokens = 20 }, { tenant = TENANT, client_id = APP, client_secret = SECRET })
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  local function secret_client(extra)
    return vpp.new(support.merged({ tenant_id = TENANT, client_id = APP, client_secret = SECRET,
      authority = fx.server.url, base_url = fx.server.url, rate_limit = false }, extra))
  end

  local function cert_client(extra)
    return vpp.new(support.merged({ tenant_id = TENANT, client_id = APP, client_certificate = fx.certs.combined,
      authority = fx.server.url, base_url = fx.server.url, rate_limit = false }, extra))
  end

  local function token_requests() return fx.server:stats().token_requests end

  describe("client secret", function()
    it("gets a token with a form-encoded request and calls Graph with it", function()
      local c = secret_client()
      local list = assert(c:list_tokens())
      c:close()
      assert.equal(20, #list)
      local entry = fx.server:tokenlog()[1]
      assert.equal("token", entry.kind)
      assert.equal("POST", entry.method)
      assert.equal(TENANT, entry.tenant)
      assert.matches("^application/x%-www%-form%-urlencoded", entry.content_type)
      assert.same({ grant_type = "client_credentials", client_id = APP, client_secret = SECRET,
        scope = "https://graph.microsoft.com/.default" }, entry.form)
      assert.truthy(entry.raw:find("client_secret=s3cr%26t%3D%2B%25%2F%20%C3%BC~x", 1, true))
      assert.matches("^Bearer fake%-at%-", fx.server:log()[1].authorization)
    end)

    it("fetches one token for many calls", function()
      local c = secret_client()
      local ids = {}
      for _, t in ipairs(assert(c:list_tokens())) do ids[#ids + 1] = t.id end
      for i = 1, 10 do assert(c:sync_licenses(ids[i])) end
      c:close()
      assert.equal(1, token_requests())
    end)

    it("fetches one token for a concurrent batch", function()
      local first = secret_client()
      local ids = {}
      for _, t in ipairs(assert(first:list_tokens())) do ids[#ids + 1] = t.id end
      first:close()
      fx.server:reset()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = SECRET }
      local c = secret_client()
      local results = c:sync_many(ids, { concurrency = 16 })
      c:close()
      assert.equal(20, results.ok)
      assert.equal(1, token_requests())
    end)

    it("fetches a new token before the old one expires", function()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = SECRET, lifetime = 2 }
      local c = secret_client()
      assert(c:list_tokens())
      assert(c:list_tokens())
      assert.equal(1, token_requests())
      require("socket").sleep(1.2) -- a 2 s token is refreshed halfway through
      assert(c:list_tokens())
      c:close()
      assert.equal(2, token_requests())
    end)

    it("keeps a long-lived token", function()
      local c = secret_client()
      assert(c:list_tokens())
      require("socket").sleep(1.2)
      assert(c:list_tokens())
      c:close()
      assert.equal(1, token_requests())
    end)

    it("refreshes once and retries once after a 401 InvalidAuthenticationToken", function()
      local c = secret_client()
      local ids = {}
      for _, t in ipairs(assert(c:list_tokens())) do ids[#ids + 1] = t.id end
      fx.server:revoke()
      fx.server:log()
      local tok = assert(c:sync_licenses(ids[1]))
      assert.equal(ids[1], tok.id)
      assert.equal(2, token_requests())
      local log = fx.server:log()
      assert.equal(2, #log)
      assert.not_equal(log[1].authorization, log[2].authorization)
      c:close()
    end)

    it("never loops on a 401 that a new token does not cure", function()
      fx.server:program("x", { { status = 401, error = "InvalidAuthenticationToken", times = 10 } })
      local c = secret_client()
      local ok, err = c:sync_licenses("x")
      c:close()
      assert.is_nil(ok)
      assert.equal(401, err.status)
      assert.equal(2, err.attempts)
      assert.equal(2, #fx.server:log())
      assert.equal(2, token_requests())
    end)

    it("does not retry a 401 with a fixed token", function()
      fx.server:program("x", { { status = 401, error = "InvalidAuthenticationToken", times = 10 } })
      local c = support.client(fx.server)
      local ok, err = c:sync_licenses("x")
      c:close()
      assert.is_nil(ok)
      assert.equal(1, err.attempts)
      assert.equal(1, #fx.server:log())
    end)
  end)

  describe("certificate", function()
    local function assertion_of(entry)
      local jwt = entry.form.client_assertion
      local h, p, s = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
      return jwt, cjson.decode(support.b64url_decode(h)), cjson.decode(support.b64url_decode(p)), h .. "." .. p, s
    end

    it("signs a PS256 client assertion that verifies with the certificate's public key", function()
      local c = cert_client()
      local t0 = os.time()
      assert(c:list_tokens())
      c:close()
      local entry = fx.server:tokenlog()[1]
      assert.equal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer", entry.form.client_assertion_type)
      assert.is_nil(entry.form.client_secret)
      assert.equal("https://graph.microsoft.com/.default", entry.form.scope)
      local jwt, header, claims, signed, sig = assertion_of(entry)
      assert.same({ alg = "PS256", typ = "JWT", ["x5t#S256"] = fx.certs.thumbprint }, header)
      assert.equal(fx.server.url .. "/" .. TENANT .. "/oauth2/v2.0/token", claims.aud)
      assert.equal(APP, claims.iss)
      assert.equal(APP, claims.sub)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", claims.jti)
      assert.is_true(math.abs(claims.iat - t0) <= 5)
      assert.equal(claims.iat, claims.nbf)
      assert.is_true(claims.exp > claims.iat and claims.exp - claims.iat <= 3600)
      -- the signature, checked by openssl with the certificate's public key
      local input, sigfile = fx.certs.dir .. "/signed.txt", fx.certs.dir .. "/sig.bin"
      support.write_file(input, signed)
      support.write_file(sigfile, support.b64url_decode(sig))
      local out = io.popen(("openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"
        .. " -verify %s -signature %s %s 2>&1"):format(fx.certs.pubkey, sigfile, input)):read("*a")
      assert.matches("Verified OK", out)
      -- and a tampered assertion does not verify
      support.write_file(input, signed .. "x")
      out = io.popen(("openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"
        .. " -verify %s -signature %s %s 2>&1"):format(fx.certs.pubkey, sigfile, input)):read("*a")
      assert.not_matches("Verified OK", out)
      assert.is_string(jwt)
    end)

    it("uses a fresh jti for each assertion", function()
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = fx.certs.thumbprint, lifetime = 1 }
      local c = cert_client()
      assert(c:list_tokens())
      require("socket").sleep(0.6)
      assert(c:list_tokens())
      c:close()
      local log = fx.server:tokenlog()
      assert.equal(2, #log)
      local _, _, a = assertion_of(log[1])
      local _, _, b = assertion_of(log[2])
      assert.not_equal(a.jti, b.jti)
    end)

    it("takes the key from a separate file, encrypted with a password", function()
      local c = cert_client { client_certificate = fx.certs.cert, client_key = fx.certs.encrypted_key,
        client_key_password = fx.certs.password }
      assert(c:list_tokens())
      c:close()
      assert.equal(1, token_requests())
    end)

    local broken = {
      { "a missing file", { client_certificate = "/nonexistent/cert.pem" }, "certificate_unreadable" },
      { "a file without a certificate", { client_certificate = "/etc/hostname" }, "certificate_invalid" },
      { "a wrong key password", { client_certificate = "CERT", client_key = "ENC", client_key_password = "nope" }, "key_password" },
      { "no password for an encrypted key", { client_certificate = "CERT", client_key = "ENC" }, "key_password" },
      { "a key of another certificate", { client_certificate = "CERT", client_key = "OTHER" }, "key_mismatch" },
      { "an EC key", { client_certificate = "EC" }, "unsupported_key" },
    }
    for _, case in ipairs(broken) do
      it("gives an auth error at the first call for " .. case[1], function()
        local o = {}
        local files = { CERT = fx.certs.cert, ENC = fx.certs.encrypted_key, OTHER = fx.certs.other_key, EC = fx.certs.ec_combined }
        for k, v in pairs(case[2]) do o[k] = files[v] or v end
        local c = cert_client(o) -- no raise at vpp.new
        local ok, err = c:list_tokens()
        c:close()
        assert.is_nil(ok)
        assert.equal("auth", err.kind)
        assert.equal(case[3], err.code)
        assert.equal(0, token_requests())
        assert.is_false(support.contains_secret(err, fx.certs.password))
        assert.is_false(support.contains_secret(err, "PRIVATE KEY"))
      end)
    end
  end)

  describe("managed identity", function()
    local function mi_client(extra)
      return vpp.new(support.merged({ managed_identity = true,
        imds_url = fx.server.url .. "/metadata/identity/oauth2/token", base_url = fx.server.url, rate_limit = false },
        extra))
    end

    it("asks the metadata endpoint with Metadata: true and the Graph resource", function()
      local c = mi_client()
      assert(c:list_tokens())
      assert(c:list_tokens())
      c:close()
      local entry = fx.server:tokenlog()[1]
      assert.equal("imds", entry.kind)
      assert.equal("true", entry.metadata)
      assert.equal("2018-02-01", entry.args["api-version"])
      assert.equal("https://graph.microsoft.com", entry.args.resource)
      assert.is_nil(entry.args.client_id)
      assert.equal(1, token_requests()) -- expires_in came as a string, and was understood
    end)

    it("names a user-assigned identity by client_id", function()
      local c = mi_client { managed_identity = { client_id = "mi-client-7" } }
      assert(c:list_tokens())
      c:close()
      assert.equal("mi-client-7", fx.server:tokenlog()[1].args.client_id)
    end)

    it("reports an IMDS error as an auth error", function()
      fx.server:program("@imds", { { status = 400, body = '{"error":"invalid_request","error_description":"Identity not found"}' } })
      local c = mi_client()
      local ok, err = c:list_tokens()
      c:close()
      assert.is_nil(ok)
      assert.equal("auth", err.kind)
      assert.equal("invalid_request", err.code)
      -- Which credential was tried, then the endpoint's reason.
      assert.equal("managed identity (Azure VM instance metadata): Identity not found", err.message)
      assert.equal(400, err.status)
    end)
  end)

  describe("an access_token function", function()
    before_each(function() fx.server:config { require_issued = false } end)

    it("is called again only when the expiry it gave is near", function()
      local calls = 0
      local c = vpp.new { base_url = fx.server.url, rate_limit = false, access_token = function()
        calls = calls + 1
        return "fn-" .. calls, os.time() + 3600
      end }
      for _ = 1, 5 do assert(c:list_tokens()) end
      assert.equal(1, calls)
      c:close()
    end)

    it("is called again after a 401, once", function()
      fx.server:program("x", { { status = 401, error = "InvalidAuthenticationToken" } })
      fx.server:program("x", { { body = '{"id":"x"}' } })
      local calls = 0
      local c = vpp.new { base_url = fx.server.url, rate_limit = false, access_token = function()
        calls = calls + 1
        return "fn-" .. calls, os.time() + 3600
      end }
      assert.equal("x", assert(c:sync_licenses("x")).id)
      c:close()
      assert.equal(2, calls)
      local log = fx.server:log()
      assert.equal("Bearer fn-1", log[1].authorization)
      assert.equal("Bearer fn-2", log[2].authorization)
    end)
  end)

  describe("errors", function()
    it("carry the identity platform's error, description, codes and ids", function()
      local c = secret_client { client_secret = "wrong" .. SECRET }
      local ok, err = c:list_tokens()
      c:close()
      assert.is_nil(ok)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.equal("invalid_client", err.code)
      assert.matches("^client secret: AADSTS7000215: Invalid client secret provided%.", err.message)
      assert.same({ 7000215 }, err.aad_codes)
      assert.matches("^%x+%-", err.trace_id)
      assert.matches("^%x+%-", err.correlation_id)
      assert.matches("^vpp: auth 401 invalid_client: client secret: AADSTS7000215", tostring(err))
      assert.same({}, fx.server:log()) -- Graph was not called
    end)

    it("for an unknown tenant or application", function()
      local c = secret_client { tenant_id = "nowhere" }
      local _, err = c:list_tokens()
      c:close()
      assert.equal("invalid_request", err.code)
      assert.same({ 90002 }, err.aad_codes)
      c = secret_client { client_id = "someone-else" }
      _, err = c:list_tokens()
      c:close()
      assert.equal("unauthorized_client", err.code)
    end)

    it("for an unreachable or garbled token endpoint", function()
      local probe = require("socket").bind("127.0.0.1", 0)
      local _, port = probe:getsockname()
      probe:close()
      local c = secret_client { authority = "http://127.0.0.1:" .. port }
      local _, err = c:list_tokens()
      c:close()
      assert.equal("auth", err.kind)
      assert.equal("COULDNT_CONNECT", err.code)
      fx.server:program("@token", { { status = 200, body = "<html>proxy login</html>", content_type = "text/html" } })
      c = secret_client()
      _, err = c:list_tokens()
      c:close()
      assert.equal("auth", err.kind)
      assert.equal("invalid_response", err.code)
    end)

    it("for a token endpoint that stalls (stall_timeout covers token requests too)", function()
      fx.server:program("@token", { { stall = { after = 5, seconds = 4 }, body = '{"access_token":"late"}' } })
      local c = secret_client { stall_timeout = 1 }
      local t0 = support.now()
      local _, err = c:list_tokens()
      local seconds = support.now() - t0
      c:close()
      assert.equal("auth", err.kind)
      assert.equal("OPERATION_TIMEDOUT", err.code)
      assert.is_true(seconds < 3.5, "gave up after " .. seconds .. " s, not before the stall ended")
      -- a pause shorter than stall_timeout is no stall: the watchdog starts with each request
      local body = '{"access_token":"fake-at-x","token_type":"Bearer","expires_in":3599}'
      fx.server:program("@token", { { stall = { after = 5, seconds = 0.5 }, body = body } })
      c = secret_client { stall_timeout = 1 }
      local _, err2 = c:get_token("any")
      c:close()
      assert.not_equal("auth", err2 and err2.kind, tostring(err2))
    end)

    it("fail every item of a batch with one token request", function()
      local c = secret_client { client_secret = "wrong" }
      local results = c:sync_many({ "a", "b", "c", "d" })
      c:close()
      assert.equal(4, results.failed)
      for _, r in ipairs(results) do assert.equal("invalid_client", r.err.code) end
      assert.equal(1, token_requests())
    end)

    it("never contain a secret, an assertion, a key or an access token", function()
      local errors = {}
      local function add(_, err) errors[#errors + 1] = err end
      local c = secret_client { client_secret = "wrong" .. SECRET }
      add(c:list_tokens())
      c:close()
      c = cert_client { client_certificate = fx.certs.cert, client_key = fx.certs.encrypted_key, client_key_password = "x" .. fx.certs.password }
      add(c:list_tokens())
      c:close()
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = "someone-else" }
      c = cert_client()
      add(c:list_tokens())
      c:close()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = SECRET }
      c = secret_client()
      assert(c:list_tokens())
      add(c:sync_licenses("missing"))
      fx.server:revoke()
      fx.server:program("y", { { status = 401, error = "InvalidAuthenticationToken", times = 3 } })
      add(c:sync_licenses("y"))
      c:close()
      local secrets = { SECRET, fx.certs.password, "PRIVATE KEY", fx.certs.key_pem:sub(40, 80) }
      for _, entry in ipairs(fx.server:tokenlog()) do
        if entry.form and entry.form.client_assertion then secrets[#secrets + 1] = entry.form.client_assertion end
      end
      for _, entry in ipairs(fx.server:log()) do
        secrets[#secrets + 1] = entry.authorization:sub(8)
      end
      assert.equal(5, #errors)
      assert.is_true(#secrets >= 7)
      for _, err in ipairs(errors) do
        for _, secret in ipairs(secrets) do
          assert.is_false(support.contains_secret(err, secret), tostring(err))
        end
      end
    end)
  end)

  describe("settings", function()
    it("raise for conflicting or incomplete credentials", function()
      assert.has_error(function() vpp.new { access_token = "t", client_secret = "s", tenant_id = "t", client_id = "c" } end,
        "vpp: choose one credential: access_token, client_secret, client_certificate, client_assertion_file or "
          .. "managed_identity")
      assert.has_error(function() vpp.new { client_secret = "s", client_id = "c" } end,
        "vpp: opts.client_secret needs opts.tenant_id and opts.client_id")
      assert.has_error(function() vpp.new { access_token = "t", client_key = "k.pem" } end,
        "vpp: opts.client_key and opts.client_key_password go with opts.client_certificate")
      assert.has_error(function() vpp.new { access_token = "t", imds_url = "http://x" } end,
        "vpp: opts.imds_url goes with opts.managed_identity")
      assert.has_error(function() vpp.new { managed_identity = "yes" } end,
        "vpp: opts.managed_identity must be true or { client_id = ..., source = ... }")
      assert.has_error(function() vpp.new { managed_identity = { id = "x" } } end,
        "vpp: unknown managed_identity key 'id' (expected client_id, source, endpoint, identity_header or arc_key_dir)")
      assert.has_error(function() vpp.new { access_token = "t", cloud = "mars" } end,
        'vpp: opts.cloud must be "global", "usgov", "dod" or "china"')
    end)

    it("take credential strings as they are, but refuse empty ones, other types and NUL bytes", function()
      local function secret(v)
        return function() vpp.new { tenant_id = "t", client_id = "c", client_secret = v } end
      end
      assert.has_no.errors(secret("tab\tand\rreturn")) -- sent form-encoded: any byte but NUL is fine
      assert.has_error(secret(""), "vpp: opts.client_secret must be a non-empty string")
      assert.has_error(secret(42), "vpp: opts.client_secret must be a non-empty string (got number)")
      assert.has_error(secret("a\0b"), "vpp: opts.client_secret must not contain NUL bytes")
    end)
  end)
end)
