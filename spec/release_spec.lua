-- One version everywhere: src/vpp.h's VPP_VERSION (vpp._VERSION) is the
-- one the rockspecs, CHANGELOG.md, vpp(1), the README and (once there) the
-- Debian changelog say; both rockspecs pass `luarocks lint`, and the
-- release one is what `make rockspec` writes from the scm one.
local vpp = require "vpp"
local sys = require "sys"

local function read(path) return assert(sys.read_file(path), path) end

describe("the release", function()
  local version = vpp._VERSION

  it("has one version: vpp._VERSION is src/vpp.h's, and every file that names it agrees", function()
    assert.matches("^%d+%.%d+%.%d+$", version)
    assert.equal(version, read("src/vpp.h"):match('#define VPP_VERSION%s+"([^"]+)"'))
    local release = read(("rockspecs/lua-vpp-%s-1.rockspec"):format(version))
    assert.equal(version .. "-1", release:match('\nversion = "([^"]+)"'))
    assert.equal("v" .. version, release:match('\n  tag = "([^"]+)"'))
    assert.equal("scm-1", read("rockspecs/lua-vpp-scm-1.rockspec"):match('\nversion = "([^"]+)"'))
    assert.equal(version, read("CHANGELOG.md"):match("\n## %[(%d+%.%d+%.%d+)%]"), "CHANGELOG's newest release")
    assert.equal(version, read("doc/vpp.1"):match('\n%.TH VPP 1 "[^"]*" "lua%-vpp ([^"]+)"'))
    assert.equal(version, read("doc/vpp.luadoc"):match("\n%-%- @release (%S+)"))
    local readme = read("README.md")
    assert.equal(version, readme:match('| `vpp._VERSION` | `"([^"]+)"` |'))
    assert.equal(version, readme:match("`lua%-vpp/([%d.]+) libcurl/<version>`"))
    local debian = sys.read_file("debian/changelog")
    if debian then assert.equal(version, debian:match("^lua%-vpp %(([^-)]+)")) end
    -- No other rockspec (an old version's) is left beside them.
    local names = {}
    for n in io.popen("ls rockspecs"):lines() do names[#names + 1] = n end
    table.sort(names)
    assert.same({ ("lua-vpp-%s-1.rockspec"):format(version), "lua-vpp-scm-1.rockspec" }, names)
  end)

  it("the release rockspec is what make rockspec writes from the scm one", function()
    local before = read(("rockspecs/lua-vpp-%s-1.rockspec"):format(version))
    local out, ok = sys.capture("make -s -B rockspec")
    assert.is_true(ok, out)
    assert.equal(before, read(("rockspecs/lua-vpp-%s-1.rockspec"):format(version)))
  end)

  it("both rockspecs pass luarocks lint", function()
    if not sys.execute("command -v luarocks >/dev/null 2>&1") then
      pending("luarocks is not installed")
      return
    end
    for _, name in ipairs { "scm", version } do
      local out, ok = sys.capture(("luarocks lint rockspecs/lua-vpp-%s-1.rockspec"):format(name))
      assert.is_true(ok, name .. ": " .. out)
    end
  end)
end)
