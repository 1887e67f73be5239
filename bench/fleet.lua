-- `make bench`, the fleet row: an MSP's 500 tenants × 4 tokens, each tenant
-- with its own token endpoint, 100 ms on every Graph and token request;
-- `vpp --tenants FILE sync --all --wait` and `vpp --tenants FILE check`
-- against the ideal (each tenant's sequential round trips × the latency,
-- for concurrency tenants at once), with the command's peak RSS and most
-- open descriptors (sampled from /proc every 20 ms).
local launcher = require "launcher"

local TENANTS = tonumber(os.getenv("BENCH_FLEET_TENANTS") or "") or 500
local LATENCY = 0.1
local CONCURRENCY = 16 -- fleet:run's default: tenants at once

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

return function(interpreter)
  local server = launcher.start { tokens = 4, log = false, latency = LATENCY, sync_seconds = 0 }
  local ok, result = pcall(function()
    local ids = {}
    for i = 1, TENANTS do ids[i] = ("%08x-0000-4000-8000-000000000000"):format(0x30000000 + i) end
    server:app { tenants = ids, client_id = "bench-app", client_secret = "bench-secret" }
    server:config { token_latency = LATENCY, log = false }
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(("defaults:\n  client_id: bench-app\n  client_secret_env: BENCH_SECRET\n  authority: %s\n"
      .. "  base_url: %s\n  rate_limit: false\ntenants:\n"):format(server.url, server.url))
    for i, id in ipairs(ids) do f:write(("  - name: tenant-%03d\n    tenant_id: %s\n"):format(i, id)) end
    f:close()
    local function measure(args)
      local out = os.tmpname()
      -- The command in the background; its descriptors counted while it runs.
      local script = ([[
BENCH_SECRET=bench-secret /usr/bin/time -f '%%e %%M' -o %s %s bin/vpp -q --tenants %s %s >/dev/null 2>&1 &
t=$!; most=0
while kill -0 $t 2>/dev/null; do
  for c in $(pgrep -P $t); do n=$(ls /proc/$c/fd 2>/dev/null | wc -l); [ "$n" -gt "$most" ] && most=$n; done
  sleep 0.02
done
wait $t; echo "exit $? fds $most"]]):format(out, interpreter, file, args)
      local tail = sh(script)
      local timing = assert(io.open(out)):read("*a")
      os.remove(out)
      local seconds, rss = timing:match("([%d.]+) (%d+)")
      return { seconds = tonumber(seconds), rss_mib = tonumber(rss) / 1024, fds = tonumber(tail:match("fds (%d+)")),
        exit = tonumber(tail:match("exit (%d+)")) }
    end
    local rounds = { sync = 4, check = 3 } -- sync: token, list, the syncs, one poll; check: token, list, apps
    local waves = math.ceil(TENANTS / CONCURRENCY)
    local sync = measure("sync --all --wait")
    local requests = server:stats()
    local check = measure("check")
    os.remove(file)
    sync.ideal, check.ideal = waves * rounds.sync * LATENCY, waves * rounds.check * LATENCY
    sync.requests = requests.requests + requests.token_requests
    -- What the concurrency needs: a connection per request in flight (a
    -- tenant's 4 syncs at once, its token request) for 16 tenants.
    local needed = CONCURRENCY * 5
    return { tenants = TENANTS, latency = LATENCY, concurrency = CONCURRENCY, sync = sync, check = check,
      needed = needed }
  end)
  server:stop()
  if not ok then error(result, 0) end
  return result
end
