// Grid-stride loops around the element functions of worker/compute/compute_elem.h:
// one thread per output element, no atomics except the integer count, so
// every result is the same from run to run.
#include "worker/compute/compute_elem.h"
#include "worker/compute/cuda/kernels.h"

namespace {

constexpr unsigned kThreads = 256;
// Enough blocks to fill any current GPU; larger arrays loop.
constexpr size_t kMaxBlocks = 8192;

unsigned blocks_for(size_t n) {
  size_t b = (n + kThreads - 1) / kThreads;
  return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

__device__ size_t first_index() {
  return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ size_t grid_stride() {
  return (size_t)gridDim.x * blockDim.x;
}

__global__ void fill_k(float *x, size_t n, float value) {
  for (size_t i = first_index(); i < n; i += grid_stride()) x[i] = value;
}

__global__ void add_bias_k(float *y, const float *bias, size_t rows,
                           size_t cols) {
  size_t n = rows * cols;
  for (size_t i = first_index(); i < n; i += grid_stride())
    y[i] += bias[i % cols];
}

__global__ void relu_k(const float *x, float *y, size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void relu_backward_k(const float *y, const float *dy, float *dx,
                                size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void softmax_xent_k(const float *logits, const uint8_t *labels,
                               size_t rows, size_t cols, float *grad,
                               float grad_scale, double *rowloss) {
  for (size_t r = first_index(); r < rows; r += grid_stride())
    rowloss[r] =
        ps__softmax_xent_row(logits + r * cols, cols, labels[r],
                             grad ? grad + r * cols : nullptr, grad_scale);
}

__global__ void count_correct_k(const float *logits, const uint8_t *labels,
                                size_t rows, size_t cols,
                                unsigned long long *count) {
  for (size_t r = first_index(); r < rows; r += grid_stride())
    if (ps__argmax_row(logits + r * cols, cols) == labels[r])
      atomicAdd(count, 1ull);
}

__global__ void im2col_k(const ps_conv_geom_t g, const float *x, float *col,
                         size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    col[i] = ps__im2col_at(&g, x, i);
}

__global__ void col2im_k(const ps_conv_geom_t g, const float *col, float *dx,
                         size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    dx[i] = ps__col2im_at(&g, col, i);
}

__global__ void maxpool_k(const ps_conv_geom_t g, const float *x, float *y,
                          size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    y[i] = ps__maxpool_at(&g, x, i);
}

__global__ void maxpool_backward_k(const ps_conv_geom_t g, const float *x,
                                   const float *dy, float *dx, size_t n) {
  for (size_t i = first_index(); i < n; i += grid_stride())
    dx[i] = ps__maxpool_backward_at(&g, x, dy, i);
}

}  // namespace

extern "C" {

cudaError_t ps__cuda_fill(cudaStream_t s, float *x, size_t n, float value) {
  if (n == 0) return cudaSuccess;
  fill_k<<<blocks_for(n), kThreads, 0, s>>>(x, n, value);
  return cudaGetLastError();
}

cudaError_t ps__cuda_add_bias(cudaStream_t s, float *y, const float *bias,
                              size_t rows, size_t cols) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  add_bias_k<<<blocks_for(rows * cols), kThreads, 0, s>>>(y, bias, rows, cols);
  return cudaGetLastError();
}

cudaError_t ps__cuda_relu(cudaStream_t s, const float *x, float *y, size_t n) {
  if (n == 0) return cudaSuccess;
  relu_k<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t ps__cuda_relu_backward(cudaStream_t s, const float *y,
                                   const float *dy, float *dx, size_t n) {
  if (n == 0) return cudaSuccess;
  relu_backward_k<<<blocks_for(n), kThreads, 0, s>>>(y, dy, dx, n);
  return cudaGetLastError();
}

cudaError_t ps__cuda_softmax_xent(cudaStream_t s, const float *logits,
                                  const uint8_t *labels, size_t rows,
                                  size_t cols, float *grad, float grad_scale,
                                  double *rowloss) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  softmax_xent_k<<<blocks_for(rows), kThreads, 0, s>>>(
      logits, labels, rows, cols, grad, grad_scale, rowloss);
  return cudaGetLastError();
}

cudaError_t ps__cuda_count_correct(cudaStream_t s, const float *logits,
                                   const uint8_t *labels, size_t rows,
                                   size_t cols, unsigned long long *count) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  count_correct_k<<<blocks_for(rows), kThreads, 0, s>>>(logits, labels, rows,
                                                        cols, count);
  return cudaGetLastError();
}

cudaError_t ps__cuda_im2col(cudaStream_t s, const ps_conv_geom_t *g,
                            const float *x, float *col) {
  size_t n = g->n * g->oh * g->ow * g->kh * g->kw * g->ch;
  if (n == 0) return cudaSuccess;
  im2col_k<<<blocks_for(n), kThreads, 0, s>>>(*g, x, col, n);
  return cudaGetLastError();
}

cudaError_t ps__cuda_col2im(cudaStream_t s, const ps_conv_geom_t *g,
                            const float *col, float *dx) {
  size_t n = g->n * g->h * g->w * g->ch;
  if (n == 0) return cudaSuccess;
  col2im_k<<<blocks_for(n), kThreads, 0, s>>>(*g, col, dx, n);
  return cudaGetLastError();
}

cudaError_t ps__cuda_maxpool(cudaStream_t s, const ps_conv_geom_t *g,
                             const float *x, float *y) {
  size_t n = g->n * g->oh * g->ow * g->ch;
  if (n == 0) return cudaSuccess;
  maxpool_k<<<blocks_for(n), kThreads, 0, s>>>(*g, x, y, n);
  return cudaGetLastError();
}

cudaError_t ps__cuda_maxpool_backward(cudaStream_t s, const ps_conv_geom_t *g,
                                      const float *x, const float *dy,
                                      float *dx) {
  size_t n = g->n * g->h * g->w * g->ch;
  if (n == 0) return cudaSuccess;
  maxpool_backward_k<<<blocks_for(n), kThreads, 0, s>>>(*g, x, dy, dx, n);
  return cudaGetLastError();
}

}  // extern "C"
