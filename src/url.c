/* URL pieces: percent-encoding of ids and query values, and the origin
 * (scheme, host, port) used to refuse nextLinks and redirects to other hosts. */
#include <ctype.h>
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

/* Parses an absolute http(s) URL's origin; 1 on success.  Frees all it takes
 * before returning, and calls no Lua, so it cannot leak. */
int vpp_url_origin(const char *url, vpp_origin *out) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int ok = 0;
  if (!u) return 0;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    ok = copy_lower(out->scheme, sizeof out->scheme, scheme) && copy_lower(out->host, sizeof out->host, host) &&
         copy_lower(out->port, sizeof out->port, port) &&
         (strcmp(out->scheme, "https") == 0 || strcmp(out->scheme, "http") == 0);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return ok;
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
