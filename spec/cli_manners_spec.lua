-- The command's manners: data on stdout and diagnostics on stderr for every
-- subcommand, --color and TERM=dumb, `vpp help CMD`, shell completions
-- generated from the parser and installed, and a man page that covers
-- every option --help shows.
local support = require "support"
local sys = require "sys"

local ROOT = io.popen("pwd"):read("*l")
local A = "6d1a2c3b-0000-4000-8000-00000000000a"

local SUBCOMMANDS = { "list", "get", "sync", "sync-apps", "check", "licenses", "revoke-licenses",
  "sync-license-counts", "set", "renew", "help", "completion" }

describe("the vpp command's manners", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(function()
    fx.fresh()
    fx.server:tokens { support.vpp_token { id = A } }
    fx.server:apps { { token = A, displayName = "Notes", total = 10, used = 1 } }
  end)

  local function with(extra) return support.merged(fx.env, extra) end

  it("data on stdout, summaries and notes on stderr (none with -q), for every subcommand", function()
    local token_file = os.tmpname()
    finally(function() os.remove(token_file) end)
    sys.write_file(token_file, "renewed-apple-token\n")
    -- { args, stdout has data, stderr pattern (nil: empty) }
    local cases = {
      { { "list" }, "^ID ", "^vpp: 1 token: 1 valid\n$" },
      { { "get", A }, "^PROPERTY ", nil },
      { { "sync", "--all", "--dry-run" }, "^ID ", "^vpp: 1 token: 1 would sync %(1 listed%)\n$" },
      { { "sync", A }, "^ID ", "^vpp: 1 token: 1 started\n$" },
      { { "check" }, "^VPP OK ", nil },
      { { "licenses" }, "^TOKEN ", nil },
      { { "licenses", "--token", A:sub(1, 8), "--format", "json" }, "^%[", nil },
      { { "revoke-licenses", A, "--yes" }, nil, "^vpp: revoking the licences of token " .. A:gsub("%-", "%%-") .. "\n$" },
      { { "sync-license-counts" }, nil, "^vpp: licence counts are being refreshed\n$" },
      { { "set", A, "--auto-update", "on" }, "^PROPERTY ", nil },
      { { "renew", A, "--token-file", token_file }, "^PROPERTY ", nil },
      { { "sync-apps", "--organization", "org-1", A }, "^ID ", "^vpp: 1 token: 1 started\n$" },
      { { "help", "list" }, "^Usage: vpp list ", nil },
      { { "completion", "bash" }, "^_vpp%(%) {", nil },
    }
    for _, c in ipairs(cases) do
      local args, out, err = c[1], c[2], c[3]
      local what = table.concat(args, " ")
      local r = fx.cli.run(args, fx.env)
      assert.equal(0, r.code, what .. ": " .. r.err)
      if out then assert.matches(out, r.out, nil, what) else assert.equal("", r.out, what) end
      if err then assert.matches(err, r.err, nil, what) else assert.equal("", r.err, what) end
      table.insert(args, 1, "-q")
      r = fx.cli.run(args, fx.env)
      assert.equal("", r.err, "-q " .. what)
    end
  end)

  it("--color always|never|auto; auto gives none for TERM=dumb or NO_COLOR", function()
    local r = fx.cli.run({ "--color", "always", "list" }, fx.env)
    assert.truthy(r.out:find("\27[1mID\27[0m", 1, true), "always colours off a terminal")
    r = fx.cli.run({ "--color", "always", "list" }, with { NO_COLOR = "1" })
    assert.truthy(r.out:find("\27[", 1, true), "always beats NO_COLOR")
    r = fx.cli.run({ "list" }, with { TERM = "xterm" }, { pty = true })
    assert.truthy(r.out:find("\27[1mID\27[0m", 1, true), r.out)
    r = fx.cli.run({ "list" }, with { TERM = "dumb" }, { pty = true })
    assert.falsy(r.out:find("\27", 1, true), r.out)
    r = fx.cli.run({ "--color", "never", "list" }, with { TERM = "xterm" }, { pty = true })
    assert.falsy(r.out:find("\27", 1, true), r.out)
    r = fx.cli.run({ "--color", "auto", "--output", "/dev/null", "list" }, with { TERM = "xterm" }, { pty = true })
    assert.equal(0, r.code, r.out)
    r = fx.cli.run({ "--color", "sometimes", "list" }, fx.env)
    assert.equal(64, r.code)
  end)

  it("vpp help CMD is CMD's help; vpp help is the command's; an unknown CMD is a usage error", function()
    for _, name in ipairs(SUBCOMMANDS) do
      local r = fx.cli.run({ "help", name }, fx.env)
      assert.equal(0, r.code, name .. ": " .. r.err)
      assert.equal(fx.cli.run({ name, "--help" }, fx.env).out, r.out, name)
    end
    local r = fx.cli.run({ "help" }, fx.env)
    assert.equal(fx.cli.run({ "--help" }, fx.env).out, r.out)
    r = fx.cli.run({ "help", "lsit" }, fx.env)
    assert.equal(64, r.code)
    assert.matches("unknown command 'lsit'", r.err)
  end)

  it("bash completion from the parser: installed by make install, loadable, completing commands and options", function()
    local installed = fx.cli.prefix .. "/share/bash-completion/completions/vpp"
    assert.equal(fx.cli.run({ "completion", "bash" }, fx.env).out, sys.read_file(installed))
    local script = os.tmpname()
    finally(function() os.remove(script) end)
    sys.write_file(script, ([[
set -e
source %s
complete -p vpp
COMP_WORDS=(vpp che); COMP_CWORD=1; _vpp; echo "commands: ${COMPREPLY[*]}"
COMP_WORDS=(vpp check --no); COMP_CWORD=2; _vpp; echo "options: ${COMPREPLY[*]}"
COMP_WORDS=(vpp --color ""); COMP_CWORD=2; _vpp; echo "values: ${COMPREPLY[*]}"
]]):format(installed))
    local out, ok = sys.capture("bash " .. script)
    assert.is_true(ok, out)
    assert.matches("complete [^\n]*%-F _vpp vpp\n", out)
    assert.matches("commands: check\n", out)
    assert.matches("options: %-%-no%-licenses\n", out)
    assert.matches("values: auto always never\n", out)
  end)

  it("zsh and fish completions are generated and installed (and parse, where the shell is here)", function()
    for _, c in ipairs { { "zsh", "/share/zsh/site-functions/_vpp", "zsh -n" },
      { "fish", "/share/fish/vendor_completions.d/vpp.fish", "fish --no-execute" } } do
      local shell, path, parse = c[1], c[2], c[3]
      local text = fx.cli.run({ "completion", shell }, fx.env).out
      assert.equal(text, sys.read_file(fx.cli.prefix .. path), shell)
      assert.truthy(text:find("licenses", 1, true), shell)
      if sys.execute("command -v " .. shell .. " >/dev/null 2>&1") then
        local out, ok = sys.capture(parse .. " " .. fx.cli.prefix .. path)
        assert.is_true(ok, out)
      end
    end
  end)

  it("the man page (installed by make install) names every option --help shows, for every command", function()
    local page = assert(sys.read_file(ROOT .. "/doc/vpp.1"))
    assert.equal(page, sys.read_file(fx.cli.prefix .. "/share/man/man1/vpp.1"))
    -- roff writes - as \-
    local plain = page:gsub("\\%-", "-")
    -- The options the page documents: those of its .B, .BI and .BR lines
    -- (an entry's tag), not every mention in the prose.
    local documented = {}
    for line in plain:gmatch("[^\n]+") do
      if line:match("^%.B[IR]? ") then
        for flag in (" " .. line):gmatch("[%s\"](%-%-?[%w][%w-]*)") do documented[flag] = true end
      end
    end
    local missing = {}
    local helps = { fx.cli.run({ "--help" }, fx.env).out }
    for _, name in ipairs(SUBCOMMANDS) do
      helps[#helps + 1] = fx.cli.run({ name, "--help" }, fx.env).out
      assert.truthy(plain:find(".SS \"vpp " .. name, 1, true), "no section for " .. name)
    end
    for _, help in ipairs(helps) do
      local options = help:match("\nOptions:\n(.*)$") or ""
      for line in options:gmatch("[^\n]+") do
        for flag in (line:match("^%s+(%-[^%s]+.-)%s%s") or line:match("^%s+(%-%S+)") or ""):gmatch("%-%-?[%w][%w-]*") do
          if not documented[flag] then missing[#missing + 1] = flag end
        end
      end
    end
    assert.same({}, missing)
    if sys.execute("command -v groff >/dev/null 2>&1") then
      local out, ok = sys.capture("groff -man -Tutf8 -ww -z " .. ROOT .. "/doc/vpp.1")
      assert.is_true(ok and out == "", out)
    end
  end)
end)
