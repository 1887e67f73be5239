/* What every layer uses: growable buffers, wiping memory that held a
 * secret, random UUIDs from OpenSSL's generator, and the names of
 * lua-vpp's own error codes (codes.h). */
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "vpp.h"

const char *const vpp_code_names[] = {
#define VPP_CODE_NAME(name, meaning) #name,
    VPP_OWN_CODES(VPP_CODE_NAME)
#undef VPP_CODE_NAME
        NULL};

const char *const vpp_code_meanings[] = {
#define VPP_CODE_MEANING(name, meaning) meaning,
    VPP_OWN_CODES(VPP_CODE_MEANING)
#undef VPP_CODE_MEANING
        NULL};

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
  if (n) memcpy(b->data + b->len, s, n);
  b->len += n;
  return 1;
}

int vpp_buf_add(vpp_buf *b, const char *s) { return vpp_buf_append(b, s, strlen(s)); }

void vpp_buf_free(vpp_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* Through a volatile pointer, so the compiler cannot drop the stores as
 * dead before free(). */
void vpp_wipe(void *p, size_t n) {
  volatile unsigned char *v = p;
  while (v && n--) *v++ = 0;
}

void vpp_buf_wipe(vpp_buf *b) {
  vpp_wipe(b->data, b->cap);
  vpp_buf_free(b);
}

/* n random bytes from OpenSSL's generator: from e's pool, refilled 256
 * bytes at a time (one RAND_bytes call costs about as much as the rest of
 * a request's client-request-id), or straight from it without a pool. */
static int random_bytes(vpp_entropy *e, unsigned char *out, size_t n) {
  if (!e) return RAND_bytes(out, (int)n) == 1;
  if (e->left < n) {
    if (RAND_bytes(e->bytes, (int)sizeof e->bytes) != 1) return 0;
    e->left = sizeof e->bytes;
  }
  memcpy(out, e->bytes + sizeof e->bytes - e->left, n);
  e->left -= n;
  return 1;
}

int vpp_uuid(vpp_entropy *e, char out[40]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char bytes[16];
  int i, n = 0;
  if (!random_bytes(e, bytes, sizeof bytes)) return 0;
  bytes[6] = (unsigned char)((bytes[6] & 0x0f) | 0x40); /* version 4 */
  bytes[8] = (unsigned char)((bytes[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  for (i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[n++] = '-';
    out[n++] = hex[bytes[i] >> 4];
    out[n++] = hex[bytes[i] & 15];
  }
  out[n] = '\0';
  return 1;
}

/* For retry jitter: should the generator fail, no jitter (0.5) is still a
 * valid wait. */
double vpp_random_unit(void) {
  unsigned char b[7];
  double v = 0;
  int i;
  if (RAND_bytes(b, (int)sizeof b) != 1) return 0.5;
  for (i = 0; i < 7; i++) v = v * 256 + b[i];
  return v / 72057594037927936.0; /* 2^56 */
}
