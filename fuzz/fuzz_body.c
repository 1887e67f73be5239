/* A 2xx response body -> Lua table (decode.c): as a token and as a list
 * page.  Checks that every integral number that fits a lua_Integer came
 * back as an integer (5.3+), whatever the nesting. */
#include <math.h>

#include "fuzz.h"

static void check_numbers(lua_State *L, int t, int depth) {
  FUZZ_CHECK(depth < 2000);
  lua_pushnil(L);
  while (lua_next(L, t)) {
#if LUA_VERSION_NUM >= 503
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number d = lua_tonumber(L, -1);
      lua_Integer i;
      FUZZ_CHECK(!(d == floor(d) && lua_numbertointeger(d, &i)));
    }
#endif
    if (lua_type(L, -1) == LUA_TTABLE) {
      luaL_checkstack(L, 3, "deep");
      check_numbers(L, lua_gettop(L), depth + 1);
    }
    lua_pop(L, 1);
  }
}

static int run(lua_State *L) {
  vpp_reply r;
  const char *next = NULL;
  int n, out;
  memset(&r, 0, sizeof r);
  r.status = 200;
  r.body.data = lua_touserdata(L, 1);
  r.body.len = r.body.cap = (size_t)lua_tointeger(L, 2);
  lua_settop(L, 0);
  n = vpp_decode_entity(L, &r, "id", 2);
  if (n == 1) {
    FUZZ_CHECK(lua_istable(L, -1));
    check_numbers(L, lua_gettop(L), 0);
  } else {
    FUZZ_CHECK(n == 2 && lua_isnil(L, -2) && lua_istable(L, -1));
  }
  lua_settop(L, 0);
  lua_newtable(L);
  out = lua_gettop(L);
  n = vpp_decode_page(L, &r, out, &next);
  FUZZ_CHECK(n == 0 || n == 2);
  if (n == 0) {
    FUZZ_CHECK(lua_gettop(L) == out + 1 && (next == NULL) == lua_isnil(L, -1));
    check_numbers(L, out, 0);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_call(run, data, size);
  return 0;
}
