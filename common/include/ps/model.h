/* The model a worker declares when it registers (ps_client_new): dense
 * tensors laid end to end in one key space, sparse embedding tables, and
 * the optimizer the servers apply on push.
 *
 * Plain data, filled in by the caller; the library copies what it keeps.
 * The scheduler refuses a model that disagrees with the other workers'.
 */
#ifndef PS_MODEL_H
#define PS_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* Longest name of a tensor or sparse table, with its NUL. */
#define PS_NAME_MAX 64

/* Initializers of tensors and sparse rows (the values of ps.proto's Init;
 * common/ checks at compile time that they agree). */
#define PS_INIT_ZERO 0
#define PS_INIT_UNIFORM 1 /* uniform(-init_scale, init_scale), seeded */

/* What the servers do with a pushed gradient g (ps.proto's Optimizer). */
#define PS_OPTIMIZER_SGD 0 /* w -= learning_rate * g, with momentum if set */
#define PS_OPTIMIZER_ADD 1 /* w += g exactly: counters and sums */
#define PS_OPTIMIZER_ADAGRAD 2 /* h += g^2; w -= lr g / (sqrt(h) + epsilon) */
#define PS_OPTIMIZER_ADAM 3    /* with bias correction (beta1, beta2, eps) */
#define PS_OPTIMIZER_FTRL 4    /* FTRL-proximal (alpha = learning_rate) */

/* An optimizer and its settings; common/optimizer.h gives each rule. A
 * setting the kind does not use must be 0 (the scheduler compares them). */
typedef struct {
  int kind;            /* PS_OPTIMIZER_* */
  float learning_rate; /* FTRL: alpha */
  float momentum;      /* SGD: in [0, 1) */
  float beta1, beta2;  /* Adam: in [0, 1) and (0, 1) */
  float epsilon;       /* Adam, Adagrad: > 0 */
  float l1, l2;        /* FTRL: >= 0 */
  float ftrl_beta;     /* FTRL: >= 0 */
} ps_optimizer_spec_t;

/* The factor f(t) the servers put on the learning rate of global step t:
 * linear warm-up (t + 1) / warmup_steps for t < warmup_steps, then
 * constant 1 or a cosine from 1 to 0 over total_steps - warmup_steps. */
#define PS_LR_SCHEDULE_CONSTANT 0
#define PS_LR_SCHEDULE_COSINE 1
/* A worker does not know the job's worker count W when it declares the
 * model: it may give epochs, examples_per_epoch and worker_batch instead
 * of total_steps (left 0), and the scheduler sets total_steps to epochs x
 * floor(examples_per_epoch / (W x worker_batch)). */
typedef struct {
  int kind; /* PS_LR_SCHEDULE_* */
  uint64_t total_steps;
  uint64_t warmup_steps;
  uint64_t epochs, examples_per_epoch, worker_batch; /* 0: total given */
} ps_lr_schedule_spec_t;

/* Encodings of dense payloads on the wire (ps.proto's Codec). */
#define PS_CODEC_NONE 0 /* float32 */
#define PS_CODEC_FP16 1 /* IEEE half, round to nearest even */
#define PS_CODEC_INT8 2 /* int8 with a float32 scale per 256 keys */
#define PS_CODEC_TOPK 3 /* pushes: the largest topk_fraction, error feedback \
                         */

typedef struct {
  char name[PS_NAME_MAX];
  uint64_t offset;
  uint64_t length;
  int init; /* PS_INIT_* */
  float init_scale;
  int has_optimizer; /* 0: the model's default optimizer */
  ps_optimizer_spec_t optimizer;
  /* Codecs (issue #15): how pushes of this tensor travel (PS_CODEC_*), and
   * pulls (none, fp16 or int8); topk_fraction in (0, 1] for
   * PS_CODEC_TOPK pushes, 0 otherwise. All 0: raw float32 both ways. */
  int push_codec;
  int pull_codec;
  float topk_fraction;
} ps_tensor_spec_t;

/* Most floats in one sparse row: a row must stay far below a payload frame. */
#define PS_SPARSE_DIM_MAX 4096

/* A sparse embedding table (issue #3): uint64 ids -> rows of dim floats,
 * outside the dense key space. salt is derived from the name (not on the
 * wire) so that two tables do not put the same ids on the same servers;
 * the library derives it from the name, whatever the caller left in it. */
typedef struct {
  char name[PS_NAME_MAX];
  uint32_t dim;
  int init; /* PS_INIT_* */
  float init_scale;
  uint64_t salt;
  int has_optimizer; /* 0: the model's default optimizer */
  ps_optimizer_spec_t optimizer;
} ps_sparse_spec_t;

/* Tensors must be contiguous from key 0 in declaration order (offset of
 * each = end of the one before), names unique and non-empty, lengths > 0. */
typedef struct {
  size_t ntensors;
  ps_tensor_spec_t *tensors; /* the caller's; the library keeps a copy */
  uint64_t total;            /* sum of lengths == end of the last tensor */
  /* The default optimizer of tensors and tables that name none: these
   * three and the settings below (ps_optimizer_spec_t's). */
  int optimizer; /* PS_OPTIMIZER_* */
  float learning_rate;
  float momentum;
  uint64_t seed;
  size_t nsparse;
  ps_sparse_spec_t *sparse; /* nsparse tables */
  float beta1, beta2, epsilon, l1, l2, ftrl_beta;
  ps_lr_schedule_spec_t lr_schedule;
} ps_model_t;

#endif
