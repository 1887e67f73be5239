-- Sync every valid VPP token of the tenant, then wait for Apple to finish.
-- Credentials come from the environment (GRAPH_ACCESS_TOKEN, or AZURE_*);
-- GRAPH_URL points it elsewhere than graph.microsoft.com (a gateway, or the
-- fake Graph of this repository).
--   lua5.4 examples/sync_and_wait.lua
local vpp = require "vpp"

local client = vpp.new_from_env { base_url = os.getenv("GRAPH_URL") }

local report, err = client:sync_all { wait = true, wait_interval = 2, concurrency = 16 }
client:close() -- (on Lua 5.4, `local client <close>` also works)
if not report then
  io.stderr:write("cannot list the tokens: ", tostring(err), "\n")
  os.exit(1)
end

local failed = 0
for _, r in ipairs(report.waited) do
  local status = r.token and r.token.lastSyncStatus or tostring(r.err)
  if r.err or status == "failed" then failed = failed + 1 end
  print(("%-36s  %s"):format(r.id, status))
end
for _, r in ipairs(report.results) do
  if r.err then
    failed = failed + 1
    print(("%-36s  not started: %s"):format(r.id, tostring(r.err)))
  end
end
print(("%d listed, %d synced, %d skipped (already syncing), %d failed"):format(
  report.listed, report.selected, #report.skipped, failed))
os.exit(failed == 0 and 0 or 1)
