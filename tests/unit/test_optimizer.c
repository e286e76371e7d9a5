/* Optimizer kernels against hand-computed values, and the vectorised clones
 * against a scalar reference on every length around the vector width. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/optimizer.h"
#include "tests/check_run.h"

START_TEST(sgd_plain_by_hand) {
  float w[3] = {1.0f, -2.0f, 0.5f};
  const float g[3] = {0.5f, 1.0f, -4.0f};
  /* lr 0.1, scale 0.5 (two workers averaged): w -= 0.05 * g */
  ps_apply_sgd(w, NULL, g, 3, 0.1f, 0.0f, 0.5f);
  ck_assert_float_eq_tol(w[0], 0.975f, 1e-7);
  ck_assert_float_eq_tol(w[1], -2.05f, 1e-7);
  ck_assert_float_eq_tol(w[2], 0.7f, 1e-7);
}
END_TEST

START_TEST(sgd_momentum_two_steps_by_hand) {
  float w[2] = {1.0f, 2.0f};
  float v[2] = {0.0f, 0.0f};
  const float g1[2] = {1.0f, -1.0f};
  const float g2[2] = {2.0f, 0.0f};
  ps_apply_sgd(w, v, g1, 2, 0.1f, 0.9f, 1.0f);
  /* v = g1; w = w - 0.1 v */
  ck_assert_float_eq_tol(v[0], 1.0f, 1e-7);
  ck_assert_float_eq_tol(w[0], 0.9f, 1e-7);
  ck_assert_float_eq_tol(w[1], 2.1f, 1e-7);
  ps_apply_sgd(w, v, g2, 2, 0.1f, 0.9f, 1.0f);
  /* v = 0.9 * v + g2 = (2.9, -0.9); w = (0.9 - 0.29, 2.1 + 0.09) */
  ck_assert_float_eq_tol(v[0], 2.9f, 1e-6);
  ck_assert_float_eq_tol(v[1], -0.9f, 1e-6);
  ck_assert_float_eq_tol(w[0], 0.61f, 1e-6);
  ck_assert_float_eq_tol(w[1], 2.19f, 1e-6);
}
END_TEST

START_TEST(vector_lengths_match_scalar) {
  for (size_t n = 0; n < 70; n++) {
    float *w = malloc((n + 1) * sizeof(float));
    float *v = malloc((n + 1) * sizeof(float));
    float *g = malloc((n + 1) * sizeof(float));
    double *rw = malloc((n + 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) {
      w[i] = (float)i * 0.25f;
      v[i] = (float)(n - i) * 0.125f;
      g[i] = (float)(i % 7) - 3.0f;
      double rv = 0.5 * v[i] + 0.25 * g[i];
      rw[i] = w[i] - 0.5 * rv;
    }
    ps_apply_sgd(w, v, g, n, 0.5f, 0.5f, 0.25f);
    for (size_t i = 0; i < n; i++)
      ck_assert_msg(fabs(w[i] - rw[i]) < 1e-5, "n=%zu i=%zu", n, i);
    free(w);
    free(v);
    free(g);
    free(rw);
  }
}
END_TEST

START_TEST(accumulate_sums) {
  float d[37], s[37];
  for (int i = 0; i < 37; i++) {
    d[i] = (float)i;
    s[i] = (float)(2 * i + 1);
  }
  ps_accumulate(d, s, 37);
  for (int i = 0; i < 37; i++) ck_assert_float_eq(d[i], (float)(3 * i + 1));
}
END_TEST

START_TEST(sgd_to_matches_in_place_bitwise) {
  /* The copy-on-write apply of the server must give exactly the bits of the
   * in-place one, momentum or not, on every length around the vector
   * widths; the input is left as it was. */
  for (size_t n = 0; n < 70; n++) {
    for (int mom = 0; mom < 2; mom++) {
      float *w = malloc((n + 1) * sizeof(float));
      float *w0 = malloc((n + 1) * sizeof(float));
      float *out = malloc((n + 1) * sizeof(float));
      float *v1 = malloc((n + 1) * sizeof(float));
      float *v2 = malloc((n + 1) * sizeof(float));
      float *g = malloc((n + 1) * sizeof(float));
      for (size_t i = 0; i < n; i++) {
        w[i] = w0[i] = 0.1f * (float)i - 1.3f;
        v1[i] = v2[i] = 0.7f / (float)(i + 1);
        g[i] = (float)(i % 5) * 0.37f - 0.5f;
      }
      float m = mom ? 0.9f : 0.0f;
      ps_apply_sgd(w, v1, g, n, 0.03f, m, 0.5f);
      ps_apply_sgd_to(out, w0, v2, g, n, 0.03f, m, 0.5f);
      ck_assert_msg(n == 0 || memcmp(w, out, n * sizeof(float)) == 0,
                    "n=%zu momentum=%g: weights differ", n, m);
      ck_assert(n == 0 || memcmp(v1, v2, n * sizeof(float)) == 0);
      for (size_t i = 0; i < n; i++) ck_assert(w0[i] == 0.1f * (float)i - 1.3f);
      free(w), free(w0), free(out), free(v1), free(v2), free(g);
    }
  }
  const char *isa = ps_optimizer_isa();
  ck_assert(strcmp(isa, "avx512f") == 0 || strcmp(isa, "avx2") == 0 ||
            strcmp(isa, "baseline") == 0);
}
END_TEST

/* ---- stateful optimizers (issue #14) ---- */

static ps_optimizer_spec_t spec_of(int kind, float lr) {
  ps_optimizer_spec_t o;
  memset(&o, 0, sizeof(o));
  o.kind = kind;
  o.learning_rate = lr;
  return o;
}

START_TEST(adagrad_by_hand_and_by_formula) {
  ps_optimizer_spec_t o = spec_of(PS_OPTIMIZER_ADAGRAD, 0.1f);
  o.epsilon = 1e-8f;
  float w[2] = {1.0f, -1.0f}, h[2] = {0, 0};
  const float g[2] = {2.0f, -0.5f};
  /* h = 4; w = 1 - 0.1 * 2 / (2 + 1e-8) = 0.9 */
  ps_optimizer_apply(&o, w, w, h, 2, g, 2, 1.0f, 1.0f, 1);
  ck_assert_float_eq(h[0], 4.0f);
  ck_assert_float_eq_tol(w[0], 0.9f, 1e-7);
  /* h = 8; w = 0.9 - 0.2 / sqrt(8) = 0.829289 */
  ps_optimizer_apply(&o, w, w, h, 2, g, 2, 1.0f, 1.0f, 2);
  ck_assert_float_eq(h[0], 8.0f);
  ck_assert_float_eq_tol(w[0], 0.8292893f, 1e-6);
  /* Five more against the formula in double, with scale 0.5 and a
   * schedule factor 0.25 on the rate. */
  double rw = w[1], rh = h[1];
  for (int t = 0; t < 5; t++) {
    double gi = 0.5 * g[1];
    rh += gi * gi;
    rw -= 0.1 * 0.25 * gi / (sqrt(rh) + 1e-8);
    ps_optimizer_apply(&o, w, w, h, 2, g, 2, 0.5f, 0.25f, (uint64_t)t + 3);
  }
  ck_assert_float_eq_tol(w[1], (float)rw, 1e-6);
  ck_assert_float_eq_tol(h[1], (float)rh, 1e-6);
}
END_TEST

START_TEST(adam_bias_correction_by_hand_and_by_formula) {
  ps_optimizer_spec_t o = spec_of(PS_OPTIMIZER_ADAM, 0.01f);
  o.beta1 = 0.9f;
  o.beta2 = 0.999f;
  o.epsilon = 1e-8f;
  /* Slot 0 = m, slot 1 = v, stride 3. */
  float w[3] = {0.5f, 0.5f, 0.5f}, st[6] = {0};
  const float g[3] = {4.0f, -0.001f, 0.0f};
  /* Step 1 with the correction: m^ = g, v^ = g^2, so each weight moves by
   * lr * g / (|g| + eps): 0.01 whatever g's size (without the correction
   * it would be 0.01 * 0.1 / sqrt(0.001) = 0.0316). */
  ps_optimizer_apply(&o, w, w, st, 3, g, 3, 1.0f, 1.0f, 1);
  ck_assert_float_eq_tol(st[0], 0.4f, 1e-7);   /* m = 0.1 g */
  ck_assert_float_eq_tol(st[3], 0.016f, 1e-6); /* v = 0.001 g^2 */
  ck_assert_float_eq_tol(w[0], 0.49f, 1e-6);
  ck_assert_float_eq_tol(w[1], 0.51f, 2e-6); /* eps matters a little */
  ck_assert(w[2] == 0.5f);                   /* g 0: m, v stay 0 */
  /* Steps 2..8 against the textbook formula in double (with the betas'
   * float values, which the servers use). */
  const double b1 = 0.9f, b2 = 0.999f, omb1 = 1.0f - 0.9f, omb2 = 1.0f - 0.999f;
  double rw[3] = {w[0], w[1], w[2]}, rm[3], rv[3];
  for (int i = 0; i < 3; i++) rm[i] = st[i], rv[i] = st[3 + i];
  for (uint64_t t = 2; t <= 8; t++) {
    float gt[3] = {g[0] * (float)t, g[1], 0.3f};
    ps_optimizer_apply(&o, w, w, st, 3, gt, 3, 1.0f, 1.0f, t);
    for (int i = 0; i < 3; i++) {
      double gi = gt[i];
      rm[i] = b1 * rm[i] + omb1 * gi;
      rv[i] = b2 * rv[i] + omb2 * gi * gi;
      double mh = rm[i] / (1 - pow(b1, (double)t));
      double vh = rv[i] / (1 - pow(b2, (double)t));
      rw[i] -= 0.01 * mh / (sqrt(vh) + 1e-8);
    }
  }
  for (int i = 0; i < 3; i++)
    ck_assert_msg(fabs(w[i] - rw[i]) < 2e-6, "i=%d w=%.9g want %.9g", i,
                  (double)w[i], rw[i]);
}
END_TEST

START_TEST(ftrl_l1_gives_exact_zeros) {
  ps_optimizer_spec_t o = spec_of(PS_OPTIMIZER_FTRL, 0.5f);
  o.ftrl_beta = 1.0f;
  o.l1 = 1.0f;
  float w[1] = {0.0f}, st[2] = {0, 0}; /* z, n */
  const float g[1] = {0.3f};
  /* z grows by 0.3 a step (w stays 0, so sigma w adds nothing): 0.3,
   * 0.6, 0.9 are inside the L1 ball and the weight is exactly +0. */
  const float zero = 0.0f;
  for (uint64_t t = 1; t <= 3; t++) {
    ps_optimizer_apply(&o, w, w, st, 1, g, 1, 1.0f, 1.0f, t);
    ck_assert_msg(memcmp(&w[0], &zero, sizeof(float)) == 0,
                  "step %llu: w = %g, not exactly 0 (z = %g)",
                  (unsigned long long)t, (double)w[0], (double)st[0]);
    ck_assert_float_eq_tol(st[0], 0.3f * (float)t, 1e-6);
  }
  /* Step 4: z = 1.2 > l1, n = 0.36: w = -(1.2 - 1) / ((1 + 0.6) / 0.5)
   * = -0.0625. */
  ps_optimizer_apply(&o, w, w, st, 1, g, 1, 1.0f, 1.0f, 4);
  ck_assert_float_eq_tol(st[1], 0.36f, 1e-6);
  ck_assert_float_eq_tol(w[0], -0.0625f, 1e-6);
  /* Against McMahan et al.'s algorithm in double, with l2 and a weight
   * that moves (sigma w no longer 0), several steps. */
  o.l1 = 0.05f;
  o.l2 = 0.5f;
  double rz = st[0], rn = st[1], rw = w[0];
  for (int t = 0; t < 6; t++) {
    double gi = (t % 2 ? -0.7 : 0.4) * 0.5; /* scale 0.5 */
    float gf[1] = {t % 2 ? -0.7f : 0.4f};
    ps_optimizer_apply(&o, w, w, st, 1, gf, 1, 0.5f, 1.0f, (uint64_t)t + 5);
    double nn = rn + gi * gi;
    double sigma = (sqrt(nn) - sqrt(rn)) / 0.5;
    rz += gi - sigma * rw;
    rn = nn;
    rw = fabs(rz) <= 0.05
             ? 0.0
             : -(rz - (rz < 0 ? -0.05 : 0.05)) / ((1.0 + sqrt(rn)) / 0.5 + 0.5);
    ck_assert_msg(fabs(w[0] - rw) < 1e-5, "step %d: w %.9g want %.9g", t,
                  (double)w[0], rw);
  }
}
END_TEST

START_TEST(schedule_values) {
  ps_lr_schedule_spec_t c = {.kind = PS_LR_SCHEDULE_CONSTANT};
  ck_assert(ps_lr_factor(&c, 0) == 1.0f && ps_lr_factor(&c, 1u << 30) == 1.0f);
  ps_lr_schedule_spec_t cos = {.kind = PS_LR_SCHEDULE_COSINE,
                               .total_steps = 1000};
  ck_assert(ps_lr_factor(&cos, 0) == 1.0f);
  ck_assert_float_eq_tol(ps_lr_factor(&cos, 500), 0.5f, 1e-7);
  ck_assert_float_eq_tol(ps_lr_factor(&cos, 250), 0.8535534f, 1e-7);
  ck_assert(ps_lr_factor(&cos, 1000) == 0.0f);
  ck_assert(ps_lr_factor(&cos, 5000) == 0.0f); /* past the end: stays 0 */
  /* Warm-up 10, then cosine over the other 100 steps. */
  ps_lr_schedule_spec_t wc = {
      .kind = PS_LR_SCHEDULE_COSINE, .total_steps = 110, .warmup_steps = 10};
  ck_assert_float_eq_tol(ps_lr_factor(&wc, 0), 0.1f, 1e-7);
  ck_assert_float_eq_tol(ps_lr_factor(&wc, 4), 0.5f, 1e-7);
  ck_assert(ps_lr_factor(&wc, 9) == 1.0f);
  ck_assert(ps_lr_factor(&wc, 10) == 1.0f);
  ck_assert_float_eq_tol(ps_lr_factor(&wc, 60), 0.5f, 1e-7);
  ck_assert(ps_lr_factor(&wc, 110) == 0.0f);
  /* Warm-up, then constant. */
  ps_lr_schedule_spec_t wk = {.kind = PS_LR_SCHEDULE_CONSTANT,
                              .warmup_steps = 4};
  ck_assert_float_eq_tol(ps_lr_factor(&wk, 1), 0.5f, 1e-7);
  ck_assert(ps_lr_factor(&wk, 4) == 1.0f && ps_lr_factor(&wk, 99) == 1.0f);
  /* The horizon in epochs, as the scheduler resolves it: 10 epochs of
   * floor(60000 / (2 x 32)) = 937 steps. */
  char err[256];
  ps_lr_schedule_spec_t ep = {.kind = PS_LR_SCHEDULE_COSINE,
                              .epochs = 10,
                              .examples_per_epoch = 60000,
                              .worker_batch = 32};
  ck_assert_int_eq(ps_lr_schedule_check(&ep, err, sizeof(err)), PS_OK);
  ck_assert_int_eq(ps_lr_schedule_resolve(&ep, 2, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(ep.total_steps, 9370);
  ep.total_steps = 0;
  ep.examples_per_epoch = 63; /* fewer than one global batch */
  ck_assert_int_eq(ps_lr_schedule_resolve(&ep, 2, err, sizeof(err)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "0 steps") != NULL, "%s", err);
  ps_lr_schedule_spec_t bad = {
      .kind = PS_LR_SCHEDULE_COSINE, .total_steps = 10, .warmup_steps = 10};
  ck_assert_int_eq(ps_lr_schedule_check(&bad, err, sizeof(err)), PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "warm-up") != NULL, "%s", err);
}
END_TEST

START_TEST(optimizer_settings_checked) {
  char err[256];
  ps_optimizer_spec_t o = spec_of(PS_OPTIMIZER_ADAM, 0.001f);
  o.beta1 = 0.9f, o.beta2 = 0.999f, o.epsilon = 1e-8f;
  ck_assert_int_eq(ps_optimizer_check(&o, "tensor \"w\"", err, sizeof(err)),
                   PS_OK);
  ck_assert_int_eq(ps_optimizer_state_slots(&o), 2);
  o.momentum = 0.9f; /* not Adam's */
  ck_assert_int_eq(ps_optimizer_check(&o, "tensor \"w\"", err, sizeof(err)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "tensor \"w\"") && strstr(err, "momentum"), "%s",
                err);
  o.momentum = 0.0f;
  o.beta2 = 1.0f;
  ck_assert_int_eq(ps_optimizer_check(&o, "x", err, sizeof(err)), PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "beta2 1"), "%s", err);
  ps_optimizer_spec_t f = spec_of(PS_OPTIMIZER_FTRL, 0.1f);
  f.l1 = -1.0f;
  ck_assert_int_eq(ps_optimizer_check(&f, "x", err, sizeof(err)), PS_ERR_INVAL);
  ps_optimizer_spec_t s = spec_of(PS_OPTIMIZER_SGD, 0.1f);
  ck_assert_int_eq(ps_optimizer_state_slots(&s), 0);
  s.momentum = 0.9f;
  ck_assert_int_eq(ps_optimizer_state_slots(&s), 1);
  ck_assert_int_eq(ps_optimizer_kind("adam"), PS_OPTIMIZER_ADAM);
  ck_assert_int_eq(ps_optimizer_kind("lamb"), -1);
  /* Sparse rows: dim weights, k dim state, Adam's 64-bit count. */
  ck_assert_uint_eq(ps_optimizer_row_floats(&o, 8), 8 * 3 + 2);
  ck_assert_uint_eq(ps_optimizer_row_floats(&s, 8), 16);
  ck_assert_uint_eq(ps_optimizer_row_floats(&f, 8), 24);
}
END_TEST

START_TEST(adam_row_counts_its_updates) {
  ps_optimizer_spec_t o = spec_of(PS_OPTIMIZER_ADAM, 0.01f);
  o.beta1 = 0.9f, o.beta2 = 0.999f, o.epsilon = 1e-8f;
  float row[4 * 3 + 2];
  memset(row, 0, sizeof(row));
  const float g[4] = {1, -2, 3, -4};
  ps_optimizer_apply_row(&o, row, 4, g, 1.0f, 1.0f);
  /* First update, bias-corrected: every weight moves by 0.01 against g. */
  for (int i = 0; i < 4; i++)
    ck_assert_float_eq_tol(row[i], g[i] > 0 ? -0.01f : 0.01f, 1e-6);
  ps_optimizer_apply_row(&o, row, 4, g, 1.0f, 1.0f);
  uint64_t t;
  memcpy(&t, row + 12, sizeof(t));
  ck_assert_uint_eq(t, 2);
  /* The same two updates through the dense kernel with t = 1, 2. */
  float w[4] = {0}, st[8] = {0};
  ps_optimizer_apply(&o, w, w, st, 4, g, 4, 1.0f, 1.0f, 1);
  ps_optimizer_apply(&o, w, w, st, 4, g, 4, 1.0f, 1.0f, 2);
  ck_assert(memcmp(w, row, sizeof(w)) == 0);
  ck_assert(memcmp(st, row + 4, sizeof(st)) == 0);
}
END_TEST

/* Runs kind on n values from fixed inputs: out-of-place when to_out, into
 * out (n weights then k * n state). */
static void run_kind(const ps_optimizer_spec_t *o, size_t n, int to_out,
                     float *out) {
  float *w = malloc((n + 1) * sizeof(float));
  float *w2 = malloc((n + 1) * sizeof(float));
  float *st = calloc(2 * n + 1, sizeof(float));
  float *g = malloc((n + 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    w[i] = 0.1f * (float)i - 1.3f;
    st[i] = 0.01f * (float)(i % 9);         /* m, h or z */
    st[n + i] = 0.02f * (float)(i % 5 + 1); /* v or n: > 0 */
    g[i] = (float)(i % 7) * 0.37f - 1.1f;
  }
  for (uint64_t t = 1; t <= 3; t++) {
    if (to_out) {
      ps_optimizer_apply(o, w2, w, st, n, g, n, 0.5f, 0.75f, t);
      memcpy(w, w2, n * sizeof(float));
    } else {
      ps_optimizer_apply(o, w, w, st, n, g, n, 0.5f, 0.75f, t);
    }
  }
  memcpy(out, w, n * sizeof(float));
  memcpy(out + n, st, 2 * n * sizeof(float));
  free(w), free(w2), free(st), free(g);
}

START_TEST(stateful_kernels_same_bits_everywhere) {
  /* Every variant the CPU has, in place and out of place, on every length
   * around the vector widths, gives the baseline's bits: a BSP run and
   * --standalone agree across machines for these optimizers too. */
  ps_optimizer_spec_t specs[4] = {
      spec_of(PS_OPTIMIZER_ADAGRAD, 0.1f), spec_of(PS_OPTIMIZER_ADAM, 0.01f),
      spec_of(PS_OPTIMIZER_FTRL, 0.3f), spec_of(PS_OPTIMIZER_SGD, 0.05f)};
  specs[0].epsilon = 1e-6f;
  specs[1].beta1 = 0.9f, specs[1].beta2 = 0.99f, specs[1].epsilon = 1e-7f;
  specs[2].l1 = 0.2f, specs[2].l2 = 0.1f, specs[2].ftrl_beta = 1.0f;
  specs[3].momentum = 0.9f;
  const char *isas[3] = {"baseline", "avx2", "avx512f"};
  int compared = 0;
  for (int k = 0; k < 4; k++)
    for (size_t n = 1; n < 70; n++) {
      float *ref = malloc(3 * n * sizeof(float));
      float *got = malloc(3 * n * sizeof(float));
      ck_assert(ps__optimizer_force_isa("baseline"));
      run_kind(&specs[k], n, 0, ref);
      for (int a = 0; a < 3; a++) {
        if (!ps__optimizer_force_isa(isas[a])) continue;
        for (int to = 0; to < 2; to++) {
          run_kind(&specs[k], n, to, got);
          ck_assert_msg(memcmp(ref, got, 3 * n * sizeof(float)) == 0,
                        "%s n=%zu on %s%s differs from the baseline",
                        ps_optimizer_name(specs[k].kind), n, isas[a],
                        to ? " out of place" : "");
          compared++;
        }
      }
      free(ref), free(got);
    }
  ck_assert_int_ge(compared, 4 * 69 * 2);
}
END_TEST

START_TEST(finite_check_on_every_variant) {
  /* A push is refused (or zeroed) for one NaN or infinity anywhere in it:
   * every variant finds one at every position of every length around the
   * vector widths, and passes the extreme finite values. */
  const float bad[4] = {NAN, -NAN, INFINITY, -INFINITY};
  const float good[5] = {FLT_MAX, -FLT_MAX, FLT_MIN / 4, -0.0f, 1.0f};
  const char *isas[3] = {"baseline", "avx2", "avx512f"};
  float v[70];
  int checked = 0;
  for (int a = 0; a < 3; a++) {
    if (!ps__optimizer_force_isa(isas[a])) continue;
    for (size_t n = 1; n <= 70; n++)
      for (size_t at = 0; at < n; at++) {
        for (size_t i = 0; i < n; i++) v[i] = good[(i + at) % 5];
        ck_assert_msg(ps_floats_finite(v, n), "%s n=%zu: finite refused",
                      isas[a], n);
        for (int b = 0; b < 4; b++) {
          v[at] = bad[b];
          ck_assert_msg(!ps_floats_finite(v, n), "%s n=%zu: %g at %zu missed",
                        isas[a], n, (double)bad[b], at);
          checked++;
        }
      }
  }
  ck_assert(ps__optimizer_force_isa("baseline"));
  ck_assert_int_ge(checked, 4 * 70 * 71 / 2);
}
END_TEST

int main(void) {
  Suite *s = suite_create("optimizer");
  TCase *tc = tcase_create("optimizer");
  tcase_add_test(tc, sgd_plain_by_hand);
  tcase_add_test(tc, sgd_momentum_two_steps_by_hand);
  tcase_add_test(tc, vector_lengths_match_scalar);
  tcase_add_test(tc, accumulate_sums);
  tcase_add_test(tc, sgd_to_matches_in_place_bitwise);
  tcase_add_test(tc, adagrad_by_hand_and_by_formula);
  tcase_add_test(tc, adam_bias_correction_by_hand_and_by_formula);
  tcase_add_test(tc, ftrl_l1_gives_exact_zeros);
  tcase_add_test(tc, schedule_values);
  tcase_add_test(tc, optimizer_settings_checked);
  tcase_add_test(tc, adam_row_counts_its_updates);
  tcase_add_test(tc, stateful_kernels_same_bits_everywhere);
  tcase_add_test(tc, finite_check_on_every_variant);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
