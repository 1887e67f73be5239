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
  report.perfdata = ("tokens=%d;;;0 critical=%d;;;0 warning=%d;;;0 expired=%d;;;0 invalid=%d;;;0"
    .. " expiring_warn=%d;;;0 expiring_crit=%d;;;0 sync_failed=%d;;;0"):format(
    n, report.counts[M.CRITICAL], report.counts[M.WARNING], expired, invalid, warn_soon, crit_soon, sync_failed)
  if min_days then
    report.perfdata = report.perfdata .. (" min_days_left=%.2f;%g:;%g:"):format(min_days, opts.warn_days, opts.crit_days)
  end
  return report
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

function M.json(report, opts)
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
  return format.json(out)
end

function M.unknown_json(err, opts)
  return format.json({ status = "UNKNOWN", exit_code = M.UNKNOWN, summary = unknown_summary(err),
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)),
    error = format.error_fields(err) })
end

-- Prometheus text format: label values escape \, " and newlines.
local function label(v)
  return (tostring(v == nil and "" or v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function metric(out, name, help, samples)
  out[#out + 1] = ("# HELP %s %s"):format(name, help)
  out[#out + 1] = ("# TYPE %s gauge"):format(name)
  for _, s in ipairs(samples) do out[#out + 1] = s end
end

local function token_labels(t)
  return ('id="%s",display_name="%s",apple_id="%s"'):format(label(t.id), label(t.displayName), label(t.appleId))
end

local function one_of(t, field, values, lname)
  local samples, seen = {}, false
  for _, v in ipairs(values) do
    seen = seen or t[field] == v
    samples[#samples + 1] = ('{%s,%s="%s"} %d'):format(token_labels(t), lname, v, t[field] == v and 1 or 0)
  end
  if not seen and type(t[field]) == "string" then
    samples[#samples + 1] = ('{%s,%s="%s"} 1'):format(token_labels(t), lname, label(t[field]))
  end
  return samples
end

--- A node_exporter textfile: per-token gauges, and the check's status.
function M.prometheus(report, opts)
  local out = { "# " .. status_line(report.status, report.summary) }
  local expiry, sync, state, status = {}, {}, {}, {}
  for _, j in ipairs(report.tokens) do
    local t = j.token
    local e, s = tokens.parse_time(t.expirationDateTime), tokens.parse_time(t.lastSyncDateTime)
    if e then expiry[#expiry + 1] = ("vpp_token_expiry_timestamp_seconds{%s} %d"):format(token_labels(t), math.floor(e)) end
    if s then sync[#sync + 1] = ("vpp_token_last_sync_timestamp_seconds{%s} %d"):format(token_labels(t), math.floor(s)) end
    for _, x in ipairs(one_of(t, "state", M.states, "state")) do state[#state + 1] = "vpp_token_state" .. x end
    for _, x in ipairs(one_of(t, "lastSyncStatus", M.sync_statuses, "status")) do
      status[#status + 1] = "vpp_token_last_sync_status" .. x
    end
  end
  metric(out, "vpp_token_expiry_timestamp_seconds", "When the VPP token expires, in seconds since the epoch.", expiry)
  metric(out, "vpp_token_last_sync_timestamp_seconds", "When the VPP token last synced with Apple.", sync)
  metric(out, "vpp_token_state", "The VPP token's state: 1 for the current one.", state)
  metric(out, "vpp_token_last_sync_status", "The VPP token's last sync status: 1 for the current one.", status)
  M.prometheus_footer(out, report.status, 1, opts)
  return table.concat(out, "\n") .. "\n"
end

function M.prometheus_footer(out, status, up, opts)
  metric(out, "vpp_check_status", "Result of vpp check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    { "vpp_check_status " .. status })
  metric(out, "vpp_graph_up", "Whether Graph answered the check.", { "vpp_graph_up " .. up })
  metric(out, "vpp_check_timestamp_seconds", "When the check ran.",
    { ("vpp_check_timestamp_seconds %d"):format(math.floor(opts.now)) })
end

function M.unknown_prometheus(err, opts)
  local out = { "# " .. status_line(M.UNKNOWN, unknown_summary(err)) }
  M.prometheus_footer(out, M.UNKNOWN, 0, opts)
  return table.concat(out, "\n") .. "\n"
end

--- By --format: what to print for a report, and when Graph could not be asked.
M.outputs = {
  text = { report = M.text, unknown = M.unknown_text },
  json = { report = M.json, unknown = M.unknown_json },
  prometheus = { report = M.prometheus, unknown = M.unknown_prometheus },
}

return M
