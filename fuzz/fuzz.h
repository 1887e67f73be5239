/* Shared by the libFuzzer targets (make fuzz): one Lua state per process
 * with what lua-vpp's decoders need (cjson, the error metatable), and a
 * way to run a target's body under lua_pcall, as the module always runs. */
#ifndef VPP_FUZZ_H
#define VPP_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "../src/vpp.h"

/* A broken invariant: abort, which libFuzzer reports with the input. */
#define FUZZ_CHECK(cond)  \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)

static inline lua_State *fuzz_state(void) {
  static lua_State *L;
  if (!L) {
    L = luaL_newstate();
    FUZZ_CHECK(L != NULL);
    luaL_openlibs(L);
    vpp_error_setup(L);
    vpp_decode_setup(L);
    lua_settop(L, 0);
  }
  return L;
}

/* Calls fn(L) with the input as a light userdata and its size; a Lua error
 * (out of memory) is not a finding, a crash or a failed check is. */
static inline void fuzz_call(lua_CFunction fn, const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  lua_settop(L, 0);
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  (void)lua_pcall(L, 2, 0, 0);
  lua_settop(L, 0);
}

#endif
