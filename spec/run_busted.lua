-- Runs busted inside this very interpreter, so that `make valgrind` watches
-- the Lua process that loads the module (the busted script would re-exec).
require "busted.runner" { standalone = false }
