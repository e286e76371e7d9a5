#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t h_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int h_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) abort();
  socklen_t len = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

static void rm_rf_contents(const char *dir) {
  char cmd[1100];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "harness: cannot clean %s\n", dir);
}

void h_init(h_cluster_t *c, const char *test) {
  memset(c, 0, sizeof(*c));
  const char *base = getenv("PS_TEST_TMP");
  if (!base) base = "/tmp/ps-tests";
  mkdir(base, 0755);
  snprintf(c->dir, sizeof(c->dir), "%s/%s", base, test);
  rm_rf_contents(c->dir);
  mkdir(c->dir, 0755);
  snprintf(c->sched_ep, sizeof(c->sched_ep), "tcp://127.0.0.1:%d",
           h_free_port());
}

const char *h_path(h_cluster_t *c, const char *file) {
  static char bufs[8][640];
  static int slot;
  char *b = bufs[slot++ % 8];
  snprintf(b, 640, "%s/%s", c->dir, file);
  return b;
}

h_proc_t *h_spawn(h_cluster_t *c, const char *name, const char *bin, ...) {
  if (c->nprocs == H_MAX_PROCS) abort();
  const char *bindir = getenv("PS_BIN_DIR");
  if (!bindir) bindir = ".";
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", bindir, bin);

  const char *argv[64];
  int argc = 0;
  argv[argc++] = path;
  va_list ap;
  va_start(ap, bin);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && argc < 63) argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;

  h_proc_t *p = &c->procs[c->nprocs++];
  memset(p, 0, sizeof(*p));
  snprintf(p->name, sizeof(p->name), "%s", name);
  char logpath[sizeof(p->log)];
  snprintf(logpath, sizeof(logpath), "%.500s/%.60s.log", c->dir, name);
  memcpy(p->log, logpath, sizeof(logpath));
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) abort();
  if (pid == 0) {
    /* If the test process dies, so do its daemons: nothing is left behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execv(path, (char *const *)argv);
    fprintf(stderr, "harness: exec %s: %s\n", path, strerror(errno));
    _exit(127);
  }
  p->pid = pid;
  return p;
}

static int reap(h_proc_t *p, int flags) {
  if (p->exited) return 1;
  int st;
  pid_t r = waitpid(p->pid, &st, flags);
  if (r == p->pid) {
    p->exited = 1;
    p->status = st;
    return 1;
  }
  return 0;
}

int h_wait_exit(h_proc_t *p, int timeout_ms) {
  uint64_t end = h_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    if (reap(p, WNOHANG)) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(10);
  }
}

int h_wait_all(h_cluster_t *c, int timeout_ms) {
  uint64_t end = h_now_ms() + (uint64_t)timeout_ms;
  for (int i = 0; i < c->nprocs; i++) {
    uint64_t now = h_now_ms();
    int left = now >= end ? 0 : (int)(end - now);
    if (!h_wait_exit(&c->procs[i], left)) return 0;
  }
  return 1;
}

char *h_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  buf[got] = '\0';
  fclose(f);
  if (len) *len = got;
  return buf;
}

int h_wait_log(const char *path, const char *needle, int timeout_ms) {
  uint64_t end = h_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    char *s = h_read_file(path, NULL);
    int found = s && strstr(s, needle);
    free(s);
    if (found) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(20);
  }
}

void h_kill_all(h_cluster_t *c) {
  for (int i = 0; i < c->nprocs; i++) {
    h_proc_t *p = &c->procs[i];
    if (p->exited) continue;
    kill(p->pid, SIGKILL);
    reap(p, 0);
  }
}

void h_dump_logs(h_cluster_t *c) {
  for (int i = 0; i < c->nprocs; i++) {
    size_t len;
    char *s = h_read_file(c->procs[i].log, &len);
    if (!s) continue;
    const char *tail = len > 3000 ? s + len - 3000 : s;
    fprintf(stderr, "---- %s (%s) ----\n%s\n", c->procs[i].name,
            c->procs[i].log, tail);
    free(s);
  }
}

double h_json_number(const char *json, const char *key) {
  char pat[128];
  snprintf(pat, sizeof(pat), "\"%s\"", key);
  const char *p = strstr(json, pat);
  if (!p) return NAN;
  p += strlen(pat);
  while (*p == ' ' || *p == ':') p++;
  char *end;
  double v = strtod(p, &end);
  return end == p ? NAN : v;
}

static struct {
  int n;
  pid_t pids[H_MAX_WORKERS];
  int to_test[H_MAX_WORKERS][2], from_test[H_MAX_WORKERS][2];
} workers;

void h_workers_start(h_cluster_t *c, int n, h_worker_fn fn) {
  if (n > H_MAX_WORKERS) abort();
  workers.n = n;
  for (int r = 0; r < n; r++)
    if (pipe(workers.to_test[r]) != 0 || pipe(workers.from_test[r]) != 0)
      abort();
  pid_t parent = getpid();
  for (int r = 0; r < n; r++) {
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      _exit(fn(c->sched_ep, r));
    }
    workers.pids[r] = pid;
  }
  for (int r = 0; r < n; r++) {
    close(workers.to_test[r][1]);
    close(workers.from_test[r][0]);
  }
}

int h_worker_sync(int rank) {
  char b = 'a';
  return write(workers.to_test[rank][1], &b, 1) == 1 &&
         read(workers.from_test[rank][0], &b, 1) == 1;
}

void h_workers_sync(void) {
  char b;
  for (int r = 0; r < workers.n; r++)
    if (read(workers.to_test[r][0], &b, 1) != 1) b = 0;
  for (int r = 0; r < workers.n; r++)
    if (write(workers.from_test[r][1], "g", 1) != 1) b = 0;
}

int h_workers_reap(int timeout_ms) {
  int ok = 1;
  uint64_t end = h_now_ms() + (uint64_t)timeout_ms;
  for (int r = 0; r < workers.n; r++) {
    int st = 0;
    pid_t got = 0;
    while ((got = waitpid(workers.pids[r], &st, WNOHANG)) == 0 &&
           h_now_ms() < end)
      sleep_ms(10);
    if (got != workers.pids[r]) {
      kill(workers.pids[r], SIGKILL);
      waitpid(workers.pids[r], &st, 0);
      fprintf(stderr, "harness: worker %d timed out\n", r);
      ok = 0;
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      ok = 0;
    }
  }
  for (int r = 0; r < workers.n; r++) {
    close(workers.to_test[r][0]);
    close(workers.from_test[r][1]);
  }
  return ok;
}
