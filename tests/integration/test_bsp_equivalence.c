/* BSP with 2 workers of batch 32 must give the weights of one --standalone
 * process with batch 64 on the same data order, to float rounding: with the
 * default SGD + momentum and cosine schedule, and (issue #14) with Adam and
 * a warm-up, both applied by the servers in the cluster and by the worker
 * alone. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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

/* The optimizer flags of each run of the loop test. */
static const char *const optimizer_args[][6] = {
    {"--optimizer", "sgd", "--lr-schedule", "cosine", "--warmup-steps", "0"},
    {"--optimizer", "adam", "--lr", "0.001", "--warmup-steps", "20"},
};

START_TEST(bsp_two_workers_equal_standalone) {
  h_cluster_t c;
  h_init(&c, _i == 0 ? "bsp_equivalence" : "bsp_equivalence_adam");
  const char *sa_out = h_path(&c, "standalone.bin");
  const char *ps_out = h_path(&c, "cluster.bin");
  const char *const *o = optimizer_args[_i];

  h_spawn(&c, "standalone", "ps-worker", "--standalone", "--batch-size", "64",
          "--max-steps", STEPS, "--dump-weights", sa_out, o[0], o[1], o[2],
          o[3], o[4], o[5], NULL);
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", "bsp", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank", "0",
          "--batch-size", "32", "--max-steps", STEPS, "--dump-weights", ps_out,
          o[0], o[1], o[2], o[3], o[4], o[5], NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank", "1",
          "--batch-size", "32", "--max-steps", STEPS, o[0], o[1], o[2], o[3],
          o[4], o[5], NULL);

  int all = h_wait_all(&c, 240000);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "cluster did not finish within 240 s");
  expect_clean_exit(&c);

  size_t na, nb;
  float *a = (float *)h_read_file(sa_out, &na);
  float *b = (float *)h_read_file(ps_out, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(na, nb);
  ck_assert_uint_gt(na, 0);
  size_t n = na / sizeof(float);
  double max_diff = 0, max_abs = 0;
  size_t argmax = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert_msg(isfinite(a[i]) && isfinite(b[i]), "non-finite weight %zu",
                  i);
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > max_diff) {
      max_diff = d;
      argmax = i;
    }
    if (fabs(a[i]) > max_abs) max_abs = fabs(a[i]);
  }
  double rel = max_diff / max_abs;
  fprintf(stderr,
          "bsp_equivalence (%s): %zu weights, max |diff| %.3g at key %zu, "
          "max |w| %.3g, relative %.3g\n",
          o[1], n, max_diff, argmax, max_abs, rel);
  ck_assert_msg(rel <= 1e-5, "max relative difference %.3g > 1e-5", rel);
  free(a);
  free(b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("bsp_equivalence");
  TCase *tc = tcase_create("bsp");
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, bsp_two_workers_equal_standalone, 0, 2);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
