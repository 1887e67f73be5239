/* The one place that sends requests: a run of jobs on the client's multi
 * handle, as many at once as the concurrency allows, each retried on its own
 * timer when throttled, all under the proactive rate limit and Graph's own
 * Retry-After holds.  A single call is a run of one job.  Token requests
 * (identity platform, IMDS) run on the same multi handle: the jobs that
 * need the token wait for it, every other transfer goes on.
 *
 * The loop runs inside lua_pcall: deliver functions, on_request and
 * access_token functions (Lua) are called between libcurl calls, never from
 * libcurl callbacks, and whatever they raise -- or an allocation failure --
 * is re-raised only after every transfer is detached. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

enum { JOB_QUEUED, JOB_RUNNING, JOB_WAITING, JOB_DONE };
enum { FETCH_IDLE, FETCH_RUNNING, FETCH_WAITING };
enum { TOKEN_READY, TOKEN_PENDING, TOKEN_FAILED };

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

static void detach_all(vpp_client *c) {
  int i;
  for (i = 0; i < c->pool_size; i++)
    if (c->pool[i]->job != VPP_IDLE) detach(c, c->pool[i]);
  if (c->fetcher && c->fetcher->job != VPP_IDLE) detach(c, c->fetcher);
  c->fetching = FETCH_IDLE;
}

/* Frees every handle; safe at any time, even from a __gc that runs while
 * a run is under way (lua_close from inside a callback). */
void vpp_engine_release(vpp_client *c) {
  int i;
  if (c->multi) detach_all(c);
  for (i = 0; i < c->pool_size; i++) vpp_transfer_free(c->pool[i]);
  free(c->pool);
  c->pool = NULL;
  c->pool_size = 0;
  vpp_transfer_free(c->fetcher);
  c->fetcher = NULL;
  if (c->multi) {
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
  }
}

/* ---- traces ------------------------------------------------------------ */

/* Hands a finished exchange to the client's on_request function, if it has
 * one (the CLI's --verbose, or a script's own log).  Only what is safe to
 * log goes out: method, URL (a token request's without its query), status,
 * libcurl's error name, time and ids; no header and no body, so no token
 * and no secret.  Runs between libcurl calls, so the function may raise. */
static void trace(lua_State *L, vpp_client *c, vpp_transfer *t, int attempt) {
  const vpp_reply *r = &t->reply;
  int token = t->job == VPP_TOKEN_JOB;
  char *method = NULL, *url = NULL;
  double seconds = 0;
  if (!c->s.traced) return; /* no table lookups per request otherwise */
  lua_getiuservalue(L, VPP_RUN_CLIENT, 1);
  lua_getfield(L, -1, "on_request");
  lua_remove(L, -2);
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
  lua_call(L, 1, 0);
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

/* Keeps nil, err (on top) as the error of every job of this run that needs
 * the token, and pops it. */
static void fetch_failed(lua_State *L, vpp_client *c) {
  c->failed_run = c->run;
  lua_getiuservalue(L, VPP_RUN_CLIENT, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "auth_error");
  lua_pop(L, 2);
}

static void push_fetch_error(lua_State *L) {
  lua_pushnil(L);
  lua_getiuservalue(L, VPP_RUN_CLIENT, 1);
  lua_getfield(L, -1, "auth_error");
  lua_remove(L, -2);
}

/* Puts the token request on the multi handle: 1; or 0 when it cannot be
 * made (a certificate that does not load): the run's jobs get that error. */
static int start_fetch(lua_State *L, vpp_client *c) {
  static const char *const metadata[] = {"Metadata: true", NULL};
  vpp_token_request tr;
  vpp_jwt_error e;
  vpp_request rq;
  int rc;
  if (!vpp_auth_describe(&c->auth, &tr, &e)) {
    vpp_error_push(L, "auth", 0, e.code, e.message, NULL);
    fetch_failed(L, c);
    return 0;
  }
  memset(&rq, 0, sizeof rq);
  rq.post = tr.post;
  rq.url = tr.url.data;
  rq.body = tr.form.data;
  rq.body_len = tr.form.len;
  rq.headers = tr.managed ? metadata : NULL;
  rc = VPP_PREPARE_NOMEM;
  if (c->fetcher || (c->fetcher = vpp_transfer_new(&c->s, 0))) rc = vpp_transfer_prepare(c->fetcher, &rq);
  vpp_auth_request_free(&tr); /* the transfer has its own copy of the form */
  if (rc == VPP_PREPARED) {
    c->fetcher->job = VPP_TOKEN_JOB;
    c->fetcher->reply.attempts = c->fetch_attempts;
    if (curl_multi_add_handle(c->multi, c->fetcher->easy) == CURLM_OK) {
      c->fetching = FETCH_RUNNING;
      return 1;
    }
    vpp_transfer_release(c->fetcher);
  }
  vpp_error_push(L, "auth", 0, VPP_CODE(out_of_memory), "cannot start the token request", NULL);
  fetch_failed(L, c);
  return 0;
}

/* The token for the next job: TOKEN_READY with *token set (valid until the
 * next call), TOKEN_PENDING while a token request runs or waits (*wake
 * lowered to its retry time), or TOKEN_FAILED with nil, err pushed. */
static int job_token(lua_State *L, vpp_client *c, double now, double *wake, const char **token, size_t *len) {
  vpp_auth *a = &c->auth;
  if (a->kind == VPP_CRED_STATIC) {
    *token = a->fixed_token;
    *len = a->fixed_len;
    return TOKEN_READY;
  }
  if (!vpp_auth_cached(a, now)) {
    if (a->kind == VPP_CRED_FUNCTION) {
      int ok;
      lua_getiuservalue(L, VPP_RUN_CLIENT, 1);
      ok = vpp_auth_call_provider(L, a, lua_gettop(L));
      if (!ok) {
        lua_remove(L, -3);
        return TOKEN_FAILED;
      }
      lua_pop(L, 1);
    } else if (c->failed_run == c->run) {
      push_fetch_error(L);
      return TOKEN_FAILED;
    } else if (c->fetching == FETCH_RUNNING) {
      return TOKEN_PENDING;
    } else if (c->fetching == FETCH_WAITING && c->fetch_at > now) {
      if (c->fetch_at < *wake) *wake = c->fetch_at;
      return TOKEN_PENDING;
    } else {
      if (c->fetching == FETCH_IDLE) c->fetch_attempts = 0;
      if (!start_fetch(L, c)) {
        push_fetch_error(L);
        return TOKEN_FAILED;
      }
      return TOKEN_PENDING;
    }
  }
  *token = a->token;
  *len = a->token_len;
  return TOKEN_READY;
}

/* The token request ended: retried like a Graph request, else its answer
 * read into the cache, or its error kept for the run. */
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
  if (!ok) fetch_failed(L, c);
}

/* ---- jobs -------------------------------------------------------------- */

static const char *job_url(lua_State *L, int j) {
  const char *url;
  if (lua_type(L, VPP_RUN_URLS) == LUA_TLIGHTUSERDATA) return lua_touserdata(L, VPP_RUN_URLS);
  lua_rawgeti(L, VPP_RUN_URLS, j + 1);
  url = lua_tostring(L, -1);
  lua_pop(L, 1); /* still anchored by the table */
  return url;
}

static void end_job(lua_State *L, vpp_batch *b, int j, vpp_transfer *t) {
  b->jobs[j].state = JOB_DONE;
  b->done++;
  b->last = t;
  b->deliver(L, b, j, t);
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
  rq.url = job_url(L, j);
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

/* A Graph job's transfer ended: follow a redirect, refresh the token once
 * after a 401, retry when throttled, or deliver.  Returns 1 when the job
 * moved on (0: it goes on, redirected). */
static int job_done(lua_State *L, vpp_batch *b, vpp_transfer *t) {
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

/* Handles every finished transfer; returns how many moved on. */
static int collect(lua_State *L, vpp_batch *b) {
  vpp_client *c = b->c;
  CURLMsg *m;
  int left, moved = 0;
  while ((m = curl_multi_info_read(c->multi, &left))) {
    vpp_transfer *t;
    char *priv = NULL;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    t = (vpp_transfer *)priv;
    vpp_transfer_finish(t, m->data.result);
    curl_multi_remove_handle(c->multi, t->easy); /* m is invalid from here */
    if (t->job == VPP_TOKEN_JOB) {
      fetch_done(L, c, t);
      moved++;
    } else {
      moved += job_done(L, b, t);
    }
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
  return b->next < b->n ? b->next : -1;
}

static void take_job(vpp_batch *b, int slot) {
  if (slot < 0)
    b->next++;
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

/* Starts what may start now; returns the monotonic time of the next timer
 * (HUGE_VAL for none). */
static double start_ready(lua_State *L, vpp_batch *b, double now) {
  vpp_client *c = b->c;
  double wake = HUGE_VAL;
  while (b->active < b->concurrency && b->done < b->n) {
    int slot, j = next_job(b, now, &wake, &slot), got;
    double held = c->hold_until[b->post], wait;
    const char *token = NULL;
    size_t len = 0;
    if (j < 0) break;
    if (now < held) {
      if (held - now <= c->s.max_retry_delay) {
        if (held < wake) wake = held;
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
    got = job_token(L, c, now, &wake, &token, &len);
    if (got == TOKEN_PENDING) break;
    if (got == TOKEN_FAILED) {
      take_job(b, slot);
      fail_job(L, b, j);
      continue;
    }
    if ((wait = vpp_rate_take(&c->rate, now, b->post)) > 0) {
      if (now + wait < wake) wake = now + wait;
      break;
    }
    take_job(b, slot);
    start_job(L, b, j, token, len);
  }
  if (c->fetching == FETCH_WAITING && c->fetch_at < wake) wake = c->fetch_at;
  return watchdog_wake(c, wake);
}

static int engine_body(lua_State *L) {
  vpp_batch *b = lua_touserdata(L, 1);
  vpp_client *c = b->c;
  while (b->done < b->n) {
    double wake = start_ready(L, b, vpp_now());
    int running, timeout_ms = 1000;
    if (b->done == b->n) break;
    curl_multi_perform(c->multi, &running);
    if (collect(L, b) > 0) continue; /* start the next ones at once */
    if (wake != HUGE_VAL) {
      double ms = ceil((wake - vpp_now()) * 1000);
      if (ms < timeout_ms) timeout_ms = ms < 0 ? 0 : (int)ms;
    }
    curl_multi_poll(c->multi, NULL, 0, timeout_ms, NULL);
  }
  lua_settop(L, VPP_RUN_EXTRA);
  return 1; /* a single call's error, if any (one_deliver) */
}

/* Runs b.  The stack holds, on top: the client, the URLs (a C string as a
 * light userdata for one job, else a table of strings), and nextra (at
 * least 1) values for the deliver function; they are replaced by one
 * value: what the deliver function left in the first of them. */
void vpp_engine_run(lua_State *L, vpp_batch *b, int nextra) {
  int base = lua_gettop(L) - (2 + nextra), status;
  b->next = b->done = b->active = b->nwaiting = 0;
  b->last = NULL;
  b->c->run++;
  lua_pushcfunction(L, engine_body);
  lua_insert(L, base + 1);
  lua_pushlightuserdata(L, b);
  lua_insert(L, base + 2);
  b->c->busy = 1;
  status = lua_pcall(L, 3 + nextra, 1, 0);
  detach_all(b->c);
  b->c->busy = 0;
  if (status != LUA_OK) lua_error(L);
}

static void one_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t) {
  (void)b;
  (void)j;
  if (!t) {
    lua_replace(L, VPP_RUN_EXTRA); /* the err; nil below it */
    lua_pop(L, 1);
  }
}

/* One request to url (kept alive by the caller).  Returns the transfer
 * holding the reply (which may be an HTTP or transport failure), or NULL
 * with nil, err pushed when it could not be sent at all. */
vpp_transfer *vpp_engine_one(lua_State *L, vpp_client *c, int post, int client_idx, const char *url) {
  vpp_job job = {0, 0, JOB_QUEUED, 0};
  int waiting;
  vpp_batch b;
  b.c = c;
  b.n = 1;
  b.post = post;
  b.concurrency = 1;
  b.jobs = &job;
  b.waiting = &waiting;
  b.deliver = one_deliver;
  lua_pushvalue(L, client_idx);
  lua_pushlightuserdata(L, (void *)url);
  lua_pushnil(L); /* where one_deliver leaves an error */
  vpp_engine_run(L, &b, 1);
  if (!lua_isnil(L, -1)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return NULL;
  }
  lua_pop(L, 1);
  return b.last;
}
