/* The Lua 5.4 C API that lua-vpp uses, on Lua 5.1, 5.2, 5.3 and LuaJIT 2.1.
 * The code is written against 5.4; older Luas get the few calls they lack
 * here, so no other file has a version test (decode.c's integer
 * normalisation aside: before 5.3 a Lua number has no integer subtype). */
#ifndef VPP_COMPAT_H
#define VPP_COMPAT_H

#include <math.h>

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 504
/* One user value, and lua-vpp's is always a table: 5.2 and 5.3 have exactly
 * one, 5.1 and LuaJIT keep a table as the userdata's environment. */
#define lua_newuserdatauv(L, size, nuv) ((void)(nuv), lua_newuserdata((L), (size)))
#if LUA_VERSION_NUM >= 502
#define lua_setiuservalue(L, idx, n) ((void)(n), lua_setuservalue((L), (idx)))
#define lua_getiuservalue(L, idx, n) ((void)(n), lua_getuservalue((L), (idx)), lua_type((L), -1))
#else
#define lua_setiuservalue(L, idx, n) ((void)(n), lua_setfenv((L), (idx)))
#define lua_getiuservalue(L, idx, n) ((void)(n), lua_getfenv((L), (idx)), lua_type((L), -1))
#endif
#endif

#if LUA_VERSION_NUM < 503
/* As 5.3's: *isint only for a number with an integral value that fits
 * (5.2's own truncates 2.5 to 2 and calls it an integer). */
static inline lua_Integer vpp_compat_tointegerx(lua_State *L, int idx, int *isint) {
  lua_Number n = lua_tonumber(L, idx);
  int is = lua_isnumber(L, idx) && n == floor(n) && n >= -9223372036854775808.0 && n < 9223372036854775808.0;
  if (isint) *isint = is; /* 5.2's lua_tointeger passes NULL */
  return is ? (lua_Integer)n : 0;
}
#define lua_tointegerx vpp_compat_tointegerx
#endif

#if LUA_VERSION_NUM == 501 /* Lua 5.1 and LuaJIT (which has some of these) */
#ifndef LUA_OK
#define LUA_OK 0
#endif
#define lua_rawlen(L, idx)       lua_objlen((L), (idx))
#define luaL_setfuncs(L, l, nup) ((void)(nup), luaL_register((L), NULL, (l)))
#ifndef luaL_newlib
#define luaL_newlib(L, l) (lua_newtable(L), luaL_register((L), NULL, (l)))
#endif
/* Only LUAL_BUFFERSIZE bytes (BUFSIZ, 8 KiB here) at once: callers ask for
 * 768 at most. */
#define luaL_prepbuffsize(B, size) ((void)(size), luaL_prepbuffer(B))
#define luaL_setmetatable(L, name) (luaL_getmetatable((L), (name)), lua_setmetatable((L), -2))

static inline int vpp_compat_absindex(lua_State *L, int idx) {
  return idx > 0 || idx <= LUA_REGISTRYINDEX ? idx : lua_gettop(L) + idx + 1;
}

static inline void vpp_compat_copy(lua_State *L, int from, int to) {
  to = vpp_compat_absindex(L, to);
  lua_pushvalue(L, from);
  lua_replace(L, to);
}
#define lua_copy     vpp_compat_copy
#define lua_absindex vpp_compat_absindex

static inline void vpp_compat_rawgetp(lua_State *L, int idx, const void *p) {
  idx = vpp_compat_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, idx);
}
#define lua_rawgetp vpp_compat_rawgetp

static inline void vpp_compat_rawsetp(lua_State *L, int idx, const void *p) {
  idx = vpp_compat_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
#define lua_rawsetp vpp_compat_rawsetp

static inline const char *vpp_compat_tolstring(lua_State *L, int idx, size_t *len) {
  idx = vpp_compat_absindex(L, idx);
  if (luaL_callmeta(L, idx, "__tostring")) {
    if (!lua_isstring(L, -1)) luaL_error(L, "'__tostring' must return a string");
  } else {
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
    case LUA_TSTRING:
      lua_pushvalue(L, idx);
      break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
      break;
    case LUA_TNIL:
      lua_pushliteral(L, "nil");
      break;
    default:
      lua_pushfstring(L, "%s: %p", luaL_typename(L, idx), lua_topointer(L, idx));
      break;
    }
  }
  return lua_tolstring(L, -1, len);
}
#define luaL_tolstring vpp_compat_tolstring
#endif

#endif
