/* Entry point of the C module `vpp.core`; the public module is lua/vpp.lua. */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "vpp.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

/* curl_global_init is not thread-safe on every libcurl: do it once per
 * process, whichever lua_State loads the module first, and never clean up,
 * since other states (or the host) may still use libcurl. */
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Timing primitives for the Lua helpers in lua/vpp/: Lua has none. */
static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (s <= 0) return 0;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

static int core_clock(lua_State *L) {
  lua_pushnumber(L, vpp_now());
  return 1;
}

static int core_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

/* For the CLI: colour and progress only on a terminal. */
static int core_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
  return 1;
}

int luaopen_vpp_core(lua_State *L) {
  static const luaL_Reg timing[] = {
      {"_sleep", core_sleep}, {"_clock", core_clock}, {"_time", core_time}, {"_isatty", core_isatty}, {NULL, NULL}};
  pthread_once(&curl_once, curl_init_once);
  if (curl_init_rc != CURLE_OK) return luaL_error(L, "vpp: curl_global_init failed");
  vpp_error_setup(L);
  vpp_decode_setup(L);
  vpp_client_open_lib(L);
  luaL_setfuncs(L, timing, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, VPP_NULL_KEY);
  lua_setfield(L, -2, "null");
  luaL_getmetatable(L, VPP_ERROR_MT);
  lua_setfield(L, -2, "error_mt");
  vpp_auth_push_clouds(L);
  lua_setfield(L, -2, "clouds");
  lua_pushliteral(L, VPP_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_pushfstring(L, "libcurl/%s", curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "_curl_version");
  return 1;
}
