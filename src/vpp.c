/* Entry point of the C module `vpp.core`; the public module is lua/vpp.lua. */
#include <pthread.h>

#include "vpp.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

/* curl_global_init is not thread-safe on every libcurl: do it once per
 * process, whichever lua_State loads the module first, and never clean up,
 * since other states (or the host) may still use libcurl. */
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int luaopen_vpp_core(lua_State *L) {
  pthread_once(&curl_once, curl_init_once);
  if (curl_init_rc != CURLE_OK) return luaL_error(L, "vpp: curl_global_init failed");
  vpp_error_setup(L);
  vpp_decode_setup(L);
  vpp_client_open_lib(L);
  lua_getfield(L, LUA_REGISTRYINDEX, VPP_NULL_KEY);
  lua_setfield(L, -2, "null");
  luaL_getmetatable(L, VPP_ERROR_MT);
  lua_setfield(L, -2, "error_mt");
  lua_pushliteral(L, VPP_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
