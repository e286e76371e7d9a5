/* A synthetic click-through-rate data set with a known best model.
 *
 * Examples are lines of the Criteo display-advertising format (label, 13
 * integer features, 26 categorical features as 8 hex digits, tab separated,
 * an empty field for a missing value), so the worker reads generated and
 * real Criteo files through one reader (worker/data/criteo.h).
 *
 * Categorical field f draws a rank k in [1, vocab[f]] from a Zipf law of
 * exponent zipf (rejection-inversion sampling, Hormann & Derflinger 1996:
 * O(1) time and no table, so a vocabulary of 10^7 costs nothing), and
 * writes it as a 32-bit id that a bijection of k scrambles, so that
 * frequent ids are not small numbers. Integer features are rounded
 * log-normal counts, some missing, feature 2 (I2) sometimes negative as in
 * Criteo.
 *
 * The label is Bernoulli(sigmoid(z)) of a planted logistic model,
 *   z = bias + sum_f w_f(k_f) + sum_d v_d (log(1 + max(x_d, 0)) - c_d)
 *         + sum over a few field pairs (a, b) of <u_a(k_a), u_b(k_b)>,
 * whose per-id weights and vectors are pure functions of (seed, field, k)
 * (a missing field contributes 0, a missing integer feature counts as 0),
 * so no table of weights is kept either. The dense transform is the
 * reader's, so the planted model is one a trained model can represent.
 *
 * Example i of a split is a pure function of (seed, split, i): a data set
 * is the same bits however and wherever it is generated. A generator is
 * immutable after creation; any thread may use it.
 */
#ifndef PS_CTRGEN_H
#define PS_CTRGEN_H

#include <stddef.h>
#include <stdint.h>

#define PS_CTRGEN_DENSE 13
#define PS_CTRGEN_CATEG 26
#define PS_CTRGEN_MAX_PAIRS 10
/* The longest line ps_ctrgen_example writes, newline included. */
#define PS_CTRGEN_LINE_MAX 512

typedef struct ps_ctrgen_s ps_ctrgen_t;

typedef struct {
  uint64_t seed;
  double zipf;                      /* exponent, > 0 */
  uint64_t vocab[PS_CTRGEN_CATEG];  /* ids per field, in [1, 2^32) */
  uint32_t pairs;                   /* interacting field pairs, <= MAX_PAIRS */
  double bias;                      /* sets the click rate */
  double cat_scale;                 /* deviation of a per-id weight */
  /* The reference models' data (ps_ctrgen_example's ref[]): head_train
   * training examples, head_min_count occurrences for the head model,
   * learn_info the Fisher information of one example about a logit (the
   * mean of p (1 - p) over the training split; 0: no learnable model).
   * head_train 0 (or learn_info 0): the head (learnable) model reads as
   * the planted one. */
  double head_min_count;
  uint64_t head_train;
  double learn_info;
} ps_ctrgen_opts_t;

/* Seed 1, Zipf 1.1, vocabularies log-spaced from 10^2 to 10^7 over the 26
 * fields, 4 pairs, bias -3.0 (a click rate near 0.26, as Criteo's),
 * per-id weights of deviation 0.3. */
void ps_ctrgen_opts_init(ps_ctrgen_opts_t *o);

/* Sets vocab[] log-spaced from lo (field 0) to hi (field 25). PS_ERR_CONFIG
 * with the reason in err when not 1 <= lo <= hi < 2^32. */
int ps_ctrgen_vocab_range(ps_ctrgen_opts_t *o, uint64_t lo, uint64_t hi,
                          char *err, size_t errlen);

/* Returns NULL with the reason in err for bad options. Caller owns the
 * result. */
ps_ctrgen_t *ps_ctrgen_new(const ps_ctrgen_opts_t *o, char *err,
                           size_t errlen);
void ps_ctrgen_destroy(ps_ctrgen_t **g_p);

/* The fields of the i-th pair, for the record of the planted model. */
void ps_ctrgen_pair(const ps_ctrgen_t *g, uint32_t i, int *a, int *b);

/* Reference models scored beside the planted one, each a ceiling on what
 * a model trained on head_train examples can reach:
 * - HEAD: the planted model without the ids expected fewer than
 *   head_min_count times, as if their weights and interaction vectors
 *   were 0 (a model that learns only the ids it sees often);
 * - PAIRLESS: the planted model without its field-pair interactions (a
 *   model that learns every id's weight exactly but no interaction);
 * - LEARNABLE: every id's weight replaced by its posterior mean given its
 *   expected count n in the training split, in the Gaussian approximation:
 *   with prior N(0, s^2) and information n I (I = learn_info),
 *   lambda = n I s^2 / (n I s^2 + 1) and the estimate is
 *   lambda w + sqrt(lambda (1 - lambda)) s e, e standard normal, a pure
 *   function of the id. The interactions and dense weights stay exact, so
 *   it is an upper bound: no model learns the ids' weights better from
 *   that many examples. */
enum {
  PS_CTRGEN_REF_HEAD,
  PS_CTRGEN_REF_PAIRLESS,
  PS_CTRGEN_REF_LEARNABLE,
  PS_CTRGEN_NREF
};

/* Writes example i of split (0: train, 1: test) as one line, newline
 * included, into line (at least PS_CTRGEN_LINE_MAX bytes) and returns its
 * length; *label gets its label, *p the planted model's probability of a
 * click and ref[PS_CTRGEN_NREF] (when not NULL) the reference models'. */
size_t ps_ctrgen_example(const ps_ctrgen_t *g, uint64_t split, uint64_t i,
                         char *line, uint8_t *label, float *p, float *ref);

/* The head model's largest rank (ids are ranked by frequency from 1) of
 * field f; the vocabulary when there is no head model. */
uint64_t ps_ctrgen_head_rank(const ps_ctrgen_t *g, int f);

#endif
