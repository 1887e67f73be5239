--- `vpp check`: token health in the monitoring-plugin convention (Nagios,
-- Icinga, Checkmk) and as a node_exporter textfile for Prometheus.
local format = require "vpp.cli.format"
local tokens = require "vpp.tokens"

local M = {}

M.OK, M.WARNING, M.CRITICAL, M.UNKNOWN = 0, 1, 2, 3
M.names = { [0] = "OK", "WARNING", "CRITICAL", "UNKNOWN" }

-- Graph's vppTokenState and vppTokenSyncStatus values.
M.states = { "unknown", "valid", "expired", "invalid", "assignedToExternalMDM", "duplicateLocationId" }
M.sync_statuses = { "none", "inProgress", "completed", "failed" }

local warning_states = { unknown = true, assignedToExternalMDM = true, duplicateLocationId = true }
local known_states = {}
for _, s in ipairs(M.states) do known_states[s] = true end

local function plural(n, word)
  return ("%d %s%s"):format(n, word, n == 1 and "" or "s")
end

-- Near the thresholds a whole number misleads ("in 7 days" for 7.4 days is
-- not within 7), so short spans keep a decimal.
local function in_days(days)
  if days < 10 then return ("in %.1f days"):format(math.floor(days * 10) / 10) end
  return "in " .. plural(math.floor(days), "day")
end

--- The level of one token and why: { level, reasons = {...}, days }.
function M.judge(t, opts)
  local level, reasons = M.OK, {}
  local function raise(l, why)
    if l > level then level = l end
    reasons[#reasons + 1] = why
  end
  local expires = tokens.parse_time(t.expirationDateTime)
  local days = expires and (expires - opts.now) / 86400
  if t.state == "expired" or (days and days <= 0) then
    local ago = days and math.floor(-days)
    raise(M.CRITICAL, not days and "expired" or ago < 1 and "expired today"
      or ("expired %s ago"):format(plural(ago, "day")))
  elseif t.state == "invalid" then
    raise(M.CRITICAL, "invalid")
  elseif days and days <= opts.crit_days then
    raise(M.CRITICAL, "expires " .. in_days(days))
  elseif days and days <= opts.warn_days then
    raise(M.WARNING, "expires " .. in_days(days))
  elseif not days then
    raise(M.WARNING, "no readable expirationDateTime")
  end
  if warning_states[t.state] or (t.state ~= nil and not known_states[t.state]) then
    raise(M.WARNING, "state " .. tostring(t.state))
  end
  if t.lastSyncStatus == "failed" then raise(M.WARNING, "last sync failed") end
  for _, x in ipairs(opts.also and opts.also(t) or {}) do raise(x[1], x[2]) end
  return { level = level, reasons = reasons, days = days }
end

--- Judges every token: { status, summary, perfdata, tokens = {...}, counts }.
function M.evaluate(list, opts)
  local report = { status = M.OK, tokens = {}, counts = { [M.OK] = 0, [M.WARNING] = 0, [M.CRITICAL] = 0 } }
  local expired, invalid, sync_failed, warn_soon, crit_soon, min_days = 0, 0, 0, 0, 0, nil
  for _, t in ipairs(list) do
    local j = M.judge(t, opts)
    j.token = t
    report.tokens[#report.tokens + 1] = j
    report.counts[j.level] = report.counts[j.level] + 1
    if j.level > report.status then report.status = j.level end
    if t.state == "expired" or (j.days and j.days <= 0) then expired = expired + 1 end
    if t.state == "invalid" then invalid = invalid + 1 end
    if t.lastSyncStatus == "failed" then sync_failed = sync_failed + 1 end
    if j.days and j.days > 0 then
      if j.days <= opts.warn_days then warn_soon = warn_soon + 1 end
      if j.days <= opts.crit_days then crit_soon = crit_soon + 1 end
      if t.state ~= "invalid" and (not min_days or j.days < min_days) then min_days = j.days end
    end
  end
  -- Worst first, then soonest to expire.
  local problems = {}
  for _, j in ipairs(report.tokens) do
    if j.level > M.OK then problems[#problems + 1] = j end
  end
  table.sort(problems, function(a, b)
    if a.level ~= b.level then return a.level > b.level end
    return (a.days or math.huge) < (b.days or math.huge)
  end)
  report.problems = problems
  local n = #list
  if n == 0 then
    report.summary = "no VPP tokens"
  elseif #problems == 0 then
    report.summary = ("%s, none expiring within %g days"):format(plural(n, "token"), opts.warn_days)
  else
    local parts = {}
    if report.counts[M.CRITICAL] > 0 then parts[#parts + 1] = report.counts[M.CRITICAL] .. " critical" end
    if report.counts[M.WARNING] > 0 then parts[#parts + 1] = report.counts[M.WARNING] .. " warning" end
    local first = problems[1]
    report.summary = ("%s of %s; %s: %s"):format(table.concat(parts, ", "), plural(n, "token"),
      format.name_of(first.token), table.concat(first.reasons, ", "))
  end
  report.numbers = { tokens = n, critical = report.counts[M.CRITICAL], warning = report.counts[M.WARNING],
    expired = expired, invalid = invalid, expiring_warn = warn_soon, expiring_crit = crit_soon,
    sync_failed = sync_failed }
  report.min_days = min_days
  report.perfdata = M.perfdata(report.numbers, min_days, opts)
  return report
end

local PERF = { "tokens", "critical", "warning", "expired", "invalid", "expiring_warn", "expiring_crit", "sync_failed" }

--- Nagios perfdata for the numbers (prefix: more items first).
function M.perfdata(numbers, min_days, opts, prefix)
  local parts = { prefix }
  for _, k in ipairs(PERF) do parts[#parts + 1] = ("%s=%d;;;0"):format(k, numbers[k] or 0) end
  if min_days then parts[#parts + 1] = ("min_days_left=%.2f;%g:;%g:"):format(min_days, opts.warn_days, opts.crit_days) end
  return table.concat(parts, " ")
end

-- ---- the three outputs -------------------------------------------------------

local function status_line(status, summary, perfdata)
  local line = ("VPP %s - %s"):format(M.names[status], (summary:gsub("[\r\n|]", " ")))
  if perfdata then line = line .. " | " .. perfdata end
  return line
end

--- The plugin output: the status line, then a line per token needing care.
function M.text(report)
  local lines = { status_line(report.status, report.summary, report.perfdata) }
  for _, j in ipairs(report.problems) do
    local t = j.token
    lines[#lines + 1] = ("%s: %s (%s): %s [expiry %s]"):format(M.names[j.level], format.name_of(t),
      tostring(t.id), table.concat(j.reasons, ", "), format.utc(t.expirationDateTime, false))
  end
  return table.concat(lines, "\n") .. "\n"
end

-- err: what kept Graph from answering, or { summary = ... } for a run that
-- did not end (interrupted, timed out).
local function unknown_summary(err)
  if type(err) == "table" and err.summary then return err.summary end
  return "cannot ask Graph: " .. format.message(err)
end

function M.unknown_text(err)
  return status_line(M.UNKNOWN, unknown_summary(err)) .. "\n"
end

local function json_table(report, opts)
  local out = {
    status = M.names[report.status], exit_code = report.status, summary = report.summary,
    warn_days = opts.warn_days, crit_days = opts.crit_days,
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)), tokens = format.array(),
  }
  for _, j in ipairs(report.tokens) do
    local t = j.token
    out.tokens[#out.tokens + 1] = {
      id = t.id, name = format.name_of(t), displayName = t.displayName, appleId = t.appleId,
      state = t.state, lastSyncStatus = t.lastSyncStatus,
      expirationDateTime = t.expirationDateTime, lastSyncDateTime = t.lastSyncDateTime,
      days_left = j.days and math.floor(j.days * 100 + 0.5) / 100, status = M.names[j.level],
      reasons = format.array(j.reasons),
    }
  end
  return out
end

function M.json(report, opts) return format.json(json_table(report, opts)) end

local function unknown_table(err, opts)
  return { status = "UNKNOWN", exit_code = M.UNKNOWN, summary = unknown_summary(err),
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)),
    error = format.error_fields(err) }
end

function M.unknown_json(err, opts) return format.json(unknown_table(err, opts)) end

-- Prometheus text format: label values escape \, " and newlines.
local function label(v)
  return (tostring(v == nil and "" or v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function metric(out, name, help, samples)
  out[#out + 1] = ("# HELP %s %s"):format(name, help)
  out[#out + 1] = ("# TYPE %s gauge"):format(name)
  for _, s in ipairs(samples) do out[#out + 1] = s end
end

-- tenant="…" and the tenant's own labels from the tenants file, sorted.
local function tenant_labels(e)
  local parts = { ('tenant="%s"'):format(label(e.tenant)) }
  local names = {}
  for k in pairs(e.labels or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do parts[#parts + 1] = ('%s="%s"'):format(k, label(e.labels[k])) end
  return table.concat(parts, ",")
end

local function token_labels(tl, t)
  return ('%s,id="%s",display_name="%s",apple_id="%s"'):format(tl, label(t.id), label(t.displayName),
    label(t.appleId))
end

local function one_of(labels, t, field, values, lname)
  local samples, seen = {}, false
  for _, v in ipairs(values) do
    seen = seen or t[field] == v
    samples[#samples + 1] = ('{%s,%s="%s"} %d'):format(labels, lname, v, t[field] == v and 1 or 0)
  end
  if not seen and type(t[field]) == "string" then
    samples[#samples + 1] = ('{%s,%s="%s"} 1'):format(labels, lname, label(t[field]))
  end
  return samples
end

--- A node_exporter textfile for entries { tenant, report | nil, status }
-- (one, "default", without a fleet): per-token gauges and each tenant's
-- status, every series labelled by tenant, so that the files of several
-- tenants, or one for a fleet, never collide.
local function prometheus_of(entries, first_line, opts)
  local out = { "# " .. first_line }
  local expiry, sync, state, status, check_status, up, at = {}, {}, {}, {}, {}, {}, {}
  for _, e in ipairs(entries) do
    local own = tenant_labels(e)
    for _, j in ipairs(e.report and e.report.tokens or {}) do
      local t = j.token
      local labels = token_labels(own, t)
      local x, y = tokens.parse_time(t.expirationDateTime), tokens.parse_time(t.lastSyncDateTime)
      if x then expiry[#expiry + 1] = ("vpp_token_expiry_timestamp_seconds{%s} %d"):format(labels, math.floor(x)) end
      if y then sync[#sync + 1] = ("vpp_token_last_sync_timestamp_seconds{%s} %d"):format(labels, math.floor(y)) end
      for _, v in ipairs(one_of(labels, t, "state", M.states, "state")) do state[#state + 1] = "vpp_token_state" .. v end
      for _, v in ipairs(one_of(labels, t, "lastSyncStatus", M.sync_statuses, "status")) do
        status[#status + 1] = "vpp_token_last_sync_status" .. v
      end
    end
    local tl = "{" .. own .. "}"
    check_status[#check_status + 1] = ("vpp_check_status%s %d"):format(tl, e.status)
    up[#up + 1] = ("vpp_graph_up%s %d"):format(tl, e.report and 1 or 0)
    at[#at + 1] = ("vpp_check_timestamp_seconds%s %d"):format(tl, math.floor(opts.now))
  end
  if #expiry + #sync + #state > 0 then
    metric(out, "vpp_token_expiry_timestamp_seconds", "When the VPP token expires, in seconds since the epoch.", expiry)
    metric(out, "vpp_token_last_sync_timestamp_seconds", "When the VPP token last synced with Apple.", sync)
    metric(out, "vpp_token_state", "The VPP token's state: 1 for the current one.", state)
    metric(out, "vpp_token_last_sync_status", "The VPP token's last sync status: 1 for the current one.", status)
  end
  metric(out, "vpp_check_status", "Result of vpp check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.", check_status)
  metric(out, "vpp_graph_up", "Whether Graph answered the check.", up)
  metric(out, "vpp_check_timestamp_seconds", "When the check ran.", at)
  return table.concat(out, "\n") .. "\n"
end

function M.prometheus(report, opts)
  return prometheus_of({ { tenant = opts.tenant or "default", report = report, status = report.status } },
    status_line(report.status, report.summary), opts)
end

function M.unknown_prometheus(err, opts)
  return prometheus_of({ { tenant = opts.tenant or "default", status = M.UNKNOWN } },
    status_line(M.UNKNOWN, unknown_summary(err)), opts)
end

-- ---- a fleet -------------------------------------------------------------------

-- The fleet's status is the worst of its tenants': CRITICAL > WARNING >
-- UNKNOWN > OK (a tenant that cannot be asked hides no other's warning).
local rank = { [M.OK] = 0, [M.UNKNOWN] = 1, [M.WARNING] = 2, [M.CRITICAL] = 3 }
function M.worse(a, b) return rank[a] > rank[b] end

--- Judges a fleet: entries { tenant, tokens | nil, err } in order → a
-- report { status, summary, perfdata, entries = { tenant, status, report
-- | nil, err } }.  One Apple ID in two tenants is a WARNING on both (an
-- Apple token can belong to one MDM only).
function M.evaluate_fleet(list, opts)
  local owners = {}
  for _, e in ipairs(list) do
    for _, t in ipairs(e.tokens or {}) do
      if type(t.appleId) == "string" and t.appleId ~= "" then
        owners[t.appleId] = owners[t.appleId] or {}
        owners[t.appleId][e.tenant] = true
      end
    end
  end
  local fleet = { status = M.OK, entries = {}, numbers = {}, unknown = 0 }
  local min_days, first
  for _, e in ipairs(list) do
    local entry = { tenant = e.tenant, err = e.err, labels = e.labels }
    if e.tokens then
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
      entry.report = M.evaluate(e.tokens, o)
      entry.status = entry.report.status
      for k, v in pairs(entry.report.numbers) do fleet.numbers[k] = (fleet.numbers[k] or 0) + v end
      if entry.report.min_days and (not min_days or entry.report.min_days < min_days) then
        min_days = entry.report.min_days
      end
      local p = entry.report.problems[1]
      if p and (not first or rank[p.level] > rank[first.level]) then first = { level = p.level, tenant = e.tenant, j = p } end
    else
      entry.status = M.UNKNOWN
      fleet.unknown = fleet.unknown + 1
    end
    if M.worse(entry.status, fleet.status) then fleet.status = entry.status end
    fleet.entries[#fleet.entries + 1] = entry
  end
  local counts = {}
  for _, e in ipairs(fleet.entries) do counts[e.status] = (counts[e.status] or 0) + 1 end
  local parts = {}
  for _, l in ipairs { M.CRITICAL, M.WARNING, M.UNKNOWN } do
    if counts[l] then parts[#parts + 1] = ("%d %s"):format(counts[l], M.names[l]:lower()) end
  end
  fleet.summary = ("fleet of %s: %s"):format(plural(#list, "tenant"), #parts > 0 and table.concat(parts, ", ") or "all OK")
  if first then
    fleet.summary = fleet.summary .. ("; %s/%s: %s"):format(first.tenant, format.name_of(first.j.token),
      table.concat(first.j.reasons, ", "))
  end
  fleet.perfdata = M.perfdata(fleet.numbers, min_days, opts,
    ("tenants=%d;;;0 tenants_unknown=%d;;;0"):format(#list, fleet.unknown))
  return fleet
end

local function fleet_text(fleet)
  local lines = { status_line(fleet.status, fleet.summary, fleet.perfdata) }
  for _, e in ipairs(fleet.entries) do
    if e.status ~= M.OK then
      lines[#lines + 1] = ("%s: tenant %s: %s"):format(M.names[e.status], e.tenant,
        e.report and e.report.summary or unknown_summary(e.err))
    end
  end
  for _, e in ipairs(fleet.entries) do
    for _, j in ipairs(e.report and e.report.problems or {}) do
      local t = j.token
      lines[#lines + 1] = ("%s: %s: %s (%s): %s [expiry %s]"):format(M.names[j.level], e.tenant, format.name_of(t),
        tostring(t.id), table.concat(j.reasons, ", "), format.utc(t.expirationDateTime, false))
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function fleet_json(fleet, opts)
  local out = { status = M.names[fleet.status], exit_code = fleet.status, summary = fleet.summary,
    warn_days = opts.warn_days, crit_days = opts.crit_days,
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)), tenants = format.array() }
  for _, e in ipairs(fleet.entries) do
    local one = e.report and json_table(e.report, opts) or unknown_table(e.err, opts)
    one.tenant, one.labels = e.tenant, e.labels and next(e.labels) and e.labels or nil
    one.warn_days, one.crit_days, one.checked_at = nil, nil, nil
    out.tenants[#out.tenants + 1] = one
  end
  return format.json(out)
end

local function fleet_prometheus(fleet, opts)
  return prometheus_of(fleet.entries, status_line(fleet.status, fleet.summary), opts)
end

M.fleet_outputs = { text = fleet_text, json = fleet_json, prometheus = fleet_prometheus }

--- By --format: what to print for a report, and when Graph could not be asked.
M.outputs = {
  text = { report = M.text, unknown = M.unknown_text },
  json = { report = M.json, unknown = M.unknown_json },
  prometheus = { report = M.prometheus, unknown = M.unknown_prometheus },
}

return M
