/* Token ids into a URL path segment (url.c): the encoding holds only
 * unreserved characters and %XX, decodes back to the id, is never a "."
 * or ".." segment, and is the same through the luaL_Buffer path (which
 * works in pieces for Lua 5.1). */
#include <ctype.h>

#include "fuzz.h"

static int hexval(char c) { return isdigit((unsigned char)c) ? c - '0' : c - 'A' + 10; }

static int run(lua_State *L) {
  const char *id = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2), n, i, j;
  char *out = lua_newuserdatauv(L, 3 * len + 1, 0); /* Lua's: nothing to free if a call raises */
  luaL_Buffer b;
  const char *via_lua;
  size_t via_len;
  n = vpp_url_encode(out, id, len);
  FUZZ_CHECK(n <= 3 * len);
  for (i = 0, j = 0; i < n; j++) {
    if (out[i] == '%') {
      FUZZ_CHECK(i + 2 < n);
      FUZZ_CHECK(isxdigit((unsigned char)out[i + 1]) && isxdigit((unsigned char)out[i + 2]));
      FUZZ_CHECK(!islower((unsigned char)out[i + 1]) && !islower((unsigned char)out[i + 2]));
      FUZZ_CHECK(j < len && (unsigned char)id[j] == (unsigned)(hexval(out[i + 1]) * 16 + hexval(out[i + 2])));
      i += 3;
    } else {
      FUZZ_CHECK(isalnum((unsigned char)out[i]) || strchr("-._~", out[i]));
      FUZZ_CHECK(j < len && id[j] == out[i]);
      i++;
    }
  }
  FUZZ_CHECK(j == len);
  FUZZ_CHECK(!(n == 1 && out[0] == '.') && !(n == 2 && out[0] == '.' && out[1] == '.'));
  luaL_buffinit(L, &b);
  vpp_url_push_encoded(&b, id, len);
  luaL_pushresult(&b);
  via_lua = lua_tolstring(L, -1, &via_len);
  FUZZ_CHECK(via_len == n && memcmp(via_lua, out, n) == 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_call(run, data, size);
  return 0;
}
