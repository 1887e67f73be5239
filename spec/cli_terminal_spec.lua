-- The vpp command on a terminal and off it: colour, NO_COLOR, the progress
-- line under a pseudo-terminal, and --verbose request lines without secrets.
local support = require "support"

local SECRET = "cli-s3cr&t=+%/ x"
local TENANT, APP = "contoso.onmicrosoft.com", "11111111-2222-3333-4444-555555555555"

describe("the vpp command on a terminal", function()
  local fx = support.cli_fixture { tokens = 40 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)
  setup(function()
    if not require("sys").execute("command -v script >/dev/null 2>&1") then
      error("util-linux `script` is needed for the pseudo-terminal specs")
    end
  end)

  local function with(extra) return support.merged(fx.env, extra) end

  it("colours the table on a terminal", function()
    local r = fx.cli.run({ "list" }, fx.env, { pty = true })
    assert.equal(0, r.code, r.out)
    assert.truthy(r.out:find("\27[1mID\27[0m", 1, true), "bold header")
    assert.truthy(r.out:find("\27[32mvalid\27[0m", 1, true), "green valid state")
  end)

  it("no escape codes with NO_COLOR, even on a terminal, nor when output is not a terminal", function()
    for _, args in ipairs { { "list" }, { "sync", "--all" }, { "get", "x" } } do
      local r = fx.cli.run(args, with { NO_COLOR = "1" }, { pty = true })
      assert.falsy(r.out:find("\27", 1, true), table.concat(args, " "))
      r = fx.cli.run(args, fx.env)
      assert.falsy((r.out .. r.err):find("\27", 1, true), table.concat(args, " "))
    end
  end)

  it("shows a live progress line on a terminal during a batch, and none otherwise", function()
    fx.server:config { latency = 0.06 }
    local r = fx.cli.run({ "sync", "--all", "--concurrency", "2" }, fx.env, { pty = true })
    assert.equal(0, r.code, r.out)
    -- Redrawn in place with carriage returns; the final counts stay.
    local last
    for done, total in r.out:gmatch("\rsyncing (%d+)/(%d+)") do last = { tonumber(done), tonumber(total) } end
    assert.truthy(last, r.out)
    assert.equal(last[1], last[2])
    assert.matches("\rsyncing %d+/%d+ · [%d.]+/s", r.out)
    fx.server:reset()
    fx.server:config { latency = 0.06 }
    r = fx.cli.run({ "sync", "--all", "--concurrency", "2" }, fx.env)
    assert.equal(0, r.code, r.err)
    assert.matches("19 started", r.err)
    assert.falsy(r.err:find("syncing %d+/%d+"), r.err)
    assert.falsy(r.err:find("\r", 1, true))
  end)

  it("--quiet shows no progress and no summary, even on a terminal", function()
    local r = fx.cli.run({ "--quiet", "sync", "--all" }, fx.env, { pty = true })
    assert.equal(0, r.code, r.out)
    assert.equal("", r.out)
  end)

  describe("--verbose", function()
    local certs

    setup(function() certs = support.make_certs() end)
    teardown(function() certs.remove() end)

    local function request_lines(err)
      local out = {}
      for line in err:gmatch("[^\n]+") do
        if line:match("^vpp: [A-Z]+ /") then out[#out + 1] = line end
      end
      return out
    end

    it("writes a line per request: method, path, status, time, request-id", function()
      local r = fx.cli.run({ "--verbose", "sync", "--all" }, fx.env)
      assert.equal(0, r.code, r.err)
      local lines = request_lines(r.err)
      local log = fx.server:log()
      assert.equal(#log, #lines)
      assert.matches("^vpp: GET /v1%.0/deviceAppManagement/vppTokens 200 %d+%.%d+s request%-id [%x-]+$", lines[1])
      for i = 2, #lines do
        assert.matches("^vpp: POST /v1%.0/deviceAppManagement/vppTokens/[%x-]+/syncLicenses 200 %d+%.%d+s request%-id [%x-]+$",
          lines[i])
      end
      assert.falsy(r.err:find(support.TOKEN, 1, true))
      assert.falsy(r.out:find(support.TOKEN, 1, true))
    end)

    it("shows retries and the token request, and never the secret or the access token", function()
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = SECRET, thumbprint = certs.thumbprint }
      fx.server:program("@list", { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "0" } } })
      local azure = { GRAPH_URL = fx.server.url, AZURE_TENANT_ID = TENANT, AZURE_CLIENT_ID = APP,
        AZURE_CLIENT_SECRET = SECRET, AZURE_AUTHORITY_HOST = fx.server.url }
      local r = fx.cli.run({ "--verbose", "list", "--format", "json" }, azure)
      assert.equal(0, r.code, r.err)
      local lines = request_lines(r.err)
      assert.matches("^vpp: POST /" .. TENANT:gsub("%p", "%%%0") .. "/oauth2/v2%.0/token 200 ", lines[1])
      assert.matches("^vpp: GET /v1%.0/deviceAppManagement/vppTokens%?%$select=[%w,]+ 429 .* request%-id [%x-]+$", lines[2])
      assert.matches("^vpp: GET /v1%.0/deviceAppManagement/vppTokens%?%$select=[%w,]+ 200 .* attempt 2$", lines[3])
      for _, s in ipairs { SECRET, "fake-at-", "client_secret", "Bearer" } do
        assert.falsy(r.err:find(s, 1, true), s)
        assert.falsy(r.out:find(s, 1, true), s)
      end
    end)

    it("with certificate credentials: the assertion and the key appear nowhere", function()
      fx.server:app { tenant = TENANT, client_id = APP, thumbprint = certs.thumbprint }
      local r = fx.cli.run({ "--verbose", "check" }, { GRAPH_URL = fx.server.url, AZURE_TENANT_ID = TENANT,
        AZURE_CLIENT_ID = APP, AZURE_CLIENT_CERTIFICATE_PATH = certs.combined, AZURE_AUTHORITY_HOST = fx.server.url })
      assert.is_true(r.code <= 2, r.err)
      assert.matches("/oauth2/v2%.0/token 200", r.err)
      local key_line = certs.key_pem:match("\n([^\n]+)\n")
      for _, s in ipairs { "eyJ", key_line, "fake-at-", "client_assertion" } do
        assert.falsy((r.err .. r.out):find(s, 1, true), s)
      end
    end)
  end)
end)
