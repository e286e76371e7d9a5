#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"
#include "worker/model/cnn.h"
#include "worker/compute/compute.h"
#include "worker/model/net.h"
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
}

static uint64_t rng = 77;
static double drand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng >> 11) / (double)(1ull << 53);
}

/* Inputs like standardized images: a third at the background value. */
static void random_batch(float *x, uint8_t *y, size_t n, size_t dim,
                         size_t classes) {
  for (size_t i = 0; i < n * dim; i++)
    x[i] = drand() < 0.33 ? -0.8f : (float)(drand() * 2.5 - 0.8);
  for (size_t i = 0; i < n; i++) y[i] = (uint8_t)(drand() * (double)classes);
}

/* A small CNN that takes every path: padding, two input channels, a block
 * without pooling, odd sizes that pooling leaves a row of, three dense
 * layers. */
static void small_opts(ps_cnn_opts_t *o) {
  ps_cnn_opts_init(o);
  o->in_h = 9;
  o->in_w = 8;
  o->in_ch = 2;
  o->nconv = 2;
  o->conv[0] = (ps_cnn_conv_t){.channels = 3, .kernel = 3, .pad = 1, .pool = 2};
  o->conv[1] = (ps_cnn_conv_t){.channels = 4, .kernel = 2, .pad = 0, .pool = 1};
  o->nfc = 3;
  o->fc[0] = 12;
  o->fc[1] = 10;
  o->fc[2] = 5;
  o->seed = 3;
}

static ps_cnn_t *new_cnn(const ps_cnn_opts_t *o) {
  char err[256] = "";
  ps_cnn_t *m = ps_cnn_new(c, o, err, sizeof(err));
  ck_assert_msg(m != NULL, "%s", err);
  return m;
}

/* The loss of the CNN with parameters w, in double, from the definition: a
 * direct convolution (no im2col), ReLU, max pooling, dense layers. */
static double ref_loss(const ps_cnn_opts_t *o, const ps_model_t *spec,
                       const double *w, const float *x, const uint8_t *y,
                       size_t n) {
  size_t cap = (size_t)o->in_h * o->in_w * 64 * 4;
  double *a = malloc(cap * sizeof(double)), *b = malloc(cap * sizeof(double));
  double total = 0;
  for (size_t s = 0; s < n; s++) {
    size_t h = o->in_h, wd = o->in_w, ch = o->in_ch;
    for (size_t i = 0; i < h * wd * ch; i++) a[i] = x[s * h * wd * ch + i];
    size_t t = 0;
    for (size_t l = 0; l < o->nconv; l++, t += 2) {
      const ps_cnn_conv_t *cv = &o->conv[l];
      const double *W = w + spec->tensors[t].offset;
      const double *bias = w + spec->tensors[t + 1].offset;
      size_t k = cv->kernel, pad = cv->pad, co = cv->channels;
      size_t oh = h + 2 * pad - k + 1, ow = wd + 2 * pad - k + 1;
      for (size_t oy = 0; oy < oh; oy++)
        for (size_t ox = 0; ox < ow; ox++)
          for (size_t j = 0; j < co; j++) {
            double v = bias[j];
            for (size_t ky = 0; ky < k; ky++)
              for (size_t kx = 0; kx < k; kx++) {
                long iy = (long)(oy + ky) - (long)pad;
                long ix = (long)(ox + kx) - (long)pad;
                if (iy < 0 || ix < 0 || iy >= (long)h || ix >= (long)wd)
                  continue;
                for (size_t ci = 0; ci < ch; ci++)
                  v += a[((size_t)iy * wd + (size_t)ix) * ch + ci] *
                       W[((ky * k + kx) * ch + ci) * co + j];
              }
            b[(oy * ow + ox) * co + j] = fmax(v, 0.0);
          }
      h = oh;
      wd = ow;
      ch = co;
      if (cv->pool > 1) {
        size_t p = cv->pool, ph = h / p, pw = wd / p;
        for (size_t py = 0; py < ph; py++)
          for (size_t px = 0; px < pw; px++)
            for (size_t j = 0; j < ch; j++) {
              double m = -INFINITY;
              for (size_t dy = 0; dy < p; dy++)
                for (size_t dx = 0; dx < p; dx++)
                  m = fmax(m, b[((py * p + dy) * wd + px * p + dx) * ch + j]);
              a[(py * pw + px) * ch + j] = m;
            }
        h = ph;
        wd = pw;
      } else {
        memcpy(a, b, h * wd * ch * sizeof(double));
      }
    }
    size_t in = h * wd * ch;
    for (size_t l = 0; l < o->nfc; l++, t += 2) {
      const double *W = w + spec->tensors[t].offset;
      const double *bias = w + spec->tensors[t + 1].offset;
      size_t out = o->fc[l];
      for (size_t j = 0; j < out; j++) {
        double v = bias[j];
        for (size_t i = 0; i < in; i++) v += a[i] * W[i * out + j];
        b[j] = l + 1 < o->nfc ? fmax(v, 0.0) : v;
      }
      memcpy(a, b, out * sizeof(double));
      in = out;
    }
    double mx = a[0];
    for (size_t j = 1; j < in; j++) mx = fmax(mx, a[j]);
    double sum = 0;
    for (size_t j = 0; j < in; j++) sum += exp(a[j] - mx);
    total += log(sum) - (a[y[s]] - mx);
  }
  free(a);
  free(b);
  return total / (double)n;
}

START_TEST(test_default_spec) {
  ps_cnn_opts_t o;
  ps_cnn_opts_init(&o);
  o.seed = 9;
  o.max_batch = 4;
  ps_cnn_t *m = new_cnn(&o);
  const ps_model_t *spec = ps_cnn_model(m);
  static const char *const names[] = {
      "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
      "fc1.weight",   "fc1.bias",   "fc2.weight",   "fc2.bias"};
  static const uint64_t lengths[] = {9 * 32,           32,  9 * 32 * 64, 64,
                                     7 * 7 * 64 * 128, 128, 128 * 10,    10};
  ck_assert_uint_eq(spec->ntensors, 8);
  uint64_t off = 0;
  for (int i = 0; i < 8; i++) {
    ck_assert_str_eq(spec->tensors[i].name, names[i]);
    ck_assert_uint_eq(spec->tensors[i].offset, off);
    ck_assert_uint_eq(spec->tensors[i].length, lengths[i]);
    ck_assert_int_eq(spec->tensors[i].init,
                     i % 2 ? PS__INIT__INIT_ZERO : PS__INIT__INIT_UNIFORM);
    off += lengths[i];
  }
  ck_assert_uint_eq(spec->total, 421642);
  ck_assert_uint_eq(ps_cnn_num_params(m), 421642);
  ck_assert_uint_eq(ps_cnn_input_dim(m), 784);
  ck_assert_uint_eq(ps_cnn_num_classes(m), 10);
  /* Glorot bounds; a convolution's fans count its window. */
  ck_assert_float_eq_tol(spec->tensors[0].init_scale,
                         (float)sqrt(6.0 / (9 + 9 * 32)), 1e-7f);
  ck_assert_float_eq_tol(spec->tensors[2].init_scale,
                         (float)sqrt(6.0 / (9 * 32 + 9 * 64)), 1e-7f);
  ck_assert_float_eq_tol(spec->tensors[4].init_scale,
                         (float)sqrt(6.0 / (3136 + 128)), 1e-7f);
  ck_assert_float_eq_tol(spec->tensors[6].init_scale,
                         (float)sqrt(6.0 / (128 + 10)), 1e-7f);
  ck_assert_uint_eq(spec->seed, 9);

  /* The initial weights are the ones a server fills its slices with. */
  float *w = malloc(421642 * sizeof(float)), *ref = malloc(421642 * 4);
  ps_cnn_init_params(m, w);
  for (int i = 0; i < 8; i++) {
    const ps_tensor_spec_t *t = &spec->tensors[i];
    ps_init_fill(ref + t->offset, t->offset, t->length, t->init, t->init_scale,
                 9);
  }
  ck_assert_int_eq(memcmp(w, ref, 421642 * sizeof(float)), 0);
  ps_cnn_set_params(m, w);
  memset(ref, 0, 421642 * sizeof(float));
  ps_cnn_get_params(m, ref);
  ck_assert_int_eq(memcmp(w, ref, 421642 * sizeof(float)), 0);
  free(w);
  free(ref);
  ps_cnn_destroy(&m);
  ck_assert_ptr_null(m);
}
END_TEST

START_TEST(test_bad_options) {
  ps_cnn_opts_t o;
  char err[256];
  ps_cnn_opts_init(&o);
  o.nconv = 0;
  ck_assert_ptr_null(ps_cnn_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "convolutions"));
  ps_cnn_opts_init(&o);
  o.conv[1].kernel = 17; /* 14x14, padded to 16x16, after the first block */
  ck_assert_ptr_null(ps_cnn_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "conv2"));
  ps_cnn_opts_init(&o);
  o.conv[1].pool = 15; /* 14x14 after the second convolution */
  ck_assert_ptr_null(ps_cnn_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "pooling"));
  ps_cnn_opts_init(&o);
  o.momentum = 1.0f;
  ck_assert_ptr_null(ps_cnn_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "momentum"));
}
END_TEST

/* Backpropagation against central differences of the double-precision
 * reference loss, for a sample of parameters of every tensor. */
static void check_gradient(const ps_cnn_opts_t *o, size_t n, int samples) {
  ps_cnn_t *m = new_cnn(o);
  const ps_model_t *spec = ps_cnn_model(m);
  size_t p = ps_cnn_num_params(m), dim = ps_cnn_input_dim(m);
  size_t classes = ps_cnn_num_classes(m);
  float *w = malloc(p * sizeof(float)), *g = malloc(p * sizeof(float));
  double *wd = malloc(p * sizeof(double));
  float *x = malloc(n * dim * sizeof(float));
  uint8_t *y = malloc(n);
  ps_cnn_init_params(m, w);
  /* Positive biases, so that most ReLUs pass and gradients flow through
   * every path. */
  for (size_t t = 1; t < spec->ntensors; t += 2)
    for (uint64_t i = 0; i < spec->tensors[t].length; i++)
      w[spec->tensors[t].offset + i] = (float)drand() * 0.2f;
  for (size_t i = 0; i < p; i++) wd[i] = w[i];
  random_batch(x, y, n, dim, classes);
  ps_cnn_set_params(m, w);
  double loss = ps_cnn_gradient(m, x, y, n, g);

  /* The forward pass itself: im2col + gemm against direct convolution. */
  double ref = ref_loss(o, spec, wd, x, y, n);
  ck_assert_double_eq_tol(loss, ref, 1e-5 * fabs(ref) + 1e-6);
  ck_assert_double_eq_tol(ps_cnn_loss(m, x, y, n), loss, 1e-12);

  /* Small steps: a max-pool or ReLU kink nearer than h would make the
   * difference quotient meaningless. */
  const double h = 1e-6;
  for (size_t t = 0; t < spec->ntensors; t++) {
    const ps_tensor_spec_t *ts = &spec->tensors[t];
    int nonzero = 0;
    for (int s = 0; s < samples; s++) {
      /* Half the keys uniform, half among those backprop says are not 0:
       * behind ReLUs and pooling most gradients of a small batch are 0,
       * and comparing zeros proves little. */
      uint64_t k = ts->offset + (uint64_t)(drand() * (double)ts->length);
      for (int tries = 0; s % 2 && fabsf(g[k]) <= 1e-6f && tries < 1000;
           tries++)
        k = ts->offset + (uint64_t)(drand() * (double)ts->length);
      double saved = wd[k];
      wd[k] = saved + h;
      double lp = ref_loss(o, spec, wd, x, y, n);
      wd[k] = saved - h;
      double lm = ref_loss(o, spec, wd, x, y, n);
      wd[k] = saved;
      double fd = (lp - lm) / (2 * h);
      nonzero += fabs(fd) > 1e-6;
      ck_assert_msg(fabs(g[k] - fd) <= 2e-3 * fabs(fd) + 2e-6,
                    "%s[%llu]: backprop %.9g, finite differences %.9g",
                    ts->name, (unsigned long long)(k - ts->offset),
                    (double)g[k], fd);
    }
    /* A test that only compares zeros would prove nothing. */
    ck_assert_msg(nonzero >= samples / 3, "%s: only %d non-zero gradients",
                  ts->name, nonzero);
  }
  free(w);
  free(g);
  free(wd);
  free(x);
  free(y);
  ps_cnn_destroy(&m);
}

START_TEST(test_gradient_finite_differences_small) {
  ps_cnn_opts_t o;
  small_opts(&o);
  o.max_batch = 4;
  check_gradient(&o, 4, 16);
}
END_TEST

START_TEST(test_gradient_finite_differences_default) {
  ps_cnn_opts_t o;
  ps_cnn_opts_init(&o);
  o.max_batch = 2;
  check_gradient(&o, 2, 10);
}
END_TEST

/* The layer-by-layer gradient: the same values as the whole one, every key
 * given exactly once, last layer first, each range a layer's weight and
 * bias. */
START_TEST(test_layered_gradient) {
  ps_cnn_opts_t o;
  small_opts(&o);
  o.max_batch = 4;
  ps_cnn_t *m = new_cnn(&o);
  size_t p = ps_cnn_num_params(m), dim = ps_cnn_input_dim(m);
  const ps_model_t *spec = ps_cnn_model(m);
  float *w = malloc(p * sizeof(float)), *g = malloc(p * sizeof(float));
  float *gl = ps_compute_host_alloc(c, p * sizeof(float));
  float x[4 * 9 * 8 * 2];
  uint8_t y[4];
  ps_cnn_init_params(m, w);
  ps_cnn_set_params(m, w);
  random_batch(x, y, 4, dim, 5);
  double l1 = ps_cnn_gradient(m, x, y, 4, g);
  for (size_t i = 0; i < p; i++) gl[i] = NAN;
  double l2 = ps_cnn_gradient_begin(m, x, y, 4, gl);
  ck_assert_double_eq(l1, l2);
  size_t begin, count, expect_end = p, groups = 0;
  while (ps_cnn_gradient_next(m, &begin, &count)) {
    ck_assert_uint_eq(begin + count, expect_end);
    size_t t = spec->ntensors - 2 - 2 * groups;
    ck_assert_uint_eq(begin, spec->tensors[t].offset);
    ck_assert_uint_eq(count,
                      spec->tensors[t].length + spec->tensors[t + 1].length);
    ck_assert_int_eq(memcmp(gl + begin, g + begin, count * sizeof(float)), 0);
    expect_end = begin;
    groups++;
  }
  ck_assert_uint_eq(expect_end, 0);
  ck_assert_uint_eq(groups, spec->ntensors / 2);
  ck_assert_int_eq(ps_cnn_gradient_next(m, &begin, &count), 0);
  ps_compute_host_free(c, gl);
  free(w);
  free(g);
  ps_cnn_destroy(&m);
}
END_TEST

/* The gradient is the batch mean (what makes W workers of batch B equal
 * one process of batch W*B). */
START_TEST(test_gradient_is_batch_mean) {
  enum { N = 8 };
  ps_cnn_opts_t o;
  ps_cnn_opts_init(&o);
  o.max_batch = 2 * N;
  ps_cnn_t *m = new_cnn(&o);
  size_t p = ps_cnn_num_params(m);
  float *w = malloc(p * sizeof(float)), *g = malloc(p * sizeof(float));
  float *g1 = malloc(p * sizeof(float)), *g2 = malloc(p * sizeof(float));
  static float x[2 * N * 784];
  uint8_t y[2 * N];
  ps_cnn_init_params(m, w);
  ps_cnn_set_params(m, w);
  random_batch(x, y, 2 * N, 784, 10);
  double l = ps_cnn_gradient(m, x, y, 2 * N, g);
  double l1 = ps_cnn_gradient(m, x, y, N, g1);
  double l2 = ps_cnn_gradient(m, x + N * 784, y + N, N, g2);
  ck_assert_double_eq_tol(l, (l1 + l2) / 2, 1e-6);
  double maxg = 0;
  for (size_t i = 0; i < p; i++) maxg = fmax(maxg, fabs(g[i]));
  ck_assert_double_gt(maxg, 1e-3);
  for (size_t i = 0; i < p; i++)
    ck_assert_msg(fabsf(g[i] - (g1[i] + g2[i]) / 2) <= 1e-5f * (float)maxg,
                  "key %zu: %g vs %g", i, (double)g[i],
                  (double)((g1[i] + g2[i]) / 2));
  free(w);
  free(g);
  free(g1);
  free(g2);
  ps_cnn_destroy(&m);
}
END_TEST

START_TEST(test_sgd_decreases_loss) {
  enum { N = 16, STEPS = 40 };
  ps_cnn_opts_t o;
  ps_cnn_opts_init(&o);
  o.max_batch = N;
  ps_cnn_t *m = new_cnn(&o);
  size_t p = ps_cnn_num_params(m);
  float *w = malloc(p * sizeof(float)), *v = calloc(p, sizeof(float));
  float *g = malloc(p * sizeof(float));
  static float x[N * 784];
  uint8_t y[N];
  ps_cnn_init_params(m, w);
  random_batch(x, y, N, 784, 10);
  double first = 0;
  for (int s = 0; s < STEPS; s++) {
    ps_cnn_set_params(m, w);
    double l = ps_cnn_gradient(m, x, y, N, g);
    if (s == 0) first = l;
    ps_apply_sgd(w, v, g, p, 0.01f, 0.9f, 1.0f);
  }
  ps_cnn_set_params(m, w);
  double last = ps_cnn_loss(m, x, y, N);
  /* Random labels start near log(10) and a fixed batch is memorised. */
  ck_assert_double_gt(first, 1.5);
  ck_assert_double_lt(last, first * 0.25);
  free(w);
  free(v);
  free(g);
  ps_cnn_destroy(&m);
}
END_TEST

START_TEST(test_evaluate_in_batches) {
  enum { N = 7 };
  ps_cnn_opts_t o;
  small_opts(&o);
  o.max_batch = 3; /* batches of 3, 3, 1 */
  ps_cnn_t *small = new_cnn(&o);
  o.max_batch = N;
  ps_cnn_t *big = new_cnn(&o);
  size_t p = ps_cnn_num_params(small), dim = ps_cnn_input_dim(small);
  float *w = malloc(p * sizeof(float));
  ps_cnn_init_params(small, w);
  ps_cnn_set_params(small, w);
  ps_cnn_set_params(big, w);
  ps_dataset_t ds = {N, dim, 9, 8, malloc(N * dim * sizeof(float)), malloc(N)};
  random_batch(ds.x, ds.y, N, dim, 5);
  double loss, acc;
  ck_assert_int_eq(ps_cnn_evaluate(small, &ds, &loss, &acc), PS_OK);
  ck_assert_double_eq_tol(loss, ps_cnn_loss(big, ds.x, ds.y, N), 1e-6);
  /* Relabel each example with its lowest-loss class: all predictions are
   * then right. */
  for (size_t i = 0; i < N; i++) {
    double lowest = INFINITY;
    uint8_t arg = 0;
    for (uint8_t k = 0; k < 5; k++) {
      ds.y[i] = k;
      double l = ps_cnn_loss(big, ds.x + i * dim, ds.y + i, 1);
      if (l < lowest) {
        lowest = l;
        arg = k;
      }
    }
    ds.y[i] = arg;
  }
  ck_assert_int_eq(ps_cnn_evaluate(small, &ds, &loss, &acc), PS_OK);
  ck_assert_double_eq(acc, 1.0);
  ds.dim = 100;
  ck_assert_int_eq(ps_cnn_evaluate(small, &ds, &loss, &acc), PS_ERR_INVAL);
  free(w);
  ps_dataset_clear(&ds);
  ps_cnn_destroy(&small);
  ps_cnn_destroy(&big);
}
END_TEST

/* The trainer's view: ps_net gives the CNN's and the MLP's own answers. */
START_TEST(test_net_dispatch) {
  char err[256];
  ps_net_opts_t no = {.kind = PS_NET_CNN,
                      .in_h = 28,
                      .in_w = 28,
                      .learning_rate = 0.01f,
                      .momentum = 0.9f,
                      .seed = 1,
                      .max_batch = 4};
  ps_net_t *n = ps_net_new(c, &no, err, sizeof(err));
  ck_assert_msg(n != NULL, "%s", err);
  ck_assert_int_eq(ps_net_kind(n), PS_NET_CNN);
  ck_assert_str_eq(ps_net_kind_name(PS_NET_CNN), "cnn");
  ck_assert_uint_eq(ps_net_num_params(n), 421642);
  ck_assert_str_eq(ps_net_model(n)->tensors[0].name, "conv1.weight");
  ps_net_destroy(&n);
  ck_assert_ptr_null(n);
  no.kind = PS_NET_MLP;
  n = ps_net_new(c, &no, err, sizeof(err));
  ck_assert_msg(n != NULL, "%s", err);
  ck_assert_uint_eq(ps_net_num_params(n), 235146);
  ps_net_destroy(&n);
  no.kind = (ps_net_kind_t)7;
  ck_assert_ptr_null(ps_net_new(c, &no, err, sizeof(err)));
}
END_TEST

int main(void) {
  Suite *s = suite_create("cnn");
  TCase *tc = tcase_create("cnn");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_default_spec);
  tcase_add_test(tc, test_bad_options);
  tcase_add_test(tc, test_gradient_finite_differences_small);
  tcase_add_test(tc, test_gradient_finite_differences_default);
  tcase_add_test(tc, test_layered_gradient);
  tcase_add_test(tc, test_gradient_is_batch_mean);
  tcase_add_test(tc, test_sgd_decreases_loss);
  tcase_add_test(tc, test_evaluate_in_batches);
  tcase_add_test(tc, test_net_dispatch);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
