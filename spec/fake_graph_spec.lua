-- The fake Graph server itself: free ports, a clean stop, and the state the
-- other specs rely on.
local support = require "support"

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

describe("the fake Graph server", function()
  it("starts on free ports and stops by pid with no leftovers", function()
    local a = support.start()
    local b = support.start { tls = true }
    finally(function()
      a:stop()
      b:stop()
    end)
    assert.not_equal(a.port, b.port)
    local pid, dir = a.pid, a.dir
    assert.is_true(exists("/proc/" .. pid))
    assert.is_true(exists(dir .. "/nginx.conf"))
    a:stop()
    local status = io.open("/proc/" .. pid .. "/status")
    assert.is_true(status == nil or status:read("*a"):find("\nState:%s+Z") ~= nil, "nginx still runs")
    assert.is_false(exists(dir))
    a:stop() -- stopping twice is harmless
  end)

  it("serves a tenant of the requested size, in mixed states", function()
    local s = support.start { tokens = 250, page_size = 100 }
    finally(function() s:stop() end)
    local c = support.client(s)
    local list = assert(c:list_tokens())
    c:close()
    assert.equal(250, #list)
    local states = {}
    for _, t in ipairs(list) do states[t.state] = true end
    assert.is_true(states.valid and states.expired and states.invalid and true or false)
    assert.equal(3, s:stats().requests)
  end)
end)
