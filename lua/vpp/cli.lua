--- The `vpp` command: list, get, sync and check the Apple VPP tokens of an
-- Intune tenant, for cron jobs, monitoring systems and people.
-- main(args) returns the exit code and never calls os.exit, so a host can
-- run it in its own process; bin/vpp is a thin wrapper.
local argparse = require "argparse"
local vpp = require "vpp"
local core = require "vpp.core"
local env = require "vpp.env"
local format = require "vpp.cli.format"
local check = require "vpp.cli.check"
local progress = require "vpp.cli.progress"
local output = require "vpp.cli.output"
local health = require "vpp.health"
local fields = require "vpp.cli.fields"
local tokens = require "vpp.tokens"

local M = {}

M.EXIT_OK, M.EXIT_FAILURE, M.EXIT_USAGE, M.EXIT_SOFTWARE = 0, 1, 64, 70

local DEFAULT_WARN_DAYS, DEFAULT_CRIT_DAYS = health.defaults.warn_days, health.defaults.crit_days
-- Under the 60 s most monitoring systems allow a check.
local DEFAULT_CHECK_SECONDS = 55
local SIGNAL_NAMES = { [2] = "SIGINT", [15] = "SIGTERM" }

-- A user mistake found after parsing: reported like argparse's own.
local UsageError = {}
local function usage_error(message) error(setmetatable({ message = message }, UsageError), 0) end

local function number_arg(flag, opts)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= n or (opts.integer and n % 1 ~= 0) or n < opts.min or (opts.max and n > opts.max)
      or (opts.positive and n <= 0) then
      return nil, ("%s must be %s, got '%s'"):format(flag, opts.what, s)
    end
    return opts.integer and math.floor(n) or n
  end
end

local states, statuses = check.states, check.sync_statuses

local function format_option(cmd, choices, default)
  cmd:option("--format", "Output format: " .. table.concat(choices, ", ") .. ".", default)
    :choices(choices):argname("FORMAT")
end

-- argparse prints help and exits the process; a host must keep running, so
-- every help flag only records what to print.
local function own_help(parser, state)
  parser:add_help { action = function() state.help = parser:get_help() end }
end

--- The argument parser, and its subcommands' parsers by name.
function M.parser(state)
  state = state or {}
  local p = argparse("vpp", "Sync and monitor the Apple VPP tokens of an Intune tenant through Microsoft Graph.")
    :command_target("command")
    :help_max_width(80)
    :epilog([[
Credentials come from the environment, as Azure Identity's DefaultAzureCredential
picks them, the first kind set: GRAPH_ACCESS_TOKEN (a bearer token); AZURE_TENANT_ID
+ AZURE_CLIENT_ID with AZURE_CLIENT_SECRET, or AZURE_CLIENT_CERTIFICATE_PATH (PEM or
PFX; + AZURE_CLIENT_CERTIFICATE_PASSWORD, AZURE_CLIENT_SEND_CERTIFICATE_CHAIN), or
AZURE_FEDERATED_TOKEN_FILE (workload identity); a managed identity (App Service:
IDENTITY_ENDPOINT + IDENTITY_HEADER; Azure Arc: IDENTITY_ENDPOINT + IMDS_ENDPOINT;
an Azure VM: --credential managed-identity; AZURE_CLIENT_ID picks a user-assigned
one). AZURE_AUTHORITY_HOST; GRAPH_URL is the default of --graph-url.

Exit codes: 0 done, 1 a failure (some items failed, or Graph could not be
reached, or --deadline passed), 64 a usage error, 130 interrupted (SIGINT),
143 terminated (SIGTERM); vpp check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
(interrupted or timed out included).]])
  own_help(p, state)
  p:option("--graph-url", "Graph base URL (default: the cloud's, or $GRAPH_URL).")
    :argname("URL")
  p:option("--api-version", "Graph API version.", "v1.0"):choices { "v1.0", "beta" }
  p:option("--cloud", "National cloud: sets the Graph host, authority and scope.")
    :choices { "global", "usgov", "dod", "china" }
  p:option("--timeout", "Seconds allowed for each request.")
    :convert(number_arg("--timeout", { min = 0, positive = true, max = 1e6, what = "a positive number of seconds" }))
    :argname("SECONDS")
  p:option("--deadline", "Seconds allowed for the whole run; then what finished is printed (exit 1).")
    :convert(number_arg("--deadline", { min = 0, positive = true, max = 1e6, what = "a positive number of seconds" }))
    :argname("SECONDS")
  p:option("--max-retries", "Retries of a throttled or unreachable request (default 3).")
    :convert(number_arg("--max-retries", { integer = true, min = 0, max = 100, what = "an integer from 0 to 100" }))
    :argname("N")
  p:option("--ca-file", "A PEM file of extra CAs to trust."):argname("FILE")
  p:option("--credential", "Use only this kind of credential (default: the first set, in this order: token"
    .. " GRAPH_ACCESS_TOKEN; env AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH; workload"
    .. " AZURE_FEDERATED_TOKEN_FILE; managed-identity IDENTITY_ENDPOINT, or the Azure VM's metadata endpoint when"
    .. " named).")
    :choices { "token", "env", "workload", "managed-identity" }:argname("KIND")
  p:option("--proxy", "The proxy for Graph and the identity platform (default $VPP_PROXY; else libcurl's"
    .. " https_proxy, ALL_PROXY, NO_PROXY). No password here: others can read a command line;"
    .. " put user:password@ in VPP_PROXY.")
    :argname("URL")
  p:option("--proxy-auth", "How to authenticate to the proxy.")
    :choices { "basic", "ntlm", "negotiate", "any" }:argname("METHOD")
  p:option("--tenants", "A tenants file (YAML): list, sync --all, check and get run across the fleet"
    .. " (default $VPP_TENANTS).")
    :argname("FILE")
  p:option("--tenant", "With --tenants: only this tenant (repeatable); the other commands need one.")
    :count("*"):argname("NAME")
  p:option("--shard", "With --tenants: only the tenants in shard K of N (a stable hash of the name).")
    :argname("K/N"):convert(function(v)
      local k, n = v:match("^(%d+)/(%d+)$")
      k, n = tonumber(k), tonumber(n)
      if not k or n < 1 or k < 1 or k > n then return nil, ("--shard must be K/N with 1 <= K <= N, got '%s'"):format(v) end
      return { k = k, n = n }
    end)
  p:option("--output", "Write the output to FILE instead of stdout: replaced atomically, and only when the"
    .. " run succeeds (check: OK, WARNING or CRITICAL).")
    :argname("FILE")
  p:option("--color", "Colour tables: auto (on a terminal, unless NO_COLOR is set or TERM=dumb), always, never.",
    "auto"):choices { "auto", "always", "never" }:argname("WHEN")
  p:flag("-q --quiet", "Only errors on stderr: no progress, no summary.")
  p:flag("-v --verbose", "A line per request on stderr: method, path, status, time, request-id.")
  p:flag("--version", "Show the version and exit."):action(function() state.version = true end)

  local list = p:command("list", "List the VPP tokens.")
  own_help(list, state)
  list:option("--state", "Only tokens in this state (repeatable)."):count("*"):choices(states):argname("STATE")
  list:option("--sync-status", "Only tokens whose last sync has this status (repeatable).")
    :count("*"):choices(statuses):argname("STATUS")
  list:option("--expiring-within", "Only tokens expiring within this many days.")
    :convert(number_arg("--expiring-within", { min = 0, what = "a number of days" })):argname("DAYS")
  format_option(list, { "table", "json", "csv" }, "table")

  local get = p:command("get", "Show one VPP token.")
  own_help(get, state)
  get:argument("id", "The token id.")
  format_option(get, { "table", "json", "csv" }, "table")

  local sync = p:command("sync", "Sync the licenses of VPP tokens with Apple (syncLicenses).")
  own_help(sync, state)
  sync:argument("id", "Token ids."):args("*")
  sync:flag("--all", "Every token (in state valid unless --state says otherwise).")
  sync:option("--state", "With --all: tokens in this state (repeatable; default valid).")
    :count("*"):choices(states):argname("STATE")
  sync:flag("--include-in-progress", "With --all: also tokens already syncing (skipped by default).")
  sync:option("--concurrency", "Syncs at once (1-256).", "8")
    :convert(number_arg("--concurrency", { integer = true, min = 1, max = 256, what = "an integer from 1 to 256" }))
    :argname("N")
  sync:flag("--wait", "Wait until every started sync has completed or failed.")
  sync:option("--wait-interval", "With --wait: seconds between polls of a syncing token.", "5")
    :convert(number_arg("--wait-interval", { min = 0, positive = true, what = "a positive number of seconds" }))
    :argname("SECONDS")
  sync:option("--wait-timeout", "With --wait: give up after this many seconds.", "600")
    :convert(number_arg("--wait-timeout", { min = 0, positive = true, what = "a positive number of seconds" }))
    :argname("SECONDS")
  sync:flag("--dry-run", "Show what would be synced; sync nothing.")
  format_option(sync, { "table", "json", "csv" }, "table")

  local apps = p:command("sync-apps", "Sync apps of legacy appleVolumePurchaseProgramTokens (beta syncApps).")
  own_help(apps, state)
  apps:option("--organization", "The organization id."):argname("ORG"):count(1)
  apps:argument("id", "Token ids."):args("+")
  apps:option("--concurrency", "Syncs at once (1-256).", "8")
    :convert(number_arg("--concurrency", { integer = true, min = 1, max = 256, what = "an integer from 1 to 256" }))
    :argname("N")
  format_option(apps, { "table", "json", "csv" }, "table")

  local chk = p:command("check", "Check token health for monitoring (Nagios/Icinga/Checkmk, Prometheus).")
  own_help(chk, state)
  chk:option("--warn-days", "WARNING when a token expires in fewer than this many days.", tostring(DEFAULT_WARN_DAYS))
    :convert(number_arg("--warn-days", { min = 0, what = "a number of days" })):argname("DAYS")
  chk:option("--crit-days", "CRITICAL when a token expires in fewer than this many days.", tostring(DEFAULT_CRIT_DAYS))
    :convert(number_arg("--crit-days", { min = 0, what = "a number of days" })):argname("DAYS")
  chk:option("--stale-hours", "WARNING when a valid token last synced more than this many hours ago"
    .. " (Intune syncs about daily).", tostring(health.defaults.stale_hours))
    :convert(number_arg("--stale-hours", { min = 0, positive = true, what = "a positive number of hours" }))
    :argname("HOURS")
  chk:option("--severity", "The level of a token state (repeatable): STATE=ok|warning|critical. Defaults:"
    .. " valid=ok, expired=critical, invalid=critical, the others warning.")
    :count("*"):argname("STATE=LEVEL"):convert(function(v)
      local st, level = v:match("^([%w]+)=(%a+)$")
      local known = false
      for _, x in ipairs(states) do known = known or x == st end
      if not known or not health.levels[level] then
        return nil, ("--severity must be STATE=ok|warning|critical with STATE one of %s, got '%s'")
          :format(table.concat(states, ", "), v)
      end
      return { st, health.levels[level] }
    end)
  chk:option("--licenses-warn", "WARNING when a VPP app has this percentage of its licences in use, or more.",
    tostring(health.defaults.licenses_warn))
    :convert(number_arg("--licenses-warn", { min = 0, what = "a percentage" })):argname("PERCENT")
  chk:option("--licenses-crit", "CRITICAL when a VPP app has this percentage of its licences in use, or more.",
    tostring(health.defaults.licenses_crit))
    :convert(number_arg("--licenses-crit", { min = 0, what = "a percentage" })):argname("PERCENT")
  chk:flag("--no-licenses", "Skip the licence counts of the VPP apps (one request fewer per page of apps).")
  chk:option("-t", "Seconds allowed for the whole check, as monitoring plugins take it (UNKNOWN after).",
    tostring(DEFAULT_CHECK_SECONDS))
    :target("run_timeout")
    :convert(number_arg("-t", { min = 0, positive = true, max = 1e6, what = "a positive number of seconds" }))
    :argname("SECONDS")
  format_option(chk, { "text", "json", "prometheus" }, "text")

  local lic = p:command("licenses", "The VPP apps of each token with used, total and free licences, fullest first"
    .. " (beta mobileApps); with --app, one app's licences on each token (beta getLicensesForApp).")
  own_help(lic, state)
  lic:option("--token", "Only the apps of this token (an id, or its first 8 or more characters)."):argname("ID")
  lic:option("--app", "Instead: the licences of this app (its bundle id, com.example.app) on each token.")
    :argname("BUNDLE_ID")
  format_option(lic, { "table", "json", "csv" }, "table")

  local revoke = p:command("revoke-licenses", "Revoke every app licence of a VPP token (beta revokeLicenses).")
  own_help(revoke, state)
  revoke:argument("id", "The token id.")
  revoke:flag("--notify-devices", "Tell the managed devices that lose their licences.")
  revoke:flag("--untracked", "Also revoke licences Intune does not track.")
  revoke:flag("-y --yes", "Do not ask (needed when stdin is not a terminal).")

  local counts = p:command("sync-license-counts", "Refresh the licence counts of every VPP token (beta syncLicenseCounts).")
  own_help(counts, state)

  local set = p:command("set", "Change a setting of a VPP token (PATCH).")
  own_help(set, state)
  set:argument("id", "The token id.")
  set:option("--auto-update", "Update the token's apps automatically."):choices { "on", "off" }:count(1)
  format_option(set, { "table", "json", "csv" }, "table")

  local renew = p:command("renew", "Upload the renewed Apple token file of a VPP token (PATCH of its token).")
  own_help(renew, state)
  renew:argument("id", "The token id.")
  renew:option("--token-file", "The .vpptoken file from Apple Business or School Manager; never printed.")
    :argname("FILE"):count(1)
  format_option(renew, { "table", "json", "csv" }, "table")
  local help = p:command("help", "Show the help of the command, or of one subcommand.")
  own_help(help, state)
  help:argument("topic", "A subcommand."):args("?"):argname("COMMAND")

  local completion = p:command("completion", "Print a shell completion script (bash, zsh or fish).")
  own_help(completion, state)
  completion:argument("shell", "The shell."):choices { "bash", "zsh", "fish" }

  return p, { help = help, completion = completion, list = list, get = get, sync = sync, ["sync-apps"] = apps,
    check = chk, licenses = lic,
    ["revoke-licenses"] = revoke, ["sync-license-counts"] = counts, set = set, renew = renew }
end

-- ---- running ---------------------------------------------------------------

local Run = {}
Run.__index = Run

--- A note on stderr (not with --quiet), after the data written so far;
-- none when the data could not be written (that is the one thing to say).
function Run:say(...)
  self.out:flush()
  if self.out.failed then return end
  if not self.args.quiet then output.err("vpp: ", format.visible(table.concat({ ... })), "\n") end
end

--- Seconds left of the whole run's limit (--deadline; check's -t), or nil.
function Run:left()
  if not self.deadline_at then return nil end
  return math.max(self.deadline_at - core._clock(), 1e-6)
end

--- Why the run stopped early: "interrupted by SIGINT" and the like, or nil.
function Run:interruption()
  local sig = self.caught.signal
  if sig then return "interrupted by " .. (SIGNAL_NAMES[sig] or ("signal " .. sig)) end
end

local function fail(err)
  -- cancelled: the command's own doing on a signal; main says so
  if err.kind ~= "cancelled" then output.err("vpp: ", format.message(err), "\n") end
  return M.EXIT_FAILURE
end

-- The token's `token` property is the Apple VPP token itself, a credential
-- of the Apple account: output that lands in cron mail and logs shows only
-- that it is there.
local function redact(t)
  if type(t) ~= "table" or type(t.token) ~= "string" or t.token == "" then return t end
  local copy = {}
  for k, v in pairs(t) do copy[k] = v end
  copy.token = "[redacted]"
  return copy
end

local function redact_all(list)
  local out = format.array()
  for i, t in ipairs(list) do out[i] = redact(t) end
  return out
end

local function trace(info)
  local path = (info.url or "?"):gsub("^%a[%w+.-]*://[^/]*", "")
  output.err(("vpp: %s %s %s %.3fs%s%s\n"):format(info.method, path,
    tostring(info.status or info.error or "-"), info.seconds or 0,
    info.request_id and (" request-id " .. info.request_id) or "",
    (info.attempt or 1) > 1 and (" attempt " .. info.attempt) or ""))
end

-- vpp.new's messages name settings; the user gave flags.
local flag_of = { base_url = "--graph-url", api_version = "--api-version", timeout = "--timeout",
  ca_file = "--ca-file", cloud = "--cloud", proxy = "--proxy (or VPP_PROXY)", proxy_auth = "--proxy-auth" }

--- The client, or nil, message, exit kind ("credentials" or "settings").
--- The settings the flags give (no credential).
function Run:flag_settings()
  local a = self.args
  local graph_url = a.graph_url
  if graph_url == nil and os.getenv("GRAPH_URL") ~= "" then graph_url = os.getenv("GRAPH_URL") end
  local proxy = a.proxy
  if proxy == nil and (os.getenv("VPP_PROXY") or "") ~= "" then proxy = os.getenv("VPP_PROXY") end
  return { base_url = graph_url, api_version = a.api_version, cloud = a.cloud, timeout = a.timeout,
    ca_file = a.ca_file, max_retries = a.max_retries, on_request = a.verbose and trace or nil,
    proxy = proxy, proxy_auth = a.proxy_auth }
end

local function settings_message(err)
  return (format.message(err):gsub("opts%.([%w_]+)", function(k) return flag_of[k] or k end))
end

--- The client, or nil, message, exit kind ("credentials" or "settings").
-- fleet, name: the client of that tenant of the fleet.
function Run:client(fleet, name)
  if fleet then
    local made, client, err = pcall(fleet.client, fleet, name)
    if not made then return nil, settings_message(client), "settings" end
    if not client then return nil, format.message(err), "credentials" end
    return client
  end
  local flags = self:flag_settings()
  flags.credential = self.args.credential
  local ok, settings = pcall(env.settings, flags)
  if not ok then return nil, format.message(settings), "credentials" end
  local made, client = pcall(vpp.new, settings)
  if not made then return nil, settings_message(client), "settings" end
  return client
end

-- Whether tables are coloured (--color, and for auto: a terminal, no
-- NO_COLOR, no TERM=dumb); set when a run starts.
local colour_on = false
local function colour() return colour_on end

-- Tokens as the chosen format.
-- With a fleet (owner: token -> tenant name), copies that carry `tenant`.
-- "k=v;k=v" for a CSV cell.
local function labels_cell(labels)
  local names, parts = {}, {}
  for k in pairs(labels or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. labels[k] end
  return table.concat(parts, ";")
end

-- labels_of: tenant name -> its labels (JSON: a table; CSV: a cell).
local function with_tenants(list, owner, labels_of, csv)
  if not owner then return list end
  local out = {}
  for i, t in ipairs(list) do
    local copy = {}
    for k, v in pairs(t) do copy[k] = v end
    copy.tenant = owner[t]
    copy.labels = labels_of and labels_of(owner[t])
    if csv then copy.labels = labels_cell(copy.labels) end
    out[i] = copy
  end
  return out
end

local function fields_with_tenant(names, owner)
  if not owner then return names end
  local out = { "tenant", "labels" }
  for _, f in ipairs(names) do out[#out + 1] = f end
  return out
end

function Run:print_tokens(list, owner)
  local f = self.args.format
  local labels_of = function(name) return self:labels_of(name) end
  if f == "json" then
    self.out:write(format.json(redact_all(with_tenants(list, owner, labels_of))))
  elseif f == "csv" then
    self.out:write(format.csv(with_tenants(list, owner, labels_of, true),
      fields_with_tenant(format.token_fields, owner)))
  elseif #list == 0 then
    self:say("no tokens match")
  else
    self.out:write(format.token_table(list, { warn_days = DEFAULT_WARN_DAYS, crit_days = DEFAULT_CRIT_DAYS,
      colour = colour(), tenants = owner }))
    local counts, parts = vpp.count_by(list, "state"), {}
    for _, s in ipairs(states) do
      if counts[s] then parts[#parts + 1] = ("%d %s"):format(counts[s], s) end
    end
    -- A summary is a diagnostic: stderr, and not with --quiet.
    self:say(("%d token%s: %s"):format(#list, #list == 1 and "" or "s", table.concat(parts, ", ")))
  end
end

--- The properties a list for `shown` (an output format, or "check")
-- needs, as a $select for this client's API version (nil: another
-- version, whole tokens).
local function select_of(client, shown)
  return fields.select(client:config().api_version, shown)
end

function Run:list_criteria()
  local a, criteria = self.args, {}
  if #a.state > 0 then criteria.state = a.state end
  if #a.sync_status > 0 then criteria.last_sync_status = a.sync_status end
  if a.expiring_within then criteria.expires_within = a.expiring_within * 86400 end
  return criteria
end

function Run:list(client)
  local all, err = client:list_tokens { select = select_of(client, self.args.format), deadline = self:left() }
  if not all then return fail(err) end
  self:print_tokens(vpp.filter(all, self:list_criteria()))
  return M.EXIT_OK
end

-- ---- ids -------------------------------------------------------------------

local GUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local MIN_PREFIX = 8 -- the tables print 8 characters of an id

--- The ids given, with each prefix (8 or more characters of an id, as the
-- tables print them) made the one id it starts. A GUID goes as it is; any
-- other argument costs one listing of the ids (for all of them): an exact
-- id stays, a prefix of several ids, or one under 8 characters that is no
-- id, is a usage error, and one that starts no id goes as given (Graph
-- says whether it exists). nil, err when the listing fails.
function Run:resolve(client, ids, soft, listed)
  -- soft: a problem is returned (nil, { usage = message }), not raised (a
  -- fleet's tenants resolve inside coroutines, where 5.1 cannot pcall).
  -- listed: the tokens already listed, when the caller has them.
  local function problem(message)
    if soft then return nil, { usage = message } end
    usage_error(message)
  end
  local out, other = {}, false
  for i, id in ipairs(ids) do
    out[i] = id
    if not id:match(GUID) then other = true end
  end
  if not other then return out end
  local all, err = listed, nil
  if not all then all, err = client:list_tokens { select = "id", deadline = self:left() } end
  if not all then return nil, err end
  local known = {}
  for _, t in ipairs(all) do
    if type(t.id) == "string" then known[#known + 1] = t.id end
  end
  for i, id in ipairs(out) do
    local found, low, exact = {}, id:lower(), false
    for _, k in ipairs(known) do
      if k == id then exact = true end
      if k:lower():sub(1, #low) == low then found[#found + 1] = k end
    end
    if not exact and not id:match(GUID) then
      if #id < MIN_PREFIX then
        return problem(("'%s' is no token id, and too short for the start of one (at least %d characters)")
          :format(id, MIN_PREFIX))
      end
      if #found > 1 then
        table.sort(found)
        return problem(("'%s' is the start of %d token ids: %s"):format(id, #found, table.concat(found, ", ")))
      end
      if #found == 1 then out[i] = found[1] end
    end
  end
  return out
end

-- A token as get prints it (and set and renew, after the change).
function Run:print_token(token)
  token = redact(token)
  local f = self.args.format
  if f == "json" then
    self.out:write(format.json(token))
  elseif f == "csv" then
    self.out:write(format.csv({ token }, format.token_fields))
  else
    self.out:write(format.token_detail(token, colour()))
  end
end

function Run:get(client)
  local ids, lerr = self:resolve(client, { self.args.id })
  if not ids then return fail(lerr) end
  local got = client:get_many(ids, { deadline = self:left() })[1]
  if not got.token then return fail(got.err) end
  self:print_token(got.token)
  return M.EXIT_OK
end

-- ---- the rest of the vppToken API ----------------------------------------------

function Run:licenses(client)
  if self.args.app then
    if self.args.token then usage_error("--token and --app: give one") end
    return self:app_licenses(client)
  end
  local all, err = client:list_tokens { select = select_of(client, "table"), deadline = self:left() }
  if not all then return fail(err) end
  if self.args.token then
    local ids, lerr = self:resolve(client, { self.args.token }, false, all)
    if not ids then return fail(lerr) end
    local picked = {}
    for _, t in ipairs(all) do
      if t.id == ids[1] then picked[#picked + 1] = t end
    end
    if #picked == 0 then
      output.err(("vpp: no token %s\n"):format(format.visible(ids[1])))
      return M.EXIT_FAILURE
    end
    all = picked
  end
  local apps, aerr = client:list_vpp_apps { deadline = self:left() }
  if not apps then return fail(aerr) end
  local rows = {}
  for _, t in ipairs(all) do
    for _, a in ipairs(health.apps_of(t, apps)) do
      local total, used = tonumber(a.totalLicenseCount), tonumber(a.usedLicenseCount)
      local pct = health.percent_used(a)
      rows[#rows + 1] = { vppTokenId = t.id, tokenName = format.name_of(t), appleId = t.appleId, id = a.id,
        displayName = a.displayName, bundleId = a.bundleId, type = a["@odata.type"], usedLicenseCount = used,
        totalLicenseCount = total, freeLicenseCount = total and used and total - used,
        percentUsed = pct and math.floor(pct * 10) / 10 }
    end
  end
  -- Fullest first: the share in use, then the count in use.
  table.sort(rows, function(x, y)
    local px, py = x.percentUsed or -1, y.percentUsed or -1
    if px ~= py then return px > py end
    if (x.usedLicenseCount or 0) ~= (y.usedLicenseCount or 0) then
      return (x.usedLicenseCount or 0) > (y.usedLicenseCount or 0)
    end
    return tostring(x.displayName) < tostring(y.displayName)
  end)
  local f = self.args.format
  local columns = { "vppTokenId", "tokenName", "appleId", "id", "displayName", "bundleId", "type",
    "usedLicenseCount", "totalLicenseCount", "freeLicenseCount", "percentUsed" }
  if f == "json" then
    self.out:write(format.json(format.array(rows)))
  elseif f == "csv" then
    self.out:write(format.csv(rows, columns))
  elseif #rows == 0 then
    self:say("no VPP apps", self.args.token and " on that token" or "")
  else
    local out = {}
    for i, r in ipairs(rows) do
      local p = r.percentUsed
      local c = p and (p >= health.defaults.licenses_crit and "red" or p >= health.defaults.licenses_warn and "yellow")
      out[i] = { tostring(r.vppTokenId):sub(1, 8), r.tokenName, health.app_name(r), tostring(r.bundleId or "-"),
        tostring(r.usedLicenseCount or "-"), tostring(r.totalLicenseCount or "-"), tostring(r.freeLicenseCount or "-"),
        { p and ("%.1f%%"):format(p) or "-", c or nil } }
    end
    self.out:write(format.table({ "TOKEN", "TOKEN NAME", "APP", "BUNDLE ID", "USED", "TOTAL", "FREE", "USED %" }, out,
      colour()))
  end
  return M.EXIT_OK
end

function Run:app_licenses(client)
  local list, err = client:licenses_for_app(self.args.app, { deadline = self:left() })
  if not list then return fail(err) end
  -- Fullest first: the share of the token's licences in use, then the count.
  local function used(l) return tonumber(l.usedLicenseCount) or 0 end
  local function share(l)
    local total = used(l) + (tonumber(l.availableLicenseCount) or 0)
    return total > 0 and used(l) / total or 0
  end
  table.sort(list, function(a, b)
    if share(a) ~= share(b) then return share(a) > share(b) end
    return used(a) > used(b)
  end)
  local f = self.args.format
  local fields_shown = { "vppTokenId", "appleId", "organizationName", "usedLicenseCount", "availableLicenseCount" }
  if f == "json" then
    self.out:write(format.json(format.array(list)))
  elseif f == "csv" then
    self.out:write(format.csv(list, fields_shown))
  elseif #list == 0 then
    self:say("no VPP token has licences of ", self.args.app)
  else
    local rows = {}
    for i, l in ipairs(list) do
      rows[i] = { tostring(l.vppTokenId):sub(1, 8), tostring(l.appleId or "-"), tostring(l.organizationName or "-"),
        tostring(l.usedLicenseCount or "-"), tostring(l.availableLicenseCount or "-") }
    end
    self.out:write(format.table({ "TOKEN", "APPLE ID", "ORGANIZATION", "USED", "AVAILABLE" }, rows, colour()))
  end
  return M.EXIT_OK
end

-- Whether the user means it: yes on a terminal, or --yes.
function Run:confirmed(question)
  if self.args.yes then return true end
  if not core._isatty(0) then usage_error("not on a terminal: give --yes to " .. question) end
  output.err("vpp: ", question, "? [y/N] ")
  io.stderr:flush()
  local answer = io.stdin:read("*l")
  return answer ~= nil and (answer:lower() == "y" or answer:lower() == "yes")
end

function Run:revoke_licenses(client)
  local ids, lerr = self:resolve(client, { self.args.id })
  if not ids then return fail(lerr) end
  local a = self.args
  if not self:confirmed(("revoke every app licence of token %s%s"):format(ids[1],
    a.notify_devices and " and notify its devices" or "")) then
    output.err("vpp: nothing revoked\n")
    return M.EXIT_FAILURE
  end
  local ok, err = client:revoke_licenses(ids[1], { notify_managed_devices = a.notify_devices,
    revoke_untracked_licenses = a.untracked })
  if not ok then return fail(err) end
  self:say("revoking the licences of token ", ids[1])
  return M.EXIT_OK
end

function Run:sync_license_counts(client)
  local ok, err = client:sync_license_counts()
  if not ok then return fail(err) end
  self:say("licence counts are being refreshed")
  return M.EXIT_OK
end

function Run:update(client, changes, secret)
  local ids, lerr = self:resolve(client, { self.args.id })
  if not ids then return fail(lerr) end
  local token, err = client:update_token(ids[1], changes)
  if not token then
    -- Graph's message could quote what it was sent.
    if secret and type(err.message) == "string" then
      local from, to = err.message:find(secret, 1, true)
      while from do
        err.message = err.message:sub(1, from - 1) .. "[redacted]" .. err.message:sub(to + 1)
        from, to = err.message:find(secret, from + #"[redacted]", true)
      end
    end
    return fail(err)
  end
  self:print_token(token)
  return M.EXIT_OK
end

function Run:set(client)
  return self:update(client, { automaticallyUpdateApps = self.args.auto_update == "on" })
end

function Run:renew(client)
  local path = self.args.token_file
  local f, why = io.open(path, "rb")
  local content = f and f:read("*a")
  if f then f:close() end
  if not content then
    output.err("vpp: cannot read --token-file: ", why or path, "\n")
    return M.EXIT_FAILURE
  end
  content = content:match("^%s*(.-)%s*$")
  if content == "" then
    output.err("vpp: --token-file is empty: ", path, "\n")
    return M.EXIT_FAILURE
  end
  return self:update(client, { token = content }, content)
end

-- ---- sync ----------------------------------------------------------------------

-- One row of a sync report: what happened to one token.
local function outcome(id, token, result, err, known, detail, date)
  local t = token or known or {}
  return { date = date, id = id, displayName = t.displayName, name = t.name or format.name_of(t), result = result,
    lastSyncStatus = t.lastSyncStatus,
    lastSyncDateTime = t.lastSyncDateTime, error = err and tostring(err) or detail,
    token = token, err = err }
end

-- An error for a table cell: the ids are left to --format json or csv.
local function brief(err)
  local parts = {}
  for _, k in ipairs { "kind", "status", "code" } do
    if err[k] ~= nil then parts[#parts + 1] = tostring(err[k]) end
  end
  return ("%s: %s"):format(table.concat(parts, " "), tostring(err.message))
end

local result_colour = { completed = "green", started = "green", failed = "red", error = "red",
  timeout = "red", skipped = "dim", ["would sync"] = "cyan", interrupted = "yellow" }

-- The result of an item that ended with err: interrupted (the command
-- cancelled its calls on a signal), timeout (a deadline), or error.
local function failure(err)
  if err.kind == "cancelled" then return "interrupted" end
  if err.kind == "timeout" then return "timeout" end
  return "error"
end

function Run:print_outcomes(rows)
  local f = self.args.format
  if f == "json" then
    local out = format.array()
    for i, r in ipairs(rows) do
      out[i] = { tenant = r.tenant, labels = self:labels_of(r.tenant), id = r.id, displayName = r.displayName,
        result = r.result, token = redact(r.token), error = r.err and format.error_fields(r.err) }
    end
    self.out:write(format.json(out))
  elseif f == "csv" then
    local columns = { "id", "displayName", "result", "lastSyncStatus", "lastSyncDateTime", "error" }
    if self.fleet then
      table.insert(columns, 1, "labels")
      table.insert(columns, 1, "tenant")
      for _, r in ipairs(rows) do r.labels = labels_cell(self:labels_of(r.tenant)) end
    end
    self.out:write(format.csv(rows, columns))
  elseif not self.args.quiet and #rows > 0 then
    local out = {}
    for i, r in ipairs(rows) do
      out[i] = { tostring(r.id):sub(1, 8), r.name, { r.result, result_colour[r.result] },
        format.utc(r.lastSyncDateTime), r.err and brief(r.err) or r.error or "" }
      if self.fleet then table.insert(out[i], 1, r.tenant or "-") end
    end
    local header = { "ID", "NAME", "RESULT", "LAST SYNC (UTC)", "DETAIL" }
    if self.fleet then table.insert(header, 1, "TENANT") end
    self.out:write(format.table(header, out, colour()))
  end
end

-- A progress line fed by on_result callbacks (result, done, total).
function Run:progress(label)
  if self.fleet_bar then
    -- A fleet: one line counts tenants, and tokens as they end.
    local fleet_bar = self.fleet_bar
    return function()
      self.tokens_done = (self.tokens_done or 0) + 1
      fleet_bar.extra = ("%d tokens %s"):format(self.tokens_done, label)
    end, function() end
  end
  local bar
  return function(r, _, total)
    bar = bar or progress.new(label, total, not self.args.quiet)
    local failed = r.err ~= nil or (r.token and r.token.lastSyncStatus == "failed")
    bar:step(failed)
  end, function()
    if bar then bar:finish() end
  end
end

local function collect(rows, results, known)
  for _, r in ipairs(results) do
    if r.err then
      rows[#rows + 1] = outcome(r.id, nil, failure(r.err), r.err, known[r.id])
    else
      local status = r.token.lastSyncStatus
      -- A 204 answer to syncLicenses has no status: the sync started.
      local started = status == nil or status == "inProgress"
      rows[#rows + 1] = outcome(r.id, r.token, started and "started" or tostring(status), nil, nil, nil, r.date)
    end
  end
end

--- Runs syncs (or, with --dry-run, shows what they would be) and reports.
function Run:check_sync_args()
  local a = self.args
  if a.all and #a.id > 0 then usage_error("give token ids or --all, not both") end
  if not a.all and #a.id == 0 then usage_error("give token ids, or --all") end
  if not a.all and (#a.state > 0 or a.include_in_progress) then
    usage_error("--state and --include-in-progress go with --all")
  end
end

function Run:sync(client)
  self:check_sync_args()
  local rows, listed_or_err = self:sync_rows(client)
  if not rows then return fail(listed_or_err) end
  self.listed = listed_or_err
  return self:report(rows)
end

--- The syncs (or, with --dry-run, what they would be) on one client: the
-- rows and how many tokens were listed, or nil, err.
function Run:sync_rows(client)
  local a = self.args
  local rows, skipped, known, listed = {}, {}, {}, nil
  local ids = a.id
  if not a.all then
    local resolved, err = self:resolve(client, a.id)
    if not resolved then return nil, err end
    ids = resolved
  end
  if a.all then
    local step, done = self:progress("syncing")
    local report, err = client:sync_all {
      state = #a.state > 0 and a.state or "valid", include_in_progress = a.include_in_progress,
      concurrency = a.concurrency, on_result = step, dry_run = a.dry_run, deadline = self:left(),
    }
    done()
    if not report then return nil, err end
    for _, t in ipairs(report.skipped) do
      skipped[#skipped + 1] = outcome(t.id, t, "skipped", nil, nil, "already syncing")
    end
    for _, t in ipairs(report.tokens) do known[t.id] = t end
    listed = report.listed
    if a.dry_run then
      for _, t in ipairs(report.tokens) do rows[#rows + 1] = outcome(t.id, t, "would sync") end
    else
      collect(rows, report.results, known)
    end
  elseif a.dry_run then
    -- Read each token, so the dry run proves the ids exist.
    local results = client:get_many(ids, { concurrency = a.concurrency, deadline = self:left() })
    for _, r in ipairs(results) do
      rows[#rows + 1] = r.err and outcome(r.id, nil, failure(r.err), r.err) or outcome(r.id, r.token, "would sync")
    end
  else
    local step, done = self:progress("syncing")
    local results = client:sync_many(ids, { concurrency = a.concurrency, on_result = step, deadline = self:left() })
    done()
    collect(rows, results, known)
  end
  if a.wait and not a.dry_run and not self.caught.signal then self:wait(client, rows) end
  for _, r in ipairs(skipped) do rows[#rows + 1] = r end
  return rows, listed
end


-- Polls the started syncs until they end; their rows get the final state.
function Run:wait(client, rows)
  local started, at = {}, {}
  for i, r in ipairs(rows) do
    if r.result == "started" or r.result == "completed" or r.result == "failed" then
      started[#started + 1] = r.id
      at[#started] = i
    end
  end
  if #started == 0 then return end
  local step, done = self:progress("waiting")
  -- Only syncs that ended after these started count (see wait_for_sync).
  local since = tokens.sync_started_at(rows)
  local waited = client:wait_for_sync(started, { timeout = self.args.wait_timeout, interval = self.args.wait_interval,
    concurrency = self.args.concurrency, on_result = step, deadline = self:left(), since = since })
  done()
  for k, w in ipairs(waited) do
    local old = rows[at[k]]
    if w.err then
      rows[at[k]] = outcome(w.id, w.token, failure(w.err), w.err, old)
    else
      rows[at[k]] = outcome(w.id, w.token, tostring(w.token.lastSyncStatus))
    end
  end
end

function Run:report(rows)
  self:print_outcomes(rows)
  local n, bad, parts = {}, 0, {}
  for _, r in ipairs(rows) do
    n[r.result] = (n[r.result] or 0) + 1
    if r.result == "error" or r.result == "failed" or r.result == "timeout" then bad = bad + 1 end
  end
  for _, k in ipairs { "would sync", "started", "completed", "failed", "timeout", "error", "interrupted", "skipped" } do
    if n[k] then parts[#parts + 1] = ("%d %s"):format(n[k], k == "skipped" and "skipped (already syncing)" or k) end
  end
  local line = ("%d token%s: %s"):format(#rows, #rows == 1 and "" or "s",
    #parts > 0 and table.concat(parts, ", ") or "nothing to sync")
  if self.listed then line = line .. (" (%d listed)"):format(self.listed) end
  if self.fleet then
    line = line .. (" in %d tenant%s"):format(self.fleet_size, self.fleet_size == 1 and "" or "s")
    if self.tenants_failed > 0 then
      line = line .. ("; %d tenant%s failed"):format(self.tenants_failed, self.tenants_failed == 1 and "" or "s")
      bad = bad + self.tenants_failed
    end
  end
  if self:interruption() then
    output.err("vpp: ", self:interruption(), ": ", line, "\n")
    self.summarised = true
    return M.EXIT_FAILURE -- main turns it into 128 + the signal
  end
  if bad > 0 then
    output.err("vpp: ", line, "\n") -- even with --quiet: the exit code says something failed
    return M.EXIT_FAILURE
  end
  self:say(line)
  return M.EXIT_OK
end

function Run:sync_apps(client)
  local a = self.args
  local step, done = self:progress("syncing")
  local results = client:sync_many(a.id, { action = "sync_apps", organization_id = a.organization,
    concurrency = a.concurrency, on_result = step, deadline = self:left() })
  done()
  local rows = {}
  collect(rows, results, {})
  return self:report(rows)
end

-- ---- check -------------------------------------------------------------------------

function Run:check_unknown(err)
  self.out:write(check.outputs[self.args.format].unknown(err, { now = core._time(), tenant = self.tenant_name }))
  return check.UNKNOWN
end

--- The options of the check's rules, from the flags.
function Run:check_options()
  local a = self.args
  local severity = {}
  for _, pair in ipairs(a.severity) do severity[pair[1]] = pair[2] end
  return health.options { warn_days = a.warn_days, crit_days = a.crit_days, stale_hours = a.stale_hours,
    licenses_warn = a.licenses_warn, licenses_crit = a.licenses_crit, severity = severity, now = core._time(),
    tenant = self.tenant_name }
end

-- What the check reads of one client: the tokens, and the VPP apps unless
-- --no-licenses.
function Run:check_data(client)
  return health.gather(client, { select = select_of(client, "check"), licenses = not self.args.no_licenses,
    deadline = function() return self:left() end })
end

-- A run that did not end is UNKNOWN for the whole check: interrupted, or
-- timed out (nil: err is Graph's answer).
function Run:ended_early(err)
  if err and err.kind == "cancelled" then return { summary = "interrupted" } end
  if err and err.code == "deadline" then return { summary = ("timed out after %g s"):format(self.limit) } end
end

function Run:check(client)
  local a = self.args
  local data, err = self:check_data(client)
  if not data then return self:check_unknown(self:ended_early(err) or err) end
  local early = self:ended_early(data.apps_err)
  if early then return self:check_unknown(early) end
  local opts = self:check_options()
  local report = health.evaluate(data, opts)
  self.out:write(check.outputs[a.format].report(report, opts))
  return report.status
end

-- ---- fleets ------------------------------------------------------------------------------

--- The fleet of the tenants file and the names of the tenants picked by
-- --tenant and --shard; raises a usage error for a bad file or name.
function Run:open_fleet(path, settings)
  local fleet_mod = require "vpp.fleet"
  local ok, fleet = pcall(vpp.fleet_from_file, path, settings)
  if not ok then usage_error(format.message(fleet):gsub("^vpp: ", "")) end
  local a, wanted, names = self.args, {}, {}
  for _, n in ipairs(a.tenant) do
    if not fleet.by_name[n] then usage_error(("no tenant named '%s' in %s"):format(n, path)) end
    wanted[n] = true
  end
  for _, t in ipairs(fleet.tenants) do
    if (#a.tenant == 0 or wanted[t.name]) and (not a.shard or fleet_mod.shard_of(t.name, a.shard.n) == a.shard.k) then
      names[#names + 1] = t.name
    end
  end
  return fleet, names
end

--- The tenant's labels from the tenants file (nil when it has none).
function Run:labels_of(name)
  local t = self.fleet and self.fleet.by_name[name]
  if t and next(t.labels) then return t.labels end
end

function Run:tenant_failed(r)
  self.tenants_failed = self.tenants_failed + 1
  if r.err and r.err.kind == "cancelled" then return end
  local message = r.err and (r.err.usage or format.message(r.err)) or "failed"
  output.err(("vpp: tenant %s: %s\n"):format(r.tenant, message))
end

--- fn(client, tenant) on each picked tenant, on one loop, with a progress
-- line counting tenants (and tokens); the results, failures said on stderr.
function Run:across(fleet, names, label, fn)
  self.fleet_size, self.tenants_failed = #names, 0
  local bar = progress.new(label, #names, not self.args.quiet and label ~= nil)
  self.fleet_bar = bar
  local results = fleet:run(fn, { tenants = names, deadline = self.deadline_at and self:left(),
    on_result = function(r) bar:step(not r.ok) end })
  bar:finish()
  self.fleet_bar = nil
  return results
end

function Run:fleet_list(fleet, names)
  local a = self.args
  local results = self:across(fleet, names, "tenants", function(client)
    return client:list_tokens { select = select_of(client, a.format), deadline = self:left() }
  end)
  local all, owner = {}, {}
  for _, r in ipairs(results) do
    if r.ok then
      for _, t in ipairs(r.value) do
        all[#all + 1] = t
        owner[t] = r.tenant
      end
    else
      self:tenant_failed(r)
    end
  end
  self:print_tokens(vpp.filter(all, self:list_criteria()), owner)
  return self.tenants_failed > 0 and M.EXIT_FAILURE or M.EXIT_OK
end

function Run:fleet_sync(fleet, names)
  self:check_sync_args()
  if not self.args.all then usage_error("with --tenants, sync takes --all (token ids need one --tenant)") end
  local results = self:across(fleet, names, "tenants", function(client)
    local rows, listed = self:sync_rows(client)
    if not rows then return nil, listed end
    return { rows = rows, listed = listed }
  end)
  local rows, listed = {}, 0
  for _, r in ipairs(results) do
    if r.ok then
      for _, row in ipairs(r.value.rows) do
        row.tenant = r.tenant
        rows[#rows + 1] = row
      end
      listed = listed + (r.value.listed or 0)
    else
      self:tenant_failed(r)
    end
  end
  self.listed = listed
  return self:report(rows)
end

function Run:fleet_check(fleet, names)
  local a = self.args
  local results = self:across(fleet, names, nil, function(client)
    return self:check_data(client)
  end)
  if self.caught.signal then return self:check_unknown { summary = "interrupted" } end
  local entries = {}
  for i, r in ipairs(results) do
    local data = r.ok and r.value or nil
    if data and self:ended_early(data.apps_err) then data.apps_err = self:ended_early(data.apps_err) end
    entries[i] = { tenant = r.tenant, data = data, err = self:ended_early(r.err) or r.err,
      labels = self:labels_of(r.tenant) }
  end
  local opts = self:check_options()
  local report = check.evaluate_fleet(entries, opts)
  self.out:write(check.fleet_outputs[a.format](report, opts))
  return report.status
end

-- get ID: looked for in every tenant (a start of an id resolved in each).
function Run:fleet_get(fleet, names)
  local id = self.args.id
  local results = self:across(fleet, names, "tenants", function(client)
    local ids, err = self:resolve(client, { id }, true)
    if not ids then return nil, err end
    local token, gerr = client:get_token(ids[1])
    if token then return token end
    if gerr.status == 404 then return false end
    return nil, gerr
  end)
  local found = {}
  for _, r in ipairs(results) do
    if not r.ok then
      self:tenant_failed(r)
    elseif r.value then
      local t = redact(r.value)
      if t == r.value then
        t = {}
        for k, v in pairs(r.value) do t[k] = v end
      end
      t.tenant, t.labels = r.tenant, self:labels_of(r.tenant)
      found[#found + 1] = t
    end
  end
  if #found == 0 then
    output.err(("vpp: no tenant has a token %s\n"):format(id))
    return M.EXIT_FAILURE
  end
  local f = self.args.format
  if f == "json" then
    self.out:write(format.json(#found == 1 and found[1] or format.array(found)))
  elseif f == "csv" then
    for _, t in ipairs(found) do t.labels = labels_cell(t.labels) end
    self.out:write(format.csv(found, fields_with_tenant(format.token_fields, true)))
  else
    for _, t in ipairs(found) do self.out:write(format.token_detail(t, colour())) end
  end
  return self.tenants_failed > 0 and M.EXIT_FAILURE or M.EXIT_OK
end

-- ---- main ------------------------------------------------------------------------------

-- With --tenants, these run across the fleet.
local fleet_commands = { list = Run.fleet_list, sync = Run.fleet_sync, check = Run.fleet_check, get = Run.fleet_get }

local commands = { list = Run.list, get = Run.get, sync = Run.sync, ["sync-apps"] = Run.sync_apps, check = Run.check,
  licenses = Run.licenses, ["revoke-licenses"] = Run.revoke_licenses, ["sync-license-counts"] = Run.sync_license_counts,
  set = Run.set, renew = Run.renew }

-- The subcommand named in raw arguments, for the usage text of a bad call.
local function command_in(args)
  for _, a in ipairs(args) do
    if commands[a] then return a end
  end
end

local function usage_exit(command)
  return command == "check" and check.UNKNOWN or M.EXIT_USAGE
end

-- Exit codes of a run whose output is kept (--output FILE replaced): done,
-- and check's OK, WARNING and CRITICAL (the check's answer).
local function succeeded(name, code)
  if name == "check" then return code == check.OK or code == check.WARNING or code == check.CRITICAL end
  return code == M.EXIT_OK
end

-- The failing exit code of a command (check's is UNKNOWN).
local function failure_of(name)
  return name == "check" and check.UNKNOWN or M.EXIT_FAILURE
end

local completions = { bash = "get_bash_complete", zsh = "get_zsh_complete", fish = "get_fish_complete" }

local function run(args, ctx)
  -- SIGINT, SIGTERM, from the start: the calls under way end at once
  -- (cancel), what finished is reported, and the exit is 128 + the signal.
  local caught = {}
  core._catch_signals(function(sig)
    caught.signal = caught.signal or sig
    if caught.client then caught.client:cancel() end
  end)
  local state = {}
  local parser, subcommands = M.parser(state)
  local ok, parsed = parser:pparse(args)
  local name = ok and parsed.command or command_in(args)
  ctx.name = name
  local out = output.new(ok and parsed.output or nil)
  ctx.out = out
  if not out:usable() then
    -- Nothing would reach anyone: say so before doing anything.
    output.err("vpp: cannot write to stdout: it is closed (give --output FILE, or open it)\n")
    ctx.out = nil
    return failure_of(name)
  end
  colour_on = format.use_colour(ok and parsed.color or "auto", out:terminal())
  if state.help then
    out:write(state.help, "\n")
    return M.EXIT_OK
  end
  if state.version then
    out:write(("vpp %s (lua-vpp, %s, %s)\n"):format(vpp._VERSION, core._curl_version, _VERSION))
    return M.EXIT_OK
  end
  local usage = (subcommands[name] or parser):get_usage()
  if not ok then
    output.err(usage, "\n\nvpp: ", parsed, "\n")
    return usage_exit(name)
  end
  if parsed.proxy and parsed.proxy:match("^[^/]*//[^/@]*:[^/@]*@") then
    output.err(usage, "\n\nvpp: --proxy must not hold a password (others can read a command line):"
      .. " put the URL in VPP_PROXY\n")
    return usage_exit(name)
  end
  if name == "help" then
    local topic = parsed.topic
    if topic and not subcommands[topic] then
      output.err(subcommands.help:get_usage(), ("\n\nvpp: unknown command '%s'\n"):format(topic))
      return M.EXIT_USAGE
    end
    out:write((topic and subcommands[topic] or parser):get_help(), "\n")
    return M.EXIT_OK
  end
  if name == "completion" then
    out:write(parser[completions[parsed.shell]](parser))
    return M.EXIT_OK
  end
  local self = setmetatable({ args = parsed, caught = caught, out = out }, Run)
  if name == "check" then
    local problem = parsed.crit_days > parsed.warn_days and "--crit-days must not be more than --warn-days"
      or parsed.licenses_warn > parsed.licenses_crit and "--licenses-warn must not be more than --licenses-crit"
    if problem then
      output.err(usage, "\n\nvpp: ", problem, "\n")
      return check.UNKNOWN
    end
  end
  local tenants_file = parsed.tenants
  if tenants_file == nil and (os.getenv("VPP_TENANTS") or "") ~= "" then tenants_file = os.getenv("VPP_TENANTS") end
  if tenants_file and parsed.credential then
    output.err(usage, "\n\nvpp: --credential goes without --tenants (the tenants file names each tenant's credential)\n")
    return usage_exit(name)
  end
  if not tenants_file and (#parsed.tenant > 0 or parsed.shard) then
    output.err(usage, "\n\nvpp: --tenant and --shard go with --tenants\n")
    return usage_exit(name)
  end
  local fleet, names
  local command = commands[name]
  if tenants_file then
    local opened, f, picked = pcall(self.open_fleet, self, tenants_file, self:flag_settings())
    if not opened then
      if getmetatable(f) ~= UsageError then error(f, 0) end
      output.err(usage, "\n\nvpp: ", f.message, "\n")
      return usage_exit(name)
    end
    fleet, names = f, picked
    if fleet_commands[name] then
      command = function(run_self) return fleet_commands[name](run_self, fleet, names) end
      self.fleet = fleet
    elseif #names ~= 1 then
      output.err(usage, ("\n\nvpp: with --tenants, %s runs on one tenant: pick it with --tenant NAME\n"):format(name))
      return usage_exit(name)
    else
      self.tenant_name = names[1]
    end
  end
  local client, message, kind
  if self.fleet then
    client = fleet
  else
    client, message, kind = self:client(fleet, self.tenant_name)
  end
  if not client then
    if kind == "settings" then
      output.err(usage, "\n\nvpp: ", message, "\n")
      return usage_exit(name)
    end
    if name == "check" then return self:check_unknown(message) end
    output.err("vpp: ", message, "\n")
    return M.EXIT_FAILURE
  end
  self.limit = parsed.deadline
  if name == "check" then self.limit = math.min(parsed.deadline or math.huge, parsed.run_timeout) end
  if self.limit then self.deadline_at = core._clock() + self.limit end
  caught.client = client
  if caught.signal then client:cancel() end -- it came while the client was made
  local done, code = pcall(command, self, client)
  caught.client = nil
  client:close()
  if done and caught.signal and name ~= "check" then
    if not self.summarised then output.err("vpp: ", self:interruption(), "\n") end
    return 128 + caught.signal
  end
  if not done then
    if getmetatable(code) == UsageError then
      output.err(usage, "\n\nvpp: ", code.message, "\n")
      return usage_exit(name)
    end
    error(code, 0)
  end
  return code
end

--- Runs the command line `args` (a list of strings); returns the exit code.
-- Nothing a user can do produces a traceback: a bug in lua-vpp is one line
-- (the traceback with --verbose) and exit code 70.  What it writes is
-- checked: a write that failed makes the exit code a failure.
function M.main(args)
  local verbose = false
  for _, a in ipairs(args) do
    if a == "-v" or a == "--verbose" then verbose = true end
  end
  output.reset()
  output.guard_std_streams()
  local ctx = {}
  local ok, code = xpcall(function() return run(args, ctx) end, function(e) -- no xpcall arguments in 5.1
    return verbose and debug.traceback(tostring(e), 2) or tostring(e)
  end)
  core._release_signals() -- a host that runs main keeps its own handling
  if not ok then
    output.err("vpp: internal error: ", tostring(code), "\n")
    code = M.EXIT_SOFTWARE
  end
  if ctx.out then
    code = ctx.out:finish(ok and succeeded(ctx.name, code), failure_of(ctx.name)) or code
  elseif output.stderr_failed() and code == M.EXIT_OK then
    code = M.EXIT_FAILURE
  end
  return code
end

return M
