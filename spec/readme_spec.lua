-- The README's first Lua example runs as written against the fake Graph.
local support = require "support"

describe("the README", function()
  it("has a first Lua example that runs and syncs the valid tokens", function()
    local readme = assert(io.open("README.md")):read("*a")
    local example = assert(readme:match("```lua\n(.-)```"), "no Lua example")
    local server = support.start { tokens = 6 }
    finally(function() server:stop() end)
    local out, ok = support.run_lua(example,
      ("env GRAPH_ACCESS_TOKEN=readme-token GRAPH_URL=%s"):format(server.url))
    assert.is_true(ok, out)
    local valid = 0
    for _, line in ipairs(server:log()) do
      if line.method == "POST" then valid = valid + 1 end
    end
    assert.is_true(valid > 0, "no token was synced")
    local printed = select(2, out:gsub("inProgress", ""))
    assert.equal(valid, printed)
  end)

  it("opens with make demo, then make test", function()
    local readme = assert(io.open("README.md")):read("*a")
    local first, second = readme:match("```sh\n(make [%w-]+)[^\n]*\n(make [%w-]+)")
    assert.same({ "make demo", "make test" }, { first, second })
  end)
end)
