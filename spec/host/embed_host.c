/* A host application that embeds Lua and loads lua-vpp, as ops tools do,
 * to check what a module must survive in someone else's process:
 *
 *   embed_host alloc SCRIPT       runs SCRIPT with its Nth Lua allocation
 *                                 failing, for N = 1, 2, ... until a run
 *                                 completes without reaching it
 *   embed_host threads SCRIPT R   two threads, each with its own lua_State,
 *                                 run SCRIPT R times at the same time
 *
 * SCRIPT returns a string on success.  Built with ASan/LSan (alloc) or
 * TSan (threads) by the Makefile; spec/host/run.lua starts the fake Graph
 * and this host.  Exit status 0 when every run ended as it may. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

/* Counts allocations and fails the `fail_at`th.  Lua answers a failed
 * allocation with an emergency collection and one more try of the same
 * size: that retry fails too, so the memory error is raised there, and the
 * code under test then handles it with memory to spare, as in a real
 * shortage that a collection cannot cure.  Frees and shrinks never fail. */
typedef struct {
  long count, fail_at; /* fail_at 0: never */
  size_t failed_size;
  long failed;
} alloc_state;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  alloc_state *a = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL || nsize > osize) {
    a->count++;
    if (a->fail_at > 0 && (a->count == a->fail_at || (a->count == a->fail_at + 1 && nsize == a->failed_size))) {
      a->failed_size = nsize;
      a->failed++;
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}

/* Keeps the C modules loaded so far mapped after lua_close unloads them, so
 * that a leak report at exit can still name their functions (and match
 * the suppression file).  Lua 5.4 keeps their paths in registry._CLIBS. */
static void pin_modules(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "_CLIBS");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING) dlopen(lua_tostring(L, -2), RTLD_NOW | RTLD_NODELETE);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* Runs SCRIPT, which returns the function under test (the modules it
 * requires are loaded then), and pushes that function; 0 on failure, with
 * the message printed. */
static int prepare(lua_State *L, const char *script) {
  luaL_openlibs(L);
  if (luaL_loadfile(L, script) == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK && lua_isfunction(L, -1)) {
    pin_modules(L);
    return 1;
  }
  fprintf(stderr, "embed_host: %s: %s\n", script, lua_isstring(L, -1) ? lua_tostring(L, -1) : "no function returned");
  return 0;
}

static int alloc_mode(const char *script) {
  long n;
  for (n = 1;; n++) {
    alloc_state a = {0, 0, 0, 0};
    lua_State *L = lua_newstate(failing_alloc, &a);
    int status;
    const char *msg;
    if (!L) {
      fprintf(stderr, "embed_host: cannot create a Lua state\n");
      return 1;
    }
    /* Before the failures start: outside a protected call, a memory error
     * would panic in Lua itself, not in the code under test. */
    if (!prepare(L, script)) {
      lua_close(L);
      return 1;
    }
    a.fail_at = a.count + n; /* the Nth allocation of the script */
    alarm(60);               /* a hang is a failure too */
    status = lua_pcall(L, 0, 1, 0);
    alarm(0);
    msg = lua_tostring(L, -1);
    if (a.failed == 0) {
      if (status != LUA_OK) {
        fprintf(stderr, "embed_host: the run without a failure failed: %s\n", msg ? msg : "?");
        lua_close(L);
        return 1;
      }
      printf("embed_host alloc: %ld runs, each allocation failing in turn, then: %s\n", n - 1, msg ? msg : "?");
      fflush(stdout); /* LeakSanitizer's report ends the process with _exit */
      lua_close(L);
      return 0;
    }
    /* A memory error raised as one, or a result: a memory error turned
     * into something else (a "bad response", a nil with an error) fails. */
    if (status != LUA_OK && status != LUA_ERRMEM) {
      fprintf(stderr, "embed_host: allocation %ld failing gave status %d: %s\n", n, status,
              msg ? msg : "(not a string)");
      lua_close(L);
      return 1;
    }
    a.fail_at = 0; /* lua_close may run finalizers */
    lua_close(L);
  }
}

typedef struct {
  const char *script;
  int rounds, failures;
  char last[256];
} worker;

static void *thread_main(void *arg) {
  worker *w = arg;
  int i;
  for (i = 0; i < w->rounds; i++) {
    lua_State *L = luaL_newstate();
    if (!L) {
      w->failures++;
      continue;
    }
    if (!prepare(L, w->script)) {
      w->failures++;
    } else if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
      w->failures++;
      fprintf(stderr, "embed_host: thread run failed: %s\n", lua_tostring(L, -1));
    } else {
      snprintf(w->last, sizeof w->last, "%s", lua_tostring(L, -1));
    }
    lua_close(L);
  }
  return NULL;
}

static int threads_mode(const char *script, int rounds) {
  worker w[2];
  pthread_t t[2];
  int i, failures = 0;
  for (i = 0; i < 2; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].script = script;
    w[i].rounds = rounds;
    if (pthread_create(&t[i], NULL, thread_main, &w[i]) != 0) {
      fprintf(stderr, "embed_host: cannot start a thread\n");
      return 1;
    }
  }
  for (i = 0; i < 2; i++) {
    pthread_join(t[i], NULL);
    failures += w[i].failures;
  }
  printf("embed_host threads: 2 threads x %d runs, %d failed; last: %s\n", rounds, failures, w[0].last);
  fflush(stdout);
  return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "alloc") == 0) return alloc_mode(argv[2]);
  if (argc >= 4 && strcmp(argv[1], "threads") == 0) return threads_mode(argv[2], atoi(argv[3]));
  fprintf(stderr, "usage: %s alloc SCRIPT | threads SCRIPT ROUNDS\n", argv[0]);
  return 2;
}
