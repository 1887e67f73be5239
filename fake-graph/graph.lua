-- The fake Microsoft Graph: the Intune VPP token endpoints, stateful, plus an
-- /_admin/ API the specs, the demo and the benchmarks use to script faults
-- and read what the server saw.  Runs inside nginx (lua-nginx-module).
local cjson = require "cjson.safe"
local tenant = require "tenant"
local schema = require "schema"
local apps = require "apps"

local M = {}
local dict = ngx.shared.graph
local config = {}

local defaults = {
  tokens = 40, seed = 1, page_size = 100, latency = 0, sync_seconds = 2, log = true,
}

local function setting(name)
  local v = dict:get("cfg:" .. name)
  if v == nil then return config[name] end
  return v
end

-- The data of the tenant the request is for (ngx.ctx.tenant: the tenant
-- its access token was issued for, or the admin call's ?tenant=): each
-- tenant has its own tokens, syncs, scripted answers and licences, as in
-- Graph, where the token alone decides whose data a request sees.
local function key(k)
  local t = ngx.get_phase() ~= "init" and ngx.ctx.tenant or nil
  return (t or "") .. "|" .. k
end

local function name_hash(s)
  local h = 0
  for i = 1, #s do h = (h * 31 + s:byte(i)) % 1000003 end
  return h
end

local function seed_tenant()
  local n, seed = setting("tokens"), setting("seed")
  local t = ngx.get_phase() ~= "init" and ngx.ctx.tenant or nil
  if t then seed = seed + name_hash(t) end
  local list = tenant.generate(n, seed, ngx.time())
  for i, tok in ipairs(list) do
    -- Another tenant's location tokens have Apple IDs of their own.
    if t then tok.appleId = tok.appleId:gsub("@", "." .. t:sub(1, 8) .. "@") end
    dict:set(key("tok:") .. tok.id, cjson.encode(tok))
    dict:set(key("idx:") .. i, tok.id)
  end
  dict:set(key("count"), #list)
  dict:set(key("apps"), cjson.encode(apps.generate(list, tenant.timestamp(ngx.time() - 30 * 86400))))
end

function M.init(cfg)
  for k, v in pairs(defaults) do
    if cfg[k] == nil then cfg[k] = v end
  end
  config = cfg
  seed_tenant()
end

-- When a request came, to the millisecond (ngx.now() alone is the time
-- the event loop last woke).
local function now()
  ngx.update_time()
  return ngx.now()
end

local function uuid()
  return string.format("%08x-%04x-4%03x-%04x-%06x%06x", math.random(0, 0xffffffff),
    math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff),
    math.random(0, 0xffffff), math.random(0, 0xffffff))
end

local function send(status, body, headers)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if not ngx.ctx.no_request_id then ngx.header["request-id"] = ngx.ctx.request_id end
  ngx.header["client-request-id"] = ngx.var.http_client_request_id
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  if body ~= "" then ngx.print(body) end
  return ngx.exit(status)
end

-- Intune's services answer with an error of their own, which Graph passes
-- on as a JSON string in error.message (as in Graph's answers quoted in
-- microsoftgraph/powershell-intune-samples#89 and
-- microsoft-graph-docs-contrib#4157): pretty-printed with CR LF, the text
-- followed by the operation id (zeros), the activity id and the service URL.
local function intune_message(text)
  local activity = ngx.ctx.request_id or "00000000-0000-0000-0000-000000000000"
  local inner = ("%s - Operation ID (for customer support): 00000000-0000-0000-0000-000000000000"
    .. " - Activity ID: %s - Url: https://fef.msua06.manage.microsoft.com/StatelessAppMetadataFEService"
    .. "/deviceAppManagement/vppTokens?api-version=5025-01-10"):format(text, activity)
  return ('{\r\n  "_version": 3,\r\n  "Message": %s,\r\n  "CustomApiErrorPhrase": "",\r\n'
    .. '  "RetryAfter": null,\r\n  "ErrorSourceService": "",\r\n  "HttpHeaders": "{}"\r\n}'):format(cjson.encode(inner))
end

local function graph_error(status, code, message, headers, intune)
  if intune then message = intune_message(message) end
  return send(status, cjson.encode({ error = {
    code = code, message = message,
    innerError = { date = tenant.timestamp(ngx.now()):sub(1, 19),
      ["request-id"] = ngx.ctx.request_id,
      ["client-request-id"] = ngx.var.http_client_request_id },
  } }), headers)
end

-- A scripted response, queued by /_admin/program for one key.
local function serve_program(r)
  if r.delay then ngx.sleep(r.delay) end
  if r.drop then return ngx.exit(444) end
  ngx.ctx.no_request_id = r.no_request_id
  if r.stream then
    -- A long chunked body, sent slowly: shows whether a client stops early.
    ngx.status = r.status or 200
    ngx.header["Content-Type"] = "application/json"
    local chunk = string.rep("x", r.stream.chunk or 65536)
    ngx.print('{"id":"stream","pad":"')
    for _ = 1, r.stream.count or 100 do
      ngx.print(chunk)
      local ok = ngx.flush(true)
      if not ok then return ngx.exit(444) end
      if r.stream.delay then ngx.sleep(r.stream.delay) end
    end
    ngx.print('"}')
    return ngx.exit(ngx.status)
  end
  if r.error then return graph_error(r.status or 500, r.error, r.message or r.error, r.headers, r.intune) end
  local body = r.body or (r.json and cjson.encode(r.json)) or ""
  if r.body_base64 then body = ngx.decode_base64(r.body_base64) end -- binary bodies (gzip)
  if r.stall or r.chunked_cut then
    -- Chunked (no Content-Length): part of the body, then either a stall of
    -- stall.seconds before the rest, or the connection closed without the
    -- last chunk.
    ngx.status = r.status or 200
    ngx.header["Content-Type"] = "application/json"
    local part = r.chunked_cut or r.stall.after
    ngx.print(body:sub(1, part))
    ngx.flush(true)
    if r.chunked_cut then return ngx.exit(ngx.ERROR) end
    ngx.sleep(r.stall.seconds)
    ngx.print(body:sub(part + 1))
    return ngx.exit(ngx.status)
  end
  if r.big then
    body = '{"id":"big","pad":"' .. string.rep("x", r.big) .. '"}'
  end
  if r.cut then
    -- Promise the whole body, send part of it, then close the connection.
    ngx.status = r.status or 200
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = #body
    ngx.print(body:sub(1, r.cut))
    ngx.flush(true)
    return ngx.exit(444)
  end
  local headers = r.headers or {}
  if r.content_type then headers["Content-Type"] = r.content_type end
  return send(r.status or 200, body, headers)
end

local function take_program(name)
  local item = dict:lpop(key("prog:") .. name)
  return item and cjson.decode(item)
end

-- Serves the response scripted for name, if one is queued (ngx.exit ends
-- the request there); { pass = true, delay = s } only delays the real
-- answer, as a slow but working service would.
local function scripted(name)
  local prog = take_program(name)
  if not prog then return end
  if prog.pass then
    ngx.sleep(prog.delay or 0)
    return
  end
  serve_program(prog)
end

-- A sync's length: sync_seconds, spread over [0.5, 1.5) of it by the id,
-- so that the tokens of one tenant do not all finish at once.
local function sync_length(id)
  return setting("sync_seconds") * (0.5 + (name_hash(id) % 1000) / 1000)
end

-- Tokens Apple refuses: their syncs end "failed".
local unsyncable = { expired = true, invalid = true, assignedToExternalMDM = true }

-- The stored token (beta's properties) with its sync's progress: in
-- progress for its sync_length, then completed or failed, with
-- lastSyncDateTime moved to the moment it ended.
local function load_stored(id)
  local raw = dict:get(key("tok:") .. id)
  if not raw then return nil end
  local tok = cjson.decode(raw)
  local started = dict:get(key("sync:") .. id)
  if started then
    local ends = started + sync_length(id)
    if ngx.now() < ends then
      tok.lastSyncStatus = "inProgress"
    else
      tok.lastSyncDateTime = tenant.timestamp(ends)
      tok.lastSyncStatus = (dict:get(key("syncfail:") .. id) or unsyncable[tok.state]) and "failed" or "completed"
    end
  end
  return tok
end

local function store(tok)
  dict:set(key("tok:") .. tok.id, cjson.encode(tok))
end

-- The token as the request's API version serves it.
local function load_token(id)
  local tok = load_stored(id)
  return tok and schema.project(tok, ngx.ctx.version)
end

local function context(kind)
  return string.format("%s://%s%s/$metadata#%s", ngx.var.scheme, ngx.var.http_host,
    ngx.ctx.prefix .. "/" .. ngx.ctx.version, kind)
end

local function query_args(query)
  local args = {}
  for k, v in query:gmatch("([^&=]+)=?([^&]*)") do
    args[ngx.unescape_uri(k)] = ngx.unescape_uri(v)
  end
  return args
end

local function no_property(name)
  return graph_error(400, "BadRequest", ("Could not find a property named '%s' on type 'microsoft.graph.vppToken'.")
    :format(name))
end

-- Enough of OData $filter for ops scripts: "a eq 'x' and b eq true", on
-- the version's properties, enum values checked as Graph checks them.
-- Returns the terms, or nil and the error to send.
local function parse_filter(s)
  local terms, known, enums = {}, schema.known[ngx.ctx.version], schema.enums[ngx.ctx.version]
  for clause in (s .. " and "):gmatch("(.-) and ") do
    local field, value = clause:match("^%s*([%w@.]+)%s+eq%s+'(.*)'%s*$")
    if not field then
      field, value = clause:match("^%s*([%w@.]+)%s+eq%s+(%a+)%s*$")
      if value ~= "true" and value ~= "false" then field = nil end
    end
    if not field then return nil, function() return graph_error(400, "BadRequest", "Invalid filter clause") end end
    if not known[field] then return nil, function() return no_property(field) end end
    if enums[field] and not enums[field][value] then
      return nil, function()
        return graph_error(400, "BadRequest", ("The string '%s' is not a valid enumeration type constant."):format(value))
      end
    end
    terms[#terms + 1] = { field, value }
  end
  return terms
end

local function matches(tok, terms)
  for _, t in ipairs(terms) do
    if tostring(tok[t[1]]) ~= t[2] then return false end
  end
  return true
end

local function select_fields(tok, fields)
  if not fields then return tok end
  local out = { id = tok.id }
  for _, f in ipairs(fields) do out[f] = tok[f] end
  return out
end

-- $select's names, each a property of the version; or nil, the bad name.
local function parse_select(s)
  if not s then return {} end
  local fields = {}
  for f in s:gmatch("[^,]+") do
    if not schema.known[ngx.ctx.version][f] then return nil, f end
    fields[#fields + 1] = f
  end
  return fields
end

-- Graph's $skiptoken is opaque (base64 of its own state); a client must
-- pass it on as it came.  The fake's encodes the position.
local function skiptoken(n)
  return (ngx.encode_base64("RFNwdA:" .. n):gsub("=", ""))
end

local function skip_of(token)
  if not token then return 0 end
  local padded = token .. string.rep("=", (4 - #token % 4) % 4)
  local plain = ngx.decode_base64(padded)
  return plain and tonumber(plain:match("^RFNwdA:(%d+)$")) or tonumber(token) or 0
end

-- Where nextLinks point: Graph names its own host (graph.microsoft.com, or
-- a national cloud's) whatever a gateway in front of it was called with;
-- next_link_origin sets it, else the request's own origin and prefix.
local function next_link_base()
  local origin = setting("next_link_origin")
  if origin then return origin end
  return ("%s://%s%s"):format(ngx.var.scheme, ngx.var.http_host, ngx.ctx.prefix)
end

-- One page of items (from 1..count, item(i) giving the i-th or nil), with
-- the nextLink to `path` (after the version) for the rest.
local function send_page(path, query, count, item, kind)
  local args = query_args(query)
  local top = tonumber(args["$top"]) or setting("page_size")
  local page, i = {}, skip_of(args["$skiptoken"]) + 1
  while i <= count and #page < top do
    local v = item(i)
    if v then page[#page + 1] = v end
    i = i + 1
  end
  local body = { ["@odata.context"] = context(kind), value = page }
  if i <= count then
    local rest = query:gsub("&?%$skiptoken=[^&]*", ""):gsub("^&", "")
    body["@odata.nextLink"] = string.format("%s/%s/%s?%s%s$skiptoken=%s",
      next_link_base(), ngx.ctx.version, path, rest, rest ~= "" and "&" or "", skiptoken(i - 1))
  end
  if #page == 0 then
    -- cjson encodes an empty table as {}; Graph sends [].
    return send(200, (cjson.encode(body):gsub('"value":{}', '"value":[]')))
  end
  return send(200, cjson.encode(body))
end

local function list_tokens(query)
  local args = query_args(query)
  local fields, bad = parse_select(args["$select"])
  if not fields then return no_property(bad) end
  local terms, problem
  if args["$filter"] then
    terms, problem = parse_filter(args["$filter"])
    if not terms then return problem() end
  end
  return send_page("deviceAppManagement/vppTokens", query, dict:get(key("count")) or 0, function(i)
    local tok = load_token(dict:get(key("idx:") .. i))
    if tok and (not terms or matches(tok, terms)) then
      return select_fields(tok, args["$select"] and fields)
    end
  end, "deviceAppManagement/vppTokens")
end

local function not_found()
  return graph_error(404, "ResourceNotFound", "The requested vppToken was not found.")
end

-- How syncLicenses answers (setting sync_answer): "value" (the token
-- wrapped in value, as the docs' example), "bare" (the token itself) or
-- "none" (204 No Content); Graph has been seen to do each.
local function start_sync(id)
  if not dict:get(key("tok:") .. id) then return not_found() end
  dict:set(key("sync:") .. id, ngx.now())
  local answer = setting("sync_answer") or "value"
  if answer == "none" then return send(204, "") end
  local tok = load_token(id)
  if answer == "bare" then
    tok["@odata.context"] = context("microsoft.graph.vppToken")
    return send(200, cjson.encode(tok))
  end
  return send(200, cjson.encode({ ["@odata.context"] = context("microsoft.graph.vppToken"), value = tok }))
end

-- An action's JSON body: a table, or nil and the error sent.  Graph wants
-- Content-Type application/json and refuses parameters it does not know.
local function json_body(params)
  ngx.req.read_body()
  local raw = ngx.req.get_body_data() or ""
  if not (ngx.var.http_content_type or ""):find("^application/json") then
    return nil, graph_error(415, "UnsupportedMediaType",
      "A supported MIME type could not be found that matches the content type of the response.")
  end
  local body = cjson.decode(raw)
  if type(body) ~= "table" then
    return nil, graph_error(400, "BadRequest", "The request body is not a JSON object.")
  end
  for k, v in pairs(body) do
    local want = params and params[k]
    if params and not want then
      return nil, graph_error(400, "BadRequest",
        ("The parameter '%s' in the request payload is not a valid parameter for the operation."):format(k))
    end
    if want == "boolean" and type(v) ~= "boolean" then
      return nil, graph_error(400, "BadRequest",
        ("Cannot convert the literal '%s' to the expected type 'Edm.Boolean'."):format(tostring(v)))
    end
  end
  return body
end

local function action_result(name, extra)
  local t = ngx.now()
  local r = { ["@odata.type"] = "#microsoft.graph.vppTokenActionResult", actionName = name, actionState = "done",
    startDateTime = tenant.timestamp(t), lastUpdatedDateTime = tenant.timestamp(t) }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

-- The apps' licences, as admin.licenses set them: bundle id -> list of
-- { token = id, available = n, used = m }.
local function licenses()
  return cjson.decode(dict:get(key("licenses")) or "{}")
end

-- beta revokeLicenses (api-reference/beta/api/intune-onboarding-vpptoken-revokelicenses.md):
-- { notifyManagedDevices, revokeUntrackedLicenses } -> 204; every licence
-- of the token is freed, and a revoke result is added to its tokenActionResults
-- (vppTokenRevokeLicensesActionResult).
local function revoke_licenses(id)
  local tok = load_stored(id)
  if not tok then return not_found() end
  local body, sent = json_body { notifyManagedDevices = "boolean", revokeUntrackedLicenses = "boolean" }
  if not body then return sent end
  local all, total = licenses(), 0
  for _, list in pairs(all) do
    for _, l in ipairs(list) do
      if l.token == id then
        total = total + l.used
        l.available, l.used = l.available + l.used, 0
      end
    end
  end
  dict:set(key("licenses"), cjson.encode(all))
  tok.tokenActionResults = tok.tokenActionResults or {}
  tok.tokenActionResults[#tok.tokenActionResults + 1] = action_result("revokeLicenses", {
    ["@odata.type"] = "#microsoft.graph.vppTokenRevokeLicensesActionResult",
    totalLicensesCount = total, failedLicensesCount = 0, actionFailureReason = "none" })
  store(tok)
  return send(204, "")
end

-- beta syncLicenseCounts on the collection -> 204.
local function sync_license_counts()
  dict:incr("stat:license_count_syncs", 1, 0)
  return send(204, "")
end

-- beta getLicensesForApp(bundleId='...'): the bundle id is an OData string
-- literal (quotes doubled); a vppTokenLicenseSummary per token with
-- licences of that app, paged like any collection.
local function licenses_for_app(literal, query)
  local bundle = literal:match("^'(.*)'$")
  if not bundle or bundle:gsub("''", ""):find("'") then
    return graph_error(400, "BadRequest", "Bad Request - Error in query syntax.")
  end
  bundle = bundle:gsub("''", "'")
  local list = licenses()[bundle] or {}
  return send_page("deviceAppManagement/vppTokens/getLicensesForApp(bundleId=" .. ngx.escape_uri(literal) .. ")",
    query, #list, function(i)
      local l = list[i]
      local tok = load_stored(l.token) or {}
      return { ["@odata.type"] = "#microsoft.graph.vppTokenLicenseSummary", vppTokenId = l.token,
        appleId = tok.appleId, organizationName = tok.organizationName,
        availableLicenseCount = l.available, usedLicenseCount = l.used }
    end, "Collection(microsoft.graph.vppTokenLicenseSummary)")
end

-- PATCH: the version's writable properties; a new `token` (the renewed
-- Apple file) makes the token valid for a year.  Answers 200 with the
-- token (as the docs say), or 204 with setting patch_answer = "none".
local function update_token(id)
  local tok = load_stored(id)
  if not tok then return not_found() end
  local body, sent = json_body()
  if not body then return sent end
  for k, v in pairs(body) do
    if k ~= "@odata.type" then
      if not schema.known[ngx.ctx.version][k] then return no_property(k) end
      if not schema.writable[k] then
        return graph_error(400, "BadRequest", ("The property '%s' cannot be updated."):format(k))
      end
      if schema.booleans[k] and type(v) ~= "boolean" then
        return graph_error(400, "BadRequest", ("Cannot convert the literal '%s' to the expected type 'Edm.Boolean'.")
          :format(tostring(v)))
      end
      if k == "token" then
        dict:set(key("renewed:") .. id, v)
        tok.state = "valid"
        tok.expirationDateTime = tenant.timestamp(ngx.now() + 365 * 86400)
        v = "" -- Graph never gives the Apple token back
      end
      tok[k] = v
    end
  end
  tok.lastModifiedDateTime = tenant.timestamp(ngx.now())
  store(tok)
  if setting("patch_answer") == "none" then return send(204, "") end
  tok = load_token(id)
  tok["@odata.context"] = context("deviceAppManagement/vppTokens/$entity")
  return send(200, cjson.encode(tok))
end

-- beta deviceAppManagement/mobileApps: every app of the tenant, the VPP
-- ones with their licence counts (apps.lua has the schema); $filter as
-- apps.parse_filter reads it, $select on the base type's properties.
local function list_apps(query)
  local args = query_args(query)
  local fields
  if args["$select"] then
    fields = {}
    for f in args["$select"]:gmatch("[^,]+") do
      if not apps.base_known[f] then
        return graph_error(400, "BadRequest",
          ("Could not find a property named '%s' on type 'microsoft.graph.mobileApp'."):format(f))
      end
      fields[#fields + 1] = f
    end
  end
  local keep
  if args["$filter"] then
    local why
    keep, why = apps.parse_filter(args["$filter"])
    if not keep then return graph_error(400, "BadRequest", why) end
  end
  local list = cjson.decode(dict:get(key("apps")) or "[]")
  return send_page("deviceAppManagement/mobileApps", query, #list, function(i)
    if not keep or keep(list[i]) then return apps.project(list[i], fields) end
  end, "deviceAppManagement/mobileApps")
end

local function allowed(method, want)
  if method ~= want then return graph_error(405, "BadRequest", "Method not allowed") end
end

local function api(method, path, query)
  local apps_prefix = path:match("^(.-)/beta/deviceAppManagement/mobileApps/?$")
  if apps_prefix then
    ngx.ctx.prefix, ngx.ctx.version = apps_prefix, "beta"
    scripted("@apps")
    return allowed(method, "GET") or list_apps(query)
  end
  local prefix, version, rest = path:match("^(.-)/(v1%.0)/deviceAppManagement/vppTokens(.*)$")
  if not prefix then
    prefix, version, rest = path:match("^(.-)/(beta)/deviceAppManagement/vppTokens(.*)$")
  end
  ngx.ctx.prefix, ngx.ctx.version = prefix, version
  if prefix then
    local id, action = rest:match("^/([^/]+)/?([^/]*)$")
    if id then id = ngx.unescape_uri(id) end
    local fn_arg = id and id:match("^getLicensesForApp%(bundleId=(.*)%)$")
    scripted((id == "syncLicenseCounts" or fn_arg) and "@collection" or id or "@list")
    if rest == "" or rest == "/" then
      return allowed(method, "GET") or list_tokens(query)
    elseif version == "beta" and id == "syncLicenseCounts" and action == "" then
      return allowed(method, "POST") or sync_license_counts()
    elseif version == "beta" and fn_arg and action == "" then
      return allowed(method, "GET") or licenses_for_app(fn_arg, query)
    elseif id and action == "" then
      if method == "PATCH" then return update_token(id) end
      if method ~= "GET" then return allowed(method, "GET") end
      local fields, bad = parse_select(query_args(query)["$select"])
      if not fields then return no_property(bad) end
      local tok = load_token(id)
      if not tok then return not_found() end
      if #fields > 0 then tok = select_fields(tok, fields) end
      tok["@odata.context"] = context("deviceAppManagement/vppTokens/$entity")
      return send(200, cjson.encode(tok))
    elseif id and action == "syncLicenses" then
      return allowed(method, "POST") or start_sync(id)
    elseif version == "beta" and id and action == "revokeLicenses" then
      return allowed(method, "POST") or revoke_licenses(id)
    end
    return graph_error(400, "BadRequest", "Resource not found for the segment '" .. rest .. "'.")
  end
  local _, id
  prefix, _, id = path:match("^(.-)/beta/organization/([^/]+)/appleVolumePurchaseProgramTokens/([^/]+)/syncApps$")
  if prefix then
    ngx.ctx.prefix, ngx.ctx.version = prefix, "beta"
    id = ngx.unescape_uri(id)
    scripted(id)
    if method ~= "POST" then return graph_error(405, "BadRequest", "Method not allowed") end
    if not dict:get(key("tok:") .. id) then return graph_error(404, "ResourceNotFound", "The requested token was not found.") end
    dict:set(key("sync:") .. id, ngx.now())
    local tok = load_token(id)
    -- The legacy entity names its account type differently.
    tok["@odata.type"] = "#microsoft.graph.appleVolumePurchaseProgramToken"
    tok.volumePurchaseProgramTokenAccountType, tok.vppTokenAccountType = tok.vppTokenAccountType, nil
    return send(200, cjson.encode({ value = tok }))
  end
  return graph_error(400, "BadRequest", "Invalid version or resource: " .. path)
end

-- ---- the identity platform: token endpoint and instance metadata --------

local function app()
  local raw = dict:get("app")
  return raw and cjson.decode(raw) or {}
end

local function b64url_decode(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  return ngx.decode_base64(s .. string.rep("=", (4 - #s % 4) % 4))
end

local function identity_error(status, code, aadsts, description)
  local trace, correlation = uuid(), uuid()
  return send(status, cjson.encode({
    error = code,
    error_description = ("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s"):format(aadsts, description, trace, correlation),
    error_codes = { aadsts }, timestamp = tenant.timestamp(ngx.now()),
    trace_id = trace, correlation_id = correlation,
    error_uri = "https://login.microsoftonline.com/error?code=" .. aadsts,
  }))
end

local function issue(lifetime, tenant_id)
  local token = "fake-at-" .. uuid()
  dict:set("issued:" .. token, ngx.now() + lifetime, lifetime + 60)
  if tenant_id then dict:set("tenantof:" .. token, tenant_id, lifetime + 60) end
  return token
end

-- The registered application serves one tenant, or (a multi-tenant app,
-- as an MSP's is) each of a.tenants, with a.secrets[tenant] for a secret of
-- its own.
local function serves(a, tenant_id)
  if a.tenant == tenant_id then return true end
  for _, t in ipairs(a.tenants or {}) do
    if t == tenant_id then return true end
  end
  return false
end

-- Checks the JWT client assertion's header and claims (its signature is
-- checked by the spec, with openssl): nil when fine, else a description.
-- A workload identity's assertion: the platform's token (Kubernetes, a CI
-- runner) for the app's federated credential { issuer, subject }, audience
-- api://AzureADTokenExchange (Entra's default; learn.microsoft.com
-- entra/workload-id/workload-identity-federation).  The signature, the
-- issuer's to check, is not.  Returns the AADSTS code and the problem.
local function federated_problem(header, claims, a)
  local f = a.federated
  if not f then return 700027, "the app has no federated credential" end
  if header["x5t#S256"] then return 700027, "a certificate's assertion, for an app with a federated credential" end
  if claims.iss ~= f.issuer then
    return 700211, "No matching federated identity record found for presented assertion issuer '" .. tostring(claims.iss) .. "'."
  end
  if claims.sub ~= f.subject then
    return 700213, "No matching federated identity record found for presented assertion subject '" .. tostring(claims.sub) .. "'."
  end
  if claims.aud ~= "api://AzureADTokenExchange" then
    return 700212, "No matching federated identity record found for presented assertion audience."
  end
  if type(claims.exp) ~= "number" or claims.exp < ngx.time() then
    return 700024, "Client assertion is not within its valid time range."
  end
end

local function assertion_problem(jwt, a, audience)
  local h, p = jwt:match("^([%w_-]+)%.([%w_-]+)%.[%w_-]+$")
  if not h then return "the assertion is not a signed JWT" end
  local header, claims = cjson.decode(b64url_decode(h) or ""), cjson.decode(b64url_decode(p) or "")
  if type(header) ~= "table" or type(claims) ~= "table" then return "the assertion is not JSON" end
  if a.federated then
    local code, problem = federated_problem(header, claims, a)
    return problem, code
  end
  if header.alg ~= "PS256" then return "alg must be PS256" end
  -- Subject name/issuer authentication: the certificate itself, and its
  -- chain, in x5c (standard base64 DER; RFC 7515 4.1.6).
  if a.x5c then
    if type(header.x5c) ~= "table" or header.x5c[1] ~= a.x5c then return "x5c must carry the certificate" end
    if a.x5c_chain and #header.x5c ~= a.x5c_chain then return "x5c must carry the chain" end
  elseif header.x5c ~= nil then
    return "x5c is sent only for subject name/issuer authentication"
  end
  if type(header["x5t#S256"]) ~= "string" then return "x5t#S256 is missing" end
  if a.thumbprint and header["x5t#S256"] ~= a.thumbprint then return "unknown certificate" end
  if claims.aud ~= audience then return "aud must be the token endpoint: " .. audience end
  if claims.iss ~= a.client_id or claims.sub ~= a.client_id then return "iss and sub must be the client id" end
  if type(claims.jti) ~= "string" or claims.jti == "" then return "jti is missing" end
  local t = ngx.time()
  if type(claims.exp) ~= "number" or claims.exp < t then return "the assertion has expired" end
  if type(claims.nbf) ~= "number" or claims.nbf > t + 60 then return "nbf is in the future" end
  return nil
end

local function token_endpoint(method, tenant_id, query_path)
  dict:incr("stat:token_requests", 1, 0)
  ngx.req.read_body()
  local body = ngx.req.get_body_data() or ""
  local form = ngx.decode_args(body, 0)
  local h = ngx.req.get_headers()
  dict:rpush("tokenlog", cjson.encode({ kind = "token", at = now(), method = method, tenant = tenant_id,
    raw = body, content_type = h["content-type"], form = form }))
  scripted("@token")
  local a = app()
  if method ~= "POST" then return identity_error(405, "invalid_request", 900561, "The endpoint only accepts POST.") end
  if not (h["content-type"] or ""):find("application/x-www-form-urlencoded", 1, true) then
    return identity_error(400, "invalid_request", 900144, "The request body must contain a form.")
  end
  if not serves(a, tenant_id) then
    return identity_error(400, "invalid_request", 90002, "Tenant '" .. tenant_id .. "' not found.")
  end
  if form.grant_type ~= "client_credentials" then
    return identity_error(400, "unsupported_grant_type", 70003, "The grant type is not supported.")
  end
  if form.client_id ~= a.client_id then
    return identity_error(400, "unauthorized_client", 700016, "Application with identifier '"
      .. tostring(form.client_id) .. "' was not found in the directory.")
  end
  if a.scope and form.scope ~= a.scope then
    return identity_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
  end
  if form.client_secret then
    if form.client_secret ~= ((a.secrets or {})[tenant_id] or a.client_secret) then
      return identity_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
    end
  elseif form.client_assertion_type == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" then
    local audience = ("%s://%s%s"):format(ngx.var.scheme, ngx.var.http_host, query_path)
    local problem, code = assertion_problem(form.client_assertion or "", a, audience)
    if problem and code then return identity_error(400, "invalid_client", code, problem) end
    if problem then return identity_error(401, "invalid_client", 700027, "Client assertion failed: " .. problem) end
  else
    return identity_error(401, "invalid_client", 7000218, "The request body must contain client_secret or client_assertion.")
  end
  local lifetime = a.lifetime or 3599
  return send(200, cjson.encode({ token_type = "Bearer", expires_in = lifetime, ext_expires_in = lifetime,
    access_token = issue(lifetime, a.tenants and tenant_id or nil) }))
end

local function imds(query)
  dict:incr("stat:token_requests", 1, 0)
  local args, h = query_args(query), ngx.req.get_headers()
  dict:rpush("tokenlog", cjson.encode({ kind = "imds", at = now(), args = args, metadata = h["metadata"] }))
  scripted("@imds")
  if h["metadata"] ~= "true" then
    return send(400, cjson.encode({ error = "invalid_request", error_description = "Required metadata header not specified" }))
  end
  if args["api-version"] ~= "2018-02-01" or not args.resource then
    return send(400, cjson.encode({ error = "invalid_request", error_description = "Required query variable missing" }))
  end
  local a = app()
  if args.client_id and args.client_id ~= (a.mi_client_id or args.client_id) then
    return send(400, cjson.encode({ error = "invalid_request", error_description = "Identity not found" }))
  end
  local lifetime = a.lifetime or 3599
  -- IMDS sends the numbers as strings.
  return send(200, cjson.encode({ access_token = issue(lifetime), expires_in = tostring(lifetime),
    expires_on = tostring(ngx.time() + lifetime), resource = args.resource, token_type = "Bearer" }))
end

-- App Service and Functions (learn.microsoft.com app-service
-- overview-managed-identity, "REST endpoint reference"): GET
-- IDENTITY_ENDPOINT?api-version=2019-08-01&resource=...[&client_id=...]
-- with X-IDENTITY-HEADER: IDENTITY_HEADER; the answer carries expires_on
-- (seconds since the epoch, a string) and no expires_in.  Its errors are
-- not documented; the fake answers { error = { code, message } }.
local function app_service(query)
  dict:incr("stat:token_requests", 1, 0)
  local args, h = query_args(query), ngx.req.get_headers()
  dict:rpush("tokenlog", cjson.encode({ kind = "app_service", at = now(), args = args,
    has_identity_header = h["x-identity-header"] ~= nil, metadata = h["metadata"] }))
  scripted("@app_service")
  local a = app()
  if not a.identity_header or h["x-identity-header"] ~= a.identity_header then
    return send(401, cjson.encode({ error = { code = "UnauthorizedRequest",
      message = "The X-IDENTITY-HEADER is missing or wrong." } }))
  end
  if args["api-version"] ~= "2019-08-01" or not args.resource then
    return send(400, cjson.encode({ error = { code = "BadRequest",
      message = "api-version 2019-08-01 and resource are required." } }))
  end
  if args.client_id and args.client_id ~= (a.mi_client_id or args.client_id) then
    return send(400, cjson.encode({ error = { code = "BadRequest", message = "Identity not found." } }))
  end
  local lifetime = a.lifetime or 3599
  return send(200, cjson.encode({ access_token = issue(lifetime), expires_on = tostring(ngx.time() + lifetime),
    resource = args.resource, token_type = "Bearer", client_id = args.client_id or "system-assigned" }))
end

-- Azure Arc-enabled servers (learn.microsoft.com azure-arc/servers
-- managed-identity-authentication): GET IDENTITY_ENDPOINT?api-version=
-- 2020-06-01&resource=... with Metadata: true answers 401 with
-- WWW-Authenticate: Basic realm=<a new key file in the agent's token
-- directory>; the same request with Authorization: Basic <its content>
-- gets the token (IMDS's answer).  arc_realm overrides the realm (specs of
-- a bad challenge); arc_key_bytes the key's size.
local function arc(query)
  dict:incr("stat:token_requests", 1, 0)
  local args, h = query_args(query), ngx.req.get_headers()
  local auth = h["authorization"]
  dict:rpush("tokenlog", cjson.encode({ kind = "arc", at = now(), args = args, metadata = h["metadata"],
    basic = auth ~= nil }))
  scripted("@arc")
  local a = app()
  if h["metadata"] ~= "true" then
    return send(400, cjson.encode({ error = "invalid_request", error_description = "Required metadata header not specified" }))
  end
  if args["api-version"] ~= "2020-06-01" or not args.resource then
    return send(400, cjson.encode({ error = "invalid_request", error_description = "Required query variable missing" }))
  end
  if not auth then
    local name = ("%s.key"):format(uuid())
    local path = (a.arc_key_dir or "/var/opt/azcmagent/tokens") .. "/" .. name
    local secret = ngx.encode_base64(uuid() .. uuid()):sub(1, a.arc_key_bytes or 44)
    local f = io.open(path, "wb")
    if f then
      f:write(secret)
      f:close()
      dict:set("arckey:" .. secret, true, 60)
    end
    ngx.header["WWW-Authenticate"] = "Basic realm=" .. (a.arc_realm or path)
    return send(401, cjson.encode({ error = "unauthorized_client", error_description = "Use the key file in the realm." }))
  end
  local secret = auth:match("^Basic (.+)$")
  if not secret or not dict:get("arckey:" .. secret) then
    return send(401, cjson.encode({ error = "invalid_client", error_description = "The key is not valid." }))
  end
  dict:delete("arckey:" .. secret)
  local lifetime = a.lifetime or 3599
  return send(200, cjson.encode({ access_token = issue(lifetime), expires_in = tostring(lifetime),
    expires_on = tostring(ngx.time() + lifetime), resource = args.resource, token_type = "Bearer" }))
end

local function read_json_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  assert(data or not ngx.req.get_body_file(), "admin body too large for client_body_buffer_size")
  return data and cjson.decode(data) or {}
end

local admin = {}

function admin.reset()
  dict:flush_all()
  dict:flush_expired()
  seed_tenant()
  return send(200, '{"reset":true}')
end

-- Change settings at run time; a new size or seed makes a new tenant.
function admin.config()
  local body = read_json_body()
  local reseed = false
  for k, v in pairs(body) do
    dict:set("cfg:" .. k, v)
    if k == "tokens" or k == "seed" then reseed = true end
  end
  if reseed then
    for i = 1, dict:get(key("count")) or 0 do dict:delete(key("tok:") .. (dict:get(key("idx:") .. i) or "")) end
    seed_tenant()
  end
  return send(200, '{"ok":true}')
end

-- Queue scripted responses for one token id ("@list" for the list endpoint).
function admin.program()
  local body = read_json_body()
  for _, r in ipairs(body.responses or {}) do
    for _ = 1, r.times or 1 do dict:rpush(key("prog:") .. body.key, cjson.encode(r)) end
  end
  return send(200, '{"ok":true}')
end

-- Replace the tenant with the given tokens (in order).
function admin.tokens()
  local body = read_json_body()
  for i = 1, dict:get(key("count")) or 0 do dict:delete(key("tok:") .. (dict:get(key("idx:") .. i) or "")) end
  for i, tok in ipairs(body) do
    dict:set(key("tok:") .. tok.id, cjson.encode(tok))
    dict:set(key("idx:") .. i, tok.id)
  end
  dict:set(key("count"), #body)
  dict:delete(key("apps")) -- new tokens: no apps until admin.apps gives some
  return send(200, '{"ok":true}')
end

-- Replace the tenant's apps: { { token = id, total = n, used = m, ... } },
-- each a VPP app of that token (the other fields as Graph names them; type
-- "macOsVppApp" or another mobileApp type; token = false for none).
function admin.apps()
  local list = {}
  for i, a in ipairs(read_json_body()) do
    local tok = a.token and load_stored(a.token)
    local fields = {}
    for k, v in pairs(a) do
      if k == "total" then fields.totalLicenseCount = v
      elseif k == "used" then fields.usedLicenseCount = v
      elseif k ~= "token" then fields[k] = v end
    end
    list[i] = apps.vpp_app(tok, fields, i, tenant.timestamp(ngx.now()))
  end
  dict:set(key("apps"), cjson.encode(list))
  return send(200, '{"ok":true}')
end

-- Syncs of these token ids end "failed" instead of "completed".
function admin.syncfail()
  for _, id in ipairs(read_json_body()) do dict:set(key("syncfail:") .. id, true) end
  return send(200, '{"ok":true}')
end

-- The apps' licences per token: { [bundleId] = { { token, available, used }... } }.
function admin.licenses()
  dict:set(key("licenses"), cjson.encode(read_json_body()))
  return send(200, '{"ok":true}')
end

-- What the last PATCH that renewed a token sent as its `token`.
function admin.renewed()
  local id = read_json_body().id or ""
  return send(200, cjson.encode({ token = dict:get(key("renewed:") .. id) or cjson.null }))
end

-- The stored token (beta's properties), as the specs check what a write did.
function admin.stored()
  local raw = dict:get(key("tok:") .. (read_json_body().id or ""))
  return send(200, raw or "null")
end

-- The registered application: { tenant, client_id, client_secret,
-- thumbprint, mi_client_id, scope, lifetime }; Graph then accepts only the
-- tokens the fake identity platform issued.
function admin.app()
  dict:set("app", cjson.encode(read_json_body()))
  dict:set("cfg:require_issued", true)
  return send(200, '{"ok":true}')
end

-- Every issued token becomes invalid at once (as after a revocation).
function admin.revoke()
  for _, k in ipairs(dict:get_keys(0)) do
    if k:sub(1, 7) == "issued:" then dict:delete(k) end
  end
  return send(200, '{"ok":true}')
end

-- Answers a recorded list (its entries are JSON already), emptying it.
local function drain(list)
  local out = {}
  for i = 1, dict:llen(list) or 0 do out[i] = dict:lpop(list) end
  return send(200, "[" .. table.concat(out, ",") .. "]")
end

function admin.tokenlog() return drain("tokenlog") end

function admin.stats()
  return send(200, cjson.encode({
    token_requests = dict:get("stat:token_requests") or 0,
    requests = dict:get("stat:requests") or 0,
    connections = dict:get("stat:connections") or 0,
    active = dict:get("stat:active") or 0,
    max_active = dict:get("stat:max_active") or 0,
    license_count_syncs = dict:get("stat:license_count_syncs") or 0,
    max_active_tenants = dict:get("stat:max_active_tenants") or 0,
  }))
end

function admin.log() return drain("log") end

local function record(method, raw)
  if not setting("log") then return end
  local h = ngx.req.get_headers()
  dict:rpush("log", cjson.encode({
    method = method, uri = raw, at = now(), connection = tonumber(ngx.var.connection),
    protocol = ngx.var.server_protocol,
    authorization = h["authorization"], accept = h["accept"],
    client_request_id = h["client-request-id"], user_agent = h["user-agent"],
    content_length = h["content-length"], content_type = h["content-type"],
    accept_encoding = h["accept-encoding"], injected = h["x-injected"],
    body = method ~= "GET" and ngx.req.get_body_data() or nil, tenant = ngx.ctx.tenant,
  }))
end

-- Counts the tenants with a request in flight (token requests included):
-- a fleet run's concurrency, as the server sees it.
local function enter(tenant_id)
  ngx.ctx.entered = tenant_id
  if dict:incr("tact:" .. tenant_id, 1, 0) == 1 then
    local n = dict:incr("stat:active_tenants", 1, 0)
    if n > (dict:get("stat:max_active_tenants") or 0) then dict:set("stat:max_active_tenants", n) end
  end
end

function M.handle()
  local method, raw = ngx.req.get_method(), ngx.var.request_uri
  local path, query = raw:match("^([^?]*)%??(.*)$")
  ngx.ctx.request_id = uuid()
  local admin_call = path:match("^/_admin/(%w+)$")
  if admin_call then
    if not admin[admin_call] then return graph_error(404, "NotFound", "no such admin call") end
    local t = ngx.var.arg_tenant
    ngx.ctx.tenant = t and t ~= "" and ngx.unescape_uri(t) or nil
    if ngx.ctx.tenant and not dict:get(key("count")) and admin_call ~= "reset" then seed_tenant() end
    return admin[admin_call]()
  end
  local tenant_id = path:match("^.-/([^/]+)/oauth2/v2%.0/token$")
  if tenant_id then
    tenant_id = ngx.unescape_uri(tenant_id)
    enter(tenant_id)
    local latency = setting("token_latency")
    if latency and latency > 0 then ngx.sleep(latency) end
    return token_endpoint(method, tenant_id, path)
  end
  if path:match("/metadata/identity/oauth2/token$") then return imds(query) end
  if path:match("/msi/token$") then return app_service(query) end
  if path:match("/arc/token$") then return arc(query) end

  -- Whose data: the tenant the bearer token was issued for.
  local bearer = (ngx.var.http_authorization or ""):match("^Bearer (%S+)$")
  ngx.ctx.tenant = bearer and dict:get("tenantof:" .. bearer) or nil
  if ngx.ctx.tenant and not dict:get(key("count")) then seed_tenant() end
  enter(ngx.ctx.tenant or "")
  dict:incr("stat:requests", 1, 0)
  local active = dict:incr("stat:active", 1, 0)
  ngx.ctx.counted = true
  if active > (dict:get("stat:max_active") or 0) then dict:set("stat:max_active", active) end
  if dict:add("conn:" .. ngx.var.connection, true) then dict:incr("stat:connections", 1, 0) end
  if method ~= "GET" then ngx.req.read_body() end
  record(method, raw)

  local latency = setting("latency")
  if latency > 0 then ngx.sleep(latency) end

  local auth = ngx.var.http_authorization
  if not auth or not auth:match("^Bearer %S+$") then
    return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
  end
  if dict:get("cfg:require_issued") then
    local expires = dict:get("issued:" .. auth:sub(8))
    if not expires or expires < ngx.now() then
      return graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
    end
  end
  local denied = setting("forbidden")
  if denied then
    -- Graph's answer to an app without the permission (or its consent).
    return graph_error(403, denied, denied == "Forbidden" and "Application is not authorized to perform this operation."
      or "Insufficient privileges to complete the operation.")
  end
  return api(method, path, query)
end

function M.finish()
  if ngx.ctx.counted then dict:incr("stat:active", -1, 0) end
  if ngx.ctx.entered then
    if dict:incr("tact:" .. ngx.ctx.entered, -1, 0) == 0 then dict:incr("stat:active_tenants", -1, 0) end
  end
end

return M
