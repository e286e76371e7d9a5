/* Compute backends: the few dense operations a model needs, behind a table of
 * functions, so that a model is written once and runs on the CPU (OpenBLAS)
 * or, later, a GPU.
 *
 * Memory a backend computes on is a device buffer (ps_dbuf_t), opaque to the
 * model: the CPU backend keeps it in host memory, a GPU backend in device
 * memory. Operations name a place in a buffer with a ps_dptr_t (buffer and
 * element offset), so a model's parameters can live in one buffer laid out
 * as the parameter server's key space and its tensors be addressed in place.
 * Data moves between host and device only through upload and download.
 *
 * Matrices are row-major. Operations may run asynchronously on a device:
 * download, the functions that return a host value, and ps_compute_sync wait
 * for everything queued before them. A ps_compute_t and its buffers belong to
 * one thread.
 */
#ifndef PS_COMPUTE_H
#define PS_COMPUTE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ps_compute_s ps_compute_t;
typedef struct ps_dbuf_s ps_dbuf_t;

typedef enum {
  PS_DTYPE_F32 = 0,
  PS_DTYPE_U8 = 1,
} ps_dtype_t;

/* A place in a device buffer: element off of buf. */
typedef struct {
  ps_dbuf_t *buf;
  size_t off;
} ps_dptr_t;

static inline ps_dptr_t ps_dptr(ps_dbuf_t *buf, size_t off) {
  ps_dptr_t p = {buf, off};
  return p;
}

static inline ps_dptr_t ps_dptr_add(ps_dptr_t p, size_t off) {
  p.off += off;
  return p;
}

typedef enum {
  PS_NO_TRANS = 0,
  PS_TRANS = 1,
} ps_trans_t;

typedef struct {
  int threads; /* BLAS threads (CPU backend); 0 leaves the library's choice */
} ps_compute_opts_t;

/* What a backend implements. Preconditions (sizes, offsets inside buffers,
 * dtypes) are checked by the ps_compute_* wrappers, which abort on a broken
 * one: they are the model's invariants, never input. */
typedef struct {
  const char *name;
  /* Sets up the backend; returns PS_OK or an error with a message. */
  int (*init)(ps_compute_t *c, const ps_compute_opts_t *o, char *err,
              size_t errlen);
  void (*fini)(ps_compute_t *c);
  /* Device memory of bytes bytes, or NULL. */
  void *(*alloc)(ps_compute_t *c, size_t bytes);
  void (*free)(ps_compute_t *c, void *mem);
  void (*upload)(ps_compute_t *c, void *dst, const void *src, size_t bytes);
  void (*download)(ps_compute_t *c, void *dst, const void *src, size_t bytes);
  void (*fill)(ps_compute_t *c, float *x, size_t n, float value);
  /* cblas_sgemm, row-major: C = alpha * op(A) * op(B) + beta * C with op(A)
   * m x k, op(B) k x n. */
  void (*gemm)(ps_compute_t *c, ps_trans_t ta, ps_trans_t tb, size_t m,
               size_t n, size_t k, float alpha, const float *a, size_t lda,
               const float *b, size_t ldb, float beta, float *cm, size_t ldc);
  /* y[i][j] += bias[j] for a rows x cols matrix. */
  void (*add_bias)(ps_compute_t *c, float *y, const float *bias, size_t rows,
                   size_t cols);
  /* y = max(x, 0); y may be x. */
  void (*relu)(ps_compute_t *c, const float *x, float *y, size_t n);
  /* dx = dy where y > 0, else 0; dx may be dy. */
  void (*relu_backward)(ps_compute_t *c, const float *y, const float *dy,
                        float *dx, size_t n);
  /* Row-wise softmax of logits (rows x cols) with cross-entropy against
   * labels, each < cols (unchecked: they live on the device). Returns the
   * loss summed over rows, in double. If grad is not NULL,
   *   grad = (softmax - onehot) * grad_scale
   * and grad may be logits. */
  double (*softmax_xent)(ps_compute_t *c, const float *logits,
                         const uint8_t *labels, size_t rows, size_t cols,
                         float *grad, float grad_scale);
  /* out[j] = beta * out[j] + alpha * sum_i x[i][j]. */
  void (*col_sum)(ps_compute_t *c, const float *x, size_t rows, size_t cols,
                  float alpha, float beta, float *out);
  /* Number of rows whose argmax (the first on ties) equals the label. */
  size_t (*count_correct)(ps_compute_t *c, const float *logits,
                          const uint8_t *labels, size_t rows, size_t cols);
  void (*sync)(ps_compute_t *c);
} ps_compute_ops_t;

/* The backends built in. */
extern const ps_compute_ops_t ps_compute_cpu_ops;

/* The backend of this name ("cpu"), or NULL. */
const ps_compute_ops_t *ps_compute_find(const char *name);

/* Creates and initialises a backend. Returns NULL with err filled on failure.
 * Caller owns the result (ps_compute_destroy). */
ps_compute_t *ps_compute_new(const ps_compute_ops_t *ops,
                             const ps_compute_opts_t *o, char *err,
                             size_t errlen);
/* Frees the backend and sets *c_p to NULL; its buffers must be freed first. */
void ps_compute_destroy(ps_compute_t **c_p);

const char *ps_compute_name(const ps_compute_t *c);
/* Backend-private state, for the backend's own functions. */
void *ps_compute_state(ps_compute_t *c);
void ps_compute_set_state(ps_compute_t *c, void *state);

/* A buffer of n elements of dtype, zero-filled. Returns NULL when out of
 * memory. Caller owns it (ps_dbuf_destroy). */
ps_dbuf_t *ps_dbuf_new(ps_compute_t *c, ps_dtype_t dtype, size_t n);
void ps_dbuf_destroy(ps_dbuf_t **b_p);
size_t ps_dbuf_size(const ps_dbuf_t *b);

/* Copy n elements between host memory and dst/src. */
void ps_compute_upload(ps_compute_t *c, ps_dptr_t dst, const void *src,
                       size_t n);
void ps_compute_download(ps_compute_t *c, void *dst, ps_dptr_t src, size_t n);
void ps_compute_fill(ps_compute_t *c, ps_dptr_t x, size_t n, float value);

/* See ps_compute_ops_t for the semantics of each. */
void ps_compute_gemm(ps_compute_t *c, ps_trans_t ta, ps_trans_t tb, size_t m,
                     size_t n, size_t k, float alpha, ps_dptr_t a, size_t lda,
                     ps_dptr_t b, size_t ldb, float beta, ps_dptr_t cm,
                     size_t ldc);
void ps_compute_add_bias(ps_compute_t *c, ps_dptr_t y, ps_dptr_t bias,
                         size_t rows, size_t cols);
void ps_compute_relu(ps_compute_t *c, ps_dptr_t x, ps_dptr_t y, size_t n);
void ps_compute_relu_backward(ps_compute_t *c, ps_dptr_t y, ps_dptr_t dy,
                              ps_dptr_t dx, size_t n);
/* grad may be {NULL, 0} for the loss alone. */
double ps_compute_softmax_xent(ps_compute_t *c, ps_dptr_t logits,
                               ps_dptr_t labels, size_t rows, size_t cols,
                               ps_dptr_t grad, float grad_scale);
void ps_compute_col_sum(ps_compute_t *c, ps_dptr_t x, size_t rows, size_t cols,
                        float alpha, float beta, ps_dptr_t out);
size_t ps_compute_count_correct(ps_compute_t *c, ps_dptr_t logits,
                                ps_dptr_t labels, size_t rows, size_t cols);
void ps_compute_sync(ps_compute_t *c);

#endif
