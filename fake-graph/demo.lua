-- `make demo`: the vpp command against a fake Intune tenant, on one screen.
-- Starts the fake Graph on a free loopback port (24 VPP tokens in mixed
-- states, some expiring soon, 50 ms per request, syncs taking 3 s), runs
-- `vpp list`, `vpp sync --all --wait` and `vpp check` from this checkout,
-- and stops the server.  Exits 0 when each command ended as it should.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local launcher = require "launcher"
local sys = require "sys"

local root = here:gsub("/?fake%-graph$", "")
if root == "" then root = "." end
local interpreter = arg[-1] or "lua5.4"

local bold = require("vpp.cli.format").use_colour("auto", require("vpp.core")._isatty(1)) and { "\27[1m", "\27[0m" } or { "", "" }
local server = launcher.start { tokens = 24, seed = 7, latency = 0.05, sync_seconds = 3 }

local function run(command, expected, why)
  io.write("\n", bold[1], "$ vpp ", command, bold[2], "\n")
  io.flush()
  local _, code = sys.execute(("GRAPH_URL=%s GRAPH_ACCESS_TOKEN=demo-token %s %s/bin/vpp %s")
    :format(server.url, interpreter, root, command))
  io.write(("(exit code %d%s)\n"):format(code, why and (": " .. why) or ""))
  return code == expected
end

io.write(("lua-vpp demo: a fake Intune tenant of 24 Apple VPP tokens at %s\n"):format(server.url))
io.write("(the vpp command reads GRAPH_URL and GRAPH_ACCESS_TOKEN; a real tenant takes AZURE_* credentials)\n")
local ok, result = pcall(function()
  return run("list", 0)
    and run("sync --all --wait", 0, "every valid token synced; those already syncing were skipped")
    and run("check", 2, "CRITICAL: some tokens are expired or expire within 7 days")
end)
server:stop()
if not ok then error(result, 0) end
if not result then
  io.stderr:write("demo: a command did not end as expected\n")
  os.exit(1)
end
io.write("\nNext: `vpp --help`, `vpp check --format prometheus`, the Lua API in README.md, and `make test`.\n")
