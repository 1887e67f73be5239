--- Fleets: every tenant of a managed-service provider in one run.  A fleet
-- is a list of tenants (from a tenants file or a table), each with its own
-- client, credential, token cache and rate buckets; fleet:run calls a
-- function for each, many at once, on one loop in one thread: every client
-- is a loop client whose waits yield to this module's scheduler, which
-- waits on all their descriptors at once.  Pure Lua over vpp.core.
local core = require "vpp.core"

local M = {}

-- What a tenant (or the defaults) may set: client settings, the credential
-- by reference, labels.  A tenant adds its name and tenant id.
local SETTINGS = { "client_id", "cloud", "authority", "base_url", "api_version", "rate_limit", "timeout",
  "connect_timeout", "max_retries", "ca_file", "proxy", "proxy_auth", "labels",
  "client_secret", "client_secret_env", "client_secret_file", "client_certificate", "client_key",
  "client_key_password_env", "send_certificate_chain", "client_assertion_file", "managed_identity", "imds_url",
  "access_token_env" }
local CREDENTIALS = { "client_secret", "client_secret_env", "client_secret_file", "client_certificate",
  "client_assertion_file", "managed_identity", "access_token_env" }
-- What the fleet reads itself (references to credentials, labels), not a
-- vpp.new setting.
local NOT_FOR_NEW = { client_secret_env = true, client_secret_file = true, client_key_password_env = true,
  access_token_env = true, labels = true }

-- What goes with a credential: taken whole from the tenant or the defaults.
local CREDENTIAL_GROUP = { "client_secret", "client_secret_env", "client_secret_file", "client_certificate",
  "client_key", "client_key_password_env", "send_certificate_chain", "client_assertion_file", "managed_identity",
  "imds_url", "access_token_env" }
local in_group = {}
for _, k in ipairs(CREDENTIAL_GROUP) do in_group[k] = true end
local settable, tenant_keys = {}, { name = true, tenant_id = true }
for _, k in ipairs(SETTINGS) do settable[k], tenant_keys[k] = true, true end

local DEFAULT_CONCURRENCY = 16

-- The names the command's outputs already use (Prometheus labels, fields).
local RESERVED_LIST = "tenant, id, display_name, apple_id, state, status, labels"
local RESERVED_LABELS = {}
for k in RESERVED_LIST:gmatch("[%w_]+") do RESERVED_LABELS[k] = true end

-- ---- the tenants file ------------------------------------------------------

--- Raises a bad fleet's error: "vpp: <where>: <what>".
local function bad(where, what) error(("vpp: %s: %s"):format(where, what), 0) end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return out
end

-- YAML's null (lyaml.null) and an absent key are the same here.
local function value(v, null)
  if v == null then return nil end
  return v
end

local function check_entry(entry, allowed, where, null)
  if type(entry) ~= "table" then bad(where, "must be a mapping of settings") end
  for _, k in ipairs(sorted_keys(entry)) do
    if not allowed[k] then
      bad(where, ("unknown key '%s' (expected %s)"):format(k, table.concat(sorted_keys(allowed), ", ")))
    end
  end
  local labels = value(entry.labels, null)
  if labels ~= nil then
    if type(labels) ~= "table" then bad(where, "labels must be a mapping of names to strings") end
    for k, v in pairs(labels) do
      if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
        bad(where, ("label name '%s' must be letters, digits and _"):format(tostring(k)))
      end
      if RESERVED_LABELS[k] then
        bad(where, ("label name '%s' is one of the command's own (%s)"):format(k, RESERVED_LIST))
      end
      if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        bad(where, ("label '%s' must be a string"):format(k))
      end
    end
  end
end

--- The tenants of spec ({ defaults = {...}, tenants = {...} }), each with
-- the defaults under its own settings, in order.  src: { name, private
-- (the file is its owner's alone), line_of(tenant name) } for messages.
-- Raises one clear error for a bad one.
function M.normalize(spec, src)
  src = src or { name = "vpp.fleet" }
  local null = src.null
  local function where(name, index)
    local w = src.name
    if name or index then w = w .. (", tenant %s"):format(name and ("'" .. tostring(name) .. "'") or ("#" .. index)) end
    local line = name and src.line_of and src.line_of(name)
    if line then w = w .. (" (line %d)"):format(line) end
    return w
  end
  if type(spec) ~= "table" then bad(src.name, "must have defaults and a list of tenants") end
  for _, k in ipairs(sorted_keys(spec)) do
    if k ~= "defaults" and k ~= "tenants" then bad(src.name, ("unknown key '%s' (expected defaults, tenants)"):format(k)) end
  end
  local defaults = value(spec.defaults, null) or {}
  check_entry(defaults, settable, src.name .. ", defaults", null)
  local list = value(spec.tenants, null)
  if type(list) ~= "table" or #list == 0 then bad(src.name, "tenants must be a non-empty list") end
  local out, seen = {}, {}
  for i, entry in ipairs(list) do
    local name = type(entry) == "table" and value(entry.name, null) or nil
    local w = where(name, i)
    check_entry(entry, tenant_keys, w, null)
    if type(name) ~= "string" or not name:match("^[%w][%w._-]*$") then
      bad(w, "name must be a word of letters, digits, '.', '_' or '-'")
    end
    if seen[name] then bad(w, ("the name '%s' is used twice"):format(name)) end
    seen[name] = true
    local tenant_id = value(entry.tenant_id, null)
    if type(tenant_id) ~= "string" or tenant_id == "" then bad(w, "tenant_id is missing") end
    -- The tenant's settings over the defaults'; a credential (with its
    -- key and password) comes whole from one of the two.
    local own_credential = false
    for _, k in ipairs(CREDENTIAL_GROUP) do
      if value(entry[k], null) ~= nil then own_credential = true end
    end
    local settings, labels = {}, {}
    for _, layer in ipairs { defaults, entry } do
      for _, k in ipairs(SETTINGS) do
        local v = value(layer[k], null)
        local skip = in_group[k] and (layer == defaults) == own_credential
        if v ~= nil and k ~= "labels" and not skip then settings[k] = v end
      end
      for k, v in pairs(value(layer.labels, null) or {}) do labels[k] = tostring(v) end
    end
    local n = 0
    for _, c in ipairs(CREDENTIALS) do
      if settings[c] ~= nil then n = n + 1 end
    end
    if n ~= 1 then
      bad(w, n == 0 and ("no credential: give one of " .. table.concat(CREDENTIALS, ", ")) or
        "more than one credential: give one of " .. table.concat(CREDENTIALS, ", "))
    end
    if settings.client_secret ~= nil and not src.private then
      bad(w, "an inline client_secret needs a tenants file only its owner can read (chmod 600);"
        .. " or use client_secret_env or client_secret_file")
    end
    if not (settings.managed_identity or settings.access_token_env) and type(settings.client_id) ~= "string" then
      bad(w, "client_id is missing")
    end
    out[i] = { name = name, tenant_id = tenant_id, settings = settings, labels = labels, index = i,
      line = src.line_of and src.line_of(name) }
  end
  return out
end

local function read_all(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

--- The tenants of a YAML tenants file.  Raises naming the file (and the
-- line, where the parser or the tenant's name gives it).
function M.read_file(path)
  if type(path) ~= "string" then error("bad argument #1 to 'fleet_from_file' (path must be a string)", 3) end
  local text, err = read_all(path)
  if not text then bad("tenants file " .. path, "cannot be read: " .. tostring(err)) end
  local ok, lyaml = pcall(require, "lyaml")
  if not ok then bad("tenants file " .. path, "reading YAML needs lua-yaml (lyaml), which is not installed") end
  local parsed, spec = pcall(lyaml.load, text)
  if not parsed then bad("tenants file " .. path, "line " .. tostring(spec):gsub("^(%d+):(%d+):%s*", "%1, column %2: ")) end
  local mode, owner, me = core._file_mode(path)
  local lines = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  return M.normalize(spec, {
    name = "tenants file " .. path, null = lyaml.null,
    private = mode ~= nil and mode % 64 == 0 and owner == me, -- no group or other bits
    line_of = function(name)
      for i, l in ipairs(lines) do
        local n = l:match("^%s*%-?%s*name:%s*[\"']?([^\"'#]-)[\"']?%s*$")
          or l:match("^%s*%-?%s*name:%s*[\"']?([^\"'#]-)[\"']?%s+#")
        if n == name then return i end
      end
    end,
  })
end

-- ---- credentials, at the moment a tenant's client is made ----------------------

local function credential_error(tenant, message)
  return core._error("auth", "no_credential", ("tenant '%s': %s"):format(tenant.name, message), { tenant = tenant.name })
end

--- vpp.new's settings for the tenant, the references read; or nil, err.
local function client_settings(tenant, base, getenv, dry)
  local s, o = tenant.settings, {}
  for k, v in pairs(base or {}) do o[k] = v end
  for _, k in ipairs(SETTINGS) do
    if s[k] ~= nil and not NOT_FOR_NEW[k] then o[k] = s[k] end
  end
  o.tenant_id = tenant.tenant_id
  local function env(name)
    local v = getenv(name)
    if v == nil or v == "" then return nil end
    return v
  end
  if s.client_secret_env then
    o.client_secret = env(s.client_secret_env)
    if not o.client_secret then return nil, credential_error(tenant, ("$%s is not set"):format(s.client_secret_env)) end
  elseif s.client_secret_file then
    local text, err = read_all(s.client_secret_file)
    if dry then text = "x" end
    if not text then return nil, credential_error(tenant, "client_secret_file cannot be read: " .. tostring(err)) end
    o.client_secret = text:match("^%s*(.-)%s*$")
  elseif s.access_token_env then
    o.access_token = env(s.access_token_env)
    if not o.access_token then return nil, credential_error(tenant, ("$%s is not set"):format(s.access_token_env)) end
    o.client_id, o.tenant_id = nil, nil
  end
  if s.client_key_password_env then
    o.client_key_password = env(s.client_key_password_env)
    if not o.client_key_password then
      return nil, credential_error(tenant, ("$%s is not set"):format(s.client_key_password_env))
    end
  end
  if o.managed_identity then o.client_id, o.tenant_id = nil, nil end
  return o
end

--- Raises, naming the tenant, for settings vpp.new refuses (a bad timeout,
-- base_url, cloud...): found when the fleet is made, not when the tenant
-- runs.  Credentials are not read for it (a secret file may come later).
local function check_settings(tenants, base, where)
  local function any() return "x" end
  for _, t in ipairs(tenants) do
    local settings = client_settings(t, base, any, true)
    local ok, client = pcall(core.new, settings)
    if not ok then bad(where(t), (tostring(client):gsub("^vpp: ", ""))) end
    client:close()
  end
end

-- ---- the scheduler -------------------------------------------------------------

-- The loop setting of every tenant's client: a wait yields its pollable
-- to the scheduler, which resumes the tenant when it is ready.
local function yield_loop(op) coroutine.yield(op) end

local Fleet = {}
Fleet.__index = Fleet

--- The tenants named (all, in order, when names is nil); raises for a
-- name that is not in the fleet.
function Fleet:pick(names)
  if names == nil then return self.tenants end
  if type(names) ~= "table" then error("vpp: opts.tenants must be a list of tenant names", 3) end
  local wanted = {}
  for _, n in ipairs(names) do
    if not self.by_name[n] then error(("vpp: no tenant named '%s' in the fleet"):format(tostring(n)), 3) end
    wanted[n] = true
  end
  local out = {}
  for _, t in ipairs(self.tenants) do
    if wanted[t.name] then out[#out + 1] = t end
  end
  return out
end

--- What fn sees of a tenant: its name, tenant id and labels.
local function view(t)
  local labels = {}
  for k, v in pairs(t.labels) do labels[k] = v end
  return { name = t.name, tenant_id = t.tenant_id, labels = labels }
end

local run_options = { concurrency = true, tenants = true, deadline = true, on_result = true }

--- Calls fn(client, tenant) for each tenant, `concurrency` at once (16),
-- each on a client of its own made for the call and closed after it.
-- Returns, in the fleet's order, { tenant, ok, value, err } per tenant,
-- with results.ok and results.failed.  An error raised in fn is that
-- tenant's err (kind "error", code "raised"); opts.deadline (seconds)
-- cancels the calls under way (fn gets their "cancelled" errors, and what
-- it returns stands) and starts nothing more (err code "deadline").
function Fleet:run(fn, opts)
  if type(fn) ~= "function" then error("bad argument #1 to 'run' (a function expected, got " .. type(fn) .. ")", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #2 to 'run' (opts must be a table)", 2) end
  opts = opts or {}
  core._check_keys(opts, run_options, "option", " for fleet:run")
  local concurrency = opts.concurrency or DEFAULT_CONCURRENCY
  if type(concurrency) ~= "number" or concurrency < 1 or concurrency % 1 ~= 0 then
    error("vpp: opts.concurrency must be a positive integer", 2)
  end
  if opts.deadline ~= nil and (type(opts.deadline) ~= "number" or not (opts.deadline > 0)) then -- luacheck: ignore 581
    error("vpp: opts.deadline must be a positive number of seconds", 2)
  end
  if self.closed then error("vpp: the fleet is closed", 2) end
  local picked = self:pick(opts.tenants)
  local deadline_at = opts.deadline and core._clock() + opts.deadline
  local results, active, next_one, late = { ok = 0, failed = 0 }, {}, 1, false

  local function finish(k, r)
    results[k] = r
    if r.ok then results.ok = results.ok + 1 else results.failed = results.failed + 1 end
    if opts.on_result then opts.on_result(r, results.ok + results.failed, #picked) end
  end

  local function step(e)
    local r = { coroutine.resume(e.co) }
    if coroutine.status(e.co) ~= "dead" then
      local op = r[2]
      local t = type(op) == "table" and op.timeout and op:timeout() or 0
      e.fd = type(op) == "table" and op.pollfd and op:pollfd() or nil
      e.wake_at = t and core._clock() + t or nil
      return false
    end
    e.client:close()
    local t = picked[e.k]
    if not r[1] then
      local message = type(r[2]) == "string" and r[2] or tostring(r[2])
      finish(e.k, { tenant = t.name, ok = false,
        err = core._error("error", "raised", message, { tenant = t.name }) })
    elseif r[2] == nil and r[3] ~= nil then -- fn returned nil, err
      finish(e.k, { tenant = t.name, ok = false, err = r[3] })
    else -- after a cancel or the deadline too: fn saw its calls end, and said what it made of it
      finish(e.k, { tenant = t.name, ok = true, value = r[2] })
    end
    return true
  end

  local function start(k)
    local t = picked[k]
    local settings, err = client_settings(t, self.client_opts, self.getenv)
    local client
    if settings then
      settings.loop = yield_loop
      local made, c = pcall(core.new, settings)
      if made then client = c else err = core._error("auth", "no_credential", ("tenant '%s': %s"):format(t.name,
        tostring(c):gsub("^vpp: ", "")), { tenant = t.name }) end
    end
    if not client then
      finish(k, { tenant = t.name, ok = false, err = err })
      return
    end
    local tv = view(t)
    local e = { k = k, client = client, co = coroutine.create(function() return fn(client, tv) end) }
    if not step(e) then active[#active + 1] = e end
  end

  local cancels = self.cancels
  self.active = active
  while true do
    local why = not late and (self.cancels ~= cancels and "cancelled"
      or deadline_at and core._clock() >= deadline_at and "deadline")
    if why then
      late = true
      for _, e in ipairs(active) do e.client:cancel() end
      for k = next_one, #picked do
        finish(k, { tenant = picked[k].name, ok = false, err = why == "cancelled"
          and core._error("cancelled", "cancelled", "fleet:cancel() ended the run before this tenant started",
            { tenant = picked[k].name })
          or core._error("timeout", "deadline", "opts.deadline passed before this tenant started",
            { tenant = picked[k].name }) })
      end
      next_one = #picked + 1
    end
    while #active < concurrency and next_one <= #picked do
      next_one = next_one + 1
      start(next_one - 1)
    end
    if #active == 0 then break end
    -- Wait for a descriptor or the soonest timer (the deadline included).
    local fds, at, wake = {}, {}, deadline_at
    for i, e in ipairs(active) do
      if e.fd then
        fds[#fds + 1] = e.fd
        at[#fds] = i
      end
      if e.wake_at and (not wake or e.wake_at < wake) then wake = e.wake_at end
    end
    local timeout = wake and math.max(wake - core._clock(), 0) or nil
    local ready = core._wait_readable(fds, timeout)
    local go, now = {}, core._clock()
    for _, r in ipairs(ready) do go[at[r]] = true end
    local still = {}
    for i, e in ipairs(active) do
      local due = go[i] or (e.wake_at and e.wake_at <= now) or (late and not e.cancelled)
      if late then e.cancelled = true end
      if not due or not step(e) then still[#still + 1] = e end
    end
    active = still
    self.active = active
  end
  self.active = nil
  return results
end

--- Ends a run under way (from a callback, a signal handler's hook, another
-- coroutine): what runs is cancelled, nothing more starts.
function Fleet:cancel()
  self.cancels = self.cancels + 1
  for _, e in ipairs(self.active or {}) do e.client:cancel() end
end

--- A blocking client for one tenant (the command's single-tenant calls),
-- or nil, err when its credential cannot be had.
function Fleet:client(name)
  local t = self.by_name[name]
  if not t then error(("vpp: no tenant named '%s' in the fleet"):format(tostring(name)), 2) end
  local settings, err = client_settings(t, self.client_opts, self.getenv)
  if not settings then return nil, err end
  return core.new(settings)
end

--- fleet:sync_all(opts [, run_opts]), fleet:list_tokens(query [, run_opts]):
-- the client method on every tenant (run_opts as for run: concurrency,
-- tenants, deadline); a tenant whose call failed has ok = false and its err.
local function over(method)
  return function(self, args, run_opts)
    return self:run(function(client) return client[method](client, args) end, run_opts)
  end
end

Fleet.sync_all = over("sync_all")
Fleet.list_tokens = over("list_tokens")

--- fleet:check(opts [, run_opts]): every tenant's tokens (and the
-- licences of their VPP apps, unless opts.licenses is false) judged as
-- `vpp check` does (opts: those of vpp.health.options, select): per
-- tenant, the health report ({ status, tokens, ... }).
function Fleet:check(opts, run_opts)
  local health = require "vpp.health"
  opts = health.options(opts)
  return self:run(function(client)
    local data, err = health.gather(client, { select = opts.select, licenses = opts.licenses })
    if not data then return nil, err end
    return health.evaluate(data, opts)
  end, run_opts)
end

function Fleet:close() self.closed = true end

--- A fleet of the tenants in spec; opts: client settings every tenant's
-- client starts from (the file's win), getenv (for tests).
function M.new(tenants, opts, where)
  opts = opts or {}
  local getenv = opts.getenv or os.getenv
  local base = {}
  for k, v in pairs(opts) do
    if k ~= "getenv" then base[k] = v end
  end
  local self = setmetatable({ tenants = tenants, by_name = {}, client_opts = base, getenv = getenv, cancels = 0 },
    Fleet)
  for _, t in ipairs(tenants) do self.by_name[t.name] = t end
  check_settings(tenants, base, where or function(t) return ("vpp.fleet, tenant '%s'"):format(t.name) end)
  return self
end

local function xor8(a, b)
  local r, bit = 0, 1
  for _ = 1, 8 do
    if a % 2 ~= b % 2 then r = r + bit end
    a, b, bit = (a - a % 2) / 2, (b - b % 2) / 2, bit * 2
  end
  return r
end

-- h * 16777619 mod 2^32 without passing 2^53 (exact on every Lua).
local function fnv_multiply(h)
  local lo, hi = h % 65536, (h - h % 65536) / 65536
  return ((hi * 16777619) % 65536 * 65536 + lo * 16777619) % 4294967296
end

--- Which of n shards (1..n) a tenant's name falls in: FNV-1a (32 bits) of
-- the name, the same on every machine and every Lua, so machines that
-- each take one shard split a fleet with no coordination.
function M.shard_of(name, n)
  local h = 2166136261
  for i = 1, #name do
    local b = name:byte(i)
    h = fnv_multiply(h - h % 256 + xor8(h % 256, b))
  end
  return math.floor(h % n) + 1
end

M.Fleet = Fleet
return M
