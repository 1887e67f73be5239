-- Only what Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT all have: the modules run
-- on each.  Two are probed before use: math.type (5.3+) and jit (LuaJIT).
std = "min"
read_globals = { "jit", math = { fields = { "type" } } }
max_line_length = 130
-- Specs quote whole Graph responses on one line.
files["spec/"] = { std = "+busted", max_line_length = 160 }
-- The fake Graph server runs inside nginx, where `ngx` is a global.
files["fake-graph/graph.lua"] = { globals = { "ngx" } }
-- wrk runs its scripts with a `wrk` global to configure.
files["bench/peers/wrk-post.lua"] = { globals = { "wrk" } }
