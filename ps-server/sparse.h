/* One range's part of one sparse embedding table (issues #3, #14): a hash
 * map from uint64 feature id to a row, holding the rows whose partition is
 * the range (ps_view_sparse_range). Every copy of the range (primary and
 * backups) holds one per table, changed by the same pushes in the same
 * order, so the rows are replicated, fail over, hand over and snapshot with
 * the range's dense keys.
 *
 * A row is an opaque block of ps_sparse_table_row_floats floats: the dim
 * weights first, then the optimizer's state (dim momentum floats with
 * momentum, none otherwise). Snapshots and checkpoints move whole blocks;
 * only this module knows what is inside one.
 *
 * A row is created by its first push, with the table's initializer; a
 * pull of a row not held returns the initializer and creates nothing. Its weights depend only on (seed, table, id, j), never on
 * which server holds it or when it was created, so any partitioning gives
 * the same bits. Rows are never evicted yet.
 *
 * BSP: a step's pushes are summed per row (ps_sparse_table_accumulate) and
 * applied when the range's dense step is (ps_sparse_table_apply_pending),
 * scaled as the dense step's sum is: so N workers of batch B move a row as
 * one process of batch N * B does, and a row is unchanged until the step
 * completes. ASP: applied on arrival (ps_sparse_table_push).
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

/* Floats per row of spec under model's optimizer: the one place that says
 * how big a row is. */
size_t ps_sparse_row_floats(const ps_sparse_spec_t *spec,
                            const ps_model_t *model);

/* A table for spec under model's optimizer and seed. NULL on no memory.
 * Caller owns it (ps_sparse_table_destroy). */
ps_sparse_table_t *ps_sparse_table_new(const ps_sparse_spec_t *spec,
                                       const ps_model_t *model);

/* NULL-safe; sets *t_p to NULL. */
void ps_sparse_table_destroy(ps_sparse_table_t **t_p);

uint32_t ps_sparse_table_dim(const ps_sparse_table_t *t);
const char *ps_sparse_table_name(const ps_sparse_table_t *t);
size_t ps_sparse_table_row_floats(const ps_sparse_table_t *t);
/* Rows held now. */
uint64_t ps_sparse_table_rows(const ps_sparse_table_t *t);

/* PS_OK if keys[0..n) is strictly ascending; else PS_ERR_INVAL with the
 * first offending position in err. */
int ps_sparse_keys_check(const uint64_t *keys, size_t n, char *err,
                         size_t errlen);

/* Applies SGD to each row: grads holds n rows of dim floats, scaled by
 * scale (ps_shard_push_scale). Keys are checked first; nothing changes on a
 * refusal. */
int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, char *err,
                         size_t errlen);

/* BSP: adds grads (n rows of dim floats) to the current step's sums; the
 * rows do not change. PS_ERR_INVAL (unsorted keys; nothing changed) or
 * PS_ERR_NOMEM (the sums of the keys before the failing one were added, as
 * with ps_sparse_table_push). */
int ps_sparse_table_accumulate(ps_sparse_table_t *t, const uint64_t *keys,
                               size_t n, const float *grads, char *err,
                               size_t errlen);

/* Rows with a sum waiting for the step. */
uint64_t ps_sparse_table_pending(const ps_sparse_table_t *t);

/* Applies every waiting sum, scaled by scale (ps_shard_step_scale), and
 * forgets them. PS_ERR_NOMEM if a row could not be created (sums kept). */
int ps_sparse_table_apply_pending(ps_sparse_table_t *t, float scale);

/* Copies the weights of the rows of keys into out (n * dim floats); a row
 * not held reads as its initializer and is not created. PS_OK or
 * PS_ERR_INVAL (keys not ascending). */
int ps_sparse_table_pull(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         float *out, char *err, size_t errlen);

/* Row i (0 <= i < ps_sparse_table_rows) in creation order: its id and its
 * row_floats floats, valid until the next row is created. For snapshots
 * and checkpoints. */
const float *ps_sparse_table_row_at(const ps_sparse_table_t *t, uint64_t i,
                                    uint64_t *id);
/* The same for the waiting sums (dim floats each). */
const float *ps_sparse_table_pending_at(const ps_sparse_table_t *t, uint64_t i,
                                        uint64_t *id);

/* Replaces (or creates) the rows of keys[0..n) (any order, distinct) with
 * whole blocks from rows (n * row_floats). PS_OK or PS_ERR_NOMEM. */
int ps_sparse_table_put(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                        const float *rows);
/* The same for the waiting sums (n * dim floats). */
int ps_sparse_table_put_pending(ps_sparse_table_t *t, const uint64_t *keys,
                                size_t n, const float *sums);

/* The initial weights of row id in a table with this spec and seed: what a
 * pull of an untouched id returns (tests compare against it). */
void ps_sparse_init_row(const ps_sparse_spec_t *spec, uint64_t seed,
                        uint64_t id, float *row);

#endif
