/* The element-wise definitions of the operations a GPU runs one thread per
 * element: each function computes one output element from its index alone,
 * with no shared state, so a CUDA kernel is a grid-stride loop around it.
 *
 * They are written once here, compiled by nvcc for the device
 * (worker/compute/cuda/kernels.cu) and by the C compiler for the unit tests, which
 * check every one against the CPU backend on the host: a machine without a
 * GPU still tests the arithmetic the GPU runs. The CPU backend keeps its own
 * loops, shaped for caches, not for one thread per element.
 *
 * Internal to the compute backends (ps__ names); pure functions, any thread.
 */
#ifndef PS_COMPUTE_ELEM_H
#define PS_COMPUTE_ELEM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/compute/compute.h"

#ifdef __CUDACC__
#define PS_ELEM __host__ __device__ static inline
#else
#define PS_ELEM static inline
#endif

/* Element i of im2col's output: row (image, oy, ox), column (ky, kx, c). */
PS_ELEM float ps__im2col_at(const ps_conv_geom_t *g, const float *x, size_t i) {
  size_t kc = g->kw * g->ch;
  size_t k = g->kh * kc;
  size_t row = i / k, col = i % k;
  size_t ky = col / kc, rem = col % kc;
  size_t kx = rem / g->ch, ci = rem % g->ch;
  size_t ox = row % g->ow, t = row / g->ow;
  size_t oy = t % g->oh, img = t / g->oh;
  /* Unsigned: a position left of or above the image wraps to a huge value
   * and fails the same bound check as one past the far edge. */
  size_t iy = oy * g->stride + ky - g->pad;
  size_t ix = ox * g->stride + kx - g->pad;
  if (oy * g->stride + ky < g->pad || ox * g->stride + kx < g->pad ||
      iy >= g->h || ix >= g->w)
    return 0.0f;
  return x[((img * g->h + iy) * g->w + ix) * g->ch + ci];
}

/* Element i of col2im's output dx (image, y, x, c): the sum of the col
 * entries copied from that pixel, in (ky, kx) order. */
PS_ELEM float ps__col2im_at(const ps_conv_geom_t *g, const float *col,
                            size_t i) {
  size_t ci = i % g->ch, t = i / g->ch;
  size_t px = t % g->w;
  t /= g->w;
  size_t py = t % g->h, img = t / g->h;
  size_t k = g->kh * g->kw * g->ch;
  float sum = 0.0f;
  for (size_t ky = 0; ky < g->kh; ky++) {
    if (py + g->pad < ky) break;
    size_t ty = py + g->pad - ky;
    if (ty % g->stride != 0) continue;
    size_t oy = ty / g->stride;
    if (oy >= g->oh) continue;
    for (size_t kx = 0; kx < g->kw; kx++) {
      if (px + g->pad < kx) break;
      size_t tx = px + g->pad - kx;
      if (tx % g->stride != 0) continue;
      size_t ox = tx / g->stride;
      if (ox >= g->ow) continue;
      sum += col[((img * g->oh + oy) * g->ow + ox) * k +
                 (ky * g->kw + kx) * g->ch + ci];
    }
  }
  return sum;
}

/* The index into x of the first maximum of output element i's window. */
PS_ELEM size_t ps__maxpool_argmax(const ps_conv_geom_t *g, const float *x,
                                  size_t i) {
  size_t ci = i % g->ch, t = i / g->ch;
  size_t ox = t % g->ow;
  t /= g->ow;
  size_t oy = t % g->oh, img = t / g->oh;
  size_t best =
      ((img * g->h + oy * g->stride) * g->w + ox * g->stride) * g->ch + ci;
  for (size_t ky = 0; ky < g->kh; ky++)
    for (size_t kx = 0; kx < g->kw; kx++) {
      size_t at =
          ((img * g->h + oy * g->stride + ky) * g->w + ox * g->stride + kx) *
              g->ch +
          ci;
      if (x[at] > x[best]) best = at;
    }
  return best;
}

PS_ELEM float ps__maxpool_at(const ps_conv_geom_t *g, const float *x,
                             size_t i) {
  return x[ps__maxpool_argmax(g, x, i)];
}

/* Element i (image, y, x, c) of maxpool_backward's dx: dy of the window that
 * holds the pixel if the pixel is its first maximum, else 0. Windows do not
 * overlap, so at most one window holds it. */
PS_ELEM float ps__maxpool_backward_at(const ps_conv_geom_t *g, const float *x,
                                      const float *dy, size_t i) {
  size_t ci = i % g->ch, t = i / g->ch;
  size_t px = t % g->w;
  t /= g->w;
  size_t py = t % g->h, img = t / g->h;
  size_t oy = py / g->stride, ox = px / g->stride;
  if (oy >= g->oh || ox >= g->ow || py - oy * g->stride >= g->kh ||
      px - ox * g->stride >= g->kw)
    return 0.0f;
  size_t out = ((img * g->oh + oy) * g->ow + ox) * g->ch + ci;
  return ps__maxpool_argmax(g, x, out) == i ? dy[out] : 0.0f;
}

/* Softmax cross-entropy of one row of logits z against label y, as the CPU
 * backend computes it: the loss in double, and if g is not NULL the
 * gradient (softmax - onehot) * scale in float. */
PS_ELEM double ps__softmax_xent_row(const float *z, size_t cols, size_t y,
                                    float *g, float scale) {
  float zmax = z[0];
  for (size_t j = 1; j < cols; j++)
    if (z[j] > zmax) zmax = z[j];
  double sum = 0.0;
  for (size_t j = 0; j < cols; j++) sum += exp((double)(z[j] - zmax));
  double loss = log(sum) - (double)(z[y] - zmax);
  if (g != NULL) {
    float inv = (float)(1.0 / sum);
    for (size_t j = 0; j < cols; j++) {
      float p = expf(z[j] - zmax) * inv;
      g[j] = (p - (j == y ? 1.0f : 0.0f)) * scale;
    }
  }
  return loss;
}

/* The first argmax of a row of logits. */
PS_ELEM size_t ps__argmax_row(const float *z, size_t cols) {
  size_t best = 0;
  for (size_t j = 1; j < cols; j++)
    if (z[j] > z[best]) best = j;
  return best;
}

#endif
