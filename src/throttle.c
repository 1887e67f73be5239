/* Throttle arithmetic, free of Lua and libcurl state: the Retry-After header,
 * exponential backoff with full jitter, and the token buckets of the
 * proactive rate limit. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

#define BACKOFF_FLOOR_SECONDS 1.0

/* Seconds to wait that a Retry-After value asks for: delta-seconds, with or
 * without a fraction ("120", "2.128"), or an HTTP-date (any of the three
 * forms curl_getdate reads).  A date in the past asks for 0.  Returns 0
 * for anything else (negative numbers, "inf", hex, garbage). */
int vpp_retry_after(const char *value, double now_epoch, double *seconds) {
  const char *p = value;
  char buf[64];
  size_t n;
  int digits = 0, dot = 0;
  while (*p == ' ' || *p == '\t') p++;
  n = strlen(p);
  while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
  if (n == 0 || n >= sizeof buf) return 0;
  memcpy(buf, p, n);
  buf[n] = '\0';
  for (p = buf; *p; p++) {
    if (isdigit((unsigned char)*p)) {
      digits++;
    } else if (*p == '.' && !dot && digits) {
      dot = 1;
    } else {
      break;
    }
  }
  if (!*p) {
    if (!digits || buf[n - 1] == '.') return 0;
    *seconds = strtod(buf, NULL);
    return 1;
  }
  {
    time_t when = curl_getdate(buf, NULL);
    if (when == (time_t)-1) return 0;
    *seconds = (double)when - now_epoch;
    if (*seconds < 0) *seconds = 0;
    return 1;
  }
}

/* Full jitter above a floor: uniform in [1 s, min(cap, 2^attempt s)), so
 * even the first retry gives a throttled service a second.  A cap below
 * the floor (max_retry_delay set so by the caller) is the wait. */
double vpp_backoff(int attempt, double cap, double unit_random) {
  double ceiling = BACKOFF_FLOOR_SECONDS * ldexp(1.0, attempt > 30 ? 30 : attempt);
  if (ceiling > cap) ceiling = cap;
  if (ceiling <= BACKOFF_FLOOR_SECONDS) return ceiling;
  return BACKOFF_FLOOR_SECONDS + (ceiling - BACKOFF_FLOOR_SECONDS) * unit_random;
}

static void bucket_init(vpp_bucket *b, double capacity, double per) {
  b->capacity = b->tokens = capacity;
  b->per_second = capacity / per;
}

/* Buckets start full: a fresh client may burst up to the limit at once. */
void vpp_rate_init(vpp_ratelimit *r, double writes, double requests, double per) {
  r->enabled = 1;
  r->last = -1;
  bucket_init(&r->writes, writes, per);
  bucket_init(&r->requests, requests, per);
}

static void refill(vpp_bucket *b, double elapsed) {
  b->tokens += elapsed * b->per_second;
  if (b->tokens > b->capacity) b->tokens = b->capacity;
}

static double wait_for_one(const vpp_bucket *b) { return b->tokens >= 1 ? 0 : (1 - b->tokens) / b->per_second; }

/* Takes a request (and a write) token and returns 0, or returns how many
 * seconds to wait before one is there; takes nothing then. */
double vpp_rate_take(vpp_ratelimit *r, double now, int write) {
  double wait;
  if (!r->enabled) return 0;
  if (r->last >= 0 && now > r->last) {
    refill(&r->writes, now - r->last);
    refill(&r->requests, now - r->last);
  }
  r->last = now;
  wait = wait_for_one(&r->requests);
  if (write && wait_for_one(&r->writes) > wait) wait = wait_for_one(&r->writes);
  if (wait > 0) return wait;
  r->requests.tokens -= 1;
  if (write) r->writes.tokens -= 1;
  return 0;
}
