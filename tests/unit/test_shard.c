/* The dense shard: initialisation independent of the split, BSP steps by
 * hand (averaging, momentum, wrong steps, duplicates, a worker dying or
 * finishing mid-step), ASP, slice bounds, and the copy-on-write blocks behind
 * zero-copy pull replies (a pinned version never changes, an unpinned block
 * is updated in place, released versions are reused, a version outlives its
 * shard). Gradients are small integers and lr/momentum powers of two, so
 * every expected value is exact and compared bit for bit. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
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
  ck_assert_int_eq(ps_shard_load(s, w, NULL, 0), PS_OK);
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
  ck_assert(memcmp(ps_shard_momentum(a), ps_shard_momentum(b),
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
  ck_assert_int_eq(ps_shard_load(s, w, v, 42), PS_OK);
  ck_assert(runs[0].data[5] == 0.0f); /* the pinned copy is untouched */
  ck_assert(memcmp(ps_shard_weights(s), w, len * sizeof(float)) == 0);
  ck_assert(memcmp(ps_shard_momentum(s), v, len * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_shard_clock(s), 42);
  ps_shard_unpin(NULL, runs[0].version);
  free(w);
  free(v);
  ps_shard_destroy(&s);
}
END_TEST

int main(void) {
  Suite *suite = suite_create("shard");
  TCase *tc = tcase_create("shard");
  tcase_add_test(tc, init_same_bits_for_any_split);
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
  suite_add_tcase(suite, tc);
  return ps_check_run(suite);
}
