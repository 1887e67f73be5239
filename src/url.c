/* URL pieces: percent-encoding of ids and query values, and the origin
 * (scheme, host, port) used to refuse nextLinks and redirects to other hosts. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

static int unreserved(unsigned char ch) { return isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~'; }

static int only_dots(const char *in, size_t len) {
  size_t i;
  for (i = 0; i < len; i++)
    if (in[i] != '.') return 0;
  return 1;
}

/* Writes at most 3 * len bytes to out; returns how many.  Everything but the
 * RFC 3986 unreserved characters is encoded, so "/", "?", "#" and "%" stay
 * inside the segment; a segment of dots alone ("." or "..") is encoded too,
 * since it would otherwise be read as a relative path step.  `dots` says
 * whether the whole segment is dots, which a piece of it cannot tell. */
static size_t encode(char *out, const char *in, size_t len, int dots) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i, n = 0;
  for (i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)in[i];
    if (unreserved(ch) && !(dots && ch == '.')) {
      out[n++] = (char)ch;
    } else {
      out[n++] = '%';
      out[n++] = hex[ch >> 4];
      out[n++] = hex[ch & 15];
    }
  }
  return n;
}

size_t vpp_url_encode(char *out, const char *in, size_t len) { return encode(out, in, len, only_dots(in, len)); }

/* Adds s percent-encoded: used for path segments and query values alike.
 * In pieces, since Lua 5.1 offers no more than LUAL_BUFFERSIZE at once
 * (see compat.h). */
#define ENCODE_PIECE ((size_t)256)
void vpp_url_push_encoded(luaL_Buffer *b, const char *s, size_t len) {
  int dots = only_dots(s, len);
  while (len > 0) {
    size_t n = len < ENCODE_PIECE ? len : ENCODE_PIECE;
    luaL_addsize(b, encode(luaL_prepbuffsize(b, 3 * ENCODE_PIECE), s, n, dots));
    s += n;
    len -= n;
  }
}

static int copy_lower(char *dst, size_t size, const char *src) {
  size_t i, n = strlen(src);
  if (n >= size) return 0;
  for (i = 0; i <= n; i++) dst[i] = (char)tolower((unsigned char)src[i]);
  return 1;
}

/* The origin of url, guessing http:// for a bare host:port (libcurl's
 * rule for proxies) when guess is set; 1 on success.  Frees all it takes
 * before returning, and calls no Lua, so it cannot leak. */
static int parse_origin(const char *url, vpp_origin *out, int guess) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int ok = 0;
  if (!u) return 0;
  if (curl_url_set(u, CURLUPART_URL, url, guess ? CURLU_GUESS_SCHEME : 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    ok = copy_lower(out->scheme, sizeof out->scheme, scheme) && copy_lower(out->host, sizeof out->host, host) &&
         copy_lower(out->port, sizeof out->port, port);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return ok;
}

/* Parses an absolute http(s) URL's origin; 1 on success. */
int vpp_url_origin(const char *url, vpp_origin *out) {
  return parse_origin(url, out, 0) && (strcmp(out->scheme, "https") == 0 || strcmp(out->scheme, "http") == 0);
}

/* A proxy URL as libcurl takes it (http, https, socks4(a), socks5(h); no
 * scheme is http): its origin, 1 on success. */
int vpp_url_proxy_origin(const char *url, vpp_origin *out) {
  static const char *const schemes[] = {"http", "https", "socks4", "socks4a", "socks5", "socks5h", NULL};
  const char *const *s;
  if (!parse_origin(url, out, 1)) return 0;
  for (s = schemes; *s; s++)
    if (strcmp(out->scheme, *s) == 0) return 1;
  return 0;
}

/* getenv(lower), else getenv(upper) when there is one; non-empty or NULL. */
static const char *env2(const char *lower, const char *upper) {
  const char *v = getenv(lower);
  if ((!v || !*v) && upper) v = getenv(upper);
  return v && *v ? v : NULL;
}

static int same_letters(const char *a, const char *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])) return 0;
  return 1;
}

/* Whether host is in the no_proxy list as libcurl reads it: "*" alone is
 * every host; otherwise names separated by commas (or spaces), each
 * matching itself and its subdomains, a leading dot ignored.  (libcurl
 * 7.86 and later also take CIDR ranges; they are not matched here.) */
static int no_proxy_for(const char *host, const char *list) {
  size_t hn = strlen(host);
  while (*list) {
    size_t n;
    while (*list == ',' || *list == ' ' || *list == '\t') list++;
    n = strcspn(list, ", \t");
    if (n == 1 && *list == '*') return 1;
    if (n > 0 && *list == '.') {
      list++;
      n--;
    }
    if (n > 0 && n <= hn && same_letters(host + hn - n, list, n) && (n == hn || host[hn - n - 1] == '.')) return 1;
    list += n;
  }
  return 0;
}

/* The proxy libcurl takes from the environment for target (its rules:
 * http_proxy in lower case only, https_proxy or HTTPS_PROXY, then
 * all_proxy or ALL_PROXY; no_proxy or NO_PROXY), or NULL. */
const char *vpp_url_env_proxy(const vpp_origin *target) {
  const char *p, *no = env2("no_proxy", "NO_PROXY");
  char host[256];
  size_t n = strlen(target->host);
  /* [::1] is matched without its brackets */
  if (n >= 2 && target->host[0] == '[' && n - 2 < sizeof host) {
    memcpy(host, target->host + 1, n - 2);
    host[n - 2] = '\0';
  } else {
    memcpy(host, target->host, n + 1);
  }
  if (no && no_proxy_for(host, no)) return NULL;
  p = strcmp(target->scheme, "https") == 0 ? env2("https_proxy", "HTTPS_PROXY") : env2("http_proxy", NULL);
  return p ? p : env2("all_proxy", "ALL_PROXY");
}

/* localhost, 127.0.0.0/8 or ::1: where plain http cannot be overheard. */
int vpp_url_loopback(const vpp_origin *o) {
  const char *h = o->host;
  if (strcmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0) return 1;
  if (strncmp(h, "127.", 4) != 0) return 0;
  for (h += 4; *h; h++)
    if (!isdigit((unsigned char)*h) && *h != '.') return 0;
  return 1;
}

/* user:password@ in the authority: it would be sent, and echoed. */
int vpp_url_has_userinfo(const char *url) {
  CURLU *u = curl_url();
  char *user = NULL;
  int has;
  if (!u) return 1; /* refuse what cannot be checked */
  has = curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK || curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK;
  curl_free(user);
  curl_url_cleanup(u);
  return has;
}

int vpp_url_same_origin(const vpp_origin *a, const char *url) {
  vpp_origin b;
  return vpp_url_origin(url, &b) && strcmp(a->scheme, b.scheme) == 0 && strcmp(a->host, b.host) == 0 &&
         strcmp(a->port, b.port) == 0;
}

/* Where the path of an absolute URL starts (after scheme://host[:port]). */
size_t vpp_url_path_at(const char *url) {
  const char *p = strstr(url, "://");
  if (!p) return 0;
  p += 3;
  return (size_t)(p - url) + strcspn(p, "/?#");
}
