#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "worker/compute/compute.h"
#include "worker/compute/compute_elem.h"
#include "tests/check_run.h"

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
#ifdef PS_HAVE_CUDA
  ck_assert_ptr_eq(ps_compute_find("cuda"), &ps_compute_cuda_ops);
#else
  ck_assert_ptr_null(ps_compute_find("cuda"));
#endif
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

/* Direct convolution of NHWC images in double, weights (ky, kx, ci) x co:
 * the definition im2col + gemm must reproduce. */
static void direct_conv(const ps_conv_geom_t *g, const float *x, const float *w,
                        size_t cout, double *out) {
  for (size_t img = 0; img < g->n; img++)
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++)
        for (size_t co = 0; co < cout; co++) {
          double s = 0;
          for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++) {
              long iy = (long)(oy * g->stride + ky) - (long)g->pad;
              long ix = (long)(ox * g->stride + kx) - (long)g->pad;
              if (iy < 0 || ix < 0 || iy >= (long)g->h || ix >= (long)g->w)
                continue;
              for (size_t ci = 0; ci < g->ch; ci++)
                s += (double)x[((img * g->h + (size_t)iy) * g->w + (size_t)ix) *
                                   g->ch +
                               ci] *
                     (double)w[((ky * g->kw + kx) * g->ch + ci) * cout + co];
            }
          out[((img * g->oh + oy) * g->ow + ox) * cout + co] = s;
        }
}

/* n, h, w, ch, k, pad, stride: 1 channel like the CNN's first layer, many
 * like its second, padding wider than the window's reach, strides that
 * skip pixels, a window as large as the padded image. */
static const size_t conv_cases[][7] = {
    {2, 8, 8, 1, 5, 0, 1},   {3, 7, 6, 3, 3, 1, 1}, {2, 9, 7, 4, 3, 2, 2},
    {1, 5, 5, 2, 5, 2, 1},   {2, 6, 6, 8, 2, 0, 2}, {1, 4, 3, 2, 5, 1, 1},
    {2, 12, 12, 32, 5, 0, 1}};

START_TEST(test_im2col_against_direct_convolution) {
  for (size_t t = 0; t < sizeof(conv_cases) / sizeof(conv_cases[0]); t++) {
    const size_t *p = conv_cases[t];
    ps_conv_geom_t g;
    ck_assert_int_eq(ps_conv_geom(&g, p[0], p[1], p[2], p[3], p[4], p[5], p[6]),
                     PS_OK);
    ck_assert_uint_eq(g.oh, (p[1] + 2 * p[5] - p[4]) / p[6] + 1);
    size_t cout = 5, k = g.kh * g.kw * g.ch, rows = g.n * g.oh * g.ow;
    size_t nx = g.n * g.h * g.w * g.ch;
    float *x = malloc(nx * sizeof(float)),
          *w = malloc(k * cout * sizeof(float));
    float *out = malloc(rows * cout * sizeof(float));
    double *ref = malloc(rows * cout * sizeof(double));
    for (size_t i = 0; i < nx; i++) x[i] = frand();
    for (size_t i = 0; i < k * cout; i++) w[i] = frand();
    ps_dbuf_t *dx = buf_from(x, nx), *dw = buf_from(w, k * cout);
    ps_dbuf_t *dcol = ps_dbuf_new(c, PS_DTYPE_F32, rows * k);
    ps_dbuf_t *dout = ps_dbuf_new(c, PS_DTYPE_F32, rows * cout);
    ps_compute_im2col(c, &g, ps_dptr(dx, 0), ps_dptr(dcol, 0));
    ps_compute_gemm(c, PS_NO_TRANS, PS_NO_TRANS, rows, cout, k, 1.0f,
                    ps_dptr(dcol, 0), k, ps_dptr(dw, 0), cout, 0.0f,
                    ps_dptr(dout, 0), cout);
    ps_compute_download(c, out, ps_dptr(dout, 0), rows * cout);
    direct_conv(&g, x, w, cout, ref);
    for (size_t i = 0; i < rows * cout; i++)
      ck_assert_msg(fabs(out[i] - ref[i]) <= 1e-5 * (double)k,
                    "case %zu: out[%zu] %g, direct %g", t, i, (double)out[i],
                    ref[i]);

    /* The GPU's element function gives the same col, bit for bit. */
    float *col = malloc(rows * k * sizeof(float));
    ps_compute_download(c, col, ps_dptr(dcol, 0), rows * k);
    for (size_t i = 0; i < rows * k; i++)
      ck_assert_msg(ps__im2col_at(&g, x, i) == col[i],
                    "case %zu: col[%zu] %g vs element %g", t, i, (double)col[i],
                    (double)ps__im2col_at(&g, x, i));
    ps_dbuf_destroy(&dx);
    ps_dbuf_destroy(&dw);
    ps_dbuf_destroy(&dcol);
    ps_dbuf_destroy(&dout);
    free(x);
    free(w);
    free(out);
    free(ref);
    free(col);
  }
}
END_TEST

/* col2im is im2col's adjoint: <im2col(x), d> == <x, col2im(d)> for every x
 * and d, which is what makes it the gradient of the convolution's input. */
START_TEST(test_col2im_is_adjoint) {
  for (size_t t = 0; t < sizeof(conv_cases) / sizeof(conv_cases[0]); t++) {
    const size_t *p = conv_cases[t];
    ps_conv_geom_t g;
    ck_assert_int_eq(ps_conv_geom(&g, p[0], p[1], p[2], p[3], p[4], p[5], p[6]),
                     PS_OK);
    size_t nx = g.n * g.h * g.w * g.ch;
    size_t ncol = g.n * g.oh * g.ow * g.kh * g.kw * g.ch;
    float *x = malloc(nx * sizeof(float)), *d = malloc(ncol * sizeof(float));
    float *col = malloc(ncol * sizeof(float)), *dx = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) x[i] = frand();
    for (size_t i = 0; i < ncol; i++) d[i] = frand();
    ps_dbuf_t *bx = buf_from(x, nx), *bd = buf_from(d, ncol);
    ps_dbuf_t *bcol = ps_dbuf_new(c, PS_DTYPE_F32, ncol);
    /* dx starts dirty: col2im overwrites, it does not accumulate. */
    ps_dbuf_t *bdx = ps_dbuf_new(c, PS_DTYPE_F32, nx);
    ps_compute_fill(c, ps_dptr(bdx, 0), nx, 42.0f);
    ps_compute_im2col(c, &g, ps_dptr(bx, 0), ps_dptr(bcol, 0));
    ps_compute_col2im(c, &g, ps_dptr(bd, 0), ps_dptr(bdx, 0));
    ps_compute_download(c, col, ps_dptr(bcol, 0), ncol);
    ps_compute_download(c, dx, ps_dptr(bdx, 0), nx);
    double lhs = 0, rhs = 0, scale = 0;
    for (size_t i = 0; i < ncol; i++) {
      lhs += (double)col[i] * d[i];
      scale += fabs((double)col[i] * d[i]);
    }
    for (size_t i = 0; i < nx; i++) rhs += (double)x[i] * dx[i];
    ck_assert_msg(fabs(lhs - rhs) <= 1e-5 * scale + 1e-6,
                  "case %zu: <im2col x, d> %.9g, <x, col2im d> %.9g", t, lhs,
                  rhs);
    /* The GPU's element function: the same sums in another order. */
    for (size_t i = 0; i < nx; i++)
      ck_assert_msg(fabsf(ps__col2im_at(&g, d, i) - dx[i]) <=
                        1e-5f * (1.0f + fabsf(dx[i])),
                    "case %zu: dx[%zu] %g vs element %g", t, i, (double)dx[i],
                    (double)ps__col2im_at(&g, d, i));
    ps_dbuf_destroy(&bx);
    ps_dbuf_destroy(&bd);
    ps_dbuf_destroy(&bcol);
    ps_dbuf_destroy(&bdx);
    free(x);
    free(d);
    free(col);
    free(dx);
  }
}
END_TEST

START_TEST(test_maxpool_forward_backward) {
  /* n, h, w, ch, window (= stride), stride: odd sizes leave a row and a
   * column out of every window; the last case has gaps between windows. */
  static const size_t cases[][6] = {{2, 8, 8, 3, 2, 2},
                                    {1, 7, 5, 2, 2, 2},
                                    {2, 9, 9, 4, 3, 3},
                                    {1, 8, 8, 1, 2, 3}};
  for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
    const size_t *p = cases[t];
    ps_conv_geom_t g;
    ck_assert_int_eq(ps_conv_geom(&g, p[0], p[1], p[2], p[3], p[4], 0, p[5]),
                     PS_OK);
    size_t nx = g.n * g.h * g.w * g.ch, ny = g.n * g.oh * g.ow * g.ch;
    float *x = malloc(nx * sizeof(float)), *y = malloc(ny * sizeof(float));
    float *dy = malloc(ny * sizeof(float)), *dx = malloc(nx * sizeof(float));
    /* Coarse values, so windows hold ties and the first maximum must win. */
    for (size_t i = 0; i < nx; i++) x[i] = (float)(int)(frand() * 3.0f);
    for (size_t i = 0; i < ny; i++) dy[i] = frand();
    ps_dbuf_t *bx = buf_from(x, nx), *bdy = buf_from(dy, ny);
    ps_dbuf_t *by = ps_dbuf_new(c, PS_DTYPE_F32, ny);
    ps_dbuf_t *bdx = ps_dbuf_new(c, PS_DTYPE_F32, nx);
    ps_compute_fill(c, ps_dptr(bdx, 0), nx, 42.0f);
    ps_compute_maxpool(c, &g, ps_dptr(bx, 0), ps_dptr(by, 0));
    ps_compute_maxpool_backward(c, &g, ps_dptr(bx, 0), ps_dptr(bdy, 0),
                                ps_dptr(bdx, 0));
    ps_compute_download(c, y, ps_dptr(by, 0), ny);
    ps_compute_download(c, dx, ps_dptr(bdx, 0), nx);
    float *want = calloc(nx, sizeof(float));
    for (size_t img = 0; img < g.n; img++)
      for (size_t oy = 0; oy < g.oh; oy++)
        for (size_t ox = 0; ox < g.ow; ox++)
          for (size_t ci = 0; ci < g.ch; ci++) {
            size_t best = SIZE_MAX;
            for (size_t ky = 0; ky < g.kh; ky++)
              for (size_t kx = 0; kx < g.kw; kx++) {
                size_t at = ((img * g.h + oy * g.stride + ky) * g.w +
                             ox * g.stride + kx) *
                                g.ch +
                            ci;
                if (best == SIZE_MAX || x[at] > x[best]) best = at;
              }
            size_t o = ((img * g.oh + oy) * g.ow + ox) * g.ch + ci;
            ck_assert_float_eq(y[o], x[best]);
            ck_assert_float_eq(ps__maxpool_at(&g, x, o), y[o]);
            want[best] = dy[o];
          }
    for (size_t i = 0; i < nx; i++) {
      ck_assert_msg(dx[i] == want[i], "case %zu: dx[%zu] %g, want %g", t, i,
                    (double)dx[i], (double)want[i]);
      ck_assert_float_eq(ps__maxpool_backward_at(&g, x, dy, i), dx[i]);
    }

    /* And it is the gradient: of L = <dy, maxpool(x)> by central
     * differences, on values 0.01 apart so no step changes a maximum. */
    for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 7919) % nx) * 0.01f;
    ps_compute_upload(c, ps_dptr(bx, 0), x, nx);
    ps_compute_maxpool_backward(c, &g, ps_dptr(bx, 0), ps_dptr(bdy, 0),
                                ps_dptr(bdx, 0));
    ps_compute_download(c, dx, ps_dptr(bdx, 0), nx);
    for (size_t i = 0; i < nx; i += 3) {
      double l[2];
      for (int s = 0; s < 2; s++) {
        float saved = x[i];
        x[i] = saved + (s ? -1e-3f : 1e-3f);
        ps_compute_upload(c, ps_dptr(bx, 0), x, nx);
        ps_compute_maxpool(c, &g, ps_dptr(bx, 0), ps_dptr(by, 0));
        ps_compute_download(c, y, ps_dptr(by, 0), ny);
        x[i] = saved;
        l[s] = 0;
        for (size_t o = 0; o < ny; o++) l[s] += (double)dy[o] * y[o];
      }
      double fd = (l[0] - l[1]) / (double)((x[i] + 1e-3f) - (x[i] - 1e-3f));
      ck_assert_msg(fabs(fd - dx[i]) <= 1e-3,
                    "case %zu: dx[%zu] %g, finite differences %g", t, i,
                    (double)dx[i], fd);
    }
    ps_dbuf_destroy(&bx);
    ps_dbuf_destroy(&bdy);
    ps_dbuf_destroy(&by);
    ps_dbuf_destroy(&bdx);
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(want);
  }
}
END_TEST

START_TEST(test_conv_geom_refuses_bad_shapes) {
  ps_conv_geom_t g;
  ck_assert_int_eq(ps_conv_geom(&g, 1, 4, 4, 1, 5, 0, 1), PS_ERR_INVAL);
  ck_assert_int_eq(ps_conv_geom(&g, 1, 4, 4, 1, 5, 1, 1), PS_OK);
  ck_assert_uint_eq(g.oh, 2);
  ck_assert_int_eq(ps_conv_geom(&g, 0, 4, 4, 1, 3, 0, 1), PS_ERR_INVAL);
  ck_assert_int_eq(ps_conv_geom(&g, 1, 4, 4, 1, 3, 0, 0), PS_ERR_INVAL);
  ck_assert_int_eq(ps_conv_geom(&g, 1, 4, 4, 0, 3, 0, 1), PS_ERR_INVAL);
}
END_TEST

/* Overlapping pooling windows would need atomics on a GPU: refused. */
START_TEST(test_overlapping_pool_aborts) {
  ps_conv_geom_t g;
  ck_assert_int_eq(ps_conv_geom(&g, 1, 6, 6, 1, 3, 0, 2), PS_OK);
  ps_dbuf_t *x = ps_dbuf_new(c, PS_DTYPE_F32, 36);
  ps_dbuf_t *y = ps_dbuf_new(c, PS_DTYPE_F32, 4);
  ps_compute_maxpool(c, &g, ps_dptr(x, 0), ps_dptr(y, 0));
}
END_TEST

/* The softmax and argmax a GPU runs per row, against the CPU backend. */
START_TEST(test_row_elements_match_cpu) {
  enum { R = 6, C = 10 };
  float z[R * C], g[R * C], ge[C];
  uint8_t y[R];
  for (int i = 0; i < R * C; i++) z[i] = frand() * 8.0f;
  z[5 * C + 2] = z[5 * C + 7] = 50.0f; /* a tie: the first wins */
  for (int i = 0; i < R; i++) y[i] = (uint8_t)((i * 3) % C);
  ps_dbuf_t *dz = buf_from(z, R * C), *dg = ps_dbuf_new(c, PS_DTYPE_F32, R * C);
  ps_dbuf_t *dl = ps_dbuf_new(c, PS_DTYPE_U8, R);
  ps_compute_upload(c, ps_dptr(dl, 0), y, R);
  double loss = ps_compute_softmax_xent(c, ps_dptr(dz, 0), ps_dptr(dl, 0), R, C,
                                        ps_dptr(dg, 0), 0.5f);
  ps_compute_download(c, g, ps_dptr(dg, 0), R * C);
  double sum = 0;
  size_t correct = 0;
  for (int i = 0; i < R; i++) {
    sum += ps__softmax_xent_row(z + i * C, C, y[i], ge, 0.5f);
    for (int j = 0; j < C; j++)
      ck_assert_float_eq_tol(ge[j], g[i * C + j], 1e-7f);
    correct += ps__argmax_row(z + i * C, C) == y[i];
  }
  ck_assert_uint_eq(ps__argmax_row(z + 5 * C, C), 2);
  ck_assert_double_eq_tol(sum, loss, 1e-12);
  ck_assert_uint_eq(correct, ps_compute_count_correct(c, ps_dptr(dz, 0),
                                                      ps_dptr(dl, 0), R, C));
  ps_dbuf_destroy(&dz);
  ps_dbuf_destroy(&dg);
  ps_dbuf_destroy(&dl);
}
END_TEST

START_TEST(test_host_memory_and_async_download) {
  float *h = ps_compute_host_alloc(c, 10 * sizeof(float));
  ck_assert_ptr_nonnull(h);
  ps_dbuf_t *b = ps_dbuf_new(c, PS_DTYPE_F32, 10);
  ps_compute_fill(c, ps_dptr(b, 2), 8, 3.0f);
  uint64_t f = ps_compute_download_async(c, h, ps_dptr(b, 0), 10);
  ps_compute_wait(c, f);
  ck_assert_float_eq(h[1], 0.0f);
  ck_assert_float_eq(h[9], 3.0f);
  ck_assert_int_eq(ps_compute_is_async(c), 0);
  ck_assert_ptr_null(ps_compute_error(c));
  ck_assert_str_eq(ps_compute_describe(c), "cpu");
  ps_dbuf_destroy(&b);
  ps_compute_host_free(c, h);
}
END_TEST

/* --device: what each spec opens, and what a missing GPU says. */
START_TEST(test_open_device) {
  char note[256], err[256], why[256];
  int rc;
  ps_compute_opts_t o = {.threads = 1};
  static const char *const bad[] = {"gpu",     "cuda:", "cuda:x", "cuda:1024",
                                    "cuda:-1", "CPU",   ""};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_ptr_null(
        ps_compute_open(bad[i], &o, note, sizeof(note), &rc, err, sizeof(err)));
    ck_assert_int_eq(rc, PS_ERR_CONFIG);
    ck_assert_msg(strstr(err, "auto, cpu, cuda") != NULL, "%s", err);
  }
  ps_compute_t *cpu =
      ps_compute_open("cpu", &o, note, sizeof(note), &rc, err, sizeof(err));
  ck_assert_ptr_nonnull(cpu);
  ck_assert_str_eq(ps_compute_name(cpu), "cpu");
  ps_compute_destroy(&cpu);

  int n = ps_compute_cuda_devices(why, sizeof(why));
  ck_assert_int_ne(n, 0);
  ps_compute_t *a =
      ps_compute_open("auto", &o, note, sizeof(note), &rc, err, sizeof(err));
  ck_assert_ptr_nonnull(a);
  ps_compute_t *g = ps_compute_open("cuda", &o, NULL, 0, &rc, err, sizeof(err));
  if (n < 0) {
    /* No GPU here: auto takes the CPU and says why; cuda is refused with
     * the CUDA runtime's reason. */
    ck_assert_str_eq(ps_compute_name(a), "cpu");
    ck_assert_msg(strstr(note, why) != NULL, "note \"%s\", why \"%s\"", note,
                  why);
    ck_assert_ptr_null(g);
    ck_assert_int_eq(rc, PS_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err, why) != NULL, "err \"%s\", why \"%s\"", err, why);
  } else {
    ck_assert_str_eq(ps_compute_name(a), "cuda");
    ck_assert_ptr_nonnull(g);
    ps_compute_t *none =
        ps_compute_open("cuda:1023", &o, NULL, 0, &rc, err, sizeof(err));
    ck_assert_ptr_null(none);
    ck_assert_int_eq(rc, PS_ERR_UNSUPPORTED);
  }
  ps_compute_destroy(&a);
  ps_compute_destroy(&g);
}
END_TEST

/* The two halves give what softmax_xent gives (issue 18, item 5: the
 * models read the loss after queueing backward). */
START_TEST(test_softmax_xent_start_finish) {
  enum { R = 7, C = 5 };
  float z[R * C];
  uint8_t lab[R];
  for (int i = 0; i < R * C; i++) z[i] = frand() * 4.0f;
  for (int i = 0; i < R; i++) lab[i] = (uint8_t)(i % C);
  ps_dbuf_t *lz = buf_from(z, R * C);
  ps_dbuf_t *g1 = ps_dbuf_new(c, PS_DTYPE_F32, R * C);
  ps_dbuf_t *g2 = ps_dbuf_new(c, PS_DTYPE_F32, R * C);
  ps_dbuf_t *ly = ps_dbuf_new(c, PS_DTYPE_U8, R);
  ck_assert(g1 && g2 && ly);
  ps_compute_upload(c, ps_dptr(ly, 0), lab, R);
  double whole = ps_compute_softmax_xent(c, ps_dptr(lz, 0), ps_dptr(ly, 0), R,
                                         C, ps_dptr(g1, 0), 0.5f);
  ps_compute_softmax_xent_start(c, ps_dptr(lz, 0), ps_dptr(ly, 0), R, C,
                                ps_dptr(g2, 0), 0.5f);
  /* Work queued between the halves does not change the loss. */
  ps_compute_fill(c, ps_dptr(lz, 0), R * C, 0.0f);
  double halves = ps_compute_softmax_xent_finish(c);
  ck_assert(whole > 0.0);
  ck_assert_double_eq(halves, whole);
  float a[R * C], b[R * C];
  ps_compute_download(c, a, ps_dptr(g1, 0), R * C);
  ps_compute_download(c, b, ps_dptr(g2, 0), R * C);
  ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
  ps_dbuf_destroy(&lz);
  ps_dbuf_destroy(&g1);
  ps_dbuf_destroy(&g2);
  ps_dbuf_destroy(&ly);
}
END_TEST

/* A made-up machine for the detection functions. */
static ps_cuda_probe_t probe_of(int present, int devices, int driver,
                                int runtime, const char *why) {
  ps_cuda_probe_t p;
  memset(&p, 0, sizeof(p));
  p.gpu_present = present;
  if (present) snprintf(p.present_how, sizeof(p.present_how), "/dev/nvidia0");
  p.devices = devices;
  p.driver_version = driver;
  p.runtime_version = runtime;
  snprintf(p.why, sizeof(p.why), "%s", why);
  return p;
}

/* Issue 18, item 2: a GPU that is there but that CUDA cannot use is an
 * error with both versions, never a quiet "no GPU". */
START_TEST(test_present_but_unusable_gpu) {
  char msg[512], note[640], err[512];
  int rc, unusable;
  ps_compute_opts_t o = {.threads = 1, .rank_hint = -1};
  const char *why =
      "cudaGetDeviceCount: CUDA driver version is insufficient "
      "for CUDA runtime version (cudaErrorInsufficientDriver)";
  ps_cuda_probe_t old = probe_of(1, -1, 12020, 13000, why);
  ck_assert_int_eq(ps_compute_cuda_verdict(&old, msg, sizeof(msg)),
                   PS_CUDA_BROKEN);
  ck_assert_msg(strstr(msg, "/dev/nvidia0") && strstr(msg, why) &&
                    strstr(msg, "driver 12.2") && strstr(msg, "runtime 13.0") &&
                    strstr(msg, "older"),
                "%s", msg);
  /* auto trains on the CPU but flags it for an error line. */
  ps_compute_t *a = ps_compute_open_probed("auto", &o, &old, note, sizeof(note),
                                           &unusable, &rc, err, sizeof(err));
  ck_assert_ptr_nonnull(a);
  ck_assert_str_eq(ps_compute_name(a), "cpu");
  ck_assert_int_eq(unusable, 1);
  ck_assert_msg(strstr(note, "driver 12.2") && strstr(note, "runtime 13.0"),
                "%s", note);
  ps_compute_destroy(&a);
  /* cuda is refused with the same words. */
  ck_assert_ptr_null(ps_compute_open_probed("cuda:0", &o, &old, note,
                                            sizeof(note), &unusable, &rc, err,
                                            sizeof(err)));
  ck_assert_int_eq(rc, PS_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(err, "driver 12.2") && strstr(err, "present"), "%s",
                err);
  /* No driver library at all, with the node there. */
  ps_cuda_probe_t nodrv = probe_of(1, -1, 0, 13000, "no driver");
  ck_assert_int_eq(ps_compute_cuda_verdict(&nodrv, msg, sizeof(msg)),
                   PS_CUDA_BROKEN);
  ck_assert_msg(strstr(msg, "driver none") && strstr(msg, "libcuda"), "%s",
                msg);
  /* No GPU at all: the CPU, quietly right. */
  ps_cuda_probe_t none = probe_of(0, -1, 0, 13000, "no CUDA-capable device");
  ck_assert_int_eq(ps_compute_cuda_verdict(&none, msg, sizeof(msg)),
                   PS_CUDA_ABSENT);
  a = ps_compute_open_probed("auto", &o, &none, note, sizeof(note), &unusable,
                             &rc, err, sizeof(err));
  ck_assert_ptr_nonnull(a);
  ck_assert_str_eq(ps_compute_name(a), "cpu");
  ck_assert_int_eq(unusable, 0);
  ck_assert_msg(strstr(note, "no CUDA-capable device"), "%s", note);
  ps_compute_destroy(&a);
  /* Usable: the verdict says so with the versions. */
  ps_cuda_probe_t ok = probe_of(1, 2, 13000, 13000, "");
  ck_assert_int_eq(ps_compute_cuda_verdict(&ok, msg, sizeof(msg)),
                   PS_CUDA_USABLE);
  ck_assert_msg(strstr(msg, "2 CUDA devices"), "%s", msg);
#ifndef PS_HAVE_CUDA
  /* A GPU the runtime lists, in a build that cannot use it. */
  a = ps_compute_open_probed("auto", &o, &ok, note, sizeof(note), &unusable,
                             &rc, err, sizeof(err));
  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(unusable, 1);
  ps_compute_destroy(&a);
#endif
}
END_TEST

#ifdef PS_HAVE_CUDA
int ps__compute_cuda_blas(char *where, size_t wherelen);

/* Issue 18, item 1: cuBLAS is opened at run time (programs start where it
 * is missing), and where the toolkit that built them is, they find its
 * cuBLAS through their RUNPATH. Elsewhere (the GPU bundle on a machine
 * without one) the reason names the library. */
START_TEST(test_cublas_loads) {
  char where[256];
  int ok = ps__compute_cuda_blas(where, sizeof(where));
  printf("cuBLAS: %s\n", where);
  ck_assert_msg(strstr(where, "libcublas.so.") != NULL, "%s", where);
#ifdef PS_CUDA_LIBDIR
  char own[512];
  snprintf(own, sizeof(own), "%s/libcublas.so.13", PS_CUDA_LIBDIR);
  if (access(own, R_OK) == 0) ck_assert_msg(ok, "%s is there: %s", own, where);
#endif
  if (!ok) ck_assert_msg(strstr(where, "cannot load cuBLAS"), "%s", where);
}
END_TEST
#endif

/* Issue 18, item 6: the workers of one machine spread over its GPUs. */
START_TEST(test_pick_gpu) {
  char why[256];
  ck_assert_int_eq(ps_compute_pick_gpu(4, -1, "none", NULL, why, sizeof(why)),
                   0);
  ck_assert_msg(strstr(why, "no local rank"), "%s", why);
  for (long r = 0; r < 8; r++)
    ck_assert_int_eq(
        ps_compute_pick_gpu(4, r, "LOCAL_RANK", NULL, why, sizeof(why)),
        (int)(r % 4));
  ck_assert_int_eq(
      ps_compute_pick_gpu(4, 6, "LOCAL_RANK", NULL, why, sizeof(why)), 2);
  ck_assert_msg(strstr(why, "GPU 2 of 4") && strstr(why, "local rank 6") &&
                    strstr(why, "LOCAL_RANK") && strstr(why, "share"),
                "%s", why);
  /* CUDA_VISIBLE_DEVICES=3 leaves the runtime one GPU, numbered 0: every
   * local rank takes it, and the log says why. */
  ck_assert_int_eq(
      ps_compute_pick_gpu(1, 3, "SLURM_LOCALID", "3", why, sizeof(why)), 0);
  ck_assert_msg(strstr(why, "GPU 0 of 1") &&
                    strstr(why, "CUDA_VISIBLE_DEVICES=3") &&
                    !strstr(why, "share"),
                "%s", why);
  ck_assert_int_eq(ps_compute_pick_gpu(2, 1, "--rank", "2,3", why, sizeof(why)),
                   1);

  /* Where the local rank comes from. */
  static const char *const vars[] = {
      "PS_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID",
      "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) unsetenv(vars[i]);
  const char *from = NULL;
  ck_assert_int_eq(ps_compute_local_rank(-1, &from), -1);
  ck_assert_int_eq(ps_compute_local_rank(5, &from), 5);
  ck_assert_str_eq(from, "--rank");
  setenv("SLURM_LOCALID", "3", 1);
  ck_assert_int_eq(ps_compute_local_rank(5, &from), 3);
  ck_assert_str_eq(from, "SLURM_LOCALID");
  setenv("LOCAL_RANK", "x1", 1); /* not a number: skipped */
  ck_assert_int_eq(ps_compute_local_rank(5, &from), 3);
  setenv("PS_LOCAL_RANK", "1", 1);
  ck_assert_int_eq(ps_compute_local_rank(5, &from), 1);
  ck_assert_str_eq(from, "PS_LOCAL_RANK");
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) unsetenv(vars[i]);
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
  tcase_add_test(tc, test_im2col_against_direct_convolution);
  tcase_add_test(tc, test_col2im_is_adjoint);
  tcase_add_test(tc, test_maxpool_forward_backward);
  tcase_add_test(tc, test_conv_geom_refuses_bad_shapes);
  tcase_add_test_raise_signal(tc, test_overlapping_pool_aborts, SIGABRT);
  tcase_add_test(tc, test_row_elements_match_cpu);
  tcase_add_test(tc, test_host_memory_and_async_download);
  tcase_add_test(tc, test_open_device);
  tcase_add_test(tc, test_present_but_unusable_gpu);
  tcase_add_test(tc, test_pick_gpu);
  tcase_add_test(tc, test_softmax_xent_start_finish);
#ifdef PS_HAVE_CUDA
  tcase_add_test(tc, test_cublas_loads);
#endif
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
