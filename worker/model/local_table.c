#include "worker/model/local_table.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

struct ps_local_table_s {
  ps_sparse_spec_t spec;
  ps_optimizer_spec_t opt; /* SGD at the model's rate and momentum */
  uint64_t seed;
  size_t stride; /* floats per row: ps_optimizer_row_floats */
  size_t cap;    /* slots, a power of two */
  uint64_t *slot_key;
  uint64_t *slot_row; /* row index + 1; 0: empty */
  float *rows;
  uint64_t nrows, rows_cap;
};

ps_local_table_t *ps_local_table_new(const ps_sparse_spec_t *spec,
                                     const ps_model_t *model) {
  ps_local_table_t *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->spec = *spec;
  t->spec.salt = ps_sparse_salt(spec->name);
  t->opt = (ps_optimizer_spec_t){.kind = PS_OPTIMIZER_SGD,
                                 .learning_rate = model->learning_rate,
                                 .momentum = model->momentum};
  t->seed = model->seed;
  t->stride = ps_optimizer_row_floats(&t->opt, spec->dim);
  t->cap = 1024;
  t->slot_key = calloc(t->cap, sizeof(*t->slot_key));
  t->slot_row = calloc(t->cap, sizeof(*t->slot_row));
  if (t->slot_key == NULL || t->slot_row == NULL) ps_local_table_destroy(&t);
  return t;
}

void ps_local_table_destroy(ps_local_table_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  free((*t_p)->slot_key);
  free((*t_p)->slot_row);
  free((*t_p)->rows);
  free(*t_p);
  *t_p = NULL;
}

uint64_t ps_local_table_rows(const ps_local_table_t *t) {
  return t->nrows;
}

static size_t slot_of(const ps_local_table_t *t, uint64_t key) {
  size_t mask = t->cap - 1, j = (size_t)ps_mix64(key ^ t->spec.salt) & mask;
  while (t->slot_row[j] != 0 && t->slot_key[j] != key) j = (j + 1) & mask;
  return j;
}

static int grow(ps_local_table_t *t) {
  size_t cap = t->cap * 2;
  uint64_t *keys = calloc(cap, sizeof(*keys)), *rows = calloc(cap, sizeof(*rows));
  if (keys == NULL || rows == NULL) {
    free(keys);
    free(rows);
    return PS_ERR_NOMEM;
  }
  uint64_t *old_keys = t->slot_key, *old_rows = t->slot_row;
  size_t old_cap = t->cap;
  t->slot_key = keys;
  t->slot_row = rows;
  t->cap = cap;
  for (size_t i = 0; i < old_cap; i++)
    if (old_rows[i]) {
      size_t j = slot_of(t, old_keys[i]);
      t->slot_key[j] = old_keys[i];
      t->slot_row[j] = old_rows[i];
    }
  free(old_keys);
  free(old_rows);
  return PS_OK;
}

/* The row of key, made with the table's initializer if new; NULL when out
 * of memory. */
static float *row_get(ps_local_table_t *t, uint64_t key) {
  size_t j = slot_of(t, key);
  if (t->slot_row[j]) return t->rows + (t->slot_row[j] - 1) * t->stride;
  if ((t->nrows + 1) * 2 > t->cap) { /* load factor <= 1/2 */
    if (grow(t) != PS_OK) return NULL;
    j = slot_of(t, key);
  }
  if (t->nrows == t->rows_cap) {
    uint64_t cap = t->rows_cap ? t->rows_cap * 2 : 1024;
    float *rows = realloc(t->rows, cap * t->stride * sizeof(float));
    if (rows == NULL) return NULL;
    t->rows = rows;
    t->rows_cap = cap;
  }
  float *row = t->rows + t->nrows * t->stride;
  uint64_t row_seed = ps_mix64(t->seed ^ ps_mix64(t->spec.salt + key));
  ps_init_fill(row, 0, t->spec.dim, t->spec.init, t->spec.init_scale,
               row_seed);
  if (t->stride > t->spec.dim)
    memset(row + t->spec.dim, 0, t->spec.dim * sizeof(float));
  t->nrows++;
  t->slot_key[j] = key;
  t->slot_row[j] = t->nrows;
  return row;
}

int ps_local_table_pull(ps_local_table_t *t, const uint64_t *keys, size_t n,
                        float *out) {
  size_t dim = t->spec.dim;
  for (size_t i = 0; i < n; i++) {
    float *row = row_get(t, keys[i]);
    if (row == NULL) return PS_ERR_NOMEM;
    memcpy(out + i * dim, row, dim * sizeof(float));
  }
  return PS_OK;
}

int ps_local_table_push(ps_local_table_t *t, const uint64_t *keys, size_t n,
                        const float *grads, float lr_factor) {
  size_t dim = t->spec.dim;
  for (size_t i = 0; i < n; i++) {
    float *row = row_get(t, keys[i]);
    if (row == NULL) return PS_ERR_NOMEM;
    ps_optimizer_apply_row(&t->opt, row, t->spec.dim, grads + i * dim, 1.0f,
                           lr_factor);
  }
  return PS_OK;
}
