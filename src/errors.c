/* The one error constructor: every run-time failure becomes `nil, err`, with
 * err a table { kind, status, code, message, request_id, client_request_id,
 * attempts, retry_after } whose __tostring gives one readable line.  Lua
 * code (vpp.sync, the command) builds its errors through the same function
 * (core._error), and vpp.codes lists the codes (codes.h, curl_codes.h). */
#include <string.h>

#include "vpp.h"
#include "curl_codes.h"

/* A Graph message can be megabytes; a code is a word. */
#define MAX_MESSAGE_BYTES 4096
#define MAX_CODE_BYTES    256
static const char cut_marker[] = " [...cut]";

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

/* err[field] = value, cut to max bytes with a visible marker, never in the
 * middle of a UTF-8 sequence. */
static void set_string(lua_State *L, const char *field, const char *value, size_t max) {
  size_t n;
  if (!value || !*value) return;
  n = strlen(value);
  if (n <= max) {
    lua_pushlstring(L, value, n);
  } else {
    size_t keep = max - (sizeof cut_marker - 1);
    while (keep > 0 && ((unsigned char)value[keep] & 0xC0) == 0x80) keep--;
    lua_pushlstring(L, value, keep);
    lua_pushstring(L, cut_marker);
    lua_concat(L, 2);
  }
  lua_setfield(L, -2, field);
}

/* Pushes nil and the error table; returns 2 so callers can `return` it.
 * The strings may live on the stack below: they are copied first. */
int vpp_error_push(lua_State *L, const char *kind, long status, const char *code, const char *message,
                   const vpp_reply *reply) {
  lua_pushnil(L);
  lua_createtable(L, 0, 8);
  set_string(L, "kind", kind, MAX_CODE_BYTES);
  if (status > 0) {
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "status");
  }
  set_string(L, "code", code, MAX_CODE_BYTES);
  set_string(L, "message", message, MAX_MESSAGE_BYTES);
  if (reply) {
    double wait;
    set_string(L, "request_id", reply->request_id, sizeof reply->request_id);
    set_string(L, "client_request_id", reply->client_request_id, sizeof reply->client_request_id);
    if (reply->attempts > 0) {
      lua_pushinteger(L, reply->attempts);
      lua_setfield(L, -2, "attempts");
    }
    if (reply->proxy[0]) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "proxy");
      if (reply->proxy_status) {
        lua_pushinteger(L, (lua_Integer)reply->proxy_status);
        lua_setfield(L, -2, "proxy_status");
      }
    }
    /* What the server asked for, so that a caller can come back then. */
    if (reply->retry_after[0] && (reply->status == 429 || reply->status == 503) &&
        vpp_retry_after(reply->retry_after, vpp_epoch(), &wait)) {
      lua_pushnumber(L, wait);
      lua_setfield(L, -2, "retry_after");
    }
  }
  luaL_getmetatable(L, VPP_ERROR_MT);
  lua_setmetatable(L, -2);
  return 2;
}

int vpp_error_transport(lua_State *L, const vpp_reply *reply) {
  if (reply->too_large || reply->curl_code == CURLE_FILESIZE_EXCEEDED)
    return vpp_error_push(L, "transport", 0, VPP_CODE(response_too_large),
                          "the response body is larger than max_response_bytes", reply);
  if (reply->curl_code == CURLE_TOO_MANY_REDIRECTS)
    return vpp_error_push(L, "transport", 0, VPP_CODE(too_many_redirects), "too many redirects", reply);
  if (reply->out_of_memory)
    return vpp_error_push(L, "transport", 0, VPP_CODE(out_of_memory), "not enough memory for the response body", reply);
  if (reply->header_too_large)
    return vpp_error_push(L, "transport", 0, VPP_CODE(response_too_large),
                          "a response header line is larger than libcurl accepts (100 KiB)", reply);
  if (reply->proxy[0]) {
    /* At the proxy: the message says which (never its credentials). */
    lua_pushfstring(L, "%s (at the proxy %s)",
                    reply->curl_message[0] ? reply->curl_message : curl_easy_strerror(reply->curl_code), reply->proxy);
    vpp_error_push(L, "transport", 0, vpp_curl_code_name(reply->curl_code), lua_tostring(L, -1), reply);
    lua_remove(L, -3); /* the message */
    return 2;
  }
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

/* The line on top of the stack, with each run of control characters (the
 * identity platform's CR LF among them) made one space. */
static void one_line(lua_State *L) {
  size_t n, i;
  const char *s = lua_tolstring(L, -1, &n);
  luaL_Buffer b;
  int blank = 0;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) break;
  if (i == n) return;
  luaL_buffinit(L, &b);
  for (i = 0; i < n; i++) {
    int control = (unsigned char)s[i] < 0x20 || s[i] == 0x7f;
    if (!control)
      luaL_addchar(&b, s[i]);
    else if (!blank)
      luaL_addchar(&b, ' ');
    blank = control;
  }
  luaL_pushresult(&b);
  lua_remove(L, -2);
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
  add_field(&b, L, "; hint: ", "hint");
  luaL_pushresult(&b);
  one_line(L);
  return 1;
}

/* core._error(kind, code, message [, fields]): the constructor for Lua
 * code.  code must be one of lua-vpp's own; fields adds more (an id). */
static int lua_new_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1), *code = luaL_checkstring(L, 2);
  const char *message = luaL_checkstring(L, 3);
  int i;
  for (i = 0; i < VPP_CODE_COUNT; i++)
    if (strcmp(code, vpp_code_names[i]) == 0) break;
  if (i == VPP_CODE_COUNT) return luaL_argerror(L, 2, lua_pushfstring(L, "'%s' is not a lua-vpp error code", code));
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  vpp_error_push(L, kind, 0, code, message, NULL);
  if (lua_istable(L, 4)) {
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  return 1;
}

/* module.codes = { code = meaning }: lua-vpp's own, and libcurl's. */
void vpp_error_open(lua_State *L, int module) {
  int i;
  lua_newtable(L);
  for (i = 0; i < VPP_CODE_COUNT; i++) {
    lua_pushstring(L, vpp_code_meanings[i]);
    lua_setfield(L, -2, vpp_code_names[i]);
  }
#define VPP_MEANING(n)                              \
  lua_pushstring(L, curl_easy_strerror(CURLE_##n)); \
  lua_setfield(L, -2, #n);
  VPP_CURL_CODES(VPP_MEANING)
#undef VPP_MEANING
  lua_setfield(L, module, "codes");
  lua_pushcfunction(L, lua_new_error);
  lua_setfield(L, module, "_error");
  luaL_getmetatable(L, VPP_ERROR_MT);
  lua_setfield(L, module, "error_mt");
}

void vpp_error_setup(lua_State *L) {
  luaL_newmetatable(L, VPP_ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
