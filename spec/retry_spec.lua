-- Throttling: retries with Retry-After or backoff, what is not retried,
-- timers that do not stall a batch, and the proactive rate limit.
local support = require "support"

describe("retries", function()
  local f = support.fake_graph({}, { rate_limit = false })
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  local function throttle(id, retry_after, times)
    f.server:program(id, { { status = 429, error = "TooManyRequests", times = times or 1,
      headers = retry_after and { ["Retry-After"] = retry_after } or nil } })
    f.server:program(id, { { body = '{"id":"' .. id .. '","state":"valid"}' } })
  end

  local function timed(fn)
    local t0 = support.now()
    local a, b = fn()
    return support.now() - t0, a, b
  end

  local function requests_for(id)
    local n = 0
    for _, e in ipairs(f.server:log()) do
      if e.uri:find(id, 1, true) then n = n + 1 end
    end
    return n
  end

  it("honours Retry-After in integer seconds", function()
    throttle("int", "1")
    local elapsed, tok = timed(function() return f.client:sync_licenses("int") end)
    assert.equal("int", tok.id)
    assert.is_true(elapsed >= 0.95, "waited only " .. elapsed)
    assert.is_true(elapsed < 3, "waited " .. elapsed)
    assert.equal(2, requests_for("int"))
  end)

  it("honours Retry-After in fractional seconds", function()
    throttle("frac", "0.6")
    local elapsed, tok = timed(function() return f.client:sync_licenses("frac") end)
    assert.equal("frac", tok.id)
    assert.is_true(elapsed >= 0.55, "waited only " .. elapsed)
    assert.is_true(elapsed < 2.5, "waited " .. elapsed)
  end)

  it("honours Retry-After as an HTTP-date", function()
    local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
    throttle("date", when)
    local elapsed, tok = timed(function() return f.client:sync_licenses("date") end)
    assert.equal("date", tok.id)
    assert.is_true(elapsed >= 0.9, "waited only " .. elapsed) -- the date has 1 s resolution
    assert.is_true(elapsed < 4, "waited " .. elapsed)
  end)

  it("never retries before a Retry-After above max_retry_delay: the 429, with err.retry_after", function()
    throttle("far", "3600")
    local c = support.client(f.server, { rate_limit = false, max_retry_delay = 0.3 })
    local elapsed, tok, err = timed(function() return c:sync_licenses("far") end)
    c:close()
    assert.is_nil(tok)
    assert.same({ 429, "TooManyRequests", 3600, 1 }, { err.status, err.code, err.retry_after, err.attempts })
    assert.is_true(elapsed < 1, "waited " .. elapsed)
    assert.equal(1, requests_for("far"))
  end)

  it("waits at least a second before the first retry without Retry-After", function()
    f.server:program("floor", { { status = 503, error = "ServiceUnavailable" }, { body = '{"id":"floor"}' } })
    local elapsed, tok = timed(function() return f.client:sync_licenses("floor") end)
    assert.equal("floor", tok.id)
    assert.is_true(elapsed >= 0.99 and elapsed < 2.5, "waited " .. elapsed)
  end)

  it("backs off exponentially with jitter when there is no Retry-After", function()
    f.server:program("b", { { status = 503, error = "ServiceUnavailable", times = 2 }, { body = '{"id":"b"}' } })
    local c = support.client(f.server, { rate_limit = false, max_retry_delay = 0.2 })
    local elapsed, tok = timed(function() return c:sync_licenses("b") end)
    c:close()
    assert.equal("b", tok.id)
    assert.equal(3, requests_for("b"))
    assert.is_true(elapsed < 1.5, "waited " .. elapsed) -- two waits, each under the 0.2 s cap
  end)

  it("retries 504 and ignores a garbage Retry-After", function()
    f.server:program("g", { { status = 504, error = "GatewayTimeout", headers = { ["Retry-After"] = "soon-ish" } },
      { body = '{"id":"g"}' } })
    local c = support.client(f.server, { rate_limit = false, max_retry_delay = 0.2 })
    local tok = assert(c:sync_licenses("g"))
    c:close()
    assert.equal("g", tok.id)
    assert.equal(2, requests_for("g"))
  end)

  it("returns the last answer's error, with attempts, once retries are spent", function()
    throttle("spent", "0", 10)
    local c = support.client(f.server, { rate_limit = false, max_retries = 2 })
    local ok, err = c:sync_licenses("spent")
    c:close()
    assert.is_nil(ok)
    assert.equal(429, err.status)
    assert.equal("TooManyRequests", err.code)
    assert.equal(3, err.attempts)
    assert.equal(3, requests_for("spent"))
  end)

  for _, status in ipairs { 400, 401, 403, 404, 409, 500, 502 } do
    it("does not retry " .. status, function()
      f.server:program("n", { { status = status, error = "Nope", headers = { ["Retry-After"] = "0" } } })
      local ok, err = f.client:sync_licenses("n")
      assert.is_nil(ok)
      assert.equal(status, err.status)
      assert.equal(1, err.attempts)
      assert.equal(1, requests_for("/n/"))
    end)
  end

  it("does not retry a timeout once the request was sent", function()
    f.server:program("slow", { { delay = 1.5, body = '{"id":"slow"}' }, { body = '{"id":"slow"}' } })
    local c = support.client(f.server, { rate_limit = false, timeout = 0.3 })
    local ok, err = c:sync_licenses("slow")
    c:close()
    assert.is_nil(ok)
    assert.equal("OPERATION_TIMEDOUT", err.code)
    assert.equal(1, err.attempts)
  end)

  it("retries in a batch too, each item on its own timer without stalling the others", function()
    -- A 504 is the gateway's, not a throttle: it holds no one else.
    local ids = { "held", "a1", "a2", "a3", "a4", "a5", "a6", "a7" }
    f.server:program("held", { { status = 504, error = "GatewayTimeout", headers = { ["Retry-After"] = "1.5" } },
      { body = '{"id":"held","state":"valid"}' } })
    for i = 2, #ids do
      f.server:program(ids[i], { { delay = 0.05, body = '{"id":"' .. ids[i] .. '"}' } })
    end
    local t0, finished = support.now(), {}
    local results = f.client:sync_many(ids, { concurrency = 2, on_result = function(r)
      finished[#finished + 1] = { id = r.id, at = support.now() - t0 }
    end })
    assert.equal(8, results.ok)
    assert.equal(2, results[1].attempts)
    assert.equal(1, results[2].attempts)
    assert.equal("held", finished[8].id) -- the throttled one ends last
    assert.is_true(finished[7].at < 1.0, "the others waited for the throttled one: " .. finished[7].at)
    assert.is_true(finished[8].at >= 1.45, "the Retry-After was not honoured: " .. finished[8].at)
  end)
end)

describe("the proactive rate limit", function()
  local server
  setup(function() server = support.start { tokens = 30 } end)
  teardown(function() server:stop() end)

  local function ids(c, n)
    local out = {}
    for i, t in ipairs(assert(c:list_tokens())) do
      if i <= n then out[i] = t.id end
    end
    return out
  end

  it("holds a configured write limit (buckets start full)", function()
    local c = support.client(server, { rate_limit = { writes = 5, requests = 1000, per = 1 } })
    local list = ids(c, 15)
    local t0 = support.now()
    local results = c:sync_many(list, { concurrency = 8 })
    local elapsed = support.now() - t0
    c:close()
    assert.equal(15, results.ok)
    -- 5 at once from the full bucket, then 5 per second: the 15th after 2 s
    assert.is_true(elapsed >= 1.8, "limit not held: " .. elapsed)
    assert.is_true(elapsed < 4, "too slow: " .. elapsed)
  end)

  it("holds a configured request limit for reads", function()
    local c = support.client(server, { rate_limit = { writes = 100, requests = 4, per = 0.5 } })
    local t0 = support.now()
    local list = ids(c, 12) -- one request
    local results = c:get_many(list, { concurrency = 8 })
    local elapsed = support.now() - t0
    c:close()
    assert.equal(12, results.ok)
    -- 13 requests: 4 at once, then 8 per second
    assert.is_true(elapsed >= 1.0, "limit not held: " .. elapsed)
  end)

  it("is off with rate_limit = false", function()
    local c = support.client(server, { rate_limit = false })
    local list = ids(c, 30)
    local t0 = support.now()
    for _ = 1, 4 do assert.equal(30, c:sync_many(list, { concurrency = 8 }).ok) end
    c:close()
    assert.is_true(support.now() - t0 < 2)
  end)

  it("rejects a malformed setting", function()
    assert.has_error(function() support.client(server, { rate_limit = { writes = 0 } }) end,
      "vpp: opts.rate_limit.writes must be a positive number")
    assert.has_error(function() support.client(server, { rate_limit = { burst = 3 } }) end,
      "vpp: unknown rate_limit key 'burst' (expected writes, requests or per)")
    assert.has_error(function() support.client(server, { rate_limit = "none" }) end,
      "vpp: opts.rate_limit must be false or a table { writes, requests, per }")
  end)
end)
