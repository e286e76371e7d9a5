#include "optimizer.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

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

#define SGD_BODY                                        \
  if (momentum == 0.0f || v == NULL) {                  \
    const float step = lr * scale;                      \
    for (size_t i = 0; i < n; i++) w[i] -= step * g[i]; \
    return;                                             \
  }                                                     \
  for (size_t i = 0; i < n; i++) {                      \
    float vi = momentum * v[i] + scale * g[i];          \
    v[i] = vi;                                          \
    w[i] -= lr * vi;                                    \
  }

#define SGD_TO_BODY                                               \
  if (momentum == 0.0f || v == NULL) {                            \
    const float step = lr * scale;                                \
    for (size_t i = 0; i < n; i++) w_out[i] = w[i] - step * g[i]; \
    return;                                                       \
  }                                                               \
  for (size_t i = 0; i < n; i++) {                                \
    float vi = momentum * v[i] + scale * g[i];                    \
    v[i] = vi;                                                    \
    w_out[i] = w[i] - lr * vi;                                    \
  }

#define ACC_BODY \
  for (size_t i = 0; i < n; i++) dst[i] += src[i];

#define SGD_ARGS                                                           \
  float *restrict w, float *restrict v, const float *restrict g, size_t n, \
      float lr, float momentum, float scale
#define SGD_TO_ARGS                                                  \
  float *restrict w_out, const float *restrict w, float *restrict v, \
      const float *restrict g, size_t n, float lr, float momentum, float scale
#define ACC_ARGS float *restrict dst, const float *restrict src, size_t n

typedef void sgd_fn(SGD_ARGS);
typedef void sgd_to_fn(SGD_TO_ARGS);
typedef void acc_fn(ACC_ARGS);

// clang-format off
/* It cannot tell these macro bodies from statements. */
#define DEFINE_VARIANT(suffix, attr)                               \
  attr static void sgd_##suffix(SGD_ARGS) { SGD_BODY }             \
  attr static void sgd_to_##suffix(SGD_TO_ARGS) { SGD_TO_BODY }    \
  attr static void acc_##suffix(ACC_ARGS) { ACC_BODY }
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
  const char *name;
} kernels_t;

static const kernels_t k_base = {sgd_base, sgd_to_base, acc_base, "baseline"};
#ifdef PS_MULTIVERSION
static const kernels_t k_avx2 = {sgd_avx2, sgd_to_avx2, acc_avx2, "avx2"};
static const kernels_t k_avx512 = {sgd_avx512, sgd_to_avx512, acc_avx512,
                                   "avx512f"};
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
  kernels()->sgd(w, v, g, n, lr, momentum, scale);
}

void ps_apply_sgd_to(float *restrict w_out, const float *restrict w,
                     float *restrict v, const float *restrict g, size_t n,
                     float lr, float momentum, float scale) {
  kernels()->sgd_to(w_out, w, v, g, n, lr, momentum, scale);
}

void ps_accumulate(float *restrict dst, const float *restrict src, size_t n) {
  kernels()->acc(dst, src, n);
}

const char *ps_optimizer_isa(void) {
  return kernels()->name;
}

int ps_floats_finite(const float *v, size_t n) {
  /* A float is NaN or infinite exactly when its exponent bits are all
   * ones; or-ing the test over the array vectorizes, a float reduction
   * (x * 0 summed) would not without -ffast-math. */
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &v[i], sizeof(u));
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}
