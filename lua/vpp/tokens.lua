--- Working with token tables: Graph timestamps, filtering by state and
-- expiry, counting.  Pure Lua, on the tables the client returns.
-- @module vpp.tokens
local M = {}

local function days_from_civil(y, m, d)
  -- Howard Hinnant's algorithm: days since 1970-01-01 in the proleptic
  -- Gregorian calendar, with no dependence on the local time zone.
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function is_leap(y)
  return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
end

local month_days = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

--- Seconds since the epoch (a float) for a Graph timestamp such as
-- "2016-12-31T23:57:57.2481234-08:00" or "2017-01-01T08:02:49Z" (fraction
-- optional, any number of digits); nil, message for anything else.
function M.parse_time(s)
  if type(s) ~= "string" then
    return nil, "not a timestamp: expected a string, got " .. type(s)
  end
  local y, mo, d, h, mi, sec, frac, zone =
    s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  if not y then return nil, "not a timestamp: " .. s end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if frac == "." then return nil, "not a timestamp (empty fraction): " .. s end
  local offset
  if zone == "Z" or zone == "z" then
    offset = 0
  else
    local sign, oh, om = zone:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil, "not a timestamp (no time zone): " .. s end
    oh, om = tonumber(oh), tonumber(om)
    if oh > 23 or om > 59 then return nil, "not a timestamp (bad offset): " .. s end
    offset = (oh * 3600 + om * 60) * (sign == "-" and -1 or 1)
  end
  local last = month_days[mo]
  if mo == 2 and is_leap(y) then last = 29 end
  if mo < 1 or mo > 12 or d < 1 or d > last or h > 23 or mi > 59 or sec > 59 then
    return nil, "not a timestamp (out of range): " .. s
  end
  local t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
  if frac ~= "" then t = t + tonumber("0" .. frac) end
  return t + 0.0
end

-- Raises "bad argument #n to 'fname' (what, got <type>)" at the caller's
-- caller unless v has type t.
local function check_arg(v, t, n, fname, what)
  if type(v) ~= t then
    error(("bad argument #%d to '%s' (%s, got %s)"):format(n, fname, what, type(v)), 3)
  end
end

-- One value or a list of them, as a set.
local function set_of(v, name)
  local set = {}
  if type(v) == "string" then
    set[v] = true
  elseif type(v) == "table" and #v > 0 then
    for i, s in ipairs(v) do
      if type(s) ~= "string" then
        error(("vpp.filter: criteria.%s[%d] must be a string"):format(name, i), 3)
      end
      set[s] = true
    end
  else
    error(("vpp.filter: criteria.%s must be a string or a non-empty list of strings"):format(name), 3)
  end
  return set
end

local criteria_types = {
  state = "set", last_sync_status = "set", account_type = "set",
  expires_within = "number", expired = "boolean", where = "function", now = "number",
}

--- The tokens matching every given criterion, in their order (a new array).
-- Criteria: state, last_sync_status, account_type (a string or a list: any
-- of), expires_within (seconds from now; expired tokens excluded), expired
-- (boolean), where (a function of the token), now (seconds since the epoch,
-- default the current time).  A token whose expirationDateTime is missing
-- or unreadable matches neither expires_within nor expired.
function M.filter(tokens, criteria)
  check_arg(tokens, "table", 1, "filter", "tokens must be a list of token tables")
  criteria = criteria or {}
  check_arg(criteria, "table", 2, "filter", "criteria must be a table")
  local core = require "vpp.core"
  core._check_keys(criteria, criteria_types, "criterion", " for vpp.filter")
  local sets = {}
  for k, v in pairs(criteria) do
    local kind = criteria_types[k]
    if kind == "set" then
      sets[k] = set_of(v, k)
    elseif type(v) ~= kind then
      error(("vpp.filter: criteria.%s must be a %s, got %s"):format(k, kind, type(v)), 2)
    end
  end
  local now = criteria.now or core._time()
  local within, expired = criteria.expires_within, criteria.expired
  local out = {}
  for _, t in ipairs(tokens) do
    local keep = true
    if sets.state and not sets.state[t.state] then keep = false end
    if keep and sets.last_sync_status and not sets.last_sync_status[t.lastSyncStatus] then keep = false end
    if keep and sets.account_type then
      local kind = t.vppTokenAccountType or t.volumePurchaseProgramTokenAccountType
      if not sets.account_type[kind] then keep = false end
    end
    if keep and (within ~= nil or expired ~= nil) then
      local at = M.parse_time(t.expirationDateTime)
      if not at then
        keep = false
      else
        if within ~= nil and not (at > now and at <= now + within) then keep = false end
        if expired ~= nil and (at <= now) ~= expired then keep = false end
      end
    end
    if keep and criteria.where and not criteria.where(t) then keep = false end
    if keep then out[#out + 1] = t end
  end
  return out
end

--- { [value] = count } of tokens[i][field]; tokens without the field are
-- not counted.
function M.count_by(tokens, field)
  check_arg(tokens, "table", 1, "count_by", "tokens must be a list of token tables")
  check_arg(field, "string", 2, "count_by", "field must be a string")
  local counts = {}
  for _, t in ipairs(tokens) do
    local v = t[field]
    if v ~= nil then counts[v] = (counts[v] or 0) + 1 end
  end
  return counts
end

--- When the syncs of sync_many's results started by Graph's clock (the
-- earliest Date header of their answers, which has whole seconds: one
-- second less), for wait_for_sync's since; nil when no answer had a Date.
function M.sync_started_at(results)
  local at
  for _, r in ipairs(results) do
    if r.token and r.date and (not at or r.date < at) then at = r.date end
  end
  return at and at - 1
end

return M
