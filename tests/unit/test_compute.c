#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/compute.h"

static ps_compute_t *c;

static void setup(void) {
  char err[256] = "";
  ps_compute_opts_t o = {.threads = 1};
  c = ps_compute_new(&ps_compute_cpu_ops, &o, err, sizeof(err));
  ck_assert_msg(c != NULL, "%s", err);
}

static void teardown(void) {
  ps_compute_destroy(&c);
  ck_assert_ptr_null(c);
}

static uint64_t rng = 12345;
static float frand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static ps_dbuf_t *buf_from(const float *host, size_t n) {
  ps_dbuf_t *b = ps_dbuf_new(c, PS_DTYPE_F32, n);
  ck_assert_ptr_nonnull(b);
  ps_compute_upload(c, ps_dptr(b, 0), host, n);
  return b;
}

START_TEST(test_find_and_name) {
  ck_assert_ptr_eq(ps_compute_find("cpu"), &ps_compute_cpu_ops);
  ck_assert_ptr_null(ps_compute_find("tpu"));
  ck_assert_str_eq(ps_compute_name(c), "cpu");
}
END_TEST

START_TEST(test_buffers_zeroed_and_copied) {
  ps_dbuf_t *b = ps_dbuf_new(c, PS_DTYPE_F32, 100);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(ps_dbuf_size(b), 100);
  float h[100];
  ps_compute_download(c, h, ps_dptr(b, 0), 100);
  for (int i = 0; i < 100; i++) ck_assert_float_eq(h[i], 0.0f);
  const float in[3] = {1.5f, -2.0f, 3.25f};
  ps_compute_upload(c, ps_dptr(b, 40), in, 3);
  ps_compute_fill(c, ps_dptr(b, 90), 10, 7.0f);
  ps_compute_download(c, h, ps_dptr(b, 0), 100);
  ck_assert_float_eq(h[39], 0.0f);
  ck_assert_float_eq(h[40], 1.5f);
  ck_assert_float_eq(h[42], 3.25f);
  ck_assert_float_eq(h[43], 0.0f);
  ck_assert_float_eq(h[89], 0.0f);
  ck_assert_float_eq(h[99], 7.0f);
  ps_dbuf_t *u = ps_dbuf_new(c, PS_DTYPE_U8, 5);
  ck_assert_ptr_nonnull(u);
  const uint8_t lab[2] = {3, 9};
  ps_compute_upload(c, ps_dptr(u, 3), lab, 2);
  uint8_t back[5];
  ps_compute_download(c, back, ps_dptr(u, 0), 5);
  ck_assert_uint_eq(back[0], 0);
  ck_assert_uint_eq(back[3], 3);
  ck_assert_uint_eq(back[4], 9);
  ps_dbuf_destroy(&b);
  ps_dbuf_destroy(&u);
  ck_assert_ptr_null(b);
}
END_TEST

/* C = alpha op(A) op(B) + beta C in double, row-major, by definition. */
static void naive_gemm(int ta, int tb, size_t m, size_t n, size_t k,
                       float alpha, const float *a, size_t lda, const float *b,
                       size_t ldb, float beta, float *cm, size_t ldc) {
  for (size_t i = 0; i < m; i++)
    for (size_t j = 0; j < n; j++) {
      double s = 0;
      for (size_t p = 0; p < k; p++) {
        double av = ta ? a[p * lda + i] : a[i * lda + p];
        double bv = tb ? b[j * ldb + p] : b[p * ldb + j];
        s += av * bv;
      }
      cm[i * ldc + j] = (float)(alpha * s + beta * cm[i * ldc + j]);
    }
}

START_TEST(test_gemm_against_naive) {
  /* Odd sizes, padded leading dimensions, offsets into the buffers, every
   * transpose combination, beta 0 and not. */
  const size_t shapes[][3] = {
      {1, 1, 1}, {7, 5, 3}, {33, 17, 64}, {64, 10, 128}, {5, 256, 1}};
  for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
    size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (int bi = 0; bi < 2; bi++) {
          float alpha = 0.75f, beta = bi ? -0.5f : 0.0f;
          size_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
          size_t arows = ta ? k : m, brows = tb ? n : k;
          size_t off = 5;
          size_t na = off + arows * lda, nb = off + brows * ldb,
                 nc = off + m * ldc;
          float *a = malloc(na * sizeof(float));
          float *b = malloc(nb * sizeof(float));
          float *cm = malloc(nc * sizeof(float));
          float *ref = malloc(nc * sizeof(float));
          for (size_t i = 0; i < na; i++) a[i] = frand();
          for (size_t i = 0; i < nb; i++) b[i] = frand();
          for (size_t i = 0; i < nc; i++) cm[i] = ref[i] = frand();
          ps_dbuf_t *da = buf_from(a, na), *db = buf_from(b, nb),
                    *dc = buf_from(cm, nc);
          ps_compute_gemm(c, ta ? PS_TRANS : PS_NO_TRANS,
                          tb ? PS_TRANS : PS_NO_TRANS, m, n, k, alpha,
                          ps_dptr(da, off), lda, ps_dptr(db, off), ldb, beta,
                          ps_dptr(dc, off), ldc);
          ps_compute_download(c, cm, ps_dptr(dc, 0), nc);
          naive_gemm(ta, tb, m, n, k, alpha, a + off, lda, b + off, ldb, beta,
                     ref + off, ldc);
          for (size_t i = 0; i < nc; i++) {
            /* Padding between rows and before the offset is untouched. */
            size_t r = i < off ? SIZE_MAX : (i - off) % ldc;
            if (r == SIZE_MAX || r >= n)
              ck_assert_float_eq(cm[i], ref[i]);
            else
              ck_assert_msg(fabsf(cm[i] - ref[i]) <= 1e-5f * (float)k + 1e-6f,
                            "shape %zu ta %d tb %d beta %g: C[%zu] %g vs %g", s,
                            ta, tb, (double)beta, i, (double)cm[i],
                            (double)ref[i]);
          }
          ps_dbuf_destroy(&da);
          ps_dbuf_destroy(&db);
          ps_dbuf_destroy(&dc);
          free(a);
          free(b);
          free(cm);
          free(ref);
        }
  }
}
END_TEST

START_TEST(test_bias_relu_colsum) {
  enum { R = 3, C = 4 };
  float y[R * C], bias[C] = {1, -1, 0.5f, 0};
  for (int i = 0; i < R * C; i++) y[i] = (float)(i - 6) * 0.25f;
  ps_dbuf_t *dy = buf_from(y, R * C), *db = buf_from(bias, C);
  ps_compute_add_bias(c, ps_dptr(dy, 0), ps_dptr(db, 0), R, C);
  float got[R * C];
  ps_compute_download(c, got, ps_dptr(dy, 0), R * C);
  for (int i = 0; i < R * C; i++)
    ck_assert_float_eq(got[i], y[i] + bias[i % C]);

  ps_dbuf_t *act = ps_dbuf_new(c, PS_DTYPE_F32, R * C);
  ps_compute_relu(c, ps_dptr(dy, 0), ps_dptr(act, 0), R * C);
  float relu[R * C];
  ps_compute_download(c, relu, ps_dptr(act, 0), R * C);
  for (int i = 0; i < R * C; i++)
    ck_assert_float_eq(relu[i], got[i] > 0 ? got[i] : 0.0f);

  float g[R * C];
  for (int i = 0; i < R * C; i++) g[i] = (float)(i + 1);
  ps_dbuf_t *dg = buf_from(g, R * C);
  ps_compute_relu_backward(c, ps_dptr(act, 0), ps_dptr(dg, 0), ps_dptr(dg, 0),
                           R * C);
  float gb[R * C];
  ps_compute_download(c, gb, ps_dptr(dg, 0), R * C);
  for (int i = 0; i < R * C; i++)
    ck_assert_float_eq(gb[i], relu[i] > 0 ? g[i] : 0.0f);

  /* out = 2 * colsum + 0.5 * out */
  float out[C] = {4, 4, 4, 4};
  ps_dbuf_t *dout = buf_from(out, C);
  ps_compute_col_sum(c, ps_dptr(dg, 0), R, C, 2.0f, 0.5f, ps_dptr(dout, 0));
  float cs[C];
  ps_compute_download(c, cs, ps_dptr(dout, 0), C);
  for (int j = 0; j < C; j++) {
    float s = 0;
    for (int i = 0; i < R; i++) s += gb[i * C + j];
    ck_assert_float_eq_tol(cs[j], 2.0f * s + 2.0f, 1e-6f);
  }
  ps_dbuf_destroy(&dy);
  ps_dbuf_destroy(&db);
  ps_dbuf_destroy(&act);
  ps_dbuf_destroy(&dg);
  ps_dbuf_destroy(&dout);
}
END_TEST

START_TEST(test_softmax_xent) {
  enum { R = 4, C = 5 };
  /* Row 3 has logits large enough to overflow a naive exp. */
  float z[R * C] = {0,  0,    0, 0,  0, 1,    2,   3,   4,    5,
                    -3, 0.5f, 2, -1, 0, 1000, 999, 990, 1000, 0};
  const uint8_t y[R] = {2, 4, 0, 1};
  ps_dbuf_t *dz = buf_from(z, R * C),
            *dgr = ps_dbuf_new(c, PS_DTYPE_F32, R * C);
  ps_dbuf_t *dl = ps_dbuf_new(c, PS_DTYPE_U8, R);
  ps_compute_upload(c, ps_dptr(dl, 0), y, R);
  double loss = ps_compute_softmax_xent(c, ps_dptr(dz, 0), ps_dptr(dl, 0), R, C,
                                        ps_dptr(dgr, 0), 0.25f);
  float g[R * C];
  ps_compute_download(c, g, ps_dptr(dgr, 0), R * C);
  double ref = 0;
  for (int i = 0; i < R; i++) {
    double mx = z[i * C];
    for (int j = 1; j < C; j++) mx = fmax(mx, z[i * C + j]);
    double s = 0;
    for (int j = 0; j < C; j++) s += exp(z[i * C + j] - mx);
    ref += log(s) - (z[i * C + y[i]] - mx);
    for (int j = 0; j < C; j++) {
      double p = exp(z[i * C + j] - mx) / s;
      ck_assert_double_eq_tol(g[i * C + j], (p - (j == y[i])) * 0.25, 1e-6);
    }
  }
  ck_assert(isfinite(loss));
  ck_assert_double_eq_tol(loss, ref, 1e-9);
  /* Row 0: uniform over 5 classes. */
  ck_assert_double_eq_tol(
      ps_compute_softmax_xent(c, ps_dptr(dz, 0), ps_dptr(dl, 0), 1, C,
                              (ps_dptr_t){NULL, 0}, 0.0f),
      log(5.0), 1e-12);
  /* Row 1 argmax 4 == label, row 2 argmax 2 != 0, row 3 tie 0 and 3:
   * first wins (0 != 1), row 0 tie everywhere: 0 != 2. */
  ck_assert_uint_eq(
      ps_compute_count_correct(c, ps_dptr(dz, 0), ps_dptr(dl, 0), R, C), 1);
  ps_dbuf_destroy(&dz);
  ps_dbuf_destroy(&dgr);
  ps_dbuf_destroy(&dl);
}
END_TEST

/* Reaching past a buffer is a bug in the caller: it aborts, never reads. */
START_TEST(test_out_of_bounds_aborts) {
  ps_dbuf_t *b = ps_dbuf_new(c, PS_DTYPE_F32, 10);
  float h[11];
  ps_compute_download(c, h, ps_dptr(b, 1), 10);
}
END_TEST

START_TEST(test_wrong_dtype_aborts) {
  ps_dbuf_t *b = ps_dbuf_new(c, PS_DTYPE_U8, 10);
  ps_compute_fill(c, ps_dptr(b, 0), 2, 1.0f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("compute");
  TCase *tc = tcase_create("cpu");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_find_and_name);
  tcase_add_test(tc, test_buffers_zeroed_and_copied);
  tcase_add_test(tc, test_gemm_against_naive);
  tcase_add_test(tc, test_bias_relu_colsum);
  tcase_add_test(tc, test_softmax_xent);
  tcase_add_test_raise_signal(tc, test_out_of_bounds_aborts, SIGABRT);
  tcase_add_test_raise_signal(tc, test_wrong_dtype_aborts, SIGABRT);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
