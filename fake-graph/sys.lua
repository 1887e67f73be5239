-- Shell commands with their exit code on every Lua: os.execute returns a
-- wait status on 5.1 and LuaJIT, (ok, "exit", code) on 5.2+, and a popen'd
-- file's close() gives no code before 5.2.  Used by the launcher, the demo
-- and the specs.
local M = {}

--- Runs cmd; returns true or false, and the exit code.
function M.execute(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then -- a wait status
    local code = a >= 256 and math.floor(a / 256) or a
    return code == 0, code
  end
  return a == true, a == true and 0 or c
end

--- Runs cmd with stdout and stderr into a string; returns it, ok and the code.
function M.capture(cmd)
  local name = os.tmpname()
  local ok, code = M.execute(("%s >%s 2>&1"):format(cmd, name))
  local f = assert(io.open(name, "rb"))
  local out = f:read("*a")
  f:close()
  os.remove(name)
  return out, ok, code
end

return M
