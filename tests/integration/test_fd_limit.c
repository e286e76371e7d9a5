/* Out of file descriptors (issue 10, item 7). Every daemon raises its soft
 * open-file limit to the hard limit at start (started here under prlimit
 * with soft 256, hard 4096). A scheduler held at 64 descriptors (hard) and
 * flooded with idle TCP connections cannot accept them all: it logs
 * accept_failed, rate-limited, with a count, and psctl status shows the
 * count; once the flood is gone, it answers again. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "tests/check_run.h"

#define PRLIMIT "/usr/bin/prlimit"

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; p && (p = strstr(p, needle)) != NULL;
       p += strlen(needle))
    n++;
  return n;
}

/* The soft "Max open files" of pid, or -1 (read in a loop: /proc files
 * have no size). */
static long soft_nofile(pid_t pid) {
  char path[64], buf[8192];
  snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strstr(buf, "Max open files");
  return p ? strtol(p + strlen("Max open files"), NULL, 10) : -1;
}

static int port_of(const char *ep) {
  const char *colon = strrchr(ep, ':');
  return colon ? atoi(colon + 1) : -1;
}

START_TEST(daemons_raise_soft_limit) {
  if (access(PRLIMIT, X_OK) != 0) {
    fprintf(stderr, "no %s: soft limit not checked\n", PRLIMIT);
    return;
  }
  h_cluster_t c;
  h_init(&c, "fd_limit_raise");
  char nofile[] = "--nofile=256:4096";
  const char *sched[] = {
      PRLIMIT,     nofile, h_bin("ps-scheduler"), "--bind", c.sched_ep,
      "--servers", "1",    "--workers",           "1",      NULL};
  h_proc_t *ps = h_spawnv(&c, "scheduler", sched);
  const char *server[] = {PRLIMIT,       nofile,     h_bin("ps-server"),
                          "--scheduler", c.sched_ep, NULL};
  h_proc_t *pv = h_spawnv(&c, "server0", server);
  const char *worker[] = {
      PRLIMIT,    nofile,        h_bin("ps-worker"), "--scheduler",
      c.sched_ep, "--max-steps", "100000",           "--eval-every-epoch=false",
      NULL};
  h_proc_t *pw = h_spawnv(&c, "worker0", worker);
  h_proc_t *procs[] = {ps, pv, pw};
  for (int i = 0; i < 3; i++) {
    int logged = h_wait_log(procs[i]->log, "event=nofile_limit", 20000);
    if (!logged) h_dump_logs(&c);
    long soft = soft_nofile(procs[i]->pid);
    ck_assert_msg(logged && soft == 4096,
                  "%s: soft open-file limit %ld, want the hard 4096",
                  procs[i]->name, soft);
  }
  h_kill_all(&c);
}
END_TEST

START_TEST(accept_failures_logged_and_counted) {
  if (access(PRLIMIT, X_OK) != 0) {
    fprintf(stderr, "no %s: skipped\n", PRLIMIT);
    return;
  }
  h_cluster_t c;
  h_init(&c, "fd_limit_flood");
  char nofile[] = "--nofile=64:64";
  const char *sched[] = {PRLIMIT,  nofile,     h_bin("ps-scheduler"),
                         "--bind", c.sched_ep, NULL};
  h_proc_t *ps = h_spawnv(&c, "scheduler", sched);
  ck_assert(h_wait_log(ps->log, "event=listening", 10000));

  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port_of(c.sched_ep));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  enum { FLOOD = 200 };
  int fds[FLOOD];
  int opened = 0;
  for (int i = 0; i < FLOOD; i++) {
    /* Non-blocking: once the listen backlog is full a connect would wait
     * for the kernel's SYN retries. */
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fds[i] < 0) break;
    if (connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) != 0 &&
        errno != EINPROGRESS) {
      close(fds[i]);
      break;
    }
    opened++;
  }
  fprintf(stderr, "opened %d connections\n", opened);
  ck_assert_msg(opened > 80, "only %d connections opened", opened);
  int logged = h_wait_log(ps->log, "event=accept_failed", 10000);
  /* A few more seconds of the flood: the lines stay rate-limited. */
  h_sleep_ms(6000);
  for (int i = 0; i < opened; i++) close(fds[i]);
  if (!logged) h_dump_logs(&c);
  ck_assert_msg(logged, "no accept_failed in the scheduler's log");
  char *log = h_read_file(ps->log, NULL);
  int lines = count(log, "event=accept_failed");
  fprintf(stderr, "%d accept_failed lines in about 7 s\n", lines);
  ck_assert_msg(lines <= 4, "%d accept_failed lines: not rate-limited", lines);
  ck_assert_msg(strstr(log, "Too many open files") != NULL, "%s", log);
  free(log);

  /* Answers again, and counts what it could not accept. */
  char *js = NULL;
  uint64_t end = h_now_ms() + 15000;
  while (js == NULL && h_now_ms() < end) js = h_status_json(&c, 2000);
  ck_assert_msg(js != NULL, "no status after the flood");
  double failures = h_json_number(js, "accept_failures");
  ck_assert_msg(failures > 0, "accept_failures %.0f: %s", failures, js);
  free(js);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("fd_limit");
  TCase *tc = tcase_create("fd_limit");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, daemons_raise_soft_limit);
  tcase_add_test(tc, accept_failures_logged_and_counted);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
