-- `vpp check`: one tenant per outcome, the same exit code in every format,
-- the plugin status line and perfdata, and the Prometheus textfile syntax.
local support = require "support"
local cjson = require "cjson"

local tok = support.vpp_token

-- Nagios perfdata: 'label'=value[UOM];[warn];[crit];[min];[max], space separated.
local function check_perfdata(perf)
  local n = 0
  for item in perf:gmatch("%S+") do
    n = n + 1
    local label, value, rest = item:match("^([%w_]+)=(%-?[%d.]+)[%a%%]*(.*)$")
    assert(label, "bad perfdata item: " .. item)
    assert(tonumber(value), item)
    local fields = 0
    for f in (rest .. ";"):gmatch("([^;]*);") do
      fields = fields + 1
      if fields > 1 then
        assert(f == "" or f:match("^@?~?%-?[%d.]*:?%-?[%d.]*$"), "bad threshold in " .. item)
      end
    end
    assert(fields <= 5, item)
  end
  assert(n > 0, "no perfdata")
end

-- name="value" pairs, comma separated; values escape only \\, \" and \n.
local function parse_labels(inner)
  local out, i = {}, 1
  while i <= #inner do
    local name, j = inner:match('^([%a_][%w_]*)="()', i)
    assert(name, "bad label at " .. i .. ": " .. inner)
    local value = {}
    i = j
    while true do
      local c = inner:sub(i, i)
      assert(c ~= "", "unterminated label value: " .. inner)
      if c == "\\" then
        local e = inner:sub(i + 1, i + 1)
        assert(e == "\\" or e == '"' or e == "n", "bad escape in " .. inner)
        value[#value + 1] = e == "n" and "\n" or e
        i = i + 2
      elseif c == '"' then
        i = i + 1
        break
      else
        value[#value + 1] = c
        i = i + 1
      end
    end
    out[name] = table.concat(value)
    if inner:sub(i, i) == "," then i = i + 1 else assert(i > #inner, "junk after label: " .. inner) end
  end
  return out
end

-- The Prometheus text exposition format, as node_exporter's textfile
-- collector reads it: comments, HELP/TYPE lines, and samples.
local function check_prometheus(text)
  local samples, typed = {}, {}
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^# HELP ") then
      assert(line:match("^# HELP [%a_:][%w_:]* %S"), line)
    elseif line:match("^# TYPE ") then
      local name = line:match("^# TYPE ([%a_:][%w_:]*) gauge$")
      assert(name, line)
      typed[name] = true
    elseif line:match("^#") then
      assert(not line:find("\n"))
    else
      local name, labels, value = line:match("^([%a_:][%w_:]*)(%b{}) (%S+)$")
      if not name then
        name, value = line:match("^([%a_:][%w_:]*) (%S+)$")
        labels = ""
      end
      assert(name, "bad sample line: " .. line)
      assert(tonumber(value), line)
      assert(typed[name], "sample before its TYPE: " .. line)
      parse_labels(labels:sub(2, -2))
      samples[#samples + 1] = { name = name, labels = labels, value = tonumber(value) }
    end
  end
  return samples
end

describe("vpp check", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(fx.fresh)

  local tenants = {
    { "all valid, far from expiry", 0, "OK", { tok { id = "a" }, tok { id = "b", expires_in_days = 90 } } },
    { "a valid token expiring within 30 days", 1, "WARNING", { tok { id = "a" }, tok { id = "b", expires_in_days = 20 } } },
    { "a last sync failed", 1, "WARNING", { tok { id = "a", lastSyncStatus = "failed" } } },
    { "a token in state unknown", 1, "WARNING", { tok { id = "a", state = "unknown" } } },
    { "a token assignedToExternalMDM", 1, "WARNING", { tok { id = "a", state = "assignedToExternalMDM" } } },
    { "a token with duplicateLocationId", 1, "WARNING", { tok { id = "a", state = "duplicateLocationId" } } },
    { "an expired token", 2, "CRITICAL", { tok { id = "a" }, tok { id = "b", state = "expired", expires_in_days = -3 } } },
    { "an invalid token", 2, "CRITICAL", { tok { id = "a", state = "invalid" } } },
    { "a token expiring within 7 days", 2, "CRITICAL", { tok { id = "a", expires_in_days = 3 } } },
    { "a critical and a warning token", 2, "CRITICAL",
      { tok { id = "a", expires_in_days = 20 }, tok { id = "b", expires_in_days = 2 } } },
  }

  for _, case in ipairs(tenants) do
    local what, code, status, tokens = case[1], case[2], case[3], case[4]
    it(("%s: %s, exit %d in every format"):format(what, status, code), function()
      fx.server:tokens(tokens)
      local r = fx.cli.run({ "check" }, fx.env)
      assert.equal(code, r.code, r.err)
      local first = r.out:match("^([^\n]*)")
      local summary, perf = first:match("^VPP " .. status .. " %- ([^|]+) | (.+)$")
      assert.truthy(summary, first)
      check_perfdata(perf)
      assert.matches("tokens=" .. #tokens .. ";", perf)
      -- A line per token needing care, after the status line.
      local extra = select(2, r.out:gsub("\n", "")) - 1
      assert.equal(code == 0 and 0 or (status == "CRITICAL" and what:find("and a warning") and 2 or 1), extra)

      r = fx.cli.run({ "check", "--format", "json" }, fx.env)
      assert.equal(code, r.code, r.err)
      local j = cjson.decode(r.out)
      assert.equal(status, j.status)
      assert.equal(code, j.exit_code)
      assert.equal(#tokens, #j.tokens)

      r = fx.cli.run({ "check", "--format", "prometheus" }, fx.env)
      assert.equal(code, r.code, r.err)
      local samples = check_prometheus(r.out)
      local found
      for _, s in ipairs(samples) do
        if s.name == "vpp_check_status" then found = s.value end
      end
      assert.equal(code, found)
    end)
  end

  it("--warn-days and --crit-days move the thresholds", function()
    fx.server:tokens { tok { id = "a", expires_in_days = 20 } }
    assert.equal(0, fx.cli.run({ "check", "--warn-days", "10", "--crit-days", "5" }, fx.env).code)
    assert.equal(2, fx.cli.run({ "check", "--warn-days", "60", "--crit-days", "25" }, fx.env).code)
    local r = fx.cli.run({ "check", "--warn-days", "60", "--crit-days", "5" }, fx.env)
    assert.equal(1, r.code)
    local left = tonumber(r.out:match("min_days_left=(%d+%.%d+);60:;5:"))
    assert.is_true(left > 19.9 and left <= 20, r.out)
  end)

  local function samples_by_labels(out)
    local by = {}
    for _, s in ipairs(check_prometheus(out)) do
      by[s.name] = by[s.name] or {}
      by[s.name][s.labels] = s.value
    end
    return by
  end

  it("--format prometheus writes per-token gauges labelled by id, display name and Apple id", function()
    local expires = os.time() + 100 * 86400
    fx.server:tokens {
      tok { id = "a", displayName = 'Oslo "HQ" \\ north', appleId = "a@example.com", expires_in_days = 100 },
      tok { id = "b", state = "expired", lastSyncStatus = "failed", appleId = "b@example.com", expires_in_days = -1 },
    }
    local r = fx.cli.run({ "check", "--format", "prometheus", "--api-version", "beta" }, fx.env)
    assert.equal(2, r.code)
    assert.matches("^# VPP CRITICAL %- ", r.out)
    local by = samples_by_labels(r.out)
    local a = 'tenant="default",id="a",display_name="Oslo \\"HQ\\" \\\\ north",apple_id="a@example.com"'
    local b = 'tenant="default",id="b",display_name="b",apple_id="b@example.com"'
    assert.is_true(math.abs(by.vpp_token_expiry_timestamp_seconds["{" .. a .. "}"] - expires) < 5)
    assert.truthy(by.vpp_token_last_sync_timestamp_seconds["{" .. a .. "}"])
    assert.equal(1, by.vpp_token_state["{" .. a .. ',state="valid"}'])
    assert.equal(0, by.vpp_token_state["{" .. a .. ',state="expired"}'])
    assert.equal(1, by.vpp_token_state["{" .. b .. ',state="expired"}'])
    assert.equal(1, by.vpp_token_last_sync_status["{" .. b .. ',status="failed"}'])
    assert.equal(0, by.vpp_token_last_sync_status["{" .. b .. ',status="completed"}'])
    assert.equal(1, by.vpp_graph_up['{tenant="default"}'])
  end)

  it("on v1.0 (no displayName there) the series differ by apple_id, and text lines name tokens by Apple id", function()
    fx.server:tokens {
      tok { id = "a", displayName = "beta only", appleId = "a@example.com", state = "expired", expires_in_days = -1 },
      tok { id = "b", displayName = "beta only", appleId = "b@example.com", state = "expired", expires_in_days = -1 },
    }
    local r = fx.cli.run({ "check", "--format", "prometheus" }, fx.env)
    assert.equal(2, r.code)
    local by = samples_by_labels(r.out)
    assert.equal(1, by.vpp_token_state['{tenant="default",id="a",display_name="",apple_id="a@example.com",state="expired"}'])
    assert.equal(1, by.vpp_token_state['{tenant="default",id="b",display_name="",apple_id="b@example.com",state="expired"}'])
    assert.falsy(r.out:find("beta only", 1, true))
    r = fx.cli.run({ "check" }, fx.env)
    assert.truthy(r.out:find("a@example.com", 1, true), r.out)
    assert.truthy(r.out:find("b@example.com", 1, true), r.out)
  end)

  it("UNKNOWN (3) when Graph cannot be asked, in every format", function()
    fx.server:program("@list", { { status = 500, error = "InternalServerError", message = "boom" } })
    local r = fx.cli.run({ "check" }, fx.env)
    assert.equal(3, r.code)
    assert.matches("^VPP UNKNOWN %- cannot ask Graph: http 500 InternalServerError: boom", r.out)
    fx.server:program("@list", { { status = 500, error = "InternalServerError" } })
    r = fx.cli.run({ "check", "--format", "json" }, fx.env)
    assert.equal(3, r.code)
    local j = cjson.decode(r.out)
    assert.same({ "UNKNOWN", 500, "InternalServerError" }, { j.status, j.error.status, j.error.code })
    fx.server:program("@list", { { status = 500, error = "InternalServerError" } })
    r = fx.cli.run({ "check", "--format", "prometheus" }, fx.env)
    assert.equal(3, r.code)
    local up
    for _, s in ipairs(check_prometheus(r.out)) do
      if s.name == "vpp_graph_up" then up = s.value end
    end
    assert.equal(0, up)
  end)
end)
