#include "sparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

/* id -> block of stride floats. Open addressing with linear probing, kept
 * at most half full so probes stay short; slot_row holds block index + 1,
 * 0 marks an empty slot. Blocks sit end to end in creation order, with
 * their ids beside them, so a snapshot walks them without the slots. */
typedef struct {
  size_t stride;
  uint64_t *slot_key;
  uint64_t *slot_row;
  size_t cap; /* slots, a power of two; 0 before the first insert */
  float *data;
  uint64_t *ids;
  uint64_t n, data_cap;
} rowmap_t;

struct ps_sparse_table_s {
  ps_sparse_spec_t spec;
  float lr, momentum;
  int add; /* OPT_ADD: w += g exactly, as a dense shard does */
  uint64_t seed;
  rowmap_t rows;    /* stride: row_floats */
  rowmap_t pending; /* stride: dim; BSP sums of the current step */
};

size_t ps_sparse_row_floats(const ps_sparse_spec_t *spec,
                            const ps_model_t *model) {
  int add = model->optimizer == PS__OPTIMIZER__OPT_ADD;
  return (size_t)spec->dim * (!add && model->momentum > 0 ? 2 : 1);
}

void ps_sparse_init_row(const ps_sparse_spec_t *spec, uint64_t seed,
                        uint64_t id, float *row) {
  /* Element j of row id is key j of a counter stream seeded from (seed,
   * table salt, id): ps_init_fill's generator, so the values have the same
   * distribution as dense weights and depend on nothing else. */
  uint64_t row_seed = ps_mix64(seed ^ ps_mix64(spec->salt + id));
  ps_init_fill(row, 0, spec->dim, spec->init, spec->init_scale, row_seed);
}

static void rowmap_free(rowmap_t *m) {
  free(m->slot_key);
  free(m->slot_row);
  free(m->data);
  free(m->ids);
  size_t stride = m->stride;
  memset(m, 0, sizeof(*m));
  m->stride = stride;
}

/* Ids are often small consecutive integers: mix so they spread. */
static size_t slot_of(uint64_t id, size_t cap) {
  return (size_t)(ps_mix64(id) & (cap - 1));
}

static int rowmap_grow_slots(rowmap_t *m) {
  size_t cap = m->cap ? m->cap * 2 : 1024;
  uint64_t *keys = calloc(cap, sizeof(*keys));
  uint64_t *rows = calloc(cap, sizeof(*rows));
  if (keys == NULL || rows == NULL) {
    free(keys);
    free(rows);
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (m->slot_row[i] == 0) continue;
    size_t j = slot_of(m->slot_key[i], cap);
    while (rows[j] != 0) j = (j + 1) & (cap - 1);
    keys[j] = m->slot_key[i];
    rows[j] = m->slot_row[i];
  }
  free(m->slot_key);
  free(m->slot_row);
  m->slot_key = keys;
  m->slot_row = rows;
  m->cap = cap;
  return PS_OK;
}

static float *rowmap_find(const rowmap_t *m, uint64_t id) {
  if (m->cap == 0) return NULL;
  size_t j = slot_of(id, m->cap);
  while (m->slot_row[j] != 0) {
    if (m->slot_key[j] == id) return m->data + (m->slot_row[j] - 1) * m->stride;
    j = (j + 1) & (m->cap - 1);
  }
  return NULL;
}

/* The block of id; a new one (contents undefined, *created 1) if id has
 * none. NULL on no memory. Valid until the next insert. */
static float *rowmap_get(rowmap_t *m, uint64_t id, int *created) {
  *created = 0;
  float *row = rowmap_find(m, id);
  if (row) return row;
  if ((m->n + 1) * 2 > m->cap && rowmap_grow_slots(m) != PS_OK) return NULL;
  if (m->n == m->data_cap) {
    uint64_t cap = m->data_cap ? m->data_cap * 2 : 1024;
    float *data = realloc(m->data, cap * m->stride * sizeof(float));
    if (data == NULL) return NULL;
    m->data = data;
    uint64_t *ids = realloc(m->ids, cap * sizeof(*ids));
    if (ids == NULL) return NULL;
    m->ids = ids;
    m->data_cap = cap;
  }
  size_t j = slot_of(id, m->cap);
  while (m->slot_row[j] != 0) j = (j + 1) & (m->cap - 1);
  m->ids[m->n] = id;
  m->n++;
  m->slot_key[j] = id;
  m->slot_row[j] = m->n;
  *created = 1;
  return m->data + (m->n - 1) * m->stride;
}

/* Forgets every block, keeping the memory (a step's sums come back). */
static void rowmap_clear(rowmap_t *m) {
  if (m->cap) memset(m->slot_row, 0, m->cap * sizeof(*m->slot_row));
  m->n = 0;
}

ps_sparse_table_t *ps_sparse_table_new(const ps_sparse_spec_t *spec,
                                       const ps_model_t *model) {
  ps_sparse_table_t *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->spec = *spec;
  t->spec.salt = ps_sparse_salt(spec->name);
  t->add = model->optimizer == PS__OPTIMIZER__OPT_ADD;
  t->lr = t->add ? -1.0f : model->learning_rate;
  t->momentum = t->add ? 0.0f : model->momentum;
  t->seed = model->seed;
  t->rows.stride = ps_sparse_row_floats(spec, model);
  t->pending.stride = spec->dim;
  return t;
}

void ps_sparse_table_destroy(ps_sparse_table_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  ps_sparse_table_t *t = *t_p;
  rowmap_free(&t->rows);
  rowmap_free(&t->pending);
  free(t);
  *t_p = NULL;
}

uint32_t ps_sparse_table_dim(const ps_sparse_table_t *t) {
  return t->spec.dim;
}
const char *ps_sparse_table_name(const ps_sparse_table_t *t) {
  return t->spec.name;
}
size_t ps_sparse_table_row_floats(const ps_sparse_table_t *t) {
  return t->rows.stride;
}
uint64_t ps_sparse_table_rows(const ps_sparse_table_t *t) {
  return t->rows.n;
}
uint64_t ps_sparse_table_pending(const ps_sparse_table_t *t) {
  return t->pending.n;
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

/* The row of id, created with the initializer (and zero optimizer state)
 * if new; NULL on no memory, saying which row in err. The pointer is valid
 * until the next row is created. */
static float *row_get(ps_sparse_table_t *t, uint64_t id, char *err,
                      size_t errlen) {
  int created;
  float *row = rowmap_get(&t->rows, id, &created);
  if (row == NULL) {
    if (err && errlen)
      snprintf(err, errlen, "no memory for row %llu of table \"%s\"",
               (unsigned long long)id, t->spec.name);
    return NULL;
  }
  if (created) {
    ps_sparse_init_row(&t->spec, t->seed, id, row);
    if (t->rows.stride > t->spec.dim)
      memset(row + t->spec.dim, 0,
             (t->rows.stride - t->spec.dim) * sizeof(float));
  }
  return row;
}

static void apply_row(ps_sparse_table_t *t, float *row, const float *g,
                      float scale) {
  size_t dim = t->spec.dim;
  ps_apply_sgd(row, t->momentum > 0 ? row + dim : NULL, g, dim, t->lr,
               t->momentum, t->add ? 1.0f : scale);
}

int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, char *err,
                         size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  for (size_t i = 0; i < n; i++) {
    /* Rows before i are applied: the caller reports the failure and the
     * worker's step is lost, as with any server out of memory. */
    float *row = row_get(t, keys[i], err, errlen);
    if (row == NULL) return PS_ERR_NOMEM;
    apply_row(t, row, grads + i * dim, scale);
  }
  return PS_OK;
}

int ps_sparse_table_accumulate(ps_sparse_table_t *t, const uint64_t *keys,
                               size_t n, const float *grads, char *err,
                               size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  for (size_t i = 0; i < n; i++) {
    int created;
    float *sum = rowmap_get(&t->pending, keys[i], &created);
    if (sum == NULL) {
      if (err && errlen)
        snprintf(err, errlen, "no memory for the step's sum of row %llu",
                 (unsigned long long)keys[i]);
      return PS_ERR_NOMEM;
    }
    if (created)
      memcpy(sum, grads + i * dim, dim * sizeof(float));
    else
      ps_accumulate(sum, grads + i * dim, dim);
  }
  return PS_OK;
}

int ps_sparse_table_apply_pending(ps_sparse_table_t *t, float scale) {
  /* Rows first, so a failure leaves every sum in place. */
  for (uint64_t i = 0; i < t->pending.n; i++)
    if (row_get(t, t->pending.ids[i], NULL, 0) == NULL) return PS_ERR_NOMEM;
  for (uint64_t i = 0; i < t->pending.n; i++)
    apply_row(t, rowmap_find(&t->rows, t->pending.ids[i]),
              t->pending.data + i * t->pending.stride, scale);
  rowmap_clear(&t->pending);
  return PS_OK;
}

int ps_sparse_table_pull(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         float *out, char *err, size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  /* A row never pushed reads as its initializer and is not created: a pull
   * changes nothing, so it needs no replication and costs no memory. */
  for (size_t i = 0; i < n; i++) {
    const float *row = rowmap_find(&t->rows, keys[i]);
    if (row)
      memcpy(out + i * dim, row, dim * sizeof(float));
    else
      ps_sparse_init_row(&t->spec, t->seed, keys[i], out + i * dim);
  }
  return PS_OK;
}

const float *ps_sparse_table_row_at(const ps_sparse_table_t *t, uint64_t i,
                                    uint64_t *id) {
  *id = t->rows.ids[i];
  return t->rows.data + i * t->rows.stride;
}

const float *ps_sparse_table_pending_at(const ps_sparse_table_t *t, uint64_t i,
                                        uint64_t *id) {
  *id = t->pending.ids[i];
  return t->pending.data + i * t->pending.stride;
}

static int put_blocks(rowmap_t *m, const uint64_t *keys, size_t n,
                      const float *src) {
  for (size_t i = 0; i < n; i++) {
    int created;
    float *dst = rowmap_get(m, keys[i], &created);
    if (dst == NULL) return PS_ERR_NOMEM;
    memcpy(dst, src + i * m->stride, m->stride * sizeof(float));
  }
  return PS_OK;
}

int ps_sparse_table_put(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                        const float *rows) {
  return put_blocks(&t->rows, keys, n, rows);
}

int ps_sparse_table_put_pending(ps_sparse_table_t *t, const uint64_t *keys,
                                size_t n, const float *sums) {
  return put_blocks(&t->pending, keys, n, sums);
}
