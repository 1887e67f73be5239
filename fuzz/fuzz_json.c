/* json.c against lua-cjson, which decoded every body before it: whatever
 * json.c accepts, cjson accepts too and reads as the same value (numbers
 * equal, strings byte for byte, the same keys, cjson.null for null).
 * cjson is more lenient (leading zeros), so a text only it accepts is no
 * finding.  Every decode runs twice: the second through a warm member-name
 * cache. */
#include "fuzz.h"

static int same(lua_State *L, int a, int b, int depth) {
  FUZZ_CHECK(depth < 1100);
  if (lua_type(L, a) != lua_type(L, b)) return 0;
  if (lua_type(L, a) != LUA_TTABLE)
    return lua_rawequal(L, a, b) || (lua_isnumber(L, a) && lua_tonumber(L, a) == lua_tonumber(L, b));
  luaL_checkstack(L, 6, "deep");
  lua_pushnil(L);
  while (lua_next(L, a)) {
    int ok;
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    ok = same(L, lua_gettop(L) - 1, lua_gettop(L), depth + 1);
    lua_pop(L, 2);
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
  }
  lua_pushnil(L);
  while (lua_next(L, b)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawget(L, a);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 2);
      return 0;
    }
    lua_pop(L, 1);
  }
  return 1;
}

static int run(lua_State *L) {
  const char *data = lua_touserdata(L, 1);
  size_t size = (size_t)lua_tointeger(L, 2);
  int round;
  for (round = 0; round < 2; round++) {
    int ours;
    lua_settop(L, 2);
    ours = vpp_json_decode(L, data, size, 0);
    FUZZ_CHECK(lua_gettop(L) == 3);
    if (!ours) {
      FUZZ_CHECK(lua_type(L, 3) == LUA_TSTRING);
      continue;
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    lua_pushlstring(L, data, size);
    FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);
    FUZZ_CHECK(same(L, 3, 4, 0));
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_call(run, data, size);
  return 0;
}
