/* chaos.ctr_failover: the CTR workload (issue #14) trains through the loss
 * of a primary (ARCHITECTURE "Failure semantics" 1-2) and ends with the
 * very model an undisturbed run ends with.
 *
 * ps-datagen writes a small CTR set once; 2 servers (replication 2), 2
 * workers, BSP, 2 epochs of --model ctr with momentum (the rows carry
 * optimizer state) and a warm-up into a cosine (the servers apply the
 * schedule): once undisturbed, once with the primary of range 0 (which
 * holds dense keys and a hash share of both sparse tables) SIGKILLed once
 * rank 0's progress passes a third of the steps, and restarted as a
 * supervisor would (it joins as a spare and is filled by a snapshot while
 * the job runs). Both runs finish, every process but the killed one exits
 * 0, the scheduler logged the failover, and the two runs agree bitwise:
 * test AUC and log loss in the reports, and the dumps (the dense weights
 * and the click probability of every test row, so every sparse row the
 * test set touches). With 2 workers a BSP step's sums do not depend on
 * arrival order, so exactly-once delivery of dense and sparse pushes
 * across the failover gives the same bits; a push lost, applied twice or
 * applied at another step's schedule would not. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define TRAIN_ROWS "12000"
#define TEST_ROWS "4000"
#define RUN_MS 60000

typedef struct {
  double auc, log_loss, steps;
  char *dump;
  size_t dump_len;
} outcome_t;

static void generate(h_cluster_t *c, const char *dir) {
  int st;
  char *out = h_run(c, 60000, &st, "ps-datagen", "ctr", "--out", dir, "--train",
                    TRAIN_ROWS, "--test", TEST_ROWS, "--seed", "7", NULL);
  ck_assert_msg(out != NULL && st != -1, "ps-datagen did not finish");
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ps-datagen failed:\n%s",
                out);
  free(out);
}

static h_proc_t *worker(h_cluster_t *c, int rank, const char *dir,
                        const char *report, const char *dump) {
  char name[16], r[8];
  snprintf(name, sizeof(name), "worker%d", rank);
  snprintf(r, sizeof(r), "%d", rank);
  const char *argv[40];
  int n = 0;
  const char *base[] = {
      "ps-worker", "--scheduler",   c->sched_ep, "--rank",
      r,           "--model",       "ctr",       "--data-dir",
      dir,         "--epochs",      "2",         "--batch-size",
      "64",        "--lr",          "0.05",      "--momentum",
      "0.5",       "--lr-schedule", "cosine",    "--warmup-steps",
      "20",        "--progress-ms", "100",       "--eval-every-epoch=false"};
  for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
    argv[n++] = base[i];
  if (report) {
    argv[n++] = "--report";
    argv[n++] = report;
    argv[n++] = "--dump-weights";
    argv[n++] = dump;
  }
  argv[n] = NULL;
  return h_spawnv(c, name, argv);
}

/* One run on the data in dir; kill: SIGKILL the primary of range 0 a
 * third of the way. */
static outcome_t run(const char *tag, const char *dir, int kill_primary) {
  h_cluster_t c;
  h_init(&c, tag);
  const char *report = h_path(&c, "report.json");
  char dump[600];
  snprintf(dump, sizeof(dump), "%s", h_path(&c, "weights.bin"));
  /* 2 s, not the default 400 ms: on a loaded 2-core machine a live
   * server of the undisturbed run was once declared dead (silent 401 ms)
   * and fenced, which is a failover the test did not ask for. */
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--mode", "bsp",
              "--heartbeat-timeout-ms", "2000", NULL);
  chaos_server_t srv[2];
  memset(srv, 0, sizeof(srv));
  for (int i = 0; i < 2; i++)
    chaos_server_start(&c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_proc_t *w0 = worker(&c, 0, dir, report, dump);
  worker(&c, 1, dir, NULL, NULL);
  uint64_t end = h_deadline_ms(RUN_MS);
  h_proc_t *killed = NULL;
  if (kill_primary) {
    unsigned long step = 0, total = 0;
    while (h_now_ms() < end && !w0->exited &&
           ((step = h_progress_step(w0->log, &total)) == 0 || step < total / 3))
      h_sleep_ms(20);
    if (!(total > 0 && step >= total / 3)) h_dump_logs(&c);
    ck_assert_msg(total > 0 && step >= total / 3,
                  "%s: training did not get a third of the way (step %lu of "
                  "%lu)",
                  tag, step, total);
    unsigned primary;
    char kwhy[256];
    killed = chaos_kill_primary(&c, srv, 2, &primary, kwhy, sizeof(kwhy));
    ck_assert_msg(killed != NULL, "%s", kwhy);
    printf(
        "ctr_failover: killed %s (node %u, primary of range 0) at step %lu of "
        "%lu\n",
        killed->name, primary, step, total);
    fflush(stdout);
  }
  int all = h_wait_all_until(&c, end);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "%s did not finish within %d s", tag, RUN_MS / 1000);
  char ewhy[256];
  ck_assert_msg(chaos_all_exit0_but(&c, killed, ewhy, sizeof(ewhy)), "%s: %s",
                tag, ewhy);
  if (kill_primary)
    ck_assert_msg(h_wait_log(sched->log, "event=failover", 1),
                  "%s: the scheduler logged no failover", tag);
  char *json = h_read_file(report, NULL);
  ck_assert_msg(json != NULL, "%s: no report", tag);
  outcome_t o = {h_json_number(json, "test_auc"),
                 h_json_number(json, "test_log_loss"),
                 h_json_number(json, "steps"), NULL, 0};
  double secs = h_json_number(json, "wall_seconds");
  double params = h_json_number(json, "params");
  free(json);
  o.dump = h_read_file(dump, &o.dump_len);
  ck_assert_msg(o.dump != NULL, "%s: no dump %s", tag, dump);
  /* The dense weights, then one prediction per test row. */
  ck_assert_msg(
      params > 0 && (double)o.dump_len == 4.0 * (params + atof(TEST_ROWS)),
      "%s: a dump of %zu bytes for %.0f weights and %s test rows", tag,
      o.dump_len, params, TEST_ROWS);
  printf(
      "ctr_failover: %s: test AUC %.6f, log loss %.6f after %.0f steps in "
      "%.1f s\n",
      tag, o.auc, o.log_loss, o.steps, secs);
  fflush(stdout);
  return o;
}

/* The first float that differs in two dumps, or -1. */
static long first_difference(const outcome_t *a, const outcome_t *b) {
  size_t n = a->dump_len < b->dump_len ? a->dump_len : b->dump_len;
  for (size_t i = 0; i + 4 <= n; i += 4)
    if (memcmp(a->dump + i, b->dump + i, 4) != 0) return (long)(i / 4);
  return a->dump_len == b->dump_len ? -1 : (long)(n / 4);
}

START_TEST(ctr_survives_a_dead_primary) {
  h_cluster_t c;
  h_init(&c, "chaos_ctr_data");
  char dir[600];
  snprintf(dir, sizeof(dir), "%s", h_path(&c, "data"));
  generate(&c, dir);
  outcome_t base = run("chaos_ctr_base", dir, 0);
  outcome_t fail = run("chaos_ctr_failover", dir, 1);
  long diff = first_difference(&base, &fail);
  printf(
      "ctr_failover: undisturbed AUC %.6f log loss %.6f, primary killed "
      "AUC %.6f log loss %.6f; dumps of %zu floats %s\n",
      base.auc, base.log_loss, fail.auc, fail.log_loss, base.dump_len / 4,
      diff < 0 ? "bitwise equal" : "differ");
  fflush(stdout);
  /* It learned: chance is 0.5. */
  ck_assert_msg(base.auc >= 0.65, "undisturbed AUC %.4f < 0.65", base.auc);
  ck_assert_msg(base.steps == fail.steps, "%.0f steps against %.0f", fail.steps,
                base.steps);
  ck_assert_msg(base.auc == fail.auc && base.log_loss == fail.log_loss,
                "primary killed: AUC %.6f log loss %.6f, undisturbed AUC "
                "%.6f log loss %.6f",
                fail.auc, fail.log_loss, base.auc, base.log_loss);
  ck_assert_msg(diff < 0,
                "the dumps differ from float %ld on (%zu and %zu bytes)", diff,
                base.dump_len, fail.dump_len);
  free(base.dump);
  free(fail.dump);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_ctr_failover");
  TCase *tc = tcase_create("ctr_failover");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, ctr_survives_a_dead_primary);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
