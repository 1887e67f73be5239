-- Text from Graph is data: names with escape sequences, CR/LF, "|" and
-- invalid UTF-8 come out neutralised in the table and the plugin text, and
-- as valid UTF-8 JSON, CSV and Prometheus (each read back by a strict parser).
local support = require "support"
local cjson = require "cjson"
local sys = require "sys"

local PYTHON = "/usr/bin/python3" -- Debian's, with python3-prometheus-client

local A = "6d1a2c3b-0000-4000-8000-00000000000a"
local B = "7e2b3d4c-0000-4000-8000-00000000000b"
-- Clear the screen, set the window title, an 8-bit CSI, a bidi override,
-- a line break, a perfdata bar, invalid UTF-8, and a bell.
local EVIL = "Oslo\27[2J\27]0;pwned\7 \194\155\226\128\174HQ\r\nfake | perf=1 \255\254 end\7"

-- Bytes a terminal acts on: C0 controls but LF, DEL, and the UTF-8 of C1
-- controls and the bidi overrides.
local function acted_on(s)
  return s:find("[%z\1-\9\11-\31\127]") or s:find("\194[\128-\159]") or s:find("\226\128[\170-\174]")
end

local function python(code, input)
  local script, data, out = os.tmpname(), os.tmpname(), os.tmpname()
  sys.write_file(script, code)
  sys.write_file(data, input)
  local ok = sys.execute(("%s %s %s >%s 2>&1"):format(PYTHON, script, data, out))
  local text = sys.read_file(out)
  os.remove(script)
  os.remove(data)
  os.remove(out)
  return ok, text
end

describe("text from Graph in the command's output", function()
  local fx = support.cli_fixture { tokens = 3 }
  setup(fx.start)
  teardown(fx.stop)
  before_each(function()
    fx.fresh()
    fx.server:tokens {
      support.vpp_token { id = A, displayName = EVIL, appleId = "a\27[31m@example.com", organizationName = EVIL,
        state = "invalid" },
      support.vpp_token { id = B, displayName = "Lyon", expires_in_days = 3 },
    }
    fx.server:apps { { token = A, id = "app-1", displayName = EVIL, bundleId = "com.evil\r\napp", total = 10, used = 10 } }
  end)

  local function run(args)
    local r = fx.cli.run(args, fx.env)
    return r
  end

  it("the table shows each row on one line, with the controls as \\x escapes", function()
    local r = run { "list", "--api-version", "beta" }
    assert.equal(0, r.code, r.err)
    assert.falsy(acted_on(r.out), r.out)
    assert.equal(3, #support.lines(r.out))
    assert.truthy(r.out:find("Oslo\\x1b[2J\\x1b]0;pwned\\x07 \\u009b\\u202eHQ\\x0d\\x0afake | perf=1 \239\191\189\239\191\189 end\\x07",
      1, true), r.out)
    r = run { "get", A, "--api-version", "beta" }
    assert.falsy(acted_on(r.out), r.out)
    r = run { "licenses", "--api-version", "beta" }
    assert.equal(0, r.code, r.err)
    assert.falsy(acted_on(r.out), r.out)
    assert.equal(2, #support.lines(r.out))
  end)

  it("the plugin text: no control character, no | from data, a line per token needing care", function()
    local r = run { "check", "--api-version", "beta" }
    assert.equal(2, r.code, r.err)
    assert.falsy(acted_on(r.out), r.out)
    local l = support.lines(r.out)
    assert.equal(3, #l, r.out)
    -- One "|" in the whole output: the one before the perfdata.
    assert.equal(1, select(2, r.out:gsub("|", "")), r.out)
    assert.matches("^VPP CRITICAL %- [^|]* | tokens=2;", l[1])
    assert.matches("fake \\x7c perf=1", r.out, 1, true)
  end)

  it("JSON is valid UTF-8 that a strict parser reads, the data's controls escaped", function()
    for _, args in ipairs { { "list", "--format", "json" }, { "check", "--format", "json" },
      { "licenses", "--format", "json" }, { "get", A, "--format", "json" } } do
      table.insert(args, "--api-version")
      table.insert(args, "beta")
      local r = run(args)
      assert.is_true(r.code == 0 or r.code == 2, r.err)
      assert.falsy(acted_on(r.out), r.out)
      local ok, text = python("import json, sys\njson.load(open(sys.argv[1], encoding='utf-8', errors='strict'))\n", r.out)
      assert.is_true(ok, table.concat(args, " ") .. ": " .. text)
      assert.truthy(cjson.decode(r.out))
    end
    local listed = cjson.decode(run({ "list", "--format", "json", "--api-version", "beta" }).out)
    assert.equal("Oslo\27[2J\27]0;pwned\7 \194\155\226\128\174HQ\r\nfake | perf=1 \239\191\189\239\191\189 end\7",
      listed[1].displayName)
  end)

  it("CSV is valid UTF-8 and RFC 4180 (the CR LF quoted), a row per token", function()
    local r = run { "list", "--format", "csv", "--api-version", "beta" }
    assert.equal(0, r.code, r.err)
    local ok, text = python([==[
import csv, sys
rows = list(csv.reader(open(sys.argv[1], encoding='utf-8', errors='strict', newline='')))
assert len(rows) == 3, rows
name = rows[1][rows[0].index('displayName')]
assert '\r\n' in name and '\x1b' not in name and '\\x1b' in name, repr(name)
]==], r.out)
    assert.is_true(ok, text)
  end)

  it("the Prometheus textfile is read by prometheus_client's parser, label values neutralised", function()
    local r = run { "check", "--format", "prometheus", "--api-version", "beta" }
    assert.equal(2, r.code, r.err)
    assert.falsy(acted_on(r.out), r.out)
    local ok, text = python([==[
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding='utf-8', errors='strict').read()
names = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        names.setdefault(s.name, []).append(s.labels)
assert names['vpp_check_status'][0]['tenant'] == 'default'
shown = [l['display_name'] for l in names['vpp_token_expiry_timestamp_seconds']]
assert any(n.startswith('Oslo\\x1b[2J') and '\ufffd' in n and '\\x0d\\x0a' in n for n in shown), shown
apps = names['vpp_app_licenses_used']
assert apps[0]['bundle_id'] == 'com.evil\\x0d\\x0aapp', apps
print(len(names))
]==], r.out)
    assert.is_true(ok, text)
  end)

  it("Graph's error messages reach stderr neutralised", function()
    fx.server:program(A, { { status = 400, error = "BadRequest", message = "bad \27]0;title\7 name\r\nforged line" } })
    local r = run { "get", A }
    assert.equal(1, r.code)
    assert.falsy(acted_on(r.err), r.err)
    assert.equal(1, #support.lines(r.err), r.err)
    assert.matches("bad [^\n]*title[^\n]* name[^\n]*forged line", r.err)
  end)
end)
