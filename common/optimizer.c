#include "optimizer.h"

/* Built for AVX2+FMA and for the x86-64 baseline; the loader picks the best
 * the CPU has (GNU ifunc). These loops are bound by memory bandwidth once the
 * model leaves the cache, so wider vectors matter most for cache-resident
 * slices. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define PS_KERNEL __attribute__((target_clones("arch=haswell", "default")))
#else
#define PS_KERNEL
#endif

PS_KERNEL
void ps_apply_sgd(float *restrict w, float *restrict v,
                  const float *restrict g, size_t n, float lr, float momentum,
                  float scale) {
  if (momentum == 0.0f || v == NULL) {
    const float step = lr * scale;
    for (size_t i = 0; i < n; i++) w[i] -= step * g[i];
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float vi = momentum * v[i] + scale * g[i];
    v[i] = vi;
    w[i] -= lr * vi;
  }
}

PS_KERNEL
void ps_accumulate(float *restrict dst, const float *restrict src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] += src[i];
}
