#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"
#include "worker/compute/compute.h"
#include "worker/model/mlp.h"
#include "worker/trainer.h"
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

static uint64_t rng = 99;
static double drand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng >> 11) / (double)(1ull << 53);
}

static ps_mlp_t *new_mlp(size_t max_batch) {
  ps_mlp_opts_t o;
  ps_mlp_opts_init(&o);
  o.max_batch = max_batch;
  o.seed = 5;
  char err[256] = "";
  ps_mlp_t *m = ps_mlp_new(c, &o, err, sizeof(err));
  ck_assert_msg(m != NULL, "%s", err);
  return m;
}

/* Inputs like images: mostly in [0, 1], a third of them exactly 0. */
static void random_batch(float *x, uint8_t *y, size_t n, size_t dim) {
  for (size_t i = 0; i < n * dim; i++)
    x[i] = drand() < 0.33 ? 0.0f : (float)drand();
  for (size_t i = 0; i < n; i++) y[i] = (uint8_t)(drand() * 10);
}

/* The loss of the model with parameters w, computed in double from the
 * definition, independent of the compute backend. */
static double ref_loss(const ps_model_t *spec, const double *w, const float *x,
                       const uint8_t *y, size_t n) {
  const size_t sizes[] = {784, 256, 128, 10};
  static double a[2][784], z[256];
  double total = 0;
  for (size_t s = 0; s < n; s++) {
    for (size_t i = 0; i < 784; i++) a[0][i] = x[s * 784 + i];
    int cur = 0;
    for (size_t l = 0; l < 3; l++) {
      const double *W = w + spec->tensors[2 * l].offset;
      const double *b = w + spec->tensors[2 * l + 1].offset;
      size_t in = sizes[l], out = sizes[l + 1];
      for (size_t j = 0; j < out; j++) {
        double v = b[j];
        for (size_t i = 0; i < in; i++) v += a[cur][i] * W[i * out + j];
        z[j] = l < 2 ? fmax(v, 0.0) : v;
      }
      memcpy(a[cur ^ 1], z, out * sizeof(double));
      cur ^= 1;
    }
    double mx = a[cur][0];
    for (int j = 1; j < 10; j++) mx = fmax(mx, a[cur][j]);
    double sum = 0;
    for (int j = 0; j < 10; j++) sum += exp(a[cur][j] - mx);
    total += log(sum) - (a[cur][y[s]] - mx);
  }
  return total / (double)n;
}

START_TEST(test_model_spec) {
  ps_mlp_t *m = new_mlp(8);
  const ps_model_t *spec = ps_mlp_model(m);
  const char *names[] = {"fc1.weight", "fc1.bias",   "fc2.weight",
                         "fc2.bias",   "fc3.weight", "fc3.bias"};
  const uint64_t lengths[] = {784 * 256, 256, 256 * 128, 128, 128 * 10, 10};
  ck_assert_uint_eq(spec->ntensors, 6);
  uint64_t off = 0;
  for (int i = 0; i < 6; i++) {
    ck_assert_str_eq(spec->tensors[i].name, names[i]);
    ck_assert_uint_eq(spec->tensors[i].offset, off);
    ck_assert_uint_eq(spec->tensors[i].length, lengths[i]);
    ck_assert_int_eq(spec->tensors[i].init,
                     i % 2 ? PS__INIT__INIT_ZERO : PS__INIT__INIT_UNIFORM);
    off += lengths[i];
  }
  ck_assert_uint_eq(spec->total, 235146);
  ck_assert_uint_eq(ps_mlp_num_params(m), 235146);
  ck_assert_float_eq_tol(spec->tensors[0].init_scale,
                         (float)sqrt(6.0 / (784 + 256)), 1e-7f);
  ck_assert_int_eq(spec->optimizer, PS__OPTIMIZER__OPT_SGD);
  ck_assert_uint_eq(spec->seed, 5);
  ck_assert_float_gt(spec->learning_rate, 0.0f);

  /* The initial weights are the ones a server fills its slices with. */
  float *w = malloc(235146 * sizeof(float));
  float *ref = malloc(235146 * sizeof(float));
  ps_mlp_init_params(m, w);
  for (int i = 0; i < 6; i++) {
    const ps_tensor_spec_t *t = &spec->tensors[i];
    ps_init_fill(ref + t->offset, t->offset, t->length, t->init, t->init_scale,
                 5);
  }
  ck_assert_int_eq(memcmp(w, ref, 235146 * sizeof(float)), 0);
  for (uint64_t i = 0; i < lengths[0]; i++)
    ck_assert(fabsf(w[i]) < spec->tensors[0].init_scale);
  for (uint64_t i = 0; i < 256; i++) ck_assert_float_eq(w[lengths[0] + i], 0);
  /* set and get round-trip. */
  ps_mlp_set_params(m, w);
  memset(ref, 0, 235146 * sizeof(float));
  ps_mlp_get_params(m, ref);
  ck_assert_int_eq(memcmp(w, ref, 235146 * sizeof(float)), 0);
  free(w);
  free(ref);
  ps_mlp_destroy(&m);
  ck_assert_ptr_null(m);
}
END_TEST

START_TEST(test_bad_options) {
  ps_mlp_opts_t o;
  char err[256];
  ps_mlp_opts_init(&o);
  o.nsizes = 1;
  ck_assert_ptr_null(ps_mlp_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "layer sizes"));
  ps_mlp_opts_init(&o);
  o.sizes[2] = 0;
  ck_assert_ptr_null(ps_mlp_new(c, &o, err, sizeof(err)));
  ps_mlp_opts_init(&o);
  o.momentum = 1.0f;
  ck_assert_ptr_null(ps_mlp_new(c, &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "momentum"));
}
END_TEST

/* Backpropagation against central differences of the double-precision
 * reference loss, for a sample of parameters of every tensor. */
START_TEST(test_gradient_finite_differences) {
  enum { N = 4, P = 235146, SAMPLES = 24 };
  ps_mlp_t *m = new_mlp(N);
  const ps_model_t *spec = ps_mlp_model(m);
  float *w = malloc(P * sizeof(float)), *g = malloc(P * sizeof(float));
  double *wd = malloc(P * sizeof(double));
  ps_mlp_init_params(m, w);
  /* Non-zero biases, so their gradients flow through every path. */
  for (int t = 1; t < 6; t += 2)
    for (uint64_t i = 0; i < spec->tensors[t].length; i++)
      w[spec->tensors[t].offset + i] = (float)(drand() - 0.5) * 0.2f;
  for (int i = 0; i < P; i++) wd[i] = w[i];
  float x[N * 784];
  uint8_t y[N];
  random_batch(x, y, N, 784);
  ps_mlp_set_params(m, w);
  double loss = ps_mlp_gradient(m, x, y, N, g);

  /* The forward pass itself: float backend against double reference. */
  double ref = ref_loss(spec, wd, x, y, N);
  ck_assert_double_eq_tol(loss, ref, 1e-5 * fabs(ref) + 1e-6);
  ck_assert_double_eq_tol(ps_mlp_loss(m, x, y, N), loss, 1e-12);

  const double h = 1e-5;
  for (int t = 0; t < 6; t++) {
    const ps_tensor_spec_t *ts = &spec->tensors[t];
    int nonzero = 0;
    for (int s = 0; s < SAMPLES; s++) {
      uint64_t k = ts->offset + (uint64_t)(drand() * (double)ts->length);
      double saved = wd[k];
      wd[k] = saved + h;
      double lp = ref_loss(spec, wd, x, y, N);
      wd[k] = saved - h;
      double lm = ref_loss(spec, wd, x, y, N);
      wd[k] = saved;
      double fd = (lp - lm) / (2 * h);
      nonzero += fabs(fd) > 1e-6;
      ck_assert_msg(fabs(g[k] - fd) <= 2e-3 * fabs(fd) + 2e-6,
                    "%s[%llu]: backprop %.9g, finite differences %.9g",
                    ts->name, (unsigned long long)(k - ts->offset),
                    (double)g[k], fd);
    }
    /* A test that only compares zeros would prove nothing. */
    ck_assert_msg(nonzero >= SAMPLES / 3, "%s: only %d non-zero gradients",
                  ts->name, nonzero);
  }
  free(w);
  free(g);
  free(wd);
  ps_mlp_destroy(&m);
}
END_TEST

/* The gradient is the batch mean: that of 2n examples equals the mean of
 * those of its halves, which is what makes W workers of batch B equal one
 * process of batch W*B. */
START_TEST(test_gradient_is_batch_mean) {
  enum { N = 16, P = 235146 };
  ps_mlp_t *m = new_mlp(2 * N);
  float *w = malloc(P * sizeof(float));
  float *g = malloc(P * sizeof(float)), *g1 = malloc(P * sizeof(float)),
        *g2 = malloc(P * sizeof(float));
  ps_mlp_init_params(m, w);
  ps_mlp_set_params(m, w);
  static float x[2 * N * 784];
  uint8_t y[2 * N];
  random_batch(x, y, 2 * N, 784);
  double l = ps_mlp_gradient(m, x, y, 2 * N, g);
  double l1 = ps_mlp_gradient(m, x, y, N, g1);
  double l2 = ps_mlp_gradient(m, x + N * 784, y + N, N, g2);
  ck_assert_double_eq_tol(l, (l1 + l2) / 2, 1e-6);
  double maxg = 0;
  for (int i = 0; i < P; i++) maxg = fmax(maxg, fabs(g[i]));
  ck_assert_double_gt(maxg, 1e-3);
  for (int i = 0; i < P; i++)
    ck_assert_msg(fabsf(g[i] - (g1[i] + g2[i]) / 2) <= 1e-6f * (float)maxg,
                  "key %d: %g vs %g", i, (double)g[i],
                  (double)((g1[i] + g2[i]) / 2));
  free(w);
  free(g);
  free(g1);
  free(g2);
  ps_mlp_destroy(&m);
}
END_TEST

/* The layer-by-layer gradient: the bits of the whole one, every key given
 * once, last layer first, each range a layer's weight and bias. */
START_TEST(test_layered_gradient) {
  enum { N = 8, P = 235146 };
  ps_mlp_t *m = new_mlp(N);
  const ps_model_t *spec = ps_mlp_model(m);
  float *w = malloc(P * sizeof(float)), *g = malloc(P * sizeof(float));
  float *gl = ps_compute_host_alloc(c, P * sizeof(float));
  static float x[N * 784];
  uint8_t y[N];
  ps_mlp_init_params(m, w);
  ps_mlp_set_params(m, w);
  random_batch(x, y, N, 784);
  double l1 = ps_mlp_gradient(m, x, y, N, g);
  for (int i = 0; i < P; i++) gl[i] = NAN;
  ck_assert_double_eq(ps_mlp_gradient_begin(m, x, y, N, gl), l1);
  size_t begin, count, end = P, layer = 3;
  while (ps_mlp_gradient_next(m, &begin, &count)) {
    layer--;
    ck_assert_uint_eq(begin, spec->tensors[2 * layer].offset);
    ck_assert_uint_eq(begin + count, end);
    end = begin;
  }
  ck_assert_uint_eq(layer, 0);
  ck_assert_uint_eq(end, 0);
  ck_assert_int_eq(memcmp(gl, g, P * sizeof(float)), 0);
  ps_compute_host_free(c, gl);
  free(w);
  free(g);
  ps_mlp_destroy(&m);
}
END_TEST

START_TEST(test_sgd_decreases_loss) {
  enum { N = 32, P = 235146, STEPS = 30 };
  ps_mlp_t *m = new_mlp(N);
  float *w = malloc(P * sizeof(float)), *v = calloc(P, sizeof(float)),
        *g = malloc(P * sizeof(float));
  ps_mlp_init_params(m, w);
  static float x[N * 784];
  uint8_t y[N];
  random_batch(x, y, N, 784);
  double first = 0, prev = INFINITY, last = 0;
  int rises = 0;
  for (int s = 0; s < STEPS; s++) {
    ps_mlp_set_params(m, w);
    last = ps_mlp_gradient(m, x, y, N, g);
    if (s == 0) first = last;
    rises += last > prev;
    prev = last;
    ps_apply_sgd(w, v, g, P, 0.02f, 0.9f, 1.0f);
  }
  ps_mlp_set_params(m, w);
  last = ps_mlp_loss(m, x, y, N);
  /* Random labels start near log(10) and a fixed batch is memorised. */
  ck_assert_double_gt(first, 1.5);
  ck_assert_double_lt(last, first * 0.25);
  ck_assert_int_le(rises, STEPS / 4);
  free(w);
  free(v);
  free(g);
  ps_mlp_destroy(&m);
}
END_TEST

START_TEST(test_evaluate_in_batches) {
  enum { N = 7, P = 235146 };
  ps_mlp_t *small = new_mlp(3); /* batches of 3, 3, 1 */
  ps_mlp_t *big = new_mlp(N);
  float *w = malloc(P * sizeof(float));
  ps_mlp_init_params(small, w);
  ps_mlp_set_params(small, w);
  ps_mlp_set_params(big, w);
  ps_dataset_t ds = {N,        784, 28, 28, malloc(N * 784 * sizeof(float)),
                     malloc(N)};
  random_batch(ds.x, ds.y, N, 784);
  double loss, acc;
  ck_assert_int_eq(ps_mlp_evaluate(small, &ds, &loss, &acc), PS_OK);
  ck_assert_double_eq_tol(loss, ps_mlp_loss(big, ds.x, ds.y, N), 1e-6);
  ck_assert(acc >= 0.0 && acc <= 1.0);
  /* Accuracy is the share of rows whose argmax is the label. Relabel each
   * example with the class of lowest loss (the argmax of its logits): then
   * every prediction is right. */
  for (size_t i = 0; i < N; i++) {
    double lowest = INFINITY;
    uint8_t arg = 0;
    for (uint8_t k = 0; k < 10; k++) {
      ds.y[i] = k;
      double l = ps_mlp_loss(big, ds.x + i * 784, ds.y + i, 1);
      if (l < lowest) {
        lowest = l;
        arg = k;
      }
    }
    ds.y[i] = arg;
  }
  ck_assert_int_eq(ps_mlp_evaluate(small, &ds, &loss, &acc), PS_OK);
  ck_assert_double_eq(acc, 1.0);
  ds.dim = 100;
  ck_assert_int_eq(ps_mlp_evaluate(small, &ds, &loss, &acc), PS_ERR_INVAL);
  free(w);
  ps_dataset_clear(&ds);
  ps_mlp_destroy(&small);
  ps_mlp_destroy(&big);
}
END_TEST

/* The data order every worker derives on its own. */
START_TEST(test_permutation) {
  enum { N = 1000 };
  static uint32_t a[N], b[N], c2[N], d[N];
  ps_trainer_permutation(a, N, 1, 0);
  ps_trainer_permutation(b, N, 1, 0);
  ps_trainer_permutation(c2, N, 1, 1);
  ps_trainer_permutation(d, N, 2, 0);
  ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
  static int seen[N];
  int fixed = 0, same_c = 0, same_d = 0;
  for (int i = 0; i < N; i++) {
    ck_assert_uint_lt(a[i], N);
    seen[a[i]]++;
    fixed += a[i] == (uint32_t)i;
    same_c += a[i] == c2[i];
    same_d += a[i] == d[i];
  }
  for (int i = 0; i < N; i++) ck_assert_int_eq(seen[i], 1);
  /* A random permutation has about one fixed point. */
  ck_assert_int_lt(fixed, 10);
  ck_assert_int_lt(same_c, 10);
  ck_assert_int_lt(same_d, 10);
}
END_TEST

START_TEST(test_lr_factor) {
  ck_assert_float_eq(ps_trainer_lr_factor(PS_LR_CONSTANT, 500, 1000), 1.0f);
  ck_assert_float_eq(ps_trainer_lr_factor(PS_LR_COSINE, 0, 1000), 1.0f);
  ck_assert_float_eq_tol(ps_trainer_lr_factor(PS_LR_COSINE, 500, 1000), 0.5f,
                         1e-7f);
  ck_assert_float_eq_tol(ps_trainer_lr_factor(PS_LR_COSINE, 1000, 1000), 0.0f,
                         1e-7f);
  float prev = 2.0f;
  for (uint64_t s = 0; s <= 1000; s += 50) {
    float f = ps_trainer_lr_factor(PS_LR_COSINE, s, 1000);
    ck_assert_float_lt(f, prev);
    prev = f;
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("mlp");
  TCase *tc = tcase_create("mlp");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_model_spec);
  tcase_add_test(tc, test_bad_options);
  tcase_add_test(tc, test_gradient_finite_differences);
  tcase_add_test(tc, test_gradient_is_batch_mean);
  tcase_add_test(tc, test_layered_gradient);
  tcase_add_test(tc, test_sgd_decreases_loss);
  tcase_add_test(tc, test_evaluate_in_batches);
  suite_add_tcase(s, tc);
  TCase *order = tcase_create("data order");
  tcase_add_test(order, test_permutation);
  tcase_add_test(order, test_lr_factor);
  suite_add_tcase(s, order);
  return ps_check_run(s);
}
