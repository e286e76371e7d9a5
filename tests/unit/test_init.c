#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/init.h"
#include "proto/ps.pb-c.h"
#include "tests/check_run.h"

#define UNIFORM PS__INIT__INIT_UNIFORM

/* splitmix64 seeded with 0 first outputs mix(GOLDEN); the published value
 * pins ps_mix64 to the real finaliser. */
START_TEST(test_mix64_known_value) {
  ck_assert_uint_eq(ps_mix64(0x9e3779b97f4a7c15ULL), 0xe220a8397b1dcdafULL);
  ck_assert_uint_ne(ps_mix64(1), ps_mix64(2));
}
END_TEST

START_TEST(test_value_independent_of_split) {
  enum { N = 1000 };
  static float whole[N], pieces[N], shifted[N];
  ps_init_fill(whole, 0, N, UNIFORM, 0.5f, 42);
  /* Uneven pieces, filled out of order, as servers with different ranges
   * would. memcmp: the promise is the same bits, not merely equal values. */
  const uint64_t cuts[] = {0, 1, 17, 256, 257, 600, 999, N};
  for (int i = 6; i >= 0; i--)
    ps_init_fill(pieces + cuts[i], cuts[i], cuts[i + 1] - cuts[i], UNIFORM,
                 0.5f, 42);
  ck_assert_int_eq(memcmp(whole, pieces, sizeof(whole)), 0);
  ps_init_fill(shifted, 500, N - 500, UNIFORM, 0.5f, 42);
  ck_assert_int_eq(memcmp(whole + 500, shifted, (N - 500) * sizeof(float)), 0);
  /* A key's value is not its neighbour's: the fill is not constant. */
  int same = 0;
  for (int i = 1; i < N; i++) same += whole[i] == whole[i - 1];
  ck_assert_int_lt(same, 3);
}
END_TEST

START_TEST(test_seeds_differ) {
  enum { N = 1000 };
  static float a[N], b[N], c[N];
  ps_init_fill(a, 0, N, UNIFORM, 1.0f, 1);
  ps_init_fill(b, 0, N, UNIFORM, 1.0f, 2);
  ps_init_fill(c, 0, N, UNIFORM, 1.0f, 1);
  int same = 0;
  for (int i = 0; i < N; i++) same += a[i] == b[i];
  ck_assert_int_lt(same, 3);
  ck_assert_int_eq(memcmp(a, c, sizeof(a)), 0);
}
END_TEST

START_TEST(test_range_mean_variance) {
  enum { N = 100000 };
  const float scale = 0.25f;
  float *v = malloc(N * sizeof(*v));
  ck_assert_ptr_nonnull(v);
  ps_init_fill(v, 123456789, N, UNIFORM, scale, 7);
  double sum = 0, sum2 = 0;
  int bins[10] = {0};
  for (int i = 0; i < N; i++) {
    ck_assert(v[i] > -scale && v[i] < scale);
    sum += v[i];
    sum2 += (double)v[i] * v[i];
    int bin = (int)(((double)v[i] / scale + 1) * 5);
    ck_assert(bin >= 0 && bin < 10);
    bins[bin]++;
  }
  /* uniform(-s, s): mean 0 with standard error s / sqrt(3N) ~ 0.0005 here,
   * variance s^2 / 3. A generator stuck on one sign, one value or a narrow
   * band fails one of these by far. */
  double mean = sum / N, var = sum2 / N - mean * mean;
  ck_assert_double_lt(fabs(mean), 0.003);
  ck_assert_double_lt(fabs(var - scale * scale / 3) / (scale * scale / 3),
                      0.02);
  for (int b = 0; b < 10; b++) {
    ck_assert_int_gt(bins[b], N / 10 - 600);
    ck_assert_int_lt(bins[b], N / 10 + 600);
  }
  free(v);
}
END_TEST

START_TEST(test_scale_is_linear) {
  float a[64], b[64];
  ps_init_fill(a, 10, 64, UNIFORM, 1.0f, 9);
  ps_init_fill(b, 10, 64, UNIFORM, 0.5f, 9);
  for (int i = 0; i < 64; i++) ck_assert_float_eq(b[i], a[i] * 0.5f);
}
END_TEST

START_TEST(test_zero_init) {
  float v[300];
  for (int i = 0; i < 300; i++) v[i] = 1.0f;
  ps_init_fill(v, 5, 299, PS__INIT__INIT_ZERO, 3.0f, 11);
  for (int i = 0; i < 299; i++) ck_assert_float_eq(v[i], 0.0f);
  /* count is honoured: the entry after the fill is untouched. */
  ck_assert_float_eq(v[299], 1.0f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("init");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_mix64_known_value);
  tcase_add_test(tc, test_value_independent_of_split);
  tcase_add_test(tc, test_seeds_differ);
  tcase_add_test(tc, test_range_mean_variance);
  tcase_add_test(tc, test_scale_is_linear);
  tcase_add_test(tc, test_zero_init);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
