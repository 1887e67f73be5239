/* The one place that sends requests.  A client has runs under way (one in
 * blocking mode; any number under a loop, from different coroutines), each
 * a list of jobs with its own concurrency; a step starts what may start
 * now, across runs, under the proactive rate limit and Graph's own
 * Retry-After holds, moves libcurl on without blocking, and ends what has
 * finished, each throttled job retried on its own timer.  Token requests
 * (identity platform, IMDS) run on the same multi handle: jobs that need
 * the token wait for it, every other transfer goes on.
 *
 * A step never calls user code: traces, results for on_result and the
 * need for an access_token function are queued, and whoever drives the
 * run calls them between steps -- the blocking driver here, from C; the
 * Lua driver (lua/vpp/evented.lua) from Lua frames, so that they may yield
 * to the host's loop.  Whatever a step raises (an allocation failure) is
 * re-raised only after every transfer of the runs it touched is detached. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

enum { JOB_QUEUED, JOB_RUNNING, JOB_WAITING, JOB_DONE };
enum { FETCH_IDLE, FETCH_RUNNING, FETCH_WAITING };
enum { TOKEN_READY, TOKEN_PENDING, TOKEN_FAILED };

static const char noop_key = 'n'; /* registry: a Lua function that does nothing */

/* ---- handles ----------------------------------------------------------- */

static vpp_transfer *new_transfer(vpp_client *c) {
  vpp_transfer *t = vpp_transfer_new(&c->s, strcmp(c->origin.scheme, "https") == 0);
  if (t) t->origin = &c->origin;
  return t;
}

/* An idle transfer of the pool, growing the pool when all are busy. */
static vpp_transfer *idle_transfer(vpp_client *c) {
  vpp_transfer **pool;
  int i;
  for (i = 0; i < c->pool_size; i++)
    if (c->pool[i]->job == VPP_IDLE) return c->pool[i];
  pool = realloc(c->pool, (size_t)(c->pool_size + 1) * sizeof(vpp_transfer *));
  if (!pool) return NULL;
  c->pool = pool;
  if (!(pool[c->pool_size] = new_transfer(c))) return NULL;
  return pool[c->pool_size++];
}

static void detach(vpp_client *c, vpp_transfer *t) {
  curl_multi_remove_handle(c->multi, t->easy);
  vpp_transfer_release(t);
}

/* Detaches the transfers of run b (every one, token request included, for
 * b == NULL). */
static void detach_run(vpp_client *c, const vpp_batch *b) {
  int i;
  for (i = 0; i < c->pool_size; i++)
    if (c->pool[i]->job != VPP_IDLE && (!b || c->pool[i]->owner == b)) detach(c, c->pool[i]);
  if (!b && c->fetcher && c->fetcher->job != VPP_IDLE) detach(c, c->fetcher);
  if (!b) c->fetching = FETCH_IDLE;
}

/* Takes b off the client's list; with the last run gone, nothing is left
 * on the multi handle (a token request included), as between blocking
 * calls. */
static void unlink_run(vpp_batch *b) {
  vpp_client *c = b->c;
  vpp_batch **p;
  if (!c) return;
  for (p = &c->runs; *p; p = &(*p)->next)
    if (*p == b) {
      *p = b->next;
      break;
    }
  if (c->multi) detach_run(c, c->runs ? b : NULL);
  if (c->providing == b) c->providing = NULL;
  b->c = NULL;
}

/* Frees every handle; safe at any time, even from a __gc that runs while
 * a run is under way (lua_close from inside a callback).  Runs still
 * linked are aborted. */
void vpp_engine_release(vpp_client *c) {
  int i;
  while (c->runs) {
    c->runs->aborted = 1;
    unlink_run(c->runs);
  }
  if (c->multi) detach_run(c, NULL);
  for (i = 0; i < c->pool_size; i++) vpp_transfer_free(c->pool[i]);
  free(c->pool);
  c->pool = NULL;
  c->pool_size = 0;
  vpp_transfer_free(c->fetcher);
  c->fetcher = NULL;
  if (c->multi) {
    curl_multi_cleanup(c->multi); /* may still call on_socket */
    c->multi = NULL;
  }
  if (c->evented) vpp_poller_close(&c->poller);
  c->evented = 0;
}

/* ---- sockets and timers, under a loop ---------------------------------- */

static int on_socket(CURL *e, curl_socket_t s, int what, void *ud, void *known) {
  vpp_client *c = ud;
  int w = what == CURL_POLL_IN      ? VPP_POLL_IN
          : what == CURL_POLL_OUT   ? VPP_POLL_OUT
          : what == CURL_POLL_INOUT ? VPP_POLL_IN | VPP_POLL_OUT
                                    : 0;
  (void)e;
  vpp_poller_watch(&c->poller, (int)s, w, known != NULL);
  curl_multi_assign(c->multi, s, w ? c : NULL);
  return 0;
}

static int on_timer(CURLM *m, long ms, void *ud) {
  vpp_client *c = ud;
  (void)m;
  c->curl_timer_at = ms < 0 ? HUGE_VAL : vpp_now() + (double)ms / 1000;
  return 0;
}

/* Puts libcurl's sockets on a poller of the client's (the loop setting):
 * 1, or 0 when the system gives no poller. */
int vpp_engine_evented(vpp_client *c) {
  if (!vpp_poller_open(&c->poller)) return 0;
  c->evented = 1;
  c->curl_timer_at = HUGE_VAL;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  return 1;
}

/* Seconds until the engine needs a step without socket activity; HUGE_VAL
 * for never. */
double vpp_engine_wake(vpp_client *c) {
  double at = c->wake_at < c->curl_timer_at ? c->wake_at : c->curl_timer_at, now;
  if (at == HUGE_VAL) return HUGE_VAL;
  now = vpp_now();
  return at > now ? at - now : 0;
}

/* ---- the stack during a step -------------------------------------------
 * The client's user value table sits at c->stack_uv, its runs table just
 * above it; a run's state table is runs[run]. */

static void push_state(lua_State *L, const vpp_batch *b) {
  if (b->stack_state)
    lua_pushvalue(L, b->stack_state); /* a blocking run: in the driver's frame */
  else
    lua_rawgetp(L, b->c->stack_uv + 1, b);
}

static void enter(lua_State *L, vpp_client *c, int client_idx) {
  lua_getiuservalue(L, client_idx, 1);
  c->stack_uv = lua_gettop(L);
  lua_getfield(L, c->stack_uv, "runs");
}

/* ---- traces ------------------------------------------------------------ */

/* Queues, for the client's on_request function, what is safe to log of a
 * finished exchange: method, URL (a token request's without its query),
 * status, libcurl's error name, time and ids; no header and no body, so no
 * token and no secret. */
static void trace(lua_State *L, vpp_client *c, vpp_transfer *t, int attempt) {
  const vpp_reply *r = &t->reply;
  int token = t->job == VPP_TOKEN_JOB;
  char *method = NULL, *url = NULL;
  double seconds = 0;
  if (!c->s.traced) return; /* no table lookups per request otherwise */
  lua_getfield(L, c->stack_uv, "traces");
  lua_createtable(L, 0, 9);
  curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_METHOD, &method);
  lua_pushstring(L, method ? method : "GET");
  lua_setfield(L, -2, "method");
  if (curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK && url) {
    lua_pushlstring(L, url, token ? strcspn(url, "?") : strlen(url));
    lua_setfield(L, -2, "url");
  }
  if (token) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "token_request");
  }
  if (r->status > 0) {
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
  }
  if (r->curl_code != CURLE_OK) {
    lua_pushstring(L, vpp_curl_code_name(r->curl_code));
    lua_setfield(L, -2, "error");
  }
  curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &seconds);
  lua_pushnumber(L, seconds);
  lua_setfield(L, -2, "seconds");
  if (r->request_id[0]) {
    lua_pushstring(L, r->request_id);
    lua_setfield(L, -2, "request_id");
  }
  if (r->client_request_id[0]) {
    lua_pushstring(L, r->client_request_id);
    lua_setfield(L, -2, "client_request_id");
  }
  lua_pushinteger(L, attempt);
  lua_setfield(L, -2, "attempt");
  lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
}

/* ---- retries ----------------------------------------------------------- */

/* 429, 503, 504, and failures to connect; a timeout once the request was
 * sent is not retried, since Graph may have acted on it. */
static int retryable(const vpp_reply *r) {
  if (r->redirect_refused) return 0;
  switch (r->curl_code) {
  case CURLE_OK:
    return r->status == 429 || r->status == 503 || r->status == 504;
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST:
    return 1;
  case CURLE_OPERATION_TIMEDOUT:
    return !r->sent;
  default:
    return 0;
  }
}

/* How long the server asked to wait (a Retry-After it sent): 1 and *wait;
 * else 0 and *wait the backoff for this attempt. */
static int retry_wait(vpp_client *c, const vpp_reply *r, int attempt, double *wait) {
  if (r->retry_after[0] && vpp_retry_after(r->retry_after, vpp_epoch(), wait)) return 1;
  *wait = vpp_backoff(attempt, c->s.max_retry_delay, vpp_random_unit());
  return 0;
}

/* Graph counts requests made while it throttles: after a 429 (or a 503
 * that says when to come back), no write -- or, for a read, no read -- of
 * this client starts before the wait is over. */
static void hold(vpp_client *c, const vpp_reply *r, int post, int server, double until) {
  if (r->curl_code != CURLE_OK || !(r->status == 429 || (r->status == 503 && server))) return;
  if (until > c->hold_until[post]) c->hold_until[post] = until;
}

/* Graph's 401 for an expired or revoked token, when a new one can be had. */
static int token_rejected(const vpp_client *c, const vpp_reply *r) {
  static const char code[] = "InvalidAuthenticationToken";
  size_t i;
  if (r->curl_code != CURLE_OK || r->status != 401 || !vpp_auth_refreshable(&c->auth)) return 0;
  for (i = 0; i + sizeof code - 1 <= r->body.len; i++)
    if (memcmp(r->body.data + i, code, sizeof code - 1) == 0) return 1;
  return 0;
}

/* ---- the access token -------------------------------------------------- */

/* Keeps nil, err (on top, popped) as the error of every job of the runs
 * under way that needs the token; runs started later try again. */
static void fetch_failed(lua_State *L, vpp_client *c) {
  vpp_batch *b;
  for (b = c->runs; b; b = b->next) {
    if (b->done == b->n) continue;
    push_state(L, b);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "auth_error");
    lua_pop(L, 1);
    b->auth_failed = 1;
  }
  lua_pop(L, 2);
}

/* Puts the token request on the multi handle; when it cannot be made (a
 * certificate that does not load), the runs get that error. */
static void start_fetch(lua_State *L, vpp_client *c) {
  const char *lines[3];
  vpp_token_request tr;
  vpp_jwt_error e;
  vpp_request rq;
  int rc, k = 0, i;
  if (!vpp_auth_describe(&c->auth, &tr, &e)) {
    vpp_auth_fail(L, &c->auth, &e);
    fetch_failed(L, c);
    return;
  }
  for (i = 0; i < 2; i++)
    if (tr.header[i].len) lines[k++] = tr.header[i].data;
  lines[k] = NULL;
  memset(&rq, 0, sizeof rq);
  rq.post = tr.post;
  rq.url = tr.url.data;
  rq.body = tr.form.data;
  rq.body_len = tr.form.len;
  rq.headers = k ? lines : NULL;
  rq.direct = tr.managed; /* a managed identity's endpoint is this machine's: never a proxy's */
  rc = VPP_PREPARE_NOMEM;
  if (c->fetcher || (c->fetcher = vpp_transfer_new(&c->s, 0))) rc = vpp_transfer_prepare(c->fetcher, &rq);
  vpp_auth_request_free(&tr); /* the transfer has its own copy of the form */
  if (rc == VPP_PREPARED) {
    c->fetcher->job = VPP_TOKEN_JOB;
    c->fetcher->owner = NULL;
    c->fetcher->reply.attempts = c->fetch_attempts;
    if (curl_multi_add_handle(c->multi, c->fetcher->easy) == CURLM_OK) {
      c->fetching = FETCH_RUNNING;
      return;
    }
    vpp_transfer_release(c->fetcher);
  }
  vpp_error_push(L, "auth", 0, VPP_CODE(out_of_memory), "cannot start the token request", NULL);
  fetch_failed(L, c);
}

/* The token for the next job of b: TOKEN_READY with *token set (valid
 * until the next step), TOKEN_PENDING while a token request or the
 * access_token function is under way (*wake lowered to a retry time), or
 * TOKEN_FAILED with nil, err pushed. */
static int job_token(lua_State *L, vpp_batch *b, double now, double *wake, const char **token, size_t *len) {
  vpp_client *c = b->c;
  vpp_auth *a = &c->auth;
  if (a->kind == VPP_CRED_STATIC) {
    *token = a->fixed_token;
    *len = a->fixed_len;
    return TOKEN_READY;
  }
  if (!vpp_auth_cached(a, now)) {
    if (b->auth_failed) {
      lua_pushnil(L);
      push_state(L, b);
      lua_getfield(L, -1, "auth_error");
      lua_remove(L, -2);
      return TOKEN_FAILED;
    }
    if (a->kind == VPP_CRED_FUNCTION) {
      if (c->provided) { /* a token without expiry serves one request */
        c->provided = 0;
        *token = a->token;
        *len = a->token_len;
        return TOKEN_READY;
      }
      c->want_token = 1; /* the driver calls it, between steps */
      return TOKEN_PENDING;
    }
    if (c->fetching == FETCH_RUNNING) return TOKEN_PENDING;
    if (c->fetching == FETCH_WAITING && c->fetch_at > now) {
      if (c->fetch_at < *wake) *wake = c->fetch_at;
      return TOKEN_PENDING;
    }
    if (c->fetching == FETCH_IDLE) c->fetch_attempts = 0;
    start_fetch(L, c);
    return job_token(L, b, now, wake, token, len); /* pending, or failed */
  }
  c->provided = 0;
  *token = a->token;
  *len = a->token_len;
  return TOKEN_READY;
}

/* What the access_token function returned (two values on top, popped):
 * the token for every run, or its error for the runs under way.  1 when
 * it gave a token. */
int vpp_engine_provide(lua_State *L, int client_idx) {
  vpp_client *c = lua_touserdata(L, client_idx);
  int ok = vpp_auth_take_provided(L, &c->auth), saved = c->stack_uv;
  c->want_token = 0;
  c->providing = NULL;
  c->provided = ok;
  if (!ok) {
    enter(L, c, client_idx);
    lua_pushvalue(L, -4);
    lua_pushvalue(L, -4);
    fetch_failed(L, c); /* pops the copies of nil, err */
    lua_pop(L, 4);
    c->stack_uv = saved;
  }
  if (c->evented) vpp_poller_signal(&c->poller);
  return ok;
}

/* The token request ended: retried like a Graph request, else its answer
 * read into the cache, or its error kept for the runs. */
static void fetch_done(lua_State *L, vpp_client *c, vpp_transfer *t) {
  double wait;
  int server, ok;
  c->fetching = FETCH_IDLE;
  c->fetch_attempts++;
  trace(L, c, t, c->fetch_attempts);
  vpp_transfer_release(t);
  if (retryable(&t->reply) && c->fetch_attempts <= c->s.max_retries) {
    server = retry_wait(c, &t->reply, c->fetch_attempts, &wait);
    if (!server || wait <= c->s.max_retry_delay) {
      c->fetching = FETCH_WAITING;
      c->fetch_at = vpp_now() + wait;
      return;
    }
  }
  ok = vpp_auth_accept(L, &c->auth, &t->reply);
  if (ok == 2) {
    start_fetch(L, c); /* Azure Arc's challenge taken: the same request, with the key */
  } else if (!ok) {
    fetch_failed(L, c);
  }
}

/* ---- jobs -------------------------------------------------------------- */

static void end_job(lua_State *L, vpp_batch *b, int j, vpp_transfer *t) {
  int err = t ? 0 : lua_gettop(L), base = lua_gettop(L) - (t ? 0 : 2);
  b->jobs[j].state = JOB_DONE;
  b->done++;
  if (b != b->c->driving) b->c->nudge = 1;
  push_state(L, b);
  b->deliver(L, b, j, t, lua_gettop(L), err);
  lua_settop(L, base);
}

/* Ends job j before any transfer, with the error (nil, err) pushed. */
static void fail_job(lua_State *L, vpp_batch *b, int j) { end_job(L, b, j, NULL); }

static void start_job(lua_State *L, vpp_batch *b, int j, const char *token, size_t len) {
  vpp_client *c = b->c;
  vpp_transfer *t = idle_transfer(c);
  vpp_request rq;
  int rc;
  if (!t) {
    vpp_error_push(L, "transport", 0, VPP_CODE(out_of_memory), "cannot create a libcurl handle", NULL);
    fail_job(L, b, j);
    return;
  }
  memset(&rq, 0, sizeof rq);
  rq.post = b->post;
  rq.method = b->method;
  rq.permission = b->permission;
  if (b->has_body) {
    static const char *const json[] = {"Content-Type: application/json", NULL};
    push_state(L, b);
    lua_getfield(L, -1, "body");
    rq.body = lua_tolstring(L, -1, &rq.body_len); /* anchored by the state table */
    rq.headers = json;
    lua_pop(L, 2);
  }
  if (b->url) {
    rq.url = b->url;
  } else {
    push_state(L, b);
    lua_getfield(L, -1, "urls");
    lua_rawgeti(L, -1, j + 1);
    rq.url = lua_tostring(L, -1); /* anchored by the state table */
    lua_pop(L, 3);
  }
  rq.bearer = token;
  rq.bearer_len = len;
  rq.request_ids = &c->entropy;
  rc = vpp_transfer_prepare(t, &rq);
  if (rc != VPP_PREPARED) {
    if (rc == VPP_PREPARE_BAD_TOKEN)
      vpp_error_push(L, "auth", 0, VPP_CODE(invalid_token), "the access token contains control characters", NULL);
    else if (rc == VPP_PREPARE_NO_RANDOM)
      vpp_error_push(L, "transport", 0, VPP_CODE(no_randomness), "no random bytes for the client-request-id", NULL);
    else
      vpp_error_push(L, "transport", 0, VPP_CODE(out_of_memory), "cannot build the request headers", NULL);
    fail_job(L, b, j);
    return;
  }
  t->auth_generation = c->auth.generation;
  t->reply.attempts = b->jobs[j].attempts;
  t->job = j;
  t->owner = b;
  if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
    vpp_transfer_release(t);
    vpp_error_push(L, "transport", 0, VPP_CODE(start_failed), "cannot start the transfer", NULL);
    fail_job(L, b, j);
    return;
  }
  b->jobs[j].state = JOB_RUNNING;
  b->active++;
}

static void wait_job(vpp_batch *b, int j, double at) {
  b->jobs[j].ready_at = at;
  b->jobs[j].state = JOB_WAITING;
  b->waiting[b->nwaiting++] = j;
}

/* For a deliver function: job j goes again (the next page of a list). */
void vpp_run_requeue(vpp_batch *b, int j) {
  b->jobs[j].attempts = b->jobs[j].reauthenticated = 0;
  b->done--;
  wait_job(b, j, 0);
}

/* A Graph job's transfer ended: follow a redirect, refresh the token once
 * after a 401, retry when throttled, or deliver.  Returns 1 when the job
 * moved on (0: it goes on, redirected). */
static int job_done(lua_State *L, vpp_transfer *t) {
  vpp_batch *b = t->owner;
  vpp_client *c = b->c;
  vpp_job *job = &b->jobs[t->job];
  int j = t->job, server;
  double wait, now;
  trace(L, c, t, job->attempts + 1);
  if (vpp_transfer_redirect(t) && curl_multi_add_handle(c->multi, t->easy) == CURLM_OK) return 0;
  t->reply.attempts = ++job->attempts;
  b->active--;
  vpp_transfer_release(t); /* the headers; the reply stays */
  if (token_rejected(c, &t->reply) && !job->reauthenticated) {
    /* Once per request: a fresh token, then the same request again. */
    job->reauthenticated = 1;
    vpp_auth_drop(&c->auth, t->auth_generation);
    wait_job(b, j, 0);
    return 1;
  }
  if (retryable(&t->reply)) {
    now = vpp_now();
    server = retry_wait(c, &t->reply, job->attempts, &wait);
    hold(c, &t->reply, b->post, server, now + wait);
    /* Never again before the server's Retry-After: a wait above
     * max_retry_delay ends the job (err.retry_after says how long). */
    if (job->attempts <= c->s.max_retries && (!server || wait <= c->s.max_retry_delay)) {
      wait_job(b, j, now + wait); /* a backoff is never above the cap */
      return 1;
    }
  }
  end_job(L, b, j, t);
  return 1;
}

static int route(lua_State *L, vpp_client *c, vpp_transfer *t, CURLcode rc) {
  vpp_transfer_finish(t, rc);
  curl_multi_remove_handle(c->multi, t->easy);
  if (t->job == VPP_TOKEN_JOB) {
    fetch_done(L, c, t);
    return 1;
  }
  return job_done(L, t);
}

/* Handles every finished transfer; returns how many moved on. */
static int collect(lua_State *L, vpp_client *c) {
  CURLMsg *m;
  int left, moved = 0;
  while ((m = curl_multi_info_read(c->multi, &left))) {
    char *priv = NULL;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    moved += route(L, c, (vpp_transfer *)priv, m->data.result); /* m is invalid from here */
  }
  return moved;
}

/* Under a loop, the watchdog of the transfers libcurl has no reason to
 * look at (see vpp_transfer_overdue). */
static int overdue(lua_State *L, vpp_client *c, double now) {
  int i, moved = 0;
  for (i = 0; i <= c->pool_size; i++) {
    vpp_transfer *t = i < c->pool_size ? c->pool[i] : c->fetcher;
    if (t && t->job != VPP_IDLE && vpp_transfer_overdue(t, now)) moved += route(L, c, t, CURLE_ABORTED_BY_CALLBACK);
  }
  return moved;
}

/* The next job that may start now: a retry whose timer ran out, else the
 * next one never started.  Leaves *wake at the earliest pending timer. */
static int next_job(vpp_batch *b, double now, double *wake, int *slot) {
  int i;
  *slot = -1;
  for (i = 0; i < b->nwaiting; i++) {
    double at = b->jobs[b->waiting[i]].ready_at;
    if (at <= now) {
      *slot = i;
      return b->waiting[i];
    }
    if (at < *wake) *wake = at;
  }
  return b->next_job < b->n ? b->next_job : -1;
}

static void take_job(vpp_batch *b, int slot) {
  if (slot < 0)
    b->next_job++;
  else
    b->waiting[slot] = b->waiting[--b->nwaiting];
}

/* Lowers wake to the earliest time a running transfer's watchdog may
 * strike (transfer.c). */
static double watchdog_wake(const vpp_client *c, double wake) {
  int i;
  for (i = 0; i <= c->pool_size; i++) {
    const vpp_transfer *t = i < c->pool_size ? c->pool[i] : c->fetcher;
    if (t && t->job != VPP_IDLE && vpp_transfer_wake(t) < wake) wake = vpp_transfer_wake(t);
  }
  return wake;
}

/* Starts what of b may start now; lowers *wake to its next timer. */
static void start_ready(lua_State *L, vpp_batch *b, double now, double *wake) {
  vpp_client *c = b->c;
  while (b->active < b->concurrency && b->done < b->n) {
    int slot, j = next_job(b, now, wake, &slot), got;
    double held = c->hold_until[b->post], wait;
    const char *token = NULL;
    size_t len = 0;
    if (j < 0) break;
    if (now < held) {
      if (held - now <= c->s.max_retry_delay) {
        if (held < *wake) *wake = held;
        break;
      }
      take_job(b, slot);
      vpp_error_push(L, "http", 429, VPP_CODE(throttled),
                     b->post ? "Graph asked this client to wait before more writes, longer than max_retry_delay"
                             : "Graph asked this client to wait before more reads, longer than max_retry_delay",
                     NULL);
      lua_pushnumber(L, held - now);
      lua_setfield(L, -2, "retry_after");
      fail_job(L, b, j);
      continue;
    }
    got = job_token(L, b, now, wake, &token, &len);
    if (got == TOKEN_PENDING) break;
    if (got == TOKEN_FAILED) {
      take_job(b, slot);
      fail_job(L, b, j);
      continue;
    }
    if ((wait = vpp_rate_take(&c->rate, now, b->post)) > 0) {
      if (now + wait < *wake) *wake = now + wait;
      break;
    }
    take_job(b, slot);
    start_job(L, b, j, token, len);
  }
  if (b->done < b->n && b->deadline_at < *wake) *wake = b->deadline_at;
}

/* Ends every unfinished job of b with one error (cancel, deadline). */
static void end_unfinished(lua_State *L, vpp_batch *b, const char *kind, const char *code, const char *message) {
  vpp_client *c = b->c;
  int j, i;
  for (i = 0; i < c->pool_size; i++)
    if (c->pool[i]->owner == b && c->pool[i]->job != VPP_IDLE) {
      detach(c, c->pool[i]);
      b->active--;
    }
  b->nwaiting = 0;
  b->next_job = b->n;
  for (j = 0; j < b->n; j++) {
    if (b->jobs[j].state == JOB_DONE) continue;
    vpp_error_push(L, kind, 0, code, message, NULL);
    fail_job(L, b, j);
  }
}

/* One pass: stops what was cancelled or is past its deadline, starts what
 * may start, moves libcurl on without waiting, and ends what finished;
 * again while things move. */
static void step(lua_State *L, vpp_client *c) {
  int rounds = 0, moved, running;
  do {
    double now = vpp_now(), wake = HUGE_VAL;
    vpp_batch *b;
    for (b = c->runs; b; b = b->next) {
      if (b->done == b->n) continue;
      if (b->cancelled)
        end_unfinished(L, b, "cancelled", VPP_CODE(cancelled), "client:cancel() ended the call");
      else if (now >= b->deadline_at)
        end_unfinished(L, b, "timeout", VPP_CODE(deadline), "opts.deadline passed before this item finished");
      else
        start_ready(L, b, now, &wake);
    }
    if (c->fetching == FETCH_WAITING && c->fetch_at < wake) wake = c->fetch_at;
    c->wake_at = watchdog_wake(c, wake);
    if (c->evented) {
      int fds[64], what[64], n, i;
      n = vpp_poller_ready(&c->poller, fds, what, 64);
      for (i = 0; i < n; i++)
        curl_multi_socket_action(
            c->multi, fds[i],
            (what[i] & VPP_POLL_IN ? CURL_CSELECT_IN : 0) | (what[i] & VPP_POLL_OUT ? CURL_CSELECT_OUT : 0), &running);
      if (vpp_now() >= c->curl_timer_at) {
        c->curl_timer_at = HUGE_VAL;
        curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
      }
      moved = collect(L, c) + overdue(L, c, vpp_now());
    } else {
      curl_multi_perform(c->multi, &running);
      moved = collect(L, c);
    }
  } while (moved > 0 && ++rounds < 16);
  if (moved > 0) c->wake_at = 0; /* more to do at once */
}

static int step_body(lua_State *L) {
  vpp_client *c = lua_touserdata(L, 1);
  enter(L, c, 1);
  step(L, c);
  return 0;
}

/* One step under a loop, by the driver of run b (client at client_idx).
 * A raise aborts every run under way, then propagates. */
void vpp_engine_step(lua_State *L, int client_idx, vpp_batch *b) {
  vpp_client *c = lua_touserdata(L, client_idx);
  int status;
  lua_pushcfunction(L, step_body);
  lua_pushvalue(L, client_idx);
  c->stepping = 1;
  c->driving = b;
  c->nudge = 0;
  status = lua_pcall(L, 1, 0, 0);
  c->stepping = 0;
  c->driving = NULL;
  if (status == LUA_OK) {
    /* Another run's driver may wait on the poller for what this step
     * ended of its jobs, or to call the access_token function. */
    if (c->nudge || (c->want_token && !c->providing)) vpp_poller_signal(&c->poller);
    return;
  }
  while (c->runs) {
    c->runs->aborted = 1;
    unlink_run(c->runs);
  }
  vpp_poller_signal(&c->poller);
  lua_error(L);
}

/* client:cancel(): every run under way ends at its next step. */
void vpp_engine_cancel(vpp_client *c) {
  vpp_batch *b;
  c->cancels++;
  for (b = c->runs; b; b = b->next) b->cancelled = 1;
  if (c->evented) vpp_poller_signal(&c->poller);
}

/* ---- runs -------------------------------------------------------------- */

/* Pushes the state table of a new run of n jobs on the client at
 * client_idx; the caller fills state.urls (and what its deliver keeps)
 * before starting it.  The run's memory is a userdata with no finalizer:
 * while it is linked, the client's runs table holds it, and the client's
 * own __gc unlinks every run before any of that memory goes. */
/* Readies b (of n jobs) for a new run. */
void vpp_run_reset(vpp_batch *b, int post, int concurrency, vpp_deliver_fn deliver) {
  vpp_job *jobs = b->jobs;
  int *waiting = b->waiting, n = b->n;
  memset(b, 0, sizeof *b);
  memset(jobs, 0, (size_t)n * sizeof(vpp_job));
  b->jobs = jobs;
  b->waiting = waiting;
  b->n = n;
  b->post = post;
  b->permission = post ? VPP_NEEDS_APPS_WRITE : VPP_NEEDS_APPS_READ;
  b->concurrency = concurrency;
  b->deliver = deliver;
  b->deadline_at = HUGE_VAL;
}

vpp_batch *vpp_run_new(lua_State *L, int client_idx, int n, int post, int concurrency, vpp_deliver_fn deliver) {
  size_t jobs = (size_t)n * sizeof(vpp_job), waiting = (size_t)n * sizeof(int);
  vpp_batch *b;
  client_idx = lua_absindex(L, client_idx);
  b = lua_newuserdatauv(L, sizeof *b + jobs + waiting, 1);
  b->jobs = (vpp_job *)(void *)(b + 1);
  b->waiting = (int *)(void *)((char *)b->jobs + jobs);
  b->n = n;
  vpp_run_reset(b, post, concurrency, deliver);
  lua_createtable(L, 2, 4);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "run");
  lua_pushvalue(L, client_idx);
  lua_setfield(L, -2, "client"); /* the client outlives a run it holds */
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, -3, 1);
  lua_remove(L, -2);
  return b;
}

/* Links the run of the state table at state into its client's list. */
void vpp_run_start(lua_State *L, int client_idx, int state) {
  vpp_client *c = lua_touserdata(L, client_idx);
  vpp_batch *b;
  state = lua_absindex(L, state);
  lua_getfield(L, state, "run");
  b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_getiuservalue(L, client_idx, 1);
  lua_getfield(L, -1, "runs");
  lua_pushvalue(L, state);
  lua_rawsetp(L, -2, b);
  lua_pop(L, 2);
  b->c = c;
  b->next = c->runs;
  c->runs = b;
}

/* Takes the run of the state table at state off its client (its
 * transfers detached) and forgets it there; done or not, it is over. */
void vpp_run_abort(lua_State *L, int state) {
  vpp_batch *b;
  state = lua_absindex(L, state);
  lua_getfield(L, state, "run");
  b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, state, "client"); /* also when the engine already unlinked it */
  lua_getiuservalue(L, -1, 1);
  lua_getfield(L, -1, "runs");
  lua_pushnil(L);
  lua_rawsetp(L, -2, b);
  lua_pop(L, 3);
  unlink_run(b);
}

/* The blocking driver: Lua hooks get a chance at least once a second, as
 * do the callbacks, always from here. */
static int drain(lua_State *L, vpp_client *c, int state, vpp_batch *b) {
  int i, n;
  if (c->s.traced) {
    lua_getfield(L, c->stack_uv, "traces");
    n = (int)lua_rawlen(L, -1);
    if (n > 0) {
      lua_newtable(L);
      lua_setfield(L, c->stack_uv, "traces");
      for (i = 1; i <= n; i++) {
        lua_getfield(L, c->stack_uv, "on_request");
        lua_rawgeti(L, -2, i);
        lua_call(L, 1, 0);
      }
    }
    lua_pop(L, 1);
  }
  if (c->want_token) { /* the client is busy: the function cannot use or close it */
    lua_getfield(L, c->stack_uv, "access_token");
    lua_call(L, 0, 2);
    vpp_engine_provide(L, 1);
    return 1;
  }
  if (!b->queued) return 0;
  b->queued = 0;
  lua_getfield(L, state, "events");
  n = lua_istable(L, -1) ? (int)lua_rawlen(L, -1) : 0;
  if (n > 0) {
    lua_newtable(L);
    lua_setfield(L, state, "events");
    for (i = 1; i <= n; i++) {
      lua_getfield(L, state, "on_result");
      lua_rawgeti(L, -2, i);
      lua_getfield(L, state, "reported");
      lua_pushinteger(L, lua_tointeger(L, -1) + 1);
      lua_remove(L, -2);
      lua_pushvalue(L, -1);
      lua_setfield(L, state, "reported");
      lua_pushinteger(L, b->n);
      lua_call(L, 3, 0);
    }
  }
  lua_pop(L, 1);
  return 0;
}

static int block_body(lua_State *L) {
  vpp_client *c = lua_touserdata(L, 1);
  vpp_batch *b = lua_touserdata(L, 3);
  int state = 2;
  double chance = vpp_now(); /* when hooks last had a chance */
  b->stack_state = state;
  enter(L, c, 1);
  for (;;) {
    double wake;
    step(L, c);
    if (drain(L, c, state, b)) continue; /* a token: start at once */
    if (b->done == b->n) break;
    if ((wake = vpp_engine_wake(c)) > 0) {
      int ms = wake > 1 ? 1000 : (int)ceil(wake * 1000);
      curl_multi_poll(c->multi, NULL, 0, ms, NULL);
      if (vpp_now() - chance >= 0.25) {
        chance = vpp_now();
        lua_rawgetp(L, LUA_REGISTRYINDEX, &noop_key);
        lua_call(L, 0, 0); /* a hook (the interpreter's SIGINT one) may raise here */
      }
    }
  }
  return 0;
}

/* Runs b, whose state table is at state, to its end, blocking: the one
 * run of the client (so it needs no place in the runs table). */
void vpp_run_block(lua_State *L, int client_idx, int state, vpp_batch *b) {
  vpp_client *c = lua_touserdata(L, client_idx);
  int status;
  client_idx = lua_absindex(L, client_idx);
  state = lua_absindex(L, state);
  b->c = c;
  b->next = c->runs;
  c->runs = b;
  lua_pushcfunction(L, block_body);
  lua_pushvalue(L, client_idx);
  lua_pushvalue(L, state);
  lua_pushlightuserdata(L, b);
  c->busy = 1;
  status = lua_pcall(L, 3, 0, 0);
  c->busy = 0;
  b->stack_state = 0;
  unlink_run(b);
  if (status != LUA_OK) lua_error(L);
}

void vpp_engine_setup(lua_State *L) {
  luaL_loadstring(L, "return");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &noop_key);
}
