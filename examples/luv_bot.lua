-- lua-vpp inside a luv (libuv) host, as a chat-ops bot or an agent runs it:
-- the host's heartbeat keeps ticking while every valid token is synced and
-- waited for, and a status query runs beside the batch on the same client.
--   lua5.4 examples/luv_bot.lua     (GRAPH_ACCESS_TOKEN or AZURE_* set)
local uv = require "luv"
local vpp = require "vpp"

local client = vpp.new_from_env { base_url = os.getenv("GRAPH_URL"), loop = require "vpp.loop.luv" }
local beats, busy = 0, 2

local heartbeat = uv.new_timer()
heartbeat:start(100, 100, function() beats = beats + 1 end)

local function done()
  busy = busy - 1
  if busy == 0 then
    heartbeat:stop()
    heartbeat:close()
    client:close()
  end
end

-- The host's coroutines: each call waits in the loop, not in C.
coroutine.wrap(function()
  local report, err = client:sync_all { wait = true, wait_interval = 0.5, deadline = 120 }
  if report then
    print(("synced %d of %d listed; %d done waiting"):format(report.results.ok, report.listed,
      report.waited and report.waited.ok or 0))
  else
    print("sync_all failed: " .. tostring(err))
  end
  done()
end)()

coroutine.wrap(function()
  local tokens, err = client:list_tokens { select = { "id", "state" } }
  print(tokens and ("status: %d tokens"):format(#tokens) or ("status failed: " .. tostring(err)))
  done()
end)()

uv.run()
print(("heartbeats while working: %d"):format(beats))
