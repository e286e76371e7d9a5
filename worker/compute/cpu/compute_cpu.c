/* The CPU backend: device memory is host memory, gemm is OpenBLAS, the rest
 * are plain loops the compiler vectorizes. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/compute/compute.h"

/* Cache-line aligned, so BLAS and the loops below start on a full line. */
#define CPU_ALIGN 64

static int cpu_init(ps_compute_t *c, const ps_compute_opts_t *o, char *err,
                    size_t errlen) {
  if (o->threads < 0) {
    snprintf(err, errlen, "compute cpu: invalid threads value %d", o->threads);
    return PS_ERR_INVAL;
  }
  /* The local cluster runs several processes per core; BLAS threads that
   * spin waiting for work would only steal time from the others. */
  if (o->threads > 0) openblas_set_num_threads(o->threads);
  return PS_OK;
}

static void *cpu_alloc(ps_compute_t *c, size_t bytes) {
  size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
  if (rounded < bytes) return NULL;
  return aligned_alloc(CPU_ALIGN, rounded);
}

static void cpu_free(ps_compute_t *c, void *mem) {
  free(mem);
}

static void cpu_copy(ps_compute_t *c, void *dst, const void *src,
                     size_t bytes) {
  memcpy(dst, src, bytes);
}

static void cpu_fill(ps_compute_t *c, float *x, size_t n, float value) {
  for (size_t i = 0; i < n; i++) x[i] = value;
}

static void cpu_gemm(ps_compute_t *c, ps_trans_t ta, ps_trans_t tb, size_t m,
                     size_t n, size_t k, float alpha, const float *a,
                     size_t lda, const float *b, size_t ldb, float beta,
                     float *cm, size_t ldc) {
  /* BLAS wants leading dimensions >= 1 even where nothing is read. */
  cblas_sgemm(CblasRowMajor, ta == PS_TRANS ? CblasTrans : CblasNoTrans,
              tb == PS_TRANS ? CblasTrans : CblasNoTrans, (blasint)m,
              (blasint)n, (blasint)k, alpha, a, (blasint)(lda ? lda : 1), b,
              (blasint)(ldb ? ldb : 1), beta, cm, (blasint)ldc);
}

static void cpu_add_bias(ps_compute_t *c, float *restrict y,
                         const float *restrict bias, size_t rows, size_t cols) {
  for (size_t i = 0; i < rows; i++) {
    float *restrict row = y + i * cols;
    for (size_t j = 0; j < cols; j++) row[j] += bias[j];
  }
}

static void cpu_relu(ps_compute_t *c, const float *x, float *y, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cpu_relu_backward(ps_compute_t *c, const float *y, const float *dy,
                              float *dx, size_t n) {
  for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

static double cpu_softmax_xent(ps_compute_t *c, const float *logits,
                               const uint8_t *labels, size_t rows, size_t cols,
                               float *grad, float grad_scale) {
  double loss = 0.0;
  if (cols == 0) return loss;
  for (size_t i = 0; i < rows; i++) {
    const float *z = logits + i * cols;
    float zmax = z[0];
    for (size_t j = 1; j < cols; j++)
      if (z[j] > zmax) zmax = z[j];
    /* Shifting by the max keeps exp from overflowing; the sum is taken in
     * double because the loss is compared across runs and backends. */
    double sum = 0.0;
    for (size_t j = 0; j < cols; j++) sum += exp((double)(z[j] - zmax));
    size_t y = labels[i];
    loss += log(sum) - (double)(z[y] - zmax);
    if (grad != NULL) {
      float *g = grad + i * cols;
      float inv = (float)(1.0 / sum);
      for (size_t j = 0; j < cols; j++) {
        float p = expf(z[j] - zmax) * inv;
        g[j] = (p - (j == y ? 1.0f : 0.0f)) * grad_scale;
      }
    }
  }
  return loss;
}

static void cpu_col_sum(ps_compute_t *c, const float *restrict x, size_t rows,
                        size_t cols, float alpha, float beta,
                        float *restrict out) {
  for (size_t j = 0; j < cols; j++)
    out[j] = beta == 0.0f ? 0.0f : out[j] * beta;
  for (size_t i = 0; i < rows; i++) {
    const float *restrict row = x + i * cols;
    for (size_t j = 0; j < cols; j++) out[j] += alpha * row[j];
  }
}

static size_t cpu_count_correct(ps_compute_t *c, const float *logits,
                                const uint8_t *labels, size_t rows,
                                size_t cols) {
  size_t correct = 0;
  for (size_t i = 0; i < rows; i++) {
    const float *z = logits + i * cols;
    size_t best = 0;
    for (size_t j = 1; j < cols; j++)
      if (z[j] > z[best]) best = j;
    correct += best == labels[i];
  }
  return correct;
}

/* A window row at a time: the pixels it covers inside the image are
 * contiguous both in x (NHWC) and in the col row, so one memcpy each. */
static void cpu_im2col(ps_compute_t *c, const ps_conv_geom_t *g,
                       const float *restrict x, float *restrict col) {
  const size_t ch = g->ch, kw = g->kw, k = g->kh * kw * ch;
  for (size_t img = 0; img < g->n; img++)
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++) {
        float *row = col + ((img * g->oh + oy) * g->ow + ox) * k;
        /* Window columns [kx0, kx1) fall inside the image. */
        size_t left = ox * g->stride; /* padded x of the window's column 0 */
        size_t kx0 = left < g->pad ? g->pad - left : 0;
        size_t kx1 = g->pad + g->w > left ? g->pad + g->w - left : 0;
        if (kx1 > kw) kx1 = kw;
        if (kx0 > kx1) kx0 = kx1;
        for (size_t ky = 0; ky < g->kh; ky++) {
          float *dst = row + ky * kw * ch;
          size_t top = oy * g->stride + ky;
          if (top < g->pad || top - g->pad >= g->h || kx0 == kx1) {
            memset(dst, 0, kw * ch * sizeof(float));
            continue;
          }
          const float *src =
              x +
              ((img * g->h + top - g->pad) * g->w + left + kx0 - g->pad) * ch;
          memset(dst, 0, kx0 * ch * sizeof(float));
          memcpy(dst + kx0 * ch, src, (kx1 - kx0) * ch * sizeof(float));
          memset(dst + kx1 * ch, 0, (kw - kx1) * ch * sizeof(float));
        }
      }
}

/* The adjoint of cpu_im2col: every col row added back onto the pixels it
 * was copied from. */
static void cpu_col2im(ps_compute_t *c, const ps_conv_geom_t *g,
                       const float *restrict col, float *restrict dx) {
  const size_t ch = g->ch, kw = g->kw, k = g->kh * kw * ch;
  memset(dx, 0, g->n * g->h * g->w * ch * sizeof(float));
  for (size_t img = 0; img < g->n; img++)
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++) {
        const float *row = col + ((img * g->oh + oy) * g->ow + ox) * k;
        size_t left = ox * g->stride;
        size_t kx0 = left < g->pad ? g->pad - left : 0;
        size_t kx1 = g->pad + g->w > left ? g->pad + g->w - left : 0;
        if (kx1 > kw) kx1 = kw;
        for (size_t ky = 0; ky < g->kh; ky++) {
          size_t top = oy * g->stride + ky;
          if (top < g->pad || top - g->pad >= g->h) continue;
          const float *src = row + ky * kw * ch;
          float *dst = dx + ((img * g->h + top - g->pad) * g->w) * ch;
          for (size_t kx = kx0; kx < kx1; kx++) {
            float *p = dst + (left + kx - g->pad) * ch;
            const float *q = src + kx * ch;
            for (size_t ci = 0; ci < ch; ci++) p[ci] += q[ci];
          }
        }
      }
}

static void cpu_maxpool(ps_compute_t *c, const ps_conv_geom_t *g,
                        const float *restrict x, float *restrict y) {
  const size_t ch = g->ch;
  for (size_t img = 0; img < g->n; img++)
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++) {
        float *out = y + ((img * g->oh + oy) * g->ow + ox) * ch;
        const float *corner =
            x + ((img * g->h + oy * g->stride) * g->w + ox * g->stride) * ch;
        memcpy(out, corner, ch * sizeof(float));
        for (size_t ky = 0; ky < g->kh; ky++)
          for (size_t kx = 0; kx < g->kw; kx++) {
            const float *p = corner + (ky * g->w + kx) * ch;
            for (size_t ci = 0; ci < ch; ci++)
              if (p[ci] > out[ci]) out[ci] = p[ci];
          }
      }
}

/* Windows do not overlap (checked by the wrapper), so each gradient lands
 * on one pixel and is stored, not added. */
static void cpu_maxpool_backward(ps_compute_t *c, const ps_conv_geom_t *g,
                                 const float *restrict x,
                                 const float *restrict dy, float *restrict dx) {
  const size_t ch = g->ch;
  memset(dx, 0, g->n * g->h * g->w * ch * sizeof(float));
  for (size_t img = 0; img < g->n; img++)
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++) {
        size_t corner =
            ((img * g->h + oy * g->stride) * g->w + ox * g->stride) * ch;
        const float *d = dy + ((img * g->oh + oy) * g->ow + ox) * ch;
        for (size_t ci = 0; ci < ch; ci++) {
          size_t best = corner + ci;
          for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++) {
              size_t at = corner + (ky * g->w + kx) * ch + ci;
              if (x[at] > x[best]) best = at;
            }
          dx[best] = d[ci];
        }
      }
}

const ps_compute_ops_t ps_compute_cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .init = cpu_init,
    .fini = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .fill = cpu_fill,
    .gemm = cpu_gemm,
    .add_bias = cpu_add_bias,
    .relu = cpu_relu,
    .relu_backward = cpu_relu_backward,
    .softmax_xent = cpu_softmax_xent,
    .col_sum = cpu_col_sum,
    .count_correct = cpu_count_correct,
    .sync = NULL,
    .im2col = cpu_im2col,
    .col2im = cpu_col2im,
    .maxpool = cpu_maxpool,
    .maxpool_backward = cpu_maxpool_backward,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .download_async = NULL,
    .wait = NULL,
    .error = NULL,
    .describe = NULL,
    .async = 0,
};
