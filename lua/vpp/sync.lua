--- Client methods built on the C core: sync every token of a tenant, and
-- wait for syncs to finish.  Pure Lua; the concurrency is the core's.
local core = require "vpp.core"
local tokens = require "vpp.tokens"
local evented = require "vpp.evented"

local methods = core.client_methods

local function check_keys(opts, allowed, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("bad argument #1 to '%s' (opts must be a table, got %s)"):format(fname, type(opts)), 3)
  end
  core._check_keys(opts, allowed, "option", " for " .. fname)
  return opts
end

local function positive(v, name, default)
  if v == nil then return default end
  if type(v) ~= "number" or not (v > 0) then -- luacheck: ignore 581 (NaN must fail too)
    error(("vpp: opts.%s must be a positive number of seconds"):format(name), 3)
  end
  return v
end

local finished = { completed = true, failed = true }

local wait_options = { interval = true, timeout = true, concurrency = true, on_result = true, deadline = true,
  since = true }

-- Whether the token's last sync ended at or after `since` (Graph's clock):
-- a status read just after the POST may still be the previous sync's.
local function fresh(token, since)
  if not since then return true end
  local at = tokens.parse_time(token.lastSyncDateTime)
  return at ~= nil and at >= since
end


-- Waits `seconds` unless the client is cancelled (false then): under the
-- client's loop, else in slices, so that Lua hooks (the interpreter's
-- SIGINT one, the command's signal handling) run at least 4 times a second.
local function nap(client, seconds, cancels)
  if core._cancels(client) ~= cancels then return false end
  if core._looped(client) then return evented.sleep(client, seconds) and core._cancels(client) == cancels end
  local wake = core._clock() + seconds
  while true do
    local left = wake - core._clock()
    if left <= 0 then return true end
    core._sleep(math.min(left, 0.25))
    if core._cancels(client) ~= cancels then return false end
  end
end

-- What is left of a deadline, for the next call (never 0: the call ends
-- its items with the deadline error at once).
local function left_of(deadline_at)
  if not deadline_at then return nil end
  return math.max(deadline_at - core._clock(), 1e-6)
end

local function stopped(kind, id)
  if kind == "cancelled" then
    return core._error("cancelled", "cancelled", "client:cancel() ended the call", { id = id })
  end
  return core._error("timeout", "deadline", "opts.deadline passed before this item finished", { id = id })
end

--- Polls get_token until lastSyncStatus is "completed" or "failed" (and,
-- with opts.since, seconds since the epoch by Graph's clock, only once
-- lastSyncDateTime is not older than it).  For one id: the final token, or
-- nil, err (err.kind "timeout" when opts.timeout ran out).  For a list of
-- ids: results like sync_many's, polled concurrently.
-- opts.on_result(result, done, total) is called as each id finishes.
function methods:wait_for_sync(id_or_ids, opts)
  opts = check_keys(opts, wait_options, "wait_for_sync")
  local on_result = opts.on_result
  if on_result ~= nil and type(on_result) ~= "function" then
    error("vpp: opts.on_result must be a function", 2)
  end
  local single = type(id_or_ids) == "string"
  local ids = single and { id_or_ids } or id_or_ids
  if type(ids) ~= "table" then
    error("bad argument #1 to 'wait_for_sync' (a token id or a list of them expected, got "
      .. type(id_or_ids) .. ")", 2)
  end
  local since = opts.since
  if since ~= nil and (type(since) ~= "number" or not (since >= 0)) then -- luacheck: ignore 581 (NaN)
    error("vpp: opts.since must be a number of seconds since the epoch", 2)
  end
  local interval = positive(opts.interval, "interval", 5)
  local timeout = positive(opts.timeout, "timeout", 300)
  local deadline = core._clock() + timeout
  local deadline_at = opts.deadline and core._clock() + positive(opts.deadline, "deadline")
  local cancels = core._cancels(self)
  local results = { ok = 0, failed = 0 }
  local pending, polls, done = {}, {}, 0
  for i = 1, #ids do pending[i] = i end
  local function finish(k)
    done = done + 1
    if on_result then on_result(results[k], done, #ids) end
  end
  while #pending > 0 do
    local batch = {}
    for i, k in ipairs(pending) do batch[i] = ids[k] end
    local polled = self:get_many(batch, { concurrency = opts.concurrency, deadline = left_of(deadline_at) })
    local still = {}
    for i, r in ipairs(polled) do
      local k = pending[i]
      polls[k] = (polls[k] or 0) + r.attempts
      if r.err or (finished[r.token.lastSyncStatus] and fresh(r.token, since)) then
        results[k] = { id = ids[k], token = r.token, err = r.err, attempts = polls[k] }
        finish(k)
      else
        still[#still + 1] = k
        results[k] = { id = ids[k], token = r.token, attempts = polls[k] }
      end
    end
    pending = still
    local left = deadline - core._clock()
    local why = #pending > 0 and (core._cancels(self) ~= cancels and "cancelled"
      or deadline_at and core._clock() >= deadline_at and "deadline")
    if why then
      for _, k in ipairs(pending) do
        results[k].err = stopped(why, ids[k])
        finish(k)
      end
      break
    end
    if #pending > 0 and left <= 0 then
      for _, k in ipairs(pending) do
        results[k].err = core._error("timeout", "sync_timeout",
          ("token %s was still syncing after %g s"):format(ids[k], timeout), { id = ids[k] })
        finish(k)
      end
      break
    end
    if #pending > 0 then
      local sleep = math.min(interval, left)
      if deadline_at then sleep = math.min(sleep, math.max(deadline_at - core._clock(), 0)) end
      nap(self, sleep, cancels)
    end
  end
  for _, r in ipairs(results) do
    if r.err then results.failed = results.failed + 1 else results.ok = results.ok + 1 end
  end
  if single then
    local r = results[1]
    if r.err then return nil, r.err end
    return r.token
  end
  return results
end

local filter_keys = { state = true, last_sync_status = true, account_type = true,
  expires_within = true, expired = true, where = true, now = true }
local sync_all_options = { include_in_progress = true, concurrency = true, on_result = true,
  wait = true, wait_interval = true, wait_timeout = true, dry_run = true, deadline = true }
for k in pairs(filter_keys) do sync_all_options[k] = true end

--- Lists every token, keeps those matching the filter criteria (state
-- defaults to "valid"; state = false keeps every state), skips the ones
-- already syncing unless opts.include_in_progress, and syncs the rest.
-- Returns { listed, selected, tokens, skipped, results [, waited] }, or
-- nil, err when the tokens could not be listed; tokens are the selected
-- token tables, in the order of results.  With opts.dry_run nothing is
-- synced and results is an empty list.
function methods:sync_all(opts)
  opts = check_keys(opts, sync_all_options, "sync_all")
  local deadline_at = opts.deadline and core._clock() + positive(opts.deadline, "deadline")
  local cancels = core._cancels(self)
  local all, err = self:list_tokens { deadline = left_of(deadline_at) }
  if not all then return nil, err end
  local criteria = {}
  for k in pairs(filter_keys) do criteria[k] = opts[k] end
  if opts.state == nil then
    criteria.state = "valid"
  elseif opts.state == false then
    criteria.state = nil
  end
  local ids, selected, skipped = {}, {}, {}
  for _, t in ipairs(tokens.filter(all, criteria)) do
    if t.lastSyncStatus == "inProgress" and not opts.include_in_progress then
      skipped[#skipped + 1] = t
    else
      ids[#ids + 1] = t.id
      selected[#selected + 1] = t
    end
  end
  local report = { listed = #all, selected = #ids, tokens = selected, skipped = skipped, results = { ok = 0, failed = 0 } }
  if opts.dry_run then return report end
  report.results = self:sync_many(ids, { concurrency = opts.concurrency, on_result = opts.on_result,
    deadline = left_of(deadline_at) })
  if opts.wait and core._cancels(self) == cancels then
    local started = {}
    for _, r in ipairs(report.results) do
      if r.token then started[#started + 1] = r.id end
    end
    report.waited = self:wait_for_sync(started, {
      interval = opts.wait_interval, timeout = opts.wait_timeout, concurrency = opts.concurrency,
      deadline = left_of(deadline_at), since = tokens.sync_started_at(report.results),
    })
  end
  return report
end

return methods
