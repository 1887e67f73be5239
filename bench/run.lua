-- `make bench`: lua-vpp against wrk (the ceiling), curl --parallel and
-- Microsoft's Graph JavaScript client, on the same fake Graph in one run.
-- Prints one table; every row is measured now, none is remembered.
local launcher = require "launcher"
local cjson = require "cjson"
local vpp = require "vpp"

local SEQ_N = tonumber(os.getenv("BENCH_SEQ_N") or "") or 5000
local PEER_SEQ_N = tonumber(os.getenv("BENCH_PEER_SEQ_N") or "") or 2000
local BATCH_N = 1000
local CONCURRENCY = 16
local LATENCY = 0.020
local TENANT_N = tonumber(os.getenv("BENCH_TENANT") or "") or 10000
local WRK_SECONDS = os.getenv("BENCH_WRK_SECONDS") or "3"
local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 3 -- each row is the median run
-- Instructions per call: the difference between two run lengths, so that
-- start-up (loading Lua, libcurl, OpenSSL) cancels out.
local IR_SHORT = tonumber(os.getenv("BENCH_IR_SHORT") or "") or 500
local IR_LONG = tonumber(os.getenv("BENCH_IR_LONG") or "") or 2500
local EASY_LOOP = os.getenv("BENCH_EASY_LOOP") or "build/bench/easy_loop"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

local function tmpfile(lines)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  return name
end

local server = launcher.start { tls = true, tokens = BATCH_N, log = false, page_size = 100 }
local ok_run, failure = pcall(function()
  local setup_client = vpp.new { access_token = "bench-token", base_url = server.url, rate_limit = false }
  local ids = {}
  for i, t in ipairs(assert(setup_client:list_tokens())) do ids[i] = t.id end
  setup_client:close()
  local ids_file = tmpfile(ids)
  local seq_file = tmpfile((function()
    local t = {}
    for i = 1, PEER_SEQ_N do t[i] = ids[(i - 1) % #ids + 1] end
    return t
  end)())
  local sync_path = "/v1.0/deviceAppManagement/vppTokens/" .. ids[1] .. "/syncLicenses"

  local function fresh(latency)
    server:reset()
    server:config { latency = latency, log = false }
  end

  local rows = {}
  local function row(r)
    rows[#rows + 1] = r
    io.stderr:write(("  %-50s %8.0f req/s\n"):format(r.workload .. " / " .. r.tool, r.rps))
  end

  local function lua_vpp(args, base, ca)
    local out = sh(("lua5.4 %s/workload.lua %s %s %s %s"):format(here, args[1], base, ca or "-",
      table.concat(args, " ", 2)))
    local r = cjson.decode(out)
    r.requests = r.ok + r.failed
    return r
  end

  local function wrk(conns)
    local out = sh(("wrk -t1 -c%d -d%ss -s %s/peers/wrk-post.lua %s%s"):format(conns, WRK_SECONDS, here,
      server.url, sync_path))
    local requests = tonumber(out:match("(%d+) requests in"))
    local rps = tonumber(out:match("Requests/sec:%s*([%d.]+)"))
    local non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)") or "0")
    return { rps = rps, requests = requests, failed = non2xx }
  end

  local function curl_parallel(file, conc, tls)
    local base = tls and server.tls_url or server.url
    local cfg = {}
    for line in io.lines(file) do
      cfg[#cfg + 1] = ('url = "%s/v1.0/deviceAppManagement/vppTokens/%s/syncLicenses"\noutput = "/dev/null"')
        :format(base, line)
    end
    local cfg_file = tmpfile(cfg)
    local timing, codes = os.tmpname(), os.tmpname()
    sh(("/usr/bin/time -o %s -f '%%e %%U %%S' curl -s --parallel --parallel-max %d -d '' %s "
      .. "-H 'Authorization: Bearer bench-token' -H 'Accept: application/json' -w '%%{http_code}\\n' -K %s > %s")
      :format(timing, conc, tls and ("--cacert " .. server.ca_file) or "", cfg_file, codes))
    local e, u, s = io.open(timing):read("*a"):match("([%d.]+) ([%d.]+) ([%d.]+)")
    local failed = 0
    for code in io.lines(codes) do
      if code ~= "200" then failed = failed + 1 end
    end
    os.remove(cfg_file)
    os.remove(timing)
    os.remove(codes)
    return { elapsed = tonumber(e), cpu = tonumber(u) + tonumber(s), requests = #cfg, failed = failed, cpu_note = "*" }
  end

  -- The Graph JS client sends the token to https:// hosts only.
  local function graph_client(file, conc)
    local out = sh(("NODE_EXTRA_CA_CERTS=%s node %s/peers/graph-client.mjs %s %s %d")
      :format(server.ca_file, here, server.tls_url, file, conc))
    local r = cjson.decode(out)
    r.requests = r.ok + r.failed
    return r
  end

  -- Runs a row RUNS times, each on a freshly reset server, and keeps the
  -- median run: one short run on a shared machine says little.
  local function measured(workload, tool, latency, fn)
    local runs = {}
    for i = 1, RUNS do
      fresh(latency)
      local r = fn()
      r.rps = r.rps or r.requests / r.elapsed
      r.connections = server:stats().connections
      runs[i] = r
    end
    table.sort(runs, function(a, b) return a.rps < b.rps end)
    local r = runs[math.floor((RUNS + 1) / 2)]
    r.workload, r.tool = workload, tool
    row(r)
    return r
  end

  io.stderr:write(("measuring, each row %d times (a minute or two)...\n"):format(RUNS))
  -- 1. Sequential: one request at a time, no added latency.
  local wrk1 = measured("sequential", "wrk -t1 -c1 (ceiling)", 0, function() return wrk(1) end)
  measured("sequential", "lua-vpp", 0, function() return lua_vpp({ "seq", ids[1], SEQ_N }, server.url) end)
  measured("sequential", "curl --parallel-max 1", 0, function() return curl_parallel(seq_file, 1) end)
  measured("sequential", "lua-vpp (HTTPS)", 0, function()
    return lua_vpp({ "seq", ids[1], SEQ_N }, server.tls_url, server.ca_file)
  end)
  measured("sequential", "Graph JS client (Node, HTTPS)", 0, function() return graph_client(seq_file, 1) end)

  -- 2. Batch: 1000 syncs, 16 at a time, 20 ms of server latency each.
  local wrk16 = measured("batch", "wrk -t1 -c16 (ceiling)", LATENCY, function() return wrk(CONCURRENCY) end)
  measured("batch", "lua-vpp HTTP/1.1", LATENCY, function()
    return lua_vpp({ "batch", ids_file, CONCURRENCY }, server.url)
  end)
  measured("batch", "curl --parallel-max 16", LATENCY, function() return curl_parallel(ids_file, CONCURRENCY) end)
  measured("batch", "lua-vpp (HTTPS, HTTP/2)", LATENCY, function()
    return lua_vpp({ "batch", ids_file, CONCURRENCY }, server.tls_url, server.ca_file)
  end)
  measured("batch", "curl --parallel-max 16 (HTTPS, HTTP/2)", LATENCY, function()
    return curl_parallel(ids_file, CONCURRENCY, true)
  end)
  measured("batch", "Graph JS client (Node, HTTPS)", LATENCY, function() return graph_client(ids_file, CONCURRENCY) end)

  -- 3. Instructions per sequential syncLicenses, under callgrind: lua-vpp,
  -- a bare libcurl easy loop with the same request (URL, method, header
  -- lines), and the curl command.  Deterministic where req/s is not.
  local function instructions(cmd)
    local out = sh(("valgrind --tool=callgrind --callgrind-out-file=/dev/null %s 2>&1 >/dev/null"):format(cmd))
    return tonumber(out:match("Collected : (%d+)")) or error("callgrind: " .. out)
  end
  local function per_call(command_for)
    fresh(0)
    local short = instructions(command_for(IR_SHORT))
    fresh(0)
    local long = instructions(command_for(IR_LONG))
    return (long - short) / (IR_LONG - IR_SHORT)
  end
  local scratch = {}
  local user_agent = ("lua-vpp/%s %s"):format(vpp._VERSION, require("vpp.core")._curl_version)
  local sync_url = server.url .. sync_path
  io.stderr:write("counting instructions under callgrind (a minute or two)...\n")
  local ir = {
    { "lua-vpp", per_call(function(n) return ("lua5.4 %s/workload.lua seq %s - %s %d"):format(here, server.url, ids[1], n) end) },
    { "bare libcurl easy loop (C)", per_call(function(n)
      return ("%s %s %d '%s'"):format(EASY_LOOP, sync_url, n, user_agent)
    end) },
    { "curl command", per_call(function(n)
      local cfg = {}
      for i = 1, n do cfg[i] = ('url = "%s"\noutput = "/dev/null"'):format(sync_url) end
      local file = tmpfile(cfg)
      scratch[#scratch + 1] = file
      return ("curl -s -d '' -H 'Authorization: Bearer bench-token' -H 'Accept: application/json'"
        .. " -H 'client-request-id: 00000000-0000-4000-8000-000000000000' -H 'Accept-Encoding: gzip'"
        .. " -H 'Content-Type:' -A '%s' -K %s"):format(user_agent, file)
    end) },
  }
  for _, file in ipairs(scratch) do os.remove(file) end
  for _, r in ipairs(ir) do io.stderr:write(("  %-50s %8.0f instructions/call\n"):format(r[1], r[2])) end

  -- 4. Host loop lag (luv), and the batch rate under the loop.
  local lag = dofile(here .. "/loop_lag.lua")(server, ids, CONCURRENCY)

  -- 5. Memory: a large tenant listed, filtered and synced.
  server:config { tokens = TENANT_N, latency = 0, log = false }
  local tenant = lua_vpp({ "tenant", CONCURRENCY }, server.url)

  -- 6. A fleet: 500 tenants × 4 tokens, 100 ms per request.
  io.stderr:write("a fleet of tenants (sync --all --wait, check)...\n")
  local fleet = dofile(here .. "/fleet.lua")(arg[-1] or "lua5.4")

  os.remove(ids_file)
  os.remove(seq_file)

  local curl_version = require("vpp.core")._curl_version or sh("curl --version | head -1"):gsub("\n", "")
  print()
  print(("lua-vpp %s, %s, %s, Lua 5.4; %s"):format(vpp._VERSION, curl_version,
    sh("node --version"):gsub("\n", "") .. " for the Graph JS client", os.date("!%Y-%m-%d")))
  print(("fake Graph: nginx + Lua on 127.0.0.1, one worker; batch = %d syncLicenses, %d at once, %d ms each;"
    .. " each row the median of %d runs"):format(BATCH_N, CONCURRENCY, LATENCY * 1000, RUNS))
  print()
  print("| workload | client | requests | failed | seconds | req/s | vs wrk | connections | CPU s / 1000 req |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for _, r in ipairs(rows) do
    local ceiling = r.workload == "sequential" and wrk1.rps or wrk16.rps
    print(("| %s | %s | %d | %d | %s | %.0f | %s | %d | %s |"):format(r.workload, r.tool, r.requests, r.failed or 0,
      r.elapsed and ("%.2f"):format(r.elapsed) or "-", r.rps,
      r.tool:find("^wrk") and "-" or ("%.0f%%"):format(100 * r.rps / ceiling), r.connections,
      r.cpu and ("%.3f%s"):format(1000 * r.cpu / r.requests, r.cpu_note or "") or "-"))
  end
  print()
  print(("Instructions per sequential syncLicenses (callgrind, the difference between %d and %d calls):")
    :format(IR_SHORT, IR_LONG))
  print()
  print("| client | instructions per call | vs the bare libcurl loop |")
  print("|---|---:|---:|")
  for _, r in ipairs(ir) do
    print(("| %s | %.0f | %.2f× |"):format(r[1], r[2], r[2] / ir[2][2]))
  end
  print()
  print(("Memory: listing %d tokens (%d pages), filtering the valid ones and syncing %d of them: peak RSS %.1f MiB (%.2f s)")
    :format(TENANT_N, math.ceil(TENANT_N / 100), tenant.ok, tenant.rss_kib / 1024, tenant.elapsed))
  print()
  print(("Host loop lag (luv): a 10 ms timer while a 200-sync batch (50 ms each, %d at once), a wait_for_sync of"
    .. " 20 tokens and a token fetch from a 1 s-slow token endpoint share the loop: late by %.1f ms at p99,"
    .. " %.1f ms at worst (%d ticks); the batch ran at %.0f req/s, %.0f%% of blocking mode's %.0f req/s.")
    :format(CONCURRENCY, lag.p99, lag.worst, lag.ticks, lag.rate, 100 * lag.rate / lag.blocking_rate, lag.blocking_rate))
  print("* curl's CPU includes its process start-up; lua-vpp's and Node's count the workload only.")
  print()
  print(("Fleet: %d tenants × 4 tokens, each tenant its own token endpoint, %d ms on every Graph and token request,"
    .. " %d tenants at once:"):format(fleet.tenants, fleet.latency * 1000, fleet.concurrency))
  print()
  print("| command | seconds | ideal | vs ideal | peak RSS | most descriptors |")
  print("|---|---:|---:|---:|---:|---:|")
  for _, k in ipairs { "sync", "check" } do
    local x = fleet[k]
    print(("| `vpp --tenants F %s` | %.2f | %.1f | %.2f× | %.1f MiB | %d (target ≤ %d) |"):format(
      k == "sync" and "sync --all --wait" or "check", x.seconds, x.ideal, x.seconds / x.ideal, x.rss_mib, x.fds,
      fleet.needed + 16))
  end
end)
server:stop()
if not ok_run then
  io.stderr:write("bench failed: ", tostring(failure), "\n")
  os.exit(1)
end
