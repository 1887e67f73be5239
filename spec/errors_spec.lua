-- Run-time failures return nil, err with a structured err; nothing raises.
local support = require "support"
local vpp = require "vpp"

describe("run-time errors", function()
  local f = support.fake_graph()
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  local function fails(...)
    local ok, err = ...
    assert.is_nil(ok)
    assert.is_table(err)
    assert.is_true(vpp.is_error(err))
    return err
  end

  describe("kind http", function()
    it("carries Graph's error code, message and request-id", function()
      local err = fails(f.client:sync_licenses("no-such-token"))
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.equal("ResourceNotFound", err.code)
      assert.equal("The requested vppToken was not found.", err.message)
      assert.matches("^%x+%-", err.request_id)
      assert.matches("^%x+%-", err.client_request_id)
    end)

    it("takes the request-id from innerError when the header is missing", function()
      f.server:program("x", { { status = 403, no_request_id = true,
        body = [[{"error":{"code":"Forbidden","message":"Nope","innerError":{"request-id":"inner-rid-1","date":"2026-01-01T00:00:00"}}}]] } })
      local err = fails(f.client:get_token("x"))
      assert.equal(403, err.status)
      assert.equal("Forbidden", err.code)
      assert.equal("inner-rid-1", err.request_id)
    end)

    it("reports 401 InvalidAuthenticationToken", function()
      f.server:program("x", { { status = 401, error = "InvalidAuthenticationToken", message = "Lifetime validation failed, the token is expired." } })
      local err = fails(f.client:sync_licenses("x"))
      assert.equal(401, err.status)
      assert.equal("InvalidAuthenticationToken", err.code)
    end)

    it("reports 429 and 503 with their codes once retries are spent", function()
      f.server:program("x", {
        { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "3" } },
        { status = 503, error = "ServiceUnavailable" },
      })
      local c = support.client(f.server, { max_retries = 0 })
      local err = fails(c:sync_licenses("x"))
      assert.equal(429, err.status)
      assert.equal("TooManyRequests", err.code)
      assert.equal(1, err.attempts)
      err = fails(c:sync_licenses("x"))
      c:close()
      assert.equal(503, err.status)
      assert.equal("ServiceUnavailable", err.code)
    end)

    it("handles an error answer that is not JSON", function()
      f.server:program("x", { { status = 502, body = "<html>Bad gateway</html>", content_type = "text/html" } })
      local err = fails(f.client:get_token("x"))
      assert.equal("http", err.kind)
      assert.equal(502, err.status)
      assert.is_nil(err.code)
      assert.matches("HTTP 502", err.message)
    end)

    it("always has a message, even when Graph's is empty (found by make fuzz)", function()
      f.server:program("x", { { status = 409, body = '{"error":{"code":"Conflict","message":""}}' } })
      local err = fails(f.client:get_token("x"))
      assert.equal("Conflict", err.code)
      assert.matches("HTTP 409", err.message)
    end)

    it("does not treat a list page error as a partial success", function()
      f.server:program("@list", { { status = 500, error = "InternalServerError" } })
      local err = fails(f.client:list_tokens())
      assert.equal(500, err.status)
    end)
  end)

  describe("Intune's errors inside Graph's", function()
    it("unwrap the text of Intune's JSON message, keeping its activity id and innerError's date", function()
      f.server:program("t", { { status = 500, error = "InternalError", intune = true,
        message = "An error has occurred" } })
      local err = fails(f.client:sync_licenses("t"))
      assert.equal("InternalError", err.code)
      assert.equal("An error has occurred", err.message)
      assert.equal(err.request_id, err.activity_id) -- the fake uses the request-id, as Intune often does
      assert.is_nil(err.operation_id) -- Intune's all-zero placeholder is no id
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d$", err.date)
      assert.not_matches("_version", tostring(err))
    end)

    it("unwrap a message wrapped twice, and keep a real operation id", function()
      local inner = '{\r\n  "_version": 3,\r\n  "Message": "An error has occurred - Operation ID (for customer'
        .. ' support): 4f0c1f5e-2a6b-4f55-9d3e-0123456789ab - Activity ID: 2f4e1c74-f5d3-4529-9441-c6e6543b2133'
        .. ' - Url: https://fef.msub02.manage.microsoft.com/x",\r\n  "CustomApiErrorPhrase": ""\r\n}'
      f.server:program("t", { { status = 500, json = { error = { code = "UnknownError",
        message = require("cjson").encode { ErrorCode = "Forbidden", Message = inner },
        innerError = { date = "2020-02-03T10:00:00" } } } } })
      local err = fails(f.client:get_token("t"))
      assert.equal("An error has occurred", err.message)
      assert.equal("4f0c1f5e-2a6b-4f55-9d3e-0123456789ab", err.operation_id)
      assert.equal("2f4e1c74-f5d3-4529-9441-c6e6543b2133", err.activity_id)
      assert.equal("2020-02-03T10:00:00", err.date)
    end)

    it("leave a plain Graph message as it is", function()
      local err = fails(f.client:sync_licenses("no-such-token"))
      assert.equal("The requested vppToken was not found.", err.message)
      assert.is_nil(err.activity_id)
      assert.is_nil(err.hint)
    end)

    it("a 403 names the permission the call needs, for writes and for reads", function()
      local denied = { status = 403, error = "Forbidden", intune = true, message = "Application is not"
        .. " authorized to perform this operation. Application must have one of the following scopes:"
        .. " DeviceManagementApps.ReadWrite.All, DeviceManagementServiceConfig.ReadWrite.All" }
      f.server:program("t", { denied, denied })
      local w = fails(f.client:sync_licenses("t"))
      assert.equal(403, w.status)
      assert.matches("^Application is not authorized to perform this operation%.", w.message)
      assert.matches("DeviceManagementApps%.ReadWrite%.All", w.hint)
      assert.matches("admin consent", w.hint)
      assert.matches("; hint: the application needs", tostring(w))
      local r = fails(f.client:get_token("t"))
      assert.matches("DeviceManagementApps%.Read%.All", r.hint)
      assert.not_matches("ReadWrite", r.hint)
    end)
  end)

  describe("kind decode", function()
    for name, body in pairs {
      malformed = '{"id": "x", "state": }',
      truncated = '{"value": {"id": "x", "state": "val',
      ["not JSON"] = "OK, license sync started",
      ["not an object"] = '["x"]',
      ["a bare string"] = '"x"',
    } do
      it("for a 2xx whose body is " .. name, function()
        f.server:program("x", { { status = 200, body = body } })
        local err = fails(f.client:sync_licenses("x"))
        assert.equal("decode", err.kind)
        assert.equal(200, err.status)
        assert.equal("invalid_response", err.code)
        assert.is_string(err.message)
      end)
    end

    it("for a list page without a value array", function()
      f.server:program("@list", { { body = '{"items": []}' } })
      assert.equal("decode", fails(f.client:list_tokens()).kind)
    end)
  end)

  describe("kind transport", function()
    it("for a refused connection", function()
      local probe = require("socket").bind("127.0.0.1", 0)
      local _, port = probe:getsockname()
      probe:close() -- nothing listens there now
      -- A refused connection is retried: keep the back-off short here.
      local c = support.client(f.server, { base_url = "http://127.0.0.1:" .. port, max_retry_delay = 0.01 })
      local err = fails(c:sync_licenses("x"))
      c:close()
      assert.equal("transport", err.kind)
      assert.is_nil(err.status)
      assert.equal("COULDNT_CONNECT", err.code)
      assert.equal(4, err.attempts) -- a failure to connect is retried, 3 times by default
    end)

    it("for a timeout", function()
      f.server:program("x", { { delay = 3, body = '{"id":"x"}' } })
      local c = support.client(f.server, { timeout = 0.5 })
      local t0 = support.now()
      local err = fails(c:sync_licenses("x"))
      c:close()
      assert.equal("OPERATION_TIMEDOUT", err.code)
      assert.equal("transport", err.kind)
      assert.is_true(support.now() - t0 < 2.5)
    end)

    it("for a connection dropped without an answer", function()
      -- On a fresh f.client: libcurl itself retries once when a *reused*
      -- connection dies before answering.
      f.server:program("x", { { drop = true } })
      local err = fails(f.client:sync_licenses("x"))
      assert.equal("transport", err.kind)
      assert.equal("GOT_NOTHING", err.code)
    end)

    it("for a body cut short by a closed connection", function()
      f.server:program("x", { { cut = 20, body = '{"value":{"id":"x","state":"valid","padding":"0123456789"}}' } })
      local err = fails(f.client:sync_licenses("x"))
      assert.equal("transport", err.kind)
      assert.equal("PARTIAL_FILE", err.code)
    end)

    it("for a body over max_response_bytes announced by Content-Length", function()
      f.server:program("x", { { big = 3 * 1024 * 1024 } })
      local c = support.client(f.server, { max_response_bytes = 1024 * 1024 })
      local err = fails(c:get_token("x"))
      c:close()
      assert.equal("transport", err.kind)
      assert.equal("response_too_large", err.code)
    end)

    it("for a streamed body, stopping as soon as it passes max_response_bytes", function()
      -- 400 chunks of 64 KiB, 20 ms apart: 8 s and 25 MiB if read to the end.
      f.server:program("x", { { stream = { chunk = 65536, count = 400, delay = 0.02 } } })
      local c = support.client(f.server, { max_response_bytes = 256 * 1024 })
      local t0 = support.now()
      local err = fails(c:get_token("x"))
      c:close()
      assert.equal("response_too_large", err.code)
      assert.is_true(support.now() - t0 < 4, "the transfer was not stopped early")
    end)

    it("leaves the f.client usable after a failure", function()
      f.server:program("x", { { drop = true } })
      fails(f.client:sync_licenses("x"))
      f.server:program("x", { { body = '{"id":"x","state":"valid"}' } })
      assert.equal("valid", f.client:sync_licenses("x").state)
    end)
  end)

  describe("tostring(err)", function()
    it("gives one readable line", function()
      local err = fails(f.client:sync_licenses("no-such-token"))
      local s = tostring(err)
      assert.matches("^vpp: http 404 ResourceNotFound: The requested vppToken was not found%. %(request%-id ", s)
      assert.matches("client%-request%-id " .. err.client_request_id:gsub("%-", "%%-"), s)
      assert.not_matches("\n", s)
    end)

    it("names the transport failure", function()
      f.server:program("x", { { drop = true } })
      local err = fails(f.client:sync_licenses("x"))
      assert.matches("^vpp: transport GOT_NOTHING: ", tostring(err))
      -- No request-id without an answer: the parenthesis holds ours alone.
      assert.matches(" %(client%-request%-id " .. err.client_request_id:gsub("%-", "%%-") .. "%)$", tostring(err))
    end)
  end)
end)
