/* client:sync_many(ids [, opts]) and client:get_many(ids [, opts]): one job
 * per id on the engine, results in input order, on_result as each ends. */
#include <string.h>

#include "vpp.h"

#define DEFAULT_CONCURRENCY 8
#define MAX_CONCURRENCY     256

/* The batch and the counts the results table reports. */
typedef struct many {
  vpp_batch b;
  int ok, failed;
} many;

/* Stack slots inside the engine run (see vpp_engine_run). */
#define IDS       VPP_RUN_EXTRA
#define RESULTS   (VPP_RUN_EXTRA + 1)
#define ON_RESULT (VPP_RUN_EXTRA + 2)

/* results[j+1] = { id, token | err, attempts }, then on_result(result, done, total). */
static void many_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t) {
  many *m = (many *)b;
  size_t idlen;
  const char *id;
  int ok, base;
  if (!t) lua_remove(L, -2); /* nil, err: keep err */
  lua_rawgeti(L, IDS, j + 1);
  id = lua_tolstring(L, -1, &idlen);
  base = lua_gettop(L);
  if (!t) {
    lua_pushnil(L);
    lua_pushvalue(L, base - 1);
  } else if (!vpp_reply_ok(&t->reply)) {
    vpp_reply_error(L, &t->reply);
  } else if (vpp_decode_entity(L, &t->reply, id, idlen) == 1) {
    lua_pushnil(L);
  }
  /* The two results are on top, maybe above scratch values: move them down. */
  lua_copy(L, -2, base + 1);
  lua_copy(L, -1, base + 2);
  lua_settop(L, base + 2);
  if (!t) lua_remove(L, base - 1);
  /* id, token-or-nil, err-or-nil */
  ok = lua_isnil(L, -1);
  lua_createtable(L, 0, 4);
  lua_insert(L, -4);
  lua_setfield(L, -4, "err");
  lua_setfield(L, -3, "token");
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, b->jobs[j].attempts);
  lua_setfield(L, -2, "attempts");
  if (ok)
    m->ok++;
  else
    m->failed++;
  lua_pushvalue(L, -1);
  lua_rawseti(L, RESULTS, j + 1);
  if (lua_isfunction(L, ON_RESULT)) {
    lua_pushvalue(L, ON_RESULT);
    lua_insert(L, -2);
    lua_pushinteger(L, b->done);
    lua_pushinteger(L, b->n);
    lua_call(L, 3, 0);
  } else {
    lua_pop(L, 1);
  }
}

static void check_opts_keys(lua_State *L, int opts, vpp_action action) {
  static const char *const sync_keys[] = {"concurrency", "on_result", "action", "organization_id", NULL};
  static const char *const get_keys[] = {"concurrency", "on_result", NULL};
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
  int n, i, concurrency = DEFAULT_CONCURRENCY, opts = 0;
  many m;
  memset(&m, 0, sizeof m);
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
  }
  /* 4: the organization id, for sync_apps */
  if (action == VPP_SYNC_APPS) {
    lua_getfield(L, opts, "organization_id");
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_error(L, "vpp: opts.organization_id must be a non-empty string for sync_apps");
  } else {
    lua_pushnil(L);
  }
  /* 5: the URLs, in input order; the ids as they are now, in a table of
   * our own (2), so that results keep them whatever a callback does to
   * the caller's list. */
  lua_createtable(L, n, 0);
  lua_createtable(L, n, 0);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lua_pushvalue(L, -1);
    lua_rawseti(L, 6, i);
    vpp_client_push_action_url(L, c, action, 4, 7);
    lua_rawseti(L, 5, i);
    lua_pop(L, 1);
  }
  lua_replace(L, 2);
  lua_createtable(L, n, 2); /* 6: the results */
  /* 7, 8: job state in Lua-owned memory, so a raise leaves nothing to free */
  m.b.jobs = lua_newuserdatauv(L, (size_t)n * sizeof(vpp_job) + 1, 0);
  memset(m.b.jobs, 0, (size_t)n * sizeof(vpp_job));
  m.b.waiting = lua_newuserdatauv(L, (size_t)n * sizeof(int) + 1, 0);
  m.b.c = c;
  m.b.n = n;
  m.b.post = action != VPP_GET_TOKEN;
  m.b.concurrency = concurrency;
  m.b.deliver = many_deliver;

  lua_pushvalue(L, 1); /* client */
  lua_pushvalue(L, 5); /* URLs */
  lua_pushvalue(L, 2); /* ids */
  lua_pushvalue(L, 6); /* results */
  if (opts)
    lua_getfield(L, opts, "on_result");
  else
    lua_pushnil(L);
  vpp_engine_run(L, &m.b, 3);
  lua_pop(L, 1);
  lua_pushvalue(L, 6);
  lua_pushinteger(L, m.ok);
  lua_setfield(L, -2, "ok");
  lua_pushinteger(L, m.failed);
  lua_setfield(L, -2, "failed");
  return 1;
}

static int sync_many(lua_State *L) { return run_many(L, VPP_SYNC_LICENSES); }
static int get_many(lua_State *L) { return run_many(L, VPP_GET_TOKEN); }

void vpp_batch_open(lua_State *L, int methods) {
  lua_pushcfunction(L, sync_many);
  lua_setfield(L, methods, "sync_many");
  lua_pushcfunction(L, get_many);
  lua_setfield(L, methods, "get_many");
}
