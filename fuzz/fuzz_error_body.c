/* A non-2xx answer -> err (decode.c, errors.c): the first byte picks the
 * status, the rest is the body.  The error is always nil, err with kind
 * "http", that status and a message, and tostring(err) works. */
#include "fuzz.h"

static int run(lua_State *L) {
  const char *data = lua_touserdata(L, 1);
  size_t size = (size_t)lua_tointeger(L, 2);
  vpp_reply r;
  if (size == 0) return 0;
  memset(&r, 0, sizeof r);
  r.status = 400 + (unsigned char)data[0] % 200;
  r.body.data = (char *)data + 1;
  r.body.len = r.body.cap = size - 1;
  lua_settop(L, 0);
  FUZZ_CHECK(vpp_reply_error(L, &r) == 2);
  FUZZ_CHECK(lua_gettop(L) == 2 && lua_isnil(L, 1) && lua_istable(L, 2));
  lua_getfield(L, 2, "kind");
  FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "http") == 0);
  lua_getfield(L, 2, "status");
  FUZZ_CHECK(lua_tointeger(L, -1) == r.status);
  lua_getfield(L, 2, "message");
  FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING);
  FUZZ_CHECK(luaL_tolstring(L, 2, NULL) != NULL);
  FUZZ_CHECK(strlen(r.request_id) < sizeof r.request_id);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_call(run, data, size);
  return 0;
}
