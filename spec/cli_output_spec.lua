-- Output is never lost silently: every command against a full disk
-- (/dev/full) and a closed stdout, EPIPE, --output FILE (atomic, and only
-- for a run that succeeded), the cron example and the systemd units.
local support = require "support"
local sys = require "sys"

local ROOT = io.popen("pwd"):read("*l")
local A = "6d1a2c3b-0000-4000-8000-00000000000a"

local function tmpdir()
  local d = io.popen("mktemp -d /tmp/lua-vpp-out.XXXXXX"):read("*l")
  return d, function() os.execute("chmod -R u+w " .. d .. " 2>/dev/null; rm -rf " .. d) end
end

local function ls(dir)
  local out = {}
  for name in io.popen("ls -A " .. dir):lines() do out[#out + 1] = name end
  return out
end

-- A temporary directory holding name with content (the file a run may
-- replace); removed when the test ends.
local function old_file(name, content)
  local dir, clean = tmpdir()
  finally(clean)
  local file = dir .. "/" .. name
  sys.write_file(file, content)
  return dir, file
end

local function inode(path)
  return io.popen("stat -c %i " .. path):read("*l")
end

local function one_line(s)
  return select(2, s:gsub("\n", "")) == 1 and s:sub(-1) == "\n"
end

describe("vpp output", function()
  local fx = support.cli_fixture { tokens = 6 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(function()
    fx.fresh()
    fx.server:tokens { support.vpp_token { id = A } }
    fx.server:apps { { token = A, displayName = "Notes", total = 10, used = 1 } }
  end)

  -- Every command that prints data; check fails as UNKNOWN (3).
  local commands = {
    { { "list" }, 1 }, { { "list", "--format", "json" }, 1 }, { { "list", "--format", "csv" }, 1 },
    { { "get", A }, 1 }, { { "sync", A }, 1 }, { { "sync", "--all" }, 1 }, { { "sync", "--all", "--dry-run" }, 1 },
    { { "check" }, 3 }, { { "check", "--format", "json" }, 3 }, { { "check", "--format", "prometheus" }, 3 },
    { { "licenses" }, 1 }, { { "licenses", "--app", "com.example.notes", "--format", "json" }, 1 },
    { { "set", A, "--auto-update", "on" }, 1 }, { { "sync-apps", "--organization", "org-1", A }, 1 },
    { { "help", "list" }, 1 },
    { { "completion", "bash" }, 1 }, { { "--version" }, 1 }, { { "--help" }, 1 },
  }

  it("a full disk (/dev/full): each command says so in one stderr line and fails (check: UNKNOWN)", function()
    for _, c in ipairs(commands) do
      local args, code = c[1], c[2]
      local r = fx.cli.run(args, fx.env, { shell = "{cmd} </dev/null >/dev/full 2>{err}" })
      local what = table.concat(args, " ")
      assert.equal(code, r.code, what .. ": " .. r.err)
      assert.is_true(one_line(r.err), what .. ": " .. r.err)
      assert.matches("^vpp: cannot write to stdout: No space left on device\n$", r.err, nil, what)
    end
  end)

  it("a closed stdout: one stderr line and a failing exit, before anything is asked of Graph", function()
    for _, c in ipairs(commands) do
      local args, code = c[1], c[2]
      fx.server:log()
      local r = fx.cli.run(args, fx.env, { shell = "{cmd} </dev/null >&- 2>{err}" })
      local what = table.concat(args, " ")
      assert.equal(code, r.code, what .. ": " .. r.err)
      assert.is_true(one_line(r.err), what .. ": " .. r.err)
      assert.matches("^vpp: cannot write to stdout: it is closed", r.err)
      assert.same({}, fx.server:log(), what)
    end
  end)

  it("a stderr that cannot be written makes a run that said something fail", function()
    local r = fx.cli.run({ "list" }, fx.env, { shell = "{cmd} </dev/null >{out} 2>/dev/full" })
    assert.equal(1, r.code)
    assert.matches("^ID ", r.out)
    r = fx.cli.run({ "list", "-q" }, fx.env, { shell = "{cmd} </dev/null >{out} 2>/dev/full" })
    assert.equal(0, r.code, "nothing to say: nothing lost")
  end)

  it("EPIPE (the reader left) ends quietly with the shell's 141, whether SIGPIPE is ignored or not", function()
    -- Bigger than a pipe's buffer, so that vpp is still writing when head leaves.
    fx.server:config { tokens = 600 }
    for _, trap in ipairs { "", "trap '' PIPE; " } do
      local r = fx.cli.run({ "list", "--format", "json" }, fx.env,
        { shell = trap .. "{ {cmd} </dev/null 2>{err}; echo $? >{out}; } | head -c 10 >/dev/null" })
      assert.equal("141\n", r.out, trap)
      assert.equal("", r.err, trap)
    end
  end)

  describe("--output FILE", function()
    it("replaces FILE atomically when the run succeeds: a new inode, the old permissions, no file left beside it", function()
      local dir, file = old_file("tokens.json", "old\n")
      os.execute("chmod 640 " .. file)
      local before = inode(file)
      local r = fx.cli.run({ "list", "--format", "json", "--output", file }, fx.env)
      assert.equal(0, r.code, r.err)
      assert.equal("", r.out)
      assert.equal(A, require("cjson").decode(sys.read_file(file))[1].id)
      assert.are_not.equal(before, inode(file))
      assert.equal("640", io.popen("stat -c %a " .. file):read("*l"))
      assert.same({ "tokens.json" }, ls(dir))
      -- A check that ran (here CRITICAL) is written too: its answer.
      fx.server:tokens { support.vpp_token { id = A, state = "invalid" } }
      r = fx.cli.run({ "check", "--format", "prometheus", "--output", file }, fx.env)
      assert.equal(2, r.code)
      assert.matches("vpp_check_status{tenant=\"default\"} 2\n", sys.read_file(file))
    end)

    it("leaves FILE as it was when vpp fails before writing (Graph down, UNKNOWN, no credentials, a bad flag)", function()
      local dir, file = old_file("vpp.prom", "good metrics\n")
      fx.server:program("@list", { { status = 503, error = "ServiceUnavailable", times = 20 } })
      local r = fx.cli.run({ "list", "--max-retries", "0", "--output", file }, fx.env)
      assert.equal(1, r.code)
      assert.matches("vpp: " .. file:gsub("%p", "%%%0") .. " left as it was", r.err)
      r = fx.cli.run({ "check", "--max-retries", "0", "--format", "prometheus", "--output", file }, fx.env)
      assert.equal(3, r.code)
      r = fx.cli.run({ "check", "--format", "prometheus", "--output", file }, { GRAPH_URL = fx.server.url })
      assert.equal(3, r.code)
      r = fx.cli.run({ "check", "--warn-days", "x", "--output", file }, fx.env)
      assert.equal(3, r.code)
      assert.equal("good metrics\n", sys.read_file(file))
      assert.same({ "vpp.prom" }, ls(dir))
    end)

    it("leaves FILE as it was when the run is killed mid-run", function()
      local dir, file = old_file("vpp.prom", "good metrics\n")
      fx.server:config { latency = 5 }
      local r = fx.cli.run({ "check", "--format", "prometheus", "--output", file }, fx.env,
        { shell = "{ {cmd} </dev/null >{out} 2>{err} & pid=$!; sleep 1; kill -KILL $pid; wait $pid; } 2>/dev/null" })
      assert.are_not.equal(0, r.code)
      assert.equal("good metrics\n", sys.read_file(file))
      assert.same({ "vpp.prom" }, ls(dir))
    end)

    it("an unwritable directory: one line, the exit code says so, FILE as it was", function()
      local dir, file = old_file("vpp.prom", "good metrics\n")
      os.execute("chmod 755 " .. fx.cli.prefix .. "; chmod 644 " .. file .. "; chmod 555 " .. dir)
      -- root writes anywhere: the command then runs as nobody.
      local as = sys.execute("[ \"$(id -u)\" = 0 ]") and "setpriv --reuid=65534 --regid=65534 --clear-groups " or ""
      local r = fx.cli.run({ "check", "--format", "prometheus", "--output", file }, fx.env,
        { shell = as .. "{cmd} </dev/null >{out} 2>{err}" })
      assert.equal(3, r.code, r.err)
      assert.is_true(one_line(r.err), r.err)
      assert.matches("^vpp: cannot write " .. file:gsub("%p", "%%%0") .. ": Permission denied %(left as it was%)\n$", r.err)
      assert.equal("good metrics\n", sys.read_file(file))
      assert.same({ "vpp.prom" }, ls(dir))
    end)
  end)

  describe("examples/prometheus_cron.sh", function()
    local script = ROOT .. "/examples/prometheus_cron.sh"

    local function cron(dir, path)
      local env = { TEXTFILE_DIR = dir, GRAPH_URL = fx.server.url, GRAPH_ACCESS_TOKEN = support.TOKEN }
      local vars = { "PATH=" .. path, "HOME=/tmp" }
      for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. v end
      local out = os.tmpname()
      local _, code = sys.execute(("env -i %s /bin/sh %s >%s 2>&1"):format(table.concat(vars, " "), script, out))
      local text = sys.read_file(out)
      os.remove(out)
      return code, text
    end

    it("keeps the old metrics and exits non-zero when vpp is not on PATH", function()
      local dir = old_file("vpp.prom", "good metrics\n")
      -- A PATH with no vpp on it, even on a machine that has one installed
      -- (the script needs nothing but sh's builtins).
      os.execute("mkdir " .. dir .. "/empty-bin")
      local code, text = cron(dir, dir .. "/empty-bin")
      assert.are_not.equal(0, code, text)
      assert.matches("left as it was", text)
      assert.equal("good metrics\n", sys.read_file(dir .. "/vpp.prom"))
      assert.same({ "empty-bin", "vpp.prom" }, ls(dir))
    end)

    it("replaces them when the check ran, WARNING included, and keeps them when it was UNKNOWN", function()
      local dir = old_file("vpp.prom", "good metrics\n")
      local path = fx.cli.prefix .. "/bin:/usr/bin:/bin"
      fx.server:tokens { support.vpp_token { id = A, expires_in_days = 10 } }
      local code, text = cron(dir, path)
      assert.equal(0, code, text)
      assert.matches('vpp_check_status{tenant="default"} 1\n', sys.read_file(dir .. "/vpp.prom"))
      fx.server:program("@list", { { status = 500, error = "InternalServerError", times = 20 } })
      code, text = cron(dir, path)
      assert.equal(1, code, text)
      assert.matches('vpp_check_status{tenant="default"} 1\n', sys.read_file(dir .. "/vpp.prom"))
    end)
  end)

  it("examples/systemd: a oneshot service with LoadCredential and a randomized timer that systemd accepts", function()
    local service = assert(sys.read_file(ROOT .. "/examples/systemd/vpp-check.service"))
    local timer = assert(sys.read_file(ROOT .. "/examples/systemd/vpp-check.timer"))
    assert.matches("\nType=oneshot\n", service)
    assert.matches("\nLoadCredential=", service)
    assert.matches("%-%-output ", service)
    assert.matches("\nRandomizedDelaySec=", timer)
    if not sys.execute("command -v systemd-analyze >/dev/null 2>&1") then
      pending("systemd-analyze is not installed: the units' syntax is not checked")
      return
    end
    local out, ok = sys.capture(("systemd-analyze verify %s/examples/systemd/vpp-check.service %s/examples/systemd/vpp-check.timer")
      :format(ROOT, ROOT))
    assert.is_true(ok, out)
  end)
end)
