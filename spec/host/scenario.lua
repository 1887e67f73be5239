-- What spec/host/embed_host drives through lua-vpp, again and again: a
-- list that takes three pages, a sync, a batch with a failure in it, a get
-- that fails, and a server that is not there.  GRAPH_URL is a fake Graph of
-- 5 tokens, 2 per page (spec/host/run.lua starts it).  The chunk returns
-- the function the host runs; it returns a summary, and anything unexpected
-- raises (with allocations failing, only a memory error may).
local vpp = require "vpp" -- loaded before allocations start failing: a Lua
-- module that cannot be compiled is require's error, not lua-vpp's

return function()
  -- luaopen_vpp_core once more, with allocations failing
  package.loaded["vpp.core"] = nil
  require "vpp.core"

  local url = assert(os.getenv("GRAPH_URL"), "GRAPH_URL is not set")
  local c = vpp.new { access_token = "embed-host-token", base_url = url, timeout = 20, max_retries = 0 }

  local list = assert(c:list_tokens())
  assert(#list == 5, "listed " .. #list .. " tokens")

  local tok = assert(c:sync_licenses(list[1].id))
  assert(tok.id == list[1].id, "synced another token")

  local results = assert(c:sync_many({ list[2].id, "no-such-token", list[3].id }, { concurrency = 2 }))
  assert(results.ok == 2 and results.failed == 1, "batch: " .. results.ok .. " ok, " .. results.failed .. " failed")
  assert(results[2].err.status == 404, "batch: " .. tostring(results[2].err))

  local none, err = c:get_token("no-such-token")
  assert(none == nil and vpp.is_error(err) and err.status == 404, "get: " .. tostring(err))
  c:close()

  -- The engine under a loop (threads only: a memory error that crosses the
  -- Lua driver's pcall comes out as a plain error): two coroutines' calls
  -- on one client, with a loop that hands control back round-robin.
  if os.getenv("VPP_SCENARIO_LOOP") then
    local lc = vpp.new { access_token = "embed-host-token", base_url = url, timeout = 20, max_retries = 0,
      loop = function() coroutine.yield() end }
    local calls = {
      coroutine.create(function() return lc:sync_many({ list[4].id, list[5].id }, { concurrency = 2 }) end),
      coroutine.create(function() return lc:get_token(list[1].id) end),
    }
    local out, left = {}, #calls
    while left > 0 do
      for i, co in ipairs(calls) do
        if coroutine.status(co) == "suspended" then
          local ok, r = coroutine.resume(co)
          if not ok then error(r, 0) end
          if coroutine.status(co) == "dead" then
            out[i], left = r, left - 1
          end
        end
      end
    end
    lc:close()
    assert(out[1].ok == 2, "loop batch: " .. tostring(out[1][1].err))
    assert(out[2].id == list[1].id, "loop get")
  end

  local down = vpp.new { access_token = "embed-host-token", base_url = "http://127.0.0.1:9", max_retries = 0 }
  local nothing, derr = down:get_token("x")
  assert(nothing == nil and derr.code == "COULDNT_CONNECT", "down: " .. tostring(derr))
  down:close()

  return ("listed %d, synced %s, batch %d/%d"):format(#list, tok.id, results.ok, #results)
end
