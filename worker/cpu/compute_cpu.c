/* The CPU backend: device memory is host memory, gemm is OpenBLAS, the rest
 * are plain loops the compiler vectorizes. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/compute.h"

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

const ps_compute_ops_t ps_compute_cpu_ops = {
    .name = "cpu",
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
};
