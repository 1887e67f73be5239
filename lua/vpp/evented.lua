--- The driver of calls under a loop (the client setting `loop`): the C
-- methods of such a client start a run and return it; this module steps
-- the engine, calls on_request, access_token and on_result from Lua frames
-- (so that they may yield to the host's loop), and calls loop(op) whenever
-- the call has to wait.  `op` is a pollable in cqueues' sense.
-- Pure Lua, so nothing here needs lua_yieldk: it runs on 5.1 and LuaJIT too.
local core = require "vpp.core"

local M = {}

local PENDING = core._pending
local clock = core._clock
-- 5.1's pcall cannot span a yield; there, a run whose driver died by an
-- error is found by its dead coroutine (see reap).
local pcall_yields = _VERSION ~= "Lua 5.1" or type(jit) == "table"

--- The pollable: readable descriptor, or the next timer.
local Op = {}
Op.__index = Op

function Op:pollfd() return core._pollfd(self.client) end

function Op.events() return "r" end

function Op:timeout()
  local t = core._wake(self.client)
  if self.wake_at then
    local left = self.wake_at - clock()
    if left < 0 then left = 0 end
    if not t or left < t then t = left end
  end
  return t
end

local function new_op(client, wake_at)
  return setmetatable({ client = client, wake_at = wake_at }, Op)
end

-- Lua 5.1 only: the driver of each run under way, by client.  A run whose
-- driver is dead, or is the coroutine now starting a call, was left by an
-- error (its call cannot still be waiting): it is aborted then.
local drivers = setmetatable({}, { __mode = "k" })
local MAIN = {} -- 5.1's main thread has no coroutine object

local function reap(client, current)
  local runs = drivers[client]
  if not runs then return end
  for state, co in pairs(runs) do
    if co == current or (co ~= MAIN and coroutine.status(co) == "dead") then
      runs[state] = nil
      core._abort(state)
    end
  end
end

-- What the last step queued: traces for on_request, the access_token
-- function when a job waits for it, and this run's results for on_result.
local function service(client, state)
  local on_request, traces = core._traces(client)
  if traces then
    for i = 1, #traces do on_request(traces[i]) end
  end
  local provider = core._claim(client, state)
  if provider then core._provide(client, provider()) end
  local on_result, results, total = core._events(state)
  if results then
    for i = 1, #results do
      state.reported = (state.reported or 0) + 1
      on_result(results[i], state.reported, total)
    end
  end
end

local function body(client, state, loop)
  local op
  while true do
    if not pcall_yields then reap(client) end -- a dead driver may hold the token function
    core._step(client, state)
    service(client, state)
    if core._done(state) then return core._finish(state) end
    op = op or new_op(client)
    loop(op)
  end
end

--- Drives the run whose state a C method returned, to the call's values.
local function drive(client, state)
  local loop = core._looped(client)
  if not pcall_yields then
    local co = coroutine.running() or MAIN
    reap(client, co)
    drivers[client] = drivers[client] or {}
    drivers[client][state] = co
    local a, b = body(client, state, loop)
    drivers[client][state] = nil
    return a, b
  end
  local r = { pcall(body, client, state, loop) }
  if not r[1] then
    core._abort(state)
    error(r[2], 0)
  end
  return r[2], r[3]
end

--- Waits under the client's loop until `seconds` have passed or the client
-- is cancelled: true, or false when cancelled.
function M.sleep(client, seconds)
  local loop = core._looped(client)
  local cancels = core._cancels(client)
  local op = new_op(client, clock() + seconds)
  while clock() < op.wake_at do
    core._step(client) -- the others' work, and the signal, drained
    loop(op)
    if core._cancels(client) ~= cancels then return false end
  end
  return true
end

-- The methods of a loop client: the C ones, driven.
local loop_methods = core.loop_client_methods
for _, name in ipairs { "sync_licenses", "sync_apps", "get_token", "list_tokens", "sync_many", "get_many",
  "revoke_licenses", "sync_license_counts", "licenses_for_app", "list_vpp_apps", "update_token" } do
  local c_method = core.client_methods[name]
  loop_methods[name] = function(self, ...)
    local a, b = c_method(self, ...)
    if a == PENDING then return drive(self, b) end
    return a, b
  end
end

return M
