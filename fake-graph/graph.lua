-- The fake Microsoft Graph: the Intune VPP token endpoints, stateful, plus an
-- /_admin/ API the specs, the demo and the benchmarks use to script faults
-- and read what the server saw.  Runs inside nginx (lua-nginx-module).
local cjson = require "cjson.safe"
local tenant = require "tenant"

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

local function seed_tenant()
  local n, seed = setting("tokens"), setting("seed")
  local list = tenant.generate(n, seed, ngx.time())
  for i, tok in ipairs(list) do
    dict:set("tok:" .. tok.id, cjson.encode(tok))
    dict:set("idx:" .. i, tok.id)
  end
  dict:set("count", #list)
end

function M.init(cfg)
  for k, v in pairs(defaults) do
    if cfg[k] == nil then cfg[k] = v end
  end
  config = cfg
  seed_tenant()
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

local function graph_error(status, code, message, headers)
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
  if r.error then return graph_error(r.status or 500, r.error, r.message or r.error, r.headers) end
  local body = r.body or (r.json and cjson.encode(r.json)) or ""
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

local function take_program(key)
  local item = dict:lpop("prog:" .. key)
  return item and cjson.decode(item)
end

local function load_token(id)
  local raw = dict:get("tok:" .. id)
  if not raw then return nil end
  local tok = cjson.decode(raw)
  local started = dict:get("sync:" .. id)
  if started then
    tok.lastSyncDateTime = tenant.timestamp(started)
    if ngx.now() - started < setting("sync_seconds") then
      tok.lastSyncStatus = "inProgress"
    else
      tok.lastSyncStatus = dict:get("syncfail:" .. id) and "failed" or "completed"
    end
  end
  return tok
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

-- Enough of OData $filter for ops scripts: "a eq 'x' and b eq 'y'".
local function parse_filter(s)
  local terms = {}
  for clause in (s .. " and "):gmatch("(.-) and ") do
    local field, value = clause:match("^%s*([%w@.]+)%s+eq%s+'(.*)'%s*$")
    if not field then return nil end
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

local function select_fields(tok, sel)
  if not sel then return tok end
  local out = { id = tok.id }
  for f in sel:gmatch("[^,]+") do out[f] = tok[f] end
  return out
end

local function list_tokens(query)
  local args = query_args(query)
  local top = tonumber(args["$top"]) or setting("page_size")
  local skip = tonumber(args["$skiptoken"]) or 0
  local terms
  if args["$filter"] then
    terms = parse_filter(args["$filter"])
    if not terms then return graph_error(400, "BadRequest", "Invalid filter clause") end
  end
  local count = dict:get("count") or 0
  local page, i = {}, skip + 1
  while i <= count and #page < top do
    local tok = load_token(dict:get("idx:" .. i))
    if tok and (not terms or matches(tok, terms)) then
      page[#page + 1] = select_fields(tok, args["$select"])
    end
    i = i + 1
  end
  local body = { ["@odata.context"] = context("deviceAppManagement/vppTokens"), value = page }
  if i <= count then
    local rest = query:gsub("&?%$skiptoken=[^&]*", ""):gsub("^&", "")
    body["@odata.nextLink"] = string.format("%s://%s%s/%s/deviceAppManagement/vppTokens?%s%s$skiptoken=%d",
      ngx.var.scheme, ngx.var.http_host, ngx.ctx.prefix, ngx.ctx.version, rest,
      rest ~= "" and "&" or "", i - 1)
  end
  if #page == 0 then
    -- cjson encodes an empty table as {}; Graph sends [].
    return send(200, (cjson.encode(body):gsub('"value":{}', '"value":[]')))
  end
  return send(200, cjson.encode(body))
end

local function start_sync(id)
  local tok = load_token(id)
  if not tok then
    return graph_error(404, "ResourceNotFound", "The requested vppToken was not found.")
  end
  dict:set("sync:" .. id, ngx.now())
  return send(200, cjson.encode({ value = load_token(id) }))
end

local function api(method, path, query)
  local prefix, version, rest = path:match("^(.-)/(v1%.0)/deviceAppManagement/vppTokens(.*)$")
  if not prefix then
    prefix, version, rest = path:match("^(.-)/(beta)/deviceAppManagement/vppTokens(.*)$")
  end
  ngx.ctx.prefix, ngx.ctx.version = prefix, version
  if prefix then
    local id, action = rest:match("^/([^/]+)/?([^/]*)$")
    if id then id = ngx.unescape_uri(id) end
    local prog = take_program(id or "@list")
    if prog then return serve_program(prog) end
    if rest == "" or rest == "/" then
      if method ~= "GET" then return graph_error(405, "BadRequest", "Method not allowed") end
      return list_tokens(query)
    elseif id and action == "" then
      if method ~= "GET" then return graph_error(405, "BadRequest", "Method not allowed") end
      local tok = load_token(id)
      if not tok then return graph_error(404, "ResourceNotFound", "The requested vppToken was not found.") end
      tok["@odata.context"] = context("deviceAppManagement/vppTokens/$entity")
      return send(200, cjson.encode(tok))
    elseif id and action == "syncLicenses" then
      if method ~= "POST" then return graph_error(405, "BadRequest", "Method not allowed") end
      return start_sync(id)
    end
    return graph_error(400, "BadRequest", "Resource not found for the segment '" .. rest .. "'.")
  end
  local _, id
  prefix, _, id = path:match("^(.-)/beta/organization/([^/]+)/appleVolumePurchaseProgramTokens/([^/]+)/syncApps$")
  if prefix then
    ngx.ctx.prefix, ngx.ctx.version = prefix, "beta"
    id = ngx.unescape_uri(id)
    local prog = take_program(id)
    if prog then return serve_program(prog) end
    if method ~= "POST" then return graph_error(405, "BadRequest", "Method not allowed") end
    local tok = load_token(id)
    if not tok then return graph_error(404, "ResourceNotFound", "The requested token was not found.") end
    dict:set("sync:" .. id, ngx.now())
    tok = load_token(id)
    -- The legacy entity names its account type differently.
    tok["@odata.type"] = "#microsoft.graph.appleVolumePurchaseProgramToken"
    tok.volumePurchaseProgramTokenAccountType, tok.vppTokenAccountType = tok.vppTokenAccountType, nil
    return send(200, cjson.encode({ value = tok }))
  end
  return graph_error(400, "BadRequest", "Invalid version or resource: " .. path)
end

local function read_json_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
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
    for i = 1, dict:get("count") or 0 do dict:delete("tok:" .. (dict:get("idx:" .. i) or "")) end
    seed_tenant()
  end
  return send(200, '{"ok":true}')
end

-- Queue scripted responses for one token id ("@list" for the list endpoint).
function admin.program()
  local body = read_json_body()
  for _, r in ipairs(body.responses or {}) do
    for _ = 1, r.times or 1 do dict:rpush("prog:" .. body.key, cjson.encode(r)) end
  end
  return send(200, '{"ok":true}')
end

-- Replace the tenant with the given tokens (in order).
function admin.tokens()
  local body = read_json_body()
  for i = 1, dict:get("count") or 0 do dict:delete("tok:" .. (dict:get("idx:" .. i) or "")) end
  for i, tok in ipairs(body) do
    dict:set("tok:" .. tok.id, cjson.encode(tok))
    dict:set("idx:" .. i, tok.id)
  end
  dict:set("count", #body)
  return send(200, '{"ok":true}')
end

function admin.stats()
  return send(200, cjson.encode({
    requests = dict:get("stat:requests") or 0,
    connections = dict:get("stat:connections") or 0,
    active = dict:get("stat:active") or 0,
    max_active = dict:get("stat:max_active") or 0,
  }))
end

function admin.log()
  local out = {}
  for i = 1, dict:llen("log") or 0 do out[i] = dict:lpop("log") end
  return send(200, "[" .. table.concat(out, ",") .. "]")
end

local function record(method, raw)
  if not setting("log") then return end
  local h = ngx.req.get_headers()
  dict:rpush("log", cjson.encode({
    method = method, uri = raw, connection = tonumber(ngx.var.connection),
    protocol = ngx.var.server_protocol,
    authorization = h["authorization"], accept = h["accept"],
    client_request_id = h["client-request-id"], user_agent = h["user-agent"],
    content_length = h["content-length"], content_type = h["content-type"],
    accept_encoding = h["accept-encoding"], injected = h["x-injected"],
  }))
end

function M.handle()
  local method, raw = ngx.req.get_method(), ngx.var.request_uri
  local path, query = raw:match("^([^?]*)%??(.*)$")
  ngx.ctx.request_id = uuid()
  local admin_call = path:match("^/_admin/(%w+)$")
  if admin_call then
    if not admin[admin_call] then return graph_error(404, "NotFound", "no such admin call") end
    return admin[admin_call]()
  end

  dict:incr("stat:requests", 1, 0)
  local active = dict:incr("stat:active", 1, 0)
  ngx.ctx.counted = true
  if active > (dict:get("stat:max_active") or 0) then dict:set("stat:max_active", active) end
  if dict:add("conn:" .. ngx.var.connection, true) then dict:incr("stat:connections", 1, 0) end
  record(method, raw)

  local latency = setting("latency")
  if latency > 0 then ngx.sleep(latency) end

  local auth = ngx.var.http_authorization
  if not auth or not auth:match("^Bearer %S+$") then
    return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
  end
  return api(method, path, query)
end

function M.finish()
  if ngx.ctx.counted then dict:incr("stat:active", -1, 0) end
end

return M
