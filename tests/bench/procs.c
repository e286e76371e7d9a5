#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "common/proc.h"
#include "common/time.h"

volatile sig_atomic_t ps_bench_interrupted;

static ps_bench_proc_t procs[PS_BENCH_MAX_PROCS];
static int nprocs;

static void on_signal(int sig) {
  (void)sig;
  ps_bench_interrupted = 1;
}

void ps_bench_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  /* No SA_RESTART: a blocking poll or read returns EINTR and the caller
   * sees the flag at once. */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

static ps_bench_proc_t *slot_new(const char *name, const char *log) {
  if (nprocs == PS_BENCH_MAX_PROCS) {
    errno = EMFILE;
    return NULL;
  }
  ps_bench_proc_t *p = &procs[nprocs];
  memset(p, 0, sizeof(*p));
  snprintf(p->name, sizeof(p->name), "%s", name);
  snprintf(p->log, sizeof(p->log), "%s", log ? log : "");
  return p;
}

ps_bench_proc_t *ps_bench_spawn(const char *name, const char *log,
                                char *const argv[]) {
  ps_bench_proc_t *p = slot_new(name, log);
  if (p == NULL) return NULL;
  pid_t pid = ps_proc_spawn(argv[0], argv, log);
  if (pid < 0) return NULL;
  p->pid = pid;
  nprocs++;
  return p;
}

ps_bench_proc_t *ps_bench_fork(const char *name, int (*fn)(void *arg),
                               void *arg, const int *close_fds, int nclose) {
  ps_bench_proc_t *p = slot_new(name, NULL);
  if (p == NULL) return NULL;
  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return NULL;
  if (pid == 0) {
    ps_proc_child_setup(parent);
    for (int i = 0; i < nclose; i++)
      if (close_fds[i] >= 0) close(close_fds[i]);
    /* stdout is the report's: a child never writes to it. */
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 1);
    _exit(fn(arg));
  }
  p->pid = pid;
  nprocs++;
  return p;
}

static int reap(ps_bench_proc_t *p, int flags) {
  if (!p->exited) p->exited = ps_proc_reap(p->pid, flags, &p->status);
  return p->exited;
}

ps_bench_proc_t *ps_bench_procs_poll(void) {
  static int reported[PS_BENCH_MAX_PROCS];
  for (int i = 0; i < nprocs; i++) {
    ps_bench_proc_t *p = &procs[i];
    if (!reap(p, WNOHANG) || reported[i]) continue;
    if (WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0) continue;
    reported[i] = 1;
    return p;
  }
  return NULL;
}

static int all_exited(int timeout_ms) {
  uint64_t end = ps_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    int alive = 0;
    for (int i = 0; i < nprocs; i++)
      if (!reap(&procs[i], WNOHANG)) alive++;
    if (alive == 0) return 1;
    if (ps_now_ms() >= end) return 0;
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

void ps_bench_procs_stop(int timeout_ms) {
  if (all_exited(timeout_ms)) return;
  for (int i = 0; i < nprocs; i++)
    if (!procs[i].exited) kill(procs[i].pid, SIGTERM);
  if (all_exited(3000)) return;
  for (int i = 0; i < nprocs; i++) {
    if (procs[i].exited) continue;
    fprintf(stderr, "ps-bench: %s (pid %d) ignored SIGTERM; killing it\n",
            procs[i].name, (int)procs[i].pid);
    kill(procs[i].pid, SIGKILL);
    reap(&procs[i], 0);
  }
}

void ps_bench_procs_dump_logs(void) {
  for (int i = 0; i < nprocs; i++) {
    if (procs[i].log[0] == '\0') continue;
    FILE *f = fopen(procs[i].log, "r");
    if (f == NULL) continue;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    long from = n > 2000 ? n - 2000 : 0;
    fseek(f, from, SEEK_SET);
    char buf[2048];
    size_t got = fread(buf, 1, sizeof(buf) - 1, f);
    buf[got] = '\0';
    fclose(f);
    fprintf(stderr, "---- %s (%s) ----\n%s\n", procs[i].name, procs[i].log,
            buf);
  }
}

int ps_bench_read_line(int fd, char *buf, size_t len, int timeout_ms) {
  size_t n = 0;
  uint64_t end = timeout_ms < 0 ? 0 : ps_now_ms() + (uint64_t)timeout_ms;
  while (n + 1 < len) {
    if (ps_bench_interrupted) return -2;
    int wait_ms = 200;
    if (timeout_ms >= 0) {
      uint64_t now = ps_now_ms();
      if (now >= end) return -2;
      if (end - now < 200) wait_ms = (int)(end - now);
    }
    struct pollfd pfd = {fd, POLLIN, 0};
    int r = poll(&pfd, 1, wait_ms);
    if (r < 0 && errno != EINTR) return -1;
    if (r <= 0) continue;
    /* One byte at a time: lines are short and rare, and nothing past the
     * newline may be taken from the next message. */
    ssize_t got = read(fd, buf + n, 1);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -1;
    }
    if (got == 0) {
      buf[n] = '\0';
      return n ? (int)n : 0;
    }
    if (buf[n] == '\n') {
      buf[n] = '\0';
      return (int)n + (n == 0); /* an empty line still counts as a line */
    }
    n++;
  }
  buf[n] = '\0';
  return -1;
}

int ps_bench_write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, buf, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    len -= (size_t)w;
  }
  return 0;
}
