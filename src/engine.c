/* The one place that sends requests: a run of jobs on the client's multi
 * handle, as many at once as the concurrency allows, each retried on its own
 * timer when throttled, all under the proactive rate limit.  A single call
 * is a run of one job.
 *
 * The loop runs inside lua_pcall: deliver functions and access_token
 * functions (Lua) are called between libcurl calls, never from libcurl
 * callbacks, and whatever they raise -- or an allocation failure -- is
 * re-raised only after every transfer is detached. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vpp.h"

enum { JOB_QUEUED, JOB_RUNNING, JOB_WAITING, JOB_DONE };

double vpp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double epoch_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An idle transfer of the pool, growing the pool when all are busy. */
static vpp_transfer *idle_transfer(vpp_client *c) {
  vpp_transfer **pool;
  int i;
  for (i = 0; i < c->pool_size; i++)
    if (c->pool[i]->job < 0) return c->pool[i];
  pool = realloc(c->pool, (size_t)(c->pool_size + 1) * sizeof(vpp_transfer *));
  if (!pool) return NULL;
  c->pool = pool;
  if (!(pool[c->pool_size] = vpp_transfer_new(c))) return NULL;
  return pool[c->pool_size++];
}

static const char *job_url(lua_State *L, int j) {
  const char *url;
  if (lua_type(L, VPP_RUN_URLS) == LUA_TSTRING) return lua_tostring(L, VPP_RUN_URLS);
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

static void start_job(lua_State *L, vpp_batch *b, int j) {
  vpp_client *c = b->c;
  vpp_transfer *t = idle_transfer(c);
  if (!t) {
    vpp_error_push(L, "transport", 0, "OUT_OF_MEMORY", "cannot create a libcurl handle", NULL);
    end_job(L, b, j, NULL);
    return;
  }
  t->reply.attempts = b->jobs[j].attempts;
  if (!vpp_transfer_prepare(L, t, VPP_RUN_CLIENT, b->post, job_url(L, j))) {
    end_job(L, b, j, NULL);
    return;
  }
  t->job = j;
  if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK) {
    vpp_transfer_release(t);
    vpp_error_push(L, "transport", 0, "FAILED_INIT", "cannot start the transfer", NULL);
    end_job(L, b, j, NULL);
    return;
  }
  b->jobs[j].state = JOB_RUNNING;
  b->active++;
}

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

/* Graph's 401 for an expired or revoked token, when a new one can be had. */
static int token_rejected(const vpp_client *c, const vpp_reply *r) {
  static const char code[] = "InvalidAuthenticationToken";
  size_t i;
  if (r->curl_code != CURLE_OK || r->status != 401 || !vpp_auth_refreshable(c)) return 0;
  for (i = 0; i + sizeof code - 1 <= r->body.len; i++)
    if (memcmp(r->body.data + i, code, sizeof code - 1) == 0) return 1;
  return 0;
}

static double retry_delay(vpp_client *c, const vpp_reply *r, int attempt) {
  double delay;
  if (!r->retry_after[0] || !vpp_retry_after(r->retry_after, epoch_now(), &delay))
    delay = vpp_backoff(attempt, c->max_retry_delay, (double)(vpp_client_random(c) >> 11) / 9007199254740992.0);
  return delay > c->max_retry_delay ? c->max_retry_delay : delay;
}

/* Handles every finished transfer; returns how many jobs moved on. */
static int collect(lua_State *L, vpp_batch *b) {
  vpp_client *c = b->c;
  CURLMsg *m;
  int left, moved = 0;
  while ((m = curl_multi_info_read(c->multi, &left))) {
    vpp_transfer *t;
    vpp_job *job;
    char *priv = NULL;
    int j;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    t = (vpp_transfer *)priv;
    vpp_transfer_finish(t, m->data.result);
    curl_multi_remove_handle(c->multi, t->easy); /* m is invalid from here */
    vpp_transfer_trace(L, VPP_RUN_CLIENT, t, b->post ? "POST" : "GET", b->jobs[t->job].attempts + 1);
    if (vpp_transfer_redirect(t) && curl_multi_add_handle(c->multi, t->easy) == CURLM_OK) continue;
    j = t->job;
    job = &b->jobs[j];
    t->reply.attempts = ++job->attempts;
    b->active--;
    moved++;
    vpp_transfer_release(t); /* the headers; the reply stays */
    if (token_rejected(c, &t->reply) && !job->reauthenticated) {
      /* Once per request: a fresh token, then the same request again. */
      job->reauthenticated = 1;
      vpp_auth_drop(c, t->auth_generation);
      job->ready_at = 0;
      job->state = JOB_WAITING;
      b->waiting[b->nwaiting++] = j;
      continue;
    }
    if (retryable(&t->reply) && job->attempts <= c->max_retries) {
      job->ready_at = vpp_now() + retry_delay(c, &t->reply, job->attempts);
      job->state = JOB_WAITING;
      b->waiting[b->nwaiting++] = j;
      continue;
    }
    end_job(L, b, j, t);
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

static int engine_body(lua_State *L) {
  vpp_batch *b = lua_touserdata(L, 1);
  vpp_client *c = b->c;
  while (b->done < b->n) {
    double now = vpp_now(), wake = HUGE_VAL;
    int running, timeout_ms;
    while (b->active < b->concurrency && b->done < b->n) {
      int slot, j = next_job(b, now, &wake, &slot);
      double wait;
      if (j < 0) break;
      if ((wait = vpp_rate_take(&c->rate, now, b->post)) > 0) {
        if (now + wait < wake) wake = now + wait;
        break;
      }
      take_job(b, slot);
      start_job(L, b, j);
    }
    if (b->done == b->n) break;
    curl_multi_perform(c->multi, &running);
    if (collect(L, b) > 0) continue; /* start the next ones at once */
    timeout_ms = 1000;
    if (wake != HUGE_VAL) {
      double ms = ceil((wake - vpp_now()) * 1000);
      if (ms < timeout_ms) timeout_ms = ms < 0 ? 0 : (int)ms;
    }
    curl_multi_poll(c->multi, NULL, 0, timeout_ms, NULL);
  }
  return 0;
}

static void detach_all(vpp_client *c) {
  int i;
  for (i = 0; i < c->pool_size; i++) {
    vpp_transfer *t = c->pool[i];
    if (t->job >= 0) {
      curl_multi_remove_handle(c->multi, t->easy);
      vpp_transfer_release(t);
    }
  }
}

/* Runs b.  The stack holds, on top: the client, the URLs (a string for one
 * job, else a table), and nextra values for the deliver function. */
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
  status = lua_pcall(L, 3 + nextra, 0, 0);
  detach_all(b->c);
  b->c->busy = 0;
  if (status != LUA_OK) lua_error(L);
}

static void one_deliver(lua_State *L, vpp_batch *b, int j, vpp_transfer *t) {
  (void)b;
  (void)j;
  if (!t) {
    lua_setfield(L, VPP_RUN_EXTRA, "err");
    lua_pop(L, 1);
  }
}

/* One request to the URL on top of the stack.  Returns the transfer holding
 * the reply (which may be an HTTP or transport failure), or NULL with nil,
 * err pushed when it could not be sent at all. */
vpp_transfer *vpp_engine_one(lua_State *L, vpp_client *c, int post, int client_idx) {
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
  lua_pushvalue(L, -2); /* the URL */
  lua_newtable(L);      /* where one_deliver leaves an error */
  lua_pushvalue(L, -1);
  lua_insert(L, -4);
  vpp_engine_run(L, &b, 1);
  lua_getfield(L, -1, "err");
  if (!lua_isnil(L, -1)) {
    lua_remove(L, -2);
    lua_pushnil(L);
    lua_insert(L, -2);
    return NULL;
  }
  lua_pop(L, 2);
  return b.last;
}
