-- The reference: `ldoc` builds it, and every public function of the vpp
-- table and of the client (their metatable's methods) has an entry with a
-- summary; so a function added without documentation fails here.
local vpp = require "vpp"
local core = require "vpp.core"
local sys = require "sys"

describe("the reference (make doc)", function()
  local html
  setup(function()
    if not sys.execute("command -v ldoc >/dev/null 2>&1") then return end
    local dir = io.popen("mktemp -d /tmp/lua-vpp-doc.XXXXXX"):read("*l")
    local out, ok = sys.capture("ldoc -d " .. dir .. " .")
    assert(ok, out)
    html = assert(sys.read_file(dir .. "/modules/vpp.html"))
    os.execute("rm -rf " .. dir)
  end)

  -- name -> its summary, from LDoc's list of functions.
  local function entries()
    local out = {}
    for name, summary in html:gmatch('<td class="name" nowrap><a href="#[^"]*">([^<(]+)%([^<]*</a></td>%s*<td class="summary">(.-)</td>') do
      out[name] = summary:gsub("<[^>]+>", ""):gsub("%s+", " ")
    end
    return out
  end

  it("has an entry with a summary for every function of the vpp table", function()
    if not html then pending("ldoc is not installed (Debian: lua-ldoc)") return end
    local documented, missing = entries(), {}
    for name, v in pairs(vpp) do
      if type(v) == "function" and not (documented[name] or ""):find("%S") then missing[#missing + 1] = name end
    end
    table.sort(missing)
    assert.same({}, missing)
  end)

  it("has an entry with a summary for every method of a client", function()
    if not html then pending("ldoc is not installed (Debian: lua-ldoc)") return end
    local documented, missing = entries(), {}
    local methods = getmetatable(vpp.new { access_token = "t" }).__index
    assert.equal(core.client_methods, methods)
    for name, v in pairs(methods) do
      if type(v) == "function" and not (documented["client:" .. name] or ""):find("%S") then
        missing[#missing + 1] = name
      end
    end
    table.sort(missing)
    assert.same({}, missing)
  end)
end)
