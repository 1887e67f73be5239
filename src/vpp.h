/* lua-vpp internals shared by the C files; the Lua API is in vpp.c. */
#ifndef VPP_H
#define VPP_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#define VPP_VERSION "0.1.0"
#define VPP_CLIENT_MT "vpp.client"
#define VPP_ERROR_MT "vpp.error"
#define VPP_DECODE_KEY "vpp.decode" /* registry: our private cjson decode */
#define VPP_NULL_KEY "vpp.null"     /* registry: cjson.null */

/* A growable byte buffer owned by C; its owner frees it. */
typedef struct vpp_buf {
  char *data;
  size_t len, cap;
} vpp_buf;

int vpp_buf_append(vpp_buf *b, const char *s, size_t n); /* 0 on OOM */
void vpp_buf_free(vpp_buf *b);

/* What one HTTP exchange left behind, filled by the libcurl callbacks. */
typedef struct vpp_reply {
  long status;
  CURLcode curl_code;
  int too_large;               /* the body passed max_response_bytes */
  int out_of_memory;           /* the body could not be stored */
  char request_id[128];        /* Graph's request-id response header */
  char client_request_id[40];  /* the UUID we sent */
  char curl_message[CURL_ERROR_SIZE];
  vpp_buf body;
} vpp_reply;

/* Origin of a URL, for the same-host checks on nextLink and redirects. */
typedef struct vpp_origin {
  char scheme[16];
  char host[256];
  char port[8];
} vpp_origin;

/* The client userdata.  Strings it points to (base_url, api_version, ...) are
 * Lua strings kept alive by the userdata's user value table. */
typedef struct vpp_client {
  CURL *easy;                  /* NULL once closed */
  struct curl_slist *headers;  /* only during a request */
  const char *base_url;        /* no trailing slash */
  const char *api_version;
  size_t max_response_bytes;
  vpp_origin origin;
  uint64_t rng[2];             /* client-request-id generator */
  vpp_reply reply;
} vpp_client;

/* client.c */
int vpp_client_open_lib(lua_State *L); /* pushes the methods + module fns */
vpp_client *vpp_client_check(lua_State *L, int idx);

/* request.c */
int vpp_request_perform(lua_State *L, vpp_client *c, int post, const char *url);
void vpp_request_init_handle(vpp_client *c);
void vpp_request_release(vpp_client *c);

/* url.c */
size_t vpp_url_encode(char *out, const char *in, size_t len);
void vpp_url_push_encoded(luaL_Buffer *b, const char *s, size_t len);
int vpp_url_origin(const char *url, vpp_origin *out);
int vpp_url_same_origin(const vpp_origin *a, const char *url);

/* decode.c */
int vpp_decode_body(lua_State *L, const char *data, size_t len);
int vpp_decode_entity(lua_State *L, vpp_client *c, const char *id, size_t idlen);
int vpp_decode_page(lua_State *L, vpp_client *c, int out, const char **next);
int vpp_decode_http_error(lua_State *L, vpp_client *c);
void vpp_decode_setup(lua_State *L);

/* errors.c */
int vpp_error_push(lua_State *L, const char *kind, long status, const char *code,
                   const char *message, const vpp_reply *reply);
int vpp_error_transport(lua_State *L, const vpp_reply *reply);
void vpp_error_setup(lua_State *L);

#endif
