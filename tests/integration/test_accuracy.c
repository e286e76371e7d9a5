/* One epoch on 2 servers and 2 workers reaches >= 0.80 test accuracy, in BSP
 * and in ASP. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

static void run_mode(const char *mode) {
  h_cluster_t c;
  char test[64];
  snprintf(test, sizeof(test), "accuracy_%s", mode);
  h_init(&c, test);
  const char *report = h_path(&c, "report.json");

  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", mode, NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "0", "--epochs", "1", "--report", report, NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "1", "--epochs", "1", NULL);

  int all = h_wait_all(&c, 280000);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "%s run did not finish within 280 s", mode);
  for (int i = 0; i < c.nprocs; i++) {
    h_proc_t *p = &c.procs[i];
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(&c);
      ck_abort_msg("%s: %s did not exit 0", mode, p->name);
    }
  }
  char *json = h_read_file(report, NULL);
  ck_assert_msg(json != NULL, "no report written");
  double acc = h_json_number(json, "test_accuracy");
  double sps = h_json_number(json, "samples_per_sec");
  fprintf(stderr, "accuracy %s: test_accuracy %.4f samples/s %.0f\n", mode,
          acc, sps);
  ck_assert_msg(acc >= 0.80, "%s: test accuracy %.4f < 0.80", mode, acc);
  ck_assert_msg(acc <= 1.0, "%s: test accuracy %.4f is not a fraction", mode,
                acc);
  ck_assert_msg(sps > 0, "%s: samples_per_sec %.1f", mode, sps);
  free(json);
}

START_TEST(bsp_one_epoch) { run_mode("bsp"); }
END_TEST

START_TEST(asp_one_epoch) { run_mode("asp"); }
END_TEST

int main(void) {
  Suite *s = suite_create("accuracy");
  TCase *tc = tcase_create("accuracy");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, bsp_one_epoch);
  tcase_add_test(tc, asp_one_epoch);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
