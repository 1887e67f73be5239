/* The client's settings: one table names every option vpp.new takes, with
 * its type, default and bounds; one function reads the plain ones into a
 * vpp_settings, and one function refuses unknown keys, for every option
 * table of the module, C's and Lua's (core._check_keys). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "vpp.h"

typedef enum { OPT_SECONDS, OPT_INTEGER, OPT_STRING, OPT_FUNCTION, OPT_OWNED } opt_kind;

typedef struct option {
  const char *name;
  opt_kind kind;
  size_t offset; /* in vpp_settings */
  double dflt, min, max;
} option;

#define FIELD(f) offsetof(vpp_settings, f)
/* OPT_OWNED options are read by their owner: the client (base_url,
 * api_version, rate_limit) or auth (credentials, clouds). */
static const option options[] = {
    {"timeout", OPT_SECONDS, FIELD(timeout), 60, 0, 1e9},
    {"connect_timeout", OPT_SECONDS, FIELD(connect_timeout), 10, 0, 1e9},
    {"stall_timeout", OPT_SECONDS, FIELD(stall_timeout), 30, 0, 1e9},
    {"max_retry_delay", OPT_SECONDS, FIELD(max_retry_delay), 60, 0, 1e9},
    {"max_response_bytes", OPT_INTEGER, FIELD(max_response_bytes), 16 * 1024 * 1024, 1, 0x7fffffff},
    {"max_retries", OPT_INTEGER, FIELD(max_retries), 3, 0, 100},
    {"max_pages", OPT_INTEGER, FIELD(max_pages), 1000, 1, 1000000},
    {"ca_file", OPT_STRING, FIELD(ca_file), 0, 0, 0},
    {"user_agent", OPT_STRING, FIELD(user_agent), 0, 0, 0},
    {"proxy", OPT_STRING, FIELD(proxy), 0, 0, 0},
    {"proxy_auth", OPT_STRING, FIELD(proxy_auth_name), 0, 0, 0},
    {"on_request", OPT_FUNCTION, FIELD(traced), 0, 0, 0},
    {"loop", OPT_FUNCTION, FIELD(looped), 0, 0, 0},
    {"base_url", OPT_OWNED, 0, 0, 0, 0},
    {"api_version", OPT_OWNED, 0, 0, 0, 0},
    {"rate_limit", OPT_OWNED, 0, 0, 0, 0},
    {"access_token", OPT_OWNED, 0, 0, 0, 0},
    {"tenant_id", OPT_OWNED, 0, 0, 0, 0},
    {"client_id", OPT_OWNED, 0, 0, 0, 0},
    {"client_secret", OPT_OWNED, 0, 0, 0, 0},
    {"client_certificate", OPT_OWNED, 0, 0, 0, 0},
    {"client_key", OPT_OWNED, 0, 0, 0, 0},
    {"client_key_password", OPT_OWNED, 0, 0, 0, 0},
    {"managed_identity", OPT_OWNED, 0, 0, 0, 0},
    {"client_assertion_file", OPT_OWNED, 0, 0, 0, 0},
    {"send_certificate_chain", OPT_OWNED, 0, 0, 0, 0},
    {"imds_url", OPT_OWNED, 0, 0, 0, 0},
    {"authority", OPT_OWNED, 0, 0, 0, 0},
    {"scope", OPT_OWNED, 0, 0, 0, 0},
    {"cloud", OPT_OWNED, 0, 0, 0, 0},
};
#define NOPTIONS (sizeof options / sizeof options[0])

/* ---- unknown keys ------------------------------------------------------ */

typedef int (*known_fn)(lua_State *L, const void *ctx, const char *key);

/* The one check: every key of the table at t must be a string that
 * known() accepts; else "vpp: unknown <what> '<key>'<tail>". */
static void check_keys(lua_State *L, int t, known_fn known, const void *ctx, const char *what, const char *tail) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !known(L, ctx, lua_tostring(L, -1)))
      luaL_error(L, "vpp: unknown %s '%s'%s", what, luaL_tolstring(L, -1, NULL), tail);
  }
}

static int in_list(lua_State *L, const void *ctx, const char *key) {
  const char *const *names = ctx;
  (void)L;
  for (; *names; names++)
    if (strcmp(key, *names) == 0) return 1;
  return 0;
}

static int in_options(lua_State *L, const void *ctx, const char *key) {
  size_t i;
  (void)L;
  (void)ctx;
  for (i = 0; i < NOPTIONS; i++)
    if (strcmp(key, options[i].name) == 0) return 1;
  return 0;
}

/* ctx: the stack index of a Lua set { name = true }. */
static int in_set(lua_State *L, const void *ctx, const char *key) {
  int yes;
  lua_getfield(L, *(const int *)ctx, key);
  yes = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return yes;
}

void vpp_check_keys(lua_State *L, int t, const char *const *names, const char *what, const char *tail) {
  check_keys(L, t, in_list, names, what, tail);
}

/* core._check_keys(t, allowed_set, what [, tail]) */
static int lua_check_keys(lua_State *L) {
  int set = 2;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  check_keys(L, 1, in_set, &set, luaL_checkstring(L, 3), luaL_optstring(L, 4, ""));
  return 0;
}

/* ---- readers ----------------------------------------------------------- */

/* opts[name] when present (pushed, returns 1): it must have type t. */
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

/* Set and not false. */
int vpp_option_present(lua_State *L, int opts, const char *name) {
  int yes;
  if (!opts) return 0;
  lua_getfield(L, opts, name);
  yes = !lua_isnil(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
  lua_pop(L, 1);
  return yes;
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

/* uv[name], a URL setting: an http(s) URL without user info, query or
 * fragment, plain http only to this machine (a test server), or also to a
 * link-local address with VPP_URL_METADATA (the metadata endpoint is
 * http://169.254.169.254, and may take a query).  With
 * VPP_URL_HTTPS_DEFAULT, a bare host means https://host.  Returns the
 * checked URL, anchored in uv. */
const char *vpp_url_option(lua_State *L, int uv, const char *name, int flags) {
  const char *s;
  vpp_origin o;
  lua_getfield(L, uv, name);
  s = lua_tostring(L, -1);
  lua_pop(L, 1);
  if ((flags & VPP_URL_HTTPS_DEFAULT) && !strstr(s, "://")) {
    lua_pushfstring(L, "https://%s", s);
    s = vpp_anchor(L, uv, name);
  }
  if ((!(flags & VPP_URL_METADATA) && strchr(s, '?')) || strchr(s, '#') || !vpp_url_origin(s, &o))
    luaL_error(L, "vpp: opts.%s must be an http(s) URL without query or fragment", name);
  if (vpp_url_has_userinfo(s)) luaL_error(L, "vpp: opts.%s must not contain a user name or password", name);
  if (strcmp(o.scheme, "http") == 0 && !vpp_url_loopback(&o) &&
      !((flags & VPP_URL_METADATA) && strncmp(o.host, "169.254.", 8) == 0))
    luaL_error(L, "vpp: opts.%s must use https (plain http only to localhost, 127.0.0.0/8 or ::1)", name);
  return s;
}

static double read_seconds(lua_State *L, int opts, const option *o) {
  double v;
  if (!get_option(L, opts, o->name, LUA_TNUMBER, "a positive number")) return o->dflt;
  v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v > o->min) || v > o->max) luaL_error(L, "vpp: opts.%s must be a positive number of seconds", o->name);
  return v;
}

static lua_Integer read_integer(lua_State *L, int opts, const option *o) {
  lua_Integer v;
  int isint;
  if (!get_option(L, opts, o->name, LUA_TNUMBER, "an integer")) return (lua_Integer)o->dflt;
  v = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  if (!isint || v < (lua_Integer)o->min || v > (lua_Integer)o->max)
    luaL_error(L, "vpp: opts.%s must be an integer from %d to %d", o->name, (int)o->min, (int)o->max);
  return v;
}

/* The proxy settings: a URL libcurl takes (its user name and password stay
 * in it, never in a message: proxy_shown has the scheme, host and port),
 * and proxy_auth's CURLAUTH_ mask. */
static void read_proxy(lua_State *L, vpp_settings *s) {
  static const char *const names[] = {"basic", "ntlm", "negotiate", "any", NULL};
  static const long masks[] = {CURLAUTH_BASIC, CURLAUTH_NTLM, CURLAUTH_NEGOTIATE, CURLAUTH_ANY};
  int i;
  s->proxy_shown[0] = '\0';
  if (s->proxy) {
    vpp_origin o;
    if (!vpp_url_proxy_origin(s->proxy, &o) || strchr(s->proxy, '?') || strchr(s->proxy, '#'))
      luaL_error(L,
                 "vpp: opts.proxy must be a proxy URL: http, https, socks4, socks4a, socks5 or socks5h://host[:port]");
    snprintf(s->proxy_shown, sizeof s->proxy_shown, "%s://%s:%s", o.scheme, o.host, o.port);
  }
  s->proxy_auth = 0;
  if (!s->proxy_auth_name) return;
  for (i = 0; names[i]; i++)
    if (strcmp(s->proxy_auth_name, names[i]) == 0) s->proxy_auth = masks[i];
  if (!s->proxy_auth) luaL_error(L, "vpp: opts.proxy_auth must be basic, ntlm, negotiate or any");
}

/* Refuses unknown keys, then reads every plain option (defaults for the
 * absent ones); functions are kept in uv under their name. */
void vpp_options_read(lua_State *L, int opts, int uv, vpp_settings *s) {
  size_t i;
  if (opts) check_keys(L, opts, in_options, NULL, "option", "");
  for (i = 0; i < NOPTIONS; i++) {
    const option *o = &options[i];
    char *field = (char *)s + o->offset;
    switch (o->kind) {
    case OPT_SECONDS:
      *(double *)(void *)field = read_seconds(L, opts, o);
      break;
    case OPT_INTEGER:
      *(lua_Integer *)(void *)field = read_integer(L, opts, o);
      break;
    case OPT_STRING:
      *(const char **)(void *)field = vpp_string_option(L, opts, uv, o->name, 1);
      break;
    case OPT_FUNCTION:
      *(int *)(void *)field = 0;
      if (get_option(L, opts, o->name, LUA_TFUNCTION, "a function")) {
        lua_setfield(L, uv, o->name);
        *(int *)(void *)field = 1;
      }
      break;
    default:
      break;
    }
  }
  read_proxy(L, s);
}

/* opts.deadline of the table at t (seconds from now): the monotonic time
 * it passes, or HUGE_VAL when absent. */
double vpp_deadline_option(lua_State *L, int t, const char *name) {
  double v;
  lua_getfield(L, t, "deadline");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return HUGE_VAL;
  }
  v = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(v > 0) || v > 1e9)
    luaL_error(L, "vpp: %s must be a positive number of seconds", name);
  lua_pop(L, 1);
  return vpp_now() + v;
}

void vpp_options_open(lua_State *L, int module) {
  lua_pushcfunction(L, lua_check_keys);
  lua_setfield(L, module, "_check_keys");
}
