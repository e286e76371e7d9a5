#include "optimizer.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

/* Each kernel is built three times, for AVX-512, AVX2 and the x86-64
 * baseline, and the first call picks the widest the CPU has. Not GCC's
 * target_clones: its dispatcher chooses "arch=" clones by CPU model and, on
 * the AMD EPYC of our test machines, fell back to the SSE2 build for every
 * feature-named clone as well; __builtin_cpu_supports asked directly gets it
 * right. The file is built with -ffp-contract=off, so no build fuses a
 * multiply and an add: every variant rounds each operation as the scalar
 * C does, and the weights have the same bits whichever one runs (a BSP run
 * and --standalone agree across machines). These loops are bound by memory
 * bandwidth once the model leaves the cache; wider vectors matter for
 * cache-resident slices. */

/* pre is the schedule's factor on the gradient (issue #14), applied
 * first as a worker that scaled its own gradient did: pre * g is g
 * exactly when pre is 1, so ps_apply_sgd keeps its bits. */
#define SGD_BODY                                                \
  if (momentum == 0.0f || v == NULL) {                          \
    const float step = lr * scale;                              \
    for (size_t i = 0; i < n; i++) w[i] -= step * (pre * g[i]); \
    return;                                                     \
  }                                                             \
  for (size_t i = 0; i < n; i++) {                              \
    float vi = momentum * v[i] + scale * (pre * g[i]);          \
    v[i] = vi;                                                  \
    w[i] -= lr * vi;                                            \
  }

#define SGD_TO_BODY                                                       \
  if (momentum == 0.0f || v == NULL) {                                    \
    const float step = lr * scale;                                        \
    for (size_t i = 0; i < n; i++) w_out[i] = w[i] - step * (pre * g[i]); \
    return;                                                               \
  }                                                                       \
  for (size_t i = 0; i < n; i++) {                                        \
    float vi = momentum * v[i] + scale * (pre * g[i]);                    \
    v[i] = vi;                                                            \
    w_out[i] = w[i] - lr * vi;                                            \
  }

#define ACC_BODY \
  for (size_t i = 0; i < n; i++) dst[i] += src[i];

/* A float is NaN or infinite exactly when its exponent bits are all ones;
 * adding one to an all-ones exponent carries into the sign bit, so one and,
 * one add and one or per value tell, and the loop vectorizes (a float
 * reduction, x * 0 summed, would not without -ffast-math). A pass over
 * every pushed value: at 16 MiB the baseline build took 8% of a server's
 * time in a push-pull benchmark, the AVX-512 one a quarter of that. */
#define FINITE_BODY                         \
  uint32_t bad = 0;                         \
  for (size_t i = 0; i < n; i++) {          \
    uint32_t u;                             \
    memcpy(&u, &v[i], sizeof(u));           \
    bad |= (u & 0x7f800000u) + 0x00800000u; \
  }                                         \
  return (bad & 0x80000000u) == 0;

/* The scalars of one update, computed once per call. */
typedef struct {
  float lr, eps, scale;
  float b1, b2, omb1, omb2, c1, c2; /* Adam */
  float l1, l2, fbeta;              /* FTRL */
} opt_args_t;

/* Each stateful body is written once for an out-of-place update (WO the
 * new weights, WI the old) and instantiated in place with WO == WI == w,
 * so neither form pays for the other. The scalars are copied to locals
 * first so the compiler may keep them in registers. */
#define ADAGRAD_BODY(WO, WI)                              \
  const float lr = a->lr, eps = a->eps, scale = a->scale; \
  for (size_t i = 0; i < n; i++) {                        \
    float gi = scale * g[i];                              \
    float hi = h[i] + gi * gi;                            \
    h[i] = hi;                                            \
    WO[i] = WI[i] - lr * gi / (sqrtf(hi) + eps);          \
  }

#define ADAM_BODY(WO, WI)                                             \
  const float lr = a->lr, eps = a->eps, scale = a->scale, b1 = a->b1, \
              b2 = a->b2, omb1 = a->omb1, omb2 = a->omb2, c1 = a->c1, \
              c2 = a->c2;                                             \
  for (size_t i = 0; i < n; i++) {                                    \
    float gi = scale * g[i];                                          \
    float mi = b1 * m[i] + omb1 * gi;                                 \
    float vi = b2 * v[i] + omb2 * (gi * gi);                          \
    m[i] = mi;                                                        \
    v[i] = vi;                                                        \
    WO[i] = WI[i] - lr * (mi * c1) / (sqrtf(vi * c2) + eps);          \
  }

#define FTRL_BODY(WO, WI)                                              \
  const float alpha = a->lr, scale = a->scale, l1 = a->l1, l2 = a->l2, \
              fbeta = a->fbeta;                                        \
  for (size_t i = 0; i < n; i++) {                                     \
    float gi = scale * g[i];                                           \
    float ni = nacc[i], nn = ni + gi * gi;                             \
    float sigma = (sqrtf(nn) - sqrtf(ni)) / alpha;                     \
    float zi = z[i] + gi - sigma * WI[i];                              \
    z[i] = zi;                                                         \
    nacc[i] = nn;                                                      \
    float shrunk = zi - (zi < 0.0f ? -l1 : l1);                        \
    float wnew = -shrunk / ((fbeta + sqrtf(nn)) / alpha + l2);         \
    WO[i] = fabsf(zi) <= l1 ? 0.0f : wnew;                             \
  }

#define SGD_ARGS                                                           \
  float *restrict w, float *restrict v, const float *restrict g, size_t n, \
      float lr, float momentum, float scale, float pre
#define SGD_TO_ARGS                                                  \
  float *restrict w_out, const float *restrict w, float *restrict v, \
      const float *restrict g, size_t n, float lr, float momentum,   \
      float scale, float pre
#define ACC_ARGS float *restrict dst, const float *restrict src, size_t n
#define FINITE_ARGS const float *restrict v, size_t n
#define ADAGRAD_ARGS                                                       \
  float *restrict w, float *restrict h, const float *restrict g, size_t n, \
      const opt_args_t *a
#define ADAGRAD_TO_ARGS                                            \
  float *restrict wo, const float *restrict wi, float *restrict h, \
      const float *restrict g, size_t n, const opt_args_t *a
#define ADAM_ARGS                                          \
  float *restrict w, float *restrict m, float *restrict v, \
      const float *restrict g, size_t n, const opt_args_t *a
#define ADAM_TO_ARGS                                               \
  float *restrict wo, const float *restrict wi, float *restrict m, \
      float *restrict v, const float *restrict g, size_t n,        \
      const opt_args_t *a
#define FTRL_ARGS                                             \
  float *restrict w, float *restrict z, float *restrict nacc, \
      const float *restrict g, size_t n, const opt_args_t *a
#define FTRL_TO_ARGS                                               \
  float *restrict wo, const float *restrict wi, float *restrict z, \
      float *restrict nacc, const float *restrict g, size_t n,     \
      const opt_args_t *a

typedef void sgd_fn(SGD_ARGS);
typedef void sgd_to_fn(SGD_TO_ARGS);
typedef void acc_fn(ACC_ARGS);
typedef int finite_fn(FINITE_ARGS);
typedef void adagrad_fn(ADAGRAD_ARGS);
typedef void adagrad_to_fn(ADAGRAD_TO_ARGS);
typedef void adam_fn(ADAM_ARGS);
typedef void adam_to_fn(ADAM_TO_ARGS);
typedef void ftrl_fn(FTRL_ARGS);
typedef void ftrl_to_fn(FTRL_TO_ARGS);

// clang-format off
/* It cannot tell these macro bodies from statements. */
#define DEFINE_VARIANT(suffix, attr)                               \
  attr static void sgd_##suffix(SGD_ARGS) { SGD_BODY }             \
  attr static void sgd_to_##suffix(SGD_TO_ARGS) { SGD_TO_BODY }    \
  attr static void acc_##suffix(ACC_ARGS) { ACC_BODY }             \
  attr static int finite_##suffix(FINITE_ARGS) { FINITE_BODY }     \
  attr static void adagrad_##suffix(ADAGRAD_ARGS) {                \
    ADAGRAD_BODY(w, w) }                                           \
  attr static void adagrad_to_##suffix(ADAGRAD_TO_ARGS) {          \
    ADAGRAD_BODY(wo, wi) }                                         \
  attr static void adam_##suffix(ADAM_ARGS) { ADAM_BODY(w, w) }    \
  attr static void adam_to_##suffix(ADAM_TO_ARGS) {                \
    ADAM_BODY(wo, wi) }                                            \
  attr static void ftrl_##suffix(FTRL_ARGS) { FTRL_BODY(w, w) }    \
  attr static void ftrl_to_##suffix(FTRL_TO_ARGS) {                \
    FTRL_BODY(wo, wi) }
// clang-format on

DEFINE_VARIANT(base, )

/* Sanitizer builds stay on the baseline: their instrumentation is what is
 * under test there, not the vector width. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define PS_MULTIVERSION 1
DEFINE_VARIANT(avx2, __attribute__((target("avx2"))))
DEFINE_VARIANT(avx512, __attribute__((target("avx512f"))))
#endif

typedef struct {
  sgd_fn *sgd;
  sgd_to_fn *sgd_to;
  acc_fn *acc;
  finite_fn *finite;
  adagrad_fn *adagrad;
  adagrad_to_fn *adagrad_to;
  adam_fn *adam;
  adam_to_fn *adam_to;
  ftrl_fn *ftrl;
  ftrl_to_fn *ftrl_to;
  const char *name;
} kernels_t;

#define KERNELS(suffix, name)                                     \
  {                                                               \
    sgd_##suffix, sgd_to_##suffix, acc_##suffix, finite_##suffix, \
        adagrad_##suffix, adagrad_to_##suffix, adam_##suffix,     \
        adam_to_##suffix, ftrl_##suffix, ftrl_to_##suffix, name   \
  }

static const kernels_t k_base = KERNELS(base, "baseline");
#ifdef PS_MULTIVERSION
static const kernels_t k_avx2 = KERNELS(avx2, "avx2");
static const kernels_t k_avx512 = KERNELS(avx512, "avx512f");
#endif

static _Atomic(const kernels_t *) chosen;

static const kernels_t *kernels(void) {
  const kernels_t *k = atomic_load_explicit(&chosen, memory_order_relaxed);
  if (k) return k;
  k = &k_base;
#ifdef PS_MULTIVERSION
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    k = &k_avx512;
  else if (__builtin_cpu_supports("avx2"))
    k = &k_avx2;
#endif
  /* Two threads racing here pick the same table. */
  atomic_store_explicit(&chosen, k, memory_order_relaxed);
  return k;
}

void ps_apply_sgd(float *restrict w, float *restrict v, const float *restrict g,
                  size_t n, float lr, float momentum, float scale) {
  kernels()->sgd(w, v, g, n, lr, momentum, scale, 1.0f);
}

void ps_apply_sgd_to(float *restrict w_out, const float *restrict w,
                     float *restrict v, const float *restrict g, size_t n,
                     float lr, float momentum, float scale) {
  kernels()->sgd_to(w_out, w, v, g, n, lr, momentum, scale, 1.0f);
}

void ps_accumulate_scaled(float *restrict dst, const float *restrict src,
                          size_t n, float factor) {
  for (size_t i = 0; i < n; i++) dst[i] += factor * src[i];
}

void ps_copy_scaled(float *restrict dst, const float *restrict src, size_t n,
                    float factor) {
  for (size_t i = 0; i < n; i++) dst[i] = factor * src[i];
}

void ps_accumulate(float *restrict dst, const float *restrict src, size_t n) {
  kernels()->acc(dst, src, n);
}

const char *ps_optimizer_isa(void) {
  return kernels()->name;
}

/* Tests pin the variant to compare them (tests/unit/test_optimizer.c):
 * "baseline", "avx2" or "avx512f"; 0 when this build or CPU lacks it. */
int ps__optimizer_force_isa(const char *name) {
  const kernels_t *k = NULL;
  if (strcmp(name, "baseline") == 0) k = &k_base;
#ifdef PS_MULTIVERSION
  __builtin_cpu_init();
  if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2")) k = &k_avx2;
  if (strcmp(name, "avx512f") == 0 && __builtin_cpu_supports("avx512f"))
    k = &k_avx512;
#endif
  if (k == NULL) return 0;
  atomic_store_explicit(&chosen, k, memory_order_relaxed);
  return 1;
}

int ps_optimizer_state_slots(const ps_optimizer_spec_t *o) {
  switch (o->kind) {
    case PS_OPTIMIZER_SGD:
      return o->momentum != 0.0f;
    case PS_OPTIMIZER_ADAGRAD:
      return 1;
    case PS_OPTIMIZER_ADAM:
    case PS_OPTIMIZER_FTRL:
      return 2;
    default:
      return 0;
  }
}

void ps_model_default_optimizer(const ps_model_t *m, ps_optimizer_spec_t *out) {
  *out = (ps_optimizer_spec_t){
      .kind = m->optimizer,
      .learning_rate = m->learning_rate,
      .momentum = m->momentum,
      .beta1 = m->beta1,
      .beta2 = m->beta2,
      .epsilon = m->epsilon,
      .l1 = m->l1,
      .l2 = m->l2,
      .ftrl_beta = m->ftrl_beta,
  };
}

void ps_model_tensor_optimizer(const ps_model_t *m, size_t i,
                               ps_optimizer_spec_t *out) {
  if (m->tensors[i].has_optimizer)
    *out = m->tensors[i].optimizer;
  else
    ps_model_default_optimizer(m, out);
}

void ps_model_sparse_optimizer(const ps_model_t *m, const ps_sparse_spec_t *t,
                               ps_optimizer_spec_t *out) {
  if (t->has_optimizer)
    *out = t->optimizer;
  else
    ps_model_default_optimizer(m, out);
}

int ps_model_state_slots(const ps_model_t *m) {
  ps_optimizer_spec_t o;
  int k = 0;
  for (size_t i = 0; i < m->ntensors; i++) {
    ps_model_tensor_optimizer(m, i, &o);
    int ki = ps_optimizer_state_slots(&o);
    if (ki > k) k = ki;
  }
  return k;
}

static const char *const optimizer_names[] = {"sgd", "add", "adagrad", "adam",
                                              "ftrl"};
#define NOPTIMIZERS (sizeof(optimizer_names) / sizeof(optimizer_names[0]))

const char *ps_optimizer_name(int kind) {
  if (kind < 0 || (size_t)kind >= NOPTIMIZERS) return NULL;
  return optimizer_names[kind];
}

int ps_optimizer_kind(const char *name) {
  for (size_t i = 0; i < NOPTIMIZERS; i++)
    if (strcmp(optimizer_names[i], name) == 0) return (int)i;
  return -1;
}

int ps_optimizer_equal(const ps_optimizer_spec_t *a,
                       const ps_optimizer_spec_t *b) {
  return a->kind == b->kind && a->learning_rate == b->learning_rate &&
         a->momentum == b->momentum && a->beta1 == b->beta1 &&
         a->beta2 == b->beta2 && a->epsilon == b->epsilon && a->l1 == b->l1 &&
         a->l2 == b->l2 && a->ftrl_beta == b->ftrl_beta;
}

int ps_optimizer_check(const ps_optimizer_spec_t *o, const char *what,
                       char *err, size_t errlen) {
  const char *name = ps_optimizer_name(o->kind);
  if (name == NULL)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s: unknown optimizer %d", what,
                   o->kind);
  const struct {
    const char *field;
    float value;
    int used; /* by this kind */
    float lo, hi;
    int lo_open, hi_open;
  } f[] = {
      /* SGD may stand still (a model only pulled, a test); the adaptive
       * ones divide by it (FTRL) or would never move. */
      {"learning rate", o->learning_rate, o->kind != PS_OPTIMIZER_ADD, 0,
       INFINITY, o->kind != PS_OPTIMIZER_SGD, 1},
      {"momentum", o->momentum, o->kind == PS_OPTIMIZER_SGD, 0, 1, 0, 1},
      {"beta1", o->beta1, o->kind == PS_OPTIMIZER_ADAM, 0, 1, 0, 1},
      {"beta2", o->beta2, o->kind == PS_OPTIMIZER_ADAM, 0, 1, 1, 1},
      {"epsilon", o->epsilon,
       o->kind == PS_OPTIMIZER_ADAM || o->kind == PS_OPTIMIZER_ADAGRAD, 0,
       INFINITY, 1, 1},
      {"l1", o->l1, o->kind == PS_OPTIMIZER_FTRL, 0, INFINITY, 0, 1},
      {"l2", o->l2, o->kind == PS_OPTIMIZER_FTRL, 0, INFINITY, 0, 1},
      {"ftrl beta", o->ftrl_beta, o->kind == PS_OPTIMIZER_FTRL, 0, INFINITY, 0,
       1},
  };
  for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
    float v = f[i].value;
    if (!f[i].used) {
      /* ADD ignores the learning rate and momentum, and models built
       * before issue #14 set them anyway: those two need only be finite. */
      if (o->kind == PS_OPTIMIZER_ADD && i < 2) {
        if (!isfinite(v))
          return ps_errf(err, errlen, PS_ERR_INVAL, "%s: %s %g is not finite",
                         what, f[i].field, (double)v);
        continue;
      }
      if (v != 0.0f)
        return ps_errf(err, errlen, PS_ERR_INVAL,
                       "%s: optimizer %s does not use %s, which must be 0, "
                       "not %g",
                       what, name, f[i].field, (double)v);
      continue;
    }
    int ok = isfinite(v) && (f[i].lo_open ? v > f[i].lo : v >= f[i].lo) &&
             (f[i].hi_open ? v < f[i].hi : v <= f[i].hi);
    if (!ok)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "%s: %s %g of optimizer %s is not in %c%g, %g%c", what,
                     f[i].field, (double)v, name, f[i].lo_open ? '(' : '[',
                     (double)f[i].lo, (double)f[i].hi,
                     f[i].hi_open ? ')' : ']');
  }
  return PS_OK;
}

int ps_lr_schedule_equal(const ps_lr_schedule_spec_t *a,
                         const ps_lr_schedule_spec_t *b) {
  return a->kind == b->kind && a->total_steps == b->total_steps &&
         a->warmup_steps == b->warmup_steps && a->epochs == b->epochs &&
         a->examples_per_epoch == b->examples_per_epoch &&
         a->worker_batch == b->worker_batch;
}

int ps_lr_schedule_resolve(ps_lr_schedule_spec_t *s, uint32_t workers,
                           char *err, size_t errlen) {
  if (s->epochs == 0) return PS_OK;
  uint64_t global = (uint64_t)workers * s->worker_batch;
  uint64_t per_epoch = global ? s->examples_per_epoch / global : 0;
  if (per_epoch == 0 || per_epoch > UINT64_MAX / s->epochs)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "learning-rate schedule: %llu examples per epoch make "
                   "%llu steps of %u workers x %llu",
                   (unsigned long long)s->examples_per_epoch,
                   (unsigned long long)per_epoch, workers,
                   (unsigned long long)s->worker_batch);
  s->total_steps = s->epochs * per_epoch;
  return ps_lr_schedule_check(s, err, errlen);
}

int ps_lr_schedule_check(const ps_lr_schedule_spec_t *s, char *err,
                         size_t errlen) {
  if (s->kind != PS_LR_SCHEDULE_CONSTANT && s->kind != PS_LR_SCHEDULE_COSINE)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "learning-rate schedule: unknown kind %d", s->kind);
  if (s->epochs > 0 && (s->examples_per_epoch == 0 || s->worker_batch == 0))
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "learning-rate schedule over %llu epochs of %llu examples "
                   "at batch %llu: examples and batch must be > 0",
                   (unsigned long long)s->epochs,
                   (unsigned long long)s->examples_per_epoch,
                   (unsigned long long)s->worker_batch);
  /* A horizon in epochs is checked once the scheduler resolved it. */
  int resolved = s->epochs == 0 || s->total_steps != 0;
  if (resolved && s->kind == PS_LR_SCHEDULE_COSINE &&
      s->total_steps <= s->warmup_steps)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "learning-rate schedule: cosine over %llu steps must be "
                   "longer than its %llu warm-up steps",
                   (unsigned long long)s->total_steps,
                   (unsigned long long)s->warmup_steps);
  return PS_OK;
}

float ps_lr_factor(const ps_lr_schedule_spec_t *s, uint64_t step) {
  if (step < s->warmup_steps)
    return (float)((double)(step + 1) / (double)s->warmup_steps);
  if (s->kind != PS_LR_SCHEDULE_COSINE || s->total_steps <= s->warmup_steps)
    return 1.0f;
  /* The workers' formula before issue #14, bit for bit (warm-up 0). */
  double x = (double)(step - s->warmup_steps) /
             (double)(s->total_steps - s->warmup_steps);
  if (x > 1.0) x = 1.0;
  return (float)(0.5 * (1.0 + cos(M_PI * x)));
}

void ps_optimizer_apply(const ps_optimizer_spec_t *o, float *w_out,
                        const float *w, float *state, size_t stride,
                        const float *g, size_t n, float scale, float lr_factor,
                        uint64_t t) {
  const kernels_t *k = kernels();
  int inplace = w_out == w;
  opt_args_t a = {
      .scale = scale, .lr = o->learning_rate * lr_factor, .eps = o->epsilon};
  switch (o->kind) {
    case PS_OPTIMIZER_ADD:
      if (inplace)
        k->sgd(w_out, NULL, g, n, -1.0f, 0.0f, 1.0f, 1.0f);
      else
        k->sgd_to(w_out, w, NULL, g, n, -1.0f, 0.0f, 1.0f, 1.0f);
      return;
    case PS_OPTIMIZER_SGD: {
      float *v = o->momentum != 0.0f ? state : NULL;
      if (inplace)
        k->sgd(w_out, v, g, n, o->learning_rate, o->momentum, scale, lr_factor);
      else
        k->sgd_to(w_out, w, v, g, n, o->learning_rate, o->momentum, scale,
                  lr_factor);
      return;
    }
    case PS_OPTIMIZER_ADAGRAD:
      if (inplace)
        k->adagrad(w_out, state, g, n, &a);
      else
        k->adagrad_to(w_out, w, state, g, n, &a);
      return;
    case PS_OPTIMIZER_ADAM: {
      if (t == 0) t = 1;
      a.b1 = o->beta1;
      a.b2 = o->beta2;
      a.omb1 = 1.0f - o->beta1;
      a.omb2 = 1.0f - o->beta2;
      a.c1 = (float)(1.0 / (1.0 - pow((double)o->beta1, (double)t)));
      a.c2 = (float)(1.0 / (1.0 - pow((double)o->beta2, (double)t)));
      if (inplace)
        k->adam(w_out, state, state + stride, g, n, &a);
      else
        k->adam_to(w_out, w, state, state + stride, g, n, &a);
      return;
    }
    case PS_OPTIMIZER_FTRL:
      /* A factor of 0 (a schedule's very end) would divide by alpha 0: no
       * step at all is what it means. */
      if (!(a.lr > 0.0f)) {
        if (!inplace) memcpy(w_out, w, n * sizeof(float));
        return;
      }
      a.l1 = o->l1;
      a.l2 = o->l2;
      a.fbeta = o->ftrl_beta;
      if (inplace)
        k->ftrl(w_out, state, state + stride, g, n, &a);
      else
        k->ftrl_to(w_out, w, state, state + stride, g, n, &a);
      return;
    default:
      return;
  }
}

int ps_floats_finite(const float *v, size_t n) {
  return kernels()->finite(v, n);
}

size_t ps_optimizer_row_floats(const ps_optimizer_spec_t *o, uint32_t dim) {
  size_t k = (size_t)ps_optimizer_state_slots(o);
  return (size_t)dim * (1 + k) +
         (o->kind == PS_OPTIMIZER_ADAM ? sizeof(uint64_t) / sizeof(float) : 0);
}

void ps_optimizer_apply_row(const ps_optimizer_spec_t *o, float *row,
                            uint32_t dim, const float *g, float scale,
                            float lr_factor) {
  uint64_t t = 0;
  if (o->kind == PS_OPTIMIZER_ADAM) {
    float *count = row + (size_t)dim * 3;
    memcpy(&t, count, sizeof(t));
    t++;
    memcpy(count, &t, sizeof(t));
  }
  int k = ps_optimizer_state_slots(o);
  ps_optimizer_apply(o, row, row, k ? row + dim : NULL, dim, g, dim, scale,
                     lr_factor, t);
}
