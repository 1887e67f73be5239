/* The Retry-After header (throttle.c): seconds, fractional seconds or an
 * HTTP-date.  An accepted value is a finite, non-negative wait. */
#include <math.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char value[256];
  double seconds = -1;
  if (size >= sizeof value) return 0; /* a header line is capped before it gets here */
  memcpy(value, data, size);
  value[size] = '\0';
  if (vpp_retry_after(value, 1.7e9, &seconds)) FUZZ_CHECK(seconds >= 0 && isfinite(seconds));
  return 0;
}
