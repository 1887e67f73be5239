/* The operating system's services, and the only file that calls them
 * directly: monotonic and wall clocks, sleeping, terminals, the poller
 * that gathers a client's sockets behind one descriptor, and signals (for
 * the command only).  POSIX.1-2008, as on Linux, the BSDs and macOS, with
 * epoll on Linux and kqueue elsewhere (the kqueue code is untested here);
 * a port to another system changes this file alone. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>
#ifdef __linux__
#include <sys/epoll.h>
#else
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#endif

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

/* ---- the poller ---------------------------------------------------------
 * One descriptor (epoll or kqueue) that is readable when any socket it
 * watches is ready, or when the poller was signalled: a self-pipe whose
 * read end it watches too, so that a coroutine waiting on the descriptor
 * wakes when another one's step left it work (or a cancel). */

static int nonblocking_pipe(int fds[2]) {
  int i;
  if (pipe(fds) != 0) return 0;
  for (i = 0; i < 2; i++) {
    int fl = fcntl(fds[i], F_GETFL);
    if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) != 0 || fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
      close(fds[0]);
      close(fds[1]);
      return 0;
    }
  }
  return 1;
}

/* The self-pipe is made at the first signal, not before: most clients are
 * never signalled (a fleet's hundreds of clients would hold two more
 * descriptors each), and one added to the set while the host waits on the
 * descriptor wakes that wait all the same. */
int vpp_poller_open(vpp_poller *p) {
  p->fd = p->wake_r = p->wake_w = -1;
#ifdef __linux__
  p->fd = epoll_create1(EPOLL_CLOEXEC);
#else
  p->fd = kqueue();
  if (p->fd >= 0) fcntl(p->fd, F_SETFD, FD_CLOEXEC);
#endif
  return p->fd >= 0;
}

void vpp_poller_close(vpp_poller *p) {
  if (p->fd >= 0) close(p->fd);
  if (p->wake_r >= 0) close(p->wake_r);
  if (p->wake_w >= 0) close(p->wake_w);
  p->fd = p->wake_r = p->wake_w = -1;
}

/* Watches fd for what (VPP_POLL_IN | VPP_POLL_OUT; 0 forgets it); known
 * says whether it is watched already.  1 on success. */
int vpp_poller_watch(vpp_poller *p, int fd, int what, int known) {
#ifdef __linux__
  struct epoll_event ev;
  ev.events = (what & VPP_POLL_IN ? EPOLLIN : 0) | (what & VPP_POLL_OUT ? EPOLLOUT : 0);
  ev.data.fd = fd;
  if (!what) return epoll_ctl(p->fd, EPOLL_CTL_DEL, fd, &ev) == 0 || errno == EBADF || errno == ENOENT;
  return epoll_ctl(p->fd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) == 0;
#else
  struct kevent ev[2];
  (void)known;
  EV_SET(&ev[0], fd, EVFILT_READ, what & VPP_POLL_IN ? EV_ADD : EV_DELETE, 0, 0, NULL);
  EV_SET(&ev[1], fd, EVFILT_WRITE, what & VPP_POLL_OUT ? EV_ADD : EV_DELETE, 0, 0, NULL);
  kevent(p->fd, ev, 2, NULL, 0, NULL); /* deleting a filter never added fails, harmlessly */
  return 1;
#endif
}

/* Without blocking: up to max ready sockets (their what flags), after
 * clearing the signal. */
int vpp_poller_ready(vpp_poller *p, int *fds, int *what, int max) {
  char sink[64];
  int n, i, k = 0;
  while (p->wake_r >= 0 && read(p->wake_r, sink, sizeof sink) > 0) {
  }
#ifdef __linux__
  {
    struct epoll_event ev[64];
    n = epoll_wait(p->fd, ev, max < 64 ? max : 64, 0);
    for (i = 0; i < n; i++) {
      if (ev[i].data.fd == p->wake_r) continue;
      fds[k] = ev[i].data.fd;
      what[k++] = (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? VPP_POLL_IN : 0) |
                  (ev[i].events & (EPOLLOUT | EPOLLERR) ? VPP_POLL_OUT : 0);
    }
  }
#else
  {
    struct kevent ev[64];
    struct timespec zero = {0, 0};
    n = kevent(p->fd, NULL, 0, ev, max < 64 ? max : 64, &zero);
    for (i = 0; i < n; i++) {
      if ((int)ev[i].ident == p->wake_r) continue;
      fds[k] = (int)ev[i].ident;
      what[k++] = ev[i].filter == EVFILT_READ ? VPP_POLL_IN : VPP_POLL_OUT;
    }
  }
#endif
  return k;
}

/* Returns 0 when no pipe could be made (out of descriptors): the waiter
 * then wakes at its next timer only. */
int vpp_poller_signal(vpp_poller *p) {
  char one = 1;
  if (p->wake_w < 0 && p->fd >= 0) {
    int fds[2];
    if (!nonblocking_pipe(fds)) return 0;
    p->wake_r = fds[0];
    p->wake_w = fds[1];
    if (!vpp_poller_watch(p, p->wake_r, VPP_POLL_IN, 0)) {
      close(fds[0]);
      close(fds[1]);
      p->wake_r = p->wake_w = -1;
      return 0;
    }
  }
  if (p->wake_w >= 0 && write(p->wake_w, &one, 1) < 0) {
    /* full: it is signalled already */
  }
  return p->wake_w >= 0;
}

/* Waits until one of n descriptors is readable or timeout seconds pass
 * (< 0: no limit); ready[i] says which.  The number ready, or -1. */
int vpp_wait_readable(const int *fds, int n, double timeout, int *ready) {
  struct pollfd stack[64], *p = n <= 64 ? stack : malloc((size_t)n * sizeof *p);
  int i, rc, ms = timeout < 0 ? -1 : timeout > 2e6 ? 2000000000 : (int)(timeout * 1000 + 0.999);
  if (!p) return -1;
  for (i = 0; i < n; i++) {
    p[i].fd = fds[i];
    p[i].events = POLLIN;
    p[i].revents = 0;
  }
  do {
    rc = poll(p, (nfds_t)n, ms);
  } while (rc < 0 && errno == EINTR && ms < 0);
  for (i = 0; i < n; i++) ready[i] = rc > 0 && p[i].revents != 0;
  if (p != stack) free(p);
  return rc < 0 && errno == EINTR ? 0 : rc;
}

/* The permission bits and owner of a file, for refusing secrets others
 * may read; 0 when it cannot be looked at. */
int vpp_file_mode(const char *path, unsigned *mode, long *uid) {
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  *mode = (unsigned)(st.st_mode & 07777);
  *uid = (long)st.st_uid;
  return 1;
}

long vpp_uid(void) { return (long)getuid(); }

/* ---- files others read, for the command ---------------------------------- */

/* Opens /dev/null on each of 0, 1, 2 that is closed, so that no socket or
 * file opened later becomes a standard stream by chance; the closed ones
 * as a bit mask (1 << fd). */
int vpp_std_fds(void) {
  int fd, closed = 0;
  for (fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      int got = open("/dev/null", O_RDWR);
      if (got >= 0 && got != fd) close(got); /* a lower one was free: cannot happen */
      closed |= 1 << fd;
    }
  }
  return closed;
}

/* The key file an Azure Arc challenge names: only a regular file directly
 * in dir (symbolic links resolved first), named *.key, of at most cap
 * bytes, as Azure Identity checks it: the path comes from an HTTP answer.
 * VPP_KEY_OK with its content in out (len bytes), or why not. */
int vpp_read_key_file(const char *dir, const char *path, char *out, size_t cap, size_t *len) {
  char rdir[PATH_MAX], rpath[PATH_MAX], *slash;
  struct stat st;
  size_t n, dlen;
  ssize_t got;
  int fd;
  if (!realpath(dir, rdir) || !realpath(path, rpath)) return VPP_KEY_OUTSIDE;
  slash = strrchr(rpath, '/');
  dlen = strlen(rdir);
  if (!slash || (size_t)(slash - rpath) != dlen || strncmp(rpath, rdir, dlen) != 0) return VPP_KEY_OUTSIDE;
  n = strlen(slash + 1);
  if (n <= 4 || strcmp(slash + 1 + n - 4, ".key") != 0) return VPP_KEY_NOT_KEY;
  if ((fd = open(rpath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) return VPP_KEY_UNREADABLE;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return VPP_KEY_UNREADABLE;
  }
  if ((size_t)st.st_size > cap) {
    close(fd);
    return VPP_KEY_TOO_LARGE;
  }
  n = 0;
  while (n < (size_t)st.st_size && (got = read(fd, out + n, (size_t)st.st_size - n)) != 0) {
    if (got < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return VPP_KEY_UNREADABLE;
    }
    n += (size_t)got;
  }
  close(fd);
  *len = n;
  return VPP_KEY_OK;
}

static int write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Replaces path with data, atomically: a new file beside it (the old one's
 * permissions, else 0666 less the umask), written, fsynced and renamed
 * over path; the directory fsynced after (where it can be).  0, or -1 with
 * errno and the new file removed: path is then as it was. */
int vpp_replace_file(const char *path, const char *data, size_t len) {
  static unsigned counter;
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 64), *dir;
  const char *slash;
  struct stat st;
  int fd = -1, saved, i, have_old = stat(path, &st) == 0;
  if (!tmp) return -1;
  for (i = 0; i < 100 && fd < 0; i++) {
    snprintf(tmp, plen + 64, "%s.tmp.%ld.%u", path, (long)getpid(), counter++);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) goto fail;
  if ((have_old && fchmod(fd, st.st_mode & 07777) != 0) || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
    saved = errno;
    close(fd);
    unlink(tmp);
    errno = saved;
    goto fail;
  }
  if (close(fd) != 0 || rename(tmp, path) != 0) {
    saved = errno;
    unlink(tmp);
    errno = saved;
    goto fail;
  }
  /* The rename is durable once the directory is: best effort (some file
   * systems refuse fsync on a directory; the data is already safe). */
  slash = strrchr(path, '/');
  dir = tmp;
  if (!slash) {
    memcpy(dir, ".", 2);
  } else {
    size_t dlen = slash == path ? 1 : (size_t)(slash - path);
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
  }
  fd = open(dir, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(tmp);
  return 0;
fail:
  saved = errno;
  free(tmp);
  errno = saved;
  return -1;
}

/* ---- signals, for the command -------------------------------------------
 * SIGINT and SIGTERM call on(sig) from the handler: it may only do what a
 * handler may (vpp.c sets a Lua hook, as lua.c does for SIGINT). */
static void (*signal_fn)(int);
static struct sigaction before_int, before_term;
static int caught;

static void on_signal(int sig) { signal_fn(sig); }

/* Until vpp_release_signals, which puts back what was there before. */
int vpp_catch_signals(void (*on)(int)) {
  struct sigaction sa;
  if (caught) return 1;
  signal_fn = on;
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  if (sigaction(SIGINT, &sa, &before_int) != 0) return 0;
  if (sigaction(SIGTERM, &sa, &before_term) != 0) {
    sigaction(SIGINT, &before_int, NULL);
    return 0;
  }
  caught = 1;
  return 1;
}

void vpp_release_signals(void) {
  if (!caught) return;
  sigaction(SIGINT, &before_int, NULL);
  sigaction(SIGTERM, &before_term, NULL);
  caught = 0;
}
