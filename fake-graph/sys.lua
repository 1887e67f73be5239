-- What the launcher, the demo and the specs need from the system, the same
-- on every Lua: files, and shell commands with their exit code (os.execute
-- returns a wait status on 5.1 and LuaJIT, (ok, "exit", code) on 5.2+, and
-- a popen'd file's close() gives no code before 5.2).
local M = {}

--- The whole file, or nil and io.open's message.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes the strings to path (file:write returns no file to chain on
-- before Lua 5.2).
function M.write_file(path, ...)
  local f = assert(io.open(path, "wb"))
  f:write(...)
  f:close()
end

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
  local out = assert(M.read_file(name))
  os.remove(name)
  return out, ok, code
end

return M
