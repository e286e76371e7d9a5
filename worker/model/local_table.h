/* A sparse table held by the worker itself, for --standalone training of a
 * model with sparse tables (worker/model/ctr.h): the rows a server would
 * hold, with the same initial values (ps_init_fill's stream of (seed,
 * table salt, id), as ps-server/sparse.c documents) and the same SGD
 * update, in an open-addressing hash map keyed by id. Rows are created on
 * first touch and never evicted. One thread.
 */
#ifndef PS_LOCAL_TABLE_H
#define PS_LOCAL_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

typedef struct ps_local_table_s ps_local_table_t;

/* A table for spec under model's learning rate, momentum and seed. NULL
 * when out of memory. Caller owns it. */
ps_local_table_t *ps_local_table_new(const ps_sparse_spec_t *spec,
                                     const ps_model_t *model);
void ps_local_table_destroy(ps_local_table_t **t_p);

/* Copies the rows of keys[0, n) into out (n x dim), creating missing
 * ones. PS_OK or PS_ERR_NOMEM. */
int ps_local_table_pull(ps_local_table_t *t, const uint64_t *keys, size_t n,
                        float *out);

/* Applies SGD to the rows of keys[0, n) (distinct) with grads (n x dim)
 * and lr_factor the schedule's f(step) (ps_lr_factor), as a server's SGD
 * table applies a push (ps_optimizer_apply_row). PS_OK or PS_ERR_NOMEM. */
int ps_local_table_push(ps_local_table_t *t, const uint64_t *keys, size_t n,
                        const float *grads, float lr_factor);

uint64_t ps_local_table_rows(const ps_local_table_t *t);

#endif
