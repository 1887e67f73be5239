/* The operating system's services, and the only file that calls them
 * directly: monotonic and wall clocks, sleeping, terminals.  POSIX.1-2008,
 * as on Linux, the BSDs and macOS; a port to another system changes this
 * file alone. */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "vpp.h"

static double seconds(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double vpp_now(void) { return seconds(CLOCK_MONOTONIC); }

double vpp_epoch(void) { return seconds(CLOCK_REALTIME); }

void vpp_sleep(double s) {
  struct timespec ts;
  if (!(s > 0)) return;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

int vpp_isatty(int fd) { return isatty(fd) == 1; }

/* Runs fn once per process, whichever thread (lua_State) asks first. */
void vpp_once(void (*fn)(void)) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, fn);
}
