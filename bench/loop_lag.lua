-- `make bench`, host loop lag: a 10 ms luv timer while a 200-sync batch at
-- 50 ms latency, a wait_for_sync of 20 tokens and a token fetch from a 1 s
-- slow token endpoint share the loop; and the batch's rate there against
-- the same batch in blocking mode.  Returns the figures.
local vpp = require "vpp"
local core = require "vpp.core"
local cjson = require "cjson"

local TENANT, APP, SECRET = "bench.onmicrosoft.com", "44444444-5555-6666-7777-888888888888", "bench-secret"
-- list[a..b], a new list
local function slice(list, a, b)
  local out = {}
  for i = a, b do out[#out + 1] = list[i] end
  return out
end

-- A token from the token endpoint, fetched as a vault would hand it over.
local function issued_token(server)
  local http, ltn12 = require "socket.http", require "ltn12"
  local form = ("grant_type=client_credentials&client_id=%s&client_secret=%s&scope=%s"):format(APP, SECRET,
    "https%3A%2F%2Fgraph.microsoft.com%2F.default")
  local out = {}
  local _, code = http.request { url = server.url .. "/" .. TENANT .. "/oauth2/v2.0/token", method = "POST",
    source = ltn12.source.string(form), sink = ltn12.sink.table(out),
    headers = { ["content-type"] = "application/x-www-form-urlencoded", ["content-length"] = #form } }
  assert(code == 200, "token endpoint: " .. tostring(code))
  return cjson.decode(table.concat(out)).access_token
end

return function(server, ids, concurrency)
  local uv = require "luv"
  local batch, waited = slice(ids, 1, 200), slice(ids, 201, 220)
  server:reset()
  server:config { latency = 0.05, log = false, sync_seconds = 1 }
  local blocking = vpp.new { access_token = "bench-token", base_url = server.url, rate_limit = false }
  local t0 = core._clock()
  local r = blocking:sync_many(batch, { concurrency = concurrency })
  local blocking_rate = r.ok / (core._clock() - t0)
  assert(blocking:sync_many(waited, { concurrency = concurrency }).ok == #waited) -- syncing for 1 s now
  blocking:close()

  server:app { tenant = TENANT, client_id = APP, client_secret = SECRET }
  local token = issued_token(server)
  server:program("@token", { { pass = true, delay = 1 } })
  local loop = require "vpp.loop.luv"
  local c = vpp.new { access_token = token, base_url = server.url, rate_limit = false, loop = loop }
  local fetcher = vpp.new { tenant_id = TENANT, client_id = APP, client_secret = SECRET, authority = server.url,
    base_url = server.url, rate_limit = false, loop = loop }

  local late, left, out = {}, 3, {}
  local timer, last = uv.new_timer(), uv.hrtime()
  timer:start(10, 10, function()
    local now = uv.hrtime()
    late[#late + 1] = math.max((now - last) / 1e6 - 10, 0)
    last = now
    if left == 0 then
      timer:stop()
      timer:close()
    end
  end)
  local function run(f) coroutine.wrap(function() f() left = left - 1 end)() end
  run(function()
    local t = core._clock()
    out.batch = c:sync_many(batch, { concurrency = concurrency })
    out.rate = out.batch.ok / (core._clock() - t)
  end)
  run(function() out.waited = c:wait_for_sync(waited, { interval = 0.2, concurrency = concurrency }) end)
  run(function()
    local t = core._clock()
    out.fetched = fetcher:get_token(ids[1])
    out.fetch_seconds = core._clock() - t
  end)
  uv.run()
  c:close()
  fetcher:close()
  server:reset()
  assert(out.batch.ok == #batch and out.waited.ok == #waited and out.fetched and out.fetch_seconds >= 1,
    "loop lag: a call failed")
  table.sort(late)
  return { p99 = late[math.ceil(#late * 0.99)], worst = late[#late], ticks = #late, rate = out.rate,
    blocking_rate = blocking_rate }
end
