-- `make install` and the rockspec each give a working module, outside the
-- source tree, that talks to the fake Graph.
local support = require "support"

local sys = require "sys"

local version, abi = support.LUA_VERSION, support.LUA_ABI

local function sh(cmd)
  local out, ok = sys.capture(cmd)
  return ok, out
end

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/lua-vpp-install.XXXXXX")
  local dir = p:read("*l")
  p:close()
  return dir
end

-- Runs a sync in a child Lua that sees only `tree` and the system's modules.
local function works_from(tree, server)
  local code = ([[
    local vpp = require "vpp"
    local function searchpath(name, path) -- package.searchpath is 5.2+
      for t in path:gmatch("[^;]+") do
        local f = t:gsub("%%?", (name:gsub("%%.", "/")))
        local h = io.open(f)
        if h then h:close() return f end
      end
    end
    assert(searchpath("vpp.core", package.cpath):find(%q, 1, true), "not the installed module")
    local c = vpp.new { access_token = "t", base_url = %q }
    local list = assert(c:list_tokens())
    local tok = assert(c:sync_licenses(list[1].id))
    c:close()
    io.write(#list, " ", tok.lastSyncStatus)
  ]]):format(tree, server.url)
  local f = os.tmpname()
  support.write_file(f, code)
  local ok, out = sh(("cd /tmp && LUA_PATH='%s/share/lua/%s/?.lua;;' LUA_CPATH='%s/lib/lua/%s/?.so;;' %s %s")
    :format(tree, abi, tree, abi, support.LUA, f))
  os.remove(f)
  return ok, out
end

describe("installation", function()
  local server, dirs = nil, {}

  setup(function() server = support.start { tokens = 3 } end)
  teardown(function()
    server:stop()
    for _, d in ipairs(dirs) do os.execute("rm -rf " .. d) end
  end)

  it("make install PREFIX=DIR puts the modules under share/lua and lib/lua", function()
    local dir = tmpdir()
    dirs[#dirs + 1] = dir
    local ok, out = sh(("make -s install PREFIX=%s LUA_VERSION=%s"):format(dir, version))
    assert.is_true(ok, out)
    assert.truthy(io.open(("%s/share/lua/%s/vpp.lua"):format(dir, abi)))
    assert.truthy(io.open(("%s/lib/lua/%s/vpp/core.so"):format(dir, abi)))
    local ran, result = works_from(dir, server)
    assert.is_true(ran, result)
    assert.equal("3 inProgress", result)
  end)

  it("the scm rockspec installs a working module and command with luarocks make, offline", function()
    local dir = tmpdir()
    dirs[#dirs + 1] = dir
    local rockspec = "rockspecs/lua-vpp-scm-1.rockspec"
    -- luarocks builds in the source tree: give it a copy, not the checkout.
    local ok, out = sh(("mkdir %s/src-copy && cp -r src lua bin doc examples rockspecs %s/src-copy/ && cd %s/src-copy && "
      .. "luarocks --lua-version=%s make --deps-mode=none --tree %s/tree %s")
      :format(dir, dir, dir, abi, dir, rockspec))
    dir = dir .. "/tree"
    assert.is_true(ok, out)
    local ran, result = works_from(dir, server)
    assert.is_true(ran, result)
    assert.equal("3 inProgress", result)
    -- build.install.bin: the command, through luarocks' wrapper.
    ran, result = sh(("cd /tmp && GRAPH_URL=%s GRAPH_ACCESS_TOKEN=t %s/bin/vpp list --format csv"):format(server.url, dir))
    assert.is_true(ran, result)
    assert.equal(4, select(2, result:gsub("\r\n", "")))
  end)

  it("the rockspec installs every Lua module in lua/", function()
    local rockspec = assert(io.open("rockspecs/lua-vpp-scm-1.rockspec")):read("*a")
    local p = io.popen("cd lua && find . -name '*.lua'")
    for f in p:lines() do
      local path = "lua/" .. f:gsub("^%./", "")
      assert.truthy(rockspec:find('"' .. path .. '"', 1, true), path .. " is missing from the rockspec")
    end
    p:close()
  end)

  it("the rockspec builds every C file in src/", function()
    local rockspec = assert(io.open("rockspecs/lua-vpp-scm-1.rockspec")):read("*a")
    local listed = {}
    for f in rockspec:gmatch('"(src/[%w_]+%.c)"') do listed[f] = true end
    local p = io.popen("ls src/*.c")
    for f in p:lines() do
      assert.is_true(listed[f] == true, f .. " is missing from the rockspec")
      listed[f] = nil
    end
    p:close()
    assert.same({}, listed)
  end)
end)
