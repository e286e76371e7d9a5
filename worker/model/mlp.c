#include "worker/model/mlp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/invariant.h"

struct ps_mlp_s {
  ps_compute_t *c;
  ps_mlp_opts_t o;
  size_t nlayers;
  ps_model_t model;
  size_t w_off[PS_MLP_MAX_LAYERS]; /* key offsets of each layer's tensors */
  size_t b_off[PS_MLP_MAX_LAYERS];
  size_t max_width; /* widest hidden layer */
  ps_dbuf_t *params;
  ps_dbuf_t *grad;
  ps_dbuf_t *input;                  /* max_batch x sizes[0] */
  ps_dbuf_t *labels;                 /* max_batch, u8 */
  ps_dbuf_t *act[PS_MLP_MAX_LAYERS]; /* layer outputs, after ReLU if hidden */
  ps_dbuf_t *delta[2];               /* d(loss)/d(pre-activation), ping-pong */
  /* The layer-by-layer gradient in flight: group i is a layer's weight and
   * bias (adjacent keys), last layer first. */
  size_t ngroups, next_group;
  size_t group_begin[PS_MLP_MAX_LAYERS], group_count[PS_MLP_MAX_LAYERS];
  uint64_t fence[PS_MLP_MAX_LAYERS];
};

void ps_mlp_opts_init(ps_mlp_opts_t *o) {
  memset(o, 0, sizeof(*o));
  static const uint32_t sizes[] = {784, 256, 128, 10};
  o->nsizes = sizeof(sizes) / sizeof(sizes[0]);
  memcpy(o->sizes, sizes, sizeof(sizes));
  o->init = PS_MLP_INIT_GLOROT;
  o->learning_rate = 0.01f;
  o->momentum = 0.9f;
  o->seed = 1;
  o->max_batch = 256;
}

static int mlp_build_spec(ps_mlp_t *m, char *err, size_t errlen) {
  ps_model_t *spec = &m->model;
  spec->ntensors = 2 * m->nlayers;
  spec->tensors = calloc(spec->ntensors, sizeof(*spec->tensors));
  if (spec->tensors == NULL) {
    snprintf(err, errlen, "mlp: out of memory");
    return PS_ERR_NOMEM;
  }
  uint64_t off = 0;
  for (size_t l = 0; l < m->nlayers; l++) {
    uint64_t fan_in = m->o.sizes[l], fan_out = m->o.sizes[l + 1];
    ps_tensor_spec_t *w = &spec->tensors[2 * l];
    ps_tensor_spec_t *b = &spec->tensors[2 * l + 1];
    snprintf(w->name, sizeof(w->name), "fc%zu.weight", l + 1);
    w->offset = off;
    w->length = fan_in * fan_out;
    w->init = PS__INIT__INIT_UNIFORM;
    w->init_scale = m->o.init == PS_MLP_INIT_HE
                        ? (float)sqrt(6.0 / (double)fan_in)
                        : (float)sqrt(6.0 / (double)(fan_in + fan_out));
    m->w_off[l] = (size_t)off;
    off += w->length;
    snprintf(b->name, sizeof(b->name), "fc%zu.bias", l + 1);
    b->offset = off;
    b->length = fan_out;
    b->init = PS__INIT__INIT_ZERO;
    b->init_scale = 0.0f;
    m->b_off[l] = (size_t)off;
    off += b->length;
  }
  spec->total = off;
  spec->optimizer = PS__OPTIMIZER__OPT_SGD;
  spec->learning_rate = m->o.learning_rate;
  spec->momentum = m->o.momentum;
  spec->seed = m->o.seed;
  return PS_OK;
}

ps_mlp_t *ps_mlp_new(ps_compute_t *c, const ps_mlp_opts_t *o, char *err,
                     size_t errlen) {
  if (o->nsizes < 2 || o->nsizes > PS_MLP_MAX_LAYERS + 1) {
    snprintf(err, errlen, "mlp: %zu layer sizes, need 2 to %d", o->nsizes,
             PS_MLP_MAX_LAYERS + 1);
    return NULL;
  }
  for (size_t i = 0; i < o->nsizes; i++) {
    if (o->sizes[i] == 0 || o->sizes[i] > (1u << 20)) {
      snprintf(err, errlen, "mlp: layer size %u (index %zu) not in [1, %u]",
               o->sizes[i], i, 1u << 20);
      return NULL;
    }
  }
  if (o->max_batch == 0 || o->max_batch > (1u << 20)) {
    snprintf(err, errlen, "mlp: max batch %zu not in [1, %u]", o->max_batch,
             1u << 20);
    return NULL;
  }
  if (!(o->learning_rate > 0.0f) || !isfinite(o->learning_rate) ||
      !(o->momentum >= 0.0f && o->momentum < 1.0f)) {
    snprintf(err, errlen,
             "mlp: learning rate %g must be > 0 and momentum %g in [0, 1)",
             (double)o->learning_rate, (double)o->momentum);
    return NULL;
  }
  ps_mlp_t *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    snprintf(err, errlen, "mlp: out of memory");
    return NULL;
  }
  m->c = c;
  m->o = *o;
  m->nlayers = o->nsizes - 1;
  if (mlp_build_spec(m, err, errlen) != PS_OK) {
    ps_mlp_destroy(&m);
    return NULL;
  }
  size_t total = (size_t)m->model.total;
  size_t b = o->max_batch;
  m->max_width = 1;
  for (size_t l = 1; l < o->nsizes; l++)
    if (o->sizes[l] > m->max_width) m->max_width = o->sizes[l];
  m->params = ps_dbuf_new(c, PS_DTYPE_F32, total);
  m->grad = ps_dbuf_new(c, PS_DTYPE_F32, total);
  m->input = ps_dbuf_new(c, PS_DTYPE_F32, b * o->sizes[0]);
  m->labels = ps_dbuf_new(c, PS_DTYPE_U8, b);
  int ok = m->params && m->grad && m->input && m->labels;
  for (size_t l = 0; l < m->nlayers && ok; l++) {
    m->act[l] = ps_dbuf_new(c, PS_DTYPE_F32, b * o->sizes[l + 1]);
    ok = m->act[l] != NULL;
  }
  for (int i = 0; i < 2 && ok; i++) {
    m->delta[i] = ps_dbuf_new(c, PS_DTYPE_F32, b * m->max_width);
    ok = m->delta[i] != NULL;
  }
  if (!ok) {
    snprintf(err, errlen, "mlp: out of %s memory for %zu parameters",
             ps_compute_name(c), total);
    ps_mlp_destroy(&m);
    return NULL;
  }
  return m;
}

void ps_mlp_destroy(ps_mlp_t **m_p) {
  if (m_p == NULL || *m_p == NULL) return;
  ps_mlp_t *m = *m_p;
  /* A layer-by-layer gradient still in flight writes into the caller's
   * buffer: let it land first. */
  size_t kb, kc;
  while (ps_mlp_gradient_next(m, &kb, &kc)) {
  }
  ps_dbuf_destroy(&m->params);
  ps_dbuf_destroy(&m->grad);
  ps_dbuf_destroy(&m->input);
  ps_dbuf_destroy(&m->labels);
  for (size_t l = 0; l < PS_MLP_MAX_LAYERS; l++) ps_dbuf_destroy(&m->act[l]);
  ps_dbuf_destroy(&m->delta[0]);
  ps_dbuf_destroy(&m->delta[1]);
  free(m->model.tensors);
  free(m);
  *m_p = NULL;
}

const ps_model_t *ps_mlp_model(const ps_mlp_t *m) {
  return &m->model;
}
size_t ps_mlp_num_params(const ps_mlp_t *m) {
  return (size_t)m->model.total;
}
size_t ps_mlp_input_dim(const ps_mlp_t *m) {
  return m->o.sizes[0];
}
size_t ps_mlp_num_classes(const ps_mlp_t *m) {
  return m->o.sizes[m->nlayers];
}

void ps_mlp_init_params(const ps_mlp_t *m, float *w) {
  for (size_t i = 0; i < m->model.ntensors; i++) {
    const ps_tensor_spec_t *t = &m->model.tensors[i];
    ps_init_fill(w + t->offset, t->offset, t->length, t->init, t->init_scale,
                 m->model.seed);
  }
}

void ps_mlp_set_params(ps_mlp_t *m, const float *w) {
  ps_compute_upload(m->c, ps_dptr(m->params, 0), w, ps_mlp_num_params(m));
}

float *ps_mlp_params_host(ps_mlp_t *m) {
  return ps_compute_host_view(m->c, ps_dptr(m->params, 0),
                              ps_mlp_num_params(m));
}

float *ps_mlp_grad_host(ps_mlp_t *m) {
  return ps_compute_host_view(m->c, ps_dptr(m->grad, 0), ps_mlp_num_params(m));
}

void ps_mlp_get_params(ps_mlp_t *m, float *w) {
  ps_compute_download(m->c, w, ps_dptr(m->params, 0), ps_mlp_num_params(m));
}

/* Uploads the batch and runs every layer; the logits end in act[last]. */
static void mlp_forward(ps_mlp_t *m, const float *x, const uint8_t *y,
                        size_t n) {
  ps_compute_t *c = m->c;
  const uint32_t *s = m->o.sizes;
  ps_compute_upload(c, ps_dptr(m->input, 0), x, n * s[0]);
  ps_compute_upload(c, ps_dptr(m->labels, 0), y, n);
  ps_dptr_t in = ps_dptr(m->input, 0);
  for (size_t l = 0; l < m->nlayers; l++) {
    ps_dptr_t out = ps_dptr(m->act[l], 0);
    /* out (n x s[l+1]) = in (n x s[l]) * W (s[l] x s[l+1]) + b */
    ps_compute_gemm(c, PS_NO_TRANS, PS_NO_TRANS, n, s[l + 1], s[l], 1.0f, in,
                    s[l], ps_dptr(m->params, m->w_off[l]), s[l + 1], 0.0f, out,
                    s[l + 1]);
    ps_compute_add_bias(c, out, ps_dptr(m->params, m->b_off[l]), n, s[l + 1]);
    if (l + 1 < m->nlayers) ps_compute_relu(c, out, out, n * s[l + 1]);
    in = out;
  }
}

double ps_mlp_loss(ps_mlp_t *m, const float *x, const uint8_t *y, size_t n) {
  PS_ASSERT(n > 0 && n <= m->o.max_batch);
  mlp_forward(m, x, y, n);
  ps_dptr_t none = {NULL, 0};
  double sum = ps_compute_softmax_xent(m->c, ps_dptr(m->act[m->nlayers - 1], 0),
                                       ps_dptr(m->labels, 0), n,
                                       ps_mlp_num_classes(m), none, 0.0f);
  return sum / (double)n;
}

/* Forward, loss and the whole backward pass into m->grad. If layered_grad
 * is not NULL, each layer's gradient starts its copy into it as soon as it
 * is computed, so the network can take it while the layers below compute. */
static double mlp_backward(ps_mlp_t *m, const float *x, const uint8_t *y,
                           size_t n, float *layered_grad) {
  PS_ASSERT(n > 0 && n <= m->o.max_batch);
  ps_compute_t *c = m->c;
  const uint32_t *s = m->o.sizes;
  size_t last = m->nlayers - 1;
  mlp_forward(m, x, y, n);
  int cur = 0;
  ps_dptr_t delta = ps_dptr(m->delta[cur], 0);
  /* The 1/n here makes every gradient below the batch mean. The loss is
   * read after the backward pass is queued: waiting for it here would
   * stop the device between the two. */
  ps_compute_softmax_xent_start(c, ps_dptr(m->act[last], 0),
                                ps_dptr(m->labels, 0), n, s[last + 1], delta,
                                1.0f / (float)n);
  for (size_t l = last + 1; l-- > 0;) {
    ps_dptr_t in = l == 0 ? ps_dptr(m->input, 0) : ps_dptr(m->act[l - 1], 0);
    /* dW (s[l] x s[l+1]) = in^T (s[l] x n) * delta (n x s[l+1]) */
    ps_compute_gemm(c, PS_TRANS, PS_NO_TRANS, s[l], s[l + 1], n, 1.0f, in, s[l],
                    delta, s[l + 1], 0.0f, ps_dptr(m->grad, m->w_off[l]),
                    s[l + 1]);
    ps_compute_col_sum(c, delta, n, s[l + 1], 1.0f, 0.0f,
                       ps_dptr(m->grad, m->b_off[l]));
    if (layered_grad != NULL) {
      size_t g = m->ngroups++;
      m->group_begin[g] = m->w_off[l];
      m->group_count[g] = m->b_off[l] + s[l + 1] - m->w_off[l];
      m->fence[g] = ps_compute_download_async(c, layered_grad + m->w_off[l],
                                              ps_dptr(m->grad, m->w_off[l]),
                                              m->group_count[g]);
    }
    if (l == 0) break;
    /* d(in) (n x s[l]) = delta (n x s[l+1]) * W^T, then through the ReLU
     * that produced in: its output is positive exactly where its input
     * was. */
    ps_dptr_t next = ps_dptr(m->delta[cur ^ 1], 0);
    ps_compute_gemm(c, PS_NO_TRANS, PS_TRANS, n, s[l], s[l + 1], 1.0f, delta,
                    s[l + 1], ps_dptr(m->params, m->w_off[l]), s[l + 1], 0.0f,
                    next, s[l]);
    ps_compute_relu_backward(c, in, next, next, n * s[l]);
    cur ^= 1;
    delta = next;
  }
  return ps_compute_softmax_xent_finish(c) / (double)n;
}

double ps_mlp_gradient(ps_mlp_t *m, const float *x, const uint8_t *y, size_t n,
                       float *grad) {
  double loss = mlp_backward(m, x, y, n, NULL);
  ps_compute_download(m->c, grad, ps_dptr(m->grad, 0), ps_mlp_num_params(m));
  return loss;
}

double ps_mlp_gradient_begin(ps_mlp_t *m, const float *x, const uint8_t *y,
                             size_t n, float *grad) {
  /* A begin without its nexts would leave copies in flight. */
  PS_ASSERT(m->next_group >= m->ngroups);
  m->ngroups = m->next_group = 0;
  return mlp_backward(m, x, y, n, grad);
}

int ps_mlp_gradient_next(ps_mlp_t *m, size_t *key_begin, size_t *count) {
  if (m->next_group >= m->ngroups) return 0;
  size_t g = m->next_group++;
  ps_compute_wait(m->c, m->fence[g]);
  *key_begin = m->group_begin[g];
  *count = m->group_count[g];
  return 1;
}

int ps_mlp_evaluate(ps_mlp_t *m, const ps_dataset_t *ds, double *loss,
                    double *accuracy) {
  if (ds->n == 0 || ds->dim != ps_mlp_input_dim(m)) return PS_ERR_INVAL;
  double sum = 0.0;
  size_t correct = 0;
  size_t classes = ps_mlp_num_classes(m);
  ps_dptr_t logits = ps_dptr(m->act[m->nlayers - 1], 0);
  ps_dptr_t none = {NULL, 0};
  for (size_t i = 0; i < ds->n; i += m->o.max_batch) {
    size_t n = ds->n - i < m->o.max_batch ? ds->n - i : m->o.max_batch;
    mlp_forward(m, ds->x + i * ds->dim, ds->y + i, n);
    sum += ps_compute_softmax_xent(m->c, logits, ps_dptr(m->labels, 0), n,
                                   classes, none, 0.0f);
    correct += ps_compute_count_correct(m->c, logits, ps_dptr(m->labels, 0), n,
                                        classes);
  }
  *loss = sum / (double)ds->n;
  *accuracy = (double)correct / (double)ds->n;
  return PS_OK;
}
