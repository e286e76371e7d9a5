#include "dedup.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define WORDS (PS_DEDUP_WINDOW / 64)

/* The entries are the snapshot's records themselves, sorted by worker: a
 * range sees a handful to a few hundred workers, so a binary search is as
 * fast as a hash table, an insertion (once per worker) may move them all,
 * and export is one copy. */
struct ps_dedup_s {
  ps_dedup_record_t *e;
  size_t n, cap;
};

ps_dedup_t *ps_dedup_new(void) {
  return calloc(1, sizeof(ps_dedup_t));
}

void ps_dedup_destroy(ps_dedup_t **d_p) {
  ps_dedup_t *d = *d_p;
  if (d == NULL) return;
  *d_p = NULL;
  free(d->e);
  free(d);
}

/* The index of worker's entry, or where it would go (*found 0). */
static size_t lookup(const ps_dedup_t *d, uint64_t worker, int *found) {
  size_t lo = 0, hi = d->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (d->e[mid].worker < worker)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found = lo < d->n && d->e[lo].worker == worker;
  return lo;
}

/* worker's entry, inserted empty (high 0, nothing applied) if new; NULL
 * when out of memory. */
static ps_dedup_record_t *entry(ps_dedup_t *d, uint32_t worker) {
  int found;
  size_t i = lookup(d, worker, &found);
  if (found) return &d->e[i];
  if (d->n == d->cap) {
    size_t cap = d->cap ? 2 * d->cap : 8;
    ps_dedup_record_t *grown = realloc(d->e, cap * sizeof(*grown));
    if (grown == NULL) return NULL;
    d->e = grown;
    d->cap = cap;
  }
  memmove(&d->e[i + 1], &d->e[i], (d->n - i) * sizeof(*d->e));
  d->n++;
  memset(&d->e[i], 0, sizeof(d->e[i]));
  d->e[i].worker = worker;
  return &d->e[i];
}

int ps_dedup_check(const ps_dedup_t *d, uint32_t worker, uint64_t seq) {
  if (seq == 0) return PS_DEDUP_NEW;
  int found;
  size_t i = lookup(d, worker, &found);
  if (!found) return PS_DEDUP_NEW;
  const ps_dedup_record_t *r = &d->e[i];
  if (seq > r->high) return PS_DEDUP_NEW;
  uint64_t back = r->high - seq;
  if (back >= PS_DEDUP_WINDOW) return PS_DEDUP_OLD;
  return (r->bits[back / 64] >> (back % 64)) & 1 ? PS_DEDUP_DUP : PS_DEDUP_NEW;
}

/* Moves the window up by by numbers: bit i becomes bit i + by, the oldest
 * fall off. A multi-word shift towards the high words. */
static void slide(uint64_t *bits, uint64_t by) {
  if (by >= PS_DEDUP_WINDOW) {
    memset(bits, 0, WORDS * sizeof(*bits));
    return;
  }
  size_t ws = (size_t)(by / 64);
  unsigned bs = (unsigned)(by % 64);
  for (size_t i = WORDS; i-- > 0;) {
    uint64_t v = 0;
    if (i >= ws) {
      v = bits[i - ws] << bs;
      if (bs && i > ws) v |= bits[i - ws - 1] >> (64 - bs);
    }
    bits[i] = v;
  }
}

int ps_dedup_mark(ps_dedup_t *d, uint32_t worker, uint64_t seq) {
  if (seq == 0) return PS_OK;
  ps_dedup_record_t *r = entry(d, worker);
  if (r == NULL) return PS_ERR_NOMEM;
  if (seq > r->high) {
    slide(r->bits, seq - r->high);
    r->high = seq;
    r->bits[0] |= 1;
    return PS_OK;
  }
  uint64_t back = r->high - seq;
  /* Below the window: ps_dedup_check said OLD and the caller refused it;
   * there is no bit to set. */
  if (back < PS_DEDUP_WINDOW) r->bits[back / 64] |= (uint64_t)1 << (back % 64);
  return PS_OK;
}

int ps_dedup_reserve(ps_dedup_t *d, uint32_t worker) {
  return entry(d, worker) ? PS_OK : PS_ERR_NOMEM;
}

size_t ps_dedup_count(const ps_dedup_t *d) {
  return d->n;
}

void ps_dedup_export(const ps_dedup_t *d, ps_dedup_record_t *out) {
  if (d->n) memcpy(out, d->e, d->n * sizeof(*out));
}

static int cmp_worker(const void *a, const void *b) {
  uint64_t x = ((const ps_dedup_record_t *)a)->worker;
  uint64_t y = ((const ps_dedup_record_t *)b)->worker;
  return x < y ? -1 : x > y;
}

int ps_dedup_import(ps_dedup_t *d, const ps_dedup_record_t *in, size_t n) {
  if (n > SIZE_MAX / sizeof(*in)) return PS_ERR_NOMEM;
  for (size_t i = 0; i < n; i++)
    if (in[i].worker > UINT32_MAX) return PS_ERR_INVAL;
  ps_dedup_record_t *e = NULL;
  if (n) {
    e = malloc(n * sizeof(*e));
    if (e == NULL) return PS_ERR_NOMEM;
    memcpy(e, in, n * sizeof(*e));
    qsort(e, n, sizeof(*e), cmp_worker);
    for (size_t i = 1; i < n; i++)
      if (e[i].worker == e[i - 1].worker) {
        free(e);
        return PS_ERR_INVAL;
      }
  }
  free(d->e);
  d->e = e;
  d->n = d->cap = n;
  return PS_OK;
}
