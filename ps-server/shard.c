#include "shard.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

/* Buffers start on a cache line, like the ranges themselves (PS_RANGE_ALIGN),
 * so the kernels see the same alignment on every server. */
#define SHARD_ALIGN 64
/* Released versions kept for reuse beyond the ones in use: enough for a
 * window of pulls in flight without going back to malloc, few enough not to
 * hoard memory after a burst. */
#define SPARE_KEEP 8

/* One immutable-while-pinned copy of one block. refs counts the shard's own
 * reference (while the version is current or kept as a spare) plus one per
 * pin; whoever drops the last frees it, so a frame may outlive the shard. */
struct ps_shard_version_s {
  atomic_uint refs;
  uint64_t cap; /* floats */
  float *data;  /* SHARD_ALIGN-aligned, right after the header */
};

/* The sum of one step's gradients and who contributed to it. */
typedef struct {
  float *acc;
  /* The part of acc that holds this step's sum; the rest is stale. Keeping
   * the interval instead of zeroing acc after each step lets the first
   * contribution be copied in, saving a pass over the range per step. */
  uint64_t acc_lo, acc_hi;
  uint64_t received; /* values received for the step */
  /* Who pushed what this step. A handful to a few hundred workers: a linear
   * scan costs less than the push's pass over its values. */
  ps_shard_contrib_t *contrib;
  size_t ncontrib, contrib_cap;
} step_sum_t;

struct ps_shard_s {
  uint64_t begin, end, len;
  int mode;
  /* BSP and SSP: one sum per step a push may be for, a ring indexed by
   * step % nsums: steps [clock, clock + staleness], so nsums is staleness
   * + 1 (BSP: 1, staleness 0). ASP: none. */
  uint32_t staleness;
  step_sum_t *sums;
  uint32_t nsums;
  ps_shard_pending_t *pending_out; /* ps_shard_export_state's, staleness */
  ps_shard_live_t *live; /* sorted by worker */
  size_t nlive;
  /* The range's pieces of the model's tensors, in key order, each with its
   * optimizer and the number of updates applied to it (Adam's t). */
  ps_shard_segment_t *seg;
  uint64_t *opt_steps;
  size_t nseg;
  ps_lr_schedule_spec_t schedule;
  int slots; /* state floats per key: ps_model_state_slots */
  /* Weights: block b holds keys [b * block_keys, ...) of the range. */
  uint64_t block_keys; /* min(PS_SHARD_BLOCK_KEYS, len) */
  uint64_t nblocks;
  ps_shard_version_t **blocks;
  ps_shard_version_t **fresh; /* reserve_range -> run_range, per block */
  /* Versions retired while pinned, still holding the shard's reference:
   * reused once their pins are gone. */
  ps_shard_version_t **spare;
  size_t nspare, spare_cap;
  float *gather;   /* ps_shard_weights' copy, allocated on first use */
  float *state;    /* slots planes of len floats; NULL when slots is 0 */
  uint64_t clock;
  float step_scale; /* what the last BSP step scaled its sum by */
  /* The step whose sum acc still holds whole (ps_shard_step_sum), or
   * UINT64_MAX once a push of the next step wrote into acc. */
  uint64_t sum_step;
  ps_shard_stats_t stats;
};

static int cmp_live(const void *a, const void *b) {
  uint64_t x = ((const ps_shard_live_t *)a)->worker;
  uint64_t y = ((const ps_shard_live_t *)b)->worker;
  return x < y ? -1 : x > y;
}

/* A sorted copy of the live set into *out (NULL for none). PS_ERR_INVAL
 * (with errbuf) for a worker twice or an id that is not a node id,
 * PS_ERR_NOMEM. */
static int copy_live(const ps_shard_live_t *live, size_t n,
                     ps_shard_live_t **out, char *errbuf, size_t errlen) {
  *out = NULL;
  if (n == 0) return PS_OK;
  if (n > SIZE_MAX / sizeof(*live))
    return ps_errf(errbuf, errlen, PS_ERR_NOMEM, "no memory for %zu workers",
                   n);
  ps_shard_live_t *c = malloc(n * sizeof(*c));
  if (c == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_NOMEM, "no memory for %zu workers",
                   n);
  memcpy(c, live, n * sizeof(*c));
  qsort(c, n, sizeof(*c), cmp_live);
  for (size_t i = 0; i < n; i++) {
    if (c[i].worker > UINT32_MAX || (i > 0 && c[i].worker == c[i - 1].worker)) {
      int rc =
          ps_errf(errbuf, errlen, PS_ERR_INVAL, "live set: worker %llu is %s",
                  (unsigned long long)c[i].worker,
                  c[i].worker > UINT32_MAX ? "not a node id" : "there twice");
      free(c);
      return rc;
    }
  }
  *out = c;
  return PS_OK;
}

/* The same from plain node ids, every one waited for from step 0. */
static int copy_live_ids(const uint32_t *ids, size_t n, ps_shard_live_t **out,
                         char *errbuf, size_t errlen) {
  *out = NULL;
  if (n == 0) return PS_OK;
  if (n > SIZE_MAX / sizeof(ps_shard_live_t))
    return ps_errf(errbuf, errlen, PS_ERR_NOMEM, "no memory for %zu workers",
                   n);
  ps_shard_live_t *tmp = malloc(n * sizeof(*tmp));
  if (tmp == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_NOMEM, "no memory for %zu workers",
                   n);
  for (size_t i = 0; i < n; i++) {
    tmp[i].worker = ids[i];
    tmp[i].from_step = 0;
  }
  int rc = copy_live(tmp, n, out, errbuf, errlen);
  free(tmp);
  return rc;
}

static const ps_shard_live_t *find_live(const ps_shard_t *s, uint32_t worker) {
  ps_shard_live_t key = {.worker = worker};
  return s->nlive ? bsearch(&key, s->live, s->nlive, sizeof(*s->live), cmp_live)
                  : NULL;
}

/* 1 if step waits for l: a worker that joined a running job is not
 * waited for before its first step. */
static int waited_for(const ps_shard_live_t *l, uint64_t step) {
  return l->from_step <= step;
}

/* The sum of step, which must be in [clock, clock + staleness]. */
static step_sum_t *sum_of(const ps_shard_t *s, uint64_t step) {
  return &s->sums[step % s->nsums];
}

/* The current step's sum (BSP and SSP only). */
static step_sum_t *cur_sum(const ps_shard_t *s) {
  return sum_of(s, s->clock);
}

static void sum_clear(step_sum_t *u) {
  u->acc_lo = u->acc_hi = 0;
  u->received = 0;
  u->ncontrib = 0;
}

static ps_shard_contrib_t *find_contribution(step_sum_t *u, uint32_t worker) {
  for (size_t i = 0; i < u->ncontrib; i++)
    if (u->contrib[i].worker == worker) return &u->contrib[i];
  return NULL;
}

static float *alloc_floats(uint64_t n) {
  size_t bytes = (size_t)n * sizeof(float);
  bytes = (bytes + SHARD_ALIGN - 1) / SHARD_ALIGN * SHARD_ALIGN;
  return aligned_alloc(SHARD_ALIGN, bytes);
}

/* ---- versions ---- */

static ps_shard_version_t *version_new(ps_shard_t *s) {
  _Static_assert(sizeof(ps_shard_version_t) <= SHARD_ALIGN,
                 "the version header fits in front of its data");
  size_t bytes = SHARD_ALIGN + (size_t)s->block_keys * sizeof(float);
  bytes = (bytes + SHARD_ALIGN - 1) / SHARD_ALIGN * SHARD_ALIGN;
  unsigned char *mem = aligned_alloc(SHARD_ALIGN, bytes);
  if (mem == NULL) return NULL;
  ps_shard_version_t *v = (ps_shard_version_t *)mem;
  atomic_init(&v->refs, 1);
  v->cap = s->block_keys;
  v->data = (float *)(mem + SHARD_ALIGN);
  if (++s->stats.versions > s->stats.versions_peak)
    s->stats.versions_peak = s->stats.versions;
  return v;
}

/* Drops one reference; the last frees. The release pairs with the acquire
 * in version_pinned, so everything ZeroMQ's I/O thread read from the data
 * happens before the loop writes to it again. */
static int version_unref(ps_shard_version_t *v) {
  if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) {
    free(v);
    return 1;
  }
  return 0;
}

/* 1 while anyone besides the shard holds v. */
static int version_pinned(ps_shard_version_t *v) {
  return atomic_load_explicit(&v->refs, memory_order_acquire) > 1;
}

void ps_shard_pin(ps_shard_version_t *v) {
  atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
}

void ps_shard_unpin(void *data, void *version) {
  (void)data;
  ps_shard_version_t *v = version;
  if (v) version_unref(v);
}

/* A version no one else holds, for a block about to be rewritten: a spare
 * whose pins are gone, or a new one. Spares beyond SPARE_KEEP that are free
 * too are given back on the way. */
static ps_shard_version_t *version_take(ps_shard_t *s) {
  ps_shard_version_t *found = NULL;
  size_t kept_free = 0;
  for (size_t i = 0; i < s->nspare;) {
    ps_shard_version_t *v = s->spare[i];
    if (version_pinned(v)) {
      i++;
      continue;
    }
    if (found == NULL) {
      found = v;
    } else if (kept_free < SPARE_KEEP) {
      kept_free++;
      i++;
      continue;
    } else {
      version_unref(v);
      s->stats.versions--;
    }
    s->spare[i] = s->spare[--s->nspare];
  }
  return found ? found : version_new(s);
}

static uint64_t block_len(const ps_shard_t *s, uint64_t b) {
  uint64_t lo = b * s->block_keys;
  return s->len - lo < s->block_keys ? s->len - lo : s->block_keys;
}

/* Finds a fresh version for every block of [off, off + n) that someone
 * holds, into s->fresh, and room to retire the versions they replace, so
 * that run_range cannot fail. All-or-nothing: PS_ERR_NOMEM leaves the
 * shard as it was. */
static int reserve_range(ps_shard_t *s, uint64_t off, uint64_t n) {
  uint64_t first = off / s->block_keys, last = (off + n - 1) / s->block_keys;
  size_t need = 0;
  for (uint64_t b = first; b <= last; b++)
    if (s->fresh[b] == NULL && version_pinned(s->blocks[b])) need++;
  if (need == 0) return PS_OK;
  /* Room to retire every replaced version, and to put back every fresh one
   * on failure. */
  if (s->nspare + 2 * need > s->spare_cap) {
    size_t cap = s->nspare + 2 * need + 8;
    ps_shard_version_t **grown = realloc(s->spare, cap * sizeof(*grown));
    if (grown == NULL) return PS_ERR_NOMEM;
    s->spare = grown;
    s->spare_cap = cap;
  }
  int rc = PS_OK;
  for (uint64_t b = first; rc == PS_OK && b <= last; b++) {
    if (s->fresh[b] || !version_pinned(s->blocks[b])) continue;
    if ((s->fresh[b] = version_take(s)) == NULL) rc = PS_ERR_NOMEM;
  }
  if (rc != PS_OK)
    for (uint64_t b = first; b <= last; b++) {
      if (s->fresh[b]) s->spare[s->nspare++] = s->fresh[b];
      s->fresh[b] = NULL;
    }
  return rc;
}

/* Applies g (values for range offsets [lo, hi), g[0] at off) with each
 * tensor piece's optimizer, reading src and writing dst (dst == src: in
 * place); dst and src point at range offset lo. */
static void apply_span(ps_shard_t *s, float *dst, const float *src, uint64_t lo,
                       uint64_t hi, uint64_t off, const float *g, float scale,
                       float factor, int sgd_prescaled) {
  for (size_t j = 0; j < s->nseg && lo < hi; j++) {
    const ps_shard_segment_t *sg = &s->seg[j];
    if (sg->end <= lo) continue;
    uint64_t e = sg->end < hi ? sg->end : hi;
    float f =
        sgd_prescaled && sg->optimizer.kind == PS_OPTIMIZER_SGD ? 1.0f : factor;
    ps_optimizer_apply(&sg->optimizer, dst, src,
                       s->state ? s->state + lo : NULL, (size_t)s->len,
                       g + (lo - off), (size_t)(e - lo), scale, f,
                       s->opt_steps[j]);
    dst += e - lo;
    src += e - lo;
    lo = e;
  }
}

/* Applies g (n values for range offsets [off, off + n)) with the shard's
 * optimizers at the schedule's step, block by block: into the fresh version
 * reserve_range found for a block someone holds (out-of-place kernel: no
 * extra pass over the pushed keys, only the block's other keys are
 * copied), in place where no one does. A pin cannot appear in between:
 * only the loop thread pins. Every tensor piece the push touches counts
 * one update. */
static void run_range(ps_shard_t *s, uint64_t off, uint64_t n, const float *g,
                      float scale, uint64_t step, int sgd_prescaled) {
  uint64_t end = off + n;
  for (size_t j = 0; j < s->nseg; j++)
    if (s->seg[j].begin < end && s->seg[j].end > off) s->opt_steps[j]++;
  float factor = ps_lr_factor(&s->schedule, step);
  uint64_t first = off / s->block_keys, last = (end - 1) / s->block_keys;
  for (uint64_t b = first; b <= last; b++) {
    uint64_t b0 = b * s->block_keys, blen = block_len(s, b);
    uint64_t lo = off > b0 ? off - b0 : 0;
    uint64_t hi = end - b0 < blen ? end - b0 : blen;
    ps_shard_version_t *cur = s->blocks[b], *nv = s->fresh[b];
    if (nv == NULL) {
      apply_span(s, cur->data + lo, cur->data + lo, b0 + lo, b0 + hi, off, g,
                 scale, factor, sgd_prescaled);
      continue;
    }
    s->fresh[b] = NULL;
    if (lo > 0) memcpy(nv->data, cur->data, (size_t)lo * sizeof(float));
    if (hi < blen)
      memcpy(nv->data + hi, cur->data + hi,
             (size_t)(blen - hi) * sizeof(float));
    apply_span(s, nv->data + lo, cur->data + lo, b0 + lo, b0 + hi, off, g,
               scale, factor, sgd_prescaled);
    s->spare[s->nspare++] = cur; /* room reserved */
    s->blocks[b] = nv;
    s->stats.cow_applies++;
    s->stats.cow_copied += blen - (hi - lo);
  }
}

ps_shard_t *ps_shard_new(uint64_t begin, uint64_t end, const ps_model_t *model,
                         int mode, const uint32_t *live, size_t nlive, int *err,
                         char *errbuf, size_t errlen) {
  return ps_shard_new_ssp(begin, end, model, mode, 0, live, nlive, err, errbuf,
                          errlen);
}

ps_shard_t *ps_shard_new_ssp(uint64_t begin, uint64_t end,
                             const ps_model_t *model, int mode,
                             uint32_t staleness, const uint32_t *live,
                             size_t nlive, int *err, char *errbuf,
                             size_t errlen) {
  return ps_shard_new_tick(begin, end, model, mode, staleness, live, nlive,
                           NULL, NULL, err, errbuf, errlen);
}

ps_shard_t *ps_shard_new_tick(uint64_t begin, uint64_t end,
                              const ps_model_t *model, int mode,
                              uint32_t staleness, const uint32_t *live,
                              size_t nlive, ps_shard_tick_fn tick,
                              void *tick_arg, int *err, char *errbuf,
                              size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  if (begin >= end || end > model->total) {
    *err =
        ps_errf(errbuf, errlen, PS_ERR_INVAL,
                "shard range [%llu,%llu) is empty or beyond the model's %llu "
                "keys",
                (unsigned long long)begin, (unsigned long long)end,
                (unsigned long long)model->total);
    return NULL;
  }
  if (mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      mode != PS__CONSISTENCY_MODE__MODE_ASP &&
      mode != PS__CONSISTENCY_MODE__MODE_SSP) {
    *err = ps_errf(errbuf, errlen, PS_ERR_UNSUPPORTED,
                   "consistency mode %d is not supported", mode);
    return NULL;
  }
  if (staleness > PS_SSP_STALENESS_MAX ||
      (staleness > 0 && mode != PS__CONSISTENCY_MODE__MODE_SSP)) {
    *err = ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "staleness %u: only SSP has one, from 0 to %d", staleness,
                   PS_SSP_STALENESS_MAX);
    return NULL;
  }
  for (size_t i = 0; i < model->ntensors; i++) {
    ps_optimizer_spec_t o;
    ps_model_tensor_optimizer(model, i, &o);
    if (ps_optimizer_name(o.kind) == NULL) {
      *err = ps_errf(errbuf, errlen, PS_ERR_UNSUPPORTED,
                     "tensor \"%s\": optimizer %d is not supported",
                     model->tensors[i].name, o.kind);
      return NULL;
    }
  }
  uint64_t len = end - begin;
  if (len > SIZE_MAX / sizeof(float) - SHARD_ALIGN) {
    *err = ps_errf(errbuf, errlen, PS_ERR_NOMEM,
                   "shard range [%llu,%llu) does not fit in memory",
                   (unsigned long long)begin, (unsigned long long)end);
    return NULL;
  }

  ps_shard_t *s = calloc(1, sizeof(*s));
  if (s == NULL) goto nomem;
  s->begin = begin;
  s->end = end;
  s->len = len;
  s->mode = mode;
  s->sum_step = UINT64_MAX;
  s->staleness = staleness;
  int rc = copy_live_ids(live, nlive, &s->live, errbuf, errlen);
  if (rc == PS_ERR_NOMEM) goto nomem;
  if (rc != PS_OK) {
    ps_shard_destroy(&s);
    *err = rc;
    return NULL;
  }
  s->nlive = nlive;
  s->schedule = model->lr_schedule;
  s->slots = ps_model_state_slots(model);
  for (size_t i = 0; i < model->ntensors; i++) {
    const ps_tensor_spec_t *t = &model->tensors[i];
    if (t->offset < end && t->offset + t->length > begin) s->nseg++;
  }
  s->seg = calloc(s->nseg ? s->nseg : 1, sizeof(*s->seg));
  s->opt_steps = calloc(s->nseg ? s->nseg : 1, sizeof(*s->opt_steps));
  if (s->seg == NULL || s->opt_steps == NULL) goto nomem;
  for (size_t i = 0, j = 0; i < model->ntensors; i++) {
    const ps_tensor_spec_t *t = &model->tensors[i];
    if (!(t->offset < end && t->offset + t->length > begin)) continue;
    ps_shard_segment_t *sg = &s->seg[j++];
    sg->tensor = i;
    sg->begin = t->offset > begin ? t->offset - begin : 0;
    sg->end =
        (t->offset + t->length < end ? t->offset + t->length : end) - begin;
    ps_model_tensor_optimizer(model, i, &sg->optimizer);
  }
  s->block_keys = len < PS_SHARD_BLOCK_KEYS ? len : PS_SHARD_BLOCK_KEYS;
  s->nblocks = (len + s->block_keys - 1) / s->block_keys;
  s->blocks = calloc((size_t)s->nblocks, sizeof(*s->blocks));
  s->fresh = calloc((size_t)s->nblocks, sizeof(*s->fresh));
  if (s->blocks == NULL || s->fresh == NULL) goto nomem;
  for (uint64_t b = 0; b < s->nblocks; b++)
    if ((s->blocks[b] = version_new(s)) == NULL) goto nomem;
  if (s->slots > 0) {
    s->state = alloc_floats(len * (uint64_t)s->slots);
    if (s->state == NULL) goto nomem;
    memset(s->state, 0, (size_t)len * (size_t)s->slots * sizeof(float));
  }
  if (mode != PS__CONSISTENCY_MODE__MODE_ASP) {
    s->sums = calloc((size_t)staleness + 1, sizeof(*s->sums));
    if (s->sums == NULL) goto nomem;
    s->nsums = staleness + 1;
    for (uint32_t i = 0; i < s->nsums; i++)
      if ((s->sums[i].acc = alloc_floats(len)) == NULL) goto nomem;
    if (staleness > 0 &&
        (s->pending_out = calloc(staleness, sizeof(*s->pending_out))) == NULL)
      goto nomem;
  }

  /* Each tensor has its own initializer; keys are global, so the bits do not
   * depend on where the range boundaries fall. */
  uint64_t filled = 0;
  for (uint64_t b = 0; b < s->nblocks; b++) {
    uint64_t b_begin = begin + b * s->block_keys;
    uint64_t b_end = b_begin + block_len(s, b);
    for (size_t i = 0; i < model->ntensors; i++) {
      const ps_tensor_spec_t *t = &model->tensors[i];
      uint64_t lo = t->offset > b_begin ? t->offset : b_begin;
      uint64_t t_end = t->offset + t->length;
      uint64_t hi = t_end < b_end ? t_end : b_end;
      if (lo >= hi) continue;
      ps_init_fill(s->blocks[b]->data + (lo - b_begin), lo, hi - lo, t->init,
                   t->init_scale, model->seed);
      filled += hi - lo;
    }
    if (tick) tick(tick_arg);
  }
  if (filled != len) {
    /* ps_model_from_pb guarantees contiguous tensors; a gap means a model
     * that did not come through it. */
    *err = ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "tensors of the model cover %llu of the %llu keys of "
                   "[%llu,%llu)",
                   (unsigned long long)filled, (unsigned long long)len,
                   (unsigned long long)begin, (unsigned long long)end);
    ps_shard_destroy(&s);
    return NULL;
  }
  *err = PS_OK;
  return s;

nomem:
  ps_shard_destroy(&s);
  *err = ps_errf(errbuf, errlen, PS_ERR_NOMEM,
                 "out of memory for shard [%llu,%llu) (%llu keys)",
                 (unsigned long long)begin, (unsigned long long)end,
                 (unsigned long long)len);
  return NULL;
}

void ps_shard_destroy(ps_shard_t **s_p) {
  ps_shard_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  /* Pinned versions live on until ZeroMQ lets go of them. */
  for (uint64_t b = 0; s->blocks && b < s->nblocks; b++)
    if (s->blocks[b]) version_unref(s->blocks[b]);
  free(s->blocks);
  free(s->fresh);
  for (size_t i = 0; i < s->nspare; i++) version_unref(s->spare[i]);
  free(s->spare);
  free(s->gather);
  free(s->state);
  free(s->seg);
  free(s->opt_steps);
  for (uint32_t i = 0; s->sums && i < s->nsums; i++) {
    free(s->sums[i].acc);
    free(s->sums[i].contrib);
  }
  free(s->sums);
  free(s->pending_out);
  free(s->live);
  free(s);
}

uint64_t ps_shard_begin(const ps_shard_t *s) {
  return s->begin;
}
uint64_t ps_shard_end(const ps_shard_t *s) {
  return s->end;
}
uint64_t ps_shard_clock(const ps_shard_t *s) {
  return s->clock;
}
int ps_shard_mode(const ps_shard_t *s) {
  return s->mode;
}
size_t ps_shard_live_workers(const ps_shard_t *s) {
  return s->nlive;
}
uint64_t ps_shard_received(const ps_shard_t *s) {
  return s->nsums ? cur_sum(s)->received : 0;
}
uint32_t ps_shard_staleness(const ps_shard_t *s) {
  return s->staleness;
}
uint64_t ps_shard_pending_received(const ps_shard_t *s, uint64_t step) {
  if (s->nsums == 0 || step < s->clock || step - s->clock > s->staleness)
    return 0;
  return sum_of(s, step)->received;
}
const float *ps_shard_opt_state(const ps_shard_t *s, int *slots) {
  if (slots) *slots = s->slots;
  return s->state;
}
const ps_shard_segment_t *ps_shard_segments(const ps_shard_t *s, size_t *n) {
  *n = s->nseg;
  return s->seg;
}
const uint64_t *ps_shard_opt_steps(const ps_shard_t *s) {
  return s->opt_steps;
}
void ps_shard_stats(const ps_shard_t *s, ps_shard_stats_t *out) {
  *out = s->stats;
}

int ps_shard_contains(const ps_shard_t *s, uint64_t key_begin, uint64_t count) {
  return count > 0 && key_begin >= s->begin && key_begin < s->end &&
         count <= s->end - key_begin;
}

static int check_slice(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                       char *errbuf, size_t errlen) {
  if (ps_shard_contains(s, key_begin, count)) return PS_OK;
  return ps_errf(errbuf, errlen, PS_ERR_UNKNOWN_KEY,
                 "keys [%llu,+%llu) are not inside the shard [%llu,%llu)",
                 (unsigned long long)key_begin, (unsigned long long)count,
                 (unsigned long long)s->begin, (unsigned long long)s->end);
}

/* dst = f * src, or a plain copy when f is 1. */
static void copy_f(float *dst, const float *src, uint64_t n, float f) {
  if (f == 1.0f)
    memcpy(dst, src, (size_t)n * sizeof(float));
  else
    ps_copy_scaled(dst, src, (size_t)n, f);
}

/* Adds f * g (n values at offset off) to this step's sum: keys outside the
 * valid interval are copied, not added, and a gap the interval has to
 * bridge is zeroed, so acc never needs clearing between steps. */
static void acc_piece(step_sum_t *u, uint64_t off, uint64_t n, const float *g,
                      float f) {
  float *acc = u->acc;
  uint64_t a = off, b = off + n;
  if (u->acc_lo == u->acc_hi) {
    copy_f(acc + a, g, n, f);
    u->acc_lo = a;
    u->acc_hi = b;
    return;
  }
  uint64_t lo = u->acc_lo, hi = u->acc_hi;
  if (a < lo) {
    uint64_t e = b < lo ? b : lo;
    copy_f(acc + a, g, e - a, f);
    if (e < lo) memset(acc + e, 0, (size_t)(lo - e) * sizeof(float));
    u->acc_lo = a;
  }
  uint64_t oa = a > lo ? a : lo, ob = b < hi ? b : hi;
  if (oa < ob) {
    if (f == 1.0f)
      ps_accumulate(acc + oa, g + (oa - a), (size_t)(ob - oa));
    else
      ps_accumulate_scaled(acc + oa, g + (oa - a), (size_t)(ob - oa), f);
  }
  if (b > hi) {
    uint64_t c = a > hi ? a : hi;
    if (c > hi) memset(acc + hi, 0, (size_t)(c - hi) * sizeof(float));
    copy_f(acc + c, g + (c - a), b - c, f);
    u->acc_hi = b;
  }
}

/* The schedule's factor on the gradient of an SGD piece for a BSP/SSP
 * step (the others take it on their rate when the step is applied). */
static float gradient_factor(const ps_shard_t *s, const ps_shard_segment_t *sg,
                             uint64_t step) {
  return sg->optimizer.kind == PS_OPTIMIZER_SGD
             ? ps_lr_factor(&s->schedule, step)
             : 1.0f;
}

/* Adds g (n values at offset off) to step's sum, piece by piece, SGD
 * pieces times the schedule's factor: the sum a worker that scaled its own
 * gradient gave before issue #14, bit for bit. */
static void acc_add(ps_shard_t *s, uint64_t step, uint64_t off, uint64_t n,
                    const float *g) {
  uint64_t end = off + n;
  step_sum_t *u = sum_of(s, step);
  /* The last step's sum (ps_shard_step_sum) is gone once u is written. */
  if (s->sum_step != UINT64_MAX && u == sum_of(s, s->sum_step))
    s->sum_step = UINT64_MAX;
  for (size_t j = 0; j < s->nseg && off < end; j++) {
    const ps_shard_segment_t *sg = &s->seg[j];
    if (sg->end <= off) continue;
    uint64_t e = sg->end < end ? sg->end : end;
    acc_piece(u, off, e - off, g, gradient_factor(s, sg, step));
    g += e - off;
    off = e;
  }
}

/* Applies the step once every live worker it waits for has pushed the
 * whole range. */
static int bsp_try_complete(ps_shard_t *s) {
  step_sum_t *u = cur_sum(s);
  if (u->ncontrib == 0) return 0;
  for (size_t i = 0; i < s->nlive; i++) {
    if (!waited_for(&s->live[i], s->clock)) continue;
    const ps_shard_contrib_t *c = find_contribution(u, s->live[i].worker);
    if (c == NULL || c->received < s->len) return 0;
  }
  /* Keys no one pushed this step (only when a worker left half-way through
   * its push) contribute nothing. */
  if (u->acc_lo > 0) memset(u->acc, 0, (size_t)u->acc_lo * sizeof(float));
  if (u->acc_hi < s->len)
    memset(u->acc + u->acc_hi, 0, (size_t)(s->len - u->acc_hi) * sizeof(float));
  /* The mean over every worker that contributed, live or not since: a
   * gradient computed on this step's weights is as good as the others. One
   * that left half-way through its push counts as a whole contributor; per
   * key counts would cost a counter per key for a rare case. */
  /* The step must happen: without memory for fresh versions, pinned
   * blocks are updated in place (a reply in flight may then carry some new
   * values), counted. */
  if (reserve_range(s, 0, s->len) != PS_OK) s->stats.torn_applies++;
  /* OPT_ADD adds the sum whatever the scale (ps_optimizer_apply): a
   * counter counts every contribution. */
  s->step_scale = 1.0f / (float)u->ncontrib;
  run_range(s, 0, s->len, u->acc, s->step_scale, s->clock, 1);
  sum_clear(u);
  s->sum_step = s->clock; /* u->acc keeps it until a push writes into u */
  s->clock++;
  return 1;
}

/* 1 if the live worker's push of count more values for the current step
 * completes it: its share is then whole, and every other live worker's
 * already is (what bsp_try_complete will find). */
static int bsp_completes(ps_shard_t *s, uint32_t worker, uint64_t count) {
  step_sum_t *u = cur_sum(s);
  for (size_t i = 0; i < s->nlive; i++) {
    if (!waited_for(&s->live[i], s->clock)) continue;
    const ps_shard_contrib_t *c = find_contribution(u, s->live[i].worker);
    uint64_t got =
        (c ? c->received : 0) + (s->live[i].worker == worker ? count : 0);
    if (got < s->len) return 0;
  }
  return 1;
}

float ps_shard_push_scale(const ps_shard_t *s) {
  return s->nlive > 1 ? 1.0f / (float)s->nlive : 1.0f;
}

float ps_shard_step_scale(const ps_shard_t *s) {
  return s->step_scale;
}

int ps_shard_check_step(const ps_shard_t *s, uint32_t worker, uint64_t step,
                        char *errbuf, size_t errlen) {
  const ps_shard_live_t *l = find_live(s, worker);
  if (l && step < l->from_step)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu from worker %u, which rejoined the job "
                   "and contributes from step %llu on",
                   (unsigned long long)step, worker,
                   (unsigned long long)l->from_step);
  if (s->mode == PS__CONSISTENCY_MODE__MODE_ASP) return PS_OK;
  if (s->mode == PS__CONSISTENCY_MODE__MODE_SSP)
    return ps_errf(errbuf, errlen, PS_ERR_UNSUPPORTED,
                   "sparse tables are not supported in SSP mode (their rows "
                   "keep one pending sum, not one per step)");
  if (step != s->clock)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu but the server is at step %llu",
                   (unsigned long long)step, (unsigned long long)s->clock);
  if (l == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu from worker %u, which is not a live "
                   "worker of the view",
                   (unsigned long long)step, worker);
  return PS_OK;
}

int ps_shard_push_begin(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                        uint64_t count, uint64_t step, uint64_t *clock_after,
                        char *errbuf, size_t errlen) {
  int rc = check_slice(s, key_begin, count, errbuf, errlen);
  if (rc != PS_OK) return rc;
  uint64_t off = key_begin - s->begin;
  /* A worker that rejoined a running job computed nothing before its
   * from_step: such a push is a leftover of its previous life. */
  const ps_shard_live_t *l = find_live(s, worker);
  if (l && step < l->from_step)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu from worker %u, which rejoined the job "
                   "and contributes from step %llu on",
                   (unsigned long long)step, worker,
                   (unsigned long long)l->from_step);

  if (s->mode == PS__CONSISTENCY_MODE__MODE_ASP) {
    if (reserve_range(s, off, count) != PS_OK)
      return ps_errf(errbuf, errlen, PS_ERR_NOMEM,
                     "no memory for a fresh version of the weights of "
                     "[%llu,+%llu) while a pull reply holds the current one",
                     (unsigned long long)key_begin, (unsigned long long)count);
    if (clock_after)
      *clock_after =
          step != UINT64_MAX && step + 1 > s->clock ? step + 1 : s->clock;
    return PS_OK;
  }

  if (step < s->clock)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu but the server is at step %llu: a "
                   "duplicate or stale push",
                   (unsigned long long)step, (unsigned long long)s->clock);
  if (step - s->clock > s->staleness) {
    if (s->staleness == 0)
      return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                     "push for step %llu but the server is at step %llu: "
                     "the worker did not pull step %llu first",
                     (unsigned long long)step, (unsigned long long)s->clock,
                     (unsigned long long)s->clock);
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu but the server is at step %llu: more "
                   "than the staleness bound %u ahead (the worker did not "
                   "pull step %llu first)",
                   (unsigned long long)step, (unsigned long long)s->clock,
                   s->staleness, (unsigned long long)step);
  }
  if (l == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "push for step %llu from worker %u, which is not a live "
                   "worker of the view",
                   (unsigned long long)step, worker);
  step_sum_t *u = sum_of(s, step);
  ps_shard_contrib_t *c = find_contribution(u, worker);
  uint64_t had = c ? c->received : 0;
  if (count > s->len - had)
    return ps_errf(
        errbuf, errlen, PS_ERR_REFUSED,
        "worker %u pushed %llu of the %llu values of [%llu,%llu) for "
        "step %llu already; %llu more is a duplicate push",
        worker, (unsigned long long)had, (unsigned long long)s->len,
        (unsigned long long)s->begin, (unsigned long long)s->end,
        (unsigned long long)step, (unsigned long long)count);
  if (c == NULL && u->ncontrib == u->contrib_cap) {
    /* Room for the worker's entry now, so the end cannot fail. */
    size_t cap = u->contrib_cap ? 2 * u->contrib_cap : 8;
    ps_shard_contrib_t *grown = realloc(u->contrib, cap * sizeof(*grown));
    if (grown == NULL)
      return ps_errf(errbuf, errlen, PS_ERR_NOMEM,
                     "no memory to track worker %u's push", worker);
    u->contrib = grown;
    u->contrib_cap = cap;
  }
  /* A push for a later step (SSP) completes nothing now; the step it
   * completes, if any, is applied when the clock gets there
   * (ps_shard_apply_ready). */
  if (clock_after)
    *clock_after = s->clock + (uint64_t)(step == s->clock &&
                                         bsp_completes(s, worker, count));
  return PS_OK;
}

void ps_shard_push_end(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                       uint64_t count, const float *g, uint64_t step,
                       int *applied) {
  uint64_t off = key_begin - s->begin;
  if (s->mode == PS__CONSISTENCY_MODE__MODE_ASP) {
    /* Each push is scaled by 1/live workers: the learning rate is tuned for
     * the mean gradient of a global batch (BSP, --standalone), and N workers
     * each applying their own batch's mean at full rate step N times too far
     * (one epoch of the 2-worker MLP: test accuracy 0.71-0.76 at scale 1,
     * 0.80-0.83 at scale 1/2). OPT_ADD counts, it does not learn. */
    /* The schedule runs on the push's step, as a worker that scaled its
     * own gradient did before issue #14. */
    run_range(s, off, count, g, ps_shard_push_scale(s),
              step != UINT64_MAX ? step : s->clock, 0);
    if (step != UINT64_MAX && step + 1 > s->clock) s->clock = step + 1;
    if (applied) *applied = 1;
    return;
  }
  step_sum_t *u = sum_of(s, step);
  ps_shard_contrib_t *c = find_contribution(u, worker);
  if (c == NULL) {
    c = &u->contrib[u->ncontrib++]; /* room made by the begin */
    c->worker = worker;
    c->received = 0;
  }
  acc_add(s, step, off, count, g);
  c->received += count;
  u->received += count;
  /* Only a worker finishing its share of the current step can finish it;
   * a later step waits for the clock (ps_shard_apply_ready). */
  int done =
      step == s->clock && c->received == s->len ? bsp_try_complete(s) : 0;
  if (applied) *applied = done;
}

int ps_shard_apply_ready(ps_shard_t *s) {
  return s->mode == PS__CONSISTENCY_MODE__MODE_ASP ? 0 : bsp_try_complete(s);
}

int ps_shard_push(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                  uint64_t count, const float *g, uint64_t step, int *applied,
                  char *errbuf, size_t errlen) {
  if (applied) *applied = 0;
  int rc = ps_shard_push_begin(s, worker, key_begin, count, step, NULL, errbuf,
                               errlen);
  if (rc != PS_OK) return rc;
  ps_shard_push_end(s, worker, key_begin, count, g, step, applied);
  return PS_OK;
}

int ps_shard_runs(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  ps_shard_run_t *runs, int max, char *errbuf, size_t errlen) {
  int rc = check_slice(s, key_begin, count, errbuf, errlen);
  if (rc != PS_OK) return rc;
  uint64_t off = key_begin - s->begin, end = off + count;
  /* A pinned run makes the next apply to its block copy the rest of the
   * block; from a quarter of a block on, that is no more than copying the
   * run now would cost, amortised over the pulls it saves. */
  uint64_t zc_min = s->block_keys / 4 ? s->block_keys / 4 : 1;
  int n = 0;
  for (uint64_t b = off / s->block_keys; b * s->block_keys < end; b++, n++) {
    if (n >= max) continue; /* count the rest only */
    uint64_t b0 = b * s->block_keys, blen = block_len(s, b);
    uint64_t lo = off > b0 ? off - b0 : 0;
    uint64_t hi = end - b0 < blen ? end - b0 : blen;
    runs[n].data = s->blocks[b]->data + lo;
    runs[n].count = hi - lo;
    runs[n].version = s->blocks[b];
    runs[n].zero_copy = hi - lo >= zc_min;
  }
  return n;
}

int ps_shard_read(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  float *out, char *errbuf, size_t errlen) {
  int rc = check_slice(s, key_begin, count, errbuf, errlen);
  if (rc != PS_OK) return rc;
  uint64_t off = key_begin - s->begin, end = off + count;
  for (uint64_t b = off / s->block_keys; b * s->block_keys < end; b++) {
    uint64_t b0 = b * s->block_keys, blen = block_len(s, b);
    uint64_t lo = off > b0 ? off - b0 : 0;
    uint64_t hi = end - b0 < blen ? end - b0 : blen;
    memcpy(out + (b0 + lo - off), s->blocks[b]->data + lo,
           (size_t)(hi - lo) * sizeof(float));
  }
  return PS_OK;
}

const float *ps_shard_weights(ps_shard_t *s) {
  if (s->gather == NULL && (s->gather = alloc_floats(s->len)) == NULL)
    return NULL;
  ps_shard_read(s, s->begin, s->len, s->gather, NULL, 0);
  return s->gather;
}

/* Gives every pinned block a fresh version holding the same values, so
 * that all of them may be overwritten in place. The shard's values do not
 * change, so a failure half-way leaves it as it was. PS_OK or
 * PS_ERR_NOMEM. */
static int unpin_blocks(ps_shard_t *s) {
  for (uint64_t b = 0; b < s->nblocks; b++) {
    if (!version_pinned(s->blocks[b])) continue;
    if (s->nspare == s->spare_cap) {
      size_t cap = s->spare_cap ? 2 * s->spare_cap : 8;
      ps_shard_version_t **grown = realloc(s->spare, cap * sizeof(*grown));
      if (grown == NULL) return PS_ERR_NOMEM;
      s->spare = grown;
      s->spare_cap = cap;
    }
    ps_shard_version_t *nv = version_take(s);
    if (nv == NULL) return PS_ERR_NOMEM;
    memcpy(nv->data, s->blocks[b]->data,
           (size_t)block_len(s, b) * sizeof(float));
    s->spare[s->nspare++] = s->blocks[b];
    s->blocks[b] = nv;
  }
  return PS_OK;
}

static void write_weights(ps_shard_t *s, const float *weights) {
  for (uint64_t b = 0; b < s->nblocks; b++)
    memcpy(s->blocks[b]->data, weights + b * s->block_keys,
           (size_t)block_len(s, b) * sizeof(float));
}

int ps_shard_load(ps_shard_t *s, const float *weights, const float *state,
                  const uint64_t *tensor_steps, uint64_t clock) {
  int rc = unpin_blocks(s);
  if (rc != PS_OK) return rc;
  write_weights(s, weights);
  size_t state_bytes = (size_t)s->len * (size_t)s->slots * sizeof(float);
  if (s->state) {
    if (state)
      memcpy(s->state, state, state_bytes);
    else
      memset(s->state, 0, state_bytes);
  }
  for (size_t j = 0; j < s->nseg; j++)
    s->opt_steps[j] = tensor_steps ? tensor_steps[s->seg[j].tensor] : 0;
  for (uint32_t i = 0; i < s->nsums; i++) sum_clear(&s->sums[i]);
  s->clock = clock;
  s->sum_step = UINT64_MAX;
  return PS_OK;
}

void ps_shard_export_state(const ps_shard_t *s, ps_shard_state_t *out) {
  memset(out, 0, sizeof(*out));
  out->clock = s->clock;
  out->state = s->state;
  out->state_slots = s->slots;
  out->opt_steps = s->opt_steps;
  out->nopt_steps = s->nseg;
  out->live = s->live;
  out->nlive = s->nlive;
  if (s->nsums == 0) return;
  const step_sum_t *u = cur_sum(s);
  out->acc_lo = u->acc_lo;
  out->acc_hi = u->acc_hi;
  out->acc = u->acc_lo < u->acc_hi ? u->acc + u->acc_lo : NULL;
  out->contrib = u->contrib;
  out->ncontrib = u->ncontrib;
  /* SSP: the later steps' sums, up to the last one anyone pushed to. */
  for (uint32_t i = 0; i < s->staleness; i++) {
    const step_sum_t *v = sum_of(s, s->clock + 1 + i);
    ps_shard_pending_t *p = &s->pending_out[i];
    p->acc_lo = v->acc_lo;
    p->acc_hi = v->acc_hi;
    p->acc = v->acc_lo < v->acc_hi ? v->acc + v->acc_lo : NULL;
    p->contrib = v->contrib;
    p->ncontrib = v->ncontrib;
    if (v->ncontrib > 0) out->npending = i + 1;
  }
  out->pending = out->npending ? s->pending_out : NULL;
}

int ps_shard_export(ps_shard_t *s, ps_shard_state_t *out) {
  const float *w = ps_shard_weights(s);
  if (w == NULL) return PS_ERR_NOMEM;
  ps_shard_export_state(s, out);
  out->weights = w;
  return PS_OK;
}

static int check_sum(const ps_shard_t *s, const ps_shard_pending_t *st,
                     uint64_t *received, char *errbuf, size_t errlen);

/* Everything ps_shard_import refuses, before it changes anything. */
static int check_state(const ps_shard_t *s, const ps_shard_state_t *st,
                       uint64_t *received, char *errbuf, size_t errlen) {
  if (st->weights == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_INVAL, "state without weights");
  if (st->state_slots != s->slots || (s->state && st->state == NULL))
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "state with %d optimizer slots per key%s for a shard with "
                   "%d",
                   st->state_slots, st->state ? "" : " but no values",
                   s->slots);
  if (st->nopt_steps != s->nseg || (s->nseg && st->opt_steps == NULL))
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "state with %zu tensor step counts for a range of %zu "
                   "tensor pieces",
                   st->nopt_steps, s->nseg);
  if (st->nlive && st->live == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_INVAL, "state without its live set");
  if (st->npending > s->staleness || (st->npending && st->pending == NULL))
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "%zu later steps in progress for a shard of staleness %u",
                   st->npending, s->staleness);
  ps_shard_pending_t cur = {st->acc_lo, st->acc_hi, st->acc, st->contrib,
                            st->ncontrib};
  int rc = check_sum(s, &cur, received, errbuf, errlen);
  for (size_t i = 0; rc == PS_OK && i < st->npending; i++) {
    uint64_t ignored;
    rc = check_sum(s, &st->pending[i], &ignored, errbuf, errlen);
  }
  return rc;
}

/* One step's sum of a state (ps_shard_import): *received its values. */
static int check_sum(const ps_shard_t *s, const ps_shard_pending_t *st,
                     uint64_t *received, char *errbuf, size_t errlen) {
  if (st->acc_lo > st->acc_hi || st->acc_hi > s->len)
    return ps_errf(
        errbuf, errlen, PS_ERR_INVAL,
        "BSP sum interval [%llu,%llu) is not inside the range's %llu "
        "keys",
        (unsigned long long)st->acc_lo, (unsigned long long)st->acc_hi,
        (unsigned long long)s->len);
  int has_sum = st->acc_lo < st->acc_hi;
  if (s->mode == PS__CONSISTENCY_MODE__MODE_ASP && (has_sum || st->ncontrib))
    return ps_errf(
        errbuf, errlen, PS_ERR_INVAL,
        "a BSP step in progress (%zu contributions) for an ASP shard",
        st->ncontrib);
  if (has_sum && st->acc == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "BSP sum interval [%llu,%llu) without its values",
                   (unsigned long long)st->acc_lo,
                   (unsigned long long)st->acc_hi);
  if ((st->ncontrib > 0) != has_sum)
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "%zu contributions but a BSP sum of %llu values: the step "
                   "in progress is inconsistent",
                   st->ncontrib, (unsigned long long)(st->acc_hi - st->acc_lo));
  if (st->ncontrib && st->contrib == NULL)
    return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                   "state without its contributions");
  *received = 0;
  for (size_t i = 0; i < st->ncontrib; i++) {
    const ps_shard_contrib_t *c = &st->contrib[i];
    if (c->worker > UINT32_MAX)
      return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                     "contribution of worker %llu, which is not a node id",
                     (unsigned long long)c->worker);
    if (c->received > s->len)
      return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                     "contribution of worker %llu is %llu values, bigger than "
                     "the range's %llu",
                     (unsigned long long)c->worker,
                     (unsigned long long)c->received,
                     (unsigned long long)s->len);
    for (size_t j = 0; j < i; j++)
      if (st->contrib[j].worker == c->worker)
        return ps_errf(errbuf, errlen, PS_ERR_INVAL,
                       "worker %llu contributes twice",
                       (unsigned long long)c->worker);
    *received += c->received;
  }
  return PS_OK;
}

/* A copy of n contributions (capacity at least 8), or NULL. */
static ps_shard_contrib_t *copy_contrib(const ps_shard_contrib_t *c, size_t n,
                                        size_t *cap) {
  *cap = n < 8 ? 8 : n;
  ps_shard_contrib_t *out = malloc(*cap * sizeof(*out));
  if (out != NULL && n) memcpy(out, c, n * sizeof(*c));
  return out;
}

/* Installs the sum p (its values, copied; its contributions, copied to
 * contrib, which the sum takes) as u. */
static void sum_install(step_sum_t *u, const ps_shard_pending_t *p,
                        ps_shard_contrib_t *contrib, size_t cap) {
  /* memmove: the state may be this shard's own export. */
  if (p->acc_lo < p->acc_hi)
    memmove(u->acc + p->acc_lo, p->acc,
            (size_t)(p->acc_hi - p->acc_lo) * sizeof(float));
  u->acc_lo = p->acc_lo;
  u->acc_hi = p->acc_hi;
  free(u->contrib);
  u->contrib = contrib;
  u->contrib_cap = cap;
  u->ncontrib = p->ncontrib;
  u->received = 0;
  for (size_t i = 0; i < p->ncontrib; i++) u->received += contrib[i].received;
}

int ps_shard_import(ps_shard_t *s, const ps_shard_state_t *st, char *errbuf,
                    size_t errlen) {
  uint64_t received = 0;
  int rc = check_state(s, st, &received, errbuf, errlen);
  if (rc != PS_OK) return rc;
  /* Every allocation first, so that a failure changes nothing. */
  ps_shard_live_t *live;
  rc = copy_live(st->live, st->nlive, &live, errbuf, errlen);
  if (rc != PS_OK) return rc;
  /* Contributions of the current step, then of each later one (SSP). */
  size_t nsums = s->nsums, caps[PS_SSP_STALENESS_MAX + 1];
  ps_shard_contrib_t *contrib[PS_SSP_STALENESS_MAX + 1];
  ps_shard_pending_t in[PS_SSP_STALENESS_MAX + 1];
  memset(in, 0, sizeof(in[0]) * (nsums ? nsums : 1));
  if (nsums) {
    in[0] = (ps_shard_pending_t){st->acc_lo, st->acc_hi, st->acc, st->contrib,
                                 st->ncontrib};
    for (size_t i = 0; i < st->npending; i++) in[i + 1] = st->pending[i];
  }
  size_t ok = 0;
  for (; ok < nsums; ok++)
    if ((contrib[ok] =
             copy_contrib(in[ok].contrib, in[ok].ncontrib, &caps[ok])) == NULL)
      break;
  if (ok < nsums || unpin_blocks(s) != PS_OK) {
    free(live);
    for (size_t i = 0; i < ok; i++) free(contrib[i]);
    return ps_errf(errbuf, errlen, PS_ERR_NOMEM,
                   ok < nsums ? "no memory for the steps in progress"
                              : "no memory for fresh versions of the weights "
                                "while pull replies hold the current ones");
  }

  write_weights(s, st->weights);
  /* memmove: the state may be this shard's own export. */
  if (s->state)
    memmove(s->state, st->state,
            (size_t)s->len * (size_t)s->slots * sizeof(float));
  memmove(s->opt_steps, st->opt_steps, s->nseg * sizeof(*s->opt_steps));
  free(s->live);
  s->live = live;
  s->nlive = st->nlive;
  s->clock = st->clock;
  /* A shard's own export has the same clock: each sum stays in its slot. */
  for (size_t i = 0; i < nsums; i++)
    sum_install(sum_of(s, s->clock + i), &in[i], contrib[i], caps[i]);
  (void)received;
  s->sum_step = UINT64_MAX;
  return PS_OK;
}

/* Installs live (owned, sorted) as the live set and completes a BSP step
 * that no longer waits for anyone. */
static void replace_live(ps_shard_t *s, ps_shard_live_t *live, size_t n,
                         int *applied) {
  free(s->live);
  s->live = live;
  s->nlive = n;
  int done = 0;
  if (s->mode != PS__CONSISTENCY_MODE__MODE_ASP) {
    done = bsp_try_complete(s);
    /* Every live worker joined at a later step (those that computed this
     * one died before pushing): nobody will push the steps in between, so
     * the clock skips to the first step a live worker contributes to,
     * weights unchanged, or it and every pull waiting on it would wait
     * forever. Every copy of the range sees the same live sets, so they
     * skip alike. SSP: only over steps nobody pushed to; the sums of the
     * steps from the first one on stay where they are in the ring. */
    uint64_t first = UINT64_MAX;
    for (size_t i = 0; i < n; i++)
      if (live[i].from_step < first) first = live[i].from_step;
    int empty = n > 0 && first > s->clock;
    for (uint64_t t = s->clock; empty && t < first && t - s->clock < s->nsums;
         t++)
      if (sum_of(s, t)->ncontrib) empty = 0;
    if (empty) {
      for (uint64_t t = s->clock; t < first && t - s->clock < s->nsums; t++)
        sum_clear(sum_of(s, t));
      s->stats.skipped_steps += first - s->clock;
      s->clock = first;
      done = 1;
    }
  }
  if (applied) *applied = done;
}

int ps_shard_set_live_workers(ps_shard_t *s, const uint32_t *live, size_t n,
                              int *applied) {
  if (applied) *applied = 0;
  ps_shard_live_t *copy;
  int rc = copy_live_ids(live, n, &copy, NULL, 0);
  if (rc != PS_OK) return rc;
  replace_live(s, copy, n, applied);
  return PS_OK;
}

int ps_shard_set_live(ps_shard_t *s, const ps_shard_live_t *live, size_t n,
                      int *applied) {
  if (applied) *applied = 0;
  ps_shard_live_t *copy;
  int rc = copy_live(live, n, &copy, NULL, 0);
  if (rc != PS_OK) return rc;
  replace_live(s, copy, n, applied);
  return PS_OK;
}

uint64_t ps_shard_contributed(const ps_shard_t *s, uint32_t worker) {
  if (s->nsums == 0) return 0;
  const ps_shard_contrib_t *c = find_contribution(cur_sum(s), worker);
  return c ? c->received : 0;
}

int ps_shard_set_live_only(ps_shard_t *s, const ps_shard_live_t *live,
                           size_t n) {
  ps_shard_live_t *copy;
  int rc = copy_live(live, n, &copy, NULL, 0);
  if (rc != PS_OK) return rc;
  free(s->live);
  s->live = copy;
  s->nlive = n;
  return PS_OK;
}

const float *ps_shard_step_sum(const ps_shard_t *s, uint64_t *step,
                               float *scale) {
  if (s->mode != PS__CONSISTENCY_MODE__MODE_BSP || s->sum_step == UINT64_MAX)
    return NULL;
  *step = s->sum_step;
  *scale = s->step_scale;
  return sum_of(s, s->sum_step)->acc;
}

int ps_shard_follow_step(ps_shard_t *s, uint64_t step, const float *sum,
                         float scale, uint64_t clock_after, int *applied,
                         char *errbuf, size_t errlen) {
  if (applied) *applied = 0;
  if (s->mode != PS__CONSISTENCY_MODE__MODE_BSP)
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "a replicated step needs BSP");
  if (s->clock >= clock_after) return PS_OK; /* a snapshot holds it */
  if (s->clock != step || (sum != NULL && clock_after == step))
    return ps_errf(errbuf, errlen, PS_ERR_REFUSED,
                   "replicated step %llu -> %llu but the copy is at step %llu",
                   (unsigned long long)step, (unsigned long long)clock_after,
                   (unsigned long long)s->clock);
  if (sum != NULL) {
    /* What bsp_try_complete does with the same sum: the same bits. */
    if (reserve_range(s, 0, s->len) != PS_OK) s->stats.torn_applies++;
    s->step_scale = scale;
    run_range(s, 0, s->len, sum, scale, step, 1);
  }
  /* Whatever part of a step a snapshot brought is in sum now. */
  sum_clear(cur_sum(s));
  s->sum_step = UINT64_MAX;
  s->clock = clock_after;
  if (applied) *applied = 1;
  return PS_OK;
}

const ps_shard_live_t *ps_shard_live(const ps_shard_t *s, size_t *n) {
  *n = s->nlive;
  return s->live;
}
