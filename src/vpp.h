/* lua-vpp internals shared by the C files; the Lua API is in vpp.c. */
#ifndef VPP_H
#define VPP_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "compat.h"

#define VPP_VERSION    "0.1.0"
#define VPP_CLIENT_MT  "vpp.client"
#define VPP_ERROR_MT   "vpp.error"
#define VPP_DECODE_KEY "vpp.decode" /* registry: our private cjson decode */
#define VPP_NULL_KEY   "vpp.null"   /* registry: cjson.null */

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
  int too_large;              /* the body passed max_response_bytes */
  int out_of_memory;          /* the body could not be stored */
  int redirect_refused;       /* a redirect to another origin */
  int redirects;              /* same-origin redirects followed */
  int stalled;                /* no byte moved for stall_timeout */
  int sent;                   /* bytes of request sent */
  int attempts;               /* tries so far, retries included */
  char retry_after[64];       /* the Retry-After header, as sent */
  char request_id[128];       /* Graph's request-id response header */
  char client_request_id[40]; /* the UUID we sent */
  char curl_message[CURL_ERROR_SIZE];
  vpp_buf body;
} vpp_reply;

struct vpp_client;

/* One easy handle of the client's pool, and the exchange it carries. */
typedef struct vpp_transfer {
  CURL *easy;
  struct curl_slist *headers; /* only while attached */
  struct vpp_client *client;
  int job;                  /* the job it runs, -1 when idle */
  unsigned auth_generation; /* of the token it sent */
  double active_at;         /* when a byte last moved (vpp_now) */
  curl_off_t moved;         /* bytes down and up by then */
  vpp_reply reply;
} vpp_transfer;

/* Origin of a URL, for the same-host checks on nextLink and redirects. */
typedef struct vpp_origin {
  char scheme[16];
  char host[256];
  char port[8];
} vpp_origin;

/* Token buckets for the proactive rate limit (throttle.c). */
typedef struct vpp_bucket {
  double capacity, tokens, per_second;
} vpp_bucket;

typedef struct vpp_ratelimit {
  int enabled;
  double last; /* monotonic time of the last refill */
  vpp_bucket writes, requests;
} vpp_ratelimit;

/* Credentials and the token cache (auth.c). */
typedef enum { VPP_CRED_STATIC, VPP_CRED_FUNCTION, VPP_CRED_SECRET, VPP_CRED_CERTIFICATE, VPP_CRED_MANAGED } vpp_cred;

typedef struct vpp_auth {
  vpp_cred kind;
  /* Lua strings anchored by the client's user value table; NULL if unset */
  const char *tenant_id, *client_id, *client_secret, *cert_path, *key_path, *key_password;
  const char *authority, *scope, *imds_url, *cloud;
  char *token; /* the cached access token: C memory, wiped when dropped */
  size_t token_len;
  double refresh_at;            /* monotonic time to fetch anew; 0: fetch now */
  unsigned generation;          /* bumped at each new token */
  unsigned failed_run;          /* the engine run whose fetch failed (see auth.c) */
  struct vpp_transfer *fetcher; /* the handle token requests go through */
} vpp_auth;

/* The client userdata.  Strings it points to (base_url, api_version, ...) are
 * Lua strings kept alive by the userdata's user value table. */
typedef struct vpp_client {
  CURLM *multi;        /* NULL once closed */
  vpp_transfer **pool; /* easy handles, reused across calls */
  int pool_size;
  int busy;             /* an engine run is under way */
  const char *base_url; /* no trailing slash */
  const char *api_version;
  const char *ca_file, *user_agent;
  long timeout_ms, connect_timeout_ms;
  double stall_seconds;
  size_t max_response_bytes;
  int max_retries;
  double max_retry_delay;
  vpp_ratelimit rate;
  vpp_auth auth;
  int traced;   /* has an on_request function */
  unsigned run; /* counts engine runs */
  vpp_origin origin;
  uint64_t rng[2]; /* client-request-ids and jitter */
} vpp_client;

/* A run of the engine: n jobs, each a request to one URL. */
typedef struct vpp_job {
  double ready_at; /* monotonic time it may (re)start */
  int attempts;
  int state;
  int reauthenticated; /* retried once after a 401 with a new token */
} vpp_job;

typedef struct vpp_batch vpp_batch;

/* Called once per job as it ends, from inside the protected engine run (so
 * it may raise): with its transfer, or with t == NULL and nil, err pushed
 * when the job failed before any transfer (no access token). */
typedef void (*vpp_deliver_fn)(lua_State *L, vpp_batch *b, int job, vpp_transfer *t);

struct vpp_batch {
  vpp_client *c;
  int n, post, concurrency;
  vpp_job *jobs; /* n entries, memory owned by a userdata */
  int *waiting;  /* jobs waiting for a retry timer */
  int nwaiting, next, done, active;
  vpp_deliver_fn deliver;
  vpp_transfer *last; /* the transfer of the last finished job */
};

/* Stack slots of the protected engine run, where deliver functions find
 * what their caller passed. */
#define VPP_RUN_CLIENT 2
#define VPP_RUN_URLS   3
#define VPP_RUN_EXTRA  4

/* The calls on one token, and the URL of each (client.c). */
typedef enum { VPP_SYNC_LICENSES, VPP_SYNC_APPS, VPP_GET_TOKEN } vpp_action;

/* client.c */
int vpp_client_open_lib(lua_State *L);
vpp_client *vpp_client_check(lua_State *L, int idx);
uint64_t vpp_client_random(vpp_client *c);
const char *vpp_client_push_action_url(lua_State *L, vpp_client *c, vpp_action action, int org_idx, int id_idx);
const char *vpp_anchor(lua_State *L, int uv, const char *name);
const char *vpp_string_option(lua_State *L, int opts, int uv, const char *name, int printable);

/* transfer.c */
vpp_transfer *vpp_transfer_new(vpp_client *c);
void vpp_transfer_free(vpp_transfer *t);
int vpp_transfer_prepare(lua_State *L, vpp_transfer *t, int client_idx, int post, const char *url);
void vpp_transfer_reset(vpp_transfer *t);
void vpp_transfer_finish(vpp_transfer *t, CURLcode rc);
void vpp_transfer_release(vpp_transfer *t);
void vpp_transfer_trace(lua_State *L, int client_idx, vpp_transfer *t, const char *method, int attempt);
int vpp_transfer_redirect(vpp_transfer *t);
void vpp_new_uuid(vpp_client *c, char out[40]);

/* engine.c */
void vpp_engine_run(lua_State *L, vpp_batch *b, int nextra);
vpp_transfer *vpp_engine_one(lua_State *L, vpp_client *c, int post, int client_idx);
double vpp_now(void);

/* throttle.c */
int vpp_retry_after(const char *value, double now_epoch, double *seconds);
double vpp_backoff(int attempt, double cap, double unit_random);
void vpp_rate_init(vpp_ratelimit *r, double writes, double requests, double per);
double vpp_rate_take(vpp_ratelimit *r, double now, int write);

/* auth.c */
void vpp_auth_read(lua_State *L, int opts, int uv, vpp_auth *a, const char **base_url);
int vpp_auth_token(lua_State *L, vpp_client *c, int client_idx, const char **token, size_t *len);
int vpp_auth_refreshable(const vpp_client *c);
void vpp_auth_drop(vpp_client *c, unsigned generation);
void vpp_auth_release(vpp_auth *a);
void vpp_auth_push_config(lua_State *L, const vpp_client *c);
void vpp_auth_push_clouds(lua_State *L);

/* jwt.c */
typedef struct vpp_jwt_params {
  const char *cert_path, *key_path, *key_password, *audience, *client_id, *jti;
  long now;
} vpp_jwt_params;

typedef struct vpp_jwt_error {
  const char *code;
  char message[160];
} vpp_jwt_error;

int vpp_jwt_assertion(const vpp_jwt_params *p, vpp_buf *out, vpp_jwt_error *e);

/* batch.c */
void vpp_batch_open(lua_State *L, int methods);

/* url.c */
size_t vpp_url_encode(char *out, const char *in, size_t len);
void vpp_url_push_encoded(luaL_Buffer *b, const char *s, size_t len);
int vpp_url_origin(const char *url, vpp_origin *out);
int vpp_url_same_origin(const vpp_origin *a, const char *url);

/* decode.c */
int vpp_decode_body(lua_State *L, const char *data, size_t len);
int vpp_decode_entity(lua_State *L, vpp_reply *r, const char *id, size_t idlen);
int vpp_decode_page(lua_State *L, vpp_reply *r, int out, const char **next);
int vpp_reply_ok(const vpp_reply *r);
int vpp_reply_error(lua_State *L, vpp_reply *r);
void vpp_decode_setup(lua_State *L);

/* errors.c */
int vpp_error_push(lua_State *L, const char *kind, long status, const char *code, const char *message,
                   const vpp_reply *reply);
int vpp_error_transport(lua_State *L, const vpp_reply *reply);
const char *vpp_curl_code_name(CURLcode rc);
void vpp_error_setup(lua_State *L);

#endif
