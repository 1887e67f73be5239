-- The command under SIGINT and SIGTERM, and under a whole-run limit: it
-- stops within a second, prints what finished and an interrupted row for
-- the rest, and exits 130, 143 (or, for check, UNKNOWN: 3).
local support = require "support"

describe("the vpp command interrupted", function()
  local fx = support.cli_fixture { tokens = 6, latency = 0.05, sync_seconds = 60 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  for _, case in ipairs { { "INT", 130, "SIGINT" }, { "TERM", 143, "SIGTERM" } } do
    local sig, code, name = case[1], case[2], case[3]
    it(("stops sync --all --wait on %s within 2 s, printing every row, and exits %d"):format(name, code), function()
      local t0 = support.now()
      local r = fx.cli.run({ "sync", "--all", "--wait", "--wait-interval", "0.2", "--format", "csv" }, fx.env,
        { signal = sig, after = 1 })
      local seconds = support.now() - t0
      assert.equal(code, r.code, r.err)
      assert.is_true(seconds < 3, "it took " .. seconds .. " s")
      local rows = {}
      for line in r.out:gmatch("[^\n]+") do rows[#rows + 1] = line end
      assert.matches("^id,displayName,result", rows[1])
      assert.is_true(#rows >= 2, r.out)
      local interrupted = 0
      for i = 2, #rows do
        if rows[i]:find(",interrupted,", 1, true) then
          interrupted = interrupted + 1
        else
          assert.matches(",skipped,inProgress,", rows[i]) -- a token already syncing
        end
      end
      assert.is_true(interrupted >= 1, r.out)
      assert.matches("vpp: interrupted by " .. name .. ": %d+ tokens?: %d+ interrupted", r.err)
      assert.not_matches("internal error", r.err)
    end)
  end

  it("reports check interrupted by SIGINT as UNKNOWN", function()
    fx.server:program("@list", { { pass = true, delay = 5 } })
    local t0 = support.now()
    local r = fx.cli.run({ "check" }, fx.env, { signal = "INT", after = 1 })
    assert.equal(3, r.code, r.err)
    assert.is_true(support.now() - t0 < 3)
    assert.equal("VPP UNKNOWN - interrupted\n", r.out)
  end)

  it("gives up check -t 2 against a server that answers in 5 s: UNKNOWN within 3 s", function()
    fx.server:program("@list", { { pass = true, delay = 5 } })
    local t0 = support.now()
    local r = fx.cli.run({ "check", "-t", "2" }, fx.env)
    local seconds = support.now() - t0
    assert.equal(3, r.code, r.err)
    assert.is_true(seconds >= 1.9 and seconds < 3, "it took " .. seconds .. " s")
    assert.equal("VPP UNKNOWN - timed out after 2 s\n", r.out)
  end)

  it("gives a host that runs cli.main its own SIGINT handling back afterwards", function()
    local out = support.run_lua([[
      local cli = require "vpp.cli"
      cli.main { "--version" }
      -- later, from the background: system() ignores SIGINT while it waits
      os.execute("(sleep 0.2; kill -INT $PPID) &")
      local t = os.clock()
      while os.clock() - t < 2 do end
      print("still running")
    ]])
    -- lua.c raises "interrupted!"; a host without a handler of its own
    -- (make asan's) dies of the signal: either way it does not go on
    assert.not_matches("still running", out)
  end)

  it("stops any command at --deadline, printing what finished; exit 1", function()
    local t0 = support.now()
    local r = fx.cli.run({ "--deadline", "1", "sync", "--all", "--wait", "--wait-interval", "0.2", "--format", "csv" },
      fx.env)
    assert.equal(1, r.code, r.err)
    assert.is_true(support.now() - t0 < 2.5)
    assert.matches(",timeout,", r.out)
  end)
end)
