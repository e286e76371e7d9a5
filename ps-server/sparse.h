/* A server's part of one sparse embedding table (issue #3): a hash map from
 * uint64 feature id to a row of dim floats followed by the table's
 * optimizer state (ps_optimizer_row_floats: k * dim floats, and Adam's
 * per-row update count), holding the rows this server owns
 * (ps_view_sparse_owner).
 *
 * A row is created on first touch, by a push or a pull, with the table's
 * initializer. Its values depend only on (seed, table, id, j), never on
 * which server holds it or when it was created, so any partitioning gives
 * the same bits. Rows are never evicted yet.
 *
 * Keys of one call must be strictly ascending (clients sort them): the
 * table refuses anything else, so a duplicate can never be applied twice in
 * one request. One thread (the server's loop).
 */
#ifndef PS_SERVER_SPARSE_H
#define PS_SERVER_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

typedef struct ps_sparse_table_s ps_sparse_table_t;

/* A table for spec under model's optimizer and seed. NULL on no memory. */
ps_sparse_table_t *ps_sparse_table_new(const ps_sparse_spec_t *spec,
                                       const ps_model_t *model);

void ps_sparse_table_destroy(ps_sparse_table_t **t_p);

uint32_t ps_sparse_table_dim(const ps_sparse_table_t *t);
const char *ps_sparse_table_name(const ps_sparse_table_t *t);
/* Rows created so far. */
uint64_t ps_sparse_table_rows(const ps_sparse_table_t *t);

/* PS_OK if keys[0..n) is strictly ascending; else PS_ERR_INVAL with the
 * first offending position in err. */
int ps_sparse_keys_check(const uint64_t *keys, size_t n, char *err,
                         size_t errlen);

/* Applies the table's optimizer to each row: grads holds n rows of dim
 * floats, scaled by scale (1 / live workers), at the learning-rate
 * schedule's step (the push's). Keys are checked first; nothing changes
 * on a refusal. */
int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, uint64_t step,
                         char *err, size_t errlen);

/* Copies the rows of keys into out (n * dim floats), creating missing
 * ones. */
int ps_sparse_table_pull(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         float *out, char *err, size_t errlen);

/* The initial row of id in a table with this spec and seed: what a pull of
 * an untouched id returns (tests compare against it). */
void ps_sparse_init_row(const ps_sparse_spec_t *spec, uint64_t seed,
                        uint64_t id, float *row);

#endif
