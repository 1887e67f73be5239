/* @odata.nextLink validation (url.c): a link is followed only when it has
 * base_url's scheme, host and port.  What is accepted must, read by
 * libcurl on its own, name that very origin. */
#include <strings.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static vpp_origin base;
  static int ready;
  char *link;
  if (!ready) {
    FUZZ_CHECK(vpp_url_origin("https://graph.microsoft.com/v1.0", &base));
    ready = 1;
  }
  link = malloc(size + 1);
  if (!link) return 0;
  memcpy(link, data, size);
  link[size] = '\0';
  if (vpp_url_same_origin(&base, link)) {
    CURLU *u = curl_url();
    char *host = NULL, *scheme = NULL;
    FUZZ_CHECK(u && curl_url_set(u, CURLUPART_URL, link, 0) == CURLUE_OK);
    FUZZ_CHECK(curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && strcasecmp(host, "graph.microsoft.com") == 0);
    FUZZ_CHECK(curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK && strcasecmp(scheme, "https") == 0);
    curl_free(host);
    curl_free(scheme);
    curl_url_cleanup(u);
  }
  free(link);
  return 0;
}
