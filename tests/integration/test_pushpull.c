/* Push and pull in one round trip (ps_client_pushpull, issue #15) against
 * real daemons. The model is counters (OPT_ADD: w += g exactly, a BSP step
 * adds its workers' sum) and gradients are small integers, so every weight
 * a reply carries is known exactly.
 *
 * BSP, 2 servers, 2 copies of every range, 2 workers: each step's
 * push-pull must come back with the weights after that step (both workers'
 * gradients in, nothing twice), cut into more chunks per server than the
 * window holds (the servers ack a push-pull whose step waits, which frees
 * its slot: else the step would wait for pieces the full window holds
 * back), whole or as two calls in flight; every third step is a plain
 * push and a pull instead (the servers' Ack.held frees a push's slot while
 * its step waits for the worker's next pieces). At one step the second worker
 * is late; the first's acked push-pulls wait like pulls and are not resent
 * (resend_ms is short): no duplicates.
 *
 * Duplicates (a resend with the same seq gets the weights, applied once):
 * integration.bad_input, pushpull_resend_gets_weights.
 *
 * ASP, 1 copy (the servers' replicator answers at once, before the push is
 * applied): a push-pull's reply must already hold its own push. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "harness.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"
#include "tests/check_run.h"

#define KEYS 100000
#define STEPS 6
#define LATE_STEP 3
#define LATE_MS 1200
#define RESEND_MS 250

static float grad(int rank, int step, uint64_t i) {
  return (float)((int)((i + (uint64_t)rank * 3 + (uint64_t)step * 5) % 7) - 3);
}

static int check_equal(const char *what, int rank, int step, const float *got,
                       const float *want) {
  for (uint64_t i = 0; i < KEYS; i++) {
    if (got[i] == want[i]) continue;
    fprintf(stderr,
            "pushpull: worker %d, %s, step %d: key %" PRIu64
            " is %g, want %g\n",
            rank, what, step, i, got[i], want[i]);
    return 0;
  }
  return 1;
}

static ps_client_t *connect_client(const char *sched_ep, int rank,
                                   int resend_ms, ps_model_t *model) {
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  o.window = 2;
  o.chunk_bytes = 64 << 10; /* 16384 keys: several pieces per server */
  o.resend_ms = resend_ms;
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, model, &err, msg, sizeof(msg));
  if (c == NULL) fprintf(stderr, "pushpull: worker %d: %s\n", rank, msg);
  return c;
}

static int bsp_worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, KEYS, PS__OPTIMIZER__OPT_ADD, 0.0f);
  ps_client_t *c = connect_client(sched_ep, rank, RESEND_MS, &model);
  if (c == NULL) return 1;
  float *g = malloc(KEYS * sizeof(float));
  float *out = malloc(KEYS * sizeof(float));
  float *want = calloc(KEYS, sizeof(float));
  int ok = g && out && want;
  for (int step = 0; ok && step < STEPS; step++) {
    for (uint64_t i = 0; i < KEYS; i++) {
      g[i] = grad(rank, step, i);
      want[i] += grad(0, step, i) + grad(1, step, i);
    }
    if (rank == 1 && step == LATE_STEP) h_sleep_ms(LATE_MS);
    memset(out, 0xff, KEYS * sizeof(float)); /* NaN: no stale value passes */
    if (step % 3 == 2) {
      /* A plain push, as many pieces per server: with replication per
       * step its acks wait for the step, which waits for the pieces behind
       * it in the window, so the servers say Ack.held to free the slots. */
      ok = ps_client_push(c, 0, KEYS, g, (uint64_t)step) == PS_OK &&
           ps_client_pull(c, 0, KEYS, out, (uint64_t)step + 1) == PS_OK;
    } else if (step % 2 == 0) {
      ok = ps_client_pushpull(c, 0, KEYS, g, (uint64_t)step, out) == PS_OK;
    } else {
      /* Two calls in flight, as the trainer's layered push-pulls. */
      uint64_t tk[2];
      uint64_t half = KEYS / 2 + 123;
      ok = ps_client_pushpull_start(c, half, KEYS - half, g + half,
                                    (uint64_t)step, out + half,
                                    &tk[0]) == PS_OK &&
           ps_client_pushpull_start(c, 0, half, g, (uint64_t)step, out,
                                    &tk[1]) == PS_OK;
      int ok0 = ok && ps_client_wait(c, tk[0]) == PS_OK;
      int ok1 = ok && ps_client_wait(c, tk[1]) == PS_OK;
      ok = ok0 && ok1;
    }
    if (!ok)
      fprintf(stderr, "pushpull: worker %d step %d: %s\n", rank, step,
              ps_client_errmsg(c));
    ok = ok && check_equal("push-pull reply", rank, step, out, want);
  }
  /* A separate pull agrees: what the push-pulls brought is the state. */
  ok = ok && ps_client_pull(c, 0, KEYS, out, STEPS) == PS_OK &&
       check_equal("pull after the last step", rank, STEPS, out, want);
  uint64_t dups = ps_client_duplicate_acks(c);
  fprintf(stderr, "pushpull: worker %d: %" PRIu64 " duplicate replies\n", rank,
          dups);
  if (ok && dups != 0) {
    fprintf(stderr,
            "pushpull: worker %d resent acked push-pulls while worker 1 was "
            "%d ms late (resend_ms %d)\n",
            rank, LATE_MS, RESEND_MS);
    ok = 0;
  }
  ps_client_destroy(&c);
  free(g);
  free(out);
  free(want);
  return ok ? 0 : 1;
}

START_TEST(bsp_pushpull_brings_the_next_steps_weights) {
  h_cluster_t c;
  h_init(&c, "pushpull_bsp");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", "bsp", "--replication", "2",
          "--heartbeat-timeout-ms", "60000", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_workers_start(&c, 2, bsp_worker);
  int failed = !h_workers_reap(120000);
  char why[256] = "";
  int all = h_wait_all_exit0(&c, 0, 20000, why, sizeof(why));
  if (failed || !all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "a worker saw wrong weights or failed (see above)");
  ck_assert_msg(all, "after the job: %s", why);
}
END_TEST

static int asp_worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, KEYS, PS__OPTIMIZER__OPT_ADD, 0.0f);
  ps_client_t *c = connect_client(sched_ep, rank, 1000, &model);
  if (c == NULL) return 1;
  float *g = malloc(KEYS * sizeof(float));
  float *out = malloc(KEYS * sizeof(float));
  float *want = calloc(KEYS, sizeof(float));
  int ok = g && out && want;
  for (int step = 0; ok && step < STEPS; step++) {
    for (uint64_t i = 0; i < KEYS; i++) {
      g[i] = grad(rank, step, i);
      want[i] += g[i];
    }
    if (step == 2) {
      /* A plain push first: the next push-pull's reply holds both. */
      ok = ps_client_push(c, 0, KEYS, g, (uint64_t)step) == PS_OK;
      for (uint64_t i = 0; i < KEYS; i++) want[i] += g[i];
    }
    memset(out, 0xff, KEYS * sizeof(float));
    ok = ok && ps_client_pushpull(c, 0, KEYS, g, (uint64_t)step, out) == PS_OK;
    if (!ok)
      fprintf(stderr, "pushpull: asp step %d: %s\n", step, ps_client_errmsg(c));
    ok = ok && check_equal("asp push-pull reply", rank, step, out, want);
  }
  /* The gradient is sent from where it lies: it may not be the output. */
  if (ok && ps_client_pushpull(c, 0, 100, g, 99, g + 50) != PS_ERR_INVAL) {
    fprintf(stderr, "pushpull: overlapping buffers were not refused\n");
    ok = 0;
  }
  ps_client_destroy(&c);
  free(g);
  free(out);
  free(want);
  return ok ? 0 : 1;
}

START_TEST(asp_pushpull_reply_holds_its_own_push) {
  h_cluster_t c;
  h_init(&c, "pushpull_asp");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "1", "--mode", "asp", "--replication", "1", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_workers_start(&c, 1, asp_worker);
  int failed = !h_workers_reap(120000);
  char why[256] = "";
  int all = h_wait_all_exit0(&c, 0, 20000, why, sizeof(why));
  if (failed || !all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "the worker saw wrong weights or failed (see above)");
  ck_assert_msg(all, "after the job: %s", why);
}
END_TEST

int main(void) {
  Suite *s = suite_create("pushpull");
  TCase *tc = tcase_create("pushpull");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, bsp_pushpull_brings_the_next_steps_weights);
  tcase_add_test(tc, asp_pushpull_reply_holds_its_own_push);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
