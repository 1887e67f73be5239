--- The `loop` setting for a luv (libuv) host: a call made from a coroutine
-- yields it, and a uv poll on lua-vpp's descriptor or a uv timer resumes it;
-- the host runs uv.run().
--   vpp.new { loop = require "vpp.loop.luv", ... }
-- libuv allows one poll handle per descriptor: the coroutines waiting on a
-- client share its handle, which is closed when none waits (so that closing
-- the client never leaves libuv watching a closed descriptor).
local uv = require "luv"

local polls = {} -- descriptor -> { handle, waiters = { [coroutine] = true } }

-- An error of a coroutine resumed from a uv callback has no caller to go
-- to, and raising it in the callback would end the host process (luv's
-- way): it goes to stderr.  Hosts that want it wrap their coroutines.
local function resume(co)
  local ok, err = coroutine.resume(co)
  if not ok then io.stderr:write("vpp.loop.luv: a coroutine raised: ", debug.traceback(co, tostring(err)), "\n") end
end

local function release(fd, entry)
  if next(entry.waiters) == nil and polls[fd] == entry then
    polls[fd] = nil
    entry.handle:stop()
    entry.handle:close()
  end
end

local function watch(fd)
  local entry = polls[fd]
  if entry then return entry end
  entry = { handle = assert(uv.new_poll(fd)), waiters = {} }
  polls[fd] = entry
  assert(entry.handle:start("r", function()
    local waiting = entry.waiters
    entry.waiters = {}
    for co in pairs(waiting) do
      if coroutine.status(co) == "suspended" then resume(co) end
    end
    release(fd, entry)
  end))
  return entry
end

return function(op)
  local co, main = coroutine.running()
  if not co or main then
    error("vpp.loop.luv: call lua-vpp from a coroutine; the host runs uv.run()", 2)
  end
  local fd = op:pollfd()
  local entry = watch(fd)
  entry.waiters[co] = true
  local timer, seconds = nil, op:timeout()
  if seconds then
    timer = uv.new_timer()
    timer:start(math.ceil(seconds * 1000), 0, function()
      entry.waiters[co] = nil
      if coroutine.status(co) == "suspended" then resume(co) end
    end)
  end
  coroutine.yield()
  entry.waiters[co] = nil
  if timer then
    timer:stop()
    timer:close()
  end
  release(fd, entry)
end
