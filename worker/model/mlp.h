/* A multi-layer perceptron classifier: fully connected layers with ReLU
 * between them and softmax cross-entropy on the last, written once against
 * the compute interface (worker/compute/compute.h).
 *
 * All parameters live in one contiguous float buffer laid out as the model's
 * tensors in declaration order, fc1.weight (in x out, row-major), fc1.bias,
 * fc2.weight, fc2.bias, ...; that layout is the parameter server's dense key
 * space (a tensor's offset is its first key), and gradients come out in the
 * same layout, so a whole model is pulled and pushed as one slice.
 *
 * The default shape is 784-256-128-10 (Fashion-MNIST). A ps_mlp_t belongs to
 * the thread that owns its compute backend.
 */
#ifndef PS_MLP_H
#define PS_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"
#include "worker/compute/compute.h"
#include "worker/data/idx.h"

#define PS_MLP_MAX_LAYERS 8

typedef struct ps_mlp_s ps_mlp_t;

typedef enum {
  /* uniform(+-sqrt(6 / (fan_in + fan_out))), Glorot & Bengio */
  PS_MLP_INIT_GLOROT = 0,
  /* uniform(+-sqrt(6 / fan_in)), He et al., for ReLU layers */
  PS_MLP_INIT_HE = 1,
} ps_mlp_init_t;

typedef struct {
  /* Layer widths, input first, classes last: nsizes - 1 linear layers.
   * nsizes in [2, PS_MLP_MAX_LAYERS + 1]. Default 784, 256, 128, 10. */
  size_t nsizes;
  uint32_t sizes[PS_MLP_MAX_LAYERS + 1];
  ps_mlp_init_t init;
  /* Written into the model spec: the server applies the optimizer. */
  float learning_rate;
  float momentum;
  uint64_t seed;
  /* The largest batch forward/backward will be given; evaluation runs in
   * batches of this size. */
  size_t max_batch;
} ps_mlp_opts_t;

/* Fills o with the defaults (784-256-128-10, Glorot, lr 0.01, momentum 0.9,
 * seed 1, max_batch 256). */
void ps_mlp_opts_init(ps_mlp_opts_t *o);

/* Creates the model and its device buffers on c (which must outlive it).
 * Parameters start at zero: see ps_mlp_init_params. Returns NULL with err
 * filled on bad options or out of memory. Caller owns the result. */
ps_mlp_t *ps_mlp_new(ps_compute_t *c, const ps_mlp_opts_t *o, char *err,
                     size_t errlen);
void ps_mlp_destroy(ps_mlp_t **m_p);

/* The model spec (tensors, optimizer SGD, lr, momentum, seed) a worker
 * declares to the cluster. Owned by the model. */
const ps_model_t *ps_mlp_model(const ps_mlp_t *m);
/* Number of floats in the key space (== ps_mlp_model(m)->total). */
size_t ps_mlp_num_params(const ps_mlp_t *m);
size_t ps_mlp_input_dim(const ps_mlp_t *m);
size_t ps_mlp_num_classes(const ps_mlp_t *m);

/* Writes the initial parameters into w (num_params floats) with
 * ps_init_fill, tensor by tensor from the spec: the same bits a server
 * initialises its slices with. Does not touch the model's own parameters. */
void ps_mlp_init_params(const ps_mlp_t *m, float *w);

/* Copies num_params floats between host memory and the model. */
void ps_mlp_set_params(ps_mlp_t *m, const float *w);
void ps_mlp_get_params(ps_mlp_t *m, float *w);
/* The parameters and the gradient buffer in host memory (the CPU backend,
 * ps_compute_host_view), else NULL: a set_params from the first and a
 * gradient into the second copy nothing. */
float *ps_mlp_params_host(ps_mlp_t *m);
float *ps_mlp_grad_host(ps_mlp_t *m);

/* Forward and backward on n examples (x: n x input_dim row-major, y:
 * labels), 0 < n <= max_batch. Writes the gradient of the mean loss over the
 * batch into grad (num_params floats, host) and returns the mean loss. */
double ps_mlp_gradient(ps_mlp_t *m, const float *x, const uint8_t *y, size_t n,
                       float *grad);

/* The same, layer by layer: begin queues the whole backward pass with each
 * layer's gradient copied into grad as soon as it is computed, and returns
 * the mean loss; each call of next waits for the next layer (last layer
 * first) and gives its key range (weight and bias), whose part of grad is
 * then final; next returns 0 when every layer has been given. Every begin
 * must be followed by calls of next until it returns 0 before the model is
 * used again or grad is freed. grad should come from
 * ps_compute_host_alloc, so that the copies run while the device computes.
 * The values are those of ps_mlp_gradient. */
double ps_mlp_gradient_begin(ps_mlp_t *m, const float *x, const uint8_t *y,
                             size_t n, float *grad);
int ps_mlp_gradient_next(ps_mlp_t *m, size_t *key_begin, size_t *count);

/* Mean loss on n examples, forward only. */
double ps_mlp_loss(ps_mlp_t *m, const float *x, const uint8_t *y, size_t n);

/* Mean loss and accuracy of the current parameters on a whole dataset, in
 * batches of max_batch. Returns PS_OK, or PS_ERR_INVAL if the dataset's
 * dimension is not the model's input or it is empty. */
int ps_mlp_evaluate(ps_mlp_t *m, const ps_dataset_t *ds, double *loss,
                    double *accuracy);

#endif
