/* The CUDA kernels of the CUDA backend, as C functions that queue one on a
 * stream and return the launch's status. Each element's value is defined in
 * worker/compute/compute_elem.h; this is only the grid around it. Internal to
 * worker/compute/cuda/compute_cuda.c; called from the thread that owns the
 * backend.
 */
#ifndef PS_CUDA_KERNELS_H
#define PS_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/compute/compute.h"

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t ps__cuda_fill(cudaStream_t s, float *x, size_t n, float value);
cudaError_t ps__cuda_add_bias(cudaStream_t s, float *y, const float *bias,
                              size_t rows, size_t cols);
cudaError_t ps__cuda_relu(cudaStream_t s, const float *x, float *y, size_t n);
cudaError_t ps__cuda_relu_backward(cudaStream_t s, const float *y,
                                   const float *dy, float *dx, size_t n);
/* rowloss[i] = the loss of row i, in double; grad as the CPU backend's. */
cudaError_t ps__cuda_softmax_xent(cudaStream_t s, const float *logits,
                                  const uint8_t *labels, size_t rows,
                                  size_t cols, float *grad, float grad_scale,
                                  double *rowloss);
/* *count += the rows whose first argmax is their label. */
cudaError_t ps__cuda_count_correct(cudaStream_t s, const float *logits,
                                   const uint8_t *labels, size_t rows,
                                   size_t cols, unsigned long long *count);
cudaError_t ps__cuda_im2col(cudaStream_t s, const ps_conv_geom_t *g,
                            const float *x, float *col);
cudaError_t ps__cuda_col2im(cudaStream_t s, const ps_conv_geom_t *g,
                            const float *col, float *dx);
cudaError_t ps__cuda_maxpool(cudaStream_t s, const ps_conv_geom_t *g,
                             const float *x, float *y);
cudaError_t ps__cuda_maxpool_backward(cudaStream_t s, const ps_conv_geom_t *g,
                                      const float *x, const float *dy,
                                      float *dx);

#ifdef __cplusplus
}
#endif

#endif
