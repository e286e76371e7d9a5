/* The CUDA backend: device memory from cudaMalloc, gemm by cuBLAS, the
 * other operations as the kernels of worker/compute/cuda/kernels.cu, all queued
 * in order on one stream. Asynchronous downloads run on a second stream, each
 * after an event recorded on the first, so that a layer's gradient travels to
 * the host while the layers below it are still in backward.
 *
 * The CUDA runtime is linked statically; on a machine without a driver or a
 * GPU, cudaGetDeviceCount fails with the reason, which
 * ps__compute_cuda_devices and init report, and nothing else here runs.
 * cuBLAS is opened with dlopen when the first backend starts (a missing
 * cuBLAS is then a reason like any other), so that programs built with
 * CUDA load and run on the CPU where it is not installed: its libraries
 * are over 500 MiB, which no bundle of ours can carry.
 */
#define _GNU_SOURCE /* dladdr */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/compute/compute.h"
#include "worker/compute/cuda/kernels.h"

#define FENCES PS_COMPUTE_FENCES

/* The cuBLAS functions the backend calls, from libcublas.so.<major> as the
 * headers it was built with name it. Loaded once per process. */
#define CUBLAS_SONAME_(m) "libcublas.so." #m
#define CUBLAS_SONAME_X(m) CUBLAS_SONAME_(m)
#define CUBLAS_SONAME CUBLAS_SONAME_X(CUBLAS_VER_MAJOR)

typedef struct {
  cublasStatus_t (*create)(cublasHandle_t *);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                          int, int, int, const float *, const float *, int,
                          const float *, int, const float *, float *, int);
  cublasStatus_t (*sgemv)(cublasHandle_t, cublasOperation_t, int, int,
                          const float *, const float *, int, const float *, int,
                          const float *, float *, int);
  const char *(*status_string)(cublasStatus_t);
  const char *(*status_name)(cublasStatus_t);
  int ok;
  char why[320];
} blas_fns_t;

static blas_fns_t blas_fn;

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_load(void) {
  void *h = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char *e = dlerror();
    snprintf(blas_fn.why, sizeof(blas_fn.why), "cannot load cuBLAS: %s",
             e ? e : CUBLAS_SONAME);
    return;
  }
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(field, name) {name, offsetof(blas_fns_t, field)}
      SYM(create, "cublasCreate_v2"),
      SYM(destroy, "cublasDestroy_v2"),
      SYM(set_stream, "cublasSetStream_v2"),
      SYM(set_math_mode, "cublasSetMathMode"),
      SYM(sgemm, "cublasSgemm_v2"),
      SYM(sgemv, "cublasSgemv_v2"),
      SYM(status_string, "cublasGetStatusString"),
      SYM(status_name, "cublasGetStatusName"),
#undef SYM
  };
  for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
    void *f = dlsym(h, syms[i].name);
    if (f == NULL) {
      snprintf(blas_fn.why, sizeof(blas_fn.why),
               "cuBLAS %s has no %s: not the version this was built for",
               CUBLAS_SONAME, syms[i].name);
      dlclose(h);
      return;
    }
    memcpy((char *)&blas_fn + syms[i].off, &f, sizeof(f));
  }
  /* Kept open for the life of the process, as a linked library would. */
  blas_fn.ok = 1;
}

int ps__compute_cuda_blas(char *where, size_t wherelen);

/* Loads cuBLAS if need be: 1 with the file it came from in where, or 0
 * with the reason. */
int ps__compute_cuda_blas(char *where, size_t wherelen) {
  pthread_once(&blas_once, blas_load);
  if (!blas_fn.ok) {
    snprintf(where, wherelen, "%s", blas_fn.why);
    return 0;
  }
  Dl_info info;
  void *sym;
  memcpy(&sym, &blas_fn.create, sizeof(sym));
  if (dladdr(sym, &info) != 0 && info.dli_fname != NULL)
    snprintf(where, wherelen, "%s", info.dli_fname);
  else
    snprintf(where, wherelen, "%s", CUBLAS_SONAME);
  return 1;
}

/* 1 when cuBLAS is loaded; else 0 with why filled. */
static int blas_ready(char *why, size_t whylen) {
  pthread_once(&blas_once, blas_load);
  if (!blas_fn.ok) snprintf(why, whylen, "%s", blas_fn.why);
  return blas_fn.ok;
}

typedef struct {
  int device;
  cudaStream_t stream; /* every operation, in order */
  cudaStream_t copy;   /* asynchronous downloads */
  cublasHandle_t blas;
  /* Fence f uses slot f % FENCES: queued is recorded on stream when the
   * download is queued, landed on copy when it is done. slot_fence says
   * which fence holds a slot (0: none, or already waited for). */
  cudaEvent_t queued[FENCES];
  cudaEvent_t landed[FENCES];
  uint64_t slot_fence[FENCES];
  uint64_t next_fence;
  /* Scratch for the operations that return a host value. */
  double *d_rowloss, *h_rowloss;
  size_t rowloss_cap;
  /* softmax_xent_start: the rows whose losses are on their way to
   * h_rowloss, and the event recorded after their copy. */
  size_t loss_rows;
  cudaEvent_t loss_ev;
  float *d_ones; /* col_sum as a gemv against ones */
  size_t ones_cap;
  unsigned long long *d_count, *h_count;
  int failed;
  char err[384];
  char desc[256];
} cuda_t;

static cuda_t *state(ps_compute_t *c) {
  return ps_compute_state(c);
}

/* Keeps the first failure: later ones are usually its consequences. */
static int cuda_ok(cuda_t *s, cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 1;
  if (!s->failed) {
    s->failed = 1;
    snprintf(s->err, sizeof(s->err), "cuda:%d %s: %s (%s)", s->device, what,
             cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return 0;
}

static int blas_ok(cuda_t *s, cublasStatus_t st, const char *what) {
  if (st == CUBLAS_STATUS_SUCCESS) return 1;
  if (!s->failed) {
    s->failed = 1;
    snprintf(s->err, sizeof(s->err), "cuda:%d %s: %s (%s)", s->device, what,
             blas_fn.status_string(st), blas_fn.status_name(st));
  }
  return 0;
}

int ps__compute_cuda_devices(char *why, size_t whylen);
void ps__compute_cuda_versions(int *driver, int *runtime);

/* Both work without a driver: the driver's version is then 0. */
void ps__compute_cuda_versions(int *driver, int *runtime) {
  *driver = *runtime = 0;
  if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
  if (cudaRuntimeGetVersion(runtime) != cudaSuccess) *runtime = 0;
  (void)cudaGetLastError();
}

int ps__compute_cuda_devices(char *why, size_t whylen) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    snprintf(why, whylen, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e),
             cudaGetErrorName(e));
    /* The runtime keeps no sticky state for this error, but clear it so a
     * later call does not see it. */
    (void)cudaGetLastError();
    return -1;
  }
  if (n <= 0) {
    snprintf(why, whylen, "cudaGetDeviceCount found no CUDA device");
    return -1;
  }
  if (!blas_ready(why, whylen)) return -1;
  return n;
}

static void cuda_fini(ps_compute_t *c) {
  cuda_t *s = state(c);
  if (s == NULL) return;
  if (s->stream) cudaStreamSynchronize(s->stream);
  if (s->copy) cudaStreamSynchronize(s->copy);
  for (int i = 0; i < FENCES; i++) {
    if (s->queued[i]) cudaEventDestroy(s->queued[i]);
    if (s->landed[i]) cudaEventDestroy(s->landed[i]);
  }
  if (s->blas) blas_fn.destroy(s->blas);
  cudaFree(s->d_rowloss);
  cudaFreeHost(s->h_rowloss);
  cudaFree(s->d_ones);
  cudaFree(s->d_count);
  cudaFreeHost(s->h_count);
  if (s->loss_ev) cudaEventDestroy(s->loss_ev);
  if (s->stream) cudaStreamDestroy(s->stream);
  if (s->copy) cudaStreamDestroy(s->copy);
  free(s);
  ps_compute_set_state(c, NULL);
}

static int cuda_init(ps_compute_t *c, const ps_compute_opts_t *o, char *err,
                     size_t errlen) {
  char why[256];
  int n = ps__compute_cuda_devices(why, sizeof(why));
  if (n < 0) {
    snprintf(err, errlen, "cuda: no usable GPU: %s", why);
    return PS_ERR_UNSUPPORTED;
  }
  if (o->device < 0 || o->device >= n) {
    snprintf(err, errlen, "cuda: no GPU %d: %d device%s", o->device, n,
             n == 1 ? "" : "s");
    return PS_ERR_UNSUPPORTED;
  }
  cuda_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    snprintf(err, errlen, "cuda: out of memory");
    return PS_ERR_NOMEM;
  }
  s->device = o->device;
  ps_compute_set_state(c, s);
  struct cudaDeviceProp prop;
  int ok =
      cuda_ok(s, cudaSetDevice(o->device), "cudaSetDevice") &&
      cuda_ok(s, cudaGetDeviceProperties(&prop, o->device),
              "cudaGetDeviceProperties") &&
      cuda_ok(s, cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking),
              "cudaStreamCreate") &&
      cuda_ok(s, cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking),
              "cudaStreamCreate");
  for (int i = 0; i < FENCES && ok; i++)
    ok = cuda_ok(
             s, cudaEventCreateWithFlags(&s->queued[i], cudaEventDisableTiming),
             "cudaEventCreate") &&
         cuda_ok(
             s, cudaEventCreateWithFlags(&s->landed[i], cudaEventDisableTiming),
             "cudaEventCreate");
  ok = ok &&
       cuda_ok(s, cudaEventCreateWithFlags(&s->loss_ev, cudaEventDisableTiming),
               "cudaEventCreate") &&
       cuda_ok(s, cudaMalloc((void **)&s->d_count, sizeof(*s->d_count)),
               "cudaMalloc") &&
       cuda_ok(s, cudaMallocHost((void **)&s->h_count, sizeof(*s->h_count)),
               "cudaMallocHost");
  ok = ok && blas_ok(s, blas_fn.create(&s->blas), "cublasCreate") &&
       blas_ok(s, blas_fn.set_stream(s->blas, s->stream), "cublasSetStream") &&
       /* Full FP32: TF32 tensor cores would be faster but would break the
        * 1e-4 agreement with the CPU backend that the tests hold. */
       blas_ok(s, blas_fn.set_math_mode(s->blas, CUBLAS_DEFAULT_MATH),
               "cublasSetMathMode");
  /* A kernel now, so that a GPU this build has no code for (older than
   * sm_80) is refused here with the reason, not on the first step. */
  if (ok) {
    ok = cuda_ok(s, ps__cuda_fill(s->stream, (float *)s->d_count, 1, 0.0f),
                 "first kernel launch") &&
         cuda_ok(s, cudaStreamSynchronize(s->stream), "first kernel");
  }
  if (!ok) {
    snprintf(err, errlen, "%s", s->err);
    cuda_fini(c);
    return PS_ERR_UNSUPPORTED;
  }
  snprintf(s->desc, sizeof(s->desc), "cuda:%d %.160s, sm_%d%d, %.1f GiB",
           o->device, prop.name, prop.major, prop.minor,
           (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  return PS_OK;
}

static void *cuda_alloc(ps_compute_t *c, size_t bytes) {
  void *p = NULL;
  /* Out of memory is the caller's to report, not a device failure. */
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return NULL;
  }
  return p;
}

static void cuda_free(ps_compute_t *c, void *mem) {
  /* Buffers may still be in use by queued work; cudaFree waits for it. */
  cudaFree(mem);
}

static void *cuda_host_alloc(ps_compute_t *c, size_t bytes) {
  void *p = NULL;
  if (cudaMallocHost(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return NULL;
  }
  return p;
}

static void cuda_host_free(ps_compute_t *c, void *mem) {
  cudaFreeHost(mem);
}

static void cuda_upload(ps_compute_t *c, void *dst, const void *src,
                        size_t bytes) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s,
          cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s->stream),
          "upload");
}

static void cuda_download(ps_compute_t *c, void *dst, const void *src,
                          size_t bytes) {
  cuda_t *s = state(c);
  if (s->failed) return;
  if (cuda_ok(
          s,
          cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s->stream),
          "download"))
    cuda_ok(s, cudaStreamSynchronize(s->stream), "download");
}

static uint64_t cuda_download_async(ps_compute_t *c, void *dst, const void *src,
                                    size_t bytes) {
  cuda_t *s = state(c);
  if (s->failed) return 0;
  uint64_t f = ++s->next_fence;
  size_t slot = (size_t)(f % FENCES);
  /* The slot's previous download must be done before its events are
   * reused; after this, waiting for that older fence returns at once. */
  if (s->slot_fence[slot] != 0 &&
      !cuda_ok(s, cudaEventSynchronize(s->landed[slot]), "download wait"))
    return 0;
  s->slot_fence[slot] = 0;
  if (!cuda_ok(s, cudaEventRecord(s->queued[slot], s->stream), "event") ||
      !cuda_ok(s, cudaStreamWaitEvent(s->copy, s->queued[slot], 0),
               "stream wait") ||
      !cuda_ok(
          s, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s->copy),
          "async download") ||
      !cuda_ok(s, cudaEventRecord(s->landed[slot], s->copy), "event"))
    return 0;
  s->slot_fence[slot] = f;
  return f;
}

static void cuda_wait(ps_compute_t *c, uint64_t fence) {
  cuda_t *s = state(c);
  size_t slot = (size_t)(fence % FENCES);
  if (s->failed || s->slot_fence[slot] != fence) return;
  cuda_ok(s, cudaEventSynchronize(s->landed[slot]), "download wait");
  s->slot_fence[slot] = 0;
}

static void cuda_fill(ps_compute_t *c, float *x, size_t n, float value) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_fill(s->stream, x, n, value), "fill");
}

/* cuBLAS is column-major: a row-major matrix is its transpose there, so
 * row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, the same
 * call with the operands swapped. */
static void cuda_gemm(ps_compute_t *c, ps_trans_t ta, ps_trans_t tb, size_t m,
                      size_t n, size_t k, float alpha, const float *a,
                      size_t lda, const float *b, size_t ldb, float beta,
                      float *cm, size_t ldc) {
  cuda_t *s = state(c);
  if (s->failed) return;
  blas_ok(s,
          blas_fn.sgemm(s->blas, tb == PS_TRANS ? CUBLAS_OP_T : CUBLAS_OP_N,
                        ta == PS_TRANS ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n,
                        (int)m, (int)k, &alpha, b, (int)(ldb ? ldb : 1), a,
                        (int)(lda ? lda : 1), &beta, cm, (int)ldc),
          "cublasSgemm");
}

static void cuda_add_bias(ps_compute_t *c, float *y, const float *bias,
                          size_t rows, size_t cols) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_add_bias(s->stream, y, bias, rows, cols), "add_bias");
}

static void cuda_relu(ps_compute_t *c, const float *x, float *y, size_t n) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_relu(s->stream, x, y, n), "relu");
}

static void cuda_relu_backward(ps_compute_t *c, const float *y, const float *dy,
                               float *dx, size_t n) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_relu_backward(s->stream, y, dy, dx, n), "relu_backward");
}

/* Grows a device scratch buffer (and its page-locked host twin) to hold n
 * elements of size bytes. */
static int grow(cuda_t *s, void **dev, void **host, size_t *cap, size_t n,
                size_t size) {
  if (n <= *cap) return 1;
  cudaStreamSynchronize(s->stream);
  cudaFree(*dev);
  *dev = NULL;
  if (host) {
    cudaFreeHost(*host);
    *host = NULL;
  }
  *cap = 0;
  if (!cuda_ok(s, cudaMalloc(dev, n * size), "scratch cudaMalloc")) return 0;
  if (host && !cuda_ok(s, cudaMallocHost(host, n * size), "scratch host"))
    return 0;
  *cap = n;
  return 1;
}

static double cuda_softmax_xent(ps_compute_t *c, const float *logits,
                                const uint8_t *labels, size_t rows, size_t cols,
                                float *grad, float grad_scale) {
  cuda_t *s = state(c);
  if (s->failed || !grow(s, (void **)&s->d_rowloss, (void **)&s->h_rowloss,
                         &s->rowloss_cap, rows, sizeof(double)))
    return NAN;
  if (!cuda_ok(s,
               ps__cuda_softmax_xent(s->stream, logits, labels, rows, cols,
                                     grad, grad_scale, s->d_rowloss),
               "softmax_xent") ||
      !cuda_ok(
          s,
          cudaMemcpyAsync(s->h_rowloss, s->d_rowloss, rows * sizeof(double),
                          cudaMemcpyDeviceToHost, s->stream),
          "loss download") ||
      !cuda_ok(s, cudaStreamSynchronize(s->stream), "softmax_xent"))
    return NAN;
  /* Summed in row order on the host, as the CPU backend does. */
  double loss = 0.0;
  for (size_t i = 0; i < rows; i++) loss += s->h_rowloss[i];
  return loss;
}

/* The loss's copy goes into page-locked memory behind an event, so that
 * finish waits for it alone while the backward pass queued after start
 * runs on. */
static void cuda_softmax_xent_start(ps_compute_t *c, const float *logits,
                                    const uint8_t *labels, size_t rows,
                                    size_t cols, float *grad,
                                    float grad_scale) {
  cuda_t *s = state(c);
  s->loss_rows = 0;
  if (s->failed || !grow(s, (void **)&s->d_rowloss, (void **)&s->h_rowloss,
                         &s->rowloss_cap, rows, sizeof(double)))
    return;
  if (cuda_ok(s,
              ps__cuda_softmax_xent(s->stream, logits, labels, rows, cols, grad,
                                    grad_scale, s->d_rowloss),
              "softmax_xent") &&
      cuda_ok(s,
              cudaMemcpyAsync(s->h_rowloss, s->d_rowloss, rows * sizeof(double),
                              cudaMemcpyDeviceToHost, s->stream),
              "loss download") &&
      cuda_ok(s, cudaEventRecord(s->loss_ev, s->stream), "loss event"))
    s->loss_rows = rows;
}

static double cuda_softmax_xent_finish(ps_compute_t *c) {
  cuda_t *s = state(c);
  if (s->failed || s->loss_rows == 0 ||
      !cuda_ok(s, cudaEventSynchronize(s->loss_ev), "loss wait"))
    return NAN;
  /* Summed in row order on the host, as the CPU backend does. */
  double loss = 0.0;
  for (size_t i = 0; i < s->loss_rows; i++) loss += s->h_rowloss[i];
  s->loss_rows = 0;
  return loss;
}

/* out = alpha * x^T ones + beta * out: the column sums as a gemv, x being
 * its transpose in column-major terms. */
static void cuda_col_sum(ps_compute_t *c, const float *x, size_t rows,
                         size_t cols, float alpha, float beta, float *out) {
  cuda_t *s = state(c);
  if (s->failed) return;
  if (rows > s->ones_cap) {
    if (!grow(s, (void **)&s->d_ones, NULL, &s->ones_cap, rows,
              sizeof(float)) ||
        !cuda_ok(s, ps__cuda_fill(s->stream, s->d_ones, rows, 1.0f), "fill"))
      return;
  }
  if (rows == 0) {
    /* gemv with no rows would leave out as is; the CPU gives beta * out. */
    if (beta == 0.0f) cuda_fill(c, out, cols, 0.0f);
    return;
  }
  blas_ok(s,
          blas_fn.sgemv(s->blas, CUBLAS_OP_N, (int)cols, (int)rows, &alpha, x,
                        (int)cols, s->d_ones, 1, &beta, out, 1),
          "cublasSgemv");
}

static size_t cuda_count_correct(ps_compute_t *c, const float *logits,
                                 const uint8_t *labels, size_t rows,
                                 size_t cols) {
  cuda_t *s = state(c);
  if (s->failed) return 0;
  if (!cuda_ok(s,
               cudaMemsetAsync(s->d_count, 0, sizeof(*s->d_count), s->stream),
               "memset") ||
      !cuda_ok(s,
               ps__cuda_count_correct(s->stream, logits, labels, rows, cols,
                                      s->d_count),
               "count_correct") ||
      !cuda_ok(s,
               cudaMemcpyAsync(s->h_count, s->d_count, sizeof(*s->d_count),
                               cudaMemcpyDeviceToHost, s->stream),
               "count download") ||
      !cuda_ok(s, cudaStreamSynchronize(s->stream), "count_correct"))
    return 0;
  return (size_t)*s->h_count;
}

static void cuda_im2col(ps_compute_t *c, const ps_conv_geom_t *g,
                        const float *x, float *col) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_im2col(s->stream, g, x, col), "im2col");
}

static void cuda_col2im(ps_compute_t *c, const ps_conv_geom_t *g,
                        const float *col, float *dx) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_col2im(s->stream, g, col, dx), "col2im");
}

static void cuda_maxpool(ps_compute_t *c, const ps_conv_geom_t *g,
                         const float *x, float *y) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_maxpool(s->stream, g, x, y), "maxpool");
}

static void cuda_maxpool_backward(ps_compute_t *c, const ps_conv_geom_t *g,
                                  const float *x, const float *dy, float *dx) {
  cuda_t *s = state(c);
  if (s->failed) return;
  cuda_ok(s, ps__cuda_maxpool_backward(s->stream, g, x, dy, dx),
          "maxpool_backward");
}

static void cuda_sync(ps_compute_t *c) {
  cuda_t *s = state(c);
  if (s->failed) return;
  if (cuda_ok(s, cudaStreamSynchronize(s->stream), "sync"))
    cuda_ok(s, cudaStreamSynchronize(s->copy), "sync");
}

static const char *cuda_error(ps_compute_t *c) {
  cuda_t *s = state(c);
  return s->failed ? s->err : NULL;
}

static const char *cuda_describe(ps_compute_t *c) {
  return state(c)->desc;
}

const ps_compute_ops_t ps_compute_cuda_ops = {
    .name = "cuda",
    .init = cuda_init,
    .fini = cuda_fini,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .fill = cuda_fill,
    .gemm = cuda_gemm,
    .add_bias = cuda_add_bias,
    .relu = cuda_relu,
    .relu_backward = cuda_relu_backward,
    .softmax_xent = cuda_softmax_xent,
    .softmax_xent_start = cuda_softmax_xent_start,
    .softmax_xent_finish = cuda_softmax_xent_finish,
    .col_sum = cuda_col_sum,
    .count_correct = cuda_count_correct,
    .sync = cuda_sync,
    .im2col = cuda_im2col,
    .col2im = cuda_col2im,
    .maxpool = cuda_maxpool,
    .maxpool_backward = cuda_maxpool_backward,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .download_async = cuda_download_async,
    .wait = cuda_wait,
    .error = cuda_error,
    .describe = cuda_describe,
    .async = 1,
};
