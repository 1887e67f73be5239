--- Output of the `vpp` command: aligned tables for people (coloured on a
-- terminal), JSON and CSV for machines.  Pure Lua.
local cjson = require "cjson"
local core = require "vpp.core"
local tokens = require "vpp.tokens"

local M = {}

-- ---- JSON --------------------------------------------------------------

-- lua-cjson decodes [] and {} alike into an empty table; these properties
-- of the token entities are arrays, so an empty one goes back out as [].
local array_properties = { roleScopeTagIds = true, tokenActionResults = true }

-- lua-cjson escapes every "/" (legal, but URLs become unreadable).  Since it
-- escapes all of them, a backslash it writes before "/" is always that
-- escape: a backslash of the data comes out doubled, then "\/".
function M.json_string(s)
  return (cjson.encode(s):gsub("\\/", "/"))
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
  return (tostring(err):gsub("^vpp: ", ""))
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
  v = tostring(v)
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

--- Whether to colour what goes to fd: a terminal, and no NO_COLOR
-- (https://no-color.org: any non-empty value).
function M.use_colour(fd)
  local no = os.getenv("NO_COLOR")
  return (no == nil or no == "") and core._isatty(fd)
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
  local widths = {}
  for i, h in ipairs(header) do widths[i] = width(h) end
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do
      local text = type(cell) == "table" and cell[1] or cell
      if width(text) > widths[i] then widths[i] = width(text) end
    end
  end
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

--- Whole days until the token expires (negative once expired), or nil.
function M.days_left(token, now)
  local t = tokens.parse_time(token.expirationDateTime)
  if not t then return nil end
  return math.floor((t - now) / 86400)
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
    if days and days < 0 then days_colour = "red"
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
