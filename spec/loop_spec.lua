-- Inside the host's event loop: the same calls under cqueues and under luv
-- (the shipped adapters), against the fake Graph with server-side latency;
-- a host timer keeps firing, calls overlap, callbacks yield, cancel and
-- deadlines end what is unfinished, a loop that raises aborts its call.
-- Bodies that run inside the host loop only record; the asserts come after
-- it returns (an error inside a luv callback ends the process).
local support = require "support"
local vpp = require "vpp"

-- list[a..b], a new list
local function slice(list, a, b)
  local out = {}
  for i = a, b do out[#out + 1] = list[i] end
  return out
end
local SECRET = "loop-spec-secret"
local TENANT, APP = "contoso.onmicrosoft.com", "33333333-4444-5555-6666-777777777777"

local hosts = {}

function hosts.cqueues()
  local cqueues = require "cqueues"
  return {
    loop = require "vpp.loop.cqueues",
    now = cqueues.monotime,
    sleep = cqueues.sleep,
    run = function(...)
      local cq = cqueues.new()
      for _, f in ipairs { ... } do cq:wrap(f) end
      assert(cq:loop())
    end,
  }
end

function hosts.luv()
  local uv = require "luv"
  return {
    loop = require "vpp.loop.luv",
    now = function() return uv.hrtime() / 1e9 end,
    sleep = function(s)
      local co = coroutine.running()
      local t = uv.new_timer()
      t:start(math.ceil(s * 1000), 0, function()
        t:close()
        assert(coroutine.resume(co))
      end)
      coroutine.yield()
    end,
    run = function(...)
      for _, f in ipairs { ... } do assert(coroutine.resume(coroutine.create(f))) end
      uv.run()
    end,
  }
end

-- A coroutine that measures how late a 10 ms timer fires until t.stop.
local function ticker(h, t)
  t.worst, t.ticks = 0, 0
  -- A full collection now, not in the middle of the measurement: after the
  -- whole suite the heap is large, and under valgrind one collection of it
  -- takes most of a second (seen once in CI: an 836 ms "late" timer).
  collectgarbage()
  return function()
    while not t.stop do
      local at = h.now()
      h.sleep(0.01)
      local late = h.now() - at - 0.01
      t.ticks = t.ticks + 1
      if late > t.worst then t.worst = late end
    end
  end
end

local function ids_of(server)
  local c = support.client(server)
  local ids = {}
  for i, t in ipairs(assert(c:list_tokens())) do ids[i] = t.id end
  c:close()
  server:log() -- emptied: the test's requests follow
  return ids
end

for _, name in ipairs { "cqueues", "luv" } do
  local ok, h = pcall(hosts[name])
  local describe_or_pending = ok and describe or function(title) pending(title .. " (" .. tostring(h) .. ")") end

  describe_or_pending("under " .. name, function()
    local fx = support.fake_graph { tokens = 64, latency = 0.05, sync_seconds = 0.4 }
    setup(fx.start)
    teardown(fx.stop)
    before_each(fx.fresh)
    after_each(fx.done)

    local function client(extra)
      return vpp.new(support.merged({ access_token = support.TOKEN, base_url = fx.server.url, loop = h.loop,
        rate_limit = false, timeout = 20 }, extra))
    end

    it("a 10 ms host timer is never 50 ms late during a slow token fetch, a 64-sync batch and a wait_for_sync", function()
      local ids = ids_of(fx.server)
      assert.equal(64, #ids)
      fx.server:app { tenant = TENANT, client_id = APP, client_secret = SECRET }
      fx.server:program("@token", { { pass = true, delay = 1 } })
      local c = vpp.new { tenant_id = TENANT, client_id = APP, client_secret = SECRET, authority = fx.server.url,
        base_url = fx.server.url, loop = h.loop, rate_limit = false }
      local t, out = {}, {}
      h.run(ticker(h, t), function()
        local t0 = h.now()
        out.first = { c:get_token(ids[1]) }
        out.fetch_seconds = h.now() - t0
        out.batch = c:sync_many(ids, { concurrency = 8 })
        out.waited = c:wait_for_sync({ ids[1], ids[2], ids[3] }, { interval = 0.1 })
        t.stop = true
      end)
      c:close()
      assert.equal(ids[1], out.first[1] and out.first[1].id, tostring(out.first[2]))
      assert.is_true(out.fetch_seconds >= 1, "the token endpoint was not slow: " .. out.fetch_seconds)
      assert.equal(64, out.batch.ok, tostring(out.batch[1].err))
      assert.equal(3, out.waited.ok)
      assert.equal("completed", out.waited[1].token.lastSyncStatus)
      assert.is_true(t.ticks > 50 / support.SLOWDOWN, "the timer hardly ran: " .. t.ticks)
      assert.is_true(t.worst < 0.05 * support.SLOWDOWN, ("the host timer was %.0f ms late"):format(t.worst * 1000))
    end)

    it("hands loop(op) a pollable: a descriptor, \"r\", and the seconds to its next timer", function()
      local ids = ids_of(fx.server)
      fx.server:program(ids[1], { { status = 429, error = "TooManyRequests", headers = { ["Retry-After"] = "1" } } })
      local seen, out = {}, {}
      local c = client { loop = function(op)
        seen[#seen + 1] = { fd = op:pollfd(), events = op:events(), timeout = op:timeout() }
        return h.loop(op)
      end }
      h.run(function() out.token = c:get_token(ids[1]) end)
      c:close()
      assert.equal(ids[1], out.token and out.token.id)
      local fd, waited = seen[1].fd, false
      for _, o in ipairs(seen) do
        assert.equal(math.type and "integer" or "number", math.type and math.type(o.fd) or type(o.fd))
        assert.equal(fd, o.fd) -- one descriptor for the client
        assert.equal("r", o.events)
        assert.is_true(o.timeout == nil or o.timeout >= 0)
        if o.timeout and o.timeout > 0.5 and o.timeout <= 1.01 then waited = true end
      end
      assert.is_true(waited, "no op:timeout() announced the 1 s Retry-After")
    end)

    it("two coroutines' calls overlap on one client; the short one finishes first", function()
      local ids = ids_of(fx.server)
      local c = client()
      local out = {}
      h.run(function()
        out.batch = c:sync_many(slice(ids, 1, 50), { concurrency = 4 })
        out.batch_at = h.now()
      end, function()
        h.sleep(0.1)
        out.get = c:get_token(ids[60])
        out.get_at = h.now()
      end)
      c:close()
      assert.equal(50, out.batch.ok)
      assert.equal(ids[60], out.get and out.get.id)
      assert.is_true(out.get_at < out.batch_at, "the get waited for the batch")
      local log, get, first, last = fx.server:log(), nil, nil, nil
      for i, e in ipairs(log) do
        if e.method == "GET" then get = i
        elseif e.method == "POST" then first, last = first or i, i end
      end
      assert.is_true(get > first and get < last, ("not interleaved: get %d, posts %d-%d"):format(get, first, last))
    end)

    it("runs on_result, on_request and access_token functions that yield to the loop", function()
      local ids = ids_of(fx.server)
      local fetches, seen, traced, out = 0, 0, 0, {}
      local c = client { access_token = function()
        fetches = fetches + 1
        h.sleep(0.05) -- a vault over the host's own async client
        return "vault-token", os.time() + 3600
      end, on_request = function()
        h.sleep(0.001) -- a log shipped over the host's own client
        traced = traced + 1
      end }
      h.run(function()
        out.batch = c:sync_many(slice(ids, 1, 10), { on_result = function()
          h.sleep(0.001)
          seen = seen + 1
        end })
      end)
      c:close()
      assert.equal(10, out.batch.ok, tostring(out.batch[1].err))
      assert.equal(10, seen)
      assert.equal(10, traced)
      assert.equal(1, fetches)
      assert.equal("Bearer vault-token", fx.server:log()[1].authorization)
    end)

    it("client:cancel() from a timer ends every call in flight; the client stays usable", function()
      local ids = ids_of(fx.server)
      fx.server:program(ids[40], { { pass = true, delay = 5 } })
      local c = client()
      local out = {}
      h.run(function()
        out.batch = c:sync_many(slice(ids, 1, 30), { concurrency = 2, on_result = function()
          out.done = (out.done or 0) + 1
        end })
      end, function()
        out.single = { c:get_token(ids[40]) }
      end, function()
        repeat h.sleep(0.01) until (out.done or 0) >= 2 -- a timer, once the batch is under way
        out.cancelled_at = h.now()
        c:cancel()
      end)
      h.run(function() out.after = c:get_token(ids[1]) end)
      local after = out.after
      c:close()
      local cancelled = 0
      for _, r in ipairs(out.batch) do
        if r.err then
          assert.equal("cancelled", r.err.kind)
          assert.equal("cancelled", r.err.code)
          cancelled = cancelled + 1
        else
          assert.equal(r.id, r.token.id)
        end
      end
      assert.is_true(out.batch.ok >= 2 and cancelled >= 2, out.batch.ok .. " ok, " .. cancelled .. " cancelled")
      assert.equal(30, out.batch.ok + out.batch.failed)
      assert.is_nil(out.single[1])
      assert.equal("cancelled", out.single[2].kind)
      assert.equal(ids[1], after and after.id)
    end)

    it("ends what is unfinished at each deadline with kind timeout, code deadline", function()
      local ids = ids_of(fx.server)
      for i = 1, 3 do fx.server:program(ids[i], { { pass = true, delay = 3 } }) end
      fx.server:program("@list", { { pass = true, delay = 3, times = 2 } })
      local c = client()
      local out = {}
      h.run(function()
        local t0 = h.now()
        out.list = { c:list_tokens { deadline = 0.3 } }
        out.many = c:sync_many({ ids[1], ids[10] }, { deadline = 0.5 })
        out.get = c:get_many({ ids[2], ids[11] }, { deadline = 0.5 })
        out.all = { c:sync_all { deadline = 0.3 } }
        out.wait = c:wait_for_sync({ ids[12] }, { deadline = 0.3, interval = 5 })
        out.seconds = h.now() - t0
      end)
      c:close()
      assert.is_nil(out.list[1])
      assert.same({ "timeout", "deadline" }, { out.list[2].kind, out.list[2].code })
      assert.equal("deadline", out.many[1].err.code)
      assert.equal(ids[10], out.many[2].token.id)
      assert.equal("deadline", out.get[1].err.code)
      assert.equal(ids[11], out.get[2].token.id)
      assert.is_nil(out.all[1])
      assert.equal("deadline", out.all[2].code)
      assert.equal("deadline", out.wait[1].err.code)
      assert.is_true(out.seconds < 3 * support.SLOWDOWN, "a deadline was not kept: " .. out.seconds .. " s")
    end)

    it("a loop that raises aborts its call, which sends nothing more; the client goes on", function()
      local ids = ids_of(fx.server)
      local loops, raise = 0, true
      local c = client { loop = function(op)
        loops = loops + 1
        if raise and loops == 1 then error("host loop gone", 0) end
        return h.loop(op)
      end }
      local out = {}
      h.run(function()
        out.raised = { pcall(c.sync_many, c, slice(ids, 1, 10), { concurrency = 2 }) }
        raise = false
        out.after = c:get_token(ids[20])
      end)
      c:close()
      assert.is_false(out.raised[1])
      assert.equal("host loop gone", out.raised[2])
      assert.equal(ids[20], out.after and out.after.id)
      local posts = 0
      for _, e in ipairs(fx.server:log()) do
        if e.method == "POST" then posts = posts + 1 end
      end
      assert.is_true(posts <= 2, posts .. " syncs of the aborted batch were sent")
    end)
  end)
end

describe("blocking mode", function()
  local f = support.fake_graph()
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  it("gives a hook raising inside a 10 s request its chance within 2 s; it propagates", function()
    f.server:program("slow", { { pass = true, delay = 10 } })
    local c, armed_at = f.client, nil
    local co = coroutine.create(function()
      armed_at = support.now()
      debug.sethook(function()
        if armed_at and support.now() - armed_at > 0.5 and coroutine.running() then
          armed_at = nil
          error("interrupted!", 0)
        end
      end, "c")
      return c:sync_licenses("slow")
    end)
    local t0 = support.now()
    local r = { coroutine.resume(co) }
    debug.sethook()
    local seconds = support.now() - t0
    assert.same({ false, "interrupted!" }, { r[1], r[2] })
    assert.is_true(seconds < 2 * support.SLOWDOWN, "the hook waited " .. seconds .. " s")
    local id = assert(c:list_tokens())[1].id
    assert.equal(id, assert(c:sync_licenses(id)).id)
  end)

  it("module-level calls refuse a loop", function()
    assert.has_error(function()
      vpp.sync_licenses("x", { access_token = support.TOKEN, base_url = f.server.url, loop = function() end })
    end, "vpp: opts.loop: the module-level calls block; make a client with vpp.new for a loop")
  end)

  it("keeps each deadline too", function()
    local id = assert(f.client:list_tokens())[1].id
    f.server:program("slow", { { pass = true, delay = 3 } })
    local t0 = support.now()
    local r = f.client:sync_many({ "slow", id }, { deadline = 0.3 })
    assert.equal("deadline", r[1].err.code)
    assert.equal(id, r[2].token.id)
    assert.is_true(support.now() - t0 < 2)
  end)
end)
