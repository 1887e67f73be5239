/* The client object: settings, its libcurl multi handle and pool of easy
 * handles (kept open so calls reuse connections), the single Graph calls,
 * and the module-level shortcuts.
 * As in liolib, the userdata exists with its metatable before the handle is
 * acquired, and one idempotent close serves close, __gc and __close. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "vpp.h"

#define DEFAULT_MAX_RESPONSE_BYTES (16L * 1024 * 1024)

#define DEFAULT_MAX_RETRIES     3
#define DEFAULT_MAX_RETRY_DELAY 60.0
/* Intune's documented limits: 100 writes and 1000 requests per 20 s. */
#define DEFAULT_RATE_WRITES   100
#define DEFAULT_RATE_REQUESTS 1000
#define DEFAULT_RATE_PER      20.0

static const char *const option_names[] = {"access_token",
                                           "base_url",
                                           "api_version",
                                           "timeout",
                                           "connect_timeout",
                                           "stall_timeout",
                                           "ca_file",
                                           "user_agent",
                                           "max_response_bytes",
                                           "max_retries",
                                           "max_retry_delay",
                                           "rate_limit",
                                           "tenant_id",
                                           "client_id",
                                           "client_secret",
                                           "client_certificate",
                                           "client_key",
                                           "client_key_password",
                                           "managed_identity",
                                           "imds_url",
                                           "authority",
                                           "scope",
                                           "cloud",
                                           "on_request",
                                           NULL};

vpp_client *vpp_client_check(lua_State *L, int idx) {
  vpp_client *c = luaL_checkudata(L, idx, VPP_CLIENT_MT);
  if (!c->multi) luaL_error(L, "vpp: the client is closed");
  if (c->busy) luaL_error(L, "vpp: the client is busy: it cannot be used from its own callbacks");
  return c;
}

uint64_t vpp_client_random(vpp_client *c) { /* xorshift128+ */
  uint64_t x = c->rng[0], y = c->rng[1];
  c->rng[0] = y;
  x ^= x << 23;
  c->rng[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
  return c->rng[1] + y;
}

/* ---- settings ---------------------------------------------------------- */

static void check_opts(lua_State *L, int idx) {
  if (!lua_isnoneornil(L, idx) && !lua_istable(L, idx))
    luaL_argerror(L, idx, lua_pushfstring(L, "opts must be a table, got %s", luaL_typename(L, idx)));
}

static void check_known_options(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    int i, known = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (i = 0; option_names[i]; i++)
        if (strcmp(lua_tostring(L, -1), option_names[i]) == 0) known = 1;
    if (!known) luaL_error(L, "vpp: unknown option '%s'", luaL_tolstring(L, -1, NULL));
  }
}

/* Reads opts[name] when present: it must have type t. */
static int get_option(lua_State *L, int opts, const char *name, int t, const char *expected) {
  if (!opts) return 0;
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (lua_type(L, -1) != t) luaL_error(L, "vpp: opts.%s must be %s (got %s)", name, expected, luaL_typename(L, -1));
  return 1;
}

static double number_option(lua_State *L, int opts, const char *name, double dflt) {
  double v;
  if (!get_option(L, opts, name, LUA_TNUMBER, "a positive number")) return dflt;
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v > 0) || v > 1e9) luaL_error(L, "vpp: opts.%s must be a positive number of seconds", name);
  return v;
}

static lua_Integer integer_option(lua_State *L, int opts, const char *name, lua_Integer dflt, lua_Integer min,
                                  lua_Integer max) {
  lua_Integer v;
  int isint;
  if (!get_option(L, opts, name, LUA_TNUMBER, "an integer")) return dflt;
  v = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (!isint || v < min || v > max)
    luaL_error(L, "vpp: opts.%s must be an integer from %d to %d", name, (int)min, (int)max);
  return v;
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
    lua_pushnil(L);
    while (lua_next(L, rl)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
      lua_pop(L, 1);
      if (strcmp(k, "writes") != 0 && strcmp(k, "requests") != 0 && strcmp(k, "per") != 0)
        luaL_error(L, "vpp: unknown rate_limit key '%s' (expected writes, requests or per)",
                   luaL_tolstring(L, -1, NULL));
    }
    writes = rate_field(L, rl, "writes", writes);
    requests = rate_field(L, rl, "requests", requests);
    per = rate_field(L, rl, "per", per);
  } else if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
    luaL_error(L, "vpp: opts.rate_limit must be false or a table { writes, requests, per }");
  }
  lua_pop(L, 1);
  vpp_rate_init(r, writes, requests, per);
}

/* Pops the string on top of the stack into uv[name] and returns it: the
 * user value table keeps it alive as long as the client. */
const char *vpp_anchor(lua_State *L, int uv, const char *name) {
  const char *s;
  lua_setfield(L, uv, name);
  lua_getfield(L, uv, name);
  s = lua_tostring(L, -1);
  lua_pop(L, 1);
  return s;
}

/* opts[name] when present: a non-empty string without NUL bytes (C would
 * see a shorter one), anchored in uv; NULL when absent.  With printable,
 * control characters are refused too: those strings go into URLs and
 * request headers. */
const char *vpp_string_option(lua_State *L, int opts, int uv, const char *name, int printable) {
  const char *s;
  size_t i, n;
  if (!get_option(L, opts, name, LUA_TSTRING, "a non-empty string")) return NULL;
  s = lua_tolstring(L, -1, &n);
  if (n == 0) luaL_error(L, "vpp: opts.%s must be a non-empty string", name);
  for (i = 0; i < n; i++) {
    if (printable && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f))
      luaL_error(L, "vpp: opts.%s must not contain control characters", name);
    if (s[i] == '\0') luaL_error(L, "vpp: opts.%s must not contain NUL bytes", name);
  }
  return vpp_anchor(L, uv, name);
}

static const char *read_base_url(lua_State *L, int opts, int uv, const char *dflt, vpp_origin *origin) {
  const char *s = vpp_string_option(L, opts, uv, "base_url", 1);
  size_t n;
  if (!s) s = dflt;
  if (strchr(s, '?') || strchr(s, '#') || !vpp_url_origin(s, origin))
    luaL_error(L, "vpp: opts.base_url must be an http(s) URL without query or fragment");
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

static void seed_rng(vpp_client *c) {
  if (getrandom(c->rng, sizeof c->rng, GRND_NONBLOCK) != (ssize_t)sizeof c->rng) {
    c->rng[0] = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c;
    c->rng[1] = (uint64_t)clock() ^ 0x9e3779b97f4a7c15ULL;
  }
  if (!c->rng[0] && !c->rng[1]) c->rng[1] = 1;
}

/* The default User-Agent, kept in the user value table like the others. */
static const char *default_user_agent(lua_State *L, int uv) {
  lua_pushfstring(L, "lua-vpp/%s libcurl/%s", VPP_VERSION, curl_version_info(CURLVERSION_NOW)->version);
  return vpp_anchor(L, uv, "user_agent");
}

/* vpp.new(opts): validates every setting before anything is acquired. */
static int client_new(lua_State *L) {
  int opts = lua_isnoneornil(L, 1) ? 0 : 1, uv;
  vpp_client s, *c;
  lua_Integer max_bytes;
  const char *graph;
  memset(&s, 0, sizeof s);
  check_opts(L, 1);
  lua_settop(L, opts ? 1 : 0);
  if (opts) check_known_options(L, opts);
  lua_newtable(L);
  uv = lua_gettop(L);
  vpp_auth_read(L, opts, uv, &s.auth, &graph);
  s.base_url = read_base_url(L, opts, uv, graph, &s.origin);
  s.api_version = read_api_version(L, opts, uv);
  s.timeout_ms = (long)(number_option(L, opts, "timeout", 60) * 1000);
  s.connect_timeout_ms = (long)(number_option(L, opts, "connect_timeout", 10) * 1000);
  s.stall_seconds = number_option(L, opts, "stall_timeout", 30);
  max_bytes = integer_option(L, opts, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, 1, 0x7fffffff);
  s.max_response_bytes = (size_t)max_bytes;
  s.max_retries = (int)integer_option(L, opts, "max_retries", DEFAULT_MAX_RETRIES, 0, 100);
  s.max_retry_delay = number_option(L, opts, "max_retry_delay", DEFAULT_MAX_RETRY_DELAY);
  read_rate_limit(L, opts, &s.rate);
  s.ca_file = vpp_string_option(L, opts, uv, "ca_file", 1);
  s.user_agent = vpp_string_option(L, opts, uv, "user_agent", 1);
  if (get_option(L, opts, "on_request", LUA_TFUNCTION, "a function")) {
    lua_setfield(L, uv, "on_request");
    s.traced = 1;
  }
  if (!s.user_agent) s.user_agent = default_user_agent(L, uv);
  seed_rng(&s);

  c = lua_newuserdatauv(L, sizeof *c, 1);
  *c = s;
  luaL_setmetatable(L, VPP_CLIENT_MT);
  lua_pushvalue(L, uv);
  lua_setiuservalue(L, -2, 1);
  c->multi = curl_multi_init();
  if (!c->multi) return luaL_error(L, "vpp: cannot create a libcurl multi handle");
  curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  return 1;
}

static void client_release(vpp_client *c) {
  int i;
  vpp_auth_release(&c->auth);
  for (i = 0; i < c->pool_size; i++) vpp_transfer_free(c->pool[i]);
  free(c->pool);
  c->pool = NULL;
  c->pool_size = 0;
  if (c->multi) {
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
  }
}

static int client_close(lua_State *L) {
  vpp_client *c = luaL_checkudata(L, 1, VPP_CLIENT_MT);
  if (c->busy) return luaL_error(L, "vpp: the client cannot be closed from its own callbacks");
  client_release(c);
  return 0;
}

static int client_config(lua_State *L) {
  vpp_auth_push_config(L, vpp_client_check(L, 1));
  return 1;
}

static int client_tostring(lua_State *L) {
  vpp_client *c = luaL_checkudata(L, 1, VPP_CLIENT_MT);
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
 * '%' in path is the string at the next given stack index, percent-encoded
 * as one segment. */
static const char *push_url(lua_State *L, vpp_client *c, const char *version, const char *path, int a, int b) {
  luaL_Buffer buf;
  int args[2];
  int n = 0;
  args[0] = a;
  args[1] = b;
  luaL_buffinit(L, &buf);
  luaL_addstring(&buf, c->base_url);
  luaL_addchar(&buf, '/');
  luaL_addstring(&buf, version);
  for (; *path; path++) {
    if (*path == '%') {
      size_t len;
      const char *s = lua_tolstring(L, args[n++], &len);
      vpp_url_push_encoded(&buf, s, len);
    } else {
      luaL_addchar(&buf, *path);
    }
  }
  luaL_pushresult(&buf);
  return lua_tostring(L, -1);
}

/* The URL of an action on the token id at id_idx (and, for syncApps, the
 * organization id at org_idx). */
const char *vpp_client_push_action_url(lua_State *L, vpp_client *c, vpp_action action, int org_idx, int id_idx) {
  switch (action) {
  case VPP_SYNC_APPS:
    /* The legacy action exists only under /beta, whatever api_version says. */
    return push_url(L, c, "beta", "/organization/%/appleVolumePurchaseProgramTokens/%/syncApps", org_idx, id_idx);
  case VPP_GET_TOKEN:
    return push_url(L, c, c->api_version, "/deviceAppManagement/vppTokens/%", id_idx, 0);
  default:
    return push_url(L, c, c->api_version, "/deviceAppManagement/vppTokens/%/syncLicenses", id_idx, 0);
  }
}

/* Performs one call on a token (its URL on top of the stack) and returns the
 * token or nil, err. */
static int token_call(lua_State *L, vpp_client *c, int post, int id_idx) {
  size_t idlen;
  const char *id = lua_tolstring(L, id_idx, &idlen);
  vpp_transfer *t = vpp_engine_one(L, c, post, 1);
  if (!t) return 2;
  if (!vpp_reply_ok(&t->reply)) return vpp_reply_error(L, &t->reply);
  return vpp_decode_entity(L, &t->reply, id, idlen);
}

static int do_sync_licenses(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "token_id", &n);
  vpp_client_push_action_url(L, c, VPP_SYNC_LICENSES, 0, 2);
  return token_call(L, c, 1, 2);
}

static int do_sync_apps(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "organization_id", &n);
  check_id(L, 3, "token_id", &n);
  vpp_client_push_action_url(L, c, VPP_SYNC_APPS, 2, 3);
  return token_call(L, c, 1, 3);
}

static int do_get_token(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  size_t n;
  check_id(L, 2, "token_id", &n);
  vpp_client_push_action_url(L, c, VPP_GET_TOKEN, 0, 2);
  return token_call(L, c, 0, 2);
}

static void push_encoded(lua_State *L, int idx) {
  luaL_Buffer b;
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  luaL_buffinit(L, &b);
  vpp_url_push_encoded(&b, s, len);
  luaL_pushresult(&b);
}

/* Pushes "?$select=a,b&$top=n&$filter=..." for the query table at q.  The
 * pieces are pushed one by one and concatenated at the end. */
static void push_query(lua_State *L, int q) {
  int sel = lua_gettop(L) + 1;
  const char *sep = "?";
  lua_pushnil(L);
  while (lua_next(L, q)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (strcmp(k, "select") != 0 && strcmp(k, "top") != 0 && strcmp(k, "filter") != 0)
      luaL_error(L, "vpp: unknown query key '%s' (expected select, top or filter)", luaL_tolstring(L, -2, NULL));
    lua_pop(L, 1);
  }
  lua_getfield(L, q, "select");
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
  lua_getfield(L, q, "top");
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
  lua_getfield(L, q, "filter");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_error(L, "vpp: query.filter must be a non-empty string");
    lua_pushfstring(L, "%s$filter=", sep);
    push_encoded(L, -2);
    lua_remove(L, -3);
  } else {
    lua_pop(L, 1);
  }
  lua_concat(L, lua_gettop(L) - sel);
  lua_remove(L, sel);
}

/* client:list_tokens([query]): every page, following @odata.nextLink within
 * base_url's origin, refusing a link seen before (a loop). */
static int do_list_tokens(lua_State *L) {
  vpp_client *c = vpp_client_check(L, 1);
  int out, seen;
  const char *url = NULL;
  if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
    luaL_argerror(L, 2, lua_pushfstring(L, "query must be a table, got %s", luaL_typename(L, 2)));
  lua_settop(L, 2);
  push_url(L, c, c->api_version, "/deviceAppManagement/vppTokens", 0, 0);
  if (!lua_isnil(L, 2)) {
    push_query(L, 2);
    lua_concat(L, 2);
  }
  lua_newtable(L);
  out = lua_gettop(L);
  lua_newtable(L);
  seen = lua_gettop(L);
  lua_pushvalue(L, out - 1); /* the first URL */
  for (;;) {
    int n;
    vpp_transfer *t;
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    if (!(t = vpp_engine_one(L, c, 0, 1))) return 2;
    if (!vpp_reply_ok(&t->reply)) return vpp_reply_error(L, &t->reply);
    lua_pop(L, 1); /* the URL just fetched */
    if ((n = vpp_decode_page(L, &t->reply, out, &url))) return n;
    if (!url) break;
    if (!vpp_url_same_origin(&c->origin, url))
      return vpp_error_push(L, "decode", t->reply.status, "foreign_next_link",
                            "@odata.nextLink points to another scheme, host or port than base_url", &t->reply);
    lua_pushvalue(L, -1);
    lua_rawget(L, seen);
    if (lua_toboolean(L, -1))
      return vpp_error_push(L, "decode", t->reply.status, "next_link_loop",
                            "@odata.nextLink points to a page already fetched", &t->reply);
    lua_pop(L, 1);
  }
  lua_settop(L, out);
  return 1;
}

/* ---- module-level shortcuts: a client for one call, closed after it ---- */

static int one_shot(lua_State *L, int nids, lua_CFunction call) {
  int opts = nids + 1, n, i;
  size_t len;
  for (i = 1; i <= nids; i++) check_id(L, i, (nids == 2 && i == 1) ? "organization_id" : "token_id", &len);
  check_opts(L, opts);
  lua_settop(L, opts);
  lua_pushcfunction(L, client_new);
  lua_pushvalue(L, opts);
  lua_call(L, 1, 1);
  lua_insert(L, 1); /* client, ids..., opts: the method's own layout */
  n = call(L);
  client_release(lua_touserdata(L, 1)); /* not busy: the call has returned */
  return n;
}

static int mod_sync_licenses(lua_State *L) { return one_shot(L, 1, do_sync_licenses); }
static int mod_sync_apps(lua_State *L) { return one_shot(L, 2, do_sync_apps); }

int vpp_client_open_lib(lua_State *L) {
  static const luaL_Reg methods[] = {{"sync_licenses", do_sync_licenses},
                                     {"sync_apps", do_sync_apps},
                                     {"get_token", do_get_token},
                                     {"list_tokens", do_list_tokens},
                                     {"config", client_config},
                                     {"close", client_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__gc", client_close}, {"__close", client_close}, {"__tostring", client_tostring}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
      {"new", client_new}, {"sync_licenses", mod_sync_licenses}, {"sync_apps", mod_sync_apps}, {NULL, NULL}};
  luaL_newmetatable(L, VPP_CLIENT_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  vpp_batch_open(L, lua_gettop(L));
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_remove(L, -2);
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "client_methods"); /* lets the Lua layer add methods */
  return 1;
}
