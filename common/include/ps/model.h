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

typedef struct {
  char name[PS_NAME_MAX];
  uint64_t offset;
  uint64_t length;
  int init; /* PS_INIT_* */
  float init_scale;
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
} ps_sparse_spec_t;

/* Tensors must be contiguous from key 0 in declaration order (offset of
 * each = end of the one before), names unique and non-empty, lengths > 0. */
typedef struct {
  size_t ntensors;
  ps_tensor_spec_t *tensors; /* the caller's; the library keeps a copy */
  uint64_t total;            /* sum of lengths == end of the last tensor */
  int optimizer;             /* PS_OPTIMIZER_* */
  float learning_rate;
  float momentum;
  uint64_t seed;
  size_t nsparse;
  ps_sparse_spec_t *sparse; /* nsparse tables */
} ps_model_t;

#endif
