/* The one error constructor: every run-time failure becomes `nil, err`, with
 * err a table { kind, status, code, message, request_id, client_request_id }
 * whose __tostring gives one readable line. */
#include <string.h>

#include "vpp.h"
#include "curl_codes.h"

const char *vpp_curl_code_name(CURLcode rc) {
  switch (rc) {
#define VPP_NAME(n) \
  case CURLE_##n:   \
    return #n;
    VPP_CURL_CODES(VPP_NAME)
#undef VPP_NAME
  default:
    return "UNKNOWN";
  }
}

static void set_string(lua_State *L, const char *field, const char *value) {
  if (value && *value) {
    lua_pushstring(L, value);
    lua_setfield(L, -2, field);
  }
}

/* Pushes nil and the error table; returns 2 so callers can `return` it. */
int vpp_error_push(lua_State *L, const char *kind, long status, const char *code, const char *message,
                   const vpp_reply *reply) {
  lua_pushnil(L);
  lua_createtable(L, 0, 6);
  set_string(L, "kind", kind);
  if (status > 0) {
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "status");
  }
  set_string(L, "code", code);
  set_string(L, "message", message);
  if (reply) {
    set_string(L, "request_id", reply->request_id);
    set_string(L, "client_request_id", reply->client_request_id);
    if (reply->attempts > 0) {
      lua_pushinteger(L, reply->attempts);
      lua_setfield(L, -2, "attempts");
    }
  }
  luaL_getmetatable(L, VPP_ERROR_MT);
  lua_setmetatable(L, -2);
  return 2;
}

int vpp_error_transport(lua_State *L, const vpp_reply *reply) {
  if (reply->too_large || reply->curl_code == CURLE_FILESIZE_EXCEEDED)
    return vpp_error_push(L, "transport", 0, "response_too_large",
                          "the response body is larger than max_response_bytes", reply);
  if (reply->curl_code == CURLE_TOO_MANY_REDIRECTS)
    return vpp_error_push(L, "transport", 0, "TOO_MANY_REDIRECTS", "too many redirects", reply);
  if (reply->out_of_memory)
    return vpp_error_push(L, "transport", 0, "OUT_OF_MEMORY", "not enough memory for the response body", reply);
  return vpp_error_push(L, "transport", 0, vpp_curl_code_name(reply->curl_code),
                        reply->curl_message[0] ? reply->curl_message : curl_easy_strerror(reply->curl_code), reply);
}

/* Appends prefix and err[field] when it holds a string or a number.  The
 * value goes in through luaL_addvalue, the only balanced way to add a
 * stack value to a buffer. */
static void add_field(luaL_Buffer *b, lua_State *L, const char *prefix, const char *field) {
  int t;
  lua_getfield(L, 1, field);
  t = lua_type(L, -1);
  lua_pop(L, 1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER) return;
  luaL_addstring(b, prefix);
  lua_getfield(L, 1, field);
  lua_tostring(L, -1);
  luaL_addvalue(b);
}

/* "vpp: http 404 ResourceNotFound: message (request-id ..., client-request-id ...)" */
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "vpp:");
  add_field(&b, L, " ", "kind");
  add_field(&b, L, " ", "status");
  add_field(&b, L, " ", "code");
  add_field(&b, L, ": ", "message");
  lua_getfield(L, 1, "request_id");
  lua_getfield(L, 1, "client_request_id");
  if (!lua_isnil(L, -1) || !lua_isnil(L, -2)) {
    int has_request_id = !lua_isnil(L, -2);
    lua_pop(L, 2);
    luaL_addstring(&b, " (");
    add_field(&b, L, "request-id ", "request_id");
    add_field(&b, L, has_request_id ? ", client-request-id " : "client-request-id ", "client_request_id");
    luaL_addstring(&b, ")");
  } else {
    lua_pop(L, 2);
  }
  luaL_pushresult(&b);
  return 1;
}

void vpp_error_setup(lua_State *L) {
  luaL_newmetatable(L, VPP_ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
