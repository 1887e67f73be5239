-- vpp.parse_time, vpp.filter and vpp.count_by on token tables.
local vpp = require "vpp"

local function near(expected, actual)
  assert.is_number(actual)
  assert.is_true(math.abs(expected - actual) < 1e-6, ("expected %.7f, got %.7f"):format(expected, actual))
end

describe("vpp.parse_time", function()
  it("reads the seed's timestamps, with offsets and 7-digit fractions", function()
    near(1483257477.2481234, vpp.parse_time("2016-12-31T23:57:57.2481234-08:00"))
    near(1483257769.3205976, vpp.parse_time("2017-01-01T00:02:49.3205976-08:00"))
    near(1483257635.1329464, vpp.parse_time("2017-01-01T00:00:35.1329464-08:00"))
  end)

  it("reads Z, positive offsets, no fraction and short fractions", function()
    near(0, vpp.parse_time("1970-01-01T00:00:00Z"))
    near(1709188200, vpp.parse_time("2024-02-29T12:00:00+05:30"))
    near(2147483648, vpp.parse_time("2038-01-19T03:14:08Z"))
    near(4107542400.5, vpp.parse_time("2100-03-01T00:00:00.5Z"))
    near(-62135596800, vpp.parse_time("0001-01-01T00:00:00Z")) -- Graph's "never"
    if math.type then assert.equal("float", math.type(vpp.parse_time("1970-01-01T00:00:00Z"))) end
  end)

  it("is the same instant whatever the offset", function()
    near(vpp.parse_time("2017-01-01T07:57:57.2481234Z"), vpp.parse_time("2016-12-31T23:57:57.2481234-08:00"))
  end)

  for _, bad in ipairs {
    "", "garbage", "2016-12-31", "2016-12-31T23:57:57", "2016-12-31 23:57:57Z", "2016-12-31T23:57:57.Z",
    "2016-13-01T00:00:00Z", "2016-00-01T00:00:00Z", "2023-02-29T00:00:00Z", "2016-04-31T00:00:00Z",
    "2016-12-31T24:00:00Z", "2016-12-31T23:60:00Z", "2016-12-31T23:59:60Z", "2016-12-31T23:57:57+0800",
    "2016-12-31T23:57:57+25:00", "2016-12-31T23:57:57Zjunk", " 2016-12-31T23:57:57Z",
  } do
    it("refuses " .. string.format("%q", bad), function()
      local t, err = vpp.parse_time(bad)
      assert.is_nil(t)
      assert.is_string(err)
    end)
  end

  it("refuses what is not a string", function()
    for _, v in ipairs { 42, true, {} } do
      local t, err = vpp.parse_time(v)
      assert.is_nil(t)
      assert.matches("expected a string", err)
    end
  end)
end)

describe("vpp.filter", function()
  local now = 1800000000 -- a fixed "now" for the expiry criteria
  local function at(days)
    return os.date("!%Y-%m-%dT%H:%M:%S.0000000Z", now + days * 86400)
  end
  local tokens = {
    { id = "a", state = "valid", lastSyncStatus = "completed", vppTokenAccountType = "business", expirationDateTime = at(200) },
    { id = "b", state = "valid", lastSyncStatus = "inProgress", vppTokenAccountType = "education", expirationDateTime = at(5) },
    { id = "c", state = "expired", lastSyncStatus = "failed", vppTokenAccountType = "business", expirationDateTime = at(-3) },
    { id = "d", state = "invalid", lastSyncStatus = "none", volumePurchaseProgramTokenAccountType = "education",
      expirationDateTime = at(20) },
    { id = "e", state = "valid", lastSyncStatus = "completed", vppTokenAccountType = "business", expirationDateTime = vpp.null },
  }
  local function ids(list)
    local out = {}
    for i, t in ipairs(list) do out[i] = t.id end
    return table.concat(out, ",")
  end

  it("keeps everything for no criteria, as a new array", function()
    local out = vpp.filter(tokens)
    assert.equal("a,b,c,d,e", ids(out))
    assert.not_equal(tokens, out)
    assert.equal(tokens[1], out[1]) -- the same token tables
  end)

  it("filters by state, one or any of a list", function()
    assert.equal("a,b,e", ids(vpp.filter(tokens, { state = "valid" })))
    assert.equal("c,d", ids(vpp.filter(tokens, { state = { "expired", "invalid" } })))
  end)

  it("filters by last sync status", function()
    assert.equal("b", ids(vpp.filter(tokens, { last_sync_status = "inProgress" })))
    assert.equal("c,d", ids(vpp.filter(tokens, { last_sync_status = { "failed", "none" } })))
  end)

  it("filters by account type, reading the legacy property too", function()
    assert.equal("b,d", ids(vpp.filter(tokens, { account_type = "education" })))
  end)

  it("filters tokens expiring within a time, leaving out expired ones and unknown dates", function()
    assert.equal("b", ids(vpp.filter(tokens, { expires_within = 7 * 86400, now = now })))
    assert.equal("b,d", ids(vpp.filter(tokens, { expires_within = 30 * 86400, now = now })))
    assert.equal("", ids(vpp.filter(tokens, { expires_within = 86400, now = now })))
  end)

  it("filters by expired, by expirationDateTime", function()
    assert.equal("c", ids(vpp.filter(tokens, { expired = true, now = now })))
    assert.equal("a,b,d", ids(vpp.filter(tokens, { expired = false, now = now })))
  end)

  it("uses the current time by default", function()
    local soon = { { id = "x", expirationDateTime = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3600) } }
    assert.equal("x", ids(vpp.filter(soon, { expires_within = 7200 })))
    assert.equal("", ids(vpp.filter(soon, { expired = true })))
  end)

  it("takes a where function, and combines every criterion with AND", function()
    assert.equal("e", ids(vpp.filter(tokens, { where = function(t) return t.expirationDateTime == vpp.null end })))
    assert.equal("a", ids(vpp.filter(tokens, {
      state = "valid", account_type = "business", expired = false, now = now,
      where = function(t) return t.id ~= "z" end,
    })))
  end)

  it("raises on unknown or mistyped criteria", function()
    assert.has_error(function() vpp.filter(tokens, { states = "valid" }) end, "vpp: unknown criterion 'states' for vpp.filter")
    assert.has_error(function() vpp.filter(tokens, { state = 3 }) end,
      "vpp.filter: criteria.state must be a string or a non-empty list of strings")
    assert.has_error(function() vpp.filter(tokens, { state = { "valid", 1 } }) end, "vpp.filter: criteria.state[2] must be a string")
    assert.has_error(function() vpp.filter(tokens, { expires_within = "7d" }) end,
      "vpp.filter: criteria.expires_within must be a number, got string")
    assert.has_error(function() vpp.filter(tokens, { expired = "yes" }) end,
      "vpp.filter: criteria.expired must be a boolean, got string")
    assert.has_error(function() vpp.filter(tokens, { where = true }) end,
      "vpp.filter: criteria.where must be a function, got boolean")
    assert.has_error(function() vpp.filter("tokens") end)
    assert.has_error(function() vpp.filter(tokens, "valid") end)
  end)
end)

describe("vpp.count_by", function()
  it("counts the values of a field", function()
    local tokens = { { state = "valid" }, { state = "valid" }, { state = "expired" }, { other = 1 } }
    assert.same({ valid = 2, expired = 1 }, vpp.count_by(tokens, "state"))
    assert.same({}, vpp.count_by({}, "state"))
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() vpp.count_by(nil, "state") end)
    assert.has_error(function() vpp.count_by({}, 1) end)
    -- Blamed on the caller's line, as Lua's own argument errors are.
    local ok, msg = pcall(function() vpp.filter({}, 7) end)
    assert.is_false(ok)
    assert.matches("^spec/tokens_spec%.lua:%d+: bad argument #2 to 'filter' %(criteria must be a table, got number%)$", msg)
    ok, msg = pcall(function() vpp.count_by("x", "state") end)
    assert.is_false(ok)
    assert.matches("^spec/tokens_spec%.lua:%d+: bad argument #1 to 'count_by' %(tokens must be a list of token tables, got string%)$",
      msg)
  end)
end)
