/* Optimizer kernels applied by the server on push (and by --standalone).
 *
 * All kernels take the gradient sum of n contributions and a scale (1/n for
 * BSP averaging, 1 for ASP) so that averaging costs no extra pass. They are
 * built for several instruction sets (target_clones) and the best one the
 * CPU has is chosen at load time. Pure functions of their arguments; any
 * thread, as long as the arrays are not shared.
 */
#ifndef PS_OPTIMIZER_H
#define PS_OPTIMIZER_H

#include <stddef.h>

/* SGD with momentum (PyTorch's form):
 *   v = momentum * v + scale * g;  w -= lr * v
 * With momentum == 0, v may be NULL and is not touched: w -= lr * scale * g. */
void ps_apply_sgd(float *restrict w, float *restrict v,
                  const float *restrict g, size_t n, float lr, float momentum,
                  float scale);

/* dst += src, for summing BSP contributions as they arrive. */
void ps_accumulate(float *restrict dst, const float *restrict src, size_t n);

#endif
