-- make lint: the C files of src/ must form layers.  From the sources alone:
-- which file defines each vpp_* function, which files call it, and so the
-- graph of "file A calls into file B"; any cycle in it fails, naming the
-- files and the calls that close it.  Also: outside src/platform.c, only
-- ISO C headers (and Lua's, libcurl's, libcrypto's and our own) may be
-- included, so that nothing system-specific hides elsewhere.
-- Usage: lua layers.lua src/*.c
local iso_c = {}
for h in ([[assert.h ctype.h errno.h float.h limits.h locale.h math.h setjmp.h signal.h stdarg.h
  stddef.h stdint.h stdio.h stdlib.h string.h time.h]]):gmatch("%S+") do iso_c[h] = true end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  -- comments and string literals name functions without calling them
  s = s:gsub("/%*.-%*/", " "):gsub("//[^\n]*", " "):gsub('"[^"\n]*"', '""')
  return s
end

local files, defined, text = {}, {}, {}
local problems = {}
for _, path in ipairs(arg) do
  local name = path:match("([^/]+)$")
  files[#files + 1] = name
  text[name] = read(path)
  for line in text[name]:gmatch("[^\n]+") do
    -- a definition: at the start of a line, not static, not a prototype
    local fn = line:match("^[%a_][%w_ %*]-[%s%*](vpp_[%w_]+)%(")
    if fn and not line:match("^static") and not line:match(";%s*$") and not line:match("^typedef") then
      defined[fn] = name
    end
  end
  if name ~= "platform.c" then
    for header in text[name]:gmatch("#include%s*<([^>]+)>") do
      local ok = iso_c[header] or header:match("^curl/") or header:match("^openssl/") or header:match("^lua")
        or header == "lauxlib.h"
      if not ok then
        problems[#problems + 1] = ("%s includes <%s>: system services belong in platform.c"):format(name, header)
      end
    end
  end
end

-- edges[a][b] = an example function of b that a calls
local edges = {}
for _, a in ipairs(files) do
  edges[a] = {}
  for fn in text[a]:gmatch("(vpp_[%w_]+)%s*%(") do
    local b = defined[fn]
    if b and b ~= a and not edges[a][b] then edges[a][b] = fn end
  end
end

-- Depth-first search for a cycle.
local state, stack = {}, {}
local function visit(a)
  state[a] = "open"
  stack[#stack + 1] = a
  local targets = {}
  for b in pairs(edges[a]) do targets[#targets + 1] = b end
  table.sort(targets)
  for _, b in ipairs(targets) do
    if state[b] == "open" then
      local cycle, from = {}, nil
      for i = #stack, 1, -1 do
        if stack[i] == b then from = i break end
      end
      for i = from, #stack do
        local nxt = stack[i + 1] or b
        cycle[#cycle + 1] = ("%s -> %s (%s)"):format(stack[i], nxt, edges[stack[i]][nxt])
      end
      problems[#problems + 1] = "a cycle among the C files: " .. table.concat(cycle, ", ")
      return true
    elseif not state[b] and visit(b) then
      return true
    end
  end
  stack[#stack] = nil
  state[a] = "done"
  return false
end

table.sort(files)
for _, a in ipairs(files) do
  if not state[a] and visit(a) then break end
end

if #problems > 0 then
  for _, p in ipairs(problems) do io.stderr:write("layers: ", p, "\n") end
  os.exit(1)
end
print(("layers: %d C files, no cycle, system calls only in platform.c"):format(#files))
