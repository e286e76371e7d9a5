#include "worker/model/net.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "worker/model/cnn.h"
#include "worker/model/mlp.h"

_Static_assert(PS_NET_MAX_GROUPS >= PS_MLP_MAX_LAYERS &&
                   PS_NET_MAX_GROUPS >= PS_CNN_MAX_CONV + PS_CNN_MAX_FC,
               "PS_NET_MAX_GROUPS below a model's layer count");

struct ps_net_s {
  ps_net_kind_t kind;
  ps_mlp_t *mlp;
  ps_cnn_t *cnn;
};

const char *ps_net_kind_name(ps_net_kind_t kind) {
  return kind == PS_NET_CNN ? "cnn" : kind == PS_NET_CTR ? "ctr" : "mlp";
}

ps_net_t *ps_net_new(ps_compute_t *c, const ps_net_opts_t *o, char *err,
                     size_t errlen) {
  if (o->kind == PS_NET_CTR) {
    snprintf(err, errlen,
             "net: model ctr is no image classifier (worker/model/ctr.h)");
    return NULL;
  }
  if (o->kind != PS_NET_MLP && o->kind != PS_NET_CNN) {
    snprintf(err, errlen, "net: unknown model kind %d", (int)o->kind);
    return NULL;
  }
  ps_net_t *n = calloc(1, sizeof(*n));
  if (n == NULL) {
    snprintf(err, errlen, "net: out of memory");
    return NULL;
  }
  n->kind = o->kind;
  if (o->kind == PS_NET_MLP) {
    ps_mlp_opts_t mo;
    ps_mlp_opts_init(&mo);
    mo.sizes[0] = o->in_h * o->in_w;
    mo.learning_rate = o->learning_rate;
    mo.momentum = o->momentum;
    mo.seed = o->seed;
    mo.max_batch = o->max_batch;
    n->mlp = ps_mlp_new(c, &mo, err, errlen);
  } else {
    ps_cnn_opts_t co;
    ps_cnn_opts_init(&co);
    co.in_h = o->in_h;
    co.in_w = o->in_w;
    co.learning_rate = o->learning_rate;
    co.momentum = o->momentum;
    co.seed = o->seed;
    co.max_batch = o->max_batch;
    n->cnn = ps_cnn_new(c, &co, err, errlen);
  }
  if (n->mlp == NULL && n->cnn == NULL) {
    free(n);
    return NULL;
  }
  return n;
}

void ps_net_destroy(ps_net_t **n_p) {
  if (n_p == NULL || *n_p == NULL) return;
  ps_mlp_destroy(&(*n_p)->mlp);
  ps_cnn_destroy(&(*n_p)->cnn);
  free(*n_p);
  *n_p = NULL;
}

ps_net_kind_t ps_net_kind(const ps_net_t *n) {
  return n->kind;
}

const ps_model_t *ps_net_model(const ps_net_t *n) {
  return n->mlp ? ps_mlp_model(n->mlp) : ps_cnn_model(n->cnn);
}

size_t ps_net_num_params(const ps_net_t *n) {
  return n->mlp ? ps_mlp_num_params(n->mlp) : ps_cnn_num_params(n->cnn);
}

void ps_net_init_params(const ps_net_t *n, float *w) {
  if (n->mlp)
    ps_mlp_init_params(n->mlp, w);
  else
    ps_cnn_init_params(n->cnn, w);
}

void ps_net_set_params(ps_net_t *n, const float *w) {
  if (n->mlp)
    ps_mlp_set_params(n->mlp, w);
  else
    ps_cnn_set_params(n->cnn, w);
}

float *ps_net_params_host(ps_net_t *n) {
  return n->mlp ? ps_mlp_params_host(n->mlp) : ps_cnn_params_host(n->cnn);
}

float *ps_net_grad_host(ps_net_t *n) {
  return n->mlp ? ps_mlp_grad_host(n->mlp) : ps_cnn_grad_host(n->cnn);
}

void ps_net_get_params(ps_net_t *n, float *w) {
  if (n->mlp)
    ps_mlp_get_params(n->mlp, w);
  else
    ps_cnn_get_params(n->cnn, w);
}

double ps_net_gradient(ps_net_t *n, const float *x, const uint8_t *y,
                       size_t count, float *grad) {
  return n->mlp ? ps_mlp_gradient(n->mlp, x, y, count, grad)
                : ps_cnn_gradient(n->cnn, x, y, count, grad);
}

double ps_net_gradient_begin(ps_net_t *n, const float *x, const uint8_t *y,
                             size_t count, float *grad) {
  return n->mlp ? ps_mlp_gradient_begin(n->mlp, x, y, count, grad)
                : ps_cnn_gradient_begin(n->cnn, x, y, count, grad);
}

int ps_net_gradient_next(ps_net_t *n, size_t *key_begin, size_t *count) {
  return n->mlp ? ps_mlp_gradient_next(n->mlp, key_begin, count)
                : ps_cnn_gradient_next(n->cnn, key_begin, count);
}

double ps_net_loss(ps_net_t *n, const float *x, const uint8_t *y,
                   size_t count) {
  return n->mlp ? ps_mlp_loss(n->mlp, x, y, count)
                : ps_cnn_loss(n->cnn, x, y, count);
}

int ps_net_evaluate(ps_net_t *n, const ps_dataset_t *ds, double *loss,
                    double *accuracy) {
  return n->mlp ? ps_mlp_evaluate(n->mlp, ds, loss, accuracy)
                : ps_cnn_evaluate(n->cnn, ds, loss, accuracy);
}
