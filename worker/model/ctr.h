/* A click-through-rate model over Criteo rows (worker/data/criteo.h), in
 * the manner of wide & deep / DLRM:
 *
 *   logit = mlp([e_1(c_1), ..., e_26(c_26), dense, <e_i, e_j> for i < j])
 *           + sum_f wide_f(c_f)
 *   p = sigmoid(logit), loss = binary cross-entropy
 *
 * The 325 pairwise dot products of the embeddings are DLRM's interaction
 * layer: an MLP learns products of its inputs poorly, and field pairs that
 * act together are what a CTR model is for. Off by default: on the
 * generated data they did not pay for their cost (README).
 *
 * e_f is field f's embedding (dim floats) and wide_f its weight (one
 * float) of categorical id c_f; the MLP has ReLU hidden layers and one
 * output. Parameters live in two places:
 *  - dense: the MLP's tensors end to end in one key space, fc1.weight (in x
 *    out, row-major), fc1.bias, fc2.weight, ... (as worker/model/mlp.h);
 *  - sparse: table "ctr.emb" (dim floats per id) and "ctr.wide" (1 float).
 *    Every field has its own ids (the reader hashes (field, id): one table
 *    with field-salted ids is 26 tables in one), so a step is one pull and
 *    one push per table, not 26.
 *
 * A step: ps_ctr_batch_keys gives the batch's distinct ids (the rows to
 * pull, in that order), then ps_ctr_gradient computes the mean loss and its
 * gradients: dense ones in the key space's layout, sparse ones as one row
 * per distinct id (only those are pushed). The math runs on the host with
 * OpenBLAS: the embedding gather and scatter are host work, and the MLP is
 * small. A ps_ctr_t belongs to one thread.
 */
#ifndef PS_CTR_H
#define PS_CTR_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"
#include "worker/data/criteo.h"

#define PS_CTR_MAX_HIDDEN 4
#define PS_CTR_MAX_CROSSES 32
#define PS_CTR_EMB_TABLE "ctr.emb"
#define PS_CTR_WIDE_TABLE "ctr.wide"

typedef struct ps_ctr_s ps_ctr_t;

typedef struct {
  uint32_t embed_dim; /* in [1, 64]; default 16 */
  size_t nhidden;     /* hidden layers, in [1, PS_CTR_MAX_HIDDEN] */
  uint32_t hidden[PS_CTR_MAX_HIDDEN]; /* default 256, 128 */
  float emb_init;     /* embeddings start uniform(+-this); default 0.05 */
  int dot_interactions; /* 1: the pairwise dot products too (default 0) */
  /* Crossed fields (wide&deep's cross-product features): for each pair
   * (cross_a[c], cross_b[c]) of field indexes, a row's pair of ids is one
   * more id of the wide table, so the model learns a weight per pair of
   * ids seen together. Default none. */
  size_t ncross;
  uint8_t cross_a[PS_CTR_MAX_CROSSES], cross_b[PS_CTR_MAX_CROSSES];
  /* Written into the model spec: the servers apply the optimizer. */
  float learning_rate;
  float momentum;
  uint64_t seed;
  /* The learning-rate schedule the servers apply to the dense tensors and
   * both tables (ps/model.h); default constant, no warm-up. */
  ps_lr_schedule_spec_t lr_schedule;
  size_t max_batch; /* most rows given to one call */
  /* 1: both sparse tables declare sparse_optimizer (Adagrad, FTRL: a rate
   * per row, which ids drawn from a Zipf law want); 0: the model's SGD. */
  int has_sparse_optimizer;
  ps_optimizer_spec_t sparse_optimizer;
} ps_ctr_opts_t;

void ps_ctr_opts_init(ps_ctr_opts_t *o);

/* Parses "256,128" into o->hidden. PS_ERR_CONFIG with the reason in err. */
int ps_ctr_parse_hidden(ps_ctr_opts_t *o, const char *list, char *err,
                        size_t errlen);

/* Parses "1x2,3x4" (Criteo's field numbers, C1 to C26) into o's crosses;
 * "" for none. PS_ERR_CONFIG with the reason in err. */
int ps_ctr_parse_cross(ps_ctr_opts_t *o, const char *list, char *err,
                       size_t errlen);

/* NULL with err filled on bad options or no memory. Caller owns it. */
ps_ctr_t *ps_ctr_new(const ps_ctr_opts_t *o, char *err, size_t errlen);
void ps_ctr_destroy(ps_ctr_t **m_p);

/* The spec a worker declares (dense tensors, the two sparse tables, SGD,
 * the schedule of the options). Owned by the model. */
const ps_model_t *ps_ctr_model(const ps_ctr_t *m);
size_t ps_ctr_num_params(const ps_ctr_t *m);
uint32_t ps_ctr_embed_dim(const ps_ctr_t *m);

/* The initial dense parameters (what the servers start from). */
void ps_ctr_init_params(const ps_ctr_t *m, float *w);

/* The distinct ids of rows[0, n) (n <= max_batch) in *keys (owned by the
 * model, valid until the next call); returns how many. The fields' ids
 * come first, ascending: the first ps_ctr_field_keys of them, the keys of
 * both tables; the crossed ids follow, ascending, keys of the wide table
 * only. The model remembers where each row's ids are among them for the
 * next ps_ctr_gradient or ps_ctr_predict on the same rows. */
size_t ps_ctr_batch_keys(ps_ctr_t *m, const ps_criteo_row_t *rows, size_t n,
                         const uint64_t **keys);

/* How many of the last ps_ctr_batch_keys' keys are fields' ids (rows of
 * the embedding table too); the rest are crossed ids. */
size_t ps_ctr_field_keys(const ps_ctr_t *m);

/* How often each key of the last ps_ctr_batch_keys occurs in its rows
 * (owned by the model, in the keys' order). */
const uint32_t *ps_ctr_key_counts(const ps_ctr_t *m);

/* Forward and backward on the rows of the last ps_ctr_batch_keys, with
 * dense parameters w, emb the embedding rows of its field keys (nfield x
 * dim) and wide the wide rows of all its keys (nkeys floats). Writes the
 * gradient of the mean loss into grad (num_params floats), gemb (nfield x
 * dim) and gwide (nkeys), and returns the mean loss. */
double ps_ctr_gradient(ps_ctr_t *m, const float *w, const float *emb,
                       const float *wide, const ps_criteo_row_t *rows,
                       size_t n, float *grad, float *gemb, float *gwide);

/* Click probabilities of the rows of the last ps_ctr_batch_keys into p. */
void ps_ctr_predict(ps_ctr_t *m, const float *w, const float *emb,
                    const float *wide, const ps_criteo_row_t *rows, size_t n,
                    float *p);

#endif
