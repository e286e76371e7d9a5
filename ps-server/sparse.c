#include "sparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

/* id -> block of stride floats, grown without a pause (the server's loop
 * must answer heartbeats while a table of millions of rows grows).
 *
 * The index: open addressing with linear probing, kept at most three
 * quarters full. A slot is one uint64: the low 32 bits of the id's hash
 * (its tag, which also gives its home slot) above block index + 1 (0 marks
 * an empty slot), so a probe reads one array and compares an id only when
 * the tag matches, and a row costs 8 bytes per slot (1.33 to 2.67 slots a
 * row). A full index is not rehashed in one go, as Redis's dict is not: a
 * twice as big one is allocated and zeroed PS_SPARSE_ZERO_STEP slots an
 * operation (its pages fault in a little at a time, not all at the first
 * insert: hundreds of ms for a big table), the full one taking the inserts
 * meanwhile (three quarters full, it has room for them); then new ids go
 * into the new one and every operation moves the next
 * PS_SPARSE_REHASH_STEP slots of the old one across, so the old is empty
 * long before the new one fills. Until then a lookup probes both. A slot that leaves the old index (moved, or its block
 * removed) becomes TOMB there, never 0, so the old one's probe sequences
 * stay whole without shifting anything.
 *
 * The blocks: in creation order, with their ids beside them (a snapshot
 * walks them without the index), in chunks of CHUNK_ROWS blocks, so growth
 * adds a chunk and never copies rows (the first chunk grows by doubling up
 * to that, so a small table stays small). At most ROWS_MAX blocks, so an
 * index + 1 fits 32 bits (and never reads as TOMB) and the slots never
 * outgrow what a 32-bit tag can place. */
#define CHUNK_SHIFT 16
#define CHUNK_ROWS ((uint64_t)1 << CHUNK_SHIFT)
#define CHUNK_MASK (CHUNK_ROWS - 1)

typedef struct {
  float *data;
  uint64_t *ids;
  uint32_t *prev, *next; /* the LRU list's links, when kept */
} chunk_t;

typedef struct {
  size_t stride;
  uint64_t *slots;
  size_t cap;     /* slots, a power of two; 0 before the first insert */
  uint64_t *old;  /* the index being drained into slots; NULL: none */
  size_t old_cap, old_next; /* its slots; the next one to move */
  uint64_t *fresh; /* the next index, being zeroed; NULL: none */
  size_t fresh_zeroed; /* its slots zeroed (it has 2 * cap) */
  chunk_t *chunks;
  size_t nchunks, chunks_cap; /* chunks in use; entries of the array */
  uint64_t n, data_cap;       /* blocks held; blocks the chunks have room for */
  /* Least recently pushed first: a doubly linked list over block indices
   * (NONE32 ends it), kept only for the rows of a capped table. */
  uint32_t head, tail;
  int lru;
  uint64_t rehash_slots; /* old slots moved (visited) in total */
  uint64_t zero_slots;   /* slots of grown indices zeroed in total */
} rowmap_t;

#define TOMB ((uint64_t)UINT32_MAX)
#define NONE32 UINT32_MAX
#define ROWS_MAX ((uint64_t)UINT32_MAX / 4 * 3)
#define NONE UINT64_MAX

/* Count-min sketch of how often each id was pushed (admission): DEPTH
 * rows of WIDTH saturating counters. */
#define SKETCH_DEPTH 4
#define SKETCH_WIDTH 4096

struct ps_sparse_table_s {
  ps_sparse_spec_t spec;
  ps_optimizer_spec_t opt;
  ps_lr_schedule_spec_t schedule;
  uint64_t seed;
  rowmap_t rows;    /* stride: row_floats */
  rowmap_t pending; /* stride: dim; BSP sums of the current step */
  /* The cap (ps_sparse_table_set_limits); 0 / 1: none. */
  uint64_t max_rows;
  uint32_t admit_after;
  uint32_t *sketch; /* SKETCH_DEPTH * SKETCH_WIDTH, when admit_after > 1 */
  ps_sparse_stats_t stats;
};

size_t ps_sparse_row_floats(const ps_sparse_spec_t *spec,
                            const ps_model_t *model) {
  ps_optimizer_spec_t o;
  ps_model_sparse_optimizer(model, spec, &o);
  return ps_optimizer_row_floats(&o, spec->dim);
}

void ps_sparse_init_row(const ps_sparse_spec_t *spec, uint64_t seed,
                        uint64_t id, float *row) {
  /* Element j of row id is key j of a counter stream seeded from (seed,
   * table salt, id): ps_init_fill's generator, so the values have the same
   * distribution as dense weights and depend on nothing else. */
  uint64_t row_seed = ps_mix64(seed ^ ps_mix64(spec->salt + id));
  ps_init_fill(row, 0, spec->dim, spec->init, spec->init_scale, row_seed);
}

static float *block_at(const rowmap_t *m, uint64_t i) {
  return m->chunks[i >> CHUNK_SHIFT].data + (i & CHUNK_MASK) * m->stride;
}
static uint64_t *id_at(const rowmap_t *m, uint64_t i) {
  return &m->chunks[i >> CHUNK_SHIFT].ids[i & CHUNK_MASK];
}
static uint32_t *prev_at(const rowmap_t *m, uint32_t i) {
  return &m->chunks[i >> CHUNK_SHIFT].prev[i & CHUNK_MASK];
}
static uint32_t *next_at(const rowmap_t *m, uint32_t i) {
  return &m->chunks[i >> CHUNK_SHIFT].next[i & CHUNK_MASK];
}

static void rowmap_free(rowmap_t *m) {
  free(m->slots);
  free(m->old);
  free(m->fresh);
  /* Every entry: a chunk whose allocation failed half-way holds some. */
  for (size_t c = 0; c < m->chunks_cap; c++) {
    free(m->chunks[c].data);
    free(m->chunks[c].ids);
    free(m->chunks[c].prev);
    free(m->chunks[c].next);
  }
  free(m->chunks);
  size_t stride = m->stride;
  int lru = m->lru;
  memset(m, 0, sizeof(*m));
  m->stride = stride;
  m->lru = lru;
  m->head = m->tail = NONE32;
}

static void lru_unlink(rowmap_t *m, uint32_t i) {
  uint32_t p = *prev_at(m, i), n = *next_at(m, i);
  if (p != NONE32) *next_at(m, p) = n; else m->head = n;
  if (n != NONE32) *prev_at(m, n) = p; else m->tail = p;
}

static void lru_append(rowmap_t *m, uint32_t i) {
  *prev_at(m, i) = m->tail;
  *next_at(m, i) = NONE32;
  if (m->tail != NONE32) *next_at(m, m->tail) = i; else m->head = i;
  m->tail = i;
}

/* Marks block i the most recently pushed. */
static void lru_touch(rowmap_t *m, uint64_t i) {
  if (!m->lru || m->tail == (uint32_t)i) return;
  lru_unlink(m, (uint32_t)i);
  lru_append(m, (uint32_t)i);
}

/* A slot's parts (see rowmap_t). Ids are often small consecutive
 * integers: mixed so they spread. */
static uint32_t tag_of(uint64_t id) { return (uint32_t)ps_mix64(id); }
static uint64_t slot_make(uint32_t tag, uint64_t i) {
  return (uint64_t)tag << 32 | (i + 1);
}
static uint32_t slot_tag(uint64_t slot) { return (uint32_t)(slot >> 32); }
static uint64_t slot_index(uint64_t slot) {
  return (slot & UINT32_MAX) - 1;
}
/* A slot that holds a block (neither empty nor TOMB). */
static int slot_live(uint64_t slot) { return slot != 0 && slot != TOMB; }

/* After a big array was freed (bytes: its size): it may lie inside glibc's
 * heap (below its mmap threshold, which rises as big blocks are freed),
 * still resident. Hand it back: this happens a logarithmic number of
 * times, so the trim's cost does not matter. */
static void release_freed(size_t bytes) {
#ifdef __GLIBC__
  if (bytes >= ((size_t)1 << 20)) malloc_trim(0);
#else
  (void)bytes;
#endif
}

/* Puts slot sl (a block's) into the current index, which has room. */
static void slot_place(rowmap_t *m, uint64_t sl) {
  size_t mask = m->cap - 1, j = slot_tag(sl) & mask;
  while (m->slots[j] != 0) j = (j + 1) & mask;
  m->slots[j] = sl;
}

/* Moves up to budget slots of the old index into the current one; frees
 * the old one once it is drained. */
static void rehash_slots(rowmap_t *m, size_t budget) {
  if (m->old == NULL) return;
  size_t end = m->old_cap - m->old_next > budget ? m->old_next + budget
                                                 : m->old_cap;
  for (size_t j = m->old_next; j < end; j++) {
    uint64_t sl = m->old[j];
    if (!slot_live(sl)) continue;
    slot_place(m, sl);
    m->old[j] = TOMB;
  }
  m->rehash_slots += end - m->old_next;
  m->old_next = end;
  if (end == m->old_cap) {
    free(m->old);
    m->old = NULL;
    release_freed(m->old_cap * sizeof(uint64_t));
    m->old_cap = m->old_next = 0;
  }
}

/* Zeroes up to budget more slots of the next index; once it is whole, it
 * becomes the current one and the full one starts to drain. */
static void zero_slots(rowmap_t *m, size_t budget) {
  if (m->fresh == NULL) return;
  size_t cap = m->cap * 2, left = cap - m->fresh_zeroed;
  size_t k = left > budget ? budget : left;
  memset(m->fresh + m->fresh_zeroed, 0, k * sizeof(*m->fresh));
  m->fresh_zeroed += k;
  m->zero_slots += k;
  if (m->fresh_zeroed < cap) return;
  m->old = m->slots;
  m->old_cap = m->cap;
  m->old_next = 0;
  m->slots = m->fresh;
  m->cap = cap;
  m->fresh = NULL;
}

/* One operation's share of an index growth. */
static void rehash_step(rowmap_t *m) {
  if (m->fresh) zero_slots(m, PS_SPARSE_ZERO_STEP);
  else rehash_slots(m, PS_SPARSE_REHASH_STEP);
}

/* Makes room for one more slot: at three quarters' load starts a growth,
 * which later operations carry out (rehash_step). The full index takes
 * inserts until the new one is zeroed, up to seven eighths' load: with a
 * step of PS_SPARSE_ZERO_STEP slots an operation, the zeroing is done
 * long before that (after a sixteenth of the index in operations), as the
 * draining is before the new index fills, so the loops that finish a
 * stage at once are a safety net, not a pause that happens. */
static int rowmap_reserve_slot(rowmap_t *m) {
  uint64_t need = (m->n + 1) * 8;
  if (m->cap == 0) {
    m->slots = calloc(1024, sizeof(*m->slots));
    if (m->slots == NULL) return PS_ERR_NOMEM;
    m->cap = 1024;
    return PS_OK;
  }
  if (m->fresh && need > (uint64_t)m->cap * 7)
    zero_slots(m, m->cap * 2);
  if (m->fresh == NULL && need > (uint64_t)m->cap * 6) {
    if (m->old) rehash_slots(m, m->old_cap);
    m->fresh = malloc(m->cap * 2 * sizeof(*m->fresh));
    if (m->fresh == NULL) return PS_ERR_NOMEM;
    m->fresh_zeroed = 0;
  }
  return PS_OK;
}

/* The slot (in either index) that holds id's block, or NULL. */
static uint64_t *slot_of_id(const rowmap_t *m, uint64_t id) {
  if (m->cap == 0) return NULL;
  uint32_t tag = tag_of(id);
  size_t mask = m->cap - 1;
  for (size_t j = tag & mask; m->slots[j] != 0; j = (j + 1) & mask) {
    uint64_t sl = m->slots[j];
    if (slot_tag(sl) == tag && *id_at(m, slot_index(sl)) == id)
      return &m->slots[j];
  }
  if (m->old == NULL) return NULL;
  mask = m->old_cap - 1;
  for (size_t j = tag & mask; m->old[j] != 0; j = (j + 1) & mask) {
    uint64_t sl = m->old[j];
    if (sl != TOMB && slot_tag(sl) == tag && *id_at(m, slot_index(sl)) == id)
      return &m->old[j];
  }
  return NULL;
}

/* The slot that holds block i: in the current index (*old 0) or the old
 * one (*old 1). */
static uint64_t *slot_of_block(const rowmap_t *m, uint64_t i, int *old) {
  uint32_t tag = tag_of(*id_at(m, i));
  size_t mask = m->cap - 1;
  *old = 0;
  for (size_t j = tag & mask; m->slots[j] != 0; j = (j + 1) & mask)
    if (slot_index(m->slots[j]) == i) return &m->slots[j];
  *old = 1;
  mask = m->old_cap - 1;
  size_t j = tag & mask;
  while (!slot_live(m->old[j]) || slot_index(m->old[j]) != i)
    j = (j + 1) & mask;
  return &m->old[j];
}

/* The block index of id, or NONE. */
static uint64_t rowmap_index(const rowmap_t *m, uint64_t id) {
  const uint64_t *sl = slot_of_id(m, id);
  return sl ? slot_index(*sl) : NONE;
}

static float *rowmap_find(const rowmap_t *m, uint64_t id) {
  uint64_t i = rowmap_index(m, id);
  return i == NONE ? NULL : block_at(m, i);
}

/* Room for one more block: the first chunk doubles up to CHUNK_ROWS (a
 * bounded copy), then whole chunks are added and nothing moves. */
static int rowmap_grow_blocks(rowmap_t *m) {
  size_t c = m->data_cap < CHUNK_ROWS ? 0 : m->nchunks;
  uint64_t rows = m->data_cap == 0          ? 1024
                  : m->data_cap < CHUNK_ROWS ? m->data_cap * 2
                                             : CHUNK_ROWS;
  if (c >= m->chunks_cap) {
    size_t ncap = m->chunks_cap ? m->chunks_cap * 2 : 8;
    chunk_t *chunks = realloc(m->chunks, ncap * sizeof(*chunks));
    if (chunks == NULL) return PS_ERR_NOMEM;
    memset(chunks + m->chunks_cap, 0,
           (ncap - m->chunks_cap) * sizeof(*chunks));
    m->chunks = chunks;
    m->chunks_cap = ncap;
  }
  /* Each array is replaced as soon as it has grown, so a failure half-way
   * leaves every pointer valid (rowmap_free frees them). */
  chunk_t *ch = &m->chunks[c];
  float *data = realloc(ch->data, rows * m->stride * sizeof(float));
  if (data == NULL) return PS_ERR_NOMEM;
  ch->data = data;
  uint64_t *ids = realloc(ch->ids, rows * sizeof(*ids));
  if (ids == NULL) return PS_ERR_NOMEM;
  ch->ids = ids;
  if (m->lru) {
    uint32_t *prev = realloc(ch->prev, rows * sizeof(*prev));
    if (prev == NULL) return PS_ERR_NOMEM;
    ch->prev = prev;
    uint32_t *next = realloc(ch->next, rows * sizeof(*next));
    if (next == NULL) return PS_ERR_NOMEM;
    ch->next = next;
  }
  if (c == 0) {
    m->nchunks = 1;
    m->data_cap = rows;
    release_freed(rows / 2 * m->stride * sizeof(float));
  } else {
    m->nchunks++;
    m->data_cap += rows;
  }
  return PS_OK;
}

/* The block index of id; a new block (contents undefined, *created 1) if
 * id has none. NONE on no memory (or ROWS_MAX blocks). One operation: it
 * moves its share of an index growth. */
static uint64_t rowmap_get(rowmap_t *m, uint64_t id, int *created) {
  *created = 0;
  rehash_step(m);
  uint64_t i = rowmap_index(m, id);
  if (i != NONE) return i;
  if (m->n == ROWS_MAX) return NONE;
  if (rowmap_reserve_slot(m) != PS_OK) return NONE;
  if (m->n == m->data_cap && rowmap_grow_blocks(m) != PS_OK) return NONE;
  i = m->n;
  *id_at(m, i) = id;
  slot_place(m, slot_make(tag_of(id), i));
  m->n++;
  if (m->lru) lru_append(m, (uint32_t)i);
  *created = 1;
  return i;
}

/* Removes block i: its slot (from the current index by backward-shift
 * deletion, which keeps every probe sequence whole; from the old one by a
 * TOMB), and the last block moves into its place. One operation. */
static void rowmap_remove(rowmap_t *m, uint64_t i) {
  rehash_step(m);
  int in_old;
  uint64_t *s = slot_of_block(m, i, &in_old);
  if (!in_old) {
    size_t j = (size_t)(s - m->slots), mask = m->cap - 1;
    for (size_t k = (j + 1) & mask; m->slots[k] != 0; k = (k + 1) & mask) {
      size_t home = slot_tag(m->slots[k]) & mask;
      /* k's entry may fill the hole at j unless its home lies in (j, k]. */
      int stays = j <= k ? (home > j && home <= k) : (home > j || home <= k);
      if (stays) continue;
      m->slots[j] = m->slots[k];
      j = k;
    }
    m->slots[j] = 0;
  } else {
    *s = TOMB;
  }
  if (m->lru) lru_unlink(m, (uint32_t)i);
  uint64_t last = m->n - 1;
  if (i != last) {
    memcpy(block_at(m, i), block_at(m, last), m->stride * sizeof(float));
    uint64_t *ls = slot_of_block(m, last, &in_old);
    *ls = slot_make(slot_tag(*ls), i);
    *id_at(m, i) = *id_at(m, last);
    if (m->lru) {
      uint32_t k = (uint32_t)i, p = *prev_at(m, (uint32_t)last),
               nx = *next_at(m, (uint32_t)last);
      *prev_at(m, k) = p;
      *next_at(m, k) = nx;
      if (p != NONE32) *next_at(m, p) = k; else m->head = k;
      if (nx != NONE32) *prev_at(m, nx) = k; else m->tail = k;
    }
  }
  m->n--;
}

/* Forgets every block, keeping the memory (a step's sums come back). */
static void rowmap_clear(rowmap_t *m) {
  if (m->cap) memset(m->slots, 0, m->cap * sizeof(*m->slots));
  free(m->old);
  m->old = NULL;
  m->old_cap = m->old_next = 0;
  free(m->fresh);
  m->fresh = NULL;
  m->n = 0;
  m->head = m->tail = NONE32;
}

/* 1 if every block has exactly one live slot, in the index it sits in,
 * that names it by its tag and is reachable from its home slot. */
static int rowmap_consistent(const rowmap_t *m) {
  uint64_t live = 0;
  for (int k = 0; k < 2; k++) {
    const uint64_t *sl = k ? m->old : m->slots;
    size_t cap = k ? m->old_cap : m->cap;
    for (size_t j = 0; sl && j < cap; j++) {
      if (!slot_live(sl[j])) continue;
      uint64_t i = slot_index(sl[j]);
      if (i >= m->n || slot_tag(sl[j]) != tag_of(*id_at(m, i))) return 0;
      live++;
    }
  }
  if (live != m->n) return 0;
  for (uint64_t i = 0; i < m->n; i++)
    if (rowmap_index(m, *id_at(m, i)) != i) return 0;
  return 1;
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
  t->rows.stride = ps_optimizer_row_floats(&t->opt, spec->dim);
  t->pending.stride = spec->dim;
  t->rows.head = t->rows.tail = t->pending.head = t->pending.tail = NONE32;
  return t;
}

int ps_sparse_table_set_limits(ps_sparse_table_t *t, uint64_t max_rows,
                               uint32_t admit_after) {
  if (t->rows.n > 0) return PS_ERR_INVAL;
  if (admit_after > 1 && t->sketch == NULL) {
    t->sketch = calloc((size_t)SKETCH_DEPTH * SKETCH_WIDTH, sizeof(uint32_t));
    if (t->sketch == NULL) return PS_ERR_NOMEM;
  }
  t->max_rows = max_rows;
  t->admit_after = admit_after;
  t->rows.lru = max_rows > 0;
  return PS_OK;
}

int ps_sparse_table_consistent(const ps_sparse_table_t *t) {
  return rowmap_consistent(&t->rows) && rowmap_consistent(&t->pending);
}

void ps_sparse_table_stats(const ps_sparse_table_t *t, ps_sparse_stats_t *out) {
  *out = t->stats;
  out->rows = t->rows.n;
  out->index_slots = t->rows.cap;
  out->rehashing = t->rows.old != NULL;
  out->rehash_slots = t->rows.rehash_slots;
  out->zero_slots = t->rows.zero_slots;
}

uint64_t ps_sparse_table_max_rows(const ps_sparse_table_t *t) {
  return t->max_rows;
}

/* The sketch's counter of id in row d. */
static uint32_t *sketch_cell(ps_sparse_table_t *t, int d, uint64_t id) {
  uint64_t h = ps_mix64(id ^ (0x9e3779b97f4a7c15ull * (uint64_t)(d + 1)));
  return &t->sketch[(size_t)d * SKETCH_WIDTH + (h & (SKETCH_WIDTH - 1))];
}

/* Counts one push of id; returns the sketch's estimate of its pushes (an
 * overcount at worst, never an undercount). */
static uint32_t sketch_add(ps_sparse_table_t *t, uint64_t id) {
  uint32_t est = UINT32_MAX;
  for (int d = 0; d < SKETCH_DEPTH; d++) {
    uint32_t *c = sketch_cell(t, d, id);
    if (*c < UINT32_MAX) (*c)++;
    if (*c < est) est = *c;
  }
  return est;
}

static uint32_t sketch_get(ps_sparse_table_t *t, uint64_t id) {
  uint32_t est = UINT32_MAX;
  for (int d = 0; d < SKETCH_DEPTH; d++) {
    uint32_t c = *sketch_cell(t, d, id);
    if (c < est) est = c;
  }
  return est;
}

/* Evicts the least recently pushed rows until the table is within its
 * cap (they read as their initializer again). */
static void evict_over_cap(ps_sparse_table_t *t) {
  while (t->max_rows > 0 && t->rows.n > t->max_rows) {
    rowmap_remove(&t->rows, t->rows.head);
    t->stats.evictions++;
  }
}

void ps_sparse_table_destroy(ps_sparse_table_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  ps_sparse_table_t *t = *t_p;
  rowmap_free(&t->rows);
  rowmap_free(&t->pending);
  free(t->sketch);
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
  uint64_t i = rowmap_get(&t->rows, id, &created);
  if (i != NONE && !created) lru_touch(&t->rows, i);
  if (i == NONE) {
    if (err && errlen)
      snprintf(err, errlen, "no memory for row %llu of table \"%s\"",
               (unsigned long long)id, t->spec.name);
    return NULL;
  }
  float *row = block_at(&t->rows, i);
  if (created) {
    ps_sparse_init_row(&t->spec, t->seed, id, row);
    if (t->rows.stride > t->spec.dim)
      memset(row + t->spec.dim, 0,
             (t->rows.stride - t->spec.dim) * sizeof(float));
  }
  return row;
}

/* The schedule's factor on an SGD table's gradient for a BSP step: put on
 * each contribution as it arrives (ps_sparse_table_accumulate), as a dense
 * shard does, so the step is applied with 1; the other optimizers take it
 * on their rate when the step is applied. */
static float sum_factor(const ps_sparse_table_t *t, uint64_t step) {
  return t->opt.kind == PS_OPTIMIZER_SGD ? ps_lr_factor(&t->schedule, step)
                                         : 1.0f;
}

/* 1 if a push of id may change its row: it has one, or it was pushed
 * admit_after times (counted here); else the gradient is dropped. */
static int admitted(ps_sparse_table_t *t, uint64_t id, int count) {
  if (t->admit_after <= 1) return 1;
  uint32_t seen = count ? sketch_add(t, id) : sketch_get(t, id);
  if (rowmap_find(&t->rows, id) || seen >= t->admit_after) return 1;
  t->stats.not_admitted++;
  return 0;
}

int ps_sparse_table_push(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                         const float *grads, float scale, uint64_t step,
                         char *err, size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  float factor = ps_lr_factor(&t->schedule, step);
  for (size_t i = 0; i < n; i++) {
    if (!admitted(t, keys[i], 1)) continue;
    /* Rows before i are applied: the caller reports the failure and the
     * worker's step is lost, as with any server out of memory. */
    float *row = row_get(t, keys[i], err, errlen);
    if (row == NULL) return PS_ERR_NOMEM;
    ps_optimizer_apply_row(&t->opt, row, dim, grads + i * dim, scale, factor);
  }
  evict_over_cap(t);
  return PS_OK;
}

int ps_sparse_table_accumulate(ps_sparse_table_t *t, const uint64_t *keys,
                               size_t n, const float *grads, uint64_t step,
                               char *err, size_t errlen) {
  int rc = ps_sparse_keys_check(keys, n, err, errlen);
  if (rc != PS_OK) return rc;
  size_t dim = t->spec.dim;
  float f = sum_factor(t, step);
  for (size_t i = 0; i < n; i++) {
    if (t->admit_after > 1) sketch_add(t, keys[i]);
    int created;
    uint64_t b = rowmap_get(&t->pending, keys[i], &created);
    if (b == NONE) {
      if (err && errlen)
        snprintf(err, errlen, "no memory for the step's sum of row %llu",
                 (unsigned long long)keys[i]);
      return PS_ERR_NOMEM;
    }
    float *sum = block_at(&t->pending, b);
    if (created && f == 1.0f)
      memcpy(sum, grads + i * dim, dim * sizeof(float));
    else if (created)
      ps_copy_scaled(sum, grads + i * dim, dim, f);
    else if (f == 1.0f)
      ps_accumulate(sum, grads + i * dim, dim);
    else
      ps_accumulate_scaled(sum, grads + i * dim, dim, f);
  }
  return PS_OK;
}

int ps_sparse_table_apply_pending(ps_sparse_table_t *t, float scale,
                                  uint64_t step) {
  /* Rows first, so a failure leaves every sum in place. The cap is
   * enforced after the whole step, so no row of it is evicted half-way. */
  for (uint64_t i = 0; i < t->pending.n; i++)
    if (admitted(t, *id_at(&t->pending, i), 0) &&
        row_get(t, *id_at(&t->pending, i), NULL, 0) == NULL)
      return PS_ERR_NOMEM;
  /* An SGD table's sums carry the factor already (sum_factor). */
  float factor = t->opt.kind == PS_OPTIMIZER_SGD
                     ? 1.0f
                     : ps_lr_factor(&t->schedule, step);
  for (uint64_t i = 0; i < t->pending.n; i++) {
    float *row = rowmap_find(&t->rows, *id_at(&t->pending, i));
    if (row)
      ps_optimizer_apply_row(&t->opt, row, t->spec.dim,
                             block_at(&t->pending, i), scale,
                             factor);
  }
  rowmap_clear(&t->pending);
  evict_over_cap(t);
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
    rehash_step(&t->rows); /* a lookup, so it drains a growth too */
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
  *id = *id_at(&t->rows, i);
  return block_at(&t->rows, i);
}

uint64_t ps_sparse_table_lru_first(const ps_sparse_table_t *t) {
  if (t->rows.lru) return t->rows.head == NONE32 ? NONE : t->rows.head;
  return t->rows.n ? 0 : NONE;
}

uint64_t ps_sparse_table_lru_next(const ps_sparse_table_t *t, uint64_t i) {
  if (t->rows.lru) {
    uint32_t nx = *next_at(&t->rows, (uint32_t)i);
    return nx == NONE32 ? NONE : nx;
  }
  return i + 1 < t->rows.n ? i + 1 : NONE;
}

const float *ps_sparse_table_pending_at(const ps_sparse_table_t *t, uint64_t i,
                                        uint64_t *id) {
  *id = *id_at(&t->pending, i);
  return block_at(&t->pending, i);
}

static int put_blocks(rowmap_t *m, const uint64_t *keys, size_t n,
                      const float *src) {
  for (size_t i = 0; i < n; i++) {
    int created;
    uint64_t b = rowmap_get(m, keys[i], &created);
    if (b == NONE) return PS_ERR_NOMEM;
    if (!created) lru_touch(m, b);
    memcpy(block_at(m, b), src + i * m->stride, m->stride * sizeof(float));
  }
  return PS_OK;
}

int ps_sparse_table_put(ps_sparse_table_t *t, const uint64_t *keys, size_t n,
                        const float *rows) {
  int rc = put_blocks(&t->rows, keys, n, rows);
  if (rc == PS_OK) evict_over_cap(t);
  return rc;
}

size_t ps_sparse_table_sketch_cells(const ps_sparse_table_t *t) {
  return t->sketch ? (size_t)SKETCH_DEPTH * SKETCH_WIDTH : 0;
}

const uint32_t *ps_sparse_table_sketch(const ps_sparse_table_t *t) {
  return t->sketch;
}

int ps_sparse_table_put_sketch(ps_sparse_table_t *t, const uint32_t *cells,
                               size_t n) {
  if (n != ps_sparse_table_sketch_cells(t)) return PS_ERR_INVAL;
  if (n) memcpy(t->sketch, cells, n * sizeof(*cells));
  return PS_OK;
}

int ps_sparse_table_put_pending(ps_sparse_table_t *t, const uint64_t *keys,
                                size_t n, const float *sums) {
  return put_blocks(&t->pending, keys, n, sums);
}
