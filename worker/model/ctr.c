#include "worker/model/ctr.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"
#include "proto/ps.pb-c.h"

#define NLAYERS_MAX (PS_CTR_MAX_HIDDEN + 1)
#define NPAIRS (PS_CRITEO_CATEG * (PS_CRITEO_CATEG - 1) / 2)

typedef struct {
  uint64_t key;
  uint32_t pos; /* row * PS_CRITEO_CATEG + field */
} keypos_t;

struct ps_ctr_s {
  ps_ctr_opts_t o;
  ps_model_t model;
  ps_tensor_spec_t tensors[2 * NLAYERS_MAX];
  ps_sparse_spec_t sparse[2];
  size_t nlayers;
  size_t width[NLAYERS_MAX + 1]; /* input first, 1 last */
  size_t w_off[NLAYERS_MAX], b_off[NLAYERS_MAX];
  /* Per row and field: the index of its id among the batch's keys; per
   * row and cross, its crossed id's. */
  uint32_t *slot, *cslot;
  keypos_t *kp;
  uint64_t *keys;
  uint32_t *counts;
  size_t nkeys, nfield, nrows;
  /* Activations (act[0] the input, act[l] after layer l), their
   * gradients, and the logit's. */
  float *act[NLAYERS_MAX + 1];
  float *dact[NLAYERS_MAX + 1];
  float *dz;
};

void ps_ctr_opts_init(ps_ctr_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->embed_dim = 16;
  o->nhidden = 2;
  o->hidden[0] = 256;
  o->hidden[1] = 128;
  o->emb_init = 0.05f;
  o->dot_interactions = 0;
  o->learning_rate = 0.02f;
  o->momentum = 0.0f;
  o->seed = 1;
  o->max_batch = 1024;
}

int ps_ctr_parse_hidden(ps_ctr_opts_t *o, const char *list, char *err,
                        size_t errlen) {
  size_t n = 0;
  const char *p = list;
  while (*p) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 1 || v > 8192 || (*end != ',' && *end != '\0') ||
        n == PS_CTR_MAX_HIDDEN) {
      snprintf(err, errlen,
               "hidden layers \"%s\": want 1 to %d widths in [1, 8192], "
               "comma separated",
               list, PS_CTR_MAX_HIDDEN);
      return PS_ERR_CONFIG;
    }
    o->hidden[n++] = (uint32_t)v;
    p = *end ? end + 1 : end;
  }
  if (n == 0) {
    snprintf(err, errlen, "hidden layers \"%s\": none given", list);
    return PS_ERR_CONFIG;
  }
  o->nhidden = n;
  return PS_OK;
}

int ps_ctr_parse_cross(ps_ctr_opts_t *o, const char *list, char *err,
                       size_t errlen) {
  size_t n = 0;
  const char *p = list;
  while (*p) {
    char *end;
    long a = strtol(p, &end, 10), b = 0;
    int ok = end != p && *end == 'x';
    if (ok) {
      const char *q = end + 1;
      b = strtol(q, &end, 10);
      ok = end != q && ((*end == ',' && end[1] != '\0') || *end == '\0');
    }
    if (!ok || a < 1 || a > PS_CRITEO_CATEG || b < 1 || b > PS_CRITEO_CATEG ||
        a == b || n == PS_CTR_MAX_CROSSES) {
      snprintf(err, errlen,
               "crosses \"%s\": want up to %d pairs AxB of distinct field "
               "numbers in [1, %d] (C1 to C%d), comma separated, e.g. 1x2,3x4",
               list, PS_CTR_MAX_CROSSES, PS_CRITEO_CATEG, PS_CRITEO_CATEG);
      return PS_ERR_CONFIG;
    }
    o->cross_a[n] = (uint8_t)(a - 1);
    o->cross_b[n++] = (uint8_t)(b - 1);
    p = *end ? end + 1 : end;
  }
  o->ncross = n;
  return PS_OK;
}

/* A crossed id: a hash of the pair's ids and its fields, so that 1x2 and
 * 2x1 are different crosses. */
static uint64_t cross_key(const ps_criteo_row_t *r, uint8_t a, uint8_t b) {
  uint64_t f = ((uint64_t)a << 8 | b) * 0x9e3779b97f4a7c15ull;
  return ps_mix64(ps_mix64(r->ids[a] ^ f) + r->ids[b]);
}

ps_ctr_t *ps_ctr_new(const ps_ctr_opts_t *o, char *err, size_t errlen) {
  if (o->embed_dim < 1 || o->embed_dim > 64) {
    snprintf(err, errlen, "embedding dim %u not in [1, 64]", o->embed_dim);
    return NULL;
  }
  if (o->ncross > PS_CTR_MAX_CROSSES) {
    snprintf(err, errlen, "%zu crosses: at most %d", o->ncross,
             PS_CTR_MAX_CROSSES);
    return NULL;
  }
  if (o->nhidden < 1 || o->nhidden > PS_CTR_MAX_HIDDEN || o->max_batch < 1) {
    snprintf(err, errlen, "%zu hidden layers (1 to %d), max batch %zu",
             o->nhidden, PS_CTR_MAX_HIDDEN, o->max_batch);
    return NULL;
  }
  if (ps_lr_schedule_check(&o->lr_schedule, err, errlen) != PS_OK) return NULL;
  ps_ctr_t *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    snprintf(err, errlen, "ctr: out of memory");
    return NULL;
  }
  m->o = *o;
  m->nlayers = o->nhidden + 1;
  m->width[0] = (size_t)PS_CRITEO_CATEG * o->embed_dim + PS_CRITEO_DENSE +
                (o->dot_interactions ? NPAIRS : 0);
  for (size_t l = 0; l < o->nhidden; l++) m->width[l + 1] = o->hidden[l];
  m->width[m->nlayers] = 1;
  uint64_t off = 0;
  for (size_t l = 0; l < m->nlayers; l++) {
    ps_tensor_spec_t *w = &m->tensors[2 * l], *b = &m->tensors[2 * l + 1];
    snprintf(w->name, sizeof(w->name), "ctr.fc%zu.weight", l + 1);
    snprintf(b->name, sizeof(b->name), "ctr.fc%zu.bias", l + 1);
    w->offset = off;
    w->length = m->width[l] * m->width[l + 1];
    w->init = PS_INIT_UNIFORM;
    /* He for the ReLU layers; the output layer, Glorot. */
    w->init_scale = l + 1 < m->nlayers
                        ? sqrtf(6.0f / (float)m->width[l])
                        : sqrtf(6.0f / (float)(m->width[l] + 1));
    m->w_off[l] = off;
    off += w->length;
    b->offset = off;
    b->length = m->width[l + 1];
    b->init = PS_INIT_ZERO;
    m->b_off[l] = off;
    off += b->length;
  }
  m->model.ntensors = 2 * m->nlayers;
  m->model.tensors = m->tensors;
  m->model.total = off;
  m->model.optimizer = PS__OPTIMIZER__OPT_SGD;
  m->model.learning_rate = o->learning_rate;
  m->model.momentum = o->momentum;
  m->model.seed = o->seed;
  m->model.lr_schedule = o->lr_schedule;
  snprintf(m->sparse[0].name, PS_NAME_MAX, "%s", PS_CTR_EMB_TABLE);
  m->sparse[0].dim = o->embed_dim;
  m->sparse[0].init = PS_INIT_UNIFORM;
  m->sparse[0].init_scale = o->emb_init;
  snprintf(m->sparse[1].name, PS_NAME_MAX, "%s", PS_CTR_WIDE_TABLE);
  m->sparse[1].dim = 1;
  m->sparse[1].init = PS_INIT_ZERO;
  for (int t = 0; t < 2; t++) {
    m->sparse[t].salt = ps_sparse_salt(m->sparse[t].name);
    m->sparse[t].has_optimizer = o->has_sparse_optimizer;
    if (o->has_sparse_optimizer) m->sparse[t].optimizer = o->sparse_optimizer;
  }
  m->model.nsparse = 2;
  m->model.sparse = m->sparse;

  size_t cells = o->max_batch * (PS_CRITEO_CATEG + o->ncross);
  m->slot = malloc(o->max_batch * PS_CRITEO_CATEG * sizeof(*m->slot));
  m->cslot = malloc((o->max_batch * o->ncross + 1) * sizeof(*m->cslot));
  m->kp = malloc(cells * sizeof(*m->kp));
  m->keys = malloc(cells * sizeof(*m->keys));
  m->counts = malloc(cells * sizeof(*m->counts));
  m->dz = malloc(o->max_batch * sizeof(float));
  int ok = m->slot && m->cslot && m->kp && m->keys && m->counts && m->dz;
  for (size_t l = 0; ok && l <= m->nlayers; l++) {
    m->act[l] = malloc(o->max_batch * m->width[l] * sizeof(float));
    m->dact[l] = malloc(o->max_batch * m->width[l] * sizeof(float));
    ok = m->act[l] && m->dact[l];
  }
  if (!ok) {
    ps_ctr_destroy(&m);
    snprintf(err, errlen, "ctr: out of memory for batches of %zu",
             o->max_batch);
    return NULL;
  }
  return m;
}

void ps_ctr_destroy(ps_ctr_t **m_p) {
  if (m_p == NULL || *m_p == NULL) return;
  ps_ctr_t *m = *m_p;
  free(m->slot);
  free(m->cslot);
  free(m->kp);
  free(m->keys);
  free(m->counts);
  free(m->dz);
  for (size_t l = 0; l <= NLAYERS_MAX; l++) {
    free(m->act[l]);
    free(m->dact[l]);
  }
  free(m);
  *m_p = NULL;
}

const ps_model_t *ps_ctr_model(const ps_ctr_t *m) {
  return &m->model;
}

size_t ps_ctr_num_params(const ps_ctr_t *m) {
  return (size_t)m->model.total;
}

uint32_t ps_ctr_embed_dim(const ps_ctr_t *m) {
  return m->o.embed_dim;
}

void ps_ctr_init_params(const ps_ctr_t *m, float *w) {
  for (size_t i = 0; i < m->model.ntensors; i++) {
    const ps_tensor_spec_t *t = &m->model.tensors[i];
    ps_init_fill(w + t->offset, t->offset, t->length, t->init, t->init_scale,
                 m->model.seed);
  }
}

static int by_key(const void *a, const void *b) {
  uint64_t x = ((const keypos_t *)a)->key, y = ((const keypos_t *)b)->key;
  return (x > y) - (x < y);
}

/* Sorts kp[0, cells), appends its distinct keys to m->keys from index u
 * with their counts, and points slot[pos] at each key's index; returns
 * the new number of keys. */
static size_t add_distinct(ps_ctr_t *m, keypos_t *kp, size_t cells,
                           uint32_t *slot, size_t u) {
  qsort(kp, cells, sizeof(*kp), by_key);
  size_t first = u;
  for (size_t c = 0; c < cells; c++) {
    if (u == first || kp[c].key != m->keys[u - 1]) {
      m->keys[u] = kp[c].key;
      m->counts[u++] = 0;
    }
    m->counts[u - 1]++;
    slot[kp[c].pos] = (uint32_t)(u - 1);
  }
  return u;
}

size_t ps_ctr_batch_keys(ps_ctr_t *m, const ps_criteo_row_t *rows, size_t n,
                         const uint64_t **keys) {
  size_t cells = n * PS_CRITEO_CATEG, nc = m->o.ncross;
  for (size_t b = 0; b < n; b++)
    for (size_t f = 0; f < PS_CRITEO_CATEG; f++) {
      size_t c = b * PS_CRITEO_CATEG + f;
      m->kp[c].key = rows[b].ids[f];
      m->kp[c].pos = (uint32_t)c;
    }
  size_t u = add_distinct(m, m->kp, cells, m->slot, 0);
  m->nfield = u;
  if (nc > 0) {
    keypos_t *kp = m->kp + cells;
    for (size_t b = 0; b < n; b++)
      for (size_t c = 0; c < nc; c++) {
        kp[b * nc + c].key =
            cross_key(&rows[b], m->o.cross_a[c], m->o.cross_b[c]);
        kp[b * nc + c].pos = (uint32_t)(b * nc + c);
      }
    u = add_distinct(m, kp, n * nc, m->cslot, u);
  }
  m->nkeys = u;
  m->nrows = n;
  *keys = m->keys;
  return u;
}

size_t ps_ctr_field_keys(const ps_ctr_t *m) {
  return m->nfield;
}

const uint32_t *ps_ctr_key_counts(const ps_ctr_t *m) {
  return m->counts;
}

/* The input layer: each row's 26 embeddings, its 13 dense features, and
 * the embeddings' pairwise dot products (i < j, row-major). */
static void gather(ps_ctr_t *m, const float *emb, const ps_criteo_row_t *rows,
                   size_t n) {
  size_t d = m->o.embed_dim, in = m->width[0];
  for (size_t b = 0; b < n; b++) {
    float *x = m->act[0] + b * in;
    for (size_t f = 0; f < PS_CRITEO_CATEG; f++)
      memcpy(x + f * d, emb + (size_t)m->slot[b * PS_CRITEO_CATEG + f] * d,
             d * sizeof(float));
    memcpy(x + PS_CRITEO_CATEG * d, rows[b].dense, sizeof(rows[b].dense));
    if (!m->o.dot_interactions) continue;
    float *dots = x + PS_CRITEO_CATEG * d + PS_CRITEO_DENSE;
    for (size_t i = 0; i < PS_CRITEO_CATEG; i++)
      for (size_t j = i + 1; j < PS_CRITEO_CATEG; j++) {
        float s = 0.0f;
        for (size_t k = 0; k < d; k++) s += x[i * d + k] * x[j * d + k];
        *dots++ = s;
      }
  }
}

/* Forward pass: act[nlayers] holds the logits. */
static void forward(ps_ctr_t *m, const float *w, const float *emb,
                    const float *wide, const ps_criteo_row_t *rows, size_t n) {
  gather(m, emb, rows, n);
  for (size_t l = 0; l < m->nlayers; l++) {
    size_t in = m->width[l], out = m->width[l + 1];
    float *y = m->act[l + 1];
    const float *bias = w + m->b_off[l];
    for (size_t b = 0; b < n; b++) memcpy(y + b * out, bias, out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)out,
                (int)in, 1.0f, m->act[l], (int)in, w + m->w_off[l], (int)out,
                1.0f, y, (int)out);
    if (l + 1 < m->nlayers)
      for (size_t i = 0; i < n * out; i++)
        if (y[i] < 0.0f) y[i] = 0.0f;
  }
  float *z = m->act[m->nlayers];
  size_t nc = m->o.ncross;
  for (size_t b = 0; b < n; b++) {
    for (size_t f = 0; f < PS_CRITEO_CATEG; f++)
      z[b] += wide[m->slot[b * PS_CRITEO_CATEG + f]];
    for (size_t c = 0; c < nc; c++) z[b] += wide[m->cslot[b * nc + c]];
  }
}

void ps_ctr_predict(ps_ctr_t *m, const float *w, const float *emb,
                    const float *wide, const ps_criteo_row_t *rows, size_t n,
                    float *p) {
  forward(m, w, emb, wide, rows, n);
  const float *z = m->act[m->nlayers];
  for (size_t b = 0; b < n; b++) p[b] = 1.0f / (1.0f + expf(-z[b]));
}

double ps_ctr_gradient(ps_ctr_t *m, const float *w, const float *emb,
                       const float *wide, const ps_criteo_row_t *rows,
                       size_t n, float *grad, float *gemb, float *gwide) {
  forward(m, w, emb, wide, rows, n);
  size_t L = m->nlayers, d = m->o.embed_dim;
  const float *z = m->act[L];
  double loss = 0.0;
  for (size_t b = 0; b < n; b++) {
    double zb = z[b], y = rows[b].label;
    /* log(1 + e^z) - y z, without overflow. */
    loss += (zb > 0 ? zb : 0.0) + log1p(exp(-fabs(zb))) - y * zb;
    m->dz[b] = (float)((1.0 / (1.0 + exp(-zb)) - y) / (double)n);
  }
  memset(gwide, 0, m->nkeys * sizeof(float));
  size_t nc = m->o.ncross;
  for (size_t b = 0; b < n; b++) {
    for (size_t f = 0; f < PS_CRITEO_CATEG; f++)
      gwide[m->slot[b * PS_CRITEO_CATEG + f]] += m->dz[b];
    for (size_t c = 0; c < nc; c++) gwide[m->cslot[b * nc + c]] += m->dz[b];
  }
  memcpy(m->dact[L], m->dz, n * sizeof(float));
  for (size_t l = L; l-- > 0;) {
    size_t in = m->width[l], out = m->width[l + 1];
    const float *dy = m->dact[l + 1];
    /* dW = x^T dy, db = column sums of dy, dx = dy W^T. */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)in, (int)out,
                (int)n, 1.0f, m->act[l], (int)in, dy, (int)out, 0.0f,
                grad + m->w_off[l], (int)out);
    float *db = grad + m->b_off[l];
    memset(db, 0, out * sizeof(float));
    for (size_t b = 0; b < n; b++)
      for (size_t j = 0; j < out; j++) db[j] += dy[b * out + j];
    float *dx = m->dact[l];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)in,
                (int)out, 1.0f, dy, (int)out, w + m->w_off[l], (int)out, 0.0f,
                dx, (int)in);
    if (l > 0) /* through the ReLU that made act[l] */
      for (size_t i = 0; i < n * in; i++)
        if (m->act[l][i] <= 0.0f) dx[i] = 0.0f;
  }
  memset(gemb, 0, m->nfield * d * sizeof(float));
  size_t in0 = m->width[0];
  for (size_t b = 0; b < n; b++) {
    float *dx = m->dact[0] + b * in0;
    if (m->o.dot_interactions) {
      /* d<e_i, e_j> reaches e_i as that gradient times e_j. */
      const float *x = m->act[0] + b * in0;
      const float *ddots = dx + PS_CRITEO_CATEG * d + PS_CRITEO_DENSE;
      for (size_t i = 0; i < PS_CRITEO_CATEG; i++)
        for (size_t j = i + 1; j < PS_CRITEO_CATEG; j++) {
          float gd = *ddots++;
          for (size_t k = 0; k < d; k++) {
            dx[i * d + k] += gd * x[j * d + k];
            dx[j * d + k] += gd * x[i * d + k];
          }
        }
    }
    for (size_t f = 0; f < PS_CRITEO_CATEG; f++) {
      float *g = gemb + (size_t)m->slot[b * PS_CRITEO_CATEG + f] * d;
      const float *src = dx + f * d;
      for (size_t j = 0; j < d; j++) g[j] += src[j];
    }
  }
  return loss / (double)n;
}
