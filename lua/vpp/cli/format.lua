--- Output of the `vpp` command: aligned tables for people (coloured on a
-- terminal), JSON and CSV for machines.  Pure Lua.
local cjson = require "cjson"
local core = require "vpp.core"
local tokens = require "vpp.tokens"
local health = require "vpp.health"

local M = {}

-- ---- text from the network is data ------------------------------------------

local REPLACEMENT = "\239\191\189" -- U+FFFD

--- s with every invalid UTF-8 sequence (stray continuation bytes,
-- overlong forms, surrogates, beyond U+10FFFF, cut short) replaced by
-- U+FFFD, as JSON parsers and the Prometheus text format require.
function M.utf8(s)
  if not s:find("[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    end
    local ok = len > 0 and i + len - 1 <= n
    for k = 1, len - 1 do
      if not ok then break end
      local b = s:byte(i + k)
      if k == 1 then ok = b >= lo and b <= hi else ok = b >= 0x80 and b <= 0xBF end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = REPLACEMENT
      i = i + 1
    end
  end
  return table.concat(out)
end

-- What a terminal would act on: C0 controls and DEL, C1 controls (U+0080
-- to U+009F, ESC's 8-bit twins), and the bidirectional overrides that
-- reorder what is shown (U+202A-U+202E, U+2066-U+2069).
local C1 = "\194[\128-\159]"
local BIDI = "\226\128[\170-\174]"
local ISOLATE = "\226\129[\166-\169]"

local function codepoint_escape(seq)
  local b1, b2, b3 = seq:byte(1, 3)
  local cp = b3 and ((b1 % 16) * 4096 + (b2 % 64) * 64 + b3 % 64) or ((b1 % 32) * 64 + b2 % 64)
  return ("\\u%04x"):format(cp)
end

--- Text for a terminal: valid UTF-8, each control character shown as
-- \xHH (\u00HH, \u20HH for the C1 and bidirectional ones) instead of
-- acted on.  keep: characters left as they are ("\n" for a format that
-- escapes newlines itself); also: more characters to show escaped ("|").
function M.visible(s, keep, also)
  s = M.utf8(tostring(s))
  local class = "[%c\127" .. (also or "") .. "]"
  s = s:gsub(class, function(c)
    if keep and keep:find(c, 1, true) then return c end
    return ("\\x%02x"):format(c:byte())
  end)
  if s:find("[\194\226]") then
    s = s:gsub(C1, codepoint_escape):gsub(BIDI, codepoint_escape):gsub(ISOLATE, codepoint_escape)
  end
  return s
end

-- ---- JSON --------------------------------------------------------------

-- lua-cjson decodes [] and {} alike into an empty table; these properties
-- of the token entities are arrays, so an empty one goes back out as [].
local array_properties = { roleScopeTagIds = true, tokenActionResults = true }

-- lua-cjson escapes every "/" (legal, but URLs become unreadable).  Since it
-- escapes all of them, a backslash it writes before "/" is always that
-- escape: a backslash of the data comes out doubled, then "\/".
function M.json_string(s)
  s = cjson.encode(M.utf8(s)):gsub("\\/", "/")
  -- cjson leaves the C1 controls and bidi overrides as they are; JSON
  -- printed on a terminal must not carry them raw.
  if s:find("[\194\226]") then
    s = s:gsub(C1, codepoint_escape):gsub(BIDI, codepoint_escape):gsub(ISOLATE, codepoint_escape)
  end
  return s
end

-- indent is nil for compact output.
local function encode(v, key, indent, out)
  local t = type(v)
  if v == core.null or v == nil then
    out[#out + 1] = "null"
  elseif t == "string" then
    out[#out + 1] = M.json_string(v)
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif math.type and math.type(v) == "integer" then
      out[#out + 1] = tostring(v)
    elseif not math.type and v % 1 == 0 and math.abs(v) < 2 ^ 53 then -- Lua before 5.3
      out[#out + 1] = string.format("%.0f", v)
    else
      out[#out + 1] = string.format("%.14g", v)
    end
  elseif t == "table" then
    local inner = indent and indent .. "  "
    local open_sep, sep, close_sep = "", ",", ""
    if indent then open_sep, sep, close_sep = "\n" .. inner, ",\n" .. inner, "\n" .. indent end
    local is_array = #v > 0 or (next(v) == nil and array_properties[key]) or getmetatable(v) == M.array_mt
    if next(v) == nil then
      out[#out + 1] = is_array and "[]" or "{}"
    elseif is_array then
      out[#out + 1] = "[" .. open_sep
      for i = 1, #v do
        if i > 1 then out[#out + 1] = sep end
        encode(v[i], nil, inner, out)
      end
      out[#out + 1] = close_sep .. "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{" .. open_sep
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = sep end
        out[#out + 1] = M.json_string(k) .. (indent and ": " or ":")
        encode(v[k], k, inner, out)
      end
      out[#out + 1] = close_sep .. "}"
    end
  else
    error("vpp: cannot write a " .. t .. " as JSON", 2)
  end
end

--- A list marked so that, even empty, it is written as a JSON array.
M.array_mt = {}
function M.array(t) return setmetatable(t or {}, M.array_mt) end

--- JSON with sorted keys (stable output for diffs and cron mail): indented
-- and ending in a newline, or on one line when compact.
function M.json(v, compact)
  local out = {}
  encode(v, nil, not compact and "" or nil, out)
  return table.concat(out) .. (compact and "" or "\n")
end

-- ---- errors --------------------------------------------------------------

--- An error (or a message) as one line without the "vpp: " that
-- tostring(err) starts with: the command adds its own.
function M.message(err)
  return M.visible((tostring(err):gsub("^vpp: ", "")))
end

--- The fields of an error that machine output carries.
function M.error_fields(err)
  if type(err) ~= "table" then return { message = tostring(err) } end
  return { kind = err.kind, code = err.code, status = err.status, message = err.message,
    request_id = err.request_id }
end

-- ---- CSV ---------------------------------------------------------------

local function csv_field(v)
  if v == nil or v == core.null then return "" end
  if type(v) == "table" then v = M.json(v, true) end
  -- Quoting carries CR, LF and TAB; other controls would act on a terminal.
  v = M.visible(tostring(v), "\r\n\t")
  if v:find('[,"\r\n]') then v = '"' .. v:gsub('"', '""') .. '"' end
  return v
end

--- RFC 4180: a header row of the field names, then one row per record.
function M.csv(records, fields)
  local lines = { table.concat(fields, ",") }
  for _, r in ipairs(records) do
    local row = {}
    for i, f in ipairs(fields) do row[i] = csv_field(r[f]) end
    lines[#lines + 1] = table.concat(row, ",")
  end
  return table.concat(lines, "\r\n") .. "\r\n"
end

-- ---- tables for people ---------------------------------------------------

local codes = { red = "31", green = "32", yellow = "33", cyan = "36", dim = "2", bold = "1" }

--- Whether to colour: when = "always", "never", or "auto" (the default:
-- a terminal, that is not TERM=dumb, and no NO_COLOR -- https://no-color.org,
-- any non-empty value).  terminal: whether the output is one.
function M.use_colour(when, terminal)
  if when == "always" then return true end
  if when == "never" then return false end
  local no = os.getenv("NO_COLOR")
  return (no == nil or no == "") and os.getenv("TERM") ~= "dumb" and terminal and true or false
end

--- Columns a string takes: its UTF-8 characters (bytes that do not continue
-- a sequence), on every Lua (utf8 is 5.3+).
function M.width(s)
  return select(2, s:gsub("[^\128-\191]", ""))
end
local width = M.width

--- Aligned columns: cells are strings or { text, colour }; the header is
-- bold.  Colour codes are left out when colour is false.
function M.table(header, rows, colour)
  local widths, shown = {}, {}
  for i, h in ipairs(header) do widths[i] = width(h) end
  for r, row in ipairs(rows) do
    shown[r] = {}
    for i, cell in ipairs(row) do
      -- Every cell is shown neutralised: names and messages come from Graph.
      local text = M.visible(type(cell) == "table" and cell[1] or cell)
      shown[r][i] = type(cell) == "table" and { text, cell[2] } or text
      if width(text) > widths[i] then widths[i] = width(text) end
    end
  end
  rows = shown
  local function line(cells, default_colour)
    local parts = {}
    for i, cell in ipairs(cells) do
      local text, c = cell, default_colour
      if type(cell) == "table" then text, c = cell[1], cell[2] or default_colour end
      local pad = i < #cells and string.rep(" ", widths[i] - width(text)) or ""
      if colour and c then text = "\27[" .. codes[c] .. "m" .. text .. "\27[0m" end
      parts[i] = text .. pad
    end
    return (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  local out = { line(header, "bold") }
  for _, row in ipairs(rows) do out[#out + 1] = line(row) end
  return table.concat(out, "\n") .. "\n"
end

-- ---- token views -----------------------------------------------------------

M.token_fields = { "id", "displayName", "organizationName", "appleId", "vppTokenAccountType", "state",
  "lastSyncStatus", "lastSyncDateTime", "expirationDateTime" }

local state_colour = { valid = "green", expired = "red", invalid = "red" }
local sync_colour = { completed = "green", failed = "red", inProgress = "cyan" }

--- "2026-11-20 14:03" (UTC) for a Graph timestamp; "-" when absent.
function M.utc(ts, with_time)
  local t = tokens.parse_time(ts)
  if not t then return "-" end
  return os.date(with_time == false and "!%Y-%m-%d" or "!%Y-%m-%d %H:%M", math.floor(t))
end

--- Whole days until the token expires (negative once expired), counted
-- toward zero as `vpp check` words it (-22 is "expired 22 days ago"), or nil.
function M.days_left(token, now)
  local t = tokens.parse_time(token.expirationDateTime)
  if not t then return nil end
  return health.whole_days((t - now) / 86400)
end

-- A token's name for people: displayName (beta only), else appleId (one
-- per location token, so v1.0 tenants get distinct names), else the
-- organization's.
local function name_of(t)
  for _, k in ipairs { "displayName", "appleId", "organizationName" } do
    local name = t[k]
    if type(name) == "string" and name ~= "" then return name end
  end
  return "-"
end
M.name_of = name_of

local function text(v)
  if v == nil or v == core.null then return "-" end
  return tostring(v)
end

--- The people's view of tokens: short id, name, state, last sync, expiry.
-- opts: warn_days and crit_days colour the days left; tenants (token ->
-- tenant name) adds a TENANT column first.
function M.token_table(list, opts)
  local now = opts.now or core._time()
  local rows = {}
  for _, t in ipairs(list) do
    local days = M.days_left(t, now)
    local days_colour
    local expired = tokens.parse_time(t.expirationDateTime) and tokens.parse_time(t.expirationDateTime) <= now
    if expired then days_colour = "red"
    elseif days and days < opts.crit_days then days_colour = "red"
    elseif days and days < opts.warn_days then days_colour = "yellow" end
    local row = {
      text(t.id):sub(1, 8), name_of(t),
      { text(t.state), state_colour[t.state] or "yellow" },
      { text(t.lastSyncStatus), sync_colour[t.lastSyncStatus] },
      M.utc(t.lastSyncDateTime), M.utc(t.expirationDateTime, false),
      { days and tostring(days) or "-", days_colour },
    }
    if opts.tenants then table.insert(row, 1, opts.tenants[t] or "-") end
    rows[#rows + 1] = row
  end
  local header = { "ID", "NAME", "STATE", "SYNC", "LAST SYNC (UTC)", "EXPIRES", "DAYS" }
  if opts.tenants then table.insert(header, 1, "TENANT") end
  return M.table(header, rows, opts.colour)
end

--- One token, a property per line (nested values as compact JSON).
function M.token_detail(t, colour)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local rows = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then v = M.json(v, true) else v = text(v) end
    rows[#rows + 1] = { k, v }
  end
  return M.table({ "PROPERTY", "VALUE" }, rows, colour)
end

return M
