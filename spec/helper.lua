-- Shared by every spec: finds the freshly built C module for the Lua under
-- test, and starts the fake Graph server (fake-graph/) on free ports.
local version = _VERSION:match("%d+%.%d+")
if type(jit) == "table" then version = "jit" end
package.path = "lua/?.lua;lua/?/init.lua;fake-graph/?.lua;spec/?.lua;" .. package.path
package.cpath = "build/" .. version .. "/?.so;" .. package.cpath
