/* One easy handle of a client's pool and the exchange it carries: request
 * headers (the bearer token among them), and the libcurl callbacks that fill
 * its vpp_reply.  The callbacks never call Lua, so nothing can longjmp
 * through libcurl. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vpp.h"

#define VPP_MAX_REDIRECTS   5
#define VPP_KEEP_BODY_BYTES ((size_t)1024 * 1024)

int vpp_buf_append(vpp_buf *b, const char *s, size_t n) {
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 4096;
    char *p;
    while (cap - b->len < n) {
      if (cap > ((size_t)-1) / 2) return 0;
      cap *= 2;
    }
    p = realloc(b->data, cap);
    if (!p) return 0;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return 1;
}

void vpp_buf_free(vpp_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  vpp_transfer *t = ud;
  size_t n = size * nmemb;
  if (n > t->client->max_response_bytes - t->reply.body.len) {
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

static int header_is(const char *line, size_t n, const char *name, size_t len) {
  return n > len && line[len] == ':' && strncasecmp(line, name, len) == 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  vpp_reply *r = &((vpp_transfer *)ud)->reply;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new response (after a redirect or a 100): forget the last one's. */
    r->request_id[0] = r->retry_after[0] = '\0';
    r->body.len = 0;
  } else if (header_is(data, n, "request-id", 10)) {
    copy_header_value(r->request_id, sizeof r->request_id, data + 11, n - 11);
  } else if (header_is(data, n, "retry-after", 11)) {
    copy_header_value(r->retry_after, sizeof r->retry_after, data + 12, n - 12);
  }
  return n;
}

/* Aborts a transfer when no byte has moved either way for stall_seconds
 * (waiting for the answer included). */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  vpp_transfer *t = ud;
  double now = vpp_now();
  (void)dltotal;
  (void)ultotal;
  if (dlnow + ulnow != t->moved) {
    t->moved = dlnow + ulnow;
    t->active_at = now;
  } else if (now - t->active_at >= t->client->stall_seconds) {
    t->reply.stalled = 1;
    return 1; /* CURLE_ABORTED_BY_CALLBACK, reported as a timeout */
  }
  return 0;
}

/* A fresh easy handle with the client's settings; NULL when out of memory. */
vpp_transfer *vpp_transfer_new(vpp_client *c) {
  vpp_transfer *t = calloc(1, sizeof *t);
  CURL *e;
  if (!t) return NULL;
  t->easy = e = curl_easy_init();
  if (!e) {
    free(t);
    return NULL;
  }
  t->client = c;
  t->job = -1;
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
  /* Over TLS, wait to multiplex on one HTTP/2 connection rather than open
   * more; on plain HTTP (1.1) this would serialise the transfers. */
  if (strcmp(c->origin.scheme, "https") == 0) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* see vpp_transfer_redirect */
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
  /* The stall watchdog.  libcurl's own low-speed limit averages over
   * seconds, so a trickle before a stall hides it; a progress callback
   * sees the stall itself.  It runs at least once a second while nothing
   * moves: the engine polls for at most a second, and so does
   * curl_easy_perform (token requests). */
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response_bytes);
  if (c->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
  curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
  return t;
}

/* Through a volatile pointer, so the compiler cannot drop the stores as
 * dead before free(). */
static void wipe(char *s, size_t n) {
  volatile char *p = s;
  while (n--) *p++ = '\0';
}

/* Overwrites the header lines before freeing them: one holds the token. */
void vpp_transfer_release(vpp_transfer *t) {
  struct curl_slist *h;
  for (h = t->headers; h; h = h->next) wipe(h->data, strlen(h->data));
  curl_slist_free_all(t->headers);
  t->headers = NULL;
  if (t->easy) curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, NULL);
  t->job = -1;
}

void vpp_transfer_free(vpp_transfer *t) {
  if (!t) return;
  vpp_transfer_release(t);
  curl_easy_cleanup(t->easy);
  vpp_buf_free(&t->reply.body);
  free(t);
}

void vpp_new_uuid(vpp_client *c, char out[40]) {
  static const char hex[] = "0123456789abcdef";
  uint64_t hi = vpp_client_random(c), lo = vpp_client_random(c);
  unsigned char bytes[16];
  int i, n = 0;
  for (i = 0; i < 8; i++) bytes[i] = (unsigned char)(hi >> (8 * i));
  for (i = 0; i < 8; i++) bytes[8 + i] = (unsigned char)(lo >> (8 * i));
  bytes[6] = (unsigned char)((bytes[6] & 0x0f) | 0x40); /* version 4 */
  bytes[8] = (unsigned char)((bytes[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  for (i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[n++] = '-';
    out[n++] = hex[bytes[i] >> 4];
    out[n++] = hex[bytes[i] & 15];
  }
  out[n] = '\0';
}

static int add_header(vpp_transfer *t, const char *line) {
  struct curl_slist *h = curl_slist_append(t->headers, line);
  if (!h) return 0;
  t->headers = h;
  return 1;
}

static int add_auth_header(vpp_transfer *t, const char *token, size_t len) {
  static const char prefix[] = "Authorization: Bearer ";
  size_t n = sizeof prefix - 1 + len;
  char *line = malloc(n + 1);
  int ok;
  if (!line) return 0;
  memcpy(line, prefix, sizeof prefix - 1);
  memcpy(line + sizeof prefix - 1, token, len);
  line[n] = '\0';
  ok = add_header(t, line);
  wipe(line, n);
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

/* Readies t for one request.  Returns 1; or 0 with nil, err pushed when no
 * token could be had or memory ran out.  Headers are released before
 * anything here can raise. */
/* Forgets the last exchange (a large body buffer included) and starts the
 * stall watchdog: every request, Graph's or the token endpoint's.  The
 * attempt count is the engine's, and stays. */
void vpp_transfer_reset(vpp_transfer *t) {
  vpp_reply *r = &t->reply;
  if (r->body.cap > VPP_KEEP_BODY_BYTES) vpp_buf_free(&r->body);
  r->body.len = 0;
  r->status = 0;
  r->curl_code = CURLE_OK;
  r->too_large = r->out_of_memory = r->redirect_refused = r->redirects = r->sent = r->stalled = 0;
  r->request_id[0] = r->retry_after[0] = r->curl_message[0] = '\0';
  t->active_at = vpp_now();
  t->moved = 0;
}

int vpp_transfer_prepare(lua_State *L, vpp_transfer *t, int client_idx, int post, const char *url) {
  vpp_reply *r = &t->reply;
  char rid_line[64];
  const char *token;
  size_t token_len;
  int ok;

  if (!vpp_auth_token(L, t->client, client_idx, &token, &token_len)) return 0;
  if (!header_safe(token, token_len)) {
    vpp_error_push(L, "auth", 0, "invalid_token", "the access token contains control characters", NULL);
    return 0;
  }
  t->auth_generation = t->client->auth.generation;

  vpp_transfer_reset(t);
  vpp_new_uuid(t->client, r->client_request_id);
  snprintf(rid_line, sizeof rid_line, "client-request-id: %s", r->client_request_id);

  /* "Content-Type:" with no value stops libcurl's form default: there is
   * no body.  (Nor is there an Expect: libcurl sends that for large bodies.) */
  ok = add_auth_header(t, token, token_len) && add_header(t, "Accept: application/json") && add_header(t, rid_line) &&
       (!post || add_header(t, "Content-Type:"));
  if (!ok) {
    vpp_transfer_release(t);
    vpp_error_push(L, "transport", 0, "OUT_OF_MEMORY", "cannot build the request headers", r);
    return 0;
  }
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(t->easy, CURLOPT_URL, url);
  if (post) {
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, 0L);
  } else {
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
  }
  return 1;
}

/* Records how the exchange ended (the handle is off the multi handle). */
/* Hands a finished exchange to the client's on_request function, if it has
 * one (the CLI's --verbose, or a script's own log).  Only what is safe to
 * log goes out: method, URL, status, libcurl's error name, time and ids; no
 * header and no body, so no token and no secret.  Runs inside the engine's
 * protected call, between libcurl calls, so the function may raise. */
void vpp_transfer_trace(lua_State *L, int client_idx, vpp_transfer *t, const char *method, int attempt) {
  const vpp_reply *r = &t->reply;
  char *url = NULL;
  double seconds = 0;
  if (!t->client->traced) return; /* no table lookups per request otherwise */
  lua_getiuservalue(L, client_idx, 1);
  lua_getfield(L, -1, "on_request");
  lua_remove(L, -2);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, method);
  lua_setfield(L, -2, "method");
  if (curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK && url) {
    lua_pushstring(L, url);
    lua_setfield(L, -2, "url");
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

void vpp_transfer_finish(vpp_transfer *t, CURLcode rc) {
  long sent = 0;
  t->reply.curl_code = rc;
  if (t->reply.stalled) {
    t->reply.curl_code = CURLE_OPERATION_TIMEDOUT;
    snprintf(t->reply.curl_message, sizeof t->reply.curl_message, "no data from the server for %g s (stall_timeout)",
             t->client->stall_seconds);
  }
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->reply.status);
  curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
  t->reply.sent = sent > 0;
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
  if (!vpp_url_same_origin(&t->client->origin, location)) {
    r->redirect_refused = 1;
    return 0;
  }
  if (++r->redirects > VPP_MAX_REDIRECTS) {
    r->curl_code = CURLE_TOO_MANY_REDIRECTS;
    return 0;
  }
  curl_easy_setopt(t->easy, CURLOPT_URL, location); /* libcurl copies it */
  if (r->status == 303) curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
  return 1;
}
