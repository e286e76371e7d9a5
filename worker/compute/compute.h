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
 * Matrices are row-major; images are NHWC (image, row, column, channel), so
 * a convolution is one im2col and one gemm over the whole batch and its
 * output is again NHWC. Operations may run asynchronously on a device:
 * download, the functions that return a host value, ps_compute_wait and
 * ps_compute_sync wait for everything queued before them.
 *
 * Host memory from ps_compute_host_alloc is page-locked on a GPU, so copies
 * from and to it run asynchronously: an upload from it may still be reading
 * when ps_compute_upload returns, so the caller leaves it unchanged until a
 * later download, wait or sync returns. Other host memory is copied before
 * upload returns.
 *
 * A device failure (a GPU lost mid-run) is not a broken precondition: the
 * backend keeps the first such error, later operations do nothing, values
 * read back are meaningless, and ps_compute_error says what happened; a
 * caller checks it once per step. A ps_compute_t and its buffers belong to
 * one thread.
 */
#ifndef PS_COMPUTE_H
#define PS_COMPUTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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
  int device;  /* GPU ordinal (CUDA backend) */
  /* --device auto: the worker's requested rank, which picks the GPU when
   * no local-rank variable is set (ps_compute_local_rank); < 0: none. */
  long rank_hint;
} ps_compute_opts_t;

/* The geometry of a 2-D window operation (convolution or pooling) on n NHWC
 * images of h x w pixels and ch channels: kh x kw windows at stride, over
 * the images padded with pad zeros on every side, giving oh x ow outputs per
 * image and channel. Fill it with ps_conv_geom. */
typedef struct {
  size_t n, h, w, ch;
  size_t kh, kw, pad, stride;
  size_t oh, ow;
} ps_conv_geom_t;

/* What a backend implements. Preconditions (sizes, offsets inside buffers,
 * dtypes) are checked by the ps_compute_* wrappers, which abort on a broken
 * one: they are the model's invariants, never input. */
typedef struct {
  const char *name;
  /* 1 when device memory is host memory (the CPU): ps_compute_host_view. */
  int host_memory;
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
  /* softmax_xent in two halves, so that a device need not stop between
   * the loss and the backward pass queued after it: start queues the
   * kernel and the loss's copy to host memory, finish waits for that copy
   * alone and returns the loss. Both NULL: softmax_xent is called at start
   * (a synchronous backend loses nothing). */
  void (*softmax_xent_start)(ps_compute_t *c, const float *logits,
                             const uint8_t *labels, size_t rows, size_t cols,
                             float *grad, float grad_scale);
  double (*softmax_xent_finish)(ps_compute_t *c);
  /* out[j] = beta * out[j] + alpha * sum_i x[i][j]. */
  void (*col_sum)(ps_compute_t *c, const float *x, size_t rows, size_t cols,
                  float alpha, float beta, float *out);
  /* Number of rows whose argmax (the first on ties) equals the label. */
  size_t (*count_correct)(ps_compute_t *c, const float *logits,
                          const uint8_t *labels, size_t rows, size_t cols);
  void (*sync)(ps_compute_t *c);

  /* Convolution as a matrix product. im2col writes col, a (n oh ow) x
   * (kh kw ch) matrix: row (image, oy, ox) holds the window under that
   * output, in (ky, kx, channel) order, zero where it hangs over the edge.
   * col2im is its adjoint: dx (n h w ch) = the sum, for every pixel, of the
   * col entries that were copied from it (dx is overwritten). */
  void (*im2col)(ps_compute_t *c, const ps_conv_geom_t *g, const float *x,
                 float *col);
  void (*col2im)(ps_compute_t *c, const ps_conv_geom_t *g, const float *col,
                 float *dx);
  /* Max pooling without padding, windows not overlapping (stride >= kh,
   * kw): y (n oh ow ch) = the window's max. maxpool_backward overwrites dx
   * (n h w ch) with dy at the window's first maximum (row-major window
   * order) and 0 elsewhere, recomputing the maximum from x. */
  void (*maxpool)(ps_compute_t *c, const ps_conv_geom_t *g, const float *x,
                  float *y);
  void (*maxpool_backward)(ps_compute_t *c, const ps_conv_geom_t *g,
                           const float *x, const float *dy, float *dx);

  /* Host memory that the device copies to and from fastest (page-locked on
   * a GPU), or NULL. */
  void *(*host_alloc)(ps_compute_t *c, size_t bytes);
  void (*host_free)(ps_compute_t *c, void *mem);
  /* Queues a copy to host memory after everything queued so far and
   * returns a fence for ps_compute_wait. NULL: download is used, and the
   * fence is complete at once. */
  uint64_t (*download_async)(ps_compute_t *c, void *dst, const void *src,
                             size_t bytes);
  void (*wait)(ps_compute_t *c, uint64_t fence);
  /* The first device failure's message, or NULL while there is none. */
  const char *(*error)(ps_compute_t *c);
  /* One line on the device in use ("NVIDIA H100 ..., sm_90, 80 GiB"). */
  const char *(*describe)(ps_compute_t *c);
  /* 1 when operations run asynchronously to the host thread, so that the
   * host can talk to the network while the device computes. */
  int async;
} ps_compute_ops_t;

/* The backends built in. ps_compute_cuda_ops exists only in a build with
 * CUDA (PS_HAVE_CUDA). */
extern const ps_compute_ops_t ps_compute_cpu_ops;
#ifdef PS_HAVE_CUDA
extern const ps_compute_ops_t ps_compute_cuda_ops;
#endif

/* The backend of this name ("cpu", "cuda" where built), or NULL. */
const ps_compute_ops_t *ps_compute_find(const char *name);

/* The number of usable CUDA devices, or -1 with the reason in why: the CUDA
 * runtime's message (no driver, no device, driver too old) or "built
 * without CUDA". 0 is never returned: no device is a reason too. */
int ps_compute_cuda_devices(char *why, size_t whylen);

/* What this machine says about CUDA: whether a GPU is there at all (a
 * device node /dev/nvidiaN, or a GPU that nvidia-smi -L lists), and what
 * the CUDA runtime makes of it. ps_compute_cuda_probe fills it; tests fill
 * it by hand to stand for machines they do not run on. */
typedef struct {
  int gpu_present;       /* 1: a GPU is there, usable or not */
  char present_how[128]; /* "/dev/nvidia0", "nvidia-smi: GPU 0: ..." */
  int devices;           /* usable CUDA devices, or -1 with why */
  int driver_version;    /* cudaDriverGetVersion: 13000 is 13.0; 0: none */
  int runtime_version;   /* cudaRuntimeGetVersion; 0: built without CUDA */
  char why[256];         /* why devices is -1 */
  char cublas[256];      /* the cuBLAS file loaded, or why none could be */
} ps_cuda_probe_t;

typedef enum {
  PS_CUDA_USABLE = 0, /* devices > 0 */
  PS_CUDA_ABSENT = 1, /* no GPU here: the CPU is the right place */
  PS_CUDA_BROKEN = 2, /* a GPU is here but CUDA cannot use it: an error */
} ps_cuda_state_t;

/* Looks at the device nodes, nvidia-smi (when no node is seen) and the
 * CUDA runtime. Costs a fork of nvidia-smi at most; call once at start. */
void ps_compute_cuda_probe(ps_cuda_probe_t *p);

/* What a probe means, with one line for the log in msg: for
 * PS_CUDA_BROKEN, where the GPU was seen, the runtime's reason and the
 * driver's and runtime's versions. */
ps_cuda_state_t ps_compute_cuda_verdict(const ps_cuda_probe_t *p, char *msg,
                                        size_t msglen);

/* The GPU --device auto takes among ndevices (> 0) that the CUDA runtime
 * shows (it hides those CUDA_VISIBLE_DEVICES leaves out, and numbers the
 * rest from 0): local_rank modulo ndevices, so the workers of one machine
 * spread over its GPUs; 0 when local_rank < 0 (unknown). why says which and
 * why; rank_from names where local_rank came from ("LOCAL_RANK"), visible
 * is CUDA_VISIBLE_DEVICES (NULL: not set). */
int ps_compute_pick_gpu(int ndevices, long local_rank, const char *rank_from,
                        const char *visible, char *why, size_t whylen);

/* This process's index among the workers on its machine: the first of
 * PS_LOCAL_RANK, LOCAL_RANK, SLURM_LOCALID, OMPI_COMM_WORLD_LOCAL_RANK,
 * MPI_LOCALRANKID that is set, else hint when >= 0 (the worker's
 * requested rank, from "hint"), else -1; *from names the source. A
 * variable that is set but not a number in [0, 1048576) is skipped. */
long ps_compute_local_rank(long hint, const char **from);

/* Opens the backend a --device value names:
 *   "cpu"     the CPU backend;
 *   "cuda"    GPU 0, "cuda:N" GPU N; fails when there is no such usable
 *             GPU, with the CUDA runtime's reason;
 *   "auto"    a usable GPU (ps_compute_pick_gpu by ps_compute_local_rank
 *             of o->rank_hint), else the CPU; note says which and why
 *             (note may be NULL).
 * o->device is ignored (the spec says it). Returns NULL with err filled:
 * *rc is PS_ERR_CONFIG for a spec that is none of these, PS_ERR_UNSUPPORTED
 * when the GPU asked for cannot be used. Caller owns the result. */
ps_compute_t *ps_compute_open(const char *device, const ps_compute_opts_t *o,
                              char *note, size_t notelen, int *rc, char *err,
                              size_t errlen);

/* ps_compute_open with the machine's CUDA state given (probe may be NULL
 * for "cpu" and is probed when needed; tests pass made-up ones). When
 * "auto" falls back to the CPU although a GPU is present
 * (PS_CUDA_BROKEN), *gpu_unusable is set to 1 and note holds the
 * verdict's message: the caller logs it as an error. */
ps_compute_t *ps_compute_open_probed(const char *device,
                                     const ps_compute_opts_t *o,
                                     const ps_cuda_probe_t *probe, char *note,
                                     size_t notelen, int *gpu_unusable, int *rc,
                                     char *err, size_t errlen);

/* Creates and initialises a backend. Returns NULL with err filled on failure.
 * Caller owns the result (ps_compute_destroy). */
ps_compute_t *ps_compute_new(const ps_compute_ops_t *ops,
                             const ps_compute_opts_t *o, char *err,
                             size_t errlen);
/* Frees the backend and sets *c_p to NULL; its buffers must be freed first. */
void ps_compute_destroy(ps_compute_t **c_p);

const char *ps_compute_name(const ps_compute_t *c);
/* The backend's line on its device ("cpu" for the CPU backend). */
const char *ps_compute_describe(ps_compute_t *c);
/* 1 when the backend computes asynchronously to the host (a GPU). */
int ps_compute_is_async(const ps_compute_t *c);
/* The first device failure's message, or NULL while all is well. */
const char *ps_compute_error(ps_compute_t *c);
/* Backend-private state, for the backend's own functions. */
void *ps_compute_state(ps_compute_t *c);
void ps_compute_set_state(ps_compute_t *c, void *state);

/* A buffer of n elements of dtype, zero-filled. Returns NULL when out of
 * memory. Caller owns it (ps_dbuf_destroy). */
ps_dbuf_t *ps_dbuf_new(ps_compute_t *c, ps_dtype_t dtype, size_t n);
void ps_dbuf_destroy(ps_dbuf_t **b_p);
size_t ps_dbuf_size(const ps_dbuf_t *b);

/* Host memory for buffers that go to and from the device every step
 * (weights, gradients, batches): page-locked on a GPU. NULL when out of
 * memory. Caller owns it (ps_compute_host_free, before the backend goes). */
void *ps_compute_host_alloc(ps_compute_t *c, size_t bytes);
void ps_compute_host_free(ps_compute_t *c, void *mem);

/* The host address of the n elements at p when the backend's memory is
 * host memory (the CPU), else NULL: a caller may then read and write a
 * buffer in place, e.g. receive the weights straight into the parameters
 * and send the gradient straight from where backward wrote it, and an
 * upload or download between that address and p copies nothing. */
void *ps_compute_host_view(ps_compute_t *c, ps_dptr_t p, size_t n);

/* Copy n elements between host memory and dst/src (nothing to copy when
 * the host memory is p's own, ps_compute_host_view). */
void ps_compute_upload(ps_compute_t *c, ps_dptr_t dst, const void *src,
                       size_t n);
void ps_compute_download(ps_compute_t *c, void *dst, ps_dptr_t src, size_t n);
/* Queues the copy of n elements of src into dst after everything queued so
 * far and returns at once with a fence: dst holds them once
 * ps_compute_wait(fence) returns (on the CPU, already on return). dst should
 * come from ps_compute_host_alloc: other memory makes the copy synchronous.
 * Fences of the last PS_COMPUTE_FENCES downloads can be waited for; an older
 * one is complete. */
#define PS_COMPUTE_FENCES 64
uint64_t ps_compute_download_async(ps_compute_t *c, void *dst, ps_dptr_t src,
                                   size_t n);
void ps_compute_wait(ps_compute_t *c, uint64_t fence);
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
/* ps_compute_softmax_xent without waiting for the loss: returns once the
 * work is queued; ps_compute_softmax_xent_finish returns the loss summed
 * over rows, and waits only for it, not for what was queued after start.
 * One start may be unfinished at a time, and no softmax_xent runs then. */
void ps_compute_softmax_xent_start(ps_compute_t *c, ps_dptr_t logits,
                                   ps_dptr_t labels, size_t rows, size_t cols,
                                   ps_dptr_t grad, float grad_scale);
double ps_compute_softmax_xent_finish(ps_compute_t *c);
void ps_compute_col_sum(ps_compute_t *c, ps_dptr_t x, size_t rows, size_t cols,
                        float alpha, float beta, ps_dptr_t out);
size_t ps_compute_count_correct(ps_compute_t *c, ps_dptr_t logits,
                                ps_dptr_t labels, size_t rows, size_t cols);
void ps_compute_sync(ps_compute_t *c);

/* The geometry of a k x k window at stride with pad on n h x w x ch images.
 * Returns PS_OK, or PS_ERR_INVAL if the window does not fit the padded
 * image or a size is 0. */
int ps_conv_geom(ps_conv_geom_t *g, size_t n, size_t h, size_t w, size_t ch,
                 size_t k, size_t pad, size_t stride);
/* See ps_compute_ops_t. col holds n oh ow x kh kw ch floats. */
void ps_compute_im2col(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t x,
                       ps_dptr_t col);
void ps_compute_col2im(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t col,
                       ps_dptr_t dx);
void ps_compute_maxpool(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t x,
                        ps_dptr_t y);
void ps_compute_maxpool_backward(ps_compute_t *c, const ps_conv_geom_t *g,
                                 ps_dptr_t x, ps_dptr_t dy, ps_dptr_t dx);

#ifdef __cplusplus
}
#endif

#endif
