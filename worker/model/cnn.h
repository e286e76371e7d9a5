/* A convolutional classifier: blocks of (convolution, ReLU, max pooling)
 * followed by fully connected layers with ReLU between them and softmax
 * cross-entropy on the last, written once against the compute interface
 * (worker/compute/compute.h), so it runs on every backend.
 *
 * Images are NHWC. A convolution is im2col and one gemm over the whole
 * batch: its weight is a (k k in_channels) x out_channels matrix, rows in
 * (ky, kx, channel) order, so a dense layer and a convolution share one
 * layout convention (in x out, row-major). The first dense layer reads the
 * last block's output flattened in (y, x, channel) order.
 *
 * All parameters live in one contiguous float buffer laid out as the
 * model's tensors in declaration order, conv1.weight, conv1.bias, ...,
 * fc1.weight, fc1.bias, ...; that layout is the parameter server's dense key
 * space, and gradients come out in the same layout.
 *
 * The default is two blocks of 3x3 convolutions padded by 1 (1 -> 32 -> 64
 * channels), each pooled 2x2, then 3136 -> 128 -> 10 (Fashion-MNIST,
 * 28x28x1). A ps_cnn_t belongs to the thread that owns its compute backend.
 */
#ifndef PS_CNN_H
#define PS_CNN_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"
#include "worker/compute/compute.h"
#include "worker/data/idx.h"

#define PS_CNN_MAX_CONV 4
#define PS_CNN_MAX_FC 4

typedef struct ps_cnn_s ps_cnn_t;

typedef struct {
  uint32_t channels; /* output channels */
  uint32_t kernel;   /* square window, stride 1 */
  uint32_t pad;      /* zeros on every side */
  uint32_t pool;     /* max pooling window and stride after the ReLU; 1: none */
} ps_cnn_conv_t;

typedef struct {
  uint32_t in_h, in_w, in_ch; /* input images */
  size_t nconv;               /* [1, PS_CNN_MAX_CONV] blocks */
  ps_cnn_conv_t conv[PS_CNN_MAX_CONV];
  size_t nfc;                 /* [1, PS_CNN_MAX_FC] dense layers */
  uint32_t fc[PS_CNN_MAX_FC]; /* their widths, the classes last */
  /* Written into the model spec: the server applies the optimizer. */
  float learning_rate;
  float momentum;
  uint64_t seed;
  /* The largest batch forward/backward will be given; evaluation runs in
   * batches of this size. Memory grows with it (the im2col buffers). */
  size_t max_batch;
} ps_cnn_opts_t;

/* Fills o with the defaults (28x28x1, conv 3x3 pad 1 32 pool 2, conv 3x3
 * pad 1 64 pool 2, fc 128, 10; lr 0.01, momentum 0.9, seed 1, max_batch
 * 128). */
void ps_cnn_opts_init(ps_cnn_opts_t *o);

/* Creates the model and its device buffers on c (which must outlive it).
 * Parameters start at zero: see ps_cnn_init_params. Returns NULL with err
 * filled on bad options or out of memory. Caller owns the result. */
ps_cnn_t *ps_cnn_new(ps_compute_t *c, const ps_cnn_opts_t *o, char *err,
                     size_t errlen);
void ps_cnn_destroy(ps_cnn_t **m_p);

/* The model spec a worker declares to the cluster. Owned by the model. */
const ps_model_t *ps_cnn_model(const ps_cnn_t *m);
size_t ps_cnn_num_params(const ps_cnn_t *m);
size_t ps_cnn_input_dim(const ps_cnn_t *m);
size_t ps_cnn_num_classes(const ps_cnn_t *m);

/* Writes the initial parameters into w (num_params floats) with
 * ps_init_fill, tensor by tensor from the spec (uniform within Glorot's
 * bound sqrt(6 / (fan_in + fan_out)) for weights, zero biases; a
 * convolution's fans are k k in_channels and k k out_channels). */
void ps_cnn_init_params(const ps_cnn_t *m, float *w);

/* Copies num_params floats between host memory and the model. */
void ps_cnn_set_params(ps_cnn_t *m, const float *w);
void ps_cnn_get_params(ps_cnn_t *m, float *w);
/* As ps_mlp_params_host and ps_mlp_grad_host. */
float *ps_cnn_params_host(ps_cnn_t *m);
float *ps_cnn_grad_host(ps_cnn_t *m);

/* Forward and backward on n examples (x: n x input_dim, y: labels),
 * 0 < n <= max_batch. Writes the gradient of the mean loss over the batch
 * into grad (num_params floats, host) and returns the mean loss. */
double ps_cnn_gradient(ps_cnn_t *m, const float *x, const uint8_t *y, size_t n,
                       float *grad);

/* The same, layer by layer: begin queues the whole backward pass with each
 * layer's gradient copied into grad as soon as it is computed, and returns
 * the mean loss; each call of next waits for the next layer (last layer
 * first) and gives its key range, whose part of grad is then final; next
 * returns 0 when every layer has been given. Every begin must be followed
 * by calls of next until it returns 0 before the model is used again or
 * grad is freed. grad should come from ps_compute_host_alloc. */
double ps_cnn_gradient_begin(ps_cnn_t *m, const float *x, const uint8_t *y,
                             size_t n, float *grad);
int ps_cnn_gradient_next(ps_cnn_t *m, size_t *key_begin, size_t *count);

/* Mean loss on n examples, forward only. */
double ps_cnn_loss(ps_cnn_t *m, const float *x, const uint8_t *y, size_t n);

/* Mean loss and accuracy of the current parameters on a whole dataset, in
 * batches of max_batch. Returns PS_OK, or PS_ERR_INVAL if the dataset's
 * dimension is not the model's input or it is empty. */
int ps_cnn_evaluate(ps_cnn_t *m, const ps_dataset_t *ds, double *loss,
                    double *accuracy);

#endif
