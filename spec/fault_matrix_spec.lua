-- The fault matrix: each way a server or network can misbehave, for a
-- single call and inside a batch (where one bad answer must not spoil the
-- others), each with a clear result and no file descriptor left open.
-- Memory is watched by running this suite under valgrind and ASan.
local support = require "support"
local sys = require "sys"

local BODY = '{"id":"%s","state":"valid","padding":"0123456789012345678901234567890123456789"}'

local function body(id) return BODY:format(id) end

-- One throttled answer with this Retry-After, then the token.
local function throttled_once(status, retry_after)
  local codes = { [429] = "TooManyRequests", [503] = "ServiceUnavailable" }
  return function(id)
    return { { status = status, error = codes[status], headers = { ["Retry-After"] = retry_after } },
      { body = body(id) } }
  end
end

-- A Retry-After beyond max_retry_delay: the throttled answer, at once,
-- with what the server asked for; never an early retry.
local function not_retried(status)
  return function(err, seconds)
    assert.equal(status, err.status)
    assert.equal(1, err.attempts)
    assert.is_true(err.retry_after > 1e6, tostring(err.retry_after))
    assert.is_true(seconds < 2, "waited " .. seconds .. " s")
  end
end

-- The open file descriptors of this process (sockets included); lfs comes
-- with busted.
local function open_fds()
  collectgarbage()
  collectgarbage() -- clients of earlier tests, closed by __gc
  local n = 0
  for name in require("lfs").dir("/proc/self/fd") do
    if name:match("^%d+$") then n = n + 1 end
  end
  return n
end

-- A gzip body as the fake Graph's body_base64.
local function gzip_base64(s)
  local f = os.tmpname()
  support.write_file(f, s)
  local out, ok = sys.capture(("gzip -c %s | base64 -w0"):format(f))
  os.remove(f)
  assert(ok, out)
  return out
end

describe("fault matrix", function()
  local f = support.fake_graph({}, { rate_limit = false, max_retries = 2, max_retry_delay = 0.5 })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  -- Each fault: the responses to program for the faulty id, client
  -- settings, and a check of the error (nil when the call must succeed).
  local faults = {
    {
      name = "a connection dropped in the middle of the body",
      program = function(id) return { { cut = 20, body = body(id) } } end,
      check = function(err)
        assert.equal("transport", err.kind)
        assert.equal("PARTIAL_FILE", err.code)
      end,
    },
    {
      name = "a chunked body cut before its last chunk",
      program = function(id) return { { chunked_cut = 15, body = body(id) } } end,
      check = function(err)
        assert.equal("transport", err.kind)
        assert.equal("PARTIAL_FILE", err.code)
      end,
    },
    {
      name = "a body that stalls (stall_timeout)",
      opts = { stall_timeout = 1 },
      program = function(id) return { { stall = { after = 12, seconds = 4 }, body = body(id) } } end,
      check = function(err, seconds)
        assert.equal("OPERATION_TIMEDOUT", err.code)
        assert.is_true(seconds < 3.5, "gave up after " .. seconds .. " s, not before the stall ended")
      end,
    },
    {
      name = "a 429 storm that outlasts the retries",
      program = function()
        return { { status = 429, error = "TooManyRequests", times = 10, headers = { ["Retry-After"] = "0" } } }
      end,
      check = function(err)
        assert.equal("http", err.kind)
        assert.equal(429, err.status)
        assert.equal(3, err.attempts) -- max_retries = 2
      end,
    },
    {
      name = "a 429 storm that ends within the retries",
      program = function(id)
        return { { status = 429, error = "TooManyRequests", times = 2, headers = { ["Retry-After"] = "0.1" } },
          { body = body(id) } }
      end,
    },
    {
      name = "Retry-After in the past",
      program = throttled_once(503, "Sun, 06 Nov 1994 08:49:37 GMT"),
      check_time = function(seconds) assert.is_true(seconds < 3, "waited " .. seconds .. " s for a past date") end,
    },
    {
      name = "Retry-After absurdly far, in seconds (no early retry)",
      program = throttled_once(429, "99999999999"),
      check = not_retried(429),
    },
    {
      name = "Retry-After absurdly far, as a date (no early retry)",
      program = throttled_once(503, "Fri, 31 Dec 9999 23:59:59 GMT"),
      check = not_retried(503),
    },
    {
      name = "a garbage Retry-After (backoff instead)",
      program = throttled_once(429, "soon, maybe"),
    },
    {
      name = "a gzip body",
      program = function(id)
        return { { body_base64 = gzip_base64(body(id)), headers = { ["Content-Encoding"] = "gzip" } } }
      end,
    },
    {
      name = "a gzip bomb (decoded size over max_response_bytes)",
      opts = { max_response_bytes = 1024 * 1024 },
      program = function(id)
        local pad = string.rep("0", 8 * 1024 * 1024)
        return { { body_base64 = gzip_base64(('{"id":"%s","pad":"%s"}'):format(id, pad)),
          headers = { ["Content-Encoding"] = "gzip" } } }
      end,
      check = function(err)
        assert.equal("response_too_large", err.code)
      end,
    },
    {
      name = "a body that is not JSON",
      program = function() return { { body = "<html>maintenance</html>", content_type = "text/html" } } end,
      check = function(err)
        assert.equal("decode", err.kind)
        assert.equal("invalid_response", err.code)
      end,
    },
  }

  local function client_for(fault)
    local o = { rate_limit = false, max_retries = 2, max_retry_delay = 0.5 }
    for k, v in pairs(fault.opts or {}) do o[k] = v end
    return support.client(f.server, o)
  end

  local function expect(fault, tok, err, id, seconds)
    if fault.check then
      assert.is_nil(tok)
      assert.is_true(require("vpp").is_error(err), tostring(err))
      fault.check(err, seconds)
      assert.not_matches(support.TOKEN, tostring(err), 1, true)
    else
      assert.is_nil(err, tostring(err))
      assert.equal(id, tok.id)
      assert.equal("valid", tok.state)
    end
    if fault.check_time then fault.check_time(seconds) end
  end

  for _, fault in ipairs(faults) do
    describe(fault.name, function()
      it("gives a single call a clear result", function()
        local fds = open_fds()
        local c = client_for(fault)
        f.server:program("faulty", fault.program("faulty"))
        local t0 = support.now()
        local tok, err = c:sync_licenses("faulty")
        expect(fault, tok, err, "faulty", support.now() - t0)
        -- the client stays usable after it
        f.server:program("after", { { body = body("after") } })
        assert.equal("after", assert(c:get_token("after")).id)
        c:close()
        assert.equal(fds, open_fds())
      end)

      it("spoils nothing else in a batch", function()
        local fds = open_fds()
        local c = client_for(fault)
        local ids = { "ok-1", "faulty-1", "ok-2", "faulty-2", "ok-3" }
        for _, id in ipairs(ids) do
          f.server:program(id, id:find("faulty") and fault.program(id) or { { body = body(id) } })
        end
        local t0 = support.now()
        local results = assert(c:sync_many(ids, { concurrency = 5 }))
        local seconds = support.now() - t0
        for i, id in ipairs(ids) do
          assert.equal(id, results[i].id)
          if id:find("faulty") then
            expect(fault, results[i].token, results[i].err, id, seconds)
          else
            assert.is_nil(results[i].err, tostring(results[i].err))
            assert.equal(id, results[i].token.id)
          end
        end
        assert.equal(fault.check and 3 or 5, results.ok)
        c:close()
        assert.equal(fds, open_fds())
      end)
    end)
  end

  it("sends Accept-Encoding: gzip", function()
    f.client:get_token("any")
    assert.matches("gzip", f.server:log()[1].accept_encoding)
  end)

  it("survives a 429 storm over a whole batch: every item retried on its own, all done", function()
    local ids = {}
    for i = 1, 40 do
      ids[i] = "storm-" .. i
      f.server:program(ids[i], {
        { status = 429, error = "TooManyRequests", times = 2, headers = { ["Retry-After"] = "0.2" } },
        { body = body(ids[i]) } })
    end
    local results = assert(f.client:sync_many(ids, { concurrency = 16 }))
    assert.equal(40, results.ok)
    for _, r in ipairs(results) do assert.equal(3, r.attempts) end
    assert.equal(120, #f.server:log())
  end)
end)

describe("big tenants", function()
  local server
  setup(function() server = support.start { tokens = 10000, page_size = 100, log = false } end)
  teardown(function() server:stop() end)

  it("lists a huge number of pages (2,000 pages of 5)", function()
    local c = support.client(server, { rate_limit = false, max_pages = 2000 })
    local list = assert(c:list_tokens { top = 5, select = "id" })
    c:close()
    assert.equal(10000, #list)
    local seen = {}
    for _, t in ipairs(list) do
      assert.is_nil(seen[t.id], "listed twice: " .. t.id)
      seen[t.id] = true
    end
  end)

  it("syncs every valid token of a 10,000-token tenant with sync_all", function()
    local c = support.client(server, { rate_limit = false })
    local report = assert(c:sync_all { concurrency = 32, include_in_progress = true })
    c:close()
    assert.equal(10000, report.listed)
    assert.is_true(report.selected > 5000, "only " .. report.selected .. " valid tokens")
    assert.equal(report.selected, report.results.ok)
    assert.equal(0, report.results.failed)
  end)
end)
