/* The pipelined data plane against real daemons: 4 workers on 2 servers
 * (ASP) push many chunked gradients with several calls in flight at once,
 * each worker with its own chunking (none, larger and smaller than a server
 * block, the default); the weights must come out exactly init - sum.
 * Gradients are integer-valued and lr * 1/workers is 1, so every sum is
 * exact in float whatever order the pushes land in. Then one worker starts a
 * window of pushes and a pull without waiting in between: the pull must see
 * every one of them. The servers' stats show that pull replies went out both
 * zero-copy (whole blocks) and copied (short runs).
 *
 * The phases are kept in step by the test process over pipes rather than
 * by scheduler barriers, so the test holds the data plane alone. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "harness.h"
#include "proto/ps.pb-c.h"
#include "tests/check_run.h"
#include "ps/client.h"

#define WORKERS 4
#define SERVERS 2
/* Per server: 1.5 blocks (ps-server/shard.h), not a multiple of a block,
 * so replies mix whole blocks with short runs. */
#define PER_SERVER 400000
#define TOTAL (SERVERS * PER_SERVER)
#define ROUNDS 6
#define WINDOW_PUSHES 3

static float grad_value(int rank, int round, uint64_t i) {
  return (float)((int)((i * 7 + (uint64_t)rank * 3 + (uint64_t)round) % 11) -
                 5);
}

static void fill(float *g, int rank, int round) {
  for (uint64_t i = 0; i < TOTAL; i++) g[i] = grad_value(rank, round, i);
}

static int check_equal(const char *what, const float *got, const float *want) {
  for (uint64_t i = 0; i < TOTAL; i++) {
    if (got[i] == want[i]) continue;
    fprintf(stderr, "pipeline: %s: key %" PRIu64 " is %g, want %g\n", what, i,
            got[i], want[i]);
    return 0;
  }
  return 1;
}

/* The test's own barrier: each worker says it arrived, the test answers
 * once all have. */
/* The worker links only libps-client's symbols: the harness also links the
 * static ps-common, and pulling an object from both would define its
 * globals twice (ASan's ODR check). */
static int worker(const char *sched_ep, int rank) {
  static const uint64_t chunks[WORKERS] = {300000 * 4, 0, 16384 * 4, 1u << 20};
  ps_tensor_spec_t t;
  ps_model_t model;
  /* ASP scales the learning rate by 1/WORKERS. */
  h_dense_model(&model, &t, TOTAL, PS__OPTIMIZER__OPT_SGD, (float)WORKERS);
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  o.window = 3;
  o.chunk_bytes = chunks[rank];
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "pipeline: worker %d: %s\n", rank, msg);
    return 1;
  }
  float *g[ROUNDS], *out = malloc(TOTAL * sizeof(float));
  float *want = calloc(TOTAL, sizeof(float));
  for (int k = 0; k < ROUNDS; k++) {
    g[k] = malloc(TOTAL * sizeof(float));
    fill(g[k], rank, k);
  }
  /* What everyone pushes in phase 1, summed: the same in every worker. */
  for (int r = 0; r < WORKERS; r++)
    for (int k = 0; k < ROUNDS; k++)
      for (uint64_t i = 0; i < TOTAL; i++) want[i] -= grad_value(r, k, i);

  int ok = h_worker_sync(rank);
  /* Phase 1: every round's push in flight at once, a pull among them. */
  uint64_t tk[ROUNDS + 1];
  for (int k = 0; ok && k < ROUNDS; k++) {
    ok = ps_client_push_start(c, 0, TOTAL, g[k], (uint64_t)k, &tk[k]) == PS_OK;
    if (ok && k == ROUNDS / 2)
      ok = ps_client_pull_start(c, 0, TOTAL, out, 0, &tk[ROUNDS]) == PS_OK;
  }
  for (int k = 0; ok && k <= ROUNDS; k++)
    ok = ps_client_wait(c, tk[k]) == PS_OK;
  if (!ok)
    fprintf(stderr, "pipeline: worker %d: %s\n", rank, ps_client_errmsg(c));
  ok = h_worker_sync(rank) && ok;
  if (ok && rank == 0) {
    ok = ps_client_pull(c, 0, TOTAL, out, 0) == PS_OK &&
         check_equal("after phase 1", out, want);
    /* Phase 2: a window of pushes, then a pull, none waited for yet. */
    for (int k = 0; ok && k < WINDOW_PUSHES; k++) {
      ok = ps_client_push_start(c, 0, TOTAL, g[k], 100, &tk[k]) == PS_OK;
      for (uint64_t i = 0; i < TOTAL; i++) want[i] -= g[k][i];
    }
    ok = ok &&
         ps_client_pull_start(c, 0, TOTAL, out, 0, &tk[WINDOW_PUSHES]) == PS_OK;
    for (int k = 0; ok && k <= WINDOW_PUSHES; k++)
      ok = ps_client_wait(c, tk[k]) == PS_OK;
    ok = ok && check_equal("pull after a window of pushes", out, want);
  } else {
    for (int k = 0; k < WINDOW_PUSHES; k++)
      for (uint64_t i = 0; i < TOTAL; i++) want[i] -= grad_value(0, k, i);
  }
  ok = h_worker_sync(rank) && ok;
  /* Everyone sees the final weights, pulled with its own chunking; odd
   * ranks read them where they landed (zero-copy pull: spans of whole
   * blocks and of short runs, in key order). */
  memset(out, 0, TOTAL * sizeof(float));
  if (rank % 2 == 0) {
    ok = ok && ps_client_pull(c, 0, TOTAL, out, 0) == PS_OK;
  } else if (ok) {
    uint64_t ticket;
    const ps_client_span_t *sp;
    size_t n = 0;
    ok = ps_client_pull_frames_start(c, 0, TOTAL, 0, &ticket) == PS_OK &&
         ps_client_wait_frames(c, ticket, &sp, &n) == PS_OK;
    uint64_t key = 0;
    for (size_t i = 0; ok && i < n; i++) {
      ok = sp[i].key_begin == key && key + sp[i].count <= TOTAL;
      if (ok) memcpy(out + key, sp[i].values, sp[i].count * sizeof(float));
      key += sp[i].count;
    }
    ok = ok && key == TOTAL && n > SERVERS;
    if (!ok)
      fprintf(stderr, "pipeline: worker %d: %zu spans are not the slice\n",
              rank, n);
    ps_client_release(c, ticket);
  }
  ok = ok && check_equal("final", out, want);
  if (!ok)
    fprintf(stderr, "pipeline: worker %d failed: %s\n", rank,
            ps_client_errmsg(c));
  ps_client_destroy(&c);
  for (int k = 0; k < ROUNDS; k++) free(g[k]);
  free(out);
  free(want);
  return ok ? 0 : 1;
}

static unsigned long long stat_of(const char *log, const char *key) {
  char *s = h_read_file(log, NULL);
  unsigned long long v = 0;
  const char *p = s ? strstr(s, key) : NULL;
  if (p) v = strtoull(p + strlen(key), NULL, 10);
  free(s);
  return v;
}

START_TEST(pipelined_pushes_sum_exactly) {
  h_cluster_t c;
  h_init(&c, "pipeline");
  char workers[8];
  snprintf(workers, sizeof(workers), "%d", WORKERS);
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", workers, "--mode", "asp", "--heartbeat-timeout-ms",
          "60000", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_workers_start(&c, WORKERS, worker);
  /* Three sync points; a worker that fails still passes them (or dies, and
   * its pipe says so), so no one waits forever. */
  for (int phase = 0; phase < 3; phase++) h_workers_sync();
  int failed = !h_workers_reap(200000);
  /* All workers done: the job ends and the daemons exit by themselves, with
   * status 0 (in the ASan build also: no sanitizer report of leaked or misused
   * frames). */
  char why[256] = "";
  int all = h_wait_all_exit0(&c, 0, 20000, why, sizeof(why));
  if (failed) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "a worker saw wrong weights or failed (see above)");
  ck_assert_msg(all, "after the job: %s", why);
  unsigned long long zc = 0, copied = 0, cow = 0;
  for (int i = 1; i <= 2; i++) {
    zc += stat_of(c.procs[i].log, "pull_bytes_zero_copy=");
    copied += stat_of(c.procs[i].log, "pull_bytes_copied=");
    cow += stat_of(c.procs[i].log, "cow_applies=");
  }
  fprintf(stderr,
          "pipeline: pull bytes zero-copy %llu, copied %llu; cow applies "
          "%llu\n",
          zc, copied, cow);
  ck_assert_msg(zc > 0, "no pull reply went out zero-copy");
  ck_assert_msg(copied > 0, "no short run was copied");
}
END_TEST

int main(void) {
  Suite *s = suite_create("pipeline");
  TCase *tc = tcase_create("pipeline");
  tcase_set_timeout(tc, 280);
  tcase_add_test(tc, pipelined_pushes_sum_exactly);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
