-- lua-vpp's side of `make bench`, run in its own process so that its CPU
-- time and memory are its own.
-- Usage: lua5.4 bench/workload.lua MODE BASE_URL [CA_FILE] ARGS...
--   seq   BASE_URL CA ID N          N syncLicenses calls, one after another
--   batch BASE_URL CA IDS_FILE C    sync_many over the ids, C at once
--   tenant BASE_URL CA C            list every token, keep the valid ones, sync them
-- Prints {"elapsed":s,"cpu":s,"ok":n,"failed":n,"rss_kib":n} as JSON.
local vpp = require "vpp"
local core = require "vpp.core"

local mode, base, ca = arg[1], arg[2], arg[3]
local client = vpp.new {
  access_token = "bench-token", base_url = base, rate_limit = false,
  ca_file = ca ~= "-" and ca or nil,
}

local function peak_rss_kib()
  local f = io.open("/proc/self/status")
  local kib = f and tonumber(f:read("*a"):match("VmHWM:%s*(%d+)"))
  if f then f:close() end
  return kib or 0
end

local ok, failed = 0, 0
local t0, c0 = core._clock(), os.clock()
if mode == "seq" then
  local id, n = arg[4], tonumber(arg[5])
  for _ = 1, n do
    if client:sync_licenses(id) then ok = ok + 1 else failed = failed + 1 end
  end
elseif mode == "batch" then
  local ids = {}
  for line in io.lines(arg[4]) do ids[#ids + 1] = line end
  local results = client:sync_many(ids, { concurrency = tonumber(arg[5]) })
  ok, failed = results.ok, results.failed
elseif mode == "tenant" then
  local tokens = assert(client:list_tokens())
  local valid = vpp.filter(tokens, { state = "valid" })
  local ids = {}
  for i, t in ipairs(valid) do ids[i] = t.id end
  local results = client:sync_many(ids, { concurrency = tonumber(arg[4]) })
  ok, failed = results.ok + 0, results.failed
  io.stderr:write(("listed %d, synced %d valid\n"):format(#tokens, #ids))
else
  error("unknown mode " .. tostring(mode))
end
local elapsed, cpu = core._clock() - t0, os.clock() - c0
client:close()
print(('{"elapsed":%.6f,"cpu":%.6f,"ok":%d,"failed":%d,"rss_kib":%d}'):format(elapsed, cpu, ok, failed, peak_rss_kib()))
