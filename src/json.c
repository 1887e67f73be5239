/* JSON text to Lua values, read straight from the response buffer.  The
 * grammar is RFC 8259's (numbers included: no leading zeros, no "1.", no
 * NaN; raw control characters in strings are let through, as lua-cjson
 * did, but for NUL); strings come byte for byte, escapes decoded to UTF-8 (a lone
 * surrogate is refused); integral numbers that fit become Lua integers on
 * 5.3 and later; null is cjson.null.  It calls no Lua function and takes no
 * C memory, so nothing can run in the middle of it (a debug hook, say) and
 * only Lua's own allocations can fail, which raise as usual.  lua-cjson did
 * this before, at three times the instructions per token (make bench). */
#include <math.h>
#include <string.h>

#include "vpp.h"

#define MAX_DEPTH 1000            /* as lua-cjson's default */
#define KEYS_KEY  "vpp.json_keys" /* registry: the member name cache */

/* Member names repeat from one answer to the next (a token has 25), and
 * making a Lua string from bytes hashes them all: a name found here costs
 * a third of that.  The strings are kept in the userdata's user value, at
 * slot + 1; a slot holds one name, the last one that hashed to it. */
#define KEY_SLOTS 256
#define KEY_BYTES 40
typedef struct key_cache {
  unsigned char len[KEY_SLOTS];
  char bytes[KEY_SLOTS][KEY_BYTES];
} key_cache;

typedef struct parser {
  lua_State *L;
  const char *start, *p, *end;
  const char *error; /* what was wrong, at p */
  int depth, null;   /* null: stack index of cjson.null */
  int keys;          /* stack index of the cache's strings */
  key_cache *cache;
  int unwrap;    /* {"value": {...}} alone at the top: give the inner object */
  int unwrapped; /* and it was so */
} parser;

static int fail(parser *ps, const char *what) {
  if (!ps->error) ps->error = what;
  return 0;
}

/* Graph sends no white space: one test for the usual case. */
static void skip_space(parser *ps) {
  if (ps->p < ps->end && (unsigned char)*ps->p > ' ') return;
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t')) ps->p++;
}

static int is_digit(const parser *ps) { return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; }

static int parse_value(parser *ps);

static int hex4(parser *ps, unsigned *out) {
  int i;
  unsigned v = 0;
  if (ps->end - ps->p < 4) return fail(ps, "a short \\u escape");
  for (i = 0; i < 4; i++) {
    char c = ps->p[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return fail(ps, "a bad \\u escape");
  }
  ps->p += 4;
  *out = v;
  return 1;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  if (cp < 0x80) {
    luaL_addchar(b, (char)cp);
  } else if (cp < 0x800) {
    luaL_addchar(b, (char)(0xC0 | (cp >> 6)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    luaL_addchar(b, (char)(0xE0 | (cp >> 12)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else {
    luaL_addchar(b, (char)(0xF0 | (cp >> 18)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  }
}

/* One escape after the backslash (ps->p past it). */
static int escape(parser *ps, luaL_Buffer *b) {
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  const char *hit;
  unsigned cp = 0, low = 0;
  if (ps->p >= ps->end) return fail(ps, "an unfinished escape");
  if (*ps->p != 'u') {
    if (*ps->p == '\0' || !(hit = strchr(from, *ps->p))) return fail(ps, "an unknown escape");
    luaL_addchar(b, to[hit - from]);
    ps->p++;
    return 1;
  }
  ps->p++;
  if (!hex4(ps, &cp)) return 0;
  if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(ps, "a lone low surrogate");
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') return fail(ps, "a lone high surrogate");
    ps->p += 2;
    if (!hex4(ps, &low)) return 0;
    if (low < 0xDC00 || low > 0xDFFF) return fail(ps, "a lone high surrogate");
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
  }
  add_utf8(b, cp);
  return 1;
}

/* ps->p at the opening quote.  Most strings have no escape: they are
 * pushed from the buffer as they are. */
static int parse_string(parser *ps) {
  const char *s = ++ps->p, *q, *backslash;
  luaL_Buffer b;
  q = memchr(s, '"', (size_t)(ps->end - s));
  if (!q) return fail(ps, "an unterminated string");
  backslash = memchr(s, '\\', (size_t)(q - s));
  if (!backslash) {
    lua_pushlstring(ps->L, s, (size_t)(q - s));
    ps->p = q + 1;
    return 1;
  }
  q = backslash;
  luaL_buffinit(ps->L, &b);
  luaL_addlstring(&b, s, (size_t)(q - s));
  ps->p = q;
  for (;;) {
    if (ps->p >= ps->end) return fail(ps, "an unterminated string");
    if (*ps->p == '"') break;
    if (*ps->p == '\\') {
      ps->p++;
      if (!escape(ps, &b)) return 0;
    } else {
      q = ps->p;
      while (q < ps->end && *q != '"' && *q != '\\') q++;
      luaL_addlstring(&b, ps->p, (size_t)(q - ps->p));
      ps->p = q;
    }
  }
  luaL_pushresult(&b);
  ps->p++;
  return 1;
}

static void push_key(parser *ps, const char *s, size_t n) {
  key_cache *kc = ps->cache;
  unsigned h;
  if (n == 0 || n > KEY_BYTES) {
    lua_pushlstring(ps->L, s, n);
    return;
  }
  h = ((unsigned)n * 31u + (unsigned char)s[0] * 7u + (unsigned char)s[n - 1] * 13u + (unsigned char)s[n / 2] * 17u +
       (unsigned char)s[n / 3]) &
      (KEY_SLOTS - 1);
  if (kc->len[h] == n && memcmp(kc->bytes[h], s, n) == 0) {
    lua_rawgeti(ps->L, ps->keys, (int)h + 1);
    return;
  }
  lua_pushlstring(ps->L, s, n);
  lua_pushvalue(ps->L, -1);
  lua_rawseti(ps->L, ps->keys, (int)h + 1);
  kc->len[h] = (unsigned char)n;
  memcpy(kc->bytes[h], s, n);
}

/* A member name: as parse_string, through the cache when it has no escape. */
static int parse_key(parser *ps) {
  const char *s = ps->p + 1, *q = memchr(s, '"', (size_t)(ps->end - s));
  if (!q || memchr(s, '\\', (size_t)(q - s))) return parse_string(ps);
  push_key(ps, s, (size_t)(q - s));
  ps->p = q + 1;
  return 1;
}

static void push_number(lua_State *L, lua_Number d) {
#if LUA_VERSION_NUM >= 503
  lua_Integer i;
  if (d == floor(d) && lua_numbertointeger(d, &i)) {
    lua_pushinteger(L, i);
    return;
  }
#endif
  lua_pushnumber(L, d);
}

static int parse_number(parser *ps) {
  const char *s = ps->p;
  int integral = 1;
  if (*ps->p == '-') ps->p++;
  if (ps->p < ps->end && *ps->p == '0') {
    ps->p++;
  } else if (is_digit(ps)) {
    while (is_digit(ps)) ps->p++;
  } else {
    return fail(ps, "a bad number");
  }
  if (ps->p < ps->end && *ps->p == '.') {
    integral = 0;
    ps->p++;
    if (!is_digit(ps)) return fail(ps, "a bad number");
    while (is_digit(ps)) ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    integral = 0;
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (!is_digit(ps)) return fail(ps, "a bad number");
    while (is_digit(ps)) ps->p++;
  }
  if (integral && ps->p - s <= 18) { /* fits an int64, sign and all */
    const char *d = s + (*s == '-');
    long long v = 0;
    for (; d < ps->p; d++) v = v * 10 + (*d - '0');
    if (*s == '-') v = -v;
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(ps->L, (lua_Integer)v);
#else
    lua_pushnumber(ps->L, (lua_Number)v);
#endif
    return 1;
  }
  /* Lua's own conversion, which knows the locale's decimal point. */
  lua_pushlstring(ps->L, s, (size_t)(ps->p - s));
  {
    lua_Number d = lua_tonumber(ps->L, -1);
    lua_pop(ps->L, 1);
    push_number(ps->L, d);
  }
  return 1;
}

static int literal(parser *ps, const char *word, size_t n) {
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return fail(ps, "an unexpected character");
  ps->p += n;
  return 1;
}

/* '{' or '[' at ps->p.  The members go on the stack first, so that the
 * table is made at its final size: growing it key by key would rehash it
 * five times for a token's 25 properties. */
static int parse_container(parser *ps) {
  lua_State *L = ps->L;
  int object = *ps->p == '{', base = lua_gettop(L), n = 0, i;
  char close = object ? '}' : ']';
  if (++ps->depth > MAX_DEPTH) return fail(ps, "nesting deeper than 1000");
  ps->p++;
  skip_space(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
  } else {
    for (;;) {
      luaL_checkstack(L, 3, "vpp: JSON too large");
      skip_space(ps);
      if (object) {
        if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "a member name expected");
        if (!parse_key(ps)) return 0;
        skip_space(ps);
        if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "':' expected");
        ps->p++;
        skip_space(ps);
      }
      if (!parse_value(ps)) return 0;
      n++;
      skip_space(ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == close) break;
      return fail(ps, object ? "',' or '}' expected" : "',' or ']' expected");
    }
    ps->p++;
  }
  if (object && n == 1 && ps->depth == 1 && ps->unwrap && lua_type(L, base + 2) == LUA_TTABLE &&
      lua_rawlen(L, base + 2) == 0 && lua_rawlen(L, base + 1) == 5 &&
      memcmp(lua_tostring(L, base + 1), "value", 5) == 0) {
    /* Graph's wrapper around an entity: no table made for it at all. */
    lua_replace(L, base + 1);
    ps->unwrapped = 1;
  } else if (object) {
    /* In order, so that of two equal names the last wins, as in lua-cjson. */
    lua_createtable(L, 0, n);
    for (i = 0; i < n; i++) {
      lua_pushvalue(L, base + 2 * i + 1);
      lua_pushvalue(L, base + 2 * i + 2);
      lua_rawset(L, -3);
    }
    if (n > 0) lua_replace(L, base + 1);
  } else {
    lua_createtable(L, n, 0);
    lua_insert(L, base + 1);
    for (i = n; i > 0; i--) lua_rawseti(L, base + 1, i);
  }
  lua_settop(L, base + 1);
  ps->depth--;
  return 1;
}

static int parse_value(parser *ps) {
  if (ps->p >= ps->end) return fail(ps, "a value expected");
  switch (*ps->p) {
  case '{':
  case '[':
    return parse_container(ps);
  case '"':
    return parse_string(ps);
  case 't':
    if (!literal(ps, "true", 4)) return 0;
    lua_pushboolean(ps->L, 1);
    return 1;
  case 'f':
    if (!literal(ps, "false", 5)) return 0;
    lua_pushboolean(ps->L, 0);
    return 1;
  case 'n':
    if (!literal(ps, "null", 4)) return 0;
    lua_pushvalue(ps->L, ps->null);
    return 1;
  default:
    if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
    return fail(ps, "an unexpected character");
  }
}

/* Pushes the value of the JSON text and returns 1; or pushes what is wrong
 * with it ("an unterminated string at byte 12") and returns 0.  With
 * unwrap, a text that is {"value": <object>} gives that object, and 2. */
int vpp_json_decode(lua_State *L, const char *data, size_t len, int unwrap) {
  parser ps;
  int base = lua_gettop(L), ok;
  const char *nul;
  lua_getfield(L, LUA_REGISTRYINDEX, VPP_NULL_KEY);
  lua_getfield(L, LUA_REGISTRYINDEX, KEYS_KEY);
  ps.cache = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  ps.keys = base + 2;
  ps.L = L;
  ps.start = ps.p = data;
  ps.end = data + len;
  ps.error = NULL;
  ps.depth = 0;
  ps.null = base + 1;
  ps.unwrap = unwrap;
  ps.unwrapped = 0;
  /* A raw NUL is no JSON anywhere (inside a string it must be \u0000), and
   * lua-cjson, which read Graph's bodies before, stopped there too. */
  if ((nul = memchr(data, '\0', len)) != NULL) {
    ps.p = nul;
    ok = fail(&ps, "a NUL byte");
  } else {
    skip_space(&ps);
    ok = parse_value(&ps);
  }
  if (ok) skip_space(&ps);
  if (ok && ps.p != ps.end) ok = fail(&ps, "more after the value");
  if (!ok) {
    lua_settop(L, base);
    lua_pushfstring(L, "%s at byte %d", ps.error, (int)(ps.p - ps.start) + 1);
    return 0;
  }
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  return ps.unwrapped ? 2 : 1;
}

/* The member name cache of this Lua state (in its registry). */
void vpp_json_setup(lua_State *L) {
  key_cache *kc = lua_newuserdatauv(L, sizeof *kc, 1);
  memset(kc, 0, sizeof *kc);
  lua_createtable(L, KEY_SLOTS, 0);
  lua_setiuservalue(L, -2, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, KEYS_KEY);
}
