/* The one place that sends requests: one exchange on the client's easy
 * handle, with the libcurl callbacks that fill the client's vpp_reply.
 * The callbacks never call Lua, so nothing can longjmp through libcurl. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vpp.h"

#define VPP_MAX_REDIRECTS 5
#define VPP_KEEP_BODY_BYTES (1024 * 1024)

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
  vpp_client *c = ud;
  size_t n = size * nmemb;
  if (n > c->max_response_bytes - c->reply.body.len) {
    c->reply.too_large = 1;
    return 0; /* aborts the transfer at once */
  }
  if (!vpp_buf_append(&c->reply.body, data, n)) {
    c->reply.out_of_memory = 1;
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

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  vpp_client *c = ud;
  size_t n = size * nmemb;
  static const char rid[] = "request-id:";
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    /* A new response (after a redirect or a 100): forget the last one's. */
    c->reply.request_id[0] = '\0';
    c->reply.body.len = 0;
  } else if (n > sizeof rid - 1 && strncasecmp(data, rid, sizeof rid - 1) == 0) {
    copy_header_value(c->reply.request_id, sizeof c->reply.request_id,
                      data + sizeof rid - 1, n - (sizeof rid - 1));
  }
  return n;
}

void vpp_request_init_handle(vpp_client *c) {
  curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
  curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
  curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, c->reply.curl_message);
}

static uint64_t next_random(vpp_client *c) { /* xorshift128+ */
  uint64_t x = c->rng[0], y = c->rng[1];
  c->rng[0] = y;
  x ^= x << 23;
  c->rng[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
  return c->rng[1] + y;
}

static void new_request_id(vpp_client *c, char out[40]) {
  static const char hex[] = "0123456789abcdef";
  uint64_t hi = next_random(c), lo = next_random(c);
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

/* Through a volatile pointer, so the compiler cannot drop the stores as
 * dead before free(). */
static void wipe(char *s, size_t n) {
  volatile char *p = s;
  while (n--) *p++ = '\0';
}

/* Overwrites the header lines before freeing them: one holds the token. */
static void free_headers(vpp_client *c) {
  struct curl_slist *h;
  for (h = c->headers; h; h = h->next) wipe(h->data, strlen(h->data));
  curl_slist_free_all(c->headers);
  c->headers = NULL;
  if (c->easy) curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, NULL);
}

void vpp_request_release(vpp_client *c) {
  free_headers(c);
  vpp_buf_free(&c->reply.body);
}

static int add_header(vpp_client *c, const char *line) {
  struct curl_slist *h = curl_slist_append(c->headers, line);
  if (!h) return 0;
  c->headers = h;
  return 1;
}

static int add_auth_header(vpp_client *c, const char *token, size_t len) {
  static const char prefix[] = "Authorization: Bearer ";
  size_t n = sizeof prefix - 1 + len;
  char *line = malloc(n + 1);
  int ok;
  if (!line) return 0;
  memcpy(line, prefix, sizeof prefix - 1);
  memcpy(line + sizeof prefix - 1, token, len);
  line[n] = '\0';
  ok = add_header(c, line);
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

/* Pushes the bearer token, calling the access_token function if there is one;
 * returns 0 with nil, err pushed when there is none.  Errors raised by the
 * function propagate: they are the caller's own code. */
static int push_token(lua_State *L, vpp_client *c) {
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "access_token");
  lua_remove(L, -2);
  if (lua_isfunction(L, -1)) {
    lua_call(L, 0, 1);
    if (!c->easy) luaL_error(L, "vpp: the client was closed by its access_token function");
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
      lua_pop(L, 1);
      vpp_error_push(L, "auth", 0, "no_token", "the access_token function returned no token", NULL);
      return 0;
    }
  }
  if (!header_safe(lua_tostring(L, -1), lua_rawlen(L, -1))) {
    lua_pop(L, 1);
    vpp_error_push(L, "auth", 0, "invalid_token", "the access token contains control characters", NULL);
    return 0;
  }
  return 1;
}

/* One exchange: POST (empty body) or GET to url, following redirects only
 * within the base URL's origin.  Returns 0 with c->reply filled, or pushes
 * nil, err and returns 2. */
int vpp_request_perform(lua_State *L, vpp_client *c, int post, const char *url) {
  vpp_reply *r = &c->reply;
  const char *token;
  size_t token_len;
  CURLcode rc;
  int hops = 0, ok;

  if (!push_token(L, c)) return 2;
  token = lua_tolstring(L, -1, &token_len);

  if (r->body.cap > VPP_KEEP_BODY_BYTES) vpp_buf_free(&r->body);
  r->body.len = 0;
  r->status = 0;
  r->too_large = r->out_of_memory = 0;
  r->request_id[0] = r->curl_message[0] = '\0';
  new_request_id(c, r->client_request_id);

  {
    char rid_line[64];
    memcpy(rid_line, "client-request-id: ", 19);
    memcpy(rid_line + 19, r->client_request_id, strlen(r->client_request_id) + 1);
    /* "Name:" with no value stops libcurl from sending its default. */
    ok = add_auth_header(c, token, token_len) && add_header(c, "Accept: application/json") &&
         add_header(c, rid_line) && add_header(c, "Expect:") &&
         (!post || add_header(c, "Content-Type:"));
  }
  lua_pop(L, 1); /* the token */
  if (!ok) {
    free_headers(c);
    return vpp_error_push(L, "transport", 0, "OUT_OF_MEMORY", "cannot build the request headers", r);
  }

  curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
  curl_easy_setopt(c->easy, CURLOPT_URL, url);
  if (post) {
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE, 0L);
  } else {
    curl_easy_setopt(c->easy, CURLOPT_HTTPGET, 1L);
  }

  for (;;) {
    char *location = NULL;
    rc = curl_easy_perform(c->easy);
    r->curl_code = rc;
    if (rc != CURLE_OK) break;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->status < 300 || r->status > 399) break;
    curl_easy_getinfo(c->easy, CURLINFO_REDIRECT_URL, &location);
    if (!location) break; /* a 3xx without Location: an HTTP error */
    if (!vpp_url_same_origin(&c->origin, location)) {
      free_headers(c);
      return vpp_error_push(L, "http", r->status, "redirect_refused",
                            "refused to follow a redirect to another scheme, host or port", r);
    }
    if (++hops > VPP_MAX_REDIRECTS) {
      free_headers(c);
      return vpp_error_push(L, "transport", 0, "TOO_MANY_REDIRECTS", "too many redirects", r);
    }
    curl_easy_setopt(c->easy, CURLOPT_URL, location); /* libcurl copies it */
    if (r->status == 303) curl_easy_setopt(c->easy, CURLOPT_HTTPGET, 1L);
  }
  free_headers(c);
  if (rc != CURLE_OK) return vpp_error_transport(L, r);
  return 0;
}
