/* One easy handle and the exchange it carries: a request prepared from a
 * URL, a method, a body, header lines and a bearer token, and the libcurl
 * callbacks that fill its vpp_reply.  It calls neither Lua nor credential
 * code: the engine decides what to send and what a reply means. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#include "vpp.h"

#define VPP_MAX_REDIRECTS   5
#define VPP_KEEP_BODY_BYTES ((size_t)1024 * 1024)

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  vpp_transfer *t = ud;
  size_t n = size * nmemb;
  if (n > (size_t)t->settings->max_response_bytes - t->reply.body.len) {
    t->reply.too_large = 1;
    return 0; /* aborts the transfer at once */
  }
  if (!vpp_buf_append(&t->reply.body, data, n)) {
    t->reply.out_of_memory = 1;
    return 0;
  }
  return n;
}

static void copy_header_value(char *dst, size_t size, const char *v, size_t n) {
  while (n && (*v == ' ' || *v == '\t')) v++, n--;
  while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ')) n--;
  if (n >= size) n = size - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

/* Whether the header line starts with "name:" (name in lower case), in
 * any case. */
static int header_is(const char *line, size_t n, const char *name, size_t len) {
  size_t i;
  if (n <= len || line[len] != ':') return 0;
  for (i = 0; i < len; i++)
    if (tolower((unsigned char)line[i]) != name[i]) return 0;
  return 1;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  vpp_reply *r = &((vpp_transfer *)ud)->reply;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new response (after a redirect or a 100): forget the last one's. */
    r->request_id[0] = r->retry_after[0] = r->date[0] = r->challenge[0] = '\0';
    r->body.len = 0;
  } else if (n > 17 && (data[0] | 0x20) == 'w') { /* an identity endpoint's challenge (Azure Arc) */
    if (header_is(data, n, "www-authenticate", 16))
      copy_header_value(r->challenge, sizeof r->challenge, data + 17, n - 17);
  } else if (n > 5 && (data[0] | 0x20) == 'd') {
    if (header_is(data, n, "date", 4)) copy_header_value(r->date, sizeof r->date, data + 5, n - 5);
  } else if (n > 11 && (data[0] | 0x20) == 'r') { /* request-id, retry-after */
    if (header_is(data, n, "request-id", 10))
      copy_header_value(r->request_id, sizeof r->request_id, data + 11, n - 11);
    else if (header_is(data, n, "retry-after", 11))
      copy_header_value(r->retry_after, sizeof r->retry_after, data + 12, n - 12);
  }
  return n;
}

/* The one watchdog of a transfer, called by libcurl at least once a second
 * in every phase (resolving and connecting included) and whenever bytes
 * move: it ends the transfer when the whole request has taken `timeout`,
 * when no request was sent within `connect_timeout` (resolving, connecting
 * and the TLS handshake), or when no byte has moved either way for
 * `stall_timeout` (waiting for the answer included).  Doing this here
 * rather than through libcurl's timeout options saves libcurl two timers
 * per request, about 2% of a call. */
static int judge(vpp_transfer *t, double now, curl_off_t moved) {
  if (now >= t->started_at + t->settings->timeout) {
    t->reply.watchdog = VPP_TIMED_OUT;
    return 1; /* CURLE_ABORTED_BY_CALLBACK, reported as a timeout */
  }
  if (moved != t->moved) {
    t->moved = moved;
    t->active_at = now;
  } else if (now - t->active_at >= t->settings->stall_timeout) {
    t->reply.watchdog = VPP_STALLED;
    return 1;
  } else if (now - t->started_at >= t->settings->connect_timeout && !t->reply.sent) {
    long sent = 0;
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
    if (sent > 0) {
      t->reply.sent = 1;
    } else {
      t->reply.watchdog = VPP_NOT_CONNECTED;
      return 1;
    }
  }
  return 0;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  (void)dltotal;
  (void)ultotal;
  return judge(ud, vpp_now(), dlnow + ulnow);
}

/* The watchdog asked from outside: driven by socket events, libcurl calls
 * on_progress only for a transfer that has something to do, so a stalled
 * one is judged here when its time comes.  1: end it now. */
int vpp_transfer_overdue(vpp_transfer *t, double now) {
  curl_off_t down = 0, up = 0;
  if (now < vpp_transfer_wake(t)) return 0;
  curl_easy_getinfo(t->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
  curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &up);
  return judge(t, now, down + up);
}

/* The earliest time on_progress may end t, so that the loop can wake for
 * it (libcurl calls back at least once a second, timeouts are wanted to
 * the millisecond). */
double vpp_transfer_wake(const vpp_transfer *t) {
  const vpp_settings *s = t->settings;
  double at = t->active_at + s->stall_timeout;
  if (t->started_at + s->timeout < at) at = t->started_at + s->timeout;
  if (!t->reply.sent && t->started_at + s->connect_timeout < at) at = t->started_at + s->connect_timeout;
  return at;
}

/* A fresh easy handle with the client's settings; NULL when out of memory.
 * pipewait: over TLS, wait to multiplex on one HTTP/2 connection rather
 * than open more (on plain HTTP/1.1 this would serialise the transfers). */
vpp_transfer *vpp_transfer_new(const vpp_settings *s, int pipewait) {
  vpp_transfer *t = calloc(1, sizeof *t);
  CURL *e;
  if (!t) return NULL;
  t->easy = e = curl_easy_init();
  if (!e) {
    free(t);
    return NULL;
  }
  t->settings = s;
  t->job = VPP_IDLE;
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->reply.curl_message);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  /* gzip alone: what Graph compresses with, and every header byte costs
   * libcurl work on each request. */
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip");
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  if (pipewait) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* see vpp_transfer_redirect */
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
  /* Timeouts: see on_progress.  (libcurl's own low-speed limit averages
   * over seconds, so a trickle before a stall would hide it.) */
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max_response_bytes);
  if (s->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, s->ca_file);
  if (s->proxy) curl_easy_setopt(e, CURLOPT_PROXY, s->proxy);
  if (s->proxy_auth) curl_easy_setopt(e, CURLOPT_PROXYAUTH, s->proxy_auth);
  return t;
}

#define RID_PREFIX  "client-request-id: "
#define AUTH_PREFIX "Authorization: Bearer "

static int add_header(vpp_transfer *t, const char *line) {
  struct curl_slist *h = curl_slist_append(t->headers, line);
  if (!h) return 0;
  t->headers = h;
  return 1;
}

static int add_auth_header(vpp_transfer *t, const char *token, size_t len) {
  size_t n = sizeof AUTH_PREFIX - 1 + len;
  char *line = malloc(n + 1);
  int ok;
  if (!line) return 0;
  memcpy(line, AUTH_PREFIX, sizeof AUTH_PREFIX - 1);
  memcpy(line + sizeof AUTH_PREFIX - 1, token, len);
  line[n] = '\0';
  ok = add_header(t, line);
  vpp_wipe(line, n);
  free(line);
  return ok;
}

/* A token with a control character (CR, LF, NUL, ...) would split or cut
 * the header line: refuse it rather than send it. */
static int header_safe(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return 1;
}

/* Forgets the last exchange (a large body buffer included) and starts the
 * watchdog's clocks.  The attempt count is the engine's, and stays. */
static void reset(vpp_transfer *t) {
  vpp_reply *r = &t->reply;
  if (r->body.cap > VPP_KEEP_BODY_BYTES) vpp_buf_free(&r->body);
  r->body.len = 0;
  r->status = 0;
  r->curl_code = CURLE_OK;
  r->too_large = r->header_too_large = r->out_of_memory = r->redirect_refused = r->redirects = r->sent = 0;
  r->watchdog = 0;
  r->request_id[0] = r->retry_after[0] = r->curl_message[0] = r->client_request_id[0] = r->date[0] = '\0';
  r->proxy[0] = r->challenge[0] = '\0';
  r->proxy_status = 0;
  t->active_at = t->started_at = vpp_now();
  t->moved = 0;
}

/* A Graph request's header lines are the same from one request to the next
 * but for the client-request-id: the list of the last one is kept (and
 * wiped when the token changes or the handle goes), and only the id is
 * written anew (building it is some 2% of a request). */
static int reusable(const vpp_transfer *t, const vpp_request *rq) {
  const struct curl_slist *auth;
  if (!t->kept || t->kept_post != rq->post || rq->headers || rq->body_len || !rq->bearer || !rq->request_ids) return 0;
  auth = t->headers->next;
  return strlen(auth->data) == sizeof AUTH_PREFIX - 1 + rq->bearer_len &&
         memcmp(auth->data + sizeof AUTH_PREFIX - 1, rq->bearer, rq->bearer_len) == 0;
}

static void free_headers(vpp_transfer *t) {
  struct curl_slist *h;
  for (h = t->headers; h; h = h->next) vpp_wipe(h->data, strlen(h->data));
  curl_slist_free_all(t->headers);
  t->headers = NULL;
  t->kept = 0;
  if (t->easy) curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL);
}

/* Ends the exchange: a token request's headers and body (the secret, the
 * assertion) are wiped and freed; a Graph request's header lines are kept
 * for the next one (see reusable). */
void vpp_transfer_release(vpp_transfer *t) {
  if (!t->kept) free_headers(t);
  if (t->easy) curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, NULL);
  vpp_buf_wipe(&t->body);
  t->job = VPP_IDLE;
}

void vpp_transfer_free(vpp_transfer *t) {
  if (!t) return;
  vpp_transfer_release(t);
  free_headers(t);
  curl_easy_cleanup(t->easy);
  vpp_buf_free(&t->reply.body);
  free(t);
}

static int build_headers(vpp_transfer *t, const vpp_request *rq) {
  const char *const *h;
  int ok = 1;
  free_headers(t);
  if (rq->request_ids) {
    char line[64];
    snprintf(line, sizeof line, RID_PREFIX "%s", t->reply.client_request_id);
    ok = add_header(t, line);
  }
  if (rq->bearer) ok = ok && add_auth_header(t, rq->bearer, rq->bearer_len);
  ok = ok && add_header(t, "Accept: application/json");
  /* A header line costs libcurl half what CURLOPT_USERAGENT does (it
   * formats that one afresh for every request). */
  if (t->settings->user_agent_line) ok = ok && add_header(t, t->settings->user_agent_line);
  for (h = rq->headers; ok && h && *h; h++) ok = add_header(t, *h);
  if (rq->post && rq->body_len == 0) ok = ok && add_header(t, "Content-Type:");
  if (!ok) return 0;
  t->kept = rq->request_ids && rq->bearer && !rq->headers && !rq->body_len;
  t->kept_post = rq->post;
  return 1;
}

/* Readies t for the request rq: VPP_PREPARED, or why not (nothing is kept
 * then).  With a body, POST exactly it; "Content-Type:" with no value stops
 * libcurl's form default on an empty one. */
int vpp_transfer_prepare(vpp_transfer *t, const vpp_request *rq) {
  vpp_reply *r = &t->reply;
  if (rq->bearer && !header_safe(rq->bearer, rq->bearer_len)) return VPP_PREPARE_BAD_TOKEN;
  reset(t);
  if (rq->request_ids && !vpp_uuid(rq->request_ids, r->client_request_id)) return VPP_PREPARE_NO_RANDOM;
  if (reusable(t, rq)) {
    memcpy(t->headers->data + sizeof RID_PREFIX - 1, r->client_request_id, 36);
  } else if (!build_headers(t, rq) || (rq->body_len && !vpp_buf_append(&t->body, rq->body, rq->body_len))) {
    vpp_transfer_release(t);
    free_headers(t);
    return VPP_PREPARE_NOMEM;
  }
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(t->easy, CURLOPT_URL, rq->url);
  if (rq->direct != t->direct) {
    /* "" is no proxy, not even one from the environment; NULL is the setting's, or libcurl's rules */
    curl_easy_setopt(t->easy, CURLOPT_PROXY, rq->direct ? "" : t->settings->proxy);
    t->direct = rq->direct;
  }
  r->post = rq->post;
  r->permission = rq->permission;
  if (rq->method || t->custom) {
    curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, rq->method);
    t->custom = rq->method != NULL;
  }
  if (rq->post) {
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body.len ? t->body.data : "");
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)t->body.len);
  } else {
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
  }
  return VPP_PREPARED;
}

/* After a failure: when it happened at a proxy, which (reply.proxy) and
 * what it answered to CONNECT.  A proxy that refused the tunnel, could not
 * be resolved, or could not be reached; the proxy is the setting's, or the
 * one libcurl took from the environment for this URL. */
static void blame_proxy(vpp_transfer *t) {
  vpp_reply *r = &t->reply;
  CURLcode rc = r->curl_code;
  long connect_code = 0;
  const char *proxy = NULL;
  char *url = NULL;
  vpp_origin o;
  curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &connect_code);
  if (!(connect_code >= 300 || rc == CURLE_COULDNT_RESOLVE_PROXY ||
#if LIBCURL_VERSION_NUM >= 0x075400
        rc == CURLE_PROXY ||
#endif
        rc == CURLE_COULDNT_CONNECT || r->watchdog == VPP_NOT_CONNECTED))
    return;
  if (t->direct) return;
  if (t->settings->proxy) {
    snprintf(r->proxy, sizeof r->proxy, "%s", t->settings->proxy_shown);
  } else if (curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK && url && vpp_url_origin(url, &o) &&
             (proxy = vpp_url_env_proxy(&o)) && vpp_url_proxy_origin(proxy, &o)) {
    snprintf(r->proxy, sizeof r->proxy, "%s://%s:%s", o.scheme, o.host, o.port);
  }
  if (r->proxy[0] && connect_code >= 300) r->proxy_status = connect_code;
}

/* Records how the exchange ended (the handle is off the multi handle). */
void vpp_transfer_finish(vpp_transfer *t, CURLcode rc) {
  long sent = 0;
  t->reply.curl_code = rc;
  /* libcurl before 8.6 refuses a header line over CURL_MAX_HTTP_HEADER
   * (100 KiB) as OUT_OF_MEMORY, with no message (8.6 says TOO_LARGE).
   * When memory is plainly there, that is what it was. */
#if LIBCURL_VERSION_NUM >= 0x080600
  if (rc == CURLE_TOO_LARGE) t->reply.header_too_large = 1;
#endif
  if (rc == CURLE_OUT_OF_MEMORY && !t->reply.out_of_memory) {
    void *probe = malloc((size_t)1 << 20);
    t->reply.header_too_large = probe != NULL;
    free(probe);
  }
  if (t->reply.watchdog) {
    static const char *const why[] = {"", "the request took longer than %g s (timeout)",
                                      "no data from the server for %g s (stall_timeout)",
                                      "no connection to the server within %g s (connect_timeout)"};
    const vpp_settings *st = t->settings;
    int w = t->reply.watchdog;
    t->reply.curl_code = CURLE_OPERATION_TIMEDOUT;
    snprintf(t->reply.curl_message, sizeof t->reply.curl_message, why[w],
             w == VPP_TIMED_OUT ? st->timeout
             : w == VPP_STALLED ? st->stall_timeout
                                : st->connect_timeout);
  }
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->reply.status);
  curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
  t->reply.sent = sent > 0;
  if (t->reply.curl_code != CURLE_OK) blame_proxy(t);
}

/* After a 3xx: 1 when t was re-aimed at a same-origin Location (the caller
 * starts it again), 0 when there is nothing to follow (the 3xx stands as an
 * HTTP error, or reply.redirect_refused / CURLE_TOO_MANY_REDIRECTS say why). */
int vpp_transfer_redirect(vpp_transfer *t) {
  vpp_reply *r = &t->reply;
  char *location = NULL;
  if (r->curl_code != CURLE_OK || r->status < 300 || r->status > 399) return 0;
  curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &location);
  if (!location) return 0;
  if (!t->origin || !vpp_url_same_origin(t->origin, location)) {
    r->redirect_refused = 1;
    return 0;
  }
  if (++r->redirects > VPP_MAX_REDIRECTS) {
    r->curl_code = CURLE_TOO_MANY_REDIRECTS;
    return 0;
  }
  curl_easy_setopt(t->easy, CURLOPT_URL, location); /* libcurl copies it */
  if (r->status == 303) {
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, NULL);
    t->custom = 0;
  }
  return 1;
}
