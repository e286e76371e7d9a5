/* The dense shard: initialisation independent of the split, BSP steps by
 * hand (averaging, momentum, wrong steps, duplicates, a worker dying or
 * finishing mid-step), ASP, slice bounds, and the copy-on-write blocks behind
 * zero-copy pull replies (a pinned version never changes, an unpinned block
 * is updated in place, released versions are reused, a version outlives its
 * shard), replication (a state exported mid-step and imported elsewhere goes
 * on bit for bit the same; refused imports change nothing), live sets with
 * from-steps, and OPT_ADD's exact sums. Gradients are small integers and
 * lr/momentum powers of two, so every expected value is exact and compared bit
 * for bit; the replication tests use inexact ones and compare two shards. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/optimizer.h"
#include "proto/ps.pb-c.h"
#include "ps-server/shard.h"
#include "tests/check_run.h"

#define BSP PS__CONSISTENCY_MODE__MODE_BSP
#define ASP PS__CONSISTENCY_MODE__MODE_ASP

static ps_tensor_spec_t one_tensor[1];

/* One zero-initialised tensor of n keys: exact arithmetic from zero. */
static ps_model_t zero_model(uint64_t n, float lr, float momentum) {
  memset(one_tensor, 0, sizeof(one_tensor));
  strcpy(one_tensor[0].name, "w");
  one_tensor[0].offset = 0;
  one_tensor[0].length = n;
  one_tensor[0].init = PS__INIT__INIT_ZERO;
  ps_model_t m = {0};
  m.ntensors = 1;
  m.tensors = one_tensor;
  m.total = n;
  m.optimizer = PS__OPTIMIZER__OPT_SGD;
  m.learning_rate = lr;
  m.momentum = momentum;
  m.seed = 7;
  return m;
}

/* Worker node ids as the scheduler hands them out: not 0-based, not dense. */
#define W1 3u
#define W2 4u
#define W3 9u
static const uint32_t workers[] = {W2, W1, W3}; /* unsorted on purpose */

/* The first nlive of workers are live. */
static ps_shard_t *new_shard(uint64_t begin, uint64_t end, const ps_model_t *m,
                             int mode, size_t nlive) {
  int err = -1;
  char why[256] = "";
  ps_shard_t *s =
      ps_shard_new(begin, end, m, mode, workers, nlive, &err, why, sizeof(why));
  ck_assert_msg(s != NULL, "ps_shard_new: %s", why);
  ck_assert_int_eq(err, PS_OK);
  return s;
}

static int push(ps_shard_t *s, uint32_t worker, uint64_t kb, uint64_t n,
                const float *g, uint64_t step, int *applied) {
  char why[256];
  return ps_shard_push(s, worker, kb, n, g, step, applied, why, sizeof(why));
}

static int set_live(ps_shard_t *s, const uint32_t *ids, size_t n,
                    int *applied) {
  return ps_shard_set_live_workers(s, ids, n, applied);
}

START_TEST(init_same_bits_for_any_split) {
  /* Three tensors with different inits and scales; split points inside
   * tensors, on their boundaries and at the ends. */
  ps_tensor_spec_t t[3];
  memset(t, 0, sizeof(t));
  strcpy(t[0].name, "a");
  t[0].offset = 0;
  t[0].length = 37;
  t[0].init = PS__INIT__INIT_UNIFORM;
  t[0].init_scale = 0.1f;
  strcpy(t[1].name, "b");
  t[1].offset = 37;
  t[1].length = 20;
  t[1].init = PS__INIT__INIT_ZERO;
  strcpy(t[2].name, "c");
  t[2].offset = 57;
  t[2].length = 50;
  t[2].init = PS__INIT__INIT_UNIFORM;
  t[2].init_scale = 2.0f;
  ps_model_t m = {0};
  m.ntensors = 3;
  m.tensors = t;
  m.total = 107;
  m.learning_rate = 0.1f;
  m.seed = 42;

  ps_shard_t *whole = new_shard(0, 107, &m, BSP, 1);
  const float *w = ps_shard_weights(whole);
  /* The inits really differ per tensor: otherwise the split test would pass
   * on a shard that ignores the tensors. */
  int nonzero_a = 0, nonzero_c = 0, big_c = 0;
  for (int i = 0; i < 37; i++) {
    nonzero_a += w[i] != 0.0f;
    ck_assert(w[i] > -0.1f && w[i] < 0.1f);
  }
  for (int i = 37; i < 57; i++) ck_assert(w[i] == 0.0f);
  for (int i = 57; i < 107; i++) {
    nonzero_c += w[i] != 0.0f;
    big_c += w[i] > 0.1f || w[i] < -0.1f;
    ck_assert(w[i] > -2.0f && w[i] < 2.0f);
  }
  ck_assert_int_gt(nonzero_a, 30);
  ck_assert_int_gt(nonzero_c, 40);
  ck_assert_int_gt(big_c, 10);

  const uint64_t cuts[] = {1, 16, 36, 37, 38, 57, 64, 100, 106};
  for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
    uint64_t k = cuts[c];
    ps_shard_t *lo = new_shard(0, k, &m, BSP, 1);
    ps_shard_t *hi = new_shard(k, 107, &m, ASP, 1);
    ck_assert_msg(memcmp(ps_shard_weights(lo), w, k * sizeof(float)) == 0,
                  "cut %llu: [0,k) differs", (unsigned long long)k);
    ck_assert_msg(
        memcmp(ps_shard_weights(hi), w + k, (107 - k) * sizeof(float)) == 0,
        "cut %llu: [k,107) differs", (unsigned long long)k);
    ps_shard_destroy(&lo);
    ps_shard_destroy(&hi);
    ck_assert_ptr_null(hi);
  }
  ps_shard_destroy(&whole);
}
END_TEST

START_TEST(bsp_two_workers_mean_with_momentum) {
  ps_model_t m = zero_model(4, 0.5f, 0.5f);
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  const float g1[4] = {1, 2, 3, 4}, g2[4] = {3, -2, 1, 0};
  const float h1[4] = {0, 4, -2, 2}, h2[4] = {2, 0, -2, 6};
  float w[4];
  int applied = -1;

  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  ck_assert_uint_eq(ps_shard_received(s), 4);
  for (int i = 0; i < 4; i++) ck_assert(ps_shard_weights(s)[i] == 0.0f);

  ck_assert_int_eq(push(s, W2, 0, 4, g2, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  ck_assert_uint_eq(ps_shard_received(s), 0);
  /* v1 = (g1 + g2) / 2; w1 = 0 - lr * v1 */
  float v1[4], w1[4];
  for (int i = 0; i < 4; i++) {
    v1[i] = (g1[i] + g2[i]) / 2;
    w1[i] = -0.5f * v1[i];
  }
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++)
    ck_assert_msg(w[i] == w1[i], "step 1 key %d: %g != %g", i, w[i], w1[i]);
  ck_assert(w1[0] == -1.0f && w1[3] == -1.0f); /* hand check of the above */

  /* Step 2, other order: v2 = momentum * v1 + (h1 + h2) / 2; w2 = w1 - lr v2 */
  ck_assert_int_eq(push(s, W2, 0, 4, h2, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++) ck_assert(w[i] == w1[i]);
  ck_assert_int_eq(push(s, W1, 0, 4, h1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  const float w2[4] = {-2.0f, -1.0f, -0.5f, -3.5f};
  for (int i = 0; i < 4; i++)
    ck_assert_msg(w[i] == w2[i], "step 2 key %d: %g != %g", i, w[i], w2[i]);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(bsp_partial_slices_sum_exactly) {
  /* Pieces arrive out of order and leave a gap that a later piece fills;
   * the stale sum of step 1 must not leak into step 2. Plain SGD. */
  ps_model_t m = zero_model(8, 0.5f, 0.0f);
  ps_shard_t *s = new_shard(0, 8, &m, BSP, 2);
  float g1[8], g2[8], h[8], w[8], expect[8];
  for (int i = 0; i < 8; i++) {
    g1[i] = (float)(i + 1);
    g2[i] = (float)(2 * i - 3);
    h[i] = (float)(i % 3);
  }
  int applied = -1;
  ck_assert_int_eq(push(s, W1, 4, 4, g1 + 4, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 2, g2, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(push(s, W2, 2, 6, g2 + 2, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_int_eq(ps_shard_read(s, 0, 8, w, NULL, 0), PS_OK);
  for (int i = 0; i < 8; i++) {
    expect[i] = -0.5f * ((g1[i] + g2[i]) * 0.5f);
    ck_assert_msg(w[i] == expect[i], "key %d: %g != %g", i, w[i], expect[i]);
  }

  ck_assert_int_eq(push(s, W2, 6, 2, h + 6, 1, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 6, h, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(push(s, W1, 0, 8, g1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_int_eq(ps_shard_read(s, 0, 8, w, NULL, 0), PS_OK);
  for (int i = 0; i < 8; i++) {
    float e = expect[i] - 0.5f * ((g1[i] + h[i]) * 0.5f);
    ck_assert_msg(w[i] == e, "step 2 key %d: %g != %g", i, w[i], e);
  }
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(bsp_wrong_step_refused_and_changes_nothing) {
  ps_model_t m = zero_model(4, 0.5f, 0.5f);
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  const float g[4] = {1, 2, 3, 4};
  char why[256] = "";
  int applied = -1;

  /* A worker that did not pull first. */
  ck_assert_int_eq(ps_shard_push(s, W1, 0, 4, g, 1, &applied, why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_int_eq(applied, 0);
  ck_assert_ptr_nonnull(strstr(why, "did not pull"));
  ck_assert_uint_eq(ps_shard_received(s), 0);

  /* One step done; the same step again is a duplicate. */
  ck_assert_int_eq(push(s, W1, 0, 4, g, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 4, g, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  float before[4], after[4];
  ck_assert_int_eq(ps_shard_read(s, 0, 4, before, NULL, 0), PS_OK);
  ck_assert(before[0] == -0.5f);
  ck_assert_int_eq(push(s, W1, 0, 2, g, 1, &applied), PS_OK); /* half */
  ck_assert_int_eq(ps_shard_push(s, W2, 0, 4, g, 0, &applied, why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "duplicate or stale"));
  ck_assert_int_eq(ps_shard_push(s, W2, 0, 4, g, 5, &applied, why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_int_eq(applied, 0);

  /* The same worker's values twice for one step, and a worker that is not
   * live (finished, declared dead, or never was): refused. */
  ck_assert_int_eq(ps_shard_push(s, W1, 0, 4, g, 1, &applied, why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "duplicate push"));
  ck_assert_int_eq(ps_shard_push(s, W3, 0, 4, g, 1, &applied, why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "not a live worker"));
  ck_assert_int_eq(push(s, 0, 0, 4, g, 1, &applied), PS_ERR_REFUSED);

  ck_assert_uint_eq(ps_shard_clock(s), 1);
  ck_assert_uint_eq(ps_shard_received(s), 2);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, after, NULL, 0), PS_OK);
  ck_assert(memcmp(before, after, sizeof(before)) == 0);

  /* W2's share alone does not finish the step W1 only half pushed. */
  ck_assert_int_eq(push(s, W2, 0, 4, g, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(push(s, W1, 2, 2, g + 2, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(bsp_worker_death_completes_step) {
  ps_model_t m = zero_model(4, 0.5f, 0.0f);
  const float g1[4] = {2, 4, -6, 8}, g2[4] = {2, 0, 2, 0}, g3[4] = {4, 4, 4, 4};
  const uint32_t only_w1[] = {W1}, w1_w2[] = {W1, W2};
  int applied = -1;
  float w[4];

  /* 2 -> 1: the survivor's gradient alone makes the step. */
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(set_live(s, w1_w2, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(set_live(s, only_w1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  ck_assert_uint_eq(ps_shard_live_workers(s), 1);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++) ck_assert(w[i] == -0.5f * g1[i]);
  /* The next step needs one contribution only. */
  ck_assert_int_eq(push(s, W1, 0, 4, g2, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ps_shard_destroy(&s);

  /* 3 -> 2 where the one that left had pushed: the step waits for the
   * other live worker and then averages all three gradients. */
  s = new_shard(0, 4, &m, BSP, 3);
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W3, 0, 4, g3, 0, &applied), PS_OK);
  ck_assert_int_eq(set_live(s, w1_w2, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  ck_assert_int_eq(push(s, W2, 0, 4, g2, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++) {
    float e = -0.5f * ((g1[i] + g3[i] + g2[i]) * (1.0f / 3.0f));
    ck_assert_msg(w[i] == e, "key %d: %g != %g", i, w[i], e);
  }

  /* No live worker: pushes are refused, and what was pushed is applied (no
   * one is left to wait for). */
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(set_live(s, NULL, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 2, &applied), PS_ERR_REFUSED);
  ck_assert_int_eq(set_live(s, NULL, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(bsp_finished_worker_does_not_cut_step_short) {
  /* W2 pushes its last step and leaves (Done) before W1's push arrives: the
   * step must still wait for W1 and average both, as one process with the
   * doubled batch would. */
  ps_model_t m = zero_model(4, 0.5f, 0.0f);
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  const float g1[4] = {2, 4, -6, 8}, g2[4] = {2, 0, 2, 0};
  const uint32_t only_w1[] = {W1};
  int applied = -1;
  ck_assert_int_eq(push(s, W2, 0, 4, g2, 0, &applied), PS_OK);
  ck_assert_int_eq(set_live(s, only_w1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  float w[4];
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++)
    ck_assert(w[i] == -0.5f * ((g1[i] + g2[i]) * 0.5f));
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(asp_applies_on_arrival) {
  /* Each push is applied at once, scaled by 1/live workers. */
  ps_model_t m = zero_model(4, 0.5f, 0.5f);
  ps_shard_t *s = new_shard(0, 4, &m, ASP, 2);
  const float g[4] = {2, -2, 4, 0};
  const uint32_t only_w1[] = {W1};
  float w[4];
  int applied = -1;
  /* v = 0.5 * (2, -2) = (1, -1); w = -0.5 v */
  ck_assert_int_eq(push(s, W1, 1, 2, g, 7, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 8);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  ck_assert(w[0] == 0.0f && w[1] == -0.5f && w[2] == 0.5f && w[3] == 0.0f);
  /* Any step from anyone is taken; an older one does not move the clock
   * back. Momentum carries over: v = 0.5 v + 0.5 g = (1.5, -1.5). */
  ck_assert_int_eq(push(s, W3, 1, 2, g, 3, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 8);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  ck_assert(w[0] == 0.0f && w[1] == -1.25f && w[2] == 1.25f && w[3] == 0.0f);
  ck_assert_uint_eq(ps_shard_received(s), 0);
  /* One live worker: full scale. v = 0.5 v + g = (2.75, -2.75). */
  ck_assert_int_eq(set_live(s, only_w1, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(push(s, W1, 1, 2, g, 8, &applied), PS_OK);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  ck_assert(w[1] == -2.625f && w[2] == 2.625f);
  ck_assert_uint_eq(ps_shard_clock(s), 9);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(slice_bounds_refused) {
  ps_model_t m = zero_model(64, 0.5f, 0.0f);
  ps_shard_t *s = new_shard(16, 32, &m, ASP, 1);
  float g[32], out[32];
  for (int i = 0; i < 32; i++) g[i] = 1.0f;
  char why[256] = "";
  int applied = -1;
  const struct {
    uint64_t kb, n;
  } bad[] = {{15, 2},         {30, 3}, {32, 1},
             {0, 64},         {16, 0}, {UINT64_MAX - 1, 5},
             {20, UINT64_MAX}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert(!ps_shard_contains(s, bad[i].kb, bad[i].n));
    ck_assert_int_eq(
        ps_shard_push(s, W2, bad[i].kb, bad[i].n, g, 0, &applied, why, 256),
        PS_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(applied, 0);
    ck_assert_ptr_nonnull(strstr(why, "[16,32)"));
    ck_assert_int_eq(ps_shard_read(s, bad[i].kb, bad[i].n, out, why, 256),
                     PS_ERR_UNKNOWN_KEY);
  }
  for (int i = 0; i < 16; i++) ck_assert(ps_shard_weights(s)[i] == 0.0f);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  /* The edges themselves are inside. */
  ck_assert(ps_shard_contains(s, 16, 16));
  ck_assert_int_eq(push(s, W2, 31, 1, g, 0, &applied), PS_OK);
  ck_assert(ps_shard_weights(s)[15] == -0.5f);
  ps_shard_destroy(&s);

  int err = 0;
  ck_assert_ptr_null(ps_shard_new(8, 8, &m, BSP, workers, 1, &err, why, 256));
  ck_assert_int_eq(err, PS_ERR_INVAL);
  ck_assert_ptr_null(ps_shard_new(32, 65, &m, BSP, workers, 1, &err, why, 256));
  ck_assert_int_eq(err, PS_ERR_INVAL);
  ck_assert_ptr_null(ps_shard_new(0, 8, &m, 9, workers, 1, &err, why, 256));
  ck_assert_int_eq(err, PS_ERR_UNSUPPORTED);
}
END_TEST

/* ---- copy-on-write blocks ---- */

#define BK PS_SHARD_BLOCK_KEYS

static ps_shard_stats_t stats_of(const ps_shard_t *s) {
  ps_shard_stats_t st;
  ps_shard_stats(s, &st);
  return st;
}

/* Integer-valued gradients: g[i] = (i % 5) - 2 + k. */
static float *grad(uint64_t n, int k) {
  float *g = malloc(n * sizeof(float));
  ck_assert_ptr_nonnull(g);
  for (uint64_t i = 0; i < n; i++) g[i] = (float)((int)(i % 5) - 2 + k);
  return g;
}

START_TEST(runs_follow_blocks) {
  /* 2.5 blocks starting at an odd key: runs are cut at the block edges,
   * relative to the shard's begin, and short runs are not worth a pin. */
  uint64_t begin = 48, len = 2 * BK + BK / 2;
  ps_model_t m = zero_model(begin + len, 1.0f, 0.0f);
  ps_shard_t *s = new_shard(begin, begin + len, &m, ASP, 1);
  ps_shard_run_t runs[4];
  int n = ps_shard_runs(s, begin + BK - 10, BK + 20, runs, 4, NULL, 0);
  ck_assert_int_eq(n, 3);
  ck_assert_uint_eq(runs[0].count, 10);
  ck_assert_uint_eq(runs[1].count, BK);
  ck_assert_uint_eq(runs[2].count, 10);
  ck_assert_int_eq(runs[0].zero_copy, 0);
  ck_assert_int_eq(runs[1].zero_copy, 1);
  ck_assert_int_eq(runs[2].zero_copy, 0);
  ck_assert_ptr_ne(runs[0].version, runs[1].version);
  /* Each run points at the weights of its first key. */
  float *w = malloc(len * sizeof(float));
  for (uint64_t i = 0; i < len; i++) w[i] = (float)i;
  ck_assert_int_eq(ps_shard_load(s, w, NULL, NULL, 0), PS_OK);
  ck_assert_int_eq(ps_shard_runs(s, begin + BK - 10, BK + 20, runs, 4, NULL, 0),
                   3);
  ck_assert(runs[0].data[0] == (float)(BK - 10) &&
            runs[0].data[9] == (float)(BK - 1));
  ck_assert(runs[1].data[0] == (float)BK &&
            runs[2].data[9] == (float)(2 * BK + 9));
  free(w);
  /* More runs than room: the count says how many it takes. */
  ck_assert_int_eq(ps_shard_runs(s, begin, len, runs, 2, NULL, 0), 3);
  ck_assert_uint_eq(runs[1].count, BK);
  char why[128] = "";
  ck_assert_int_eq(ps_shard_runs(s, begin - 1, 4, runs, 4, why, sizeof(why)),
                   PS_ERR_UNKNOWN_KEY);
  ck_assert_ptr_nonnull(strstr(why, "not inside"));
  /* A small shard is one block; a quarter of it is worth a pin. */
  ps_model_t m2 = zero_model(64, 1.0f, 0.0f);
  ps_shard_t *small = new_shard(0, 64, &m2, ASP, 1);
  ck_assert_int_eq(ps_shard_runs(small, 8, 16, runs, 4, NULL, 0), 1);
  ck_assert_int_eq(runs[0].zero_copy, 1);
  ck_assert_int_eq(ps_shard_runs(small, 8, 15, runs, 4, NULL, 0), 1);
  ck_assert_int_eq(runs[0].zero_copy, 0);
  ps_shard_destroy(&small);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(pinned_version_never_changes) {
  uint64_t len = 2 * BK;
  ps_model_t m = zero_model(len, 1.0f, 0.0f);
  ps_shard_t *s = new_shard(0, len, &m, ASP, 1);
  float *g = grad(len, 1);
  int applied;
  ck_assert_int_eq(push(s, W1, 0, len, g, 0, &applied), PS_OK);
  ps_shard_stats_t st0 = stats_of(s);
  ck_assert_uint_eq(st0.versions, 2);
  ck_assert_uint_eq(st0.cow_applies, 0); /* nothing pinned: in place */

  /* Pin block 0 as a pull reply would, then push over both blocks. */
  ps_shard_run_t runs[2];
  ck_assert_int_eq(ps_shard_runs(s, 0, len, runs, 2, NULL, 0), 2);
  ps_shard_pin(runs[0].version);
  float *before = malloc(BK * sizeof(float));
  memcpy(before, runs[0].data, BK * sizeof(float));
  float *g2 = grad(len, 3);
  ck_assert_int_eq(push(s, W1, 10, len - 20, g2, 1, &applied), PS_OK);
  /* The pinned bytes are what they were... */
  ck_assert(memcmp(runs[0].data, before, BK * sizeof(float)) == 0);
  /* ...and the shard has the new weights, bit for bit what an in-place
   * apply gives: keys outside the push copied, inside applied. */
  float *w = malloc(len * sizeof(float));
  ck_assert_int_eq(ps_shard_read(s, 0, len, w, NULL, 0), PS_OK);
  for (uint64_t i = 0; i < len; i++) {
    float want = -g[i] - ((i >= 10 && i < len - 10) ? g2[i - 10] : 0.0f);
    ck_assert_msg(w[i] == want, "key %llu: %g, want %g", (unsigned long long)i,
                  w[i], want);
  }
  ps_shard_stats_t st1 = stats_of(s);
  ck_assert_uint_eq(st1.cow_applies, 1);
  ck_assert_uint_eq(st1.cow_copied, 10);
  ck_assert_uint_eq(st1.versions, 3);

  /* The block's new version is not pinned: the next push is in place,
   * and the old one still holds its bytes. */
  ck_assert_int_eq(push(s, W1, 0, 4, g2, 2, &applied), PS_OK);
  ck_assert_uint_eq(stats_of(s).versions, 3);
  ck_assert_uint_eq(stats_of(s).cow_applies, 1);
  ck_assert(memcmp(runs[0].data, before, BK * sizeof(float)) == 0);

  /* Released: the old version is reused, not a fourth allocated. */
  ps_shard_unpin(NULL, runs[0].version);
  ck_assert_int_eq(ps_shard_runs(s, 0, BK, runs, 1, NULL, 0), 1);
  ps_shard_pin(runs[0].version);
  ck_assert_int_eq(push(s, W1, 0, BK, g, 3, &applied), PS_OK);
  ck_assert_uint_eq(stats_of(s).versions, 3);
  ck_assert_uint_eq(stats_of(s).cow_copied, 10); /* whole block pushed */
  ps_shard_unpin(NULL, runs[0].version);
  free(before);
  free(w);
  free(g);
  free(g2);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(version_outlives_shard) {
  /* A frame still queued in ZeroMQ when the range moves away: its bytes
   * stay readable until the last unpin, which frees them (ASan checks
   * both). */
  ps_model_t m = zero_model(BK + 100, 1.0f, 0.0f);
  ps_shard_t *s = new_shard(0, BK + 100, &m, ASP, 1);
  float *g = grad(BK + 100, 2);
  int applied;
  ck_assert_int_eq(push(s, W1, 0, BK + 100, g, 0, &applied), PS_OK);
  ps_shard_run_t runs[2];
  ck_assert_int_eq(ps_shard_runs(s, 0, BK + 100, runs, 2, NULL, 0), 2);
  ps_shard_pin(runs[0].version);
  ps_shard_pin(runs[0].version);
  ps_shard_pin(runs[1].version);
  ps_shard_destroy(&s);
  ck_assert(runs[0].data[7] == -g[7]);
  ck_assert(runs[1].data[99] == -g[BK + 99]);
  ps_shard_unpin(NULL, runs[0].version);
  ck_assert(runs[0].data[BK - 1] == -g[BK - 1]);
  ps_shard_unpin(NULL, runs[0].version);
  ps_shard_unpin(NULL, runs[1].version);
  free(g);
}
END_TEST

START_TEST(bsp_step_on_pinned_blocks_with_momentum) {
  /* A BSP step over blocks a pull holds: the new version gets exactly
   * what an unpinned shard computes, momentum included. */
  uint64_t len = BK + 64;
  ps_model_t m = zero_model(len, 0.5f, 0.5f);
  ps_shard_t *a = new_shard(0, len, &m, BSP, 2);
  ps_shard_t *b = new_shard(0, len, &m, BSP, 2);
  float *g1 = grad(len, 1), *g2 = grad(len, -4);
  ps_shard_run_t runs[2];
  int applied;
  for (int step = 0; step < 3; step++) {
    ck_assert_int_eq(ps_shard_runs(b, 0, len, runs, 2, NULL, 0), 2);
    ps_shard_pin(runs[0].version);
    ps_shard_pin(runs[1].version);
    for (int k = 0; k < 2; k++) {
      ps_shard_t *s = k ? b : a;
      ck_assert_int_eq(push(s, W1, 0, len, g1, step, &applied), PS_OK);
      ck_assert_int_eq(push(s, W2, 0, len, g2, step, &applied), PS_OK);
      ck_assert_int_eq(applied, 1);
    }
    ps_shard_unpin(NULL, runs[0].version);
    ps_shard_unpin(NULL, runs[1].version);
  }
  ck_assert_uint_eq(stats_of(b).cow_applies, 6);
  ck_assert_uint_eq(stats_of(a).cow_applies, 0);
  const float *wa = ps_shard_weights(a), *wb = ps_shard_weights(b);
  ck_assert(memcmp(wa, wb, len * sizeof(float)) == 0);
  ck_assert(memcmp(ps_shard_opt_state(a, NULL), ps_shard_opt_state(b, NULL),
                   len * sizeof(float)) == 0);
  ck_assert(wa[3] != 0.0f);
  free(g1);
  free(g2);
  ps_shard_destroy(&a);
  ps_shard_destroy(&b);
}
END_TEST

START_TEST(load_replaces_state) {
  uint64_t len = BK + 16;
  ps_model_t m = zero_model(len, 1.0f, 0.5f);
  ps_shard_t *s = new_shard(0, len, &m, ASP, 1);
  float *w = grad(len, 7), *v = grad(len, -1);
  ps_shard_run_t runs[2];
  ck_assert_int_eq(ps_shard_runs(s, 0, len, runs, 2, NULL, 0), 2);
  ps_shard_pin(runs[0].version);
  ck_assert_int_eq(ps_shard_load(s, w, v, NULL, 42), PS_OK);
  ck_assert(runs[0].data[5] == 0.0f); /* the pinned copy is untouched */
  ck_assert(memcmp(ps_shard_weights(s), w, len * sizeof(float)) == 0);
  ck_assert(memcmp(ps_shard_opt_state(s, NULL), v, len * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_shard_clock(s), 42);
  ps_shard_unpin(NULL, runs[0].version);
  free(w);
  free(v);
  ps_shard_destroy(&s);
}
END_TEST

/* ---- replication: export / import, live sets with from-steps ---- */

/* A model with random initial weights, so a state that was not carried
 * over shows. */
static ps_model_t random_model(uint64_t n, float lr, float momentum) {
  ps_model_t m = zero_model(n, lr, momentum);
  one_tensor[0].init = PS__INIT__INIT_UNIFORM;
  one_tensor[0].init_scale = 0.5f;
  return m;
}

/* Gradients that are not exact in binary, so an order or a scale that
 * differs changes the bits. */
static float *rough_grad(uint64_t n, int k) {
  float *g = malloc(n * sizeof(float));
  ck_assert_ptr_nonnull(g);
  for (uint64_t i = 0; i < n; i++)
    g[i] = (float)((int)((i * 7 + (uint64_t)k * 13) % 11) - 5) * 0.1f +
           0.01f * (float)k;
  return g;
}

static void assert_same_state(ps_shard_t *a, ps_shard_t *b, uint64_t len) {
  ck_assert_uint_eq(ps_shard_clock(a), ps_shard_clock(b));
  ck_assert_uint_eq(ps_shard_received(a), ps_shard_received(b));
  ck_assert(memcmp(ps_shard_weights(a), ps_shard_weights(b),
                   len * sizeof(float)) == 0);
  int ka, kb;
  const float *ma = ps_shard_opt_state(a, &ka),
              *mb = ps_shard_opt_state(b, &kb);
  ck_assert((ma == NULL) == (mb == NULL));
  ck_assert_int_eq(ka, kb);
  if (ma) ck_assert(memcmp(ma, mb, (size_t)ka * len * sizeof(float)) == 0);
  size_t sa, sb;
  ps_shard_segments(a, &sa);
  ps_shard_segments(b, &sb);
  ck_assert_uint_eq(sa, sb);
  ck_assert(memcmp(ps_shard_opt_steps(a), ps_shard_opt_steps(b),
                   sa * sizeof(uint64_t)) == 0);
  size_t na, nb;
  const ps_shard_live_t *la = ps_shard_live(a, &na),
                        *lb = ps_shard_live(b, &nb);
  ck_assert_uint_eq(na, nb);
  if (na) ck_assert(memcmp(la, lb, na * sizeof(*la)) == 0);
}

static int import(ps_shard_t *s, const ps_shard_state_t *st, char *why) {
  return ps_shard_import(s, st, why, 256);
}

/* ps_shard_new_tick calls its tick once per block it fills (a server
 * heartbeats from it), and fills the same bits as ps_shard_new. */
static void count_tick(void *arg) {
  (*(int *)arg)++;
}

START_TEST(fill_ticks_once_per_block) {
  uint64_t n = 3 * (uint64_t)PS_SHARD_BLOCK_KEYS + 1000;
  ps_model_t m = random_model(n, 0.1f, 0.0f);
  int ticks = 0, err = -1;
  char why[256] = "";
  ps_shard_t *s = ps_shard_new_tick(0, n, &m, BSP, 0, workers, 1, count_tick,
                                    &ticks, &err, why, sizeof(why));
  ck_assert_msg(s != NULL, "%s", why);
  ck_assert_int_eq(ticks, 4);
  ps_shard_t *plain = new_shard(0, n, &m, BSP, 1);
  ck_assert(memcmp(ps_shard_weights(s), ps_shard_weights(plain),
                   n * sizeof(float)) == 0);
  ps_shard_destroy(&s);
  ps_shard_destroy(&plain);
}
END_TEST

START_TEST(export_import_mid_bsp_step) {
  /* Two blocks; a step in progress with a partial contribution whose sum
   * interval starts inside the range and bridged a gap; momentum from
   * earlier steps. */
  uint64_t len = BK + 100;
  ps_model_t m = random_model(len, 0.25f, 0.5f);
  ps_shard_t *a = new_shard(0, len, &m, BSP, 3);
  float *g[3] = {rough_grad(len, 1), rough_grad(len, 2), rough_grad(len, 3)};
  const uint32_t ids[3] = {W1, W2, W3};
  int applied;
  for (uint64_t step = 0; step < 2; step++)
    for (int k = 0; k < 3; k++)
      ck_assert_int_eq(push(a, ids[k], 0, len, g[k], step, &applied), PS_OK);
  ck_assert_uint_eq(ps_shard_clock(a), 2);
  ck_assert_int_eq(push(a, W1, BK - 10, 50, g[0] + BK - 10, 2, &applied),
                   PS_OK);
  ck_assert_int_eq(push(a, W1, 5, 20, g[0] + 5, 2, &applied), PS_OK);

  /* B is fresh, with another live set and a pull reply pinning its first
   * block: the pinned bytes keep B's initial weights. */
  ps_shard_t *b = new_shard(0, len, &m, BSP, 1);
  ps_shard_run_t runs[2];
  ck_assert_int_eq(ps_shard_runs(b, 0, len, runs, 2, NULL, 0), 2);
  ps_shard_pin(runs[0].version);
  float *init = malloc(BK * sizeof(float));
  memcpy(init, runs[0].data, BK * sizeof(float));

  ps_shard_state_t st;
  ck_assert_int_eq(ps_shard_export(a, &st), PS_OK);
  ck_assert_uint_eq(st.clock, 2);
  ck_assert_uint_eq(st.ncontrib, 1);
  ck_assert_uint_eq(st.nlive, 3);
  ck_assert_uint_eq(st.acc_lo, 5);
  ck_assert_uint_eq(st.acc_hi, BK + 40);
  char why[256] = "";
  ck_assert_int_eq(import(b, &st, why), PS_OK);
  ck_assert(memcmp(runs[0].data, init, BK * sizeof(float)) == 0);
  float *exported = malloc(len * sizeof(float));
  memcpy(exported, st.weights, len * sizeof(float));
  ps_shard_unpin(NULL, runs[0].version);
  assert_same_state(a, b, len);
  ck_assert_uint_eq(ps_shard_received(b), 70);

  /* The rest of step 2 and a whole step 3, in the same order on both. */
  for (int k = 0; k < 2; k++) {
    ps_shard_t *s = k ? b : a;
    ck_assert_int_eq(push(s, W1, 0, 5, g[0], 2, &applied), PS_OK);
    ck_assert_int_eq(push(s, W1, 25, BK - 35, g[0] + 25, 2, &applied), PS_OK);
    ck_assert_int_eq(push(s, W3, 0, len, g[2], 2, &applied), PS_OK);
    ck_assert_int_eq(push(s, W2, 0, len, g[1], 2, &applied), PS_OK);
    ck_assert_int_eq(applied, 0);
    ck_assert_int_eq(push(s, W1, BK + 40, 60, g[0] + BK + 40, 2, &applied),
                     PS_OK);
    ck_assert_int_eq(applied, 1);
    for (int j = 2; j >= 0; j--)
      ck_assert_int_eq(push(s, ids[j], 0, len, g[j], 3, &applied), PS_OK);
    ck_assert_int_eq(applied, 1);
  }
  ck_assert_uint_eq(ps_shard_clock(b), 4);
  assert_same_state(a, b, len);
  /* It moved: equal because both went on, not because nothing happened. */
  ck_assert(memcmp(ps_shard_weights(b), exported, len * sizeof(float)) != 0);

  /* A shard's own export imported back changes nothing. */
  ck_assert_int_eq(push(b, W2, 0, len, g[1], 4, &applied), PS_OK);
  ck_assert_int_eq(push(a, W2, 0, len, g[1], 4, &applied), PS_OK);
  ck_assert_int_eq(ps_shard_export(b, &st), PS_OK);
  ck_assert_int_eq(import(b, &st, why), PS_OK);
  assert_same_state(a, b, len);
  free(init);
  free(exported);
  for (int k = 0; k < 3; k++) free(g[k]);
  ps_shard_destroy(&a);
  ps_shard_destroy(&b);
}
END_TEST

/* A backup that follows its primary step by step (ps_shard_step_sum ->
 * ps_shard_follow_step) holds bitwise what one that replays every push
 * holds: weights, momentum, update counts, clock, across a step completed
 * by a death, a skip to a joiner's step, and a snapshot taken mid-step. */
START_TEST(follow_step_equals_replay) {
  uint64_t len = BK + 100;
  ps_model_t m = random_model(len, 0.25f, 0.5f);
  m.lr_schedule.kind = PS_LR_SCHEDULE_COSINE;
  m.lr_schedule.total_steps = 20;
  ps_shard_t *p = new_shard(0, len, &m, BSP, 3); /* the primary */
  ps_shard_t *r = new_shard(0, len, &m, BSP, 3); /* replays every push */
  ps_shard_t *f = new_shard(0, len, &m, BSP, 3); /* follows the steps */
  float *g[3] = {rough_grad(len, 1), rough_grad(len, 2), rough_grad(len, 3)};
  const uint32_t ids[3] = {W1, W2, W3};
  char why[256] = "";
  int applied = 0;
  uint64_t step = 0;
  float scale = 0.0f;
  /* No step applied yet: no sum. */
  ck_assert_ptr_null(ps_shard_step_sum(p, &step, &scale));
  for (uint64_t t = 0; t < 3; t++) {
    for (int k = 0; k < 3; k++) {
      ck_assert_int_eq(push(p, ids[k], 0, len, g[k], t, &applied), PS_OK);
      ck_assert_int_eq(push(r, ids[k], 0, len, g[k], t, NULL), PS_OK);
    }
    ck_assert_int_eq(applied, 1);
    const float *sum = ps_shard_step_sum(p, &step, &scale);
    ck_assert_ptr_nonnull(sum);
    ck_assert_uint_eq(step, t);
    ck_assert(scale == 1.0f / 3.0f);
    ck_assert_int_eq(ps_shard_follow_step(f, t, sum, scale, t + 1, &applied,
                                          why, sizeof(why)),
                     PS_OK);
    ck_assert_int_eq(applied, 1);
    assert_same_state(p, f, len);
    assert_same_state(r, f, len);
  }
  /* A push of the next step writes over the sum. */
  ck_assert_int_eq(push(p, W1, 0, 10, g[0], 3, &applied), PS_OK);
  ck_assert_int_eq(push(r, W1, 0, 10, g[0], 3, NULL), PS_OK);
  ck_assert_ptr_null(ps_shard_step_sum(p, &step, &scale));
  /* A step the copy is not at is refused and changes nothing; one it
   * holds already (clock_after <= its clock) is ignored. */
  const float *w0 = ps_shard_weights(f);
  float *before = malloc(len * sizeof(float));
  memcpy(before, w0, len * sizeof(float));
  ck_assert_int_eq(
      ps_shard_follow_step(f, 5, g[0], 1.0f, 6, &applied, why, sizeof(why)),
      PS_ERR_REFUSED);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(
      ps_shard_follow_step(f, 1, g[0], 1.0f, 2, &applied, why, sizeof(why)),
      PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert(memcmp(ps_shard_weights(f), before, len * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_shard_clock(f), 3);

  /* W3 dies before pushing step 3; W1 and W2 complete it (the live set on
   * the follower changes nothing by itself), and the two that joined at 6
   * and 7 make the primary skip to 6 at the next change. */
  ck_assert_int_eq(push(p, W1, 10, len - 10, g[0] + 10, 3, &applied), PS_OK);
  ck_assert_int_eq(push(r, W1, 10, len - 10, g[0] + 10, 3, NULL), PS_OK);
  ck_assert_int_eq(push(p, W2, 0, len, g[1], 3, &applied), PS_OK);
  ck_assert_int_eq(push(r, W2, 0, len, g[1], 3, NULL), PS_OK);
  ck_assert_int_eq(applied, 0);
  const ps_shard_live_t two[2] = {{W1, 0}, {W2, 0}};
  ck_assert_int_eq(ps_shard_set_live(p, two, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_int_eq(ps_shard_set_live(r, two, 2, NULL), PS_OK);
  ck_assert_int_eq(ps_shard_set_live_only(f, two, 2), PS_OK);
  ck_assert_uint_eq(ps_shard_clock(f), 3);
  const float *sum = ps_shard_step_sum(p, &step, &scale);
  ck_assert_ptr_nonnull(sum);
  ck_assert_uint_eq(step, 3);
  ck_assert(scale == 0.5f);
  ck_assert_int_eq(
      ps_shard_follow_step(f, 3, sum, scale, 4, &applied, why, sizeof(why)),
      PS_OK);
  assert_same_state(p, f, len);
  assert_same_state(r, f, len);
  const ps_shard_live_t joiners[2] = {{W2, 7}, {W3, 6}};
  ck_assert_int_eq(ps_shard_set_live(p, joiners, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(p), 6);
  ck_assert_int_eq(ps_shard_set_live(r, joiners, 2, NULL), PS_OK);
  ck_assert_int_eq(ps_shard_set_live_only(f, joiners, 2), PS_OK);
  /* The sum is step 3's, not step 4's: a skip alone carries none. */
  ck_assert_int_eq(
      ps_shard_follow_step(f, 4, NULL, 1.0f, 6, &applied, why, sizeof(why)),
      PS_OK);
  ck_assert_int_eq(applied, 1);
  assert_same_state(p, f, len);
  assert_same_state(r, f, len);

  /* A snapshot taken mid-step brings a part of the step (here all of it
   * but W1's); the step's sum replaces that part. */
  const ps_shard_live_t w13[2] = {{W1, 0}, {W3, 0}};
  ck_assert_int_eq(ps_shard_set_live(p, w13, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(push(p, W3, 0, len, g[2], 6, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ps_shard_state_t st;
  ck_assert_int_eq(ps_shard_export(p, &st), PS_OK);
  ps_shard_t *n = new_shard(0, len, &m, BSP, 1);
  ck_assert_int_eq(import(n, &st, why), PS_OK);
  ck_assert_uint_eq(ps_shard_received(n), len);
  ck_assert_int_eq(push(p, W1, 0, len, g[0], 6, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  sum = ps_shard_step_sum(p, &step, &scale);
  ck_assert_ptr_nonnull(sum);
  ck_assert_int_eq(
      ps_shard_follow_step(n, 6, sum, scale, 7, &applied, why, sizeof(why)),
      PS_OK);
  ck_assert_uint_eq(ps_shard_received(n), 0);
  assert_same_state(p, n, len);
  free(before);
  for (int k = 0; k < 3; k++) free(g[k]);
  ps_shard_destroy(&n);
  ps_shard_destroy(&p);
  ps_shard_destroy(&r);
  ps_shard_destroy(&f);
}
END_TEST

START_TEST(export_import_asp) {
  uint64_t len = 300;
  ps_model_t m = random_model(len, 0.25f, 0.5f);
  if (_i == 1) { /* the loop test's second run: Adam, 2 state planes */
    m.optimizer = PS_OPTIMIZER_ADAM;
    m.learning_rate = 0.01f;
    m.momentum = 0.0f;
    m.beta1 = 0.9f;
    m.beta2 = 0.999f;
    m.epsilon = 1e-8f;
  }
  ps_shard_t *a = new_shard(0, len, &m, ASP, 3);
  ps_shard_t *b = new_shard(0, len, &m, ASP, 1);
  float *g1 = rough_grad(len, 1), *g2 = rough_grad(len, 2);
  int applied;
  ck_assert_int_eq(push(a, W1, 10, 200, g1, 4, &applied), PS_OK);
  ck_assert_int_eq(push(a, W2, 0, len, g2, 6, &applied), PS_OK);
  ps_shard_state_t st;
  ck_assert_int_eq(ps_shard_export(a, &st), PS_OK);
  ck_assert_uint_eq(st.clock, 7);
  ck_assert_uint_eq(st.ncontrib, 0);
  ck_assert_uint_eq(st.acc_lo, st.acc_hi);
  char why[256] = "";
  ck_assert_int_eq(import(b, &st, why), PS_OK);
  assert_same_state(a, b, len);
  /* The scale is 1/3 on both: the live set came along. */
  for (int k = 0; k < 2; k++) {
    ps_shard_t *s = k ? b : a;
    ck_assert_int_eq(push(s, W3, 50, 100, g2, 2, &applied), PS_OK);
    ck_assert_int_eq(push(s, W1, 0, len, g1, 5, &applied), PS_OK);
  }
  assert_same_state(a, b, len);
  ck_assert_uint_eq(ps_shard_clock(b), 7);
  if (_i == 1) ck_assert_uint_eq(ps_shard_opt_steps(b)[0], 4);
  free(g1);
  free(g2);
  ps_shard_destroy(&a);
  ps_shard_destroy(&b);
}
END_TEST

/* The workers of step 1 die, one after pushing part of it; the only live
 * worker joined at step 5: its dead peer's share of step 1 is applied and
 * the clock skips to 5 instead of waiting forever for steps nobody will
 * push. */
START_TEST(skip_to_joiners_step) {
  ps_model_t m = zero_model(4, 0.5f, 0.0f);
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  const float g1[4] = {2, 4, 6, 8}, g2[4] = {4, 2, 0, -2};
  int applied = -1;
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 4, g2, 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W1, 0, 2, g1, 1, &applied), PS_OK);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  const ps_shard_live_t joiner[] = {{W3, 5}};
  ck_assert_int_eq(ps_shard_set_live(s, joiner, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 5);
  ps_shard_stats_t st;
  ps_shard_stats(s, &st);
  ck_assert_uint_eq(st.skipped_steps, 3); /* 2, 3, 4; step 1 was applied */
  float w[4];
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  /* Step 0's mean, then W1's half push of step 1 (its only contributor). */
  for (int i = 0; i < 4; i++) {
    float step1 = i < 2 ? g1[i] : 0.0f;
    ck_assert(w[i] == -(g1[i] + g2[i]) * 0.5f * 0.5f - step1 * 0.5f);
  }
  /* With a live worker due at the clock nothing is skipped. */
  const ps_shard_live_t both[] = {{W3, 5}, {W1, 5}};
  ck_assert_int_eq(ps_shard_set_live(s, both, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 5);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(from_step_bsp) {
  ps_model_t m = zero_model(4, 0.5f, 0.0f);
  ps_shard_t *s = new_shard(0, 4, &m, BSP, 2);
  const float g1[4] = {2, 4, 6, 8}, g2[4] = {4, 2, 0, -2}, g3[4] = {3, 3, 3, 3};
  /* W3 rejoins and contributes from step 2 on; given unsorted. */
  const ps_shard_live_t live[] = {{W3, 2}, {W2, 0}, {W1, 0}};
  int applied = -1;
  char why[256] = "";
  ck_assert_int_eq(ps_shard_set_live(s, live, 3, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  size_t n;
  const ps_shard_live_t *l = ps_shard_live(s, &n);
  ck_assert_uint_eq(n, 3);
  ck_assert(l[0].worker == W1 && l[1].worker == W2 && l[2].worker == W3);
  ck_assert_uint_eq(l[2].from_step, 2);

  /* Steps 0 and 1 complete without W3, whose pushes for them are
   * refused. */
  for (uint64_t step = 0; step < 2; step++) {
    ck_assert_int_eq(
        ps_shard_push(s, W3, 0, 4, g3, step, &applied, why, sizeof(why)),
        PS_ERR_REFUSED);
    ck_assert_ptr_nonnull(strstr(why, "contributes from step 2"));
    ck_assert_int_eq(push(s, W1, 0, 4, g1, step, &applied), PS_OK);
    ck_assert_int_eq(applied, 0);
    ck_assert_int_eq(push(s, W2, 0, 4, g2, step, &applied), PS_OK);
    ck_assert_int_eq(applied, 1);
  }
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  float w[4];
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++) ck_assert(w[i] == -(g1[i] + g2[i]) * 0.5f);

  /* From step 2 on it is waited for, and in the mean. */
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 2, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 4, g2, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ck_assert_int_eq(push(s, W3, 0, 4, g3, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_int_eq(ps_shard_read(s, 0, 4, w, NULL, 0), PS_OK);
  for (int i = 0; i < 4; i++) {
    float e = -(g1[i] + g2[i]) * 0.5f -
              0.5f * ((g1[i] + g2[i] + g3[i]) * (1.0f / 3.0f));
    ck_assert_msg(w[i] == e, "key %d: %g != %g", i, w[i], e);
  }

  /* A live set that moves W3's first step past the current one completes
   * a step that waited for it only. */
  ck_assert_int_eq(push(s, W1, 0, 4, g1, 3, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, 4, g2, 3, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  const ps_shard_live_t later[] = {{W1, 0}, {W2, 0}, {W3, 5}};
  ck_assert_int_eq(ps_shard_set_live(s, later, 3, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 4);

  /* Refused live sets keep the old one. */
  const ps_shard_live_t twice[] = {{W1, 0}, {W2, 0}, {W1, 3}};
  const ps_shard_live_t huge[] = {{(uint64_t)UINT32_MAX + 1, 0}};
  const uint32_t twice_ids[] = {W1, W2, W1};
  ck_assert_int_eq(ps_shard_set_live(s, twice, 3, &applied), PS_ERR_INVAL);
  ck_assert_int_eq(ps_shard_set_live(s, huge, 1, &applied), PS_ERR_INVAL);
  ck_assert_int_eq(ps_shard_set_live_workers(s, twice_ids, 3, &applied),
                   PS_ERR_INVAL);
  ck_assert_int_eq(applied, 0);
  l = ps_shard_live(s, &n);
  ck_assert_uint_eq(n, 3);
  ck_assert_uint_eq(l[2].from_step, 5);
  ps_shard_destroy(&s);
  int err = 0;
  ck_assert_ptr_null(ps_shard_new(0, 4, &m, BSP, twice_ids, 3, &err, why, 256));
  ck_assert_int_eq(err, PS_ERR_INVAL);
  ck_assert_ptr_nonnull(strstr(why, "twice"));
}
END_TEST

START_TEST(from_step_asp) {
  ps_model_t m = zero_model(4, 1.0f, 0.0f);
  ps_shard_t *s = new_shard(0, 4, &m, ASP, 1);
  const float g[4] = {1, 1, 1, 1};
  const ps_shard_live_t live[] = {{W1, 10}};
  char why[256] = "";
  int applied = -1;
  ck_assert_int_eq(ps_shard_set_live(s, live, 1, &applied), PS_OK);
  ck_assert_int_eq(ps_shard_push(s, W1, 0, 4, g, 9, &applied, why, 256),
                   PS_ERR_REFUSED);
  ck_assert_int_eq(applied, 0);
  ck_assert_ptr_nonnull(strstr(why, "rejoined"));
  ck_assert_int_eq(push(s, W1, 0, 4, g, 10, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert(ps_shard_weights(s)[0] == -1.0f);
  ps_shard_destroy(&s);
}
END_TEST

START_TEST(import_refusals_change_nothing) {
  uint64_t len = 16;
  ps_model_t m = random_model(len, 0.5f, 0.5f);
  ps_shard_t *src = new_shard(0, len, &m, BSP, 2);
  ps_shard_t *s = new_shard(0, len, &m, BSP, 2);
  ps_shard_t *ref = new_shard(0, len, &m, BSP, 2);
  float *g = rough_grad(len, 1);
  int applied;
  for (int k = 0; k < 2; k++) {
    ps_shard_t *t = k ? ref : s;
    ck_assert_int_eq(push(t, W1, 0, len, g, 0, &applied), PS_OK);
    ck_assert_int_eq(push(t, W2, 0, len, g, 0, &applied), PS_OK);
    ck_assert_int_eq(push(t, W1, 2, 5, g, 1, &applied), PS_OK);
  }
  ck_assert_int_eq(push(src, W2, 0, len, g, 0, &applied), PS_OK);
  ps_shard_state_t good;
  ck_assert_int_eq(ps_shard_export(src, &good), PS_OK);
  ps_shard_contrib_t big[1] = {{W1, len + 1}}, two[2] = {{W1, 3}, {W1, 4}};
  ps_shard_contrib_t huge[1] = {{(uint64_t)UINT32_MAX + 1, 3}};
  ps_shard_live_t twice[2] = {{W1, 0}, {W1, 0}};
  struct {
    const char *what, *why;
    ps_shard_state_t st;
  } bad[12];
  for (int i = 0; i < 12; i++) bad[i].st = good;
  bad[0].what = "no weights", bad[0].st.weights = NULL;
  bad[0].why = "without weights";
  bad[1].what = "no optimizer state", bad[1].st.state = NULL;
  bad[1].why = "but no values";
  bad[2].what = "interval past the end", bad[2].st.acc_hi = len + 1;
  bad[2].why = "not inside";
  bad[3].what = "interval backwards", bad[3].st.acc_lo = 5;
  bad[3].st.acc_hi = 4, bad[3].why = "not inside";
  bad[4].what = "sum without values", bad[4].st.acc = NULL;
  bad[4].why = "without its values";
  bad[5].what = "contributions without a sum";
  bad[5].st.acc_lo = bad[5].st.acc_hi = 0, bad[5].why = "inconsistent";
  bad[6].what = "a sum without contributions", bad[6].st.ncontrib = 0;
  bad[6].why = "inconsistent";
  bad[7].what = "contribution too big", bad[7].st.contrib = big;
  bad[7].why = "bigger than";
  bad[8].what = "worker contributes twice", bad[8].st.contrib = two;
  bad[8].st.ncontrib = 2, bad[8].why = "twice";
  bad[9].what = "contributor not a node", bad[9].st.contrib = huge;
  bad[9].why = "not a node id";
  bad[10].what = "live twice", bad[10].st.live = twice;
  bad[10].st.nlive = 2, bad[10].why = "twice";
  bad[11].what = "live set missing", bad[11].st.live = NULL;
  bad[11].why = "without its live set";
  for (int i = 0; i < 12; i++) {
    char why[256] = "";
    ck_assert_msg(import(s, &bad[i].st, why) == PS_ERR_INVAL, "%s accepted",
                  bad[i].what);
    ck_assert_msg(strstr(why, bad[i].why) != NULL, "%s: \"%s\"", bad[i].what,
                  why);
    assert_same_state(s, ref, len);
  }
  /* A BSP step in progress for an ASP shard. */
  ps_shard_t *asp = new_shard(0, len, &m, ASP, 2);
  float before[16];
  memcpy(before, ps_shard_weights(asp), sizeof(before));
  char why[256] = "";
  ck_assert_int_eq(import(asp, &good, why), PS_ERR_INVAL);
  ck_assert_ptr_nonnull(strstr(why, "ASP"));
  ck_assert(memcmp(ps_shard_weights(asp), before, sizeof(before)) == 0);
  ck_assert_uint_eq(ps_shard_clock(asp), 0);
  /* And the same shard goes on exactly like the reference. */
  ck_assert_int_eq(push(s, W1, 0, 2, g, 1, &applied), PS_OK);
  ck_assert_int_eq(push(ref, W1, 0, 2, g, 1, &applied), PS_OK);
  ck_assert_int_eq(push(s, W1, 7, len - 7, g, 1, &applied), PS_OK);
  ck_assert_int_eq(push(ref, W1, 7, len - 7, g, 1, &applied), PS_OK);
  ck_assert_int_eq(push(s, W2, 0, len, g, 1, &applied), PS_OK);
  ck_assert_int_eq(push(ref, W2, 0, len, g, 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  assert_same_state(s, ref, len);
  free(g);
  ps_shard_destroy(&asp);
  ps_shard_destroy(&src);
  ps_shard_destroy(&s);
  ps_shard_destroy(&ref);
}
END_TEST

/* ---- OPT_ADD ---- */

START_TEST(add_counts_exactly) {
  /* The model's learning rate and momentum are ignored. */
  ps_model_t m = zero_model(6, 0.3f, 0.9f);
  m.optimizer = PS__OPTIMIZER__OPT_ADD;
  ps_shard_t *s = new_shard(0, 6, &m, ASP, 3);
  ck_assert_ptr_null(ps_shard_opt_state(s, NULL));
  const float one[6] = {1, 1, 1, 1, 1, 1};
  int applied;
  /* 3 live workers, not scaled by 1/3: 1000 pushes count 1000. */
  for (int i = 0; i < 1000; i++)
    ck_assert_int_eq(push(s, workers[i % 3], 1 + i % 2, 4, one, i, &applied),
                     PS_OK);
  const float *w = ps_shard_weights(s);
  ck_assert(w[0] == 0.0f && w[1] == 500.0f && w[5] == 500.0f);
  ck_assert(w[2] == 1000.0f && w[3] == 1000.0f && w[4] == 1000.0f);
  ps_shard_destroy(&s);

  /* BSP: a step adds the sum of its contributions, not the mean. */
  s = new_shard(0, 6, &m, BSP, 2);
  const float g1[6] = {1, 2, 3, 4, 5, 6}, g2[6] = {1, 0, -1, 0, 1, 1};
  for (uint64_t step = 0; step < 3; step++) {
    ck_assert_int_eq(push(s, W1, 0, 6, g1, step, &applied), PS_OK);
    ck_assert_int_eq(push(s, W2, 0, 6, g2, step, &applied), PS_OK);
    ck_assert_int_eq(applied, 1);
  }
  w = ps_shard_weights(s);
  for (int i = 0; i < 6; i++)
    ck_assert_msg(w[i] == 3 * (g1[i] + g2[i]), "key %d: %g", i, w[i]);
  ps_shard_destroy(&s);
}
END_TEST

/* ---- issue #14: optimizer state through a checkpoint ---- */

/* Pushes steps [from, to) of rough gradients for the whole model (ASP, one
 * worker) to the shards, each its own slice. */
static void push_steps(ps_shard_t **sh, size_t n, uint64_t total, uint64_t from,
                       uint64_t to) {
  for (uint64_t step = from; step < to; step++) {
    float *g = rough_grad(total, (int)step + 1);
    for (size_t i = 0; i < n; i++) {
      uint64_t b = ps_shard_begin(sh[i]), e = ps_shard_end(sh[i]);
      int applied = 0;
      ck_assert_int_eq(push(sh[i], W2, b, e - b, g + b, step, &applied), PS_OK);
      ck_assert_int_eq(applied, 1);
    }
    free(g);
  }
}

START_TEST(adam_state_survives_checkpoint_onto_another_split) {
  /* Adam by default, FTRL for the bias, a cosine schedule: a range
   * written at step 5 and restored onto two ranges cut inside a tensor
   * goes on with exactly the bits of the range that was never stopped.
   * Restored without the state (moments and step counts zeroed) it does
   * not, so the state is what carries it. */
  ps_tensor_spec_t t[2];
  memset(t, 0, sizeof(t));
  strcpy(t[0].name, "w");
  t[0].length = 40;
  t[0].init = PS__INIT__INIT_UNIFORM;
  t[0].init_scale = 0.5f;
  strcpy(t[1].name, "b");
  t[1].offset = 40;
  t[1].length = 24;
  t[1].has_optimizer = 1;
  t[1].optimizer = (ps_optimizer_spec_t){.kind = PS_OPTIMIZER_FTRL,
                                         .learning_rate = 0.2f,
                                         .l1 = 0.01f,
                                         .l2 = 0.1f,
                                         .ftrl_beta = 1.0f};
  ps_model_t m = {
      .ntensors = 2,
      .tensors = t,
      .total = 64,
      .optimizer = PS_OPTIMIZER_ADAM,
      .learning_rate = 0.01f,
      .beta1 = 0.9f,
      .beta2 = 0.999f,
      .epsilon = 1e-8f,
      .seed = 5,
      .lr_schedule = {
          .kind = PS_LR_SCHEDULE_COSINE, .total_steps = 12, .warmup_steps = 2}};
  ck_assert_int_eq(ps_model_state_slots(&m), 2);
  ps_shard_t *a = new_shard(0, 64, &m, ASP, 1);
  push_steps(&a, 1, 64, 0, 5);

  char dir[] = "/tmp/ps-test-shard-ckpt-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  int slots;
  const float *st = ps_shard_opt_state(a, &slots);
  ck_assert_int_eq(slots, 2);
  size_t nseg;
  const ps_shard_segment_t *seg = ps_shard_segments(a, &nseg);
  const uint64_t *cnt = ps_shard_opt_steps(a);
  ck_assert_uint_eq(nseg, 2);
  uint64_t pairs[4] = {seg[0].tensor, cnt[0], seg[1].tensor, cnt[1]};
  ck_assert_uint_eq(cnt[0], 5);
  ps_checkpoint_shard_meta_t meta = {
      .fingerprint = ps_checkpoint_fingerprint(&m),
      .begin = 0,
      .end = 64,
      .clock = ps_shard_clock(a),
      .mode = ASP,
      .state_slots = slots};
  ps_checkpoint_file_stat_t fst;
  char err[512];
  ck_assert_msg(
      ps_checkpoint_shard_write(dir, "a.psck", &meta, ps_shard_weights(a), st,
                                pairs, 2, &fst, err, sizeof(err)) == PS_OK,
      "%s", err);
  ps_checkpoint_file_t file = {.file = "a.psck",
                               .begin = 0,
                               .end = 64,
                               .bytes = fst.bytes,
                               .crc32c = fst.crc32c,
                               .clock = meta.clock,
                               .server_id = 1};
  ps_checkpoint_manifest_t man = {.step = meta.clock,
                                  .mode = ASP,
                                  .num_servers = 1,
                                  .model = m,
                                  .fingerprint = meta.fingerprint,
                                  .nshards = 1,
                                  .shards = &file};

  const uint64_t cut[3] = {0, 30, 64};
  ps_shard_t *b[2], *z[2];
  for (int i = 0; i < 2; i++) {
    uint64_t n = cut[i + 1] - cut[i];
    float *w = malloc(n * sizeof(float)), *sv = malloc(2 * n * sizeof(float));
    uint64_t steps[2];
    ck_assert_msg(
        ps_checkpoint_load_range(dir, &man, cut[i], cut[i + 1], w, sv, steps,
                                 NULL, err, sizeof(err)) == PS_OK,
        "%s", err);
    ck_assert_uint_eq(steps[0], 5);
    ck_assert_uint_eq(steps[1], (i == 0 ? 0u : 5u));
    b[i] = new_shard(cut[i], cut[i + 1], &m, ASP, 1);
    z[i] = new_shard(cut[i], cut[i + 1], &m, ASP, 1);
    ck_assert_int_eq(ps_shard_load(b[i], w, sv, steps, meta.clock), PS_OK);
    ck_assert_int_eq(ps_shard_load(z[i], w, NULL, NULL, meta.clock), PS_OK);
    free(w);
    free(sv);
  }
  push_steps(&a, 1, 64, 5, 12);
  push_steps(b, 2, 64, 5, 12);
  push_steps(z, 2, 64, 5, 12);
  const float *wa = ps_shard_weights(a);
  int zero_same = 1;
  for (int i = 0; i < 2; i++) {
    uint64_t n = cut[i + 1] - cut[i];
    ck_assert_msg(
        memcmp(ps_shard_weights(b[i]), wa + cut[i], n * sizeof(float)) == 0,
        "restored range %d differs from the one never stopped", i);
    zero_same &=
        memcmp(ps_shard_weights(z[i]), wa + cut[i], n * sizeof(float)) == 0;
    ps_shard_destroy(&b[i]);
    ps_shard_destroy(&z[i]);
  }
  ck_assert_msg(!zero_same,
                "a restore without the optimizer state gave the "
                "same weights: the test proves nothing");
  /* FTRL's L1 keeps some bias weights at exactly 0 or not: either way
   * they came out of z and n, which only the state carried. */
  ps_shard_destroy(&a);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- SSP (issue #15) ---- */

#define SSP PS__CONSISTENCY_MODE__MODE_SSP

static ps_shard_t *new_ssp(uint64_t len, const ps_model_t *m,
                           uint32_t staleness, size_t nlive) {
  int err = -1;
  char why[256] = "";
  ps_shard_t *s = ps_shard_new_ssp(0, len, m, SSP, staleness, workers, nlive,
                                   &err, why, sizeof(why));
  ck_assert_msg(s != NULL, "ps_shard_new_ssp: %s", why);
  ck_assert_int_eq(err, PS_OK);
  ck_assert_uint_eq(ps_shard_staleness(s), staleness);
  return s;
}

/* Momentum and a cosine schedule with inexact gradients: a step applied
 * out of order, or a sum scaled at another step's rate, changes the bits. */
static ps_model_t ssp_model(uint64_t len) {
  ps_model_t m = random_model(len, 0.25f, 0.5f);
  m.lr_schedule.kind = PS_LR_SCHEDULE_COSINE;
  m.lr_schedule.total_steps = 8;
  return m;
}

START_TEST(ssp_ahead_accepted_beyond_refused_in_order) {
  const uint64_t len = 300;
  ps_model_t m = ssp_model(len);
  ps_shard_t *s = new_ssp(len, &m, 2, 2);
  ps_shard_t *ref = new_shard(0, len, &m, BSP, 2);
  float *g1[4], *g2[4];
  for (int t = 0; t < 4; t++) {
    g1[t] = rough_grad(len, t);
    g2[t] = rough_grad(len, 10 + t);
  }
  int applied = -1;
  char why[256] = "";
  /* W1 runs ahead: steps 0, 1 and 2 (clock + 2) are accepted and change
   * nothing yet; step 3 is beyond the bound. */
  for (int t = 0; t < 3; t++) {
    ck_assert_int_eq(push(s, W1, 0, len, g1[t], (uint64_t)t, &applied), PS_OK);
    ck_assert_int_eq(applied, 0);
  }
  const float *w0 = ps_shard_weights(ref);
  ck_assert(memcmp(ps_shard_weights(s), w0, len * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  ck_assert_uint_eq(ps_shard_pending_received(s, 1), len);
  ck_assert_uint_eq(ps_shard_pending_received(s, 2), len);
  ck_assert_int_eq(
      ps_shard_push(s, W1, 0, len, g1[3], 3, &applied, why, sizeof(why)),
      PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "staleness bound 2"));
  ck_assert_uint_eq(ps_shard_pending_received(s, 3), 0);
  /* The same worker twice for a step ahead: a duplicate. */
  ck_assert_int_eq(
      ps_shard_push(s, W1, 0, 10, g1[1], 1, &applied, why, sizeof(why)),
      PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "duplicate push"));
  ck_assert_int_eq(ps_shard_apply_ready(s), 0);

  /* W2 completes step 0 only: step 1 still waits for it. */
  ck_assert_int_eq(push(s, W2, 0, len, g2[0], 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  ck_assert_int_eq(ps_shard_apply_ready(s), 0);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  /* Step 3 is within the bound now; a stale step 0 is refused. */
  ck_assert_int_eq(push(s, W1, 0, len, g1[3], 3, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_int_eq(
      ps_shard_push(s, W2, 0, len, g2[0], 0, &applied, why, sizeof(why)),
      PS_ERR_REFUSED);
  ck_assert_ptr_nonnull(strstr(why, "duplicate or stale"));
  for (int t = 1; t < 4; t++) {
    ck_assert_int_eq(push(s, W2, 0, len, g2[t], (uint64_t)t, &applied), PS_OK);
    ck_assert_int_eq(applied, 1);
    ck_assert_uint_eq(ps_shard_clock(s), (uint64_t)t + 1);
    ck_assert_int_eq(ps_shard_apply_ready(s), 0);
  }

  /* The same steps in BSP order give the same bits. */
  for (int t = 0; t < 4; t++) {
    ck_assert_int_eq(push(ref, W2, 0, len, g2[t], (uint64_t)t, &applied),
                     PS_OK);
    ck_assert_int_eq(push(ref, W1, 0, len, g1[t], (uint64_t)t, &applied),
                     PS_OK);
    ck_assert_int_eq(applied, 1);
  }
  assert_same_state(s, ref, len);
  for (int t = 0; t < 4; t++) {
    free(g1[t]);
    free(g2[t]);
  }
  ps_shard_destroy(&s);
  ps_shard_destroy(&ref);
}
END_TEST

START_TEST(ssp_ready_steps_apply_one_at_a_time) {
  /* Steps whose every contribution came in early are applied by
   * ps_shard_apply_ready, one per call, in order: after the slow worker's
   * last piece of the current step, and after a live-set change. */
  const uint64_t len = 64;
  ps_model_t m = ssp_model(len);
  ps_shard_t *s = new_ssp(len, &m, 3, 3);
  ps_shard_t *ref = new_shard(0, len, &m, BSP, 3);
  const uint32_t ids[3] = {W1, W2, W3};
  float *g[3][4];
  for (int k = 0; k < 3; k++)
    for (int t = 0; t < 4; t++) g[k][t] = rough_grad(len, 4 * k + t);
  int applied = -1;
  /* W1 and W2 push steps 0 to 3; W3 half of step 0, then all of step 1. */
  for (int t = 0; t < 4; t++)
    for (int k = 0; k < 2; k++)
      ck_assert_int_eq(push(s, ids[k], 0, len, g[k][t], (uint64_t)t, &applied),
                       PS_OK);
  ck_assert_int_eq(push(s, W3, 0, 32, g[2][0], 0, &applied), PS_OK);
  ck_assert_int_eq(push(s, W3, 0, len, g[2][1], 1, &applied), PS_OK);
  ck_assert_int_eq(applied, 0);
  ck_assert_uint_eq(ps_shard_clock(s), 0);
  ck_assert_int_eq(push(s, W3, 32, 32, g[2][0] + 32, 0, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 1);
  ck_assert_int_eq(ps_shard_apply_ready(s), 1);
  ck_assert_uint_eq(ps_shard_clock(s), 2);
  ck_assert_int_eq(ps_shard_apply_ready(s), 0); /* step 2 waits for W3 */
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 3; k++)
      ck_assert_int_eq(
          push(ref, ids[k], 0, len, g[k][t], (uint64_t)t, &applied), PS_OK);
  /* The same weights; s holds step 2 and 3 sums that ref has not seen. */
  ck_assert_uint_eq(ps_shard_clock(ref), 2);
  ck_assert(memcmp(ps_shard_weights(s), ps_shard_weights(ref),
                   len * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_shard_received(s), 2 * len);

  /* W3 dies: steps 2 and 3 have every live worker's share. The live-set
   * change applies step 2, apply_ready step 3, in that order. */
  const uint32_t two[2] = {W1, W2};
  ck_assert_int_eq(set_live(s, two, 2, &applied), PS_OK);
  ck_assert_int_eq(applied, 1);
  ck_assert_uint_eq(ps_shard_clock(s), 3);
  ck_assert_int_eq(ps_shard_apply_ready(s), 1);
  ck_assert_uint_eq(ps_shard_clock(s), 4);
  ck_assert_int_eq(ps_shard_apply_ready(s), 0);
  ck_assert_int_eq(set_live(ref, two, 2, &applied), PS_OK);
  for (int t = 2; t < 4; t++)
    for (int k = 0; k < 2; k++)
      ck_assert_int_eq(
          push(ref, ids[k], 0, len, g[k][t], (uint64_t)t, &applied), PS_OK);
  assert_same_state(s, ref, len);
  for (int k = 0; k < 3; k++)
    for (int t = 0; t < 4; t++) free(g[k][t]);
  ps_shard_destroy(&s);
  ps_shard_destroy(&ref);
}
END_TEST

START_TEST(ssp_zero_is_bsp) {
  /* Staleness 0: the same acceptance and the same bits as BSP. */
  const uint64_t len = 100;
  ps_model_t m = ssp_model(len);
  ps_shard_t *s = new_ssp(len, &m, 0, 2);
  ps_shard_t *b = new_shard(0, len, &m, BSP, 2);
  float *g = rough_grad(len, 1), *h = rough_grad(len, 2);
  int applied = -1;
  char why[256];
  for (int k = 0; k < 2; k++) {
    ps_shard_t *x = k ? b : s;
    ck_assert_int_eq(
        ps_shard_push(x, W1, 0, len, g, 1, &applied, why, sizeof(why)),
        PS_ERR_REFUSED);
    ck_assert_ptr_nonnull(strstr(why, "did not pull"));
    for (uint64_t t = 0; t < 3; t++) {
      ck_assert_int_eq(push(x, W2, 0, len, h, t, &applied), PS_OK);
      ck_assert_int_eq(push(x, W1, 0, len, g, t, &applied), PS_OK);
      ck_assert_int_eq(applied, 1);
      ck_assert_int_eq(ps_shard_apply_ready(x), 0);
    }
  }
  assert_same_state(s, b, len);
  /* Only SSP takes a staleness, at most PS_SSP_STALENESS_MAX. */
  int err = 0;
  ck_assert_ptr_null(
      ps_shard_new_ssp(0, len, &m, BSP, 1, workers, 2, &err, why, sizeof(why)));
  ck_assert_int_eq(err, PS_ERR_INVAL);
  ck_assert_ptr_null(ps_shard_new_ssp(0, len, &m, SSP, PS_SSP_STALENESS_MAX + 1,
                                      workers, 2, &err, why, sizeof(why)));
  ck_assert_int_eq(err, PS_ERR_INVAL);
  /* Sparse rows keep one pending sum: refused in SSP. */
  ck_assert_int_eq(ps_shard_check_step(s, W1, 3, why, sizeof(why)),
                   PS_ERR_UNSUPPORTED);
  free(g);
  free(h);
  ps_shard_destroy(&s);
  ps_shard_destroy(&b);
}
END_TEST

START_TEST(ssp_export_import_steps_ahead) {
  /* A backup filled mid-job holds every step in progress, the later ones
   * too, and goes on bit for bit like the primary. */
  const uint64_t len = BK + 50;
  ps_model_t m = ssp_model(len);
  ps_shard_t *a = new_ssp(len, &m, 3, 2);
  float *g1 = rough_grad(len, 1), *g2 = rough_grad(len, 2);
  int applied;
  for (uint64_t t = 0; t < 3; t++)
    ck_assert_int_eq(push(a, W1, 0, len, g1, t, &applied), PS_OK);
  ck_assert_int_eq(push(a, W2, 0, len, g2, 0, &applied), PS_OK);
  /* Step 3 partly, from the middle: an interval that is not the range. */
  ck_assert_int_eq(push(a, W1, 10, BK, g1 + 10, 3, &applied), PS_OK);
  ck_assert_uint_eq(ps_shard_clock(a), 1);

  ps_shard_state_t st;
  ck_assert_int_eq(ps_shard_export(a, &st), PS_OK);
  ck_assert_uint_eq(st.npending, 2); /* steps 2 and 3; 4 is empty */
  ck_assert_uint_eq(st.ncontrib, 1);
  ck_assert_uint_eq(st.pending[1].acc_lo, 10);
  ck_assert_uint_eq(st.pending[1].acc_hi, BK + 10);
  char why[256] = "";
  /* A shard without room for later steps refuses, changing nothing. */
  ps_shard_t *bsp = new_shard(0, len, &m, BSP, 1);
  ck_assert_int_eq(import(bsp, &st, why), PS_ERR_INVAL);
  ck_assert_ptr_nonnull(strstr(why, "staleness"));
  ck_assert_uint_eq(ps_shard_clock(bsp), 0);
  ps_shard_destroy(&bsp);

  ps_shard_t *b = new_ssp(len, &m, 3, 1);
  ck_assert_int_eq(import(b, &st, why), PS_OK);
  assert_same_state(a, b, len);
  for (uint64_t t = 1; t < 5; t++)
    ck_assert_uint_eq(ps_shard_pending_received(a, t),
                      ps_shard_pending_received(b, t));
  for (int k = 0; k < 2; k++) {
    ps_shard_t *x = k ? b : a;
    ck_assert_int_eq(push(x, W1, 0, 10, g1, 3, &applied), PS_OK);
    ck_assert_int_eq(push(x, W1, BK + 10, 40, g1 + BK + 10, 3, &applied),
                     PS_OK);
    for (uint64_t t = 1; t < 4; t++) {
      ck_assert_int_eq(push(x, W2, 0, len, g2, t, &applied), PS_OK);
      ck_assert_int_eq(applied, 1);
    }
    ck_assert_uint_eq(ps_shard_clock(x), 4);
  }
  assert_same_state(a, b, len);
  free(g1);
  free(g2);
  ps_shard_destroy(&a);
  ps_shard_destroy(&b);
}
END_TEST

int main(void) {
  Suite *suite = suite_create("shard");
  TCase *tc = tcase_create("shard");
  tcase_add_test(tc, init_same_bits_for_any_split);
  tcase_add_test(tc, fill_ticks_once_per_block);
  tcase_add_test(tc, bsp_two_workers_mean_with_momentum);
  tcase_add_test(tc, bsp_partial_slices_sum_exactly);
  tcase_add_test(tc, bsp_wrong_step_refused_and_changes_nothing);
  tcase_add_test(tc, bsp_worker_death_completes_step);
  tcase_add_test(tc, bsp_finished_worker_does_not_cut_step_short);
  tcase_add_test(tc, asp_applies_on_arrival);
  tcase_add_test(tc, slice_bounds_refused);
  tcase_add_test(tc, runs_follow_blocks);
  tcase_add_test(tc, pinned_version_never_changes);
  tcase_add_test(tc, version_outlives_shard);
  tcase_add_test(tc, bsp_step_on_pinned_blocks_with_momentum);
  tcase_add_test(tc, load_replaces_state);
  tcase_add_test(tc, adam_state_survives_checkpoint_onto_another_split);
  tcase_add_test(tc, export_import_mid_bsp_step);
  tcase_add_loop_test(tc, export_import_asp, 0, 2);
  tcase_add_test(tc, from_step_bsp);
  tcase_add_test(tc, from_step_asp);
  tcase_add_test(tc, import_refusals_change_nothing);
  tcase_add_test(tc, add_counts_exactly);
  tcase_add_test(tc, skip_to_joiners_step);
  tcase_add_test(tc, follow_step_equals_replay);
  tcase_add_test(tc, ssp_ahead_accepted_beyond_refused_in_order);
  tcase_add_test(tc, ssp_ready_steps_apply_one_at_a_time);
  tcase_add_test(tc, ssp_zero_is_bsp);
  tcase_add_test(tc, ssp_export_import_steps_ahead);
  suite_add_tcase(suite, tc);
  return ps_check_run(suite);
}
