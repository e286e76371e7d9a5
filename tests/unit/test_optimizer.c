/* Optimizer kernels against hand-computed values, and the vectorised clones
 * against a scalar reference on every length around the vector width. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

int main(void) {
  Suite *s = suite_create("optimizer");
  TCase *tc = tcase_create("optimizer");
  tcase_add_test(tc, sgd_plain_by_hand);
  tcase_add_test(tc, sgd_momentum_two_steps_by_hand);
  tcase_add_test(tc, vector_lengths_match_scalar);
  tcase_add_test(tc, accumulate_sums);
  tcase_add_test(tc, sgd_to_matches_in_place_bitwise);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
