--- The health of VPP tokens, as `vpp check` and fleet:check judge it:
-- expiry, state, sync (failed, stale), apps after a sync, and the licences
-- of each token's VPP apps.  Pure Lua: the data comes from gather().
-- @module vpp.health
local tokens = require "vpp.tokens"

local M = {}

M.OK, M.WARNING, M.CRITICAL, M.UNKNOWN = 0, 1, 2, 3
M.names = { [0] = "OK", "WARNING", "CRITICAL", "UNKNOWN" }
M.levels = { ok = M.OK, warning = M.WARNING, critical = M.CRITICAL }

-- Graph's vppTokenState and vppTokenSyncStatus values.
M.states = { "unknown", "valid", "expired", "invalid", "assignedToExternalMDM", "duplicateLocationId" }
M.sync_statuses = { "none", "inProgress", "completed", "failed" }

--- The level of each state unless --severity says otherwise (a state
-- Graph adds later is a WARNING).
M.default_severity = { valid = M.OK, expired = M.CRITICAL, invalid = M.CRITICAL, unknown = M.WARNING,
  assignedToExternalMDM = M.WARNING, duplicateLocationId = M.WARNING }

M.defaults = { warn_days = 30, crit_days = 7, stale_hours = 48, licenses_warn = 90, licenses_crit = 100 }

-- Graph's "never": 0001-01-01T00:00:00Z (anything before 2000 is that).
local NEVER_BEFORE = 946684800

local function plural(n, word)
  return ("%d %s%s"):format(n, word, n == 1 and "" or "s")
end
M.plural = plural

--- Whole days, counted toward zero: 7.9 → 7, -22.4 → -22.  The table's
-- DAYS column and the check's words count the same way.
-- @number days a span in days
-- @treturn integer whole days toward zero
function M.whole_days(days)
  if days >= 0 then return math.floor(days) end
  return -math.floor(-days)
end

-- Near the thresholds a whole number misleads ("in 7 days" for 6.96 days
-- is under 7), so short spans keep a decimal, rounded down.
local function in_days(days)
  if days < 10 then return ("in %.1f days"):format(math.floor(days * 10) / 10) end
  return "in " .. plural(M.whole_days(days), "day")
end

local function ago(seconds)
  local hours = seconds / 3600
  if hours < 48 then return plural(math.floor(hours), "hour") .. " ago" end
  return plural(math.floor(hours / 24), "day") .. " ago"
end

--- The share of an app's licences in use.
-- @tparam table app a VPP app (`usedLicenseCount`, `totalLicenseCount`)
-- @treturn number percent, or nil when it has no licences
function M.percent_used(app)
  local total, used = tonumber(app.totalLicenseCount), tonumber(app.usedLicenseCount) or 0
  if not total or total <= 0 then return nil end
  return used / total * 100
end

--- The name of an app for people: displayName, else bundleId, else id.
-- @tparam table app a VPP app
-- @treturn string the name ("-" when it has none)
function M.app_name(app)
  for _, k in ipairs { "displayName", "bundleId", "id" } do
    if type(app[k]) == "string" and app[k] ~= "" then return app[k] end
  end
  return "-"
end

--- The VPP apps of token t among apps: its vppTokenId, else (no id on the
-- app) the same Apple ID.
-- @tparam table t a token
-- @tparam table apps VPP apps (`client:list_vpp_apps`)
-- @treturn table the token's apps
function M.apps_of(t, apps)
  local out = {}
  for _, a in ipairs(apps or {}) do
    local by_id = type(a.vppTokenId) == "string" and a.vppTokenId ~= ""
    if (by_id and a.vppTokenId == t.id) or (not by_id and a.vppTokenAppleId ~= nil and a.vppTokenAppleId == t.appleId) then
      out[#out + 1] = a
    end
  end
  return out
end

--- The options with the defaults filled in.
-- @tparam[opt] table opts `warn_days`, `crit_days`, `stale_hours`, `licenses_warn`, `licenses_crit`,
-- `severity` (state -> level), `now`
-- @treturn table a copy with the defaults (`M.defaults`, `M.default_severity`) filled in
function M.options(opts)
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local severity = {}
  for k, v in pairs(M.default_severity) do severity[k] = v end
  for k, v in pairs(opts and opts.severity or {}) do severity[k] = v end
  o.severity = severity
  o.now = o.now or os.time()
  return o
end

--- The level of one token and why: { level, reasons, days, apps = {
-- { app, percent, level } } }.  apps: the token's VPP apps (nil: not
-- checked).  A threshold counts as the perfdata's range does: CRITICAL
-- under crit_days, WARNING under warn_days, and licences at or above the
-- percentages.
-- @tparam table t a token
-- @tparam table opts from `options`
-- @tparam[opt] table apps the token's VPP apps (nil: licences not judged)
-- @treturn table `{ level, reasons, days, sync_age, apps }`
function M.judge(t, opts, apps)
  local level, reasons = M.OK, {}
  local function raise(l, why)
    if l > level then level = l end
    if l > M.OK then reasons[#reasons + 1] = why end
  end
  local severity = opts.severity
  local expires = tokens.parse_time(t.expirationDateTime)
  local days = expires and (expires - opts.now) / 86400
  if t.state == "expired" or (days and days <= 0) then
    local n = days and -M.whole_days(days)
    raise(severity.expired, not days and "expired" or n < 1 and "expired today"
      or ("expired %s ago"):format(plural(n, "day")))
  else
    if t.state ~= "valid" then
      raise(severity[t.state] or M.WARNING, t.state == "invalid" and "invalid" or ("state " .. tostring(t.state)))
    end
    if t.state ~= "invalid" then
      if days and days < opts.crit_days then
        raise(M.CRITICAL, "expires " .. in_days(days))
      elseif days and days < opts.warn_days then
        raise(M.WARNING, "expires " .. in_days(days))
      elseif not days then
        raise(M.WARNING, "no readable expirationDateTime")
      end
    end
  end
  if t.lastSyncStatus == "failed" then raise(M.WARNING, "last sync failed") end
  -- Intune syncs a valid token about once a day; the others cannot sync.
  local synced = tokens.parse_time(t.lastSyncDateTime)
  local age = synced and synced >= NEVER_BEFORE and opts.now - synced or nil
  if t.state == "valid" then
    if not age then
      raise(M.WARNING, "never synced")
    elseif age > opts.stale_hours * 3600 then
      raise(M.WARNING, "last synced " .. ago(age))
    end
  end
  if t.lastAppCount == 0 and t.lastSyncStatus == "completed" then
    raise(M.WARNING, "no apps after its last sync")
  end
  local judged
  if apps then
    judged = {}
    for _, a in ipairs(apps) do
      local pct, l = M.percent_used(a), M.OK
      if pct and pct >= opts.licenses_crit then l = M.CRITICAL
      elseif pct and pct >= opts.licenses_warn then l = M.WARNING end
      raise(l, ("app %s: %d%% of licences used (%s/%s)"):format(M.app_name(a), math.floor(pct or 0),
        tostring(a.usedLicenseCount), tostring(a.totalLicenseCount)))
      judged[#judged + 1] = { app = a, percent = pct, level = l }
    end
    table.sort(judged, function(x, y) return (x.percent or -1) > (y.percent or -1) end)
  end
  for _, x in ipairs(opts.also and opts.also(t) or {}) do raise(x[1], x[2]) end
  return { level = level, reasons = reasons, days = days, sync_age = age, apps = judged }
end

local NUMBERS = { "tokens", "critical", "warning", "expired", "invalid", "expiring_warn", "expiring_crit",
  "sync_failed", "stale", "apps", "apps_licenses_warn", "apps_licenses_crit" }
M.NUMBERS = NUMBERS

--- Judges every token: { status, summary, tokens = { judgements }, problems
-- (worst first), numbers, min_days, max_licenses }.  data: { tokens, apps
-- (nil: licences not checked), apps_err (they could not be read) }, or
-- just the list of tokens.
-- @tparam table data `{ tokens, apps, apps_err }`, or a list of tokens
-- @tparam table opts as for `options`
-- @treturn table the report
function M.evaluate(data, opts)
  opts = opts.severity and opts or M.options(opts)
  local list = data.tokens or data
  local apps = data.tokens and data.apps
  local report = { status = M.OK, tokens = {}, counts = { [M.OK] = 0, [M.WARNING] = 0, [M.CRITICAL] = 0 } }
  local n = {}
  for _, k in ipairs(NUMBERS) do n[k] = 0 end
  local min_days, max_licenses
  for _, t in ipairs(list) do
    local j = M.judge(t, opts, apps and M.apps_of(t, apps))
    j.token = t
    report.tokens[#report.tokens + 1] = j
    report.counts[j.level] = report.counts[j.level] + 1
    if j.level > report.status then report.status = j.level end
    if t.state == "expired" or (j.days and j.days <= 0) then n.expired = n.expired + 1 end
    if t.state == "invalid" then n.invalid = n.invalid + 1 end
    if t.lastSyncStatus == "failed" then n.sync_failed = n.sync_failed + 1 end
    if t.state == "valid" and (not j.sync_age or j.sync_age > opts.stale_hours * 3600) then n.stale = n.stale + 1 end
    if j.days then
      if j.days > 0 and j.days < opts.warn_days then n.expiring_warn = n.expiring_warn + 1 end
      if j.days > 0 and j.days < opts.crit_days then n.expiring_crit = n.expiring_crit + 1 end
      if not min_days or j.days < min_days then min_days = j.days end
    end
    for _, a in ipairs(j.apps or {}) do
      n.apps = n.apps + 1
      if a.level == M.WARNING then n.apps_licenses_warn = n.apps_licenses_warn + 1 end
      if a.level == M.CRITICAL then n.apps_licenses_crit = n.apps_licenses_crit + 1 end
      if a.percent and (not max_licenses or a.percent > max_licenses) then max_licenses = a.percent end
    end
  end
  n.tokens, n.critical, n.warning = #list, report.counts[M.CRITICAL], report.counts[M.WARNING]
  local problems = {}
  for _, j in ipairs(report.tokens) do
    if j.level > M.OK then problems[#problems + 1] = j end
  end
  table.sort(problems, function(a, b)
    if a.level ~= b.level then return a.level > b.level end
    return (a.days or math.huge) < (b.days or math.huge)
  end)
  report.problems = problems
  if #list == 0 then
    report.summary = "no VPP tokens"
  elseif #problems == 0 then
    report.summary = ("%s, none expiring in under %g days"):format(plural(#list, "token"), opts.warn_days)
  else
    local parts = {}
    if report.counts[M.CRITICAL] > 0 then parts[#parts + 1] = report.counts[M.CRITICAL] .. " critical" end
    if report.counts[M.WARNING] > 0 then parts[#parts + 1] = report.counts[M.WARNING] .. " warning" end
    report.first = problems[1]
    report.summary = ("%s of %s"):format(table.concat(parts, ", "), plural(#list, "token"))
  end
  if data.apps_err then
    -- The tokens' verdict stands; what could not be asked is UNKNOWN.
    report.apps_err = data.apps_err
    if report.status == M.OK then report.status = M.UNKNOWN end
  end
  report.numbers, report.min_days, report.max_licenses = n, min_days, max_licenses
  return report
end

-- ---- a fleet -------------------------------------------------------------------

-- The fleet's status is the worst of its tenants': CRITICAL > WARNING >
-- UNKNOWN > OK (a tenant that cannot be asked hides no other's warning).
local rank = { [M.OK] = 0, [M.UNKNOWN] = 1, [M.WARNING] = 2, [M.CRITICAL] = 3 }
function M.worse(a, b) return rank[a] > rank[b] end

--- Judges a fleet: entries { tenant, data | nil, err, labels } in order →
-- { status, entries = { tenant, status, report | nil, err, labels },
-- numbers, min_days, max_licenses, unknown, first = { tenant, j } }.  One
-- Apple ID in two tenants is a WARNING on both (an Apple token can belong
-- to one MDM only).
-- @tparam table list `{ tenant, data | nil, err, labels }` per tenant
-- @tparam table opts as for `options`
-- @treturn table the fleet's report
function M.evaluate_fleet(list, opts)
  opts = M.options(opts)
  local owners = {}
  for _, e in ipairs(list) do
    for _, t in ipairs(e.data and e.data.tokens or {}) do
      if type(t.appleId) == "string" and t.appleId ~= "" then
        owners[t.appleId] = owners[t.appleId] or {}
        owners[t.appleId][e.tenant] = true
      end
    end
  end
  local fleet = { status = M.OK, entries = {}, numbers = {}, unknown = 0 }
  for _, e in ipairs(list) do
    local entry = { tenant = e.tenant, err = e.err, labels = e.labels }
    if e.data then
      local o = {}
      for k, v in pairs(opts) do o[k] = v end
      o.also = function(t)
        local others = {}
        for name in pairs(owners[t.appleId] or {}) do
          if name ~= e.tenant then others[#others + 1] = name end
        end
        if #others == 0 then return nil end
        table.sort(others)
        return { { M.WARNING, ("Apple ID also in tenant %s (an Apple token can belong to one MDM only)")
          :format(table.concat(others, ", ")) } }
      end
      local r = M.evaluate(e.data, o)
      entry.report, entry.status = r, r.status
      for k, v in pairs(r.numbers) do fleet.numbers[k] = (fleet.numbers[k] or 0) + v end
      if r.min_days and (not fleet.min_days or r.min_days < fleet.min_days) then fleet.min_days = r.min_days end
      if r.max_licenses and (not fleet.max_licenses or r.max_licenses > fleet.max_licenses) then
        fleet.max_licenses = r.max_licenses
      end
      local p = r.first
      if p and (not fleet.first or rank[p.level] > rank[fleet.first.j.level]) then
        fleet.first = { tenant = e.tenant, j = p }
      end
    else
      entry.status = M.UNKNOWN
      fleet.unknown = fleet.unknown + 1
    end
    if M.worse(entry.status, fleet.status) then fleet.status = entry.status end
    fleet.entries[#fleet.entries + 1] = entry
  end
  return fleet
end

-- ---- reading what is judged ----------------------------------------------------

--- The tokens (and, unless opts.licenses is false, the VPP apps) of a
-- client: { tokens, apps, apps_err }, or nil, err when the tokens cannot
-- be listed.  opts: select, deadline (a function giving the seconds left,
-- or a number), licenses.
-- @tparam client client a client
-- @tparam[opt] table opts `select`, `deadline`, `licenses`
-- @treturn table `{ tokens, apps, apps_err }`
-- @return or nil, err when the tokens cannot be listed
function M.gather(client, opts)
  opts = opts or {}
  local function left()
    if type(opts.deadline) == "function" then return opts.deadline() end
    return opts.deadline
  end
  local all, err = client:list_tokens { select = opts.select, deadline = left() }
  if not all then return nil, err end
  local data = { tokens = all }
  if opts.licenses ~= false and #all > 0 then
    local apps, aerr = client:list_vpp_apps { deadline = left() }
    if apps then data.apps = apps else data.apps_err = aerr end
  end
  return data
end

return M
