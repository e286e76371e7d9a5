/* SIGTERM to the scheduler during training: every daemon exits within 5 s. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "tests/check_run.h"

static void run(const char *victim_name) {
  h_cluster_t c;
  char test[64];
  snprintf(test, sizeof(test), "sigterm_%s", victim_name);
  h_init(&c, test);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", NULL);
  h_proc_t *s0 = h_spawn(&c, "server0", "ps-server", "--scheduler",
                         c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler",
                         c.sched_ep, "--rank", "0", "--epochs", "50", NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "1", "--epochs", "50", NULL);

  /* Training is under way once a worker reports progress. */
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");

  h_proc_t *victim = sched;
  if (victim_name[0] == 's' && victim_name[1] == 'e') victim = s0;
  if (victim_name[0] == 'w') victim = w0;
  uint64_t t0 = h_now_ms();
  kill(victim->pid, SIGTERM);
  int all = h_wait_all(&c, 5000);
  uint64_t took = h_now_ms() - t0;
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  fprintf(stderr, "sigterm %s: cluster down in %llu ms\n", victim_name,
          (unsigned long long)took);
  ck_assert_msg(all, "not every daemon exited within 5 s of SIGTERM to %s",
                victim_name);
}

START_TEST(sigterm_scheduler) { run("scheduler"); }
END_TEST

START_TEST(sigterm_server) { run("server"); }
END_TEST

START_TEST(sigterm_worker) { run("worker"); }
END_TEST

int main(void) {
  Suite *s = suite_create("sigterm");
  TCase *tc = tcase_create("sigterm");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, sigterm_scheduler);
  tcase_add_test(tc, sigterm_server);
  tcase_add_test(tc, sigterm_worker);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
