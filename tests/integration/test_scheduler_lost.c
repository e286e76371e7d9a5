/* A scheduler that dies and does not come back (issue 10, item 1): a
 * server says so in its log at a steady interval, naming the scheduler and
 * how long it has been silent, and gives up after --scheduler-timeout-ms
 * with a non-zero exit and the reason; a worker says so too (it goes on
 * training while the servers serve). The default bound is finite (60 s);
 * 0 waits forever only when asked for. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; p && (p = strstr(p, needle)) != NULL;
       p += strlen(needle))
    n++;
  return n;
}

START_TEST(server_gives_up_on_a_lost_scheduler) {
  h_cluster_t c;
  h_init(&c, "scheduler_lost");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "1", "--workers", "1", "--mode", "asp", NULL);
  h_proc_t *s0 = h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep,
                         "--scheduler-timeout-ms", "3000", NULL);
  h_proc_t *w0 =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", "50", "--eval-every-epoch=false", NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");

  kill(sched->pid, SIGKILL);
  ck_assert(h_wait_exit(sched, 5000));
  uint64_t t0 = h_now_ms();
  /* 3 s of silence, then the exit: 6 s leaves room for a loaded machine. */
  int exited = h_wait_exit(s0, 6000);
  uint64_t took = h_now_ms() - t0;
  if (!exited) h_dump_logs(&c);
  ck_assert_msg(exited,
                "the server still runs %llu ms after the scheduler "
                "died (timeout 3000 ms)",
                (unsigned long long)took);
  fprintf(stderr, "server exited %llu ms after the scheduler's SIGKILL\n",
          (unsigned long long)took);
  ck_assert_msg(WIFEXITED(s0->status) && WEXITSTATUS(s0->status) == 1,
                "server status %d, want exit 1", s0->status);

  char *log = h_read_file(s0->log, NULL);
  char want[160];
  /* Steady warnings before the end, each naming the scheduler. */
  snprintf(want, sizeof(want),
           "event=scheduler_silent scheduler=%s silent_ms=", c.sched_ep);
  int warnings = count(log, want);
  ck_assert_msg(warnings >= 2, "%d warnings \"%s\" in the server log:\n%s",
                warnings, want, log);
  ck_assert_msg(strstr(log, "event=scheduler_lost") != NULL, "%s", log);
  ck_assert_msg(strstr(log, "silent for") != NULL &&
                    strstr(log, "timeout 3000 ms") != NULL,
                "no reason in the server log:\n%s", log);
  free(log);
  /* The reason also goes to stderr, for whoever reads only that. */
  ck_assert(h_wait_log(s0->log, "ps-server: scheduler", 1));

  /* The worker warns as well (it may go on while the servers serve), every
   * 5 s: it never gives up on the scheduler itself. */
  int worker_warned = h_wait_log(w0->log, want, 8000);
  if (!worker_warned) h_dump_logs(&c);
  ck_assert_msg(worker_warned, "no \"%s\" in the worker log", want);
  h_kill_all(&c);
}
END_TEST

START_TEST(default_timeout_is_bounded) {
  h_cluster_t c;
  h_init(&c, "scheduler_lost_default");
  int status = 0;
  char *help = h_run(&c, 10000, &status, "ps-server", "--help", NULL);
  ck_assert_msg(help != NULL && status == 0, "ps-server --help failed");
  const char *opt = strstr(help, "--scheduler-timeout-ms");
  ck_assert_msg(opt != NULL, "%s", help);
  const char *def = strstr(opt, "default ");
  ck_assert_msg(def != NULL, "%s", opt);
  long ms = strtol(def + strlen("default "), NULL, 10);
  ck_assert_msg(ms > 0 && ms <= 600000,
                "default scheduler timeout %ld ms: want a bound (> 0)", ms);
  free(help);

  /* With the default, a server whose scheduler never answers logs the
   * wait at once (within ~5 s), not only at the end. */
  char dead_ep[64];
  snprintf(dead_ep, sizeof(dead_ep), "tcp://127.0.0.1:%d", h_free_port());
  h_proc_t *s0 =
      h_spawn(&c, "server0", "ps-server", "--scheduler", dead_ep, NULL);
  char want[128];
  snprintf(want, sizeof(want), "event=scheduler_silent scheduler=%s", dead_ep);
  int warned = h_wait_log(s0->log, want, 10000);
  if (!warned) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(warned, "no \"%s\" within 10 s", want);
}
END_TEST

int main(void) {
  Suite *s = suite_create("scheduler_lost");
  TCase *tc = tcase_create("scheduler_lost");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, server_gives_up_on_a_lost_scheduler);
  tcase_add_test(tc, default_timeout_is_bounded);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
