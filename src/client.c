/* The client object: settings, its libcurl multi handle and pool of easy
 * handles (kept open so calls reuse connections), the single Graph calls,
 * and the module-level shortcuts.
 * As in liolib, the userdata exists with its metatable before the handle is
 * acquired, and one idempotent close serves close, __gc and __close. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

/* Intune's documented limits: 100 writes and 1000 requests per 20 s. */
#define DEFAULT_RATE_WRITES   100
#define DEFAULT_RATE_REQUESTS 1000
#define DEFAULT_RATE_PER      20.0

/* A client, blocking or under a loop (two metatables: a loop client's
 * methods are the Lua driver's, over the same C ones). */
vpp_client *vpp_client_to(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int ok;
    luaL_getmetatable(L, VPP_CLIENT_MT);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (!ok) {
      luaL_getmetatable(L, VPP_LOOP_CLIENT_MT);
      ok = lua_rawequal(L, -1, -2);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (ok) return p;
  }
  luaL_argerror(L, idx, lua_pushfstring(L, "%s expected, got %s", VPP_CLIENT_MT, luaL_typename(L, idx)));
  return NULL;
}

vpp_client *vpp_client_check(lua_State *L, int idx) {
  vpp_client *c = vpp_client_to(L, idx);
  if (!c->multi) luaL_error(L, "vpp: the client is closed");
  if (c->busy || c->stepping) luaL_error(L, "vpp: the client is busy: it cannot be used from its own callbacks");
  return c;
}

/* ---- settings ---------------------------------------------------------- */

static void check_opts(lua_State *L, int idx) {
  if (!lua_isnoneornil(L, idx) && !lua_istable(L, idx))
    luaL_argerror(L, idx, lua_pushfstring(L, "opts must be a table, got %s", luaL_typename(L, idx)));
}

static double rate_field(lua_State *L, int t, const char *k, double dflt) {
  double v;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  v = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(v > 0) || v > 1e9)
    luaL_error(L, "vpp: opts.rate_limit.%s must be a positive number", k);
  lua_pop(L, 1);
  return v;
}

/* rate_limit: absent or true (Intune's limits), false (off), or a table
 * { writes = n, requests = m, per = seconds }. */
static void read_rate_limit(lua_State *L, int opts, vpp_ratelimit *r) {
  static const char *const keys[] = {"writes", "requests", "per", NULL};
  double writes = DEFAULT_RATE_WRITES, requests = DEFAULT_RATE_REQUESTS, per = DEFAULT_RATE_PER;
  int t;
  memset(r, 0, sizeof *r);
  if (opts)
    lua_getfield(L, opts, "rate_limit");
  else
    lua_pushnil(L);
  t = lua_type(L, -1);
  if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (t == LUA_TTABLE) {
    int rl = lua_gettop(L);
    vpp_check_keys(L, rl, keys, "rate_limit key", " (expected writes, requests or per)");
    writes = rate_field(L, rl, "writes", writes);
    requests = rate_field(L, rl, "requests", requests);
    per = rate_field(L, rl, "per", per);
  } else if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
    luaL_error(L, "vpp: opts.rate_limit must be false or a table { writes, requests, per }");
  }
  lua_pop(L, 1);
  vpp_rate_init(r, writes, requests, per);
}

static const char *read_base_url(lua_State *L, int opts, int uv, const char *dflt, vpp_origin *origin) {
  const char *s = vpp_string_option(L, opts, uv, "base_url", 1);
  size_t n;
  if (!s) {
    lua_pushstring(L, dflt);
    vpp_anchor(L, uv, "base_url");
  }
  s = vpp_url_option(L, uv, "base_url", 0);
  vpp_url_origin(s, origin);
  n = strlen(s);
  while (n > 0 && s[n - 1] == '/') n--;
  lua_pushlstring(L, s, n);
  return vpp_anchor(L, uv, "base_url");
}

static const char *read_api_version(lua_State *L, int opts, int uv) {
  const char *s = vpp_string_option(L, opts, uv, "api_version", 1), *p;
  if (!s) {
    lua_pushliteral(L, "v1.0");
    s = vpp_anchor(L, uv, "api_version");
  }
  for (p = s; *p; p++)
    if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *p))
      luaL_error(L, "vpp: opts.api_version must look like \"v1.0\" or \"beta\"");
  return s;
}

/* ---- life cycle -------------------------------------------------------- */

/* The default User-Agent, kept in the user value table like the others. */
static const char *default_user_agent(lua_State *L, int uv) {
  lua_pushfstring(L, "lua-vpp/%s libcurl/%s", VPP_VERSION, curl_version_info(CURLVERSION_NOW)->version);
  return vpp_anchor(L, uv, "user_agent");
}

/* vpp.new(opts): validates every setting before anything is acquired. */
static int client_new(lua_State *L) {
  int opts = lua_isnoneornil(L, 1) ? 0 : 1, uv;
  vpp_client s, *c;
  const char *graph;
  memset(&s, 0, sizeof s);
  check_opts(L, 1);
  lua_settop(L, opts ? 1 : 0);
  lua_newtable(L);
  uv = lua_gettop(L);
  vpp_options_read(L, opts, uv, &s.s);
  vpp_auth_read(L, opts, uv, &s.auth, &graph);
  s.base_url = read_base_url(L, opts, uv, graph, &s.origin);
  vpp_url_origin(graph, &s.cloud_origin);
  s.gateway = !vpp_url_same_origin(&s.cloud_origin, s.base_url);
  s.api_version = read_api_version(L, opts, uv);
  read_rate_limit(L, opts, &s.rate);
  if (!s.s.user_agent) s.s.user_agent = default_user_agent(L, uv);
  lua_pushfstring(L, "User-Agent: %s", s.s.user_agent);
  s.s.user_agent_line = vpp_anchor(L, uv, "user_agent_line");

  s.curl_timer_at = s.wake_at = HUGE_VAL; /* libcurl's timer is only kept under a loop */
  c = lua_newuserdatauv(L, sizeof *c, 1);
  *c = s;
  luaL_setmetatable(L, s.s.looped ? VPP_LOOP_CLIENT_MT : VPP_CLIENT_MT);
  lua_pushvalue(L, uv);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  lua_setfield(L, uv, "runs");
  lua_newtable(L);
  lua_setfield(L, uv, "traces");
  c->multi = curl_multi_init();
  if (!c->multi) return luaL_error(L, "vpp: cannot create a libcurl multi handle");
  curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  if (c->s.looped && !vpp_engine_evented(c)) return luaL_error(L, "vpp: cannot create a poller for opts.loop");
  return 1;
}

static void client_release(vpp_client *c) {
  vpp_engine_release(c);
  vpp_auth_release(&c->auth);
}

/* close() and __close: not from the client's own callbacks, where the
 * engine still needs it. */
static int client_close(lua_State *L) {
  vpp_client *c = vpp_client_to(L, 1);
  if (c->busy || c->stepping) return luaL_error(L, "vpp: the client cannot be closed from its own callbacks");
  client_release(c);
  return 0;
}

/* client:cancel(): from anywhere (a callback, another coroutine, a timer,
 * a hook); every call under way ends at its next step. */
static int client_cancel(lua_State *L) {
  vpp_client *c = vpp_client_to(L, 1);
  if (c->multi) vpp_engine_cancel(c);
  return 0;
}

/* __gc never raises.  Busy here means the state is being closed from
 * inside a callback (os.exit(code, true)): nothing will run the engine
 * again, so everything goes. */
static int client_gc(lua_State *L) {
  client_release(lua_touserdata(L, 1));
  return 0;
}

/* client:config(): the effective settings, without any secret. */
static int client_config(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  lua_createtable(L, 0, 10);
  lua_pushstring(L, c->base_url);
  lua_setfield(L, -2, "base_url");
  lua_pushstring(L, c->api_version);
  lua_setfield(L, -2, "api_version");
  if (c->s.proxy) { /* scheme://host:port: never its credentials */
    lua_pushstring(L, c->s.proxy_shown);
    lua_setfield(L, -2, "proxy");
  }
  if (c->s.proxy_auth_name) {
    lua_pushstring(L, c->s.proxy_auth_name);
    lua_setfield(L, -2, "proxy_auth");
  }
  vpp_auth_push_config(L, &c->auth);
  return 1;
}

static int client_tostring(lua_State *L) {
  vpp_client *c = vpp_client_to(L, 1);
  if (c->multi)
    lua_pushfstring(L, "vpp.client (%s/%s)", c->base_url, c->api_version);
  else
    lua_pushliteral(L, "vpp.client (closed)");
  return 1;
}

/* ---- Graph calls ------------------------------------------------------- */

static const char *check_id(lua_State *L, int idx, const char *name, size_t *len) {
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be a string, got %s", name, luaL_typename(L, idx)));
  s = lua_tolstring(L, idx, len);
  if (*len == 0) luaL_argerror(L, idx, lua_pushfstring(L, "%s must not be empty", name));
  return s;
}

/* The one place that builds Graph URLs: base_url/version + path, where each
 * '%' in path is the next of seg, percent-encoded as one segment.  Writes
 * into out when the URL fits in cap bytes (NUL included); returns the size
 * it needs, NUL included, either way. */
static size_t build_url(const vpp_client *c, const char *version, const char *path, const char *const seg[2],
                        const size_t seglen[2], char *out, size_t cap) {
  size_t need = strlen(c->base_url) + 1 + strlen(version) + strlen(path) + 3 * (seglen[0] + seglen[1]) + 1, n;
  int k = 0;
  if (need > cap) return need;
  n = (size_t)sprintf(out, "%s/%s", c->base_url, version);
  while (*path) {
    size_t run = strcspn(path, "%");
    memcpy(out + n, path, run);
    n += run;
    path += run;
    if (*path == '%') {
      if (k < 2) n += vpp_url_encode(out + n, seg[k], seglen[k]);
      k++;
      path++;
    }
  }
  out[n] = '\0';
  return need;
}

/* The URL of an action on the token id at id_idx (and, for syncApps, the
 * organization id at org_idx), or of the list, in out if it fits, else in a
 * scratch userdata pushed on the stack. */
static const char *action_url(lua_State *L, const vpp_client *c, vpp_action action, int org_idx, int id_idx, char *out,
                              size_t cap) {
  const char *seg[2] = {"", ""}, *version = c->api_version, *path;
  size_t len[2] = {0, 0}, need;
  switch (action) {
  case VPP_SYNC_APPS:
    /* The legacy action exists only under /beta, whatever api_version says. */
    version = "beta";
    path = "/organization/%/appleVolumePurchaseProgramTokens/%/syncApps";
    seg[0] = lua_tolstring(L, org_idx, &len[0]);
    break;
  case VPP_LIST_TOKENS:
    path = "/deviceAppManagement/vppTokens";
    break;
  case VPP_SYNC_LICENSE_COUNTS: /* beta only, like the two below */
    version = "beta";
    path = "/deviceAppManagement/vppTokens/syncLicenseCounts";
    break;
  case VPP_LICENSES_FOR_APP: /* id_idx: the bundle id, its quotes doubled */
    version = "beta";
    path = "/deviceAppManagement/vppTokens/getLicensesForApp(bundleId='%')";
    break;
  case VPP_LIST_VPP_APPS: /* beta: v1.0's VPP apps do not name their token's id */
    version = "beta";
    path = "/deviceAppManagement/mobileApps";
    break;
  case VPP_REVOKE_LICENSES:
    version = "beta";
    path = "/deviceAppManagement/vppTokens/%/revokeLicenses";
    break;
  case VPP_SYNC_LICENSES:
    path = "/deviceAppManagement/vppTokens/%/syncLicenses";
    break;
  default: /* get, update */
    path = "/deviceAppManagement/vppTokens/%";
  }
  if (id_idx) {
    int k = action == VPP_SYNC_APPS;
    seg[k] = lua_tolstring(L, id_idx, &len[k]);
  }
  need = build_url(c, version, path, seg, len, out, cap);
  if (need > cap) {
    out = lua_newuserdatauv(L, need, 0);
    build_url(c, version, path, seg, len, out, need);
  }
  return out;
}

const char *vpp_client_push_action_url(lua_State *L, vpp_client *c, vpp_action action, int org_idx, int id_idx) {
  char buf[512];
  int top = lua_gettop(L);
  lua_pushstring(L, action_url(L, c, action, org_idx, id_idx, buf, sizeof buf));
  if (lua_gettop(L) > top + 1) lua_remove(L, top + 1); /* the scratch */
  return lua_tostring(L, -1);
}

/* Under a loop, a C method returns the run for the Lua driver to drive
 * (lua/vpp/evented.lua): the marker core._pending, then its state. */
static const char pending_key = 'p';

/* Runs the run of the state on top, blocking or under the loop, and
 * returns what the call returns. */
int vpp_client_run(lua_State *L, vpp_client *c, int client_idx, vpp_batch *b) {
  int state = lua_gettop(L);
  if (c->evented) {
    vpp_run_start(L, client_idx, state);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &pending_key);
    lua_pushvalue(L, state);
    return 2;
  }
  vpp_run_block(L, client_idx, state, b);
  lua_rawgeti(L, state, 1);
  lua_rawgeti(L, state, 2);
  return 2;
}

/* state[1], state[2] = the values on top (a token, or nil and err): one or
 * two of them, popped. */
static void keep_result(lua_State *L, int state, int n) {
  if (n == 2) lua_rawseti(L, state, 2);
  lua_rawseti(L, state, 1);
}

/* For a single call's or a list's job: keeps nil, err when the job ended
 * without a transfer (the err at err) or with an error reply; 1 then. */
static int kept_failure(lua_State *L, vpp_transfer *t, int state, int err) {
  if (!t) {
    lua_pushnil(L);
    lua_pushvalue(L, err);
    keep_result(L, state, 2);
    return 1;
  }
  if (!vpp_reply_ok(&t->reply)) {
    keep_result(L, state, vpp_reply_error(L, &t->reply));
    return 1;
  }
  return 0;
}

/* A single call's job ended: its token or nil, err, decoded at once (under
 * a loop the transfer serves another run before the driver looks). */
static void one_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t, int state, int err) {
  size_t idlen;
  const char *id;
  (void)b;
  (void)j;
  if (kept_failure(L, t, state, err)) return;
  lua_rawgeti(L, state, 3); /* the id */
  id = lua_tolstring(L, -1, &idlen);
  keep_result(L, state, vpp_decode_entity(L, &t->reply, id, idlen));
}

/* A call that answers with nothing to show (204): true. */
static void done_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t, int state, int err) {
  (void)b;
  (void)j;
  if (kept_failure(L, t, state, err)) return;
  lua_pushboolean(L, 1);
  keep_result(L, state, 1);
}

/* A PATCH ended: the token Graph sent back, or, when it answered 204, the
 * same job again as a GET that reads it back. */
static void patch_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t, int state, int err) {
  if (t && b->method && vpp_reply_ok(&t->reply) && (t->reply.status == 204 || t->reply.body.len == 0)) {
    b->method = NULL;
    b->post = b->has_body = 0;
    b->permission = VPP_NEEDS_CONFIG_READ;
    vpp_run_requeue(b, j);
    return;
  }
  one_deliver(L, b, j, t, state, err);
}

/* How a single call goes: a write or not, its method, the permission it
 * needs, and what its answer becomes. */
typedef struct call_kind {
  int post;
  const char *method;
  int permission;
  vpp_deliver_fn deliver;
} call_kind;

static const call_kind read_call = {0, NULL, VPP_NEEDS_APPS_READ, one_deliver};
static const call_kind sync_call = {1, NULL, VPP_NEEDS_APPS_WRITE, one_deliver};
static const call_kind config_call = {1, NULL, VPP_NEEDS_CONFIG_WRITE, done_deliver};
static const call_kind patch_call = {1, "PATCH", VPP_NEEDS_CONFIG_WRITE, patch_deliver};

/* Performs one call on a token (id_idx, or none: 0) with the JSON body at
 * body_idx (or none: 0): the token, true, or nil, err.  Blocking, the
 * client's one single-call run serves every call without a body (calls
 * are one at a time), with the URL in C memory: nothing to allocate but
 * the answer.  A body gets a run of its own, which nothing keeps. */
static int token_call(lua_State *L, vpp_client *c, vpp_action action, int org_idx, int id_idx, const call_kind *k,
                      int body_idx) {
  char buf[512];
  const char *url = action_url(L, c, action, org_idx, id_idx, buf, sizeof buf);
  vpp_batch *b;
  if (c->evented || body_idx) {
    lua_pushstring(L, url);
    lua_createtable(L, 1, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    b = vpp_run_new(L, 1, 1, k->post, 1, k->deliver);
    lua_insert(L, -2);
    lua_setfield(L, -2, "urls");
  } else {
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, 1); /* uv[1]: the single-call run's state */
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      b = vpp_run_new(L, 1, 1, k->post, 1, k->deliver);
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, 1);
      c->single = b; /* only once it is anchored: the store may raise */
    }
    lua_remove(L, -2);
    b = c->single;
    vpp_run_reset(b, k->post, 1, k->deliver);
    b->url = url;
    lua_pushnil(L);
    lua_rawseti(L, -2, 1);
    lua_pushnil(L);
    lua_rawseti(L, -2, 2);
  }
  b->method = k->method;
  b->permission = k->permission;
  if (body_idx) {
    lua_pushvalue(L, body_idx);
    lua_setfield(L, -2, "body");
    b->has_body = 1;
  }
  if (id_idx)
    lua_pushvalue(L, id_idx);
  else
    lua_pushnil(L);
  lua_rawseti(L, -2, 3);
  return vpp_client_run(L, c, 1, b);
}

static int do_sync_licenses(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "token_id", &n);
  return token_call(L, c, VPP_SYNC_LICENSES, 0, 2, &sync_call, 0);
}

static int do_sync_apps(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "organization_id", &n);
  check_id(L, 3, "token_id", &n);
  return token_call(L, c, VPP_SYNC_APPS, 2, 3, &sync_call, 0);
}

static int do_get_token(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "token_id", &n);
  return token_call(L, c, VPP_GET_TOKEN, 0, 2, &read_call, 0);
}

/* The boolean option name of the table at t: 0 when absent. */
static int flag_option(lua_State *L, int t, const char *name) {
  int v;
  lua_getfield(L, t, name);
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "vpp: opts.%s must be a boolean", name);
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* client:revoke_licenses(id [, { notify_managed_devices, revoke_untracked_licenses }]):
 * true (Graph answers 204). */
static int do_revoke_licenses(lua_State *L) {
  static const char *const keys[] = {"notify_managed_devices", "revoke_untracked_licenses", NULL};
  vpp_client *c = vpp_client_check(L, 1);
  int notify = 0, untracked = 0;
  size_t n;
  check_id(L, 2, "token_id", &n);
  check_opts(L, 3);
  lua_settop(L, 3);
  if (lua_istable(L, 3)) {
    vpp_check_keys(L, 3, keys, "option", " (expected notify_managed_devices or revoke_untracked_licenses)");
    notify = flag_option(L, 3, "notify_managed_devices");
    untracked = flag_option(L, 3, "revoke_untracked_licenses");
  }
  lua_pushfstring(L, "{\"notifyManagedDevices\":%s,\"revokeUntrackedLicenses\":%s}", notify ? "true" : "false",
                  untracked ? "true" : "false"); /* 4 */
  return token_call(L, c, VPP_REVOKE_LICENSES, 0, 2, &config_call, 4);
}

/* client:sync_license_counts(): true (204). */
static int do_sync_license_counts(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  lua_settop(L, 1);
  return token_call(L, c, VPP_SYNC_LICENSE_COUNTS, 0, 0, &config_call, 0);
}

/* client:update_token(id, fields): fields are Graph's property names and
 * values, sent as given (JSON by lua-cjson); the token Graph has then. */
static int do_update_token(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "token_id", &n);
  if (!lua_istable(L, 3))
    luaL_argerror(L, 3, lua_pushfstring(L, "fields must be a table, got %s", luaL_typename(L, 3)));
  lua_settop(L, 3);
  lua_pushnil(L);
  if (!lua_next(L, 3)) luaL_argerror(L, 3, "fields must name at least one property");
  lua_settop(L, 3);
  vpp_json_push_encoded(L, 3); /* 4 */
  return token_call(L, c, VPP_UPDATE_TOKEN, 0, 2, &patch_call, 4);
}

static void push_encoded(lua_State *L, int idx) {
  luaL_Buffer b;
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  luaL_buffinit(L, &b);
  vpp_url_push_encoded(&b, s, len);
  luaL_pushresult(&b);
}

/* Pushes "?$select=a,b&$top=n&$filter=..." for the query table at q (0:
 * none), with base_filter (or NULL) and-ed with the query's filter.  The
 * pieces are pushed one by one and concatenated at the end. */
static void push_query(lua_State *L, int q, const char *base_filter) {
  int sel = lua_gettop(L) + 1;
  const char *sep = "?";
  static const char *const keys[] = {"select", "top", "filter", "deadline", NULL};
  if (q) {
    vpp_check_keys(L, q, keys, "query key", " (expected select, top, filter or deadline)");
    lua_getfield(L, q, "select");
  } else {
    lua_pushnil(L);
  }
  if (lua_type(L, sel) == LUA_TSTRING) {
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, sel);
    lua_rawseti(L, -2, 1);
    lua_replace(L, sel);
  }
  if (!lua_isnil(L, sel)) {
    int i, n;
    if (lua_type(L, sel) != LUA_TTABLE || lua_rawlen(L, sel) == 0)
      luaL_error(L, "vpp: query.select must be a string or a non-empty list of strings");
    n = (int)lua_rawlen(L, sel);
    for (i = 1; i <= n; i++) {
      lua_pushstring(L, i == 1 ? "?$select=" : ",");
      lua_rawgeti(L, sel, i);
      if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        luaL_error(L, "vpp: query.select[%d] must be a non-empty string", i);
      push_encoded(L, -1);
      lua_remove(L, -2);
    }
    sep = "&";
  }
  if (q) {
    lua_getfield(L, q, "top");
  } else {
    lua_pushnil(L);
  }
  if (!lua_isnil(L, -1)) {
    int isint;
    lua_Integer top = lua_tointegerx(L, -1, &isint);
    if (!isint || top <= 0 || top > 1000000) luaL_error(L, "vpp: query.top must be a positive integer");
    lua_pop(L, 1);
    lua_pushfstring(L, "%s$top=%d", sep, (int)top);
    sep = "&";
  } else {
    lua_pop(L, 1);
  }
  if (q) {
    lua_getfield(L, q, "filter");
  } else {
    lua_pushnil(L);
  }
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_error(L, "vpp: query.filter must be a non-empty string");
    if (base_filter) {
      lua_pushfstring(L, "(%s) and (%s)", base_filter, lua_tostring(L, -1));
      lua_remove(L, -2);
    }
  } else if (base_filter) {
    lua_pop(L, 1);
    lua_pushstring(L, base_filter);
  }
  if (!lua_isnil(L, -1)) {
    lua_pushfstring(L, "%s$filter=", sep);
    push_encoded(L, -2);
    lua_remove(L, -3);
  } else {
    lua_pop(L, 1);
  }
  lua_concat(L, lua_gettop(L) - sel);
  lua_remove(L, sel);
}

/* A page of list_tokens arrived: its tokens added to state.out, then the
 * next page fetched by the same job, following @odata.nextLink within
 * base_url's origin, refusing a link seen before (a loop). */
static void page_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t, int state, int err) {
  vpp_client *c = b->c;
  const char *url = NULL;
  lua_Integer pages;
  int n;
  if (kept_failure(L, t, state, err)) return;
  lua_getfield(L, state, "out");
  if ((n = vpp_decode_page(L, &t->reply, lua_gettop(L), &url))) {
    keep_result(L, state, n);
    return;
  }
  if (!url) {
    lua_pop(L, 1); /* the nil link: the list is on top */
    keep_result(L, state, 1);
    return;
  }
  lua_getfield(L, state, "pages");
  pages = lua_tointeger(L, -1) + 1;
  if (pages >= c->s.max_pages) {
    keep_result(L, state,
                vpp_error_push(L, "decode", t->reply.status, VPP_CODE(too_many_pages),
                               "list_tokens stopped after max_pages pages: Graph keeps sending @odata.nextLink",
                               &t->reply));
    return;
  }
  if (!vpp_url_same_origin(&c->origin, url)) {
    /* Behind a gateway, Graph's links still name Graph's own host: they
     * are followed through base_url (its origin and path prefix). */
    if (!c->gateway || !vpp_url_same_origin(&c->cloud_origin, url)) {
      keep_result(L, state,
                  vpp_error_push(L, "decode", t->reply.status, VPP_CODE(foreign_next_link),
                                 "@odata.nextLink points to another scheme, host or port than base_url", &t->reply));
      return;
    }
    lua_pushfstring(L, "%s%s", c->base_url, url + vpp_url_path_at(url));
    lua_replace(L, -3); /* the link, under the page count */
    url = lua_tostring(L, -2);
  }
  lua_getfield(L, state, "seen");
  lua_pushvalue(L, -3); /* the link: on the stack under the page's table */
  lua_rawget(L, -2);
  if (lua_toboolean(L, -1)) {
    keep_result(L, state,
                vpp_error_push(L, "decode", t->reply.status, VPP_CODE(next_link_loop),
                               "@odata.nextLink points to a page already fetched", &t->reply));
    return;
  }
  lua_pushinteger(L, pages);
  lua_setfield(L, state, "pages");
  lua_pushstring(L, url);
  lua_pushboolean(L, 1);
  lua_rawset(L, -4);
  lua_getfield(L, state, "urls");
  lua_pushstring(L, url);
  lua_rawseti(L, -2, 1);
  vpp_run_requeue(b, j);
}

/* Runs the list at url_idx (every page): its items, or nil, err. */
static int list_run(lua_State *L, vpp_client *c, int url_idx, double deadline, int permission) {
  int state;
  vpp_batch *b = vpp_run_new(L, 1, 1, 0, 1, page_deliver);
  state = lua_gettop(L);
  b->deadline_at = deadline;
  b->permission = permission;
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, url_idx);
  lua_rawseti(L, -2, 1);
  lua_setfield(L, state, "urls");
  lua_newtable(L);
  lua_setfield(L, state, "out");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, url_idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_setfield(L, state, "seen");
  return vpp_client_run(L, c, 1, b);
}

/* A list at action's URL, every page; the query (argument 2: select,
 * top, filter, deadline) as push_query makes it, with base_filter. */
static int list_call(lua_State *L, vpp_action action, const char *base_filter) {
  vpp_client *c = vpp_client_check(L, 1);
  double deadline = HUGE_VAL;
  int q;
  if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
    luaL_argerror(L, 2, lua_pushfstring(L, "query must be a table, got %s", luaL_typename(L, 2)));
  lua_settop(L, 2);
  q = lua_isnil(L, 2) ? 0 : 2;
  vpp_client_push_action_url(L, c, action, 0, 0); /* 3 */
  if (q) deadline = vpp_deadline_option(L, q, "query.deadline");
  if (q || base_filter) {
    push_query(L, q, base_filter);
    lua_concat(L, 2);
  }
  return list_run(L, c, 3, deadline, VPP_NEEDS_APPS_READ);
}

/* client:list_tokens([query]): every page. */
static int do_list_tokens(lua_State *L) { return list_call(L, VPP_LIST_TOKENS, NULL); }

/* Graph's own filter for the VPP apps among every mobileApp. */
#define VPP_APPS_FILTER "isof('microsoft.graph.iosVppApp') or isof('microsoft.graph.macOsVppApp')"

/* client:list_vpp_apps([query]): the iOS and macOS VPP apps (beta
 * mobileApps, every page), with their licence counts and the VPP token
 * each uses.  query as list_tokens'; a query.filter is and-ed with the
 * filter on the two VPP types. */
static int do_list_vpp_apps(lua_State *L) { return list_call(L, VPP_LIST_VPP_APPS, VPP_APPS_FILTER); }

/* client:licenses_for_app(bundle_id [, { deadline }]): Graph's license
 * summaries (every page).  The bundle id goes as an OData string literal:
 * its quotes doubled, then percent-encoded with the rest. */
static int do_licenses_for_app(lua_State *L) {
  static const char *const keys[] = {"deadline", NULL};
  vpp_client *c = vpp_client_check(L, 1);
  double deadline = HUGE_VAL;
  luaL_Buffer lit;
  size_t n, i;
  const char *bundle = check_id(L, 2, "bundle_id", &n);
  check_opts(L, 3);
  lua_settop(L, 3);
  if (lua_istable(L, 3)) {
    vpp_check_keys(L, 3, keys, "option", " (expected deadline)");
    deadline = vpp_deadline_option(L, 3, "opts.deadline");
  }
  luaL_buffinit(L, &lit);
  for (i = 0; i < n; i++) {
    if (bundle[i] == '\'') luaL_addchar(&lit, '\'');
    luaL_addchar(&lit, bundle[i]);
  }
  luaL_pushresult(&lit);                                        /* 4 */
  vpp_client_push_action_url(L, c, VPP_LICENSES_FOR_APP, 0, 4); /* 5 */
  return list_run(L, c, 5, deadline, VPP_NEEDS_CONFIG_READ);
}

/* ---- module-level shortcuts: a client for one call, closed after it ---- */

/* vpp.X(args..., opts): the method X on a client made from opts, closed
 * after it.  names: the string arguments first, checked here so that an
 * error names the caller's position. */
static int one_shot(lua_State *L, int nargs, const char *const *names, lua_CFunction call) {
  int opts = nargs + 1, n, i;
  size_t len;
  for (i = 1; names && names[i - 1]; i++) check_id(L, i, names[i - 1], &len);
  check_opts(L, opts);
  lua_settop(L, opts);
  lua_pushcfunction(L, client_new);
  lua_pushvalue(L, opts);
  lua_call(L, 1, 1);
  lua_insert(L, 1); /* client, args..., opts: the method's own layout */
  if (((vpp_client *)lua_touserdata(L, 1))->evented) {
    client_release(lua_touserdata(L, 1));
    return luaL_error(L, "vpp: opts.loop: the module-level calls block; make a client with vpp.new for a loop");
  }
  lua_settop(L, nargs + 1); /* the method takes no opts of the client's */
  n = call(L);
  client_release(lua_touserdata(L, 1)); /* not busy: the call has returned */
  return n;
}

static const char *const token_arg[] = {"token_id", NULL};
static const char *const sync_apps_args[] = {"organization_id", "token_id", NULL};
static const char *const bundle_arg[] = {"bundle_id", NULL};

static int mod_sync_licenses(lua_State *L) { return one_shot(L, 1, token_arg, do_sync_licenses); }
static int mod_sync_apps(lua_State *L) { return one_shot(L, 2, sync_apps_args, do_sync_apps); }
static int mod_revoke_licenses(lua_State *L) { return one_shot(L, 2, token_arg, do_revoke_licenses); }
static int mod_sync_license_counts(lua_State *L) { return one_shot(L, 0, NULL, do_sync_license_counts); }
static int mod_licenses_for_app(lua_State *L) { return one_shot(L, 1, bundle_arg, do_licenses_for_app); }
static int mod_update_token(lua_State *L) { return one_shot(L, 2, token_arg, do_update_token); }

int vpp_client_open_lib(lua_State *L) {
  static const luaL_Reg methods[] = {{"sync_licenses", do_sync_licenses},
                                     {"sync_apps", do_sync_apps},
                                     {"get_token", do_get_token},
                                     {"list_tokens", do_list_tokens},
                                     {"revoke_licenses", do_revoke_licenses},
                                     {"sync_license_counts", do_sync_license_counts},
                                     {"licenses_for_app", do_licenses_for_app},
                                     {"list_vpp_apps", do_list_vpp_apps},
                                     {"update_token", do_update_token},
                                     {"config", client_config},
                                     {"cancel", client_cancel},
                                     {"close", client_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__gc", client_gc}, {"__close", client_close}, {"__tostring", client_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"new", client_new},
                                 {"sync_licenses", mod_sync_licenses},
                                 {"sync_apps", mod_sync_apps},
                                 {"revoke_licenses", mod_revoke_licenses},
                                 {"sync_license_counts", mod_sync_license_counts},
                                 {"licenses_for_app", mod_licenses_for_app},
                                 {"update_token", mod_update_token},
                                 {NULL, NULL}};
  /* Loaded again (package.loaded cleared), the module keeps the tables it
   * made the first time: the Lua layer's methods are in them. */
  if (luaL_newmetatable(L, VPP_CLIENT_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2); /* methods */
  if (luaL_newmetatable(L, VPP_LOOP_CLIENT_MT)) {
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L); /* the loop client's methods: the Lua driver's, then the others */
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -4);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2);   /* methods, loop methods */
  luaL_newlib(L, fns); /* methods, loop methods, module */
  lua_insert(L, -3);
  lua_setfield(L, -3, "loop_client_methods");
  lua_setfield(L, -2, "client_methods"); /* lets the Lua layer add methods */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pending_key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pending_key);
  }
  lua_setfield(L, -2, "_pending");
  return 1;
}
