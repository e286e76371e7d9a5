/* SSP (issue #15) on a real 2-server 2-worker cluster: staleness 0 gives
 * BSP's weights bit for bit; with staleness 3 and one worker slowed by
 * --step-delay-ms, no pull's weights are ever more than 3 steps behind the
 * clock it asked for (each worker's client records every pull reply's
 * clock), the fast worker does run ahead, and the job ends with a sane
 * accuracy; bad SSP options and --model ctr in an SSP job are refused
 * with exit 2. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

#define STEPS "100"

static void expect_clean_exit(h_cluster_t *c) {
  for (int i = 0; i < c->nprocs; i++) {
    h_proc_t *p = &c->procs[i];
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(c);
      ck_abort_msg("%s did not exit 0 (status %d)", p->name, p->status);
    }
  }
}

/* Runs 2 servers and 2 workers of batch 32 for STEPS steps with the
 * scheduler's mode arguments (up to 3 words, NULL-padded); worker 0 dumps
 * the final weights to dump, worker 1 sleeps delay_ms per step; each
 * writes its report to report0/report1. */
static void run_cluster(h_cluster_t *c, const char *const mode[3],
                        const char *steps, const char *delay_ms,
                        const char *dump, const char *report0,
                        const char *report1) {
  h_new_sched_ep(c);
  int first = c->nprocs;
  /* Failure detection is not what this test is about: a slack heartbeat
   * timeout keeps a loaded machine from failing a live server over. */
  h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep, "--servers",
          "2", "--workers", "2", "--heartbeat-timeout-ms", "5000", "--mode",
          mode[0], mode[1], mode[2], NULL);
  h_spawn(c, "server0", "ps-server", "--scheduler", c->sched_ep, NULL);
  h_spawn(c, "server1", "ps-server", "--scheduler", c->sched_ep, NULL);
  h_spawn(c, "worker0", "ps-worker", "--scheduler", c->sched_ep, "--rank", "0",
          "--batch-size", "32", "--max-steps", steps, "--dump-weights", dump,
          "--report", report0, NULL);
  h_spawn(c, "worker1", "ps-worker", "--scheduler", c->sched_ep, "--rank", "1",
          "--batch-size", "32", "--max-steps", steps, "--step-delay-ms",
          delay_ms, "--report", report1, NULL);
  char why[512];
  int ok = h_wait_all_exit0(c, first, 240000, why, sizeof(why));
  if (!ok) h_dump_logs(c);
  ck_assert_msg(ok, "%s cluster: %s", mode[0], why);
}

START_TEST(ssp_zero_equals_bsp_bitwise) {
  h_cluster_t c;
  h_init(&c, "ssp_zero_equals_bsp");
  const char *const bsp[3] = {"bsp", NULL, NULL};
  const char *const ssp0[3] = {"ssp", "--staleness", "0"};
  char bsp_out[600], ssp_out[600];
  snprintf(bsp_out, sizeof(bsp_out), "%s", h_path(&c, "bsp.bin"));
  snprintf(ssp_out, sizeof(ssp_out), "%s", h_path(&c, "ssp0.bin"));
  run_cluster(&c, bsp, STEPS, "0", bsp_out, h_path(&c, "bsp0.json"),
              h_path(&c, "bsp1.json"));
  run_cluster(&c, ssp0, STEPS, "0", ssp_out, h_path(&c, "ssp0.json"),
              h_path(&c, "ssp1.json"));
  h_kill_all(&c);
  expect_clean_exit(&c);
  size_t na, nb;
  char *a = h_read_file(bsp_out, &na);
  char *b = h_read_file(ssp_out, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_gt(na, 0);
  ck_assert_uint_eq(na, nb);
  ck_assert_msg(memcmp(a, b, na) == 0,
                "ssp --staleness 0 and bsp trained different weights");
  /* The weights did move from their initial values: 100 steps of training
   * (a bsp run of 0 steps would also dump equal files). */
  char *rep = h_read_file(h_path(&c, "ssp0.json"), NULL);
  ck_assert_ptr_nonnull(rep);
  ck_assert_double_eq(h_json_number(rep, "steps"), 100);
  ck_assert_double_eq(h_json_number(rep, "staleness"), 0);
  ck_assert_double_eq(h_json_number(rep, "pull_max_lag"), 0);
  free(rep);
  free(a);
  free(b);
}
END_TEST

START_TEST(ssp_bound_holds_with_a_straggler) {
  h_cluster_t c;
  h_init(&c, "ssp_straggler");
  const char *const ssp3[3] = {"ssp", "--staleness", "3"};
  const char *reports[2];
  char r0[600], r1[600];
  snprintf(r0, sizeof(r0), "%s", h_path(&c, "worker0.json"));
  snprintf(r1, sizeof(r1), "%s", h_path(&c, "worker1.json"));
  reports[0] = r0;
  reports[1] = r1;
  /* Worker 1 sleeps 15 ms a step, several times a step's compute. */
  run_cluster(&c, ssp3, "400", "15", h_path(&c, "w.bin"), r0, r1);
  h_kill_all(&c);
  expect_clean_exit(&c);
  double lag_max = 0;
  for (int i = 0; i < 2; i++) {
    char *js = h_read_file(reports[i], NULL);
    ck_assert_msg(js != NULL, "no report %s", reports[i]);
    double pulls = h_json_number(js, "pulls");
    double lag = h_json_number(js, "pull_max_lag");
    double beyond = h_json_number(js, "pull_beyond_bound");
    double acc = h_json_number(js, "test_accuracy");
    fprintf(stderr,
            "ssp straggler: worker %d pulls %.0f max lag %.0f beyond %.0f "
            "test accuracy %.4f\n",
            i, pulls, lag, beyond, acc);
    ck_assert_double_eq(h_json_number(js, "staleness"), 3);
    /* Every weights fetch was recorded: the first step's pull, the 400
     * steps' push-pulls (ps-worker's default, --push-pull fused; each
     * brings the next step's weights) and the final evaluation's pull. */
    ck_assert_double_eq(pulls, 1 + 400 + 1);
    ck_assert_msg(beyond == 0, "worker %d: %.0f pulls beyond the bound", i,
                  beyond);
    ck_assert_msg(lag <= 3, "worker %d: a pull %.0f steps behind", i, lag);
    ck_assert_msg(acc >= 0.75 && acc <= 1.0, "worker %d: test accuracy %.4f", i,
                  acc);
    if (lag > lag_max) lag_max = lag;
    free(js);
  }
  /* The fast worker did run ahead on stale weights: SSP was in force, not
   * BSP in disguise. */
  ck_assert_msg(lag_max >= 1, "no pull was ever answered with stale weights");
}
END_TEST

/* Runs bin with args (a4 may be NULL) to its end; asserts exit 2 and that
 * its output names needle. */
static void expect_usage_error(h_cluster_t *c, const char *needle,
                               const char *bin, const char *a1, const char *a2,
                               const char *a3, const char *a4) {
  int st;
  char *out = h_run(c, 30000, &st, bin, a1, a2, a3, a4, NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
                "%s %s %s %s %s: status %d, not exit 2:\n%s", bin, a1, a2, a3,
                a4 ? a4 : "", st, out);
  ck_assert_msg(strstr(out, needle) != NULL, "%s: no \"%s\" in:\n%s", bin,
                needle, out);
  free(out);
}

START_TEST(ssp_options_refused) {
  h_cluster_t c;
  h_init(&c, "ssp_options");
  expect_usage_error(&c, "staleness", "ps-scheduler", "--mode", "bsp",
                     "--staleness", "2");
  expect_usage_error(&c, "staleness", "ps-scheduler", "--mode", "ssp",
                     "--staleness", "65");
  expect_usage_error(&c, "step-delay-ms", "ps-worker", "--standalone",
                     "--step-delay-ms", "60001", NULL);
}
END_TEST

START_TEST(ctr_refused_in_ssp) {
  h_cluster_t c;
  h_init(&c, "ssp_ctr");
  const char *dir = h_path(&c, "data");
  int st;
  char *out = h_run(&c, 60000, &st, "ps-datagen", "ctr", "--out", dir,
                    "--train", "2000", "--test", "500", "--seed", "1", NULL);
  ck_assert_msg(
      out != NULL && st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
      "ps-datagen failed:\n%s", out ? out : "");
  free(out);
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "1", "--workers", "1", "--heartbeat-timeout-ms", "5000", "--mode",
          "ssp", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--model",
              "ctr", "--data-dir", dir, "--epochs", "1", NULL);
  int exited = h_wait_exit(w, 60000);
  if (!exited || !WIFEXITED(w->status) || WEXITSTATUS(w->status) != 2)
    h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(exited, "the ctr worker did not exit");
  ck_assert_msg(WIFEXITED(w->status) && WEXITSTATUS(w->status) == 2,
                "the ctr worker exited with status %d, not 2", w->status);
  char *log = h_read_file(w->log, NULL);
  ck_assert_ptr_nonnull(log);
  ck_assert_msg(strstr(log, "--mode ssp") != NULL, "no reason in:\n%s", log);
  free(log);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ssp");
  TCase *tc = tcase_create("ssp");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, ssp_options_refused);
  tcase_add_test(tc, ssp_zero_equals_bsp_bitwise);
  tcase_add_test(tc, ssp_bound_holds_with_a_straggler);
  tcase_add_test(tc, ctr_refused_in_ssp);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
