-- `make deb-smoke`: the installed Debian packages alone (no LUA_PATH, no
-- checkout on any path): the module loads on every Lua Debian ships, and
-- /usr/bin/vpp prints its version and syncs against a fake Graph.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local launcher = require "launcher"
local sys = require "sys"

local failed = false
local function run(what, cmd, want)
  local out, _, code = sys.capture("cd / && env -i PATH=/usr/bin:/bin HOME=/tmp " .. cmd)
  local ok = code == 0 and (not want or out:find(want, 1, true) ~= nil)
  io.write(("%s %s\n"):format(ok and "ok  " or "FAIL", what))
  if not ok then
    io.write(out)
    failed = true
  end
  return out
end

for _, lua in ipairs { "lua5.1", "lua5.2", "lua5.3", "lua5.4" } do
  if sys.execute("command -v " .. lua .. " >/dev/null") then
    -- package.searchpath is 5.2+: there, the C part must be the package's.
    run(lua .. ": require 'vpp' from /usr", lua .. [[ -e 'local v = require "vpp"
      local where = package.searchpath and package.searchpath("vpp.core", package.cpath)
      assert(not package.searchpath or (where and where:find("^/usr/lib/")), tostring(where))
      io.write(v._VERSION)']], ".")
  end
end
run("vpp --version", "/usr/bin/vpp --version", "vpp ")
local server = launcher.start { tokens = 5 }
local ok, err = pcall(function()
  run("vpp sync --all against the fake Graph", ("GRAPH_URL=%s GRAPH_ACCESS_TOKEN=smoke /usr/bin/vpp sync --all")
    :format(server.url), "started")
  run("man vpp", "sh -c 'test -f /usr/share/man/man1/vpp.1.gz'")
  run("bash completion", "bash -c '. /usr/share/bash-completion/completions/vpp && complete -p vpp'", "_vpp")
end)
server:stop()
if not ok then error(err, 0) end
if failed then os.exit(1) end
io.write("deb smoke: the installed packages work\n")
