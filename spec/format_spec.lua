-- vpp.cli.format's handling of text from the network: valid UTF-8 always,
-- control characters shown rather than acted on.  Pure, no server.
local format = require "vpp.cli.format"
local cjson = require "cjson"

describe("vpp.cli.format on text from Graph", function()
  it("utf8 replaces each invalid sequence with U+FFFD and keeps valid text as it is", function()
    local fffd = "\239\191\189"
    assert.equal("ok é 日本 🍎", format.utf8("ok é 日本 🍎"))
    assert.equal("a" .. fffd .. "b", format.utf8("a\255b"))
    assert.equal(fffd .. fffd, format.utf8("\192\128"), "overlong NUL")
    assert.equal(fffd .. fffd .. fffd, format.utf8("\237\160\128"), "a surrogate")
    assert.equal(fffd .. fffd .. fffd .. fffd, format.utf8("\244\144\128\128"), "beyond U+10FFFF")
    assert.equal("x" .. fffd .. fffd, format.utf8("x\226\130"), "cut short")
  end)

  it("visible shows C0, DEL, C1 and bidirectional controls as escapes", function()
    assert.equal("\\x1b[2Jname\\x0d\\x0a\\x07\\x7f", format.visible("\27[2Jname\r\n\7\127"))
    assert.equal("\\u009b31m", format.visible("\194\15531m"))
    assert.equal("abc\\u202edcba\\u2066", format.visible("abc\226\128\174dcba\226\129\166"))
    assert.equal("a|b", format.visible("a|b"))
    assert.equal("a\\x7cb", format.visible("a|b", nil, "|"))
    assert.equal("line\nnext\\x1b", format.visible("line\nnext\27", "\n"))
    assert.equal("tab\there", format.visible("tab\there", "\t"))
  end)

  it("every output format is valid and neutralised", function()
    local evil = "Oslo\27]0;owned\7 \255|\r\n\"x\","
    -- JSON: escapes controls, parses, and has no invalid byte.
    local j = format.json({ name = evil })
    assert.falsy(j:find("\27", 1, true))
    assert.falsy(j:find("\255", 1, true))
    assert.equal("Oslo\27]0;owned\7 \239\191\189|\r\n\"x\",", cjson.decode(j).name)
    -- CSV: quoted for its CR, LF, quote and comma; ESC and BEL shown.
    local csv = format.csv({ { name = evil } }, { "name" })
    assert.equal('name\r\n"Oslo\\x1b]0;owned\\x07 \239\191\189|\r\n""x"","\r\n', csv)
    -- A table for people: one line, nothing a terminal acts on.
    local t = format.table({ "NAME" }, { { evil } }, false)
    assert.equal(2, select(2, t:gsub("\n", "")))
    assert.falsy(t:sub(6, -2):find("[%c\127]"), t)
  end)
end)
