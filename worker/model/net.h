/* A classifier of one of the built-in kinds (the MLP, the CNN) behind one
 * API, so the trainer, and the tests that compare backends, are written
 * once for every model. Each function is the model's own (worker/model/mlp.h,
 * worker/model/cnn.h), which say what it does. A ps_net_t belongs to the thread
 * that owns its compute backend.
 */
#ifndef PS_NET_H
#define PS_NET_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"
#include "worker/compute/compute.h"
#include "worker/data/idx.h"

typedef struct ps_net_s ps_net_t;

/* The most groups ps_net_gradient_next yields in one step (one per layer),
 * for callers that keep something per group. */
#define PS_NET_MAX_GROUPS 8

typedef enum {
  PS_NET_MLP = 0, /* 784-256-128-10, Glorot */
  PS_NET_CNN = 1, /* 2 x (conv 3x3 pad 1, ReLU, max pool 2), 3136-128-10 */
  /* Click-through rate on Criteo rows (worker/model/ctr.h): not an image
   * classifier, so not a ps_net_t (ps_net_new refuses it); ps-worker's
   * trainer hands it to worker/trainer_ctr.h. */
  PS_NET_CTR = 2,
} ps_net_kind_t;

typedef struct {
  ps_net_kind_t kind;
  uint32_t in_h, in_w; /* image rows and columns, one channel */
  float learning_rate;
  float momentum;
  uint64_t seed;
  size_t max_batch;
} ps_net_opts_t;

/* "mlp", "cnn" or "ctr". */
const char *ps_net_kind_name(ps_net_kind_t kind);

/* Creates the model on c (which must outlive it). Returns NULL with err
 * filled on bad options or out of memory. Caller owns the result. */
ps_net_t *ps_net_new(ps_compute_t *c, const ps_net_opts_t *o, char *err,
                     size_t errlen);
void ps_net_destroy(ps_net_t **n_p);

ps_net_kind_t ps_net_kind(const ps_net_t *n);
const ps_model_t *ps_net_model(const ps_net_t *n);
size_t ps_net_num_params(const ps_net_t *n);
void ps_net_init_params(const ps_net_t *n, float *w);
void ps_net_set_params(ps_net_t *n, const float *w);
void ps_net_get_params(ps_net_t *n, float *w);
/* The parameters and the gradient buffer when they are host memory (the
 * CPU backend), else NULL: the trainer pulls into the first and pushes
 * from the second, and set_params and gradient then copy nothing. */
float *ps_net_params_host(ps_net_t *n);
float *ps_net_grad_host(ps_net_t *n);
double ps_net_gradient(ps_net_t *n, const float *x, const uint8_t *y,
                       size_t count, float *grad);
double ps_net_gradient_begin(ps_net_t *n, const float *x, const uint8_t *y,
                             size_t count, float *grad);
int ps_net_gradient_next(ps_net_t *n, size_t *key_begin, size_t *count);
double ps_net_loss(ps_net_t *n, const float *x, const uint8_t *y, size_t count);
int ps_net_evaluate(ps_net_t *n, const ps_dataset_t *ds, double *loss,
                    double *accuracy);

#endif
