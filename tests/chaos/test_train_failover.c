/* chaos.train_failover: training goes on through the loss of a primary
 * (ARCHITECTURE "Failure semantics" 1-2) and learns the same model.
 *
 * The MLP on Fashion-MNIST, 2 servers (replication 2), 2 workers, BSP,
 * 2 epochs: once undisturbed, once with the primary of range 0 SIGKILLed
 * halfway through (and restarted, as a supervisor would: it joins as a
 * spare and is filled by a snapshot while the job runs). The disturbed run
 * finishes, every process but the killed one exits 0, and its final test
 * accuracy is within 0.5 point of the undisturbed run's. (With 2 workers a
 * BSP step's sum does not depend on arrival order, so exactly-once
 * delivery gives the very same weights; the test prints both.)
 * And the same kill in SSP (issue #15, staleness 3, worker 1 a straggler):
 * the new backup's snapshot carries the sums of the steps the fast worker
 * pushed ahead, the run finishes with a sane accuracy, and no pull was
 * answered beyond the bound. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define EPOCHS "2"
#define RUN_MS 240000

/* One run; kill: SIGKILL the primary of range 0 halfway; ssp: staleness 3
 * with worker 1 sleeping 3 ms a step. Returns the final test accuracy. */
static double run(const char *tag, int kill_primary, int ssp) {
  h_cluster_t c;
  h_init(&c, tag);
  const char *report = h_path(&c, "report.json");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--mode", ssp ? "ssp" : "bsp",
              ssp ? "--staleness" : NULL, "3", NULL);
  chaos_server_t srv[2];
  memset(srv, 0, sizeof(srv));
  for (int i = 0; i < 2; i++)
    chaos_server_start(&c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_proc_t *w0 =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", EPOCHS, "--progress-ms", "300",
              "--eval-every-epoch=false", "--report", report, NULL);
  h_proc_t *w1 =
      h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "1", "--epochs", EPOCHS, "--eval-every-epoch=false",
              "--step-delay-ms", ssp ? "3" : "0", NULL);
  h_proc_t *killed = NULL;
  if (kill_primary) {
    uint64_t end = h_now_ms() + RUN_MS;
    unsigned long step = 0, total = 0;
    while (h_now_ms() < end && !w0->exited &&
           ((step = h_progress_step(w0->log, &total)) == 0 || step < total / 2))
      h_sleep_ms(50);
    ck_assert_msg(total > 0 && step >= total / 2,
                  "%s: training did not get halfway (step %lu of %lu)", tag,
                  step, total);
    unsigned primary;
    char kwhy[256];
    killed = chaos_kill_primary(&c, srv, 2, &primary, kwhy, sizeof(kwhy));
    ck_assert_msg(killed != NULL, "%s", kwhy);
    printf(
        "train_failover: killed %s (node %u, primary of range 0) at step %lu "
        "of %lu\n",
        killed->name, primary, step, total);
    fflush(stdout);
  }
  int all = h_wait_all(&c, RUN_MS);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "%s did not finish within %d s", tag, RUN_MS / 1000);
  char ewhy[256];
  ck_assert_msg(chaos_all_exit0_but(&c, killed, ewhy, sizeof(ewhy)), "%s: %s",
                tag, ewhy);
  (void)sched;
  (void)w1;
  char *json = h_read_file(report, NULL);
  ck_assert_msg(json != NULL, "%s: no report", tag);
  double acc = h_json_number(json, "test_accuracy");
  double steps = h_json_number(json, "steps");
  double secs = h_json_number(json, "wall_seconds");
  double beyond = h_json_number(json, "pull_beyond_bound");
  free(json);
  ck_assert_msg(beyond == 0, "%s: %.0f pulls beyond the staleness bound", tag,
                beyond);
  if (kill_primary) {
    ck_assert_msg(h_wait_log(sched->log, "event=failover", 1),
                  "%s: the scheduler logged no failover", tag);
  }
  printf("train_failover: %s: test_accuracy %.4f after %.0f steps in %.1f s\n",
         tag, acc, steps, secs);
  fflush(stdout);
  return acc;
}

START_TEST(training_survives_a_dead_primary) {
  double base = run("chaos_train_base", 0, 0);
  double fail = run("chaos_train_failover", 1, 0);
  double diff = fabs(base - fail) * 100.0;
  printf(
      "train_failover: undisturbed %.2f%%, primary killed %.2f%%: "
      "%.2f points apart%s\n",
      base * 100.0, fail * 100.0, diff,
      base == fail ? " (the same model)" : "");
  ck_assert_msg(base >= 0.80, "undisturbed accuracy %.4f < 0.80", base);
  ck_assert_msg(diff <= 0.5, "accuracy %.4f vs %.4f: %.2f points apart > 0.5",
                fail, base, diff);
}
END_TEST

START_TEST(ssp_training_survives_a_dead_primary) {
  double acc = run("chaos_train_failover_ssp", 1, 1);
  ck_assert_msg(acc >= 0.80, "ssp with a failover: accuracy %.4f < 0.80", acc);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_train_failover");
  TCase *tc = tcase_create("train_failover");
  tcase_set_timeout(tc, 560);
  tcase_add_test(tc, training_survives_a_dead_primary);
  tcase_add_test(tc, ssp_training_survives_a_dead_primary);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
