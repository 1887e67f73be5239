-- Runs spec/host/embed_host against a fake Graph of its own:
--   lua5.4 spec/host/run.lua HOST alloc|threads [ROUNDS]
-- with LUA_PATH/LUA_CPATH pointing at the module build under test (the
-- Makefile's `make asan` and `make tsan` do).  Exits with the host's status.
local launcher = require "launcher"
local sys = require "sys"

local host, mode, rounds = arg[1], arg[2], arg[3] or ""
assert(host and (mode == "alloc" or mode == "threads"), "usage: run.lua HOST alloc|threads [ROUNDS]")
local server = launcher.start { tokens = 5, page_size = 2, log = false }
local ok, code = sys.execute(("GRAPH_URL=%s %s %s %s spec/host/scenario.lua %s"):format(server.url,
  mode == "threads" and "VPP_SCENARIO_LOOP=1" or "", host, mode, rounds))
server:stop()
if not ok then io.stderr:write(("run.lua: %s %s failed (exit %s)\n"):format(host, mode, tostring(code))) end
os.exit(ok and 0 or 1)
