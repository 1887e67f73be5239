/* What the Lua driver (lua/vpp/evented.lua) needs to drive a client's runs
 * under a loop: a step, the pollable's descriptor and timeout, the queued
 * traces, results and token requests, and the end of a run.  All of them
 * are core._ functions, for that module only. */
#include <math.h>

#include "vpp.h"

static vpp_client *looped(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  if (!c->evented) luaL_argerror(L, 1, "the client has no loop");
  return c;
}

static vpp_batch *state_run(lua_State *L, int state) {
  vpp_batch *b;
  luaL_checktype(L, state, LUA_TTABLE);
  lua_getfield(L, state, "run");
  b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!b) luaL_argerror(L, state, "not a run");
  return b;
}

/* _step(client [, state]): one pass of the engine, by state's driver (or
 * by a sleeper, with no run of its own). */
static int run_step(lua_State *L) {
  vpp_batch *b = NULL;
  looped(L);
  if (!lua_isnoneornil(L, 2)) b = state_run(L, 2);
  lua_settop(L, 2);
  vpp_engine_step(L, 1, b);
  return 0;
}

/* _pollfd(client), _wake(client): the pollable's descriptor, and seconds
 * to the engine's next timer (nil for none). */
static int run_pollfd(lua_State *L) {
  lua_pushinteger(L, looped(L)->poller.fd);
  return 1;
}

static int run_wake(lua_State *L) {
  double w = vpp_engine_wake(looped(L));
  if (w == HUGE_VAL)
    lua_pushnil(L);
  else
    lua_pushnumber(L, w);
  return 1;
}

/* Pushes the queued list under field of the table at t (traces of the
 * client's user value, events of a run's state), replaced there by an
 * empty one; nil when it is empty. */
static void take(lua_State *L, int t, const char *field) {
  lua_getfield(L, t, field);
  if (!lua_istable(L, -1) || lua_rawlen(L, -1) == 0) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_newtable(L);
  lua_setfield(L, t, field);
}

/* _traces(client): on_request, and the traces queued for it (or nil). */
static int run_traces(lua_State *L) {
  looped(L);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, 2, "on_request");
  take(L, 2, "traces");
  return 2;
}

/* _events(state): on_result, the results queued for it (or nil), and the
 * run's total. */
static int run_events(lua_State *L) {
  vpp_batch *b = state_run(L, 1);
  b->queued = 0;
  lua_settop(L, 1);
  lua_getfield(L, 1, "on_result");
  take(L, 1, "events");
  lua_pushinteger(L, b->n);
  return 3;
}

/* _claim(client, state): the access_token function, when a job waits for
 * it and no driver calls it yet (state's driver is to call it, then
 * _provide); else nil. */
static int run_claim(lua_State *L) {
  vpp_client *c = looped(L);
  vpp_batch *b = state_run(L, 2);
  if (!c->want_token || c->providing) return 0;
  c->providing = b;
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "access_token");
  return 1;
}

/* _provide(client, token, expires_on): what the function returned. */
static int run_provide(lua_State *L) {
  looped(L);
  lua_settop(L, 3);
  vpp_engine_provide(L, 1);
  return 0;
}

/* _done(state): whether every job ended (or the run was aborted). */
static int run_done(lua_State *L) {
  vpp_batch *b = state_run(L, 1);
  lua_pushboolean(L, b->done == b->n || b->aborted || !b->c);
  return 1;
}

/* _finish(state): the call's values; the run is over. */
static int run_finish(lua_State *L) {
  vpp_batch *b = state_run(L, 1);
  int aborted = b->aborted;
  vpp_run_abort(L, 1);
  if (aborted) return luaL_error(L, "vpp: the call was aborted: its client was closed or its engine failed");
  lua_rawgeti(L, 1, 1);
  lua_rawgeti(L, 1, 2);
  return 2;
}

/* _abort(state): the driver raised (its loop or a callback did); every
 * transfer of the run is detached.  Never raises. */
static int run_abort(lua_State *L) {
  if (lua_istable(L, 1)) vpp_run_abort(L, 1);
  return 0;
}

/* _cancels(client): how many times cancel() was called (sleepers under a
 * loop see it change). */
static int run_cancels(lua_State *L) {
  vpp_client *c = vpp_client_to(L, 1);
  lua_pushinteger(L, (lua_Integer)c->cancels);
  return 1;
}

/* _looped(client): its loop function, or nil (blocking). */
static int run_looped(lua_State *L) {
  vpp_client *c = vpp_client_to(L, 1);
  if (!c->evented) return 0;
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "loop");
  return 1;
}

void vpp_run_open(lua_State *L, int module) {
  static const luaL_Reg fns[] = {{"_step", run_step},
                                 {"_pollfd", run_pollfd},
                                 {"_wake", run_wake},
                                 {"_traces", run_traces},
                                 {"_events", run_events},
                                 {"_claim", run_claim},
                                 {"_provide", run_provide},
                                 {"_done", run_done},
                                 {"_finish", run_finish},
                                 {"_abort", run_abort},
                                 {"_cancels", run_cancels},
                                 {"_looped", run_looped},
                                 {NULL, NULL}};
  lua_pushvalue(L, module);
  luaL_setfuncs(L, fns, 0);
  lua_pop(L, 1);
}
