-- The module's file and stream helpers for the command, in process (so the
-- valgrind and ASan runs cover them): the atomic replacement of a file and
-- the guard of the standard streams.
local core = require "vpp.core"
local sys = require "sys"

describe("core._replace_file", function()
  local dir
  before_each(function() dir = io.popen("mktemp -d /tmp/lua-vpp-rf.XXXXXX"):read("*l") end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function names()
    local out = {}
    for n in io.popen("ls -A " .. dir):lines() do out[#out + 1] = n end
    return out
  end

  it("replaces the file with the content, keeping its permissions, nothing left beside it", function()
    local path = dir .. "/f"
    sys.write_file(path, "old")
    os.execute("chmod 604 " .. path)
    assert.is_true(core._replace_file(path, ("x"):rep(100000) .. "\0end"))
    assert.equal(("x"):rep(100000) .. "\0end", sys.read_file(path))
    assert.equal("604", io.popen("stat -c %a " .. path):read("*l"))
    assert.same({ "f" }, names())
    -- A new file: 0666 less the umask.
    assert.is_true(core._replace_file(dir .. "/new", ""))
    assert.equal("", sys.read_file(dir .. "/new"))
  end)

  it("gives nil, the system's message and errno when it cannot, the file as it was", function()
    local ok, message, errno = core._replace_file(dir .. "/missing/f", "x")
    assert.is_nil(ok)
    assert.equal("No such file or directory", message)
    assert.equal(2, errno)
    sys.write_file(dir .. "/f", "old")
    -- A directory cannot be replaced by a file (EISDIR at the rename): the
    -- new file beside it is removed.
    ok, message = core._replace_file(dir, "x")
    assert.is_nil(ok)
    assert.equal("Is a directory", message)
    assert.equal(0, #io.popen("ls -d " .. dir .. ".tmp.* 2>/dev/null"):read("*a"))
    assert.equal("old", sys.read_file(dir .. "/f"))
    assert.has_error(function() core._replace_file(nil, "x") end)
  end)

  it("_std_fds finds nothing closed in a process whose streams are open", function()
    assert.equal(0, core._std_fds())
  end)
end)
