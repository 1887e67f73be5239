/* lua-vpp internals shared by the C files, one section per layer, lowest
 * first.  A file calls only into the sections above its own (`make lint`
 * checks the call graph with .ci/layers.lua); the Lua API is registered by
 * vpp.c. */
#ifndef VPP_H
#define VPP_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "compat.h"
#include "codes.h"

#define VPP_VERSION        "0.1.0"
#define VPP_CLIENT_MT      "vpp.client"
#define VPP_LOOP_CLIENT_MT "vpp.client.loop"
#define VPP_ERROR_MT       "vpp.error"
#define VPP_NULL_KEY       "vpp.null"   /* registry: cjson.null */
#define VPP_ENCODE_KEY     "vpp.encode" /* registry: cjson.encode */

/* ==== platform.c: the only file with OS services (POSIX clocks, sleep,
 * terminals, threads); a port to another system starts and ends there.
 * The other files use ISO C, Lua, libcurl and libcrypto only (make lint
 * checks their includes). ==== */
double vpp_now(void);   /* monotonic seconds */
double vpp_epoch(void); /* wall-clock seconds since 1970 */
void vpp_sleep(double seconds);
int vpp_isatty(int fd);
void vpp_once(void (*fn)(void));        /* one fn per process: curl_global_init */
int vpp_catch_signals(void (*on)(int)); /* SIGINT, SIGTERM: the command only */
void vpp_release_signals(void);

/* One descriptor over many sockets (epoll, kqueue), and a signal. */
typedef struct vpp_poller {
  int fd, wake_r, wake_w;
} vpp_poller;
enum { VPP_POLL_IN = 1, VPP_POLL_OUT = 2 };
int vpp_poller_open(vpp_poller *p);
void vpp_poller_close(vpp_poller *p);
int vpp_poller_watch(vpp_poller *p, int fd, int what, int known);
int vpp_poller_ready(vpp_poller *p, int *fds, int *what, int max);
int vpp_poller_signal(vpp_poller *p);
/* Many pollers (a fleet's clients) at once. */
int vpp_wait_readable(const int *fds, int n, double timeout, int *ready);
int vpp_file_mode(const char *path, unsigned *mode, long *uid);
long vpp_uid(void);
int vpp_std_fds(void);
int vpp_read_key_file(const char *dir, const char *path, char *out, size_t cap, size_t *len);
enum { VPP_KEY_OK, VPP_KEY_OUTSIDE, VPP_KEY_NOT_KEY, VPP_KEY_TOO_LARGE, VPP_KEY_UNREADABLE };
int vpp_replace_file(const char *path, const char *data, size_t len);

/* ==== base.c: buffers, wiping, randomness (OpenSSL's RAND_bytes) ==== */

/* A growable byte buffer owned by C; its owner frees it. */
typedef struct vpp_buf {
  char *data;
  size_t len, cap;
} vpp_buf;

int vpp_buf_append(vpp_buf *b, const char *s, size_t n); /* 0 on OOM */
int vpp_buf_add(vpp_buf *b, const char *s);              /* a C string */
void vpp_buf_free(vpp_buf *b);
void vpp_buf_wipe(vpp_buf *b); /* overwrite, then free: it held a secret */
void vpp_wipe(void *p, size_t n);
/* Random bytes drawn ahead, for request ids; owned by one client. */
typedef struct vpp_entropy {
  unsigned char bytes[256];
  size_t left;
} vpp_entropy;
int vpp_uuid(vpp_entropy *e, char out[40]); /* a random (version 4) UUID; 0 on failure; e may be NULL */
double vpp_random_unit(void);               /* uniform in [0, 1) */
extern const char *const vpp_code_names[];
extern const char *const vpp_code_meanings[];
#define VPP_CODE(name) (vpp_code_names[VPP_CODE_##name])

/* ==== url.c, throttle.c, jwt.c: pure functions over C data ==== */

/* Origin of a URL, for the same-host checks on nextLink and redirects. */
typedef struct vpp_origin {
  char scheme[16];
  char host[256];
  char port[8];
} vpp_origin;

size_t vpp_url_encode(char *out, const char *in, size_t len);
void vpp_url_push_encoded(luaL_Buffer *b, const char *s, size_t len);
int vpp_url_origin(const char *url, vpp_origin *out);
int vpp_url_same_origin(const vpp_origin *a, const char *url);
int vpp_url_loopback(const vpp_origin *o);
int vpp_url_has_userinfo(const char *url);
int vpp_url_proxy_origin(const char *url, vpp_origin *out);
const char *vpp_url_env_proxy(const vpp_origin *target);
size_t vpp_url_path_at(const char *url);

/* Token buckets for the proactive rate limit. */
typedef struct vpp_bucket {
  double capacity, tokens, per_second;
} vpp_bucket;

typedef struct vpp_ratelimit {
  int enabled;
  double last; /* monotonic time of the last refill */
  vpp_bucket writes, requests;
} vpp_ratelimit;

int vpp_retry_after(const char *value, double now_epoch, double *seconds);
double vpp_backoff(int attempt, double cap, double unit_random);
void vpp_rate_init(vpp_ratelimit *r, double writes, double requests, double per);
double vpp_rate_take(vpp_ratelimit *r, double now, int write);

typedef struct vpp_jwt_params {
  const char *cert_path, *key_path, *key_password, *audience, *client_id, *jti;
  long now;
  int send_chain; /* x5c: the certificate and its chain in the header (subject name/issuer) */
} vpp_jwt_params;

typedef struct vpp_jwt_error {
  const char *code;
  char message[160];
} vpp_jwt_error;

int vpp_jwt_assertion(const vpp_jwt_params *p, vpp_buf *out, vpp_jwt_error *e);

/* ==== errors.c, decode.c, options.c: Lua values from C data ==== */

/* What one HTTP exchange left behind, filled by the libcurl callbacks. */
typedef struct vpp_reply {
  long status;
  CURLcode curl_code;
  int too_large;              /* the body passed max_response_bytes */
  int header_too_large;       /* a header line passed libcurl's limit */
  int out_of_memory;          /* the body could not be stored */
  int redirect_refused;       /* a redirect to another origin */
  int redirects;              /* same-origin redirects followed */
  int watchdog;               /* why on_progress ended it (VPP_TIMED_OUT...) */
  int sent;                   /* bytes of request sent */
  int attempts;               /* tries so far, retries included */
  int post;                   /* the request was a write (POST, PATCH) */
  int permission;             /* what the call needs (VPP_NEEDS_...), for err.hint */
  char retry_after[64];       /* the Retry-After header, as sent */
  char request_id[128];       /* Graph's request-id response header */
  char client_request_id[40]; /* the UUID we sent */
  char date[40];              /* the Date header: Graph's clock */
  char proxy[300];            /* the proxy it failed at (scheme://host:port), or "" */
  char challenge[512];        /* WWW-Authenticate (Azure Arc names its key file there) */
  long proxy_status;          /* the proxy's answer to CONNECT, when it refused */
  char curl_message[CURL_ERROR_SIZE];
  vpp_buf body;
} vpp_reply;

int vpp_error_push(lua_State *L, const char *kind, long status, const char *code, const char *message,
                   const vpp_reply *reply);
int vpp_error_transport(lua_State *L, const vpp_reply *reply);
const char *vpp_curl_code_name(CURLcode rc);
void vpp_error_open(lua_State *L, int module);
void vpp_error_setup(lua_State *L);

/* The least-privileged application permission a call needs (decode.c
 * names each in err.hint): the first two are also "a read", "a write". */
enum { VPP_NEEDS_APPS_READ, VPP_NEEDS_APPS_WRITE, VPP_NEEDS_CONFIG_READ, VPP_NEEDS_CONFIG_WRITE };

int vpp_json_decode(lua_State *L, const char *data, size_t len, int unwrap);
void vpp_json_setup(lua_State *L);
int vpp_decode_entity(lua_State *L, vpp_reply *r, const char *id, size_t idlen);
int vpp_decode_page(lua_State *L, vpp_reply *r, int out, const char **next);
int vpp_reply_ok(const vpp_reply *r);
int vpp_reply_error(lua_State *L, vpp_reply *r);
void vpp_decode_setup(lua_State *L);
void vpp_json_push_encoded(lua_State *L, int idx);

/* The client's plain settings, read from the one option table. */
typedef struct vpp_settings {
  double timeout, connect_timeout, stall_timeout, max_retry_delay;
  lua_Integer max_response_bytes, max_retries, max_pages;
  const char *ca_file, *user_agent; /* anchored in the user value table */
  const char *user_agent_line;      /* "User-Agent: ...", likewise */
  const char *proxy;                /* the proxy setting (NULL: libcurl's environment rules) */
  const char *proxy_auth_name;      /* "basic", "ntlm", "negotiate", "any" */
  long proxy_auth;                  /* its CURLAUTH_ mask (0: libcurl's default, Basic) */
  char proxy_shown[300];            /* the proxy as messages name it: scheme://host:port */
  int traced;                       /* has an on_request function */
  int looped;                       /* has a loop function */
} vpp_settings;

void vpp_options_read(lua_State *L, int opts, int uv, vpp_settings *s);
void vpp_check_keys(lua_State *L, int t, const char *const *names, const char *what, const char *tail);
void vpp_options_open(lua_State *L, int module);
const char *vpp_anchor(lua_State *L, int uv, const char *name);
const char *vpp_string_option(lua_State *L, int opts, int uv, const char *name, int printable);
int vpp_option_present(lua_State *L, int opts, const char *name);
double vpp_deadline_option(lua_State *L, int t, const char *name);
enum { VPP_URL_HTTPS_DEFAULT = 1, VPP_URL_METADATA = 2 };
const char *vpp_url_option(lua_State *L, int uv, const char *name, int flags);

/* ==== transfer.c: one easy handle and the exchange it carries ==== */

/* What to send: the caller keeps every string alive until prepare returns;
 * the transfer copies the body (a token form holds a secret, wiped when
 * the transfer is released). */
typedef struct vpp_request {
  int post;           /* sends the body (an empty one too): POST, or method */
  const char *method; /* "PATCH"; NULL: POST or GET */
  int permission;     /* VPP_NEEDS_..., kept in the reply */
  const char *url;
  const char *body;
  size_t body_len;
  const char *bearer; /* NULL: no Authorization header */
  size_t bearer_len;
  const char *const *headers; /* more header lines, NULL-terminated */
  vpp_entropy *request_ids;   /* send a client-request-id drawn from it */
  int direct;                 /* never through a proxy: the identity endpoints on this machine */
} vpp_request;

enum { VPP_PREPARED, VPP_PREPARE_NOMEM, VPP_PREPARE_BAD_TOKEN, VPP_PREPARE_NO_RANDOM };

typedef struct vpp_transfer {
  CURL *easy;
  struct curl_slist *headers; /* while prepared, or kept for the next */
  int kept, kept_post;        /* headers kept: a Graph request's, POST or GET */
  int custom;                 /* CURLOPT_CUSTOMREQUEST is set */
  vpp_buf body;               /* the request body, wiped on release */
  const vpp_settings *settings;
  int job;                  /* the job it runs; VPP_IDLE, VPP_TOKEN_JOB */
  struct vpp_batch *owner;  /* the run of that job */
  unsigned auth_generation; /* of the token it sent */
  double started_at;        /* when it was prepared (vpp_now) */
  double active_at;         /* when a byte last moved */
  curl_off_t moved;         /* bytes down and up by then */
  const vpp_origin *origin; /* redirects stay within it */
  int direct;               /* CURLOPT_PROXY is "": no proxy at all */
  vpp_reply reply;
} vpp_transfer;

enum { VPP_TIMED_OUT = 1, VPP_STALLED, VPP_NOT_CONNECTED };

#define VPP_IDLE      (-1)
#define VPP_TOKEN_JOB (-2)

vpp_transfer *vpp_transfer_new(const vpp_settings *s, int pipewait);
void vpp_transfer_free(vpp_transfer *t);
int vpp_transfer_prepare(vpp_transfer *t, const vpp_request *rq);
void vpp_transfer_finish(vpp_transfer *t, CURLcode rc);
double vpp_transfer_wake(const vpp_transfer *t);
int vpp_transfer_overdue(vpp_transfer *t, double now);
void vpp_transfer_release(vpp_transfer *t);
int vpp_transfer_redirect(vpp_transfer *t);

/* ==== auth.c: credentials and the token cache; describes token requests
 * and reads their answers, sends nothing ==== */
typedef enum {
  VPP_CRED_STATIC,
  VPP_CRED_FUNCTION,
  VPP_CRED_SECRET,
  VPP_CRED_CERTIFICATE,
  VPP_CRED_MANAGED,
  VPP_CRED_FEDERATED /* workload identity: a federated token file as the client assertion */
} vpp_cred;

/* Where a managed identity's token comes from. */
typedef enum { VPP_MI_IMDS, VPP_MI_APP_SERVICE, VPP_MI_ARC } vpp_mi_source;

typedef struct vpp_auth {
  vpp_cred kind;
  vpp_mi_source mi_source;
  /* Lua strings anchored by the client's user value table; NULL if unset */
  const char *tenant_id, *client_id, *client_secret, *cert_path, *key_path, *key_password;
  const char *authority, *scope, *imds_url, *cloud;
  const char *assertion_path;          /* workload identity's token file, read at each fetch */
  const char *mi_endpoint, *mi_header; /* App Service / Arc: IDENTITY_ENDPOINT, IDENTITY_HEADER */
  const char *arc_key_dir;             /* where Arc's challenge may point */
  int send_chain;                      /* x5c in the certificate's assertion */
  char *arc_secret;                    /* the key file's content for the next request: wiped */
  size_t arc_secret_len;
  char *token; /* the cached access token: C memory, wiped when dropped */
  size_t token_len;
  const char *fixed_token; /* a string access_token (anchored in uv) */
  size_t fixed_len;
  double refresh_at;   /* monotonic time to fetch anew; 0: fetch now */
  unsigned generation; /* bumped at each new token */
} vpp_auth;

/* A token request as auth describes it: URL, form (may hold the secret or
 * the assertion: wipe it) and whether it is a POST. */
typedef struct vpp_token_request {
  vpp_buf url, form;
  vpp_buf header[2]; /* more header lines (NUL-terminated; may hold a secret: wiped) */
  int post, managed;
} vpp_token_request;

void vpp_auth_read(lua_State *L, int opts, int uv, vpp_auth *a, const char **base_url);
int vpp_auth_cached(const vpp_auth *a, double now);
int vpp_auth_take_provided(lua_State *L, vpp_auth *a);
int vpp_auth_describe(const vpp_auth *a, vpp_token_request *rq, vpp_jwt_error *e);
void vpp_auth_request_free(vpp_token_request *rq);
int vpp_auth_accept(lua_State *L, vpp_auth *a, vpp_reply *r);
int vpp_auth_fail(lua_State *L, const vpp_auth *a, const vpp_jwt_error *e);
int vpp_auth_refreshable(const vpp_auth *a);
void vpp_auth_drop(vpp_auth *a, unsigned generation);
void vpp_auth_release(vpp_auth *a);
void vpp_auth_push_config(lua_State *L, const vpp_auth *a);
void vpp_auth_push_clouds(lua_State *L);

/* ==== engine.c: the only code that sends anything ==== */

typedef struct vpp_batch vpp_batch;

/* The client userdata.  Strings it points to (base_url, api_version, ...) are
 * Lua strings kept alive by the userdata's user value table, which also
 * holds the runs under way (runs[run] = its state table), the queued traces
 * and the loop function. */
typedef struct vpp_client {
  CURLM *multi;        /* NULL once closed */
  vpp_transfer **pool; /* easy handles, reused across calls */
  int pool_size;
  int busy;             /* a blocking run is under way */
  int stepping;         /* inside a step: no call may start */
  const char *base_url; /* no trailing slash */
  const char *api_version;
  vpp_settings s;
  vpp_ratelimit rate;
  vpp_auth auth;
  vpp_origin origin;
  vpp_origin cloud_origin; /* the cloud's Graph host */
  int gateway;             /* base_url is not it */
  vpp_entropy entropy;     /* for client-request-ids */
  vpp_batch *runs;         /* the runs under way, newest first */
  vpp_batch *single;       /* blocking: the run every single call reuses (uv[1]) */
  /* With a loop: libcurl's sockets on the poller, its timer. */
  int evented;
  vpp_poller poller;
  double curl_timer_at;
  double wake_at;     /* the engine's next timer, as of the last step */
  int stack_uv;       /* during a step: the stack slot of the user value table */
  vpp_batch *driving; /* during a step: the run whose driver steps */
  int nudge;          /* the step ended jobs of other runs */
  /* The token request (engine.c): its handle, state and retries. */
  vpp_transfer *fetcher;
  int fetching;         /* 0 idle, 1 on the multi handle, 2 waiting to retry */
  int fetch_attempts;   /* tries of the current token request */
  double fetch_at;      /* when a waiting token request may start */
  int want_token;       /* a job waits for the access_token function */
  int provided;         /* it just gave a token: the next job uses it */
  vpp_batch *providing; /* the run whose driver calls it now */
  double hold_until[2]; /* [0] reads, [1] writes: Graph said wait */
  unsigned cancels;     /* counts client:cancel() */
} vpp_client;

/* A run of the engine: n jobs, each a request to one URL. */
typedef struct vpp_job {
  double ready_at; /* monotonic time it may (re)start */
  int attempts;
  int state;
  int reauthenticated; /* retried once after a 401 with a new token */
} vpp_job;

/* Called once per job as it ends, inside a step (so it must not call user
 * code; it may raise for memory): with its transfer, or with t == NULL and
 * nil, err at err (the job failed before or without a transfer: no
 * token, cancelled, deadline).  state is the run's state table. */
typedef void (*vpp_deliver_fn)(lua_State *L, vpp_batch *b, int job, vpp_transfer *t, int state, int err);

struct vpp_batch {
  vpp_client *c;   /* NULL once unlinked */
  vpp_batch *next; /* in the client's list of runs */
  int n, post, concurrency;
  vpp_job *jobs; /* n entries, in the run's userdata */
  int *waiting;  /* jobs waiting for a retry timer */
  int nwaiting, next_job, done, active;
  int cancelled, auth_failed, aborted;
  double deadline_at; /* HUGE_VAL: none */
  vpp_deliver_fn deliver;
  const char *url;    /* a blocking single call's URL, in C memory; else state.urls */
  const char *method; /* "PATCH" (static); NULL: POST when post, else GET */
  int has_body;       /* state.body is the JSON to send */
  int permission;     /* VPP_NEEDS_...; post by default */
  int queued;         /* results queued in state.events since the driver looked */
  int stack_state;    /* a blocking run's state, in its driver's frame; else 0 */
};

/* The run's state table (the run's user value, and runs[run] in the
 * client's): [1], [2] what the call returns; urls; and per kind of run
 * what its deliver function keeps. */
vpp_batch *vpp_run_new(lua_State *L, int client_idx, int n, int post, int concurrency, vpp_deliver_fn deliver);
void vpp_run_reset(vpp_batch *b, int post, int concurrency, vpp_deliver_fn deliver);
void vpp_run_requeue(vpp_batch *b, int job);
void vpp_run_block(lua_State *L, int client_idx, int state, vpp_batch *b);
void vpp_run_start(lua_State *L, int client_idx, int state);
void vpp_run_abort(lua_State *L, int state);
void vpp_engine_step(lua_State *L, int client_idx, vpp_batch *b);
void vpp_engine_setup(lua_State *L);
int vpp_engine_evented(vpp_client *c);
int vpp_engine_provide(lua_State *L, int client_idx);
double vpp_engine_wake(vpp_client *c);
void vpp_engine_cancel(vpp_client *c);
void vpp_engine_release(vpp_client *c);

/* ==== client.c, batch.c, run.c: the Lua methods and the driver's
 * functions (registered by vpp.c) ==== */

/* The calls on one token, and the list; the URL of each. */
typedef enum {
  VPP_SYNC_LICENSES,
  VPP_SYNC_APPS,
  VPP_GET_TOKEN,
  VPP_LIST_TOKENS,
  VPP_REVOKE_LICENSES,
  VPP_SYNC_LICENSE_COUNTS,
  VPP_UPDATE_TOKEN,
  VPP_LICENSES_FOR_APP,
  VPP_LIST_VPP_APPS
} vpp_action;

int vpp_client_open_lib(lua_State *L);
vpp_client *vpp_client_to(lua_State *L, int idx);
vpp_client *vpp_client_check(lua_State *L, int idx);
int vpp_client_run(lua_State *L, vpp_client *c, int client_idx, vpp_batch *b);
const char *vpp_client_push_action_url(lua_State *L, vpp_client *c, vpp_action action, int org_idx, int id_idx);
void vpp_batch_open(lua_State *L, int methods);
void vpp_run_open(lua_State *L, int module);

#endif
