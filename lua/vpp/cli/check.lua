--- `vpp check`'s outputs: vpp.health's verdict in the monitoring-plugin
-- convention (Nagios, Icinga, Checkmk), as JSON, and as a node_exporter
-- textfile for Prometheus.
local format = require "vpp.cli.format"
local tokens = require "vpp.tokens"
local health = require "vpp.health"

local M = {}

for _, k in ipairs { "OK", "WARNING", "CRITICAL", "UNKNOWN", "names", "states", "sync_statuses", "worse" } do
  M[k] = health[k]
end

local plural = health.plural

-- Text that goes into the plugin output: data shown neutralised, and no
-- "|" (it starts perfdata, on any line of the output).
local function visible(s) return format.visible(s, nil, "|") end

--- The first problem of a report, for the status line: "name: reasons".
local function first_problem(j)
  return ("%s: %s"):format(format.name_of(j.token), table.concat(j.reasons, ", "))
end

--- The one-line summary of a report (prefix: the tenant's, in a fleet).
local function summary_of(report)
  local s = report.summary
  if report.first then s = s .. "; " .. first_problem(report.first) end
  if report.apps_err then s = s .. "; licences: " .. M.unknown_summary(report.apps_err) end
  return s
end

local PERF = health.NUMBERS

--- Nagios perfdata for the numbers (prefix: more items first).  The ranges
-- say what the text does: min_days_left alerts under the days given
-- ("30:"), licenses_used_max at or above the percentages ("@90:").
function M.perfdata(numbers, min_days, max_licenses, opts, prefix)
  local parts = { prefix }
  for _, k in ipairs(PERF) do parts[#parts + 1] = ("%s=%d;;;0"):format(k, numbers[k] or 0) end
  if min_days then
    parts[#parts + 1] = ("min_days_left=%.2f;%g:;%g:"):format(math.floor(min_days * 100) / 100, opts.warn_days,
      opts.crit_days)
  end
  if max_licenses then
    parts[#parts + 1] = ("licenses_used_max=%.1f%%;@%g:;@%g:;0"):format(math.floor(max_licenses * 10) / 10,
      opts.licenses_warn, opts.licenses_crit)
  end
  return table.concat(parts, " ")
end

-- ---- the three outputs -------------------------------------------------------

local function status_line(status, summary, perfdata)
  local line = ("VPP %s - %s"):format(M.names[status], visible(summary))
  if perfdata then line = line .. " | " .. perfdata end
  return line
end

local function report_perfdata(report, opts, prefix)
  return M.perfdata(report.numbers, report.min_days, report.max_licenses, opts, prefix)
end

-- A line per token needing care (prefix: "tenant: " in a fleet).
local function problem_lines(lines, report, prefix)
  for _, j in ipairs(report.problems) do
    local t = j.token
    lines[#lines + 1] = visible(("%s: %s%s (%s): %s [expiry %s]"):format(M.names[j.level], prefix or "",
      format.name_of(t), tostring(t.id), table.concat(j.reasons, ", "), format.utc(t.expirationDateTime, false)))
  end
  if report.apps_err then
    lines[#lines + 1] = visible(("UNKNOWN: %slicences: %s"):format(prefix or "", M.unknown_summary(report.apps_err)))
  end
end

--- The plugin output: the status line, then a line per token needing care.
function M.text(report, opts)
  local lines = { status_line(report.status, summary_of(report), report_perfdata(report, opts)) }
  problem_lines(lines, report)
  return table.concat(lines, "\n") .. "\n"
end

-- err: what kept Graph from answering, or { summary = ... } for a run that
-- did not end (interrupted, timed out).
function M.unknown_summary(err)
  if type(err) == "table" and err.summary then return err.summary end
  return "cannot ask Graph: " .. format.message(err)
end
local unknown_summary = M.unknown_summary

function M.unknown_text(err)
  return status_line(M.UNKNOWN, unknown_summary(err)) .. "\n"
end

local function round(x, digits) -- to the nearest
  if not x then return nil end
  local k = 10 ^ digits
  return math.floor(x * k + 0.5) / k
end

local function json_table(report, opts)
  local out = {
    status = M.names[report.status], exit_code = report.status, summary = summary_of(report),
    warn_days = opts.warn_days, crit_days = opts.crit_days, stale_hours = opts.stale_hours,
    licenses_warn = opts.licenses_warn, licenses_crit = opts.licenses_crit,
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)), tokens = format.array(),
    licenses_error = report.apps_err and format.error_fields(report.apps_err) or nil,
  }
  for _, j in ipairs(report.tokens) do
    local t = j.token
    local apps
    if j.apps then
      apps = format.array()
      for _, a in ipairs(j.apps) do
        apps[#apps + 1] = { id = a.app.id, name = a.app.displayName, bundleId = a.app.bundleId,
          type = a.app["@odata.type"], usedLicenseCount = a.app.usedLicenseCount,
          totalLicenseCount = a.app.totalLicenseCount, status = M.names[a.level],
          percent_used = a.percent and math.floor(a.percent * 10) / 10 }
      end
    end
    out.tokens[#out.tokens + 1] = {
      id = t.id, name = format.name_of(t), displayName = t.displayName, appleId = t.appleId,
      state = t.state, lastSyncStatus = t.lastSyncStatus, lastAppCount = t.lastAppCount,
      expirationDateTime = t.expirationDateTime, lastSyncDateTime = t.lastSyncDateTime,
      days_left = round(j.days, 2), last_sync_age_hours = round(j.sync_age and j.sync_age / 3600, 1),
      status = M.names[j.level], reasons = format.array(j.reasons), apps = apps,
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

-- Prometheus text format: valid UTF-8; label values escape \ and ";
-- controls (newlines too) are shown as \xHH: the value is data, and a
-- textfile is read on terminals too.
local function label(v)
  v = format.visible(tostring(v == nil and "" or v))
  return (v:gsub('[\\"]', { ["\\"] = "\\\\", ['"'] = '\\"' }))
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

local SERIES = {
  { "vpp_token_expiry_timestamp_seconds", "When the VPP token expires, in seconds since the epoch." },
  { "vpp_token_last_sync_timestamp_seconds", "When the VPP token last synced with Apple." },
  { "vpp_token_last_sync_age_seconds", "Seconds since the VPP token last synced with Apple." },
  { "vpp_token_state", "The VPP token's state: 1 for the current one." },
  { "vpp_token_last_sync_status", "The VPP token's last sync status: 1 for the current one." },
  { "vpp_app_licenses_total", "Licences of a VPP app on a VPP token." },
  { "vpp_app_licenses_used", "Licences of a VPP app on a VPP token that are in use." },
}

--- A node_exporter textfile for entries { tenant, report | nil, status }
-- (one, "default", without a fleet): per-token and per-app gauges and each
-- tenant's status, every series labelled by tenant, so that the files of
-- several tenants, or one for a fleet, never collide.
local function prometheus_of(entries, first_line, opts)
  local out = { "# " .. first_line }
  local samples = {}
  for _, s in ipairs(SERIES) do samples[s[1]] = {} end
  local function add(name, text) local l = samples[name] l[#l + 1] = name .. text end
  local check_status, up, at = {}, {}, {}
  for _, e in ipairs(entries) do
    local own = tenant_labels(e)
    for _, j in ipairs(e.report and e.report.tokens or {}) do
      local t = j.token
      local labels = token_labels(own, t)
      local x, y = tokens.parse_time(t.expirationDateTime), tokens.parse_time(t.lastSyncDateTime)
      if x then add("vpp_token_expiry_timestamp_seconds", ("{%s} %d"):format(labels, math.floor(x))) end
      if y then add("vpp_token_last_sync_timestamp_seconds", ("{%s} %d"):format(labels, math.floor(y))) end
      if j.sync_age then add("vpp_token_last_sync_age_seconds", ("{%s} %d"):format(labels, math.floor(j.sync_age))) end
      for _, v in ipairs(one_of(labels, t, "state", M.states, "state")) do add("vpp_token_state", v) end
      for _, v in ipairs(one_of(labels, t, "lastSyncStatus", M.sync_statuses, "status")) do
        add("vpp_token_last_sync_status", v)
      end
      for _, a in ipairs(j.apps or {}) do
        local al = ('%s,app_id="%s",bundle_id="%s",app_name="%s"'):format(labels, label(a.app.id),
          label(a.app.bundleId), label(a.app.displayName))
        local total, used = tonumber(a.app.totalLicenseCount), tonumber(a.app.usedLicenseCount)
        if total then add("vpp_app_licenses_total", ("{%s} %d"):format(al, total)) end
        if used then add("vpp_app_licenses_used", ("{%s} %d"):format(al, used)) end
      end
    end
    local tl = "{" .. own .. "}"
    check_status[#check_status + 1] = ("vpp_check_status%s %d"):format(tl, e.status)
    up[#up + 1] = ("vpp_graph_up%s %d"):format(tl, e.report and 1 or 0)
    at[#at + 1] = ("vpp_check_timestamp_seconds%s %d"):format(tl, math.floor(opts.now))
  end
  for _, s in ipairs(SERIES) do
    if #samples[s[1]] > 0 then metric(out, s[1], s[2], samples[s[1]]) end
  end
  metric(out, "vpp_check_status", "Result of vpp check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.", check_status)
  metric(out, "vpp_graph_up", "Whether Graph answered the check.", up)
  metric(out, "vpp_check_timestamp_seconds", "When the check ran.", at)
  return table.concat(out, "\n") .. "\n"
end

function M.prometheus(report, opts)
  return prometheus_of({ { tenant = opts.tenant or "default", report = report, status = report.status } },
    status_line(report.status, summary_of(report)), opts)
end

function M.unknown_prometheus(err, opts)
  return prometheus_of({ { tenant = opts.tenant or "default", status = M.UNKNOWN } },
    status_line(M.UNKNOWN, unknown_summary(err)), opts)
end

-- ---- a fleet -------------------------------------------------------------------

--- Judges a fleet (health.evaluate_fleet) and words it: the report with
-- summary and perfdata.
function M.evaluate_fleet(list, opts)
  opts = health.options(opts)
  local fleet = health.evaluate_fleet(list, opts)
  local counts = {}
  for _, e in ipairs(fleet.entries) do counts[e.status] = (counts[e.status] or 0) + 1 end
  local parts = {}
  for _, l in ipairs { M.CRITICAL, M.WARNING, M.UNKNOWN } do
    if counts[l] then parts[#parts + 1] = ("%d %s"):format(counts[l], M.names[l]:lower()) end
  end
  fleet.summary = ("fleet of %s: %s"):format(plural(#list, "tenant"), #parts > 0 and table.concat(parts, ", ") or "all OK")
  if fleet.first then fleet.summary = fleet.summary .. ("; %s/%s"):format(fleet.first.tenant, first_problem(fleet.first.j)) end
  fleet.perfdata = M.perfdata(fleet.numbers, fleet.min_days, fleet.max_licenses, opts,
    ("tenants=%d;;;0 tenants_unknown=%d;;;0"):format(#list, fleet.unknown))
  return fleet
end

local function fleet_text(fleet)
  local lines = { status_line(fleet.status, fleet.summary, fleet.perfdata) }
  for _, e in ipairs(fleet.entries) do
    if e.status ~= M.OK then
      lines[#lines + 1] = visible(("%s: tenant %s: %s"):format(M.names[e.status], e.tenant,
        e.report and summary_of(e.report) or unknown_summary(e.err)))
    end
  end
  for _, e in ipairs(fleet.entries) do
    if e.report then problem_lines(lines, e.report, e.tenant .. ": ") end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function fleet_json(fleet, opts)
  local out = { status = M.names[fleet.status], exit_code = fleet.status, summary = fleet.summary,
    warn_days = opts.warn_days, crit_days = opts.crit_days, stale_hours = opts.stale_hours,
    licenses_warn = opts.licenses_warn, licenses_crit = opts.licenses_crit,
    checked_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(opts.now)), tenants = format.array() }
  for _, e in ipairs(fleet.entries) do
    local one = e.report and json_table(e.report, opts) or unknown_table(e.err, opts)
    one.tenant, one.labels = e.tenant, e.labels and next(e.labels) and e.labels or nil
    for _, k in ipairs { "warn_days", "crit_days", "stale_hours", "licenses_warn", "licenses_crit", "checked_at" } do
      one[k] = nil
    end
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
