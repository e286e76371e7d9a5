/* One range's part of one sparse embedding table (issues #3, #14): a hash
 * map from uint64 feature id to a row, holding the rows whose partition is
 * the range (ps_view_sparse_range). Every copy of the range (primary and
 * backups) holds one per table, changed by the same pushes in the same
 * order, so the rows are replicated, fail over, hand over and snapshot with
 * the range's dense keys.
 *
 * A row is an opaque block of ps_sparse_table_row_floats floats: the dim
 * weights first, then the table's optimizer state (ps_optimizer_row_floats:
 * k * dim floats for an optimizer of k state slots, and Adam's per-row
 * update count). Snapshots and checkpoints move whole blocks; only this
 * module and common/optimizer know what is inside one.
 *
 * A row is created by its first push, with the table's initializer and
 * zero state; a pull of a row not held returns the initializer and creates
 * nothing. Its weights depend only on (seed, table, id, j), never on
 * which server holds it or when it was created, so any partitioning gives
 * the same bits.
 *
 * A memory cap (ps_sparse_table_set_limits): admission, a row is created
 * only by the admit_after-th push of its id (counted in a count-min sketch,
 * so an estimate that may only err high), earlier pushes are dropped; and
 * eviction, once the table holds more than max_rows rows the least recently
 * pushed go (at the end of the push or step that passed the cap). An
 * evicted or never admitted row reads as its initializer. Both depend only
 * on the pushes and their order, never on pulls or time, so every copy of
 * a range evicts the same rows; a snapshot carries the rows in their
 * recency order and the sketch.
 *
 * BSP: a step's pushes are summed per row (ps_sparse_table_accumulate) and
 * applied when the range's dense step is (ps_sparse_table_apply_pending),
 * scaled as the dense step's sum is: so N workers of batch B move a row as
 * one process of batch N * B does, and a row is unchanged until the step
 * completes. The learning-rate schedule runs on the step as a dense
 * shard's does: an SGD table puts the factor on each contribution as it
 * is summed, the others on their rate when the step is applied. ASP:
 * applied on arrival, at the push's step (ps_sparse_table_push).
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

/* Counters for metrics and tests. */
typedef struct {
  uint64_t rows;         /* held now */
  uint64_t evictions;    /* rows evicted by the cap */
  uint64_t not_admitted; /* row pushes dropped before admission */
  /* The rows' hash index grows incrementally: slots now, 1 while an old
   * index is being drained into it, old slots moved across in total,
   * slots of grown indices zeroed (ahead of use) in total. */
  uint64_t index_slots;
  int rehashing;
  uint64_t rehash_slots;
  uint64_t zero_slots;
} ps_sparse_stats_t;

/* What one operation on a row (an insert, lookup or removal) does of an
 * index growth: zero PS_SPARSE_ZERO_STEP slots of the new index, or once
 * that is done move PS_SPARSE_REHASH_STEP slots of the old one into it.
 * So a call's share of a growth is bounded by its keys, and no push, pull
 * or eviction does work in proportion to the table's size. */
#define PS_SPARSE_REHASH_STEP 32
#define PS_SPARSE_ZERO_STEP 64

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

/* Caps an empty table: at most max_rows rows (0: no cap), a row created by
 * the admit_after-th push of its id (0 or 1: the first). PS_OK,
 * PS_ERR_INVAL (the table has rows) or PS_ERR_NOMEM. */
int ps_sparse_table_set_limits(ps_sparse_table_t *t, uint64_t max_rows,
                               uint32_t admit_after);
uint64_t ps_sparse_table_max_rows(const ps_sparse_table_t *t);
void ps_sparse_table_stats(const ps_sparse_table_t *t, ps_sparse_stats_t *out);

/* For tests: 1 if the hash indices agree with the rows (each row found
 * by its id, no slot too many or stale), else 0. O(rows + slots). */
int ps_sparse_table_consistent(const ps_sparse_table_t *t);

uint32_t ps_sparse_table_dim(const ps_sparse_table_t *t);
const char *ps_sparse_table_name(const ps_sparse_table_t *t);
size_t ps_sparse_table_row_floats(const ps_sparse_table_t *t);
/* Rows held now. */
uint64_t ps_sparse_table_rows(const ps_sparse_table_t *t);

/* PS_OK if keys[0..n) is strictly ascending; else PS_ERR_INVAL with the
 * first offending position in err. */
int ps_sparse_keys_check(const uint64_t *keys, size_t n, char *err,
                         size_t errlen);

/* Applies the table's optimizer to each row: grads holds n rows of dim
 * floats, scaled by scale (ps_shard_push_scale), at the learning-rate
 * schedule's step (the push's). Keys are checked first; nothing changes
 * on a refusal. */
int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, uint64_t step,
                         char *err, size_t errlen);

/* BSP: adds grads (n rows of dim floats) to the sums of step `step` (the
 * range's clock; an SGD table's times the schedule's factor); the rows do
 * not change. PS_ERR_INVAL (unsorted keys; nothing changed) or
 * PS_ERR_NOMEM (the sums of the keys before the failing one were added, as
 * with ps_sparse_table_push). */
int ps_sparse_table_accumulate(ps_sparse_table_t *t, const uint64_t *keys,
                               size_t n, const float *grads, uint64_t step,
                               char *err, size_t errlen);

/* Rows with a sum waiting for the step. */
uint64_t ps_sparse_table_pending(const ps_sparse_table_t *t);

/* Applies every waiting sum, scaled by scale (ps_shard_step_scale), as
 * BSP step `step` (the schedule's), and forgets them. PS_ERR_NOMEM if a
 * row could not be created (sums kept). */
int ps_sparse_table_apply_pending(ps_sparse_table_t *t, float scale,
                                  uint64_t step);

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
/* The rows' indices for ps_sparse_table_row_at, least recently pushed
 * first (creation order for an uncapped table): a snapshot sent in this
 * order and put in this order keeps the recency order. UINT64_MAX ends. */
uint64_t ps_sparse_table_lru_first(const ps_sparse_table_t *t);
uint64_t ps_sparse_table_lru_next(const ps_sparse_table_t *t, uint64_t i);

/* The admission sketch, for snapshots: its cells (0 when the table has
 * none), and replacing them (n must be that count: else PS_ERR_INVAL). */
size_t ps_sparse_table_sketch_cells(const ps_sparse_table_t *t);
const uint32_t *ps_sparse_table_sketch(const ps_sparse_table_t *t);
int ps_sparse_table_put_sketch(ps_sparse_table_t *t, const uint32_t *cells,
                               size_t n);

/* The same for the waiting sums (dim floats each). */
const float *ps_sparse_table_pending_at(const ps_sparse_table_t *t, uint64_t i,
                                        uint64_t *id);

/* Replaces (or creates) the rows of keys[0..n) (any order, distinct) with
 * whole blocks from rows (n * row_floats), each the most recently pushed
 * in turn (then the cap applies). PS_OK or PS_ERR_NOMEM. */
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
