/* Response bodies to Lua tables (json.c): {"value": {...}} is unwrapped,
 * list pages are checked and appended, and Graph error bodies become error
 * tables.  The body lives in the client's buffer, so a raise here (out of
 * memory) leaks nothing. */
#include <string.h>

#include "vpp.h"

/* cjson.null is vpp.null: scripts compare with either. */
void vpp_decode_setup(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "null");
  lua_setfield(L, LUA_REGISTRYINDEX, VPP_NULL_KEY);
  lua_getfield(L, -1, "encode");
  lua_setfield(L, LUA_REGISTRYINDEX, VPP_ENCODE_KEY);
  lua_pop(L, 1);
  vpp_json_setup(L);
}

/* Pushes the table argument at idx as JSON, by lua-cjson's encode (what
 * a request body sends); raises naming the argument when it cannot be. */
void vpp_json_push_encoded(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, LUA_REGISTRYINDEX, VPP_ENCODE_KEY);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
    const char *why = lua_tostring(L, -1);
    luaL_argerror(L, idx, lua_pushfstring(L, "fields cannot be sent as JSON (%s)", why ? why : "?"));
  }
}

static int is_object(lua_State *L, int idx) { return lua_type(L, idx) == LUA_TTABLE && lua_rawlen(L, idx) == 0; }

static int blank(const vpp_buf *b) {
  size_t i;
  for (i = 0; i < b->len; i++)
    if (!strchr(" \t\r\n", b->data[i])) return 0;
  return 1;
}

static int decode_error(lua_State *L, vpp_reply *r, const char *what) {
  return vpp_error_push(L, "decode", r->status, VPP_CODE(invalid_response), what, r);
}

/* Decodes a JSON object body; returns 1 with it pushed, or 2 with nil, err.
 * With unwrap, *unwrapped says whether it was Graph's {"value": {...}}
 * and is its inner object. */
static int decode_object(lua_State *L, vpp_reply *r, int unwrap, int *unwrapped) {
  int got = vpp_json_decode(L, r->body.data, r->body.len, unwrap);
  if (!got) {
    lua_pushfstring(L, "the response is not valid JSON (%s)", lua_tostring(L, -1));
    return decode_error(L, r, lua_tostring(L, -1));
  }
  if (unwrapped) *unwrapped = got == 2;
  if (!is_object(L, -1)) return decode_error(L, r, "the response is not a JSON object");
  return 1;
}

/* A 2xx answer to a call on one token: the token table, unwrapped from
 * {"value": {...}} when Graph wraps it; an empty body (204) gives {id = id}. */
int vpp_decode_entity(lua_State *L, vpp_reply *r, const char *id, size_t idlen) {
  int n, unwrapped = 0;
  if (blank(&r->body)) {
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, id, idlen);
    lua_setfield(L, -2, "id");
    return 1;
  }
  if ((n = decode_object(L, r, 1, &unwrapped)) != 1) return n;
  if (unwrapped) return 1;
  lua_getfield(L, -1, "value");
  if (is_object(L, -1)) {
    lua_remove(L, -2);
  } else {
    lua_pop(L, 1);
  }
  return 1;
}

/* A JSON array (keys 1..n and nothing else; [] decodes to an empty
 * table) whose items are all objects. */
static int is_list_of_objects(lua_State *L, int t) {
  lua_Integer n, keys = 0;
  if (lua_type(L, t) != LUA_TTABLE) return 0;
  n = (lua_Integer)lua_rawlen(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    keys++;
    if (!is_object(L, -1)) {
      lua_pop(L, 2);
      return 0;
    }
    lua_pop(L, 1);
  }
  return keys == n;
}

/* A 2xx list page: appends its "value" items to the table at `out` and
 * leaves the @odata.nextLink (or nil) pushed, returning 0; or returns 2
 * with nil, err pushed. */
int vpp_decode_page(lua_State *L, vpp_reply *r, int out, const char **next) {
  int n, page;
  lua_Integer i, len, dst;
  if ((n = decode_object(L, r, 0, NULL)) != 1) return n;
  page = lua_gettop(L);
  lua_getfield(L, page, "value");
  if (!is_list_of_objects(L, lua_gettop(L)))
    return decode_error(L, r, "the page's \"value\" is not an array of objects");
  len = (lua_Integer)lua_rawlen(L, -1);
  dst = (lua_Integer)lua_rawlen(L, out);
  for (i = 1; i <= len; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, out, ++dst);
  }
  lua_pop(L, 1);
  lua_getfield(L, page, "@odata.nextLink");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) return decode_error(L, r, "@odata.nextLink is not a string");
  *next = lua_tostring(L, -1);
  lua_remove(L, page);
  return 0;
}

static const char *string_field(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  return NULL; /* the pushed value stays, balanced by the caller */
}

#define OPERATION_MARK " - Operation ID (for customer support): "
#define ACTIVITY_MARK  " - Activity ID: "

/* Intune answers with an error of its own, as JSON, in Graph's
 * error.message: {"_version": 3, "Message": "<text> - Operation ID (for
 * customer support): <id> - Activity ID: <id> - Url: <url>", ...}, at
 * times wrapped once more as {"ErrorCode": "Forbidden", "Message": "<that
 * JSON>"} (as seen in Graph's answers quoted in microsoftgraph issues, e.g.
 * powershell-intune-samples#89, microsoft-graph-docs-contrib#4157).
 * Returns the innermost Message (on the stack), or message as it was. */
static const char *intune_inner(lua_State *L, const char *message) {
  int depth;
  for (depth = 0; depth < 2; depth++) {
    const char *m = message, *inner;
    while (*m && strchr(" \t\r\n", *m)) m++;
    if (*m != '{') break;
    if (!vpp_json_decode(L, m, strlen(m), 0) || !is_object(L, -1)) break;
    inner = string_field(L, lua_gettop(L), "Message");
    if (!inner) break;
    message = inner; /* anchored on the stack */
  }
  return message;
}

/* Copies the UUID after mark in text into the error on top as field. */
static void keep_id(lua_State *L, const char *text, const char *mark, const char *field) {
  const char *p = strstr(text, mark);
  size_t n;
  if (!p) return;
  p += strlen(mark);
  n = strspn(p, "0123456789abcdefABCDEF-");
  if (n < 8 || strspn(p, "0-") == n) return; /* none, or Intune's all-zero placeholder */
  lua_pushlstring(L, p, n);
  lua_setfield(L, -2, field);
}

/* The least-privileged application permission of each call, for err.hint
 * on a 403, indexed by VPP_NEEDS_... (Graph's pages: vppToken list, get and
 * syncLicenses take DeviceManagementApps or DeviceManagementServiceConfig;
 * revokeLicenses, syncLicenseCounts, getLicensesForApp and update only the
 * latter). */
static const char *const permission_hint[] = {
    "the application needs the Microsoft Graph application permission DeviceManagementApps.Read.All (or "
    "DeviceManagementServiceConfig.Read.All), with admin consent granted",
    "the application needs the Microsoft Graph application permission DeviceManagementApps.ReadWrite.All (or "
    "DeviceManagementServiceConfig.ReadWrite.All), with admin consent granted",
    "the application needs the Microsoft Graph application permission DeviceManagementServiceConfig.Read.All, "
    "with admin consent granted",
    "the application needs the Microsoft Graph application permission DeviceManagementServiceConfig.ReadWrite.All, "
    "with admin consent granted"};

/* A non-2xx answer: an "http" error carrying Graph's error.code and message
 * (Intune's own inside it unwrapped: its text, operation and activity
 * ids), innerError's date, and the request-id from the header or, failing
 * that, innerError; a 403 also says which permission the call needs. */
static int http_error(lua_State *L, vpp_reply *r) {
  const char *code = NULL, *message = NULL, *date = NULL, *wrapped = NULL;
  int top = lua_gettop(L);
  if (vpp_json_decode(L, r->body.data, r->body.len, 0) && is_object(L, -1)) {
    lua_getfield(L, -1, "error");
    if (is_object(L, -1)) {
      int e = lua_gettop(L);
      code = string_field(L, e, "code");
      message = string_field(L, e, "message");
      lua_getfield(L, e, "innerError");
      if (is_object(L, -1)) {
        int inner = lua_gettop(L);
        const char *rid = string_field(L, inner, "request-id");
        if (rid && !r->request_id[0]) {
          strncpy(r->request_id, rid, sizeof r->request_id - 1);
          r->request_id[sizeof r->request_id - 1] = '\0';
        }
        date = string_field(L, inner, "date");
      }
      if (message) {
        const char *text = intune_inner(L, message);
        if (text != message) {
          const char *cut = strstr(text, OPERATION_MARK);
          wrapped = text;
          message = text;
          if (cut) {
            lua_pushlstring(L, text, (size_t)(cut - text)); /* void on 5.1 */
            message = lua_tostring(L, -1);
          }
        }
      }
    }
  }
  if (!message || !*message) /* err.message is never missing, even for {"message": ""} */
    message = lua_pushfstring(L, "HTTP %d without a Graph error body", (int)r->status);
  vpp_error_push(L, "http", r->status, code, message, r);
  if (wrapped) {
    keep_id(L, wrapped, OPERATION_MARK, "operation_id");
    keep_id(L, wrapped, ACTIVITY_MARK, "activity_id");
  }
  if (date) {
    lua_pushstring(L, date);
    lua_setfield(L, -2, "date");
  }
  if (r->status == 403) {
    lua_pushstring(L, permission_hint[r->permission]);
    lua_setfield(L, -2, "hint");
  }
  /* Move nil, err below the scratch values, then drop those. */
  lua_insert(L, top + 1);
  lua_insert(L, top + 1);
  lua_settop(L, top + 2);
  return 2;
}

int vpp_reply_ok(const vpp_reply *r) {
  return r->curl_code == CURLE_OK && !r->redirect_refused && r->status >= 200 && r->status <= 299;
}

/* Pushes nil, err for a reply that is not a 2xx. */
int vpp_reply_error(lua_State *L, vpp_reply *r) {
  if (r->redirect_refused)
    return vpp_error_push(L, "http", r->status, VPP_CODE(redirect_refused),
                          "refused to follow a redirect to another scheme, host or port", r);
  if (r->curl_code != CURLE_OK) return vpp_error_transport(L, r);
  return http_error(L, r);
}
