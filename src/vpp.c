/* Entry point of the C module `vpp.core`; the public module is lua/vpp.lua. */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "vpp.h"

static CURLcode curl_init_rc = CURLE_FAILED_INIT;

/* curl_global_init is not thread-safe on every libcurl: do it once per
 * process, whichever lua_State loads the module first, and never clean up,
 * since other states (or the host) may still use libcurl. */
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Timing primitives for the Lua helpers in lua/vpp/: Lua has none. */
static int core_sleep(lua_State *L) {
  vpp_sleep(luaL_checknumber(L, 1));
  return 0;
}

static int core_clock(lua_State *L) {
  lua_pushnumber(L, vpp_now());
  return 1;
}

static int core_time(lua_State *L) {
  lua_pushnumber(L, vpp_epoch());
  return 1;
}

/* For the command only (the library installs no handler of its own): on
 * SIGINT or SIGTERM, the function given is called with the signal's number
 * from a Lua hook on the calling thread, set from the handler as lua.c
 * sets its own for SIGINT. */
static const char signal_key = 's';
static lua_State *signal_L;
static volatile sig_atomic_t caught;

static void signal_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &signal_key);
  lua_pushinteger(L, caught);
  lua_call(L, 1, 0);
}

static void on_signal(int sig) {
  caught = sig;
  if (signal_L) lua_sethook(signal_L, signal_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* _release_signals(): the handlers from before _catch_signals, and no hook
 * left behind. */
static int core_release_signals(lua_State *L) {
  vpp_release_signals();
  if (signal_L == L && lua_gethook(L) == signal_hook) lua_sethook(L, NULL, 0, 0);
  signal_L = NULL;
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &signal_key);
  return 0;
}

static int core_catch_signals(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &signal_key);
  signal_L = L;
  lua_pushboolean(L, vpp_catch_signals(on_signal));
  return 1;
}

/* For the CLI: colour and progress only on a terminal. */
static int core_isatty(lua_State *L) {
  lua_pushboolean(L, vpp_isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* _wait_readable(fds, timeout): waits until one of the descriptors (a
 * list) is readable or timeout seconds pass (nil: no limit); the list of
 * the ready ones' positions.  For the fleet's scheduler. */
static int core_wait_readable(lua_State *L) {
  int n, i, k = 0, *buf;
  double timeout = luaL_optnumber(L, 2, -1);
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)lua_rawlen(L, 1);
  if (n > 100000) return luaL_argerror(L, 1, "too many descriptors");
  buf = lua_newuserdatauv(L, 2 * (size_t)(n > 0 ? n : 1) * sizeof(int), 0); /* Lua's: nothing to leak */
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    buf[i] = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  if (vpp_wait_readable(buf, n, timeout, buf + n) < 0) return luaL_error(L, "vpp: poll failed");
  lua_createtable(L, 4, 0);
  for (i = 0; i < n; i++)
    if (buf[n + i]) {
      lua_pushinteger(L, i + 1);
      lua_rawseti(L, -2, ++k);
    }
  return 1;
}

/* _file_mode(path): its permission bits and owner's uid, and this
 * process's uid; nil when it cannot be looked at. */
static int core_file_mode(lua_State *L) {
  unsigned mode;
  long uid;
  if (!vpp_file_mode(luaL_checkstring(L, 1), &mode, &uid)) return 0;
  lua_pushinteger(L, (lua_Integer)mode);
  lua_pushinteger(L, (lua_Integer)uid);
  lua_pushinteger(L, (lua_Integer)vpp_uid());
  return 3;
}

/* _std_fds(): opens /dev/null on the standard streams that are closed;
 * which were, as a bit mask (1: stdin, 2: stdout, 4: stderr). */
static int core_std_fds(lua_State *L) {
  lua_pushinteger(L, vpp_std_fds());
  return 1;
}

/* _replace_file(path, content): path replaced atomically (written beside
 * it, fsynced, renamed over it); true, or nil, message, errno with path as
 * it was. */
static int core_replace_file(lua_State *L) {
  size_t len;
  const char *path = luaL_checkstring(L, 1), *data = luaL_checklstring(L, 2, &len);
  int e;
  if (vpp_replace_file(path, data, len) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  e = errno;
  lua_pushnil(L);
  lua_pushstring(L, strerror(e));
  lua_pushinteger(L, e);
  return 3;
}

int luaopen_vpp_core(lua_State *L) {
  static const luaL_Reg timing[] = {{"_sleep", core_sleep},
                                    {"_clock", core_clock},
                                    {"_time", core_time},
                                    {"_isatty", core_isatty},
                                    {"_wait_readable", core_wait_readable},
                                    {"_file_mode", core_file_mode},
                                    {"_std_fds", core_std_fds},
                                    {"_replace_file", core_replace_file},
                                    {"_catch_signals", core_catch_signals},
                                    {"_release_signals", core_release_signals},
                                    {NULL, NULL}};
  vpp_once(curl_init_once);
  if (curl_init_rc != CURLE_OK) return luaL_error(L, "vpp: curl_global_init failed");
  vpp_error_setup(L);
  vpp_decode_setup(L);
  vpp_engine_setup(L);
  vpp_client_open_lib(L);
  lua_getfield(L, -1, "client_methods");
  vpp_batch_open(L, lua_gettop(L));
  lua_pop(L, 1);
  luaL_setfuncs(L, timing, 0);
  vpp_error_open(L, lua_gettop(L));
  vpp_options_open(L, lua_gettop(L));
  vpp_run_open(L, lua_gettop(L));
  lua_getfield(L, LUA_REGISTRYINDEX, VPP_NULL_KEY);
  lua_setfield(L, -2, "null");
  vpp_auth_push_clouds(L);
  lua_setfield(L, -2, "clouds");
  lua_pushliteral(L, VPP_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_pushfstring(L, "libcurl/%s", curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "_curl_version");
  return 1;
}
