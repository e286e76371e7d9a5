#include "sparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

/* Open addressing with linear probing, kept at most half full so probes
 * stay short. slot_row holds row index + 1; 0 marks an empty slot. */
struct ps_sparse_table_s {
  ps_sparse_spec_t spec;
  ps_optimizer_spec_t opt;
  ps_lr_schedule_spec_t schedule;
  uint64_t seed;
  size_t stride; /* floats per row: ps_optimizer_row_floats */
  uint64_t *slot_key;
  uint64_t *slot_row;
  size_t cap; /* slots, a power of two */
  float *rows;
  uint64_t nrows, rows_cap;
};

void ps_sparse_init_row(const ps_sparse_spec_t *spec, uint64_t seed,
                        uint64_t id, float *row) {
  /* Element j of row id is key j of a counter stream seeded from (seed,
   * table salt, id): ps_init_fill's generator, so the values have the same
   * distribution as dense weights and depend on nothing else. */
  uint64_t row_seed = ps_mix64(seed ^ ps_mix64(spec->salt + id));
  ps_init_fill(row, 0, spec->dim, spec->init, spec->init_scale, row_seed);
}

ps_sparse_table_t *ps_sparse_table_new(const ps_sparse_spec_t *spec,
                                       const ps_model_t *model) {
  ps_sparse_table_t *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->spec = *spec;
  t->spec.salt = ps_sparse_salt(spec->name);
  ps_model_sparse_optimizer(model, spec, &t->opt);
  t->schedule = model->lr_schedule;
  t->seed = model->seed;
  t->stride = ps_optimizer_row_floats(&t->opt, spec->dim);
  t->cap = 1024;
  t->slot_key = calloc(t->cap, sizeof(*t->slot_key));
  t->slot_row = calloc(t->cap, sizeof(*t->slot_row));
  if (t->slot_key == NULL || t->slot_row == NULL) {
    ps_sparse_table_destroy(&t);
    return NULL;
  }
  return t;
}

void ps_sparse_table_destroy(ps_sparse_table_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  ps_sparse_table_t *t = *t_p;
  free(t->slot_key);
  free(t->slot_row);
  free(t->rows);
  free(t);
  *t_p = NULL;
}

uint32_t ps_sparse_table_dim(const ps_sparse_table_t *t) {
  return t->spec.dim;
}
const char *ps_sparse_table_name(const ps_sparse_table_t *t) {
  return t->spec.name;
}
uint64_t ps_sparse_table_rows(const ps_sparse_table_t *t) {
  return t->nrows;
}

int ps_sparse_keys_check(const uint64_t *keys, size_t n, char *err,
                         size_t errlen) {
  for (size_t i = 1; i < n; i++) {
    if (keys[i] <= keys[i - 1]) {
      if (err && errlen)
        snprintf(err, errlen,
                 "keys are not strictly ascending: key %zu (%llu) after %llu%s",
                 i, (unsigned long long)keys[i],
                 (unsigned long long)keys[i - 1],
                 keys[i] == keys[i - 1] ? " (duplicate)" : "");
      return PS_ERR_INVAL;
    }
  }
  return PS_OK;
}

static size_t slot_of(const ps_sparse_table_t *t, uint64_t id) {
  /* Ids are often small consecutive integers: mix so they spread. */
  return (size_t)(ps_mix64(id) & (t->cap - 1));
}

static int grow_slots(ps_sparse_table_t *t) {
  size_t cap = t->cap * 2;
  uint64_t *keys = calloc(cap, sizeof(*keys));
  uint64_t *rows = calloc(cap, sizeof(*rows));
  if (keys == NULL || rows == NULL) {
    free(keys);
    free(rows);
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < t->cap; i++) {
    if (t->slot_row[i] == 0) continue;
    size_t j = (size_t)(ps_mix64(t->slot_key[i]) & (cap - 1));
    while (rows[j] != 0) j = (j + 1) & (cap - 1);
    keys[j] = t->slot_key[i];
    rows[j] = t->slot_row[i];
  }
  free(t->slot_key);
  free(t->slot_row);
  t->slot_key = keys;
  t->slot_row = rows;
  t->cap = cap;
  return PS_OK;
}

/* The row of id, created with the initializer (and zero state) if new;
 * NULL on no memory. The pointer is valid until the next row is created. */
static float *row_get(ps_sparse_table_t *t, uint64_t id) {
  size_t j = slot_of(t, id);
  while (t->slot_row[j] != 0) {
    if (t->slot_key[j] == id) return t->rows + (t->slot_row[j] - 1) * t->stride;
    j = (j + 1) & (t->cap - 1);
  }
  if ((t->nrows + 1) * 2 > t->cap) {
    if (grow_slots(t) != PS_OK) return NULL;
    j = slot_of(t, id);
    while (t->slot_row[j] != 0) j = (j + 1) & (t->cap - 1);
  }
  if (t->nrows == t->rows_cap) {
    uint64_t cap = t->rows_cap ? t->rows_cap * 2 : 1024;
    float *rows = realloc(t->rows, cap * t->stride * sizeof(float));
    if (rows == NULL) return NULL;
    t->rows = rows;
    t->rows_cap = cap;
  }
  float *row = t->rows + t->nrows * t->stride;
  ps_sparse_init_row(&t->spec, t->seed, id, row);
  if (t->stride > t->spec.dim)
    memset(row + t->spec.dim, 0, (t->stride - t->spec.dim) * sizeof(float));
  t->nrows++;
  t->slot_key[j] = id;
  t->slot_row[j] = t->nrows;
  return row;
}

/* row_get, saying in err which row could not be made. */
static float *row_or_fail(ps_sparse_table_t *t, uint64_t key, char *err,
                          size_t errlen) {
  float *row = row_get(t, key);
  if (row == NULL && err && errlen)
    snprintf(err, errlen, "no memory for row %llu of table \"%s\"",
             (unsigned long long)key, t->spec.name);
  return row;
}

int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, uint64_t step,
                         char *err, size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  float factor = ps_lr_factor(&t->schedule, step);
  for (size_t i = 0; i < n; i++) {
    /* Rows before i are applied: the caller reports the failure and the
     * worker's step is lost, as with any server out of memory. */
    float *row = row_or_fail(t, keys[i], err, errlen);
    if (row == NULL) return PS_ERR_NOMEM;
    ps_optimizer_apply_row(&t->opt, row, dim, grads + i * dim, scale, factor);
  }
  return PS_OK;
}

int ps_sparse_table_pull(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         float *out, char *err, size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  for (size_t i = 0; i < n; i++) {
    float *row = row_or_fail(t, keys[i], err, errlen);
    if (row == NULL) return PS_ERR_NOMEM;
    memcpy(out + i * dim, row, dim * sizeof(float));
  }
  return PS_OK;
}
