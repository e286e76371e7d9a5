/* Optimizer kernels applied by the server on push (and by --standalone).
 *
 * All kernels take the gradient sum of n contributions and a scale (1/n for
 * BSP averaging, 1 for ASP) so that averaging costs no extra pass. They are
 * built for several instruction sets (AVX-512, AVX2, baseline) and the
 * widest one the CPU has is chosen on first use; every build gives the same
 * bits. Pure functions of their arguments; any thread, as long as the
 * arrays are not shared.
 */
#ifndef PS_OPTIMIZER_H
#define PS_OPTIMIZER_H

#include <stddef.h>

/* SGD with momentum (PyTorch's form):
 *   v = momentum * v + scale * g;  w -= lr * v
 * With momentum == 0, v may be NULL and is not touched: w -= lr * scale * g. */
void ps_apply_sgd(float *restrict w, float *restrict v, const float *restrict g,
                  size_t n, float lr, float momentum, float scale);

/* The same update written out of place: w_out = w - lr * v' (v updated in
 * place as above), reading w and writing w_out. Costs the same memory
 * traffic as the in-place form, so a server whose weights are still being
 * sent by ZeroMQ (zero-copy pull replies) writes the new version into a
 * fresh buffer instead of copying the old one first. w_out and w must not
 * overlap. */
void ps_apply_sgd_to(float *restrict w_out, const float *restrict w,
                     float *restrict v, const float *restrict g, size_t n,
                     float lr, float momentum, float scale);

/* dst += src, for summing BSP contributions as they arrive. */
void ps_accumulate(float *restrict dst, const float *restrict src, size_t n);

/* The instruction set the kernels run with: "avx512f", "avx2" or
 * "baseline". */
const char *ps_optimizer_isa(void);

/* 1 when none of v[0..n) is NaN or an infinity. One pass, vectorized: the
 * check every push pays before it may touch the weights. */
int ps_floats_finite(const float *v, size_t n);

#endif
