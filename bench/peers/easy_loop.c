/* The floor for one sequential syncLicenses: a bare libcurl easy loop with
 * the request lua-vpp sends (the same URL, method and header lines, its
 * User-Agent included), the body discarded.  `make bench` counts its
 * instructions under callgrind beside lua-vpp's and the curl command's.
 * Usage: easy_loop URL N USER_AGENT */
#include <stdio.h>
#include <stdlib.h>

#include <curl/curl.h>

static size_t discard(char *data, size_t size, size_t nmemb, void *ud) {
  (void)data;
  (void)ud;
  return size * nmemb;
}

int main(int argc, char **argv) {
  struct curl_slist *h = NULL;
  char ua[256];
  CURL *e;
  long i, n, failed = 0;
  if (argc != 4) {
    fprintf(stderr, "usage: easy_loop URL N USER_AGENT\n");
    return 64;
  }
  snprintf(ua, sizeof ua, "User-Agent: %s", argv[3]);
  n = atol(argv[2]);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  e = curl_easy_init();
  h = curl_slist_append(h, "Authorization: Bearer bench-token");
  h = curl_slist_append(h, "Accept: application/json");
  h = curl_slist_append(h, "client-request-id: 00000000-0000-4000-8000-000000000000");
  h = curl_slist_append(h, ua);
  h = curl_slist_append(h, "Content-Type:");
  curl_easy_setopt(e, CURLOPT_URL, argv[1]);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  for (i = 0; i < n; i++) {
    long status = 0;
    if (curl_easy_perform(e) != CURLE_OK) failed++;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) failed++;
  }
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  printf("{\"ok\":%ld,\"failed\":%ld}\n", n - failed, failed);
  return failed != 0;
}
