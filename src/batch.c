/* client:sync_many(ids [, opts]) and client:get_many(ids [, opts]): one job
 * per id on the engine, results in input order, on_result as each ends. */
#include <math.h>
#include <string.h>
#include <time.h>

#include "vpp.h"

#define DEFAULT_CONCURRENCY 8
#define MAX_CONCURRENCY     256

/* results[j+1] = { id, token | err, attempts }, counted in results.ok or
 * results.failed, and queued in state.events for on_result. */
static void many_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t, int state, int err) {
  size_t idlen;
  const char *id;
  int ok, base, results;
  lua_getfield(L, state, "results");
  results = lua_gettop(L);
  lua_getfield(L, state, "ids");
  lua_rawgeti(L, -1, j + 1);
  id = lua_tolstring(L, -1, &idlen);
  base = lua_gettop(L);
  if (!t) {
    lua_pushnil(L);
    lua_pushvalue(L, err);
  } else if (!vpp_reply_ok(&t->reply)) {
    vpp_reply_error(L, &t->reply);
  } else if (vpp_decode_entity(L, &t->reply, id, idlen) == 1) {
    lua_pushnil(L);
  }
  /* The two results are on top, maybe above scratch values: move them down. */
  lua_copy(L, -2, base + 1);
  lua_copy(L, -1, base + 2);
  lua_settop(L, base + 2);
  /* id, token-or-nil, err-or-nil */
  ok = lua_isnil(L, -1);
  lua_createtable(L, 0, 4);
  lua_insert(L, -4);
  lua_setfield(L, -4, "err");
  lua_setfield(L, -3, "token");
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, b->jobs[j].attempts);
  lua_setfield(L, -2, "attempts");
  if (t && t->reply.date[0]) {
    /* Graph's clock when it answered: what wait_for_sync's since compares
     * with Graph's timestamps, whatever this machine's clock says. */
    time_t when = curl_getdate(t->reply.date, NULL);
    if (when > 0) {
      lua_pushnumber(L, (lua_Number)when);
      lua_setfield(L, -2, "date");
    }
  }
  lua_rawseti(L, results, j + 1);
  lua_getfield(L, results, ok ? "ok" : "failed");
  lua_pushinteger(L, lua_tointeger(L, -1) + 1);
  lua_setfield(L, results, ok ? "ok" : "failed");
  lua_getfield(L, state, "on_result");
  if (!lua_isnil(L, -1)) {
    lua_getfield(L, state, "events");
    lua_rawgeti(L, results, j + 1);
    lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
    b->queued++;
  }
}

static void check_opts_keys(lua_State *L, int opts, vpp_action action) {
  static const char *const sync_keys[] = {"concurrency", "on_result", "action", "organization_id", "deadline", NULL};
  static const char *const get_keys[] = {"concurrency", "on_result", "deadline", NULL};
  vpp_check_keys(L, opts, action == VPP_GET_TOKEN ? get_keys : sync_keys, "option", "");
}

static vpp_action read_action(lua_State *L, int opts) {
  const char *a;
  lua_getfield(L, opts, "action");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return VPP_SYNC_LICENSES;
  }
  a = lua_tostring(L, -1);
  if (lua_type(L, -1) != LUA_TSTRING || (strcmp(a, "sync_licenses") != 0 && strcmp(a, "sync_apps") != 0))
    luaL_error(L, "vpp: opts.action must be \"sync_licenses\" or \"sync_apps\"");
  lua_pop(L, 1);
  return strcmp(a, "sync_apps") == 0 ? VPP_SYNC_APPS : VPP_SYNC_LICENSES;
}

static int run_many(lua_State *L, vpp_action action) {
  vpp_client *c = vpp_client_check(L, 1);
  int n, i, concurrency = DEFAULT_CONCURRENCY, opts = 0, state;
  double deadline = HUGE_VAL;
  vpp_batch *b;
  if (!lua_istable(L, 2))
    luaL_argerror(L, 2, lua_pushfstring(L, "ids must be a list of token ids, got %s", luaL_typename(L, 2)));
  if (!lua_isnoneornil(L, 3)) {
    if (!lua_istable(L, 3))
      luaL_argerror(L, 3, lua_pushfstring(L, "opts must be a table, got %s", luaL_typename(L, 3)));
    opts = 3;
  }
  lua_settop(L, 3);
  n = (int)lua_rawlen(L, 2);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_error(L, "vpp: ids[%d] must be a non-empty string", i);
    lua_pop(L, 1);
  }
  if (opts) {
    check_opts_keys(L, opts, action);
    if (action != VPP_GET_TOKEN) action = read_action(L, opts);
    lua_getfield(L, opts, "concurrency");
    if (!lua_isnil(L, -1)) {
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      if (!isint || v < 1 || v > MAX_CONCURRENCY)
        luaL_error(L, "vpp: opts.concurrency must be an integer from 1 to %d", MAX_CONCURRENCY);
      concurrency = (int)v;
    }
    lua_pop(L, 1);
    lua_getfield(L, opts, "on_result");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1)) luaL_error(L, "vpp: opts.on_result must be a function");
    lua_pop(L, 1);
    deadline = vpp_deadline_option(L, opts, "opts.deadline");
  }
  /* 4: the organization id, for sync_apps */
  if (action == VPP_SYNC_APPS) {
    lua_getfield(L, opts, "organization_id");
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_error(L, "vpp: opts.organization_id must be a non-empty string for sync_apps");
  } else {
    lua_pushnil(L);
  }
  b = vpp_run_new(L, 1, n, action != VPP_GET_TOKEN, concurrency, many_deliver); /* 5 */
  b->deadline_at = deadline;
  state = 5;
  /* The URLs, in input order; the ids as they are now, in a table of our
   * own, so that results keep them whatever a callback does to the
   * caller's list. */
  lua_createtable(L, n, 0); /* 6 */
  lua_createtable(L, n, 0); /* 7 */
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lua_pushvalue(L, -1);
    lua_rawseti(L, 6, i);
    vpp_client_push_action_url(L, c, action, 4, 8);
    lua_rawseti(L, 7, i);
    lua_pop(L, 1);
  }
  lua_setfield(L, state, "urls");
  lua_setfield(L, state, "ids");
  lua_createtable(L, n, 2);
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "ok");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "failed");
  lua_pushvalue(L, -1);
  lua_setfield(L, state, "results");
  lua_rawseti(L, state, 1);
  if (opts) {
    lua_getfield(L, opts, "on_result");
    lua_setfield(L, state, "on_result");
  }
  lua_newtable(L);
  lua_setfield(L, state, "events");
  return vpp_client_run(L, c, 1, b);
}

static int sync_many(lua_State *L) { return run_many(L, VPP_SYNC_LICENSES); }
static int get_many(lua_State *L) { return run_many(L, VPP_GET_TOKEN); }

void vpp_batch_open(lua_State *L, int methods) {
  lua_pushcfunction(L, sync_many);
  lua_setfield(L, methods, "sync_many");
  lua_pushcfunction(L, get_many);
  lua_setfield(L, methods, "get_many");
}
