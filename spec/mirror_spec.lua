-- The returned tables mirror Graph's JSON exactly.
local support = require "support"
local vpp = require "vpp"

describe("returned tables mirror the JSON", function()
  local f = support.fake_graph()
  setup(f.start)
  teardown(f.stop)
  before_each(f.fresh)
  after_each(f.done)

  local function answer(id, body, extra)
    local r = { status = 200, body = body }
    for k, v in pairs(extra or {}) do r[k] = v end
    f.server:program(id, { r })
  end

  it("keeps keys, @odata.type, nesting, booleans and unknown properties", function()
    answer("t1", [==[{"value":{"@odata.type":"#microsoft.graph.vppToken","id":"t1",
      "state":"valid","automaticallyUpdateApps":true,"dataSharingConsentGranted":false,
      "tokenActionResults":[{"@odata.type":"microsoft.graph.vppTokenActionResult","actionName":"Action Name value","actionState":"pending"}],
      "roleScopeTagIds":["0","7"],"futureBetaProperty":{"nested":{"deeper":[1,[2,3]]}}}}]==])
    local tok = assert(f.client:sync_licenses("t1"))
    assert.equal("#microsoft.graph.vppToken", tok["@odata.type"])
    assert.equal("t1", tok.id)
    assert.is_true(tok.automaticallyUpdateApps)
    assert.is_false(tok.dataSharingConsentGranted)
    assert.equal("pending", tok.tokenActionResults[1].actionState)
    assert.equal("microsoft.graph.vppTokenActionResult", tok.tokenActionResults[1]["@odata.type"])
    assert.same({ "0", "7" }, tok.roleScopeTagIds)
    assert.same({ nested = { deeper = { 1, { 2, 3 } } } }, tok.futureBetaProperty)
    assert.is_nil(tok.value)
  end)

  it("gives JSON null as vpp.null", function()
    answer("t2", [[{"id":"t2","lastSyncDateTime":null,"list":[null,1]}]])
    local tok = assert(f.client:get_token("t2"))
    assert.equal(vpp.null, tok.lastSyncDateTime)
    assert.equal(vpp.null, tok.list[1])
    assert.not_nil(vpp.null)
  end)

  local numbers = [[{"id":"t3","count":42,"negative":-7,"zero":0,"big":4503599627370496,
      "ratio":2.5,"tiny":1e-3,"exp":1.5e3,"nested":[{"n":9}]}]]

  it("gives numbers their exact values", function()
    answer("t3", numbers)
    local tok = assert(f.client:get_token("t3"))
    assert.same({ 42, -7, 0, 4503599627370496, 2.5, 1e-3, 1500, 9 },
      { tok.count, tok.negative, tok.zero, tok.big, tok.ratio, tok.tiny, tok.exp, tok.nested[1].n })
  end)

  if math.type then
    it("gives integral numbers as Lua integers and the others as floats (Lua 5.3+)", function()
      answer("t3", numbers)
      local tok = assert(f.client:get_token("t3"))
      assert.equal("integer", math.type(tok.count))
      assert.equal("integer", math.type(tok.negative))
      assert.equal("integer", math.type(tok.zero))
      assert.equal("integer", math.type(tok.big))
      assert.equal("integer", math.type(tok.nested[1].n))
      assert.equal("float", math.type(tok.ratio))
      assert.equal("float", math.type(tok.tiny))
      assert.equal("integer", math.type(tok.exp)) -- 1.5e3 is the integer 1500
    end)
  else
    it("has no integer subtype to give before Lua 5.3: every number is a float", function()
      answer("t3", numbers)
      local tok = assert(f.client:get_token("t3"))
      assert.is_nil(math.type)
      assert.equal("number", type(tok.count))
      assert.equal(42.0, tok.count)
    end)
  end

  it("gives empty arrays and objects as empty tables", function()
    answer("t4", [[{"id":"t4","roleScopeTagIds":[],"tokenActionResults":[],"extra":{}}]])
    local tok = assert(f.client:get_token("t4"))
    assert.same({}, tok.roleScopeTagIds)
    assert.same({}, tok.tokenActionResults)
    assert.same({}, tok.extra)
  end)

  it("keeps strings byte for byte and decodes UTF-8 escapes", function()
    answer("t5", '{"id":"t5","organizationName":"Z\\u00fcrich \\u65e5\\u672c \\ud83d\\ude00",'
      .. '"displayName":"Säo Paulo – 東京","locationName":"tab\\tquote\\"slash\\/nl\\n"}')
    local tok = assert(f.client:get_token("t5"))
    assert.equal("Z\195\188rich \230\151\165\230\156\172 \240\159\152\128", tok.organizationName)
    assert.equal("Säo Paulo – 東京", tok.displayName)
    assert.equal('tab\tquote"slash/nl\n', tok.locationName)
  end)

  it("accepts the bare entity as well as the {value: ...} wrapper", function()
    answer("t6", [[{"value":{"id":"t6","state":"valid"}}]])
    answer("t7", [[{"id":"t7","state":"expired","@odata.context":"x"}]])
    local wrapped = assert(f.client:sync_licenses("t6"))
    local bare = assert(f.client:sync_licenses("t7"))
    assert.same({ id = "t6", state = "valid" }, wrapped)
    assert.same({ id = "t7", state = "expired", ["@odata.context"] = "x" }, bare)
  end)

  it("mirrors the documented syncLicenses example field for field", function()
    local doc = [[{"value":{"@odata.type":"#microsoft.graph.vppToken","id":"9ceb2f92-2f92-9ceb-922f-eb9c922feb9c",
      "organizationName":"Organization Name value","vppTokenAccountType":"education","appleId":"Apple Id value",
      "expirationDateTime":"2016-12-31T23:57:57.2481234-08:00","lastSyncDateTime":"2017-01-01T00:02:49.3205976-08:00",
      "token":"Token value","lastModifiedDateTime":"2017-01-01T00:00:35.1329464-08:00","state":"valid",
      "lastSyncStatus":"inProgress","automaticallyUpdateApps":true,"countryOrRegion":"Country Or Region value"}}]]
    answer("9ceb2f92-2f92-9ceb-922f-eb9c922feb9c", doc)
    local tok = assert(f.client:sync_licenses("9ceb2f92-2f92-9ceb-922f-eb9c922feb9c"))
    assert.same(require("cjson").decode(doc).value, tok)
  end)

  it("returns a table holding the id for a 2xx with an empty body", function()
    answer("t8", "", { status = 204 })
    answer("org-token", "", { status = 200 })
    assert.same({ id = "t8" }, f.client:sync_licenses("t8"))
    assert.same({ id = "org-token" }, f.client:sync_apps("org", "org-token"))
  end)

  it("mirrors list pages item by item", function()
    f.server:program("@list", { { body = [[{"value":[{"id":"a","n":1},{"id":"b","x":null,"e":[]}]}]] } })
    local list = assert(f.client:list_tokens())
    assert.equal(2, #list)
    assert.same({ id = "a", n = 1 }, list[1])
    if math.type then assert.equal("integer", math.type(list[1].n)) end
    assert.equal(vpp.null, list[2].x)
    assert.same({}, list[2].e)
  end)

  it("refuses what is not JSON (RFC 8259) as invalid_response, naming the byte", function()
    local bad = { "01", "1.", ".5", "-", "+1", "[1,]", '{"a":1,}', "NaN", "Infinity", "0x10", '{"a" 1}', "tru",
      '{"id":"x"} x', '"open', '"\\ud800"', '"\\udc00x"', '"\\x"', '{"a":[}', string.rep("[", 1001) .. string.rep("]", 1001),
      "{'a':1}", '{"a":1}}', '{"id":"a\0b"}' }
    for i, body in ipairs(bad) do
      answer("bad" .. i, body)
      local tok, err = f.client:get_token("bad" .. i)
      assert.is_nil(tok, body)
      assert.same({ "decode", "invalid_response" }, { err.kind, err.code }, body)
      assert.is_truthy(err.message:match("at byte %d+%)$"), body .. ": " .. err.message)
    end
  end)

  it("reads what is JSON however it is laid out", function()
    answer("ws", ' \r\n\t{ "id" : "ws" , "a" : [ 1 , -0 , 1E2 , 1e400 , true , false , null ] ,'
      .. ' "nul" : "a\\u0000b", "deep": ' .. string.rep("[", 999) .. string.rep("]", 999) .. ' }\n')
    local tok = assert(f.client:get_token("ws"))
    assert.equal("ws", tok.id)
    assert.same({ 1, 0, 100, math.huge, true, false, vpp.null }, tok.a)
    assert.equal("a\0b", tok.nul)
  end)

  it("keeps every member of a wide object, twice over (the name cache), the last of two equal names", function()
    local parts = {}
    for i = 1, 300 do parts[i] = ('"member-%d-%s":%d'):format(i, string.rep("x", i % 50), i) end
    local body = '{"id":"wide","dup":1,' .. table.concat(parts, ",") .. ',"dup":2,"esc\\u0061ped":3}'
    for _ = 1, 2 do
      answer("wide", body)
      local tok = assert(f.client:get_token("wide"))
      for i = 1, 300 do assert.equal(i, tok[("member-%d-%s"):format(i, string.rep("x", i % 50))]) end
      assert.equal(2, tok.dup)
      assert.equal(3, tok.escaped)
    end
  end)
end)
