-- Shared by every spec: finds the freshly built C module for the Lua under
-- test, and starts the fake Graph server (fake-graph/) on free ports.
local version = _VERSION:match("%d+%.%d+")
if type(jit) == "table" then version = "jit" end
package.path = "lua/?.lua;lua/?/init.lua;fake-graph/?.lua;spec/?.lua;" .. package.path
-- VPP_BUILD: another build of the module (make asan).
package.cpath = (os.getenv("VPP_BUILD") or ("build/" .. version)) .. "/?.so;" .. package.cpath
