/* Sparse tables against real daemons (issue #3): 2 workers on 2 servers
 * (ASP) push integer-valued gradient rows for the same ids, in their own
 * shuffled orders, several rounds; lr * 1/workers is 1 and the table starts
 * at zero, so every row must come out exactly -(sum of its gradients)
 * whatever order the pushes land in. The ids are spread over both servers
 * (checked with the documented partition formula, written out here). A
 * second table, never pushed, must pull the documented initial rows. An
 * unknown table is an error, and nothing is left behind.
 *
 * The workers link only libps-client's symbols (see
 * tests/integration/test_pipeline.c), so the partition and init formulas are
 * spelled out here, independently. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "harness.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"
#include "scrape.h"
#include "tests/check_run.h"

#define WORKERS 2
#define NKEYS 700
#define ROUNDS 3
#define DIM 4
#define UDIM 3

static uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t salt_of(const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ULL;
  }
  return mix64(h);
}

/* Element j of row id: uniform(-scale, scale) from the counter stream of
 * (seed, table, id), as ps-server/sparse.c documents. */
static float init_value(uint64_t seed, uint64_t salt, uint64_t id, uint64_t j,
                        float scale) {
  uint64_t row_seed = mix64(seed ^ mix64(salt + id));
  uint64_t z = mix64(mix64(row_seed) + (j + 1) * 0x9e3779b97f4a7c15ULL);
  int32_t m = (int32_t)(z >> 40);
  return scale * ((float)(2 * m + 1 - (1 << 24)) * 0x1p-24f);
}

static uint64_t key_of(int i) {
  return (uint64_t)i * 1000003ULL + 17;
}

static float grad_value(int rank, int round, uint64_t id, int j) {
  return (float)((int)((id + (uint64_t)j * 3 + (uint64_t)rank * 5 +
                        (uint64_t)round) %
                       9) -
                 4);
}

static int worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  /* ASP scales the learning rate by 1/WORKERS. */
  h_dense_model(&model, &t, 64, PS__OPTIMIZER__OPT_SGD, (float)WORKERS);
  model.seed = 5; /* the uniform rows' init_value(5, ...) */
  ps_sparse_spec_t sp[2];
  memset(sp, 0, sizeof(sp));
  snprintf(sp[0].name, sizeof(sp[0].name), "emb");
  sp[0].dim = DIM;
  sp[0].init = PS__INIT__INIT_ZERO;
  snprintf(sp[1].name, sizeof(sp[1].name), "emb_u");
  sp[1].dim = UDIM;
  sp[1].init = PS__INIT__INIT_UNIFORM;
  sp[1].init_scale = 0.25f;
  model.nsparse = 2;
  model.sparse = sp;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "sparse: worker %d: %s\n", rank, msg);
    return 1;
  }
  uint64_t *keys = malloc(NKEYS * sizeof(*keys));
  float *g = malloc(NKEYS * DIM * sizeof(float));
  float *out = malloc(NKEYS * DIM * sizeof(float));
  int ok = h_worker_sync(rank);
  for (int round = 0; ok && round < ROUNDS; round++) {
    /* Each worker and round its own order: a rotation plus reversal. */
    for (int i = 0; i < NKEYS; i++) {
      int k = (i * 3 + round * 13) % NKEYS;
      if (rank == 1) k = NKEYS - 1 - (i + round * 29) % NKEYS;
      keys[i] = key_of(k);
      for (int j = 0; j < DIM; j++)
        g[i * DIM + j] = grad_value(rank, round, keys[i], j);
    }
    if (ps_client_sparse_push(c, "emb", keys, NKEYS, g, (uint64_t)round) !=
        PS_OK) {
      fprintf(stderr, "sparse: worker %d push: %s\n", rank,
              ps_client_errmsg(c));
      ok = 0;
    }
  }
  ok = h_worker_sync(rank) && ok;
  if (ok && rank == 0) {
    /* Every row, in a third order: -(sum over workers and rounds). */
    for (int i = 0; i < NKEYS; i++) keys[i] = key_of((i * 11) % NKEYS);
    ok = ps_client_sparse_pull(c, "emb", keys, NKEYS, out) == PS_OK;
    if (!ok) fprintf(stderr, "sparse: pull: %s\n", ps_client_errmsg(c));
    for (int i = 0; ok && i < NKEYS; i++)
      for (int j = 0; ok && j < DIM; j++) {
        float want = 0;
        for (int r = 0; r < WORKERS; r++)
          for (int k = 0; k < ROUNDS; k++) want -= grad_value(r, k, keys[i], j);
        if (out[i * DIM + j] != want) {
          fprintf(stderr, "sparse: row %" PRIu64 "[%d] is %g, want %g\n",
                  keys[i], j, (double)out[i * DIM + j], (double)want);
          ok = 0;
        }
      }
    /* The ids really are on both servers. */
    const ps_view_t *v = ps_client_view(c);
    uint64_t salt = salt_of("emb");
    int on[2] = {0, 0};
    for (int i = 0; ok && i < NKEYS; i++) {
      uint64_t h = mix64(keys[i] ^ salt) >> 32;
      on[(h * v->nsparse_parts) >> 32]++;
    }
    if (ok &&
        (v->nsparse_parts != 2 || on[0] < NKEYS / 4 || on[1] < NKEYS / 4)) {
      fprintf(stderr, "sparse: %zu ranges, rows %d and %d\n", v->nsparse_parts,
              on[0], on[1]);
      ok = 0;
    }
    /* Untouched rows of the uniform table are its initializer's. */
    float *u = malloc(NKEYS * UDIM * sizeof(float));
    ok = ok && ps_client_sparse_pull(c, "emb_u", keys, NKEYS, u) == PS_OK;
    uint64_t usalt = salt_of("emb_u");
    int nonzero = 0;
    for (int i = 0; ok && i < NKEYS; i++)
      for (int j = 0; ok && j < UDIM; j++) {
        float want = init_value(5, usalt, keys[i], (uint64_t)j, 0.25f);
        nonzero += want != 0;
        if (u[i * UDIM + j] != want) {
          fprintf(stderr, "sparse: init row %" PRIu64 "[%d] is %g, want %g\n",
                  keys[i], j, (double)u[i * UDIM + j], (double)want);
          ok = 0;
        }
      }
    ok = ok && nonzero > NKEYS;
    free(u);
    /* Errors: an unknown table, a duplicate key. */
    int rc = ps_client_sparse_pull(c, "nope", keys, 1, out);
    if (rc != PS_ERR_UNKNOWN_KEY || !strstr(ps_client_errmsg(c), "nope")) {
      fprintf(stderr, "sparse: unknown table gave %d: %s\n", rc,
              ps_client_errmsg(c));
      ok = 0;
    }
    keys[1] = keys[0];
    rc = ps_client_sparse_push(c, "emb", keys, 2, g, 0);
    if (rc != PS_ERR_INVAL) {
      fprintf(stderr, "sparse: duplicate keys gave %d\n", rc);
      ok = 0;
    }
  }
  if (!ok)
    fprintf(stderr, "sparse: worker %d failed: %s\n", rank,
            ps_client_errmsg(c));
  ps_client_destroy(&c);
  free(keys);
  free(g);
  free(out);
  return ok ? 0 : 1;
}

START_TEST(sparse_pushes_sum_exactly) {
  h_cluster_t c;
  h_init(&c, "sparse");
  char workers[8];
  snprintf(workers, sizeof(workers), "%d", WORKERS);
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", workers, "--mode", "asp", "--heartbeat-timeout-ms",
          "60000", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_workers_start(&c, WORKERS, worker);
  /* Two sync points; a worker that fails still passes them (or dies, and
   * its pipe says so), so no one waits forever. */
  for (int phase = 0; phase < 2; phase++) h_workers_sync();
  int failed = !h_workers_reap(120000);
  /* All workers done: the job ends and the daemons exit by themselves, with
   * status 0. */
  char why[256] = "";
  int all = h_wait_all_exit0(&c, 0, 20000, why, sizeof(why));
  if (failed) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "a worker saw wrong rows or failed (see above)");
  ck_assert_msg(all, "after the job: %s", why);
}
END_TEST

/* BSP (issue #14): 2 workers each push sparse gradients for the same rows
 * every step; a row must not move until the step's dense push completes
 * it, and then move by the mean of the two, exactly what one process of
 * twice the batch would apply: w -= lr * (g0 + g1) / 2. The gradients are
 * small integers and lr is 1, so the expected rows are exact. */
#define BSP_STEPS 3

static float bsp_grad(int rank, int step, uint64_t id, int j) {
  return (float)((int)((id * 7 + (uint64_t)j + (uint64_t)rank * 3 +
                        (uint64_t)step * 5) %
                       11) -
                 5);
}

static int bsp_rows_are(ps_client_t *c, const uint64_t *keys, float *out,
                        int steps, const char *when) {
  if (ps_client_sparse_pull(c, "emb", keys, NKEYS, out) != PS_OK) {
    fprintf(stderr, "sparse bsp: pull %s: %s\n", when, ps_client_errmsg(c));
    return 0;
  }
  for (int i = 0; i < NKEYS; i++)
    for (int j = 0; j < DIM; j++) {
      float want = 0;
      for (int t = 0; t < steps; t++)
        want -= (bsp_grad(0, t, keys[i], j) + bsp_grad(1, t, keys[i], j)) / 2;
      if (out[i * DIM + j] != want) {
        fprintf(stderr, "sparse bsp: %s: row %" PRIu64 "[%d] is %g, want %g\n",
                when, keys[i], j, (double)out[i * DIM + j], (double)want);
        return 0;
      }
    }
  return 1;
}

static int bsp_worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, 64, PS__OPTIMIZER__OPT_SGD, 1.0f);
  ps_sparse_spec_t sp;
  memset(&sp, 0, sizeof(sp));
  snprintf(sp.name, sizeof(sp.name), "emb");
  sp.dim = DIM;
  sp.init = PS__INIT__INIT_ZERO;
  model.nsparse = 1;
  model.sparse = &sp;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "sparse bsp: worker %d: %s\n", rank, msg);
    return 1;
  }
  uint64_t *keys = malloc(NKEYS * sizeof(*keys));
  float *g = malloc(NKEYS * DIM * sizeof(float));
  float *out = malloc(NKEYS * DIM * sizeof(float));
  float dense[64], w[64];
  memset(dense, 0, sizeof(dense));
  int ok = h_worker_sync(rank);
  for (int step = 0; step < BSP_STEPS; step++) {
    for (int i = 0; i < NKEYS; i++) {
      keys[i] = key_of(rank == 0 ? i : NKEYS - 1 - i);
      for (int j = 0; j < DIM; j++)
        g[i * DIM + j] = bsp_grad(rank, step, keys[i], j);
    }
    if (ok && ps_client_sparse_push(c, "emb", keys, NKEYS, g, (uint64_t)step) !=
                  PS_OK) {
      fprintf(stderr, "sparse bsp: worker %d push: %s\n", rank,
              ps_client_errmsg(c));
      ok = 0;
    }
    /* Both pushed their rows of the step: still the last step's. */
    ok = h_worker_sync(rank) && ok;
    if (ok && rank == 0) ok = bsp_rows_are(c, keys, out, step, "mid-step");
    ok = h_worker_sync(rank) && ok;
    if (ok && (ps_client_push(c, 0, 64, dense, (uint64_t)step) != PS_OK ||
               ps_client_pull(c, 0, 64, w, (uint64_t)step + 1) != PS_OK)) {
      fprintf(stderr, "sparse bsp: worker %d dense: %s\n", rank,
              ps_client_errmsg(c));
      ok = 0;
    }
    if (ok) ok = bsp_rows_are(c, keys, out, step + 1, "after the step");
  }
  ok = h_worker_sync(rank) && ok;
  ps_client_destroy(&c);
  free(keys);
  free(g);
  free(out);
  return ok ? 0 : 1;
}

START_TEST(sparse_bsp_two_workers_equal_one) {
  h_cluster_t c;
  h_init(&c, "sparse_bsp");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", "bsp", "--heartbeat-timeout-ms",
          "60000", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_workers_start(&c, 2, bsp_worker);
  for (int phase = 0; phase < 2 + 2 * BSP_STEPS; phase++) h_workers_sync();
  int failed = !h_workers_reap(120000);
  char why[256] = "";
  int all = h_wait_all_exit0(&c, 0, 20000, why, sizeof(why));
  if (failed) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "a worker saw wrong rows or failed (see above)");
  ck_assert_msg(all, "after the job: %s", why);
}
END_TEST

/* Checkpoints (issue #14): a BSP job on 2 servers (momentum, so a row is
 * weights and velocity) writes a checkpoint at step 2 and trains on to
 * step 4; a job restored from step 2 onto 3 servers, whose rows are filed
 * under other ranges than they were written from, trains steps 2-3 with the
 * same gradients and must end with bitwise the rows of the first job. Rows
 * never pushed still read as the initializer. */
#define CK_STEPS 4
#define CK_AT 2
#define CK_KEYS 300

static char ck_dump[700];
/* --sparse-admit-after for the servers of a ck_job, or NULL. */
static const char *ck_admit;

static int ck_worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, 64, PS__OPTIMIZER__OPT_SGD, 0.25f);
  model.momentum = 0.5f;
  model.seed = 9;
  ps_sparse_spec_t sp;
  memset(&sp, 0, sizeof(sp));
  snprintf(sp.name, sizeof(sp.name), "emb");
  sp.dim = DIM;
  sp.init = PS__INIT__INIT_UNIFORM;
  sp.init_scale = 0.5f;
  model.nsparse = 1;
  model.sparse = &sp;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "sparse ck: worker %d: %s\n", rank, msg);
    h_worker_sync(rank);
    h_worker_sync(rank);
    return 1;
  }
  uint64_t start = ps_client_view(c)->start_clock;
  uint64_t *keys = malloc(2 * CK_KEYS * sizeof(*keys));
  float *g = malloc(CK_KEYS * DIM * sizeof(float));
  float *out = malloc(2 * CK_KEYS * DIM * sizeof(float));
  float dense[64], w[64];
  memset(dense, 0, sizeof(dense));
  int ok = 1;
  for (uint64_t step = start; ok && step < CK_STEPS; step++) {
    /* Each worker its half of the keys and a few of the other's. */
    for (int i = 0; i < CK_KEYS; i++) {
      keys[i] = key_of(rank * (CK_KEYS - 20) + i);
      for (int j = 0; j < DIM; j++)
        g[i * DIM + j] = bsp_grad(rank, (int)step, keys[i], j) * 0.37f;
    }
    ok = ps_client_sparse_push(c, "emb", keys, CK_KEYS, g, step) == PS_OK &&
         ps_client_push(c, 0, 64, dense, step) == PS_OK &&
         ps_client_pull(c, 0, 64, w, step + 1) == PS_OK;
    if (!ok)
      fprintf(stderr, "sparse ck: worker %d step %llu: %s\n", rank,
              (unsigned long long)step, ps_client_errmsg(c));
    /* The test waits for the checkpoint of step CK_AT here. */
    if (step + 1 == CK_AT) ok = h_worker_sync(rank) && ok;
  }
  if (start >= CK_AT) ok = h_worker_sync(rank) && ok;
  ok = h_worker_sync(rank) && ok;
  if (ok && rank == 0) {
    /* Every row pushed, and as many never pushed. */
    for (int i = 0; i < 2 * CK_KEYS; i++)
      keys[i] = key_of(i < CK_KEYS + 20 ? i : 100000 + i);
    ok = ps_client_sparse_pull(c, "emb", keys, 2 * CK_KEYS, out) == PS_OK;
    FILE *f = ok ? fopen(ck_dump, "wb") : NULL;
    ok = f && fwrite(out, sizeof(float), 2 * CK_KEYS * DIM, f) ==
                  (size_t)(2 * CK_KEYS * DIM);
    if (f) ok = fclose(f) == 0 && ok;
    if (!ok) fprintf(stderr, "sparse ck: dump: %s\n", ps_client_errmsg(c));
  }
  ps_client_destroy(&c);
  free(keys);
  free(g);
  free(out);
  return ok ? 0 : 1;
}

/* One job: nservers servers, 2 ck_workers; extra: scheduler arguments (2).
 * wait_ck: the checkpoint manifest to wait for at the workers' first
 * sync point. */
static int ck_job(h_cluster_t *c, const char *tag, const char *nservers,
                  const char *a1, const char *a2, const char *a3,
                  const char *a4, const char *wait_ck) {
  h_new_sched_ep(c);
  int from = c->nprocs;
  char name[64];
  snprintf(name, sizeof(name), "%s_scheduler", tag);
  h_spawn(c, name, "ps-scheduler", "--bind", c->sched_ep, "--servers", nservers,
          "--workers", "2", "--mode", "bsp", "--heartbeat-timeout-ms", "60000",
          a1, a2, a3, a4, NULL);
  for (int i = 0; i < atoi(nservers); i++) {
    snprintf(name, sizeof(name), "%s_server%d", tag, i);
    h_spawn(c, name, "ps-server", "--scheduler", c->sched_ep,
            ck_admit ? "--sparse-admit-after" : NULL, ck_admit, NULL);
  }
  h_workers_start(c, 2, ck_worker);
  h_workers_sync();
  if (wait_ck) {
    uint64_t end = h_deadline_ms(30000);
    struct stat st;
    while (stat(wait_ck, &st) != 0 && h_now_ms() < end) usleep(20000);
  }
  h_workers_sync();
  int ok = h_workers_reap(120000);
  char why[256] = "";
  int all = h_wait_all_exit0(c, from, 30000, why, sizeof(why));
  if (!ok || !all) {
    fprintf(stderr, "sparse ck: job %s: %s\n", tag, why);
    h_dump_logs(c);
  }
  return ok && all;
}

START_TEST(sparse_checkpoint_restored_onto_3_servers) {
  h_cluster_t c;
  h_init(&c, "sparse_ck");
  char ck[700], manifest[800], orig[700], restored[700];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  snprintf(manifest, sizeof(manifest), "%s/ckpt-%012d/MANIFEST", ck, CK_AT);
  snprintf(orig, sizeof(orig), "%s", h_path(&c, "orig.bin"));
  snprintf(restored, sizeof(restored), "%s", h_path(&c, "restored.bin"));
  snprintf(ck_dump, sizeof(ck_dump), "%s", orig);
  ck_assert(ck_job(&c, "orig", "2", "--checkpoint-dir", ck,
                   "--checkpoint-every-steps", "2", manifest));
  struct stat st;
  ck_assert_msg(stat(manifest, &st) == 0, "no checkpoint at step %d", CK_AT);
  char at[800];
  snprintf(at, sizeof(at), "%s/ckpt-%012d", ck, CK_AT);
  snprintf(ck_dump, sizeof(ck_dump), "%s", restored);
  ck_assert(ck_job(&c, "r3", "3", "--restore", at, NULL, NULL, NULL));
  ck_assert(h_wait_log(h_path(&c, "r3_server2.log"), "event=restored", 1));
  size_t na, nb;
  float *a = (float *)h_read_file(orig, &na);
  float *b = (float *)h_read_file(restored, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(na, 2 * CK_KEYS * DIM * sizeof(float));
  ck_assert_uint_eq(na, nb);
  for (size_t i = 0; i < na / sizeof(float); i++)
    ck_assert_msg(memcmp(&a[i], &b[i], sizeof(float)) == 0,
                  "row %zu[%zu]: %g after the restore, %g in the first job",
                  i / DIM, i % DIM, (double)b[i], (double)a[i]);
  /* The rows that were never pushed are the initializer's, and those that
   * were are not. */
  uint64_t salt = salt_of("emb");
  int moved = 0;
  for (int i = 0; i < 2 * CK_KEYS; i++) {
    uint64_t id = key_of(i < CK_KEYS + 20 ? i : 100000 + i);
    int same = 1;
    for (int j = 0; j < DIM; j++)
      same &= a[i * DIM + j] == init_value(9, salt, id, (uint64_t)j, 0.5f);
    if (i >= CK_KEYS + 20) ck_assert_msg(same, "row %d is not its init", i);
    moved += !same;
  }
  ck_assert_int_eq(moved, CK_KEYS + 20);
  free(a);
  free(b);
  h_kill_all(&c);
}
END_TEST

/* The admission sketch is in the checkpoint (issue #14): with
 * --sparse-admit-after 4, a row is made by its id's 4th push. At the
 * checkpoint (step 2) the ids one worker pushes were pushed twice and have
 * no row; the first job makes them at step 3. A job restored onto the same
 * 2 servers must do the same (counts restarting at 0 would leave them at
 * their initializer): its rows equal the first job's bitwise. Restored onto
 * 3 servers, where each range gets the sum of the sketches (early, never
 * late), every row the first job made is made too. */
START_TEST(sparse_checkpoint_keeps_admission_counts) {
  h_cluster_t c;
  h_init(&c, "sparse_admit");
  ck_admit = "4";
  char ck[700], manifest[800], orig[700], same[700], other[700];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  snprintf(manifest, sizeof(manifest), "%s/ckpt-%012d/MANIFEST", ck, CK_AT);
  snprintf(orig, sizeof(orig), "%s", h_path(&c, "orig.bin"));
  snprintf(same, sizeof(same), "%s", h_path(&c, "same.bin"));
  snprintf(other, sizeof(other), "%s", h_path(&c, "other.bin"));
  snprintf(ck_dump, sizeof(ck_dump), "%s", orig);
  ck_assert(ck_job(&c, "orig", "2", "--checkpoint-dir", ck,
                   "--checkpoint-every-steps", "2", manifest));
  char at[800];
  snprintf(at, sizeof(at), "%s/ckpt-%012d", ck, CK_AT);
  snprintf(ck_dump, sizeof(ck_dump), "%s", same);
  ck_assert(ck_job(&c, "r2", "2", "--restore", at, NULL, NULL, NULL));
  snprintf(ck_dump, sizeof(ck_dump), "%s", other);
  ck_assert(ck_job(&c, "r3", "3", "--restore", at, NULL, NULL, NULL));
  ck_admit = NULL;
  size_t na, nb, nc;
  float *a = (float *)h_read_file(orig, &na);
  float *b = (float *)h_read_file(same, &nb);
  float *o = (float *)h_read_file(other, &nc);
  ck_assert(a && b && o);
  ck_assert_uint_eq(na, 2 * CK_KEYS * DIM * sizeof(float));
  ck_assert_uint_eq(nb, na);
  ck_assert_uint_eq(nc, na);
  uint64_t salt = salt_of("emb");
  int made = 0, made_after = 0;
  for (int i = 0; i < 2 * CK_KEYS; i++) {
    uint64_t id = key_of(i < CK_KEYS + 20 ? i : 100000 + i);
    int init_a = 1, init_o = 1;
    for (int j = 0; j < DIM; j++) {
      float want = init_value(9, salt, id, (uint64_t)j, 0.5f);
      init_a &= a[i * DIM + j] == want;
      init_o &= o[i * DIM + j] == want;
      ck_assert_msg(
          memcmp(&a[i * DIM + j], &b[i * DIM + j], sizeof(float)) == 0,
          "row %d[%d]: %g after the restore onto 2 servers, %g in "
          "the first job",
          i, j, (double)b[i * DIM + j], (double)a[i * DIM + j]);
    }
    ck_assert_msg(init_a || !init_o,
                  "row %d: made in the first job, not after the restore onto "
                  "3 servers",
                  i);
    made += !init_a;
    /* Pushed by one worker only: 2 pushes at the checkpoint, 4 at the end. */
    made_after += !init_a && i >= 20 && i < CK_KEYS - 20;
  }
  fprintf(stderr, "sparse admit: %d rows made, %d of them after the restore\n",
          made, made_after);
  ck_assert_int_eq(made, CK_KEYS + 20);
  ck_assert_int_gt(made_after, 0);
  free(a);
  free(b);
  free(o);
  h_kill_all(&c);
}
END_TEST

/* The memory cap (issue #14) on real daemons: 2 servers with
 * --sparse-max-bytes for 1000 rows of dim 3 each (cap_run), one worker
 * streams 20000 new ids: each server's
 * ps_server_sparse_rows stays within its cap, evictions are counted, the
 * first ids read as their initializer again and the last ones hold their
 * push. */
#define CAP_IDS 20000
#define CAP_BATCH 200
static int cap_worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  /* 6 blocks of PS_RANGE_ALIGN keys: 6 ranges are all non-empty. */
  h_dense_model(&model, &t, 96, PS__OPTIMIZER__OPT_SGD, 1.0f);
  model.seed = 5;
  ps_sparse_spec_t sp;
  memset(&sp, 0, sizeof(sp));
  snprintf(sp.name, sizeof(sp.name), "emb_u");
  sp.dim = UDIM;
  sp.init = PS__INIT__INIT_UNIFORM;
  sp.init_scale = 0.25f;
  model.nsparse = 1;
  model.sparse = &sp;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  int err;
  char msg[256];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "sparse cap: %s\n", msg);
    h_worker_sync(rank);
    h_worker_sync(rank);
    return 1;
  }
  uint64_t keys[CAP_BATCH];
  float g[CAP_BATCH * UDIM], out[CAP_BATCH * UDIM];
  for (int i = 0; i < CAP_BATCH * UDIM; i++) g[i] = 1;
  int ok = 1;
  for (int b = 0; ok && b < CAP_IDS / CAP_BATCH; b++) {
    for (int i = 0; i < CAP_BATCH; i++) keys[i] = key_of(b * CAP_BATCH + i);
    ok = ps_client_sparse_push(c, "emb_u", keys, CAP_BATCH, g, 0) == PS_OK;
  }
  uint64_t salt = salt_of("emb_u");
  /* The first batch was evicted long ago; the last was just pushed. */
  for (int last = 0; ok && last < 2; last++) {
    int base = last ? CAP_IDS - CAP_BATCH : 0;
    for (int i = 0; i < CAP_BATCH; i++) keys[i] = key_of(base + i);
    ok = ps_client_sparse_pull(c, "emb_u", keys, CAP_BATCH, out) == PS_OK;
    for (int i = 0; ok && i < CAP_BATCH; i++)
      for (int j = 0; ok && j < UDIM; j++) {
        float want = init_value(5, salt, keys[i], (uint64_t)j, 0.25f) -
                     (last ? 1.0f : 0.0f);
        if (out[i * UDIM + j] != want) {
          fprintf(stderr, "sparse cap: %s row %" PRIu64 "[%d] is %g, want %g\n",
                  last ? "recent" : "evicted", keys[i], j,
                  (double)out[i * UDIM + j], (double)want);
          ok = 0;
        }
      }
  }
  if (!ok) fprintf(stderr, "sparse cap: %s\n", ps_client_errmsg(c));
  /* Still connected while the test scrapes the servers. */
  ok = h_worker_sync(rank) && ok;
  ok = h_worker_sync(rank) && ok;
  ps_client_destroy(&c);
  return ok ? 0 : 1;
}

/* 2 servers capped at 1000 rows each (12 + 40 bytes a row), 2 copies of
 * every range, ranges ("0": one per server): each copy of a sparse
 * partition is capped at 1000 / (its copies per server) rows and fills. */
static void cap_run(const char *ranges, int copies_per_server) {
  h_cluster_t c;
  h_init(&c, "sparse_cap");
  const char *max_bytes = "52000";
  int port[2] = {h_free_port(), h_free_port()};
  char bind[2][64];
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "1", "--mode", "asp", "--heartbeat-timeout-ms",
          "60000", "--ranges", ranges, NULL);
  for (int i = 0; i < 2; i++) {
    char name[16];
    snprintf(bind[i], sizeof(bind[i]), "127.0.0.1:%d", port[i]);
    snprintf(name, sizeof(name), "server%d", i);
    h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep,
            "--sparse-max-bytes", max_bytes, "--metrics-bind", bind[i], NULL);
  }
  h_workers_start(&c, 1, cap_worker);
  /* The worker pushed and checked its rows: the servers' counters now. */
  h_workers_sync();
  double rows[2], evicted[2];
  for (int i = 0; i < 2; i++) {
    int status = 0;
    char *page = h_http_get(port[i], "/metrics", &status, 5000);
    ck_assert_msg(page != NULL && status == 200, "server %d: no metrics", i);
    rows[i] = h_metric(page, "ps_server_sparse_rows");
    evicted[i] = h_metric(page, "ps_server_sparse_evictions_total");
    free(page);
  }
  h_workers_sync();
  int failed = !h_workers_reap(60000);
  if (failed) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(!failed, "the worker saw wrong rows (see above)");
  int per_copy = 1000 / copies_per_server;
  for (int i = 0; i < 2; i++) {
    fprintf(
        stderr,
        "sparse cap, --ranges %s: server %d holds %.0f rows, evicted %.0f\n",
        ranges, i, rows[i], evicted[i]);
    /* Each of its copies is capped and full: within the server's cap. */
    ck_assert_msg(rows[i] == (double)(per_copy * copies_per_server),
                  "server %d holds %.0f rows, want %d x %d", i, rows[i],
                  copies_per_server, per_copy);
    ck_assert_msg(evicted[i] > 0, "server %d evicted nothing", i);
  }
  /* Every id created a row on 2 copies; what is held is what is left. */
  ck_assert_msg(evicted[0] + evicted[1] == 2.0 * CAP_IDS - rows[0] - rows[1],
                "evicted %.0f + %.0f rows, want %.0f in all", evicted[0],
                evicted[1], 2.0 * CAP_IDS - rows[0] - rows[1]);
}

START_TEST(sparse_cap_holds) {
  /* One range per server: 2 copies on each, 500 rows each. */
  cap_run("0", 2);
}
END_TEST

START_TEST(sparse_cap_holds_with_more_ranges) {
  /* 6 ranges (a job that may grow): 6 copies on each server, 166 rows
   * each; the cap was once split over 2 copies whatever the range count,
   * and a server held 3000 rows. */
  cap_run("6", 6);
}
END_TEST

/* Rewrites the first shard file of checkpoint at so that its sketch
 * section is one record of table, cells long (its CRCs and the manifest
 * made right). */
static void rewrite_sketch(const char *at, uint32_t table, uint32_t cells) {
  char err[512], path[1000];
  ps_checkpoint_manifest_t m;
  ck_assert_msg(ps_checkpoint_manifest_read(at, &m, err, sizeof(err)) == PS_OK,
                "%s", err);
  snprintf(path, sizeof(path), "%s/%s", at, m.shards[0].file);
  ps_checkpoint_shard_t sh;
  ck_assert_msg(ps_checkpoint_shard_read(path, &sh, err, sizeof(err)) == PS_OK,
                "%s", err);
  ck_assert_msg(sh.sketch != NULL && sh.sketch_bytes >= 8 + 4 * (size_t)cells,
                "the shard file has no sketch section of %u cells", cells);
  memcpy(sh.sketch, &table, sizeof(table));
  memcpy((char *)sh.sketch + 4, &cells, sizeof(cells));
  ps_checkpoint_file_stat_t st;
  ck_assert_msg(
      ps_checkpoint_shard_write_sparse(
          at, m.shards[0].file, &sh.meta, sh.weights, sh.state, sh.opt_steps,
          sh.nopt_steps, sh.sparse, sh.sparse_bytes, sh.sketch,
          8 + 4 * (size_t)cells, &st, err, sizeof(err)) == PS_OK,
      "%s", err);
  ps_checkpoint_shard_clear(&sh);
  m.shards[0].bytes = st.bytes;
  m.shards[0].crc32c = st.crc32c;
  ck_assert_msg(ps_checkpoint_manifest_write(at, &m, err, sizeof(err)) == PS_OK,
                "%s", err);
  ps_checkpoint_manifest_clear(&m);
}

/* A sketch section that does not fit the model (a record of table 7 in a
 * model of one table) passes the scheduler's checks, and the server that
 * loads it refuses the restore with the file and the reason, and exits
 * non-zero. One of another size than the servers' sketches (5 cells) is
 * left out with a warning: admission counts start again, the job runs. */
START_TEST(sparse_checkpoint_bad_sketch_refused) {
  h_cluster_t c;
  h_init(&c, "sparse_badsketch");
  ck_admit = "4";
  char ck[700], manifest[800], at[800];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  snprintf(manifest, sizeof(manifest), "%s/ckpt-%012d/MANIFEST", ck, CK_AT);
  snprintf(ck_dump, sizeof(ck_dump), "%s", h_path(&c, "orig.bin"));
  ck_assert(ck_job(&c, "orig", "2", "--checkpoint-dir", ck,
                   "--checkpoint-every-steps", "2", manifest));
  snprintf(at, sizeof(at), "%s/ckpt-%012d", ck, CK_AT);
  rewrite_sketch(at, 7, 4096);

  h_new_sched_ep(&c);
  int from = c.nprocs;
  h_spawn(&c, "r_scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", "bsp", "--heartbeat-timeout-ms",
          "60000", "--restore", at, NULL);
  for (int i = 0; i < 2; i++) {
    char name[32];
    snprintf(name, sizeof(name), "r_server%d", i);
    h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep,
            "--sparse-admit-after", "4", NULL);
  }
  h_workers_start(&c, 2, ck_worker);
  h_proc_t *refused = NULL;
  for (uint64_t end = h_deadline_ms(30000); !refused && h_now_ms() < end;)
    for (int i = from + 1; i < from + 3 && !refused; i++)
      if (h_wait_log(c.procs[i].log, "event=restore_failed", 100))
        refused = &c.procs[i];
  if (refused == NULL) h_dump_logs(&c);
  ck_assert_msg(refused != NULL, "no server refused the bad sketch section");
  ck_assert(h_wait_log(refused->log, "sketch section: a record of table 7", 1));
  ck_assert_msg(h_wait_exit(refused, 10000) && WIFEXITED(refused->status) &&
                    WEXITSTATUS(refused->status) != 0,
                "the refusing server did not exit non-zero");
  h_kill_all(&c);
  h_workers_reap(5000);

  rewrite_sketch(at, 0, 5);
  snprintf(ck_dump, sizeof(ck_dump), "%s", h_path(&c, "cells.bin"));
  from = c.nprocs;
  ck_assert(ck_job(&c, "r_cells", "2", "--restore", at, NULL, NULL, NULL));
  ck_admit = NULL;
  int warned = 0;
  for (int i = from; i < c.nprocs; i++)
    warned += h_wait_log(c.procs[i].log, "event=sketch_not_restored", 1);
  ck_assert_msg(warned >= 1, "no server warned of the sketch's size");
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("sparse");
  TCase *tc = tcase_create("sparse");
  tcase_set_timeout(tc, 170);
  tcase_add_test(tc, sparse_pushes_sum_exactly);
  tcase_add_test(tc, sparse_bsp_two_workers_equal_one);
  tcase_add_test(tc, sparse_checkpoint_restored_onto_3_servers);
  tcase_add_test(tc, sparse_checkpoint_keeps_admission_counts);
  tcase_add_test(tc, sparse_checkpoint_bad_sketch_refused);
  tcase_add_test(tc, sparse_cap_holds);
  tcase_add_test(tc, sparse_cap_holds_with_more_ranges);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
