#include "shard.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "common/optimizer.h"

/* Buffers start on a cache line, like the ranges themselves (PS_RANGE_ALIGN),
 * so the kernels see the same alignment on every server. */
#define SHARD_ALIGN 64

/* One worker's share of the current BSP step. */
typedef struct {
  uint32_t worker;
  uint64_t received;
} contribution_t;

struct ps_shard_s {
  uint64_t begin, end, len;
  int mode;
  uint32_t *live; /* sorted worker node ids */
  size_t nlive;
  float learning_rate;
  float momentum;
  float *weights;
  float *velocity; /* NULL when momentum is 0: plain SGD never reads it */
  float *acc;      /* BSP only */
  /* The part of acc that holds this step's sum; the rest is stale. Keeping
   * the interval instead of zeroing acc after each step lets the first
   * contribution be copied in, saving a pass over the range per step. */
  uint64_t acc_lo, acc_hi;
  uint64_t received; /* values received for the current BSP step */
  /* Who pushed what this step. A handful to a few hundred workers: a linear
   * scan costs less than the push's pass over its values. */
  contribution_t *contrib;
  size_t ncontrib, contrib_cap;
  uint64_t clock;
};

static int fail(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *errbuf, size_t errlen, int code, const char *fmt, ...) {
  if (errbuf && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* A sorted copy of ids (NULL for none); *ok is 0 when out of memory. */
static uint32_t *copy_ids(const uint32_t *ids, size_t n, int *ok) {
  *ok = 1;
  if (n == 0) return NULL;
  uint32_t *c = malloc(n * sizeof(*c));
  if (c == NULL) {
    *ok = 0;
    return NULL;
  }
  memcpy(c, ids, n * sizeof(*c));
  qsort(c, n, sizeof(*c), cmp_u32);
  return c;
}

static int is_live(const ps_shard_t *s, uint32_t worker) {
  return s->nlive > 0 &&
         bsearch(&worker, s->live, s->nlive, sizeof(*s->live), cmp_u32) != NULL;
}

static contribution_t *find_contribution(ps_shard_t *s, uint32_t worker) {
  for (size_t i = 0; i < s->ncontrib; i++)
    if (s->contrib[i].worker == worker) return &s->contrib[i];
  return NULL;
}

static float *alloc_floats(uint64_t n) {
  size_t bytes = (size_t)n * sizeof(float);
  bytes = (bytes + SHARD_ALIGN - 1) / SHARD_ALIGN * SHARD_ALIGN;
  return aligned_alloc(SHARD_ALIGN, bytes);
}

ps_shard_t *ps_shard_new(uint64_t begin, uint64_t end, const ps_model_t *model,
                         int mode, const uint32_t *live, size_t nlive, int *err,
                         char *errbuf, size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  if (begin >= end || end > model->total) {
    *err = fail(errbuf, errlen, PS_ERR_INVAL,
                "shard range [%llu,%llu) is empty or beyond the model's %llu "
                "keys",
                (unsigned long long)begin, (unsigned long long)end,
                (unsigned long long)model->total);
    return NULL;
  }
  if (mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      mode != PS__CONSISTENCY_MODE__MODE_ASP) {
    *err = fail(errbuf, errlen, PS_ERR_UNSUPPORTED,
                "consistency mode %d is not supported", mode);
    return NULL;
  }
  if (model->optimizer != PS__OPTIMIZER__OPT_SGD) {
    *err = fail(errbuf, errlen, PS_ERR_UNSUPPORTED,
                "optimizer %d is not supported", model->optimizer);
    return NULL;
  }
  uint64_t len = end - begin;
  if (len > SIZE_MAX / sizeof(float) - SHARD_ALIGN) {
    *err = fail(errbuf, errlen, PS_ERR_NOMEM,
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
  int ok;
  s->live = copy_ids(live, nlive, &ok);
  if (!ok) goto nomem;
  s->nlive = nlive;
  s->learning_rate = model->learning_rate;
  s->momentum = model->momentum;
  s->weights = alloc_floats(len);
  if (s->weights == NULL) goto nomem;
  if (s->momentum != 0.0f) {
    s->velocity = alloc_floats(len);
    if (s->velocity == NULL) goto nomem;
    memset(s->velocity, 0, (size_t)len * sizeof(float));
  }
  if (mode == PS__CONSISTENCY_MODE__MODE_BSP) {
    s->acc = alloc_floats(len);
    if (s->acc == NULL) goto nomem;
  }

  /* Each tensor has its own initializer; keys are global, so the bits do not
   * depend on where the range boundaries fall. */
  uint64_t filled = 0;
  for (size_t i = 0; i < model->ntensors; i++) {
    const ps_tensor_spec_t *t = &model->tensors[i];
    uint64_t lo = t->offset > begin ? t->offset : begin;
    uint64_t t_end = t->offset + t->length;
    uint64_t hi = t_end < end ? t_end : end;
    if (lo >= hi) continue;
    ps_init_fill(s->weights + (lo - begin), lo, hi - lo, t->init, t->init_scale,
                 model->seed);
    filled += hi - lo;
  }
  if (filled != len) {
    /* ps_model_from_pb guarantees contiguous tensors; a gap means a model
     * that did not come through it. */
    *err = fail(errbuf, errlen, PS_ERR_INVAL,
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
  *err = fail(errbuf, errlen, PS_ERR_NOMEM,
              "out of memory for shard [%llu,%llu) (%llu keys)",
              (unsigned long long)begin, (unsigned long long)end,
              (unsigned long long)len);
  return NULL;
}

void ps_shard_destroy(ps_shard_t **s_p) {
  ps_shard_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  free(s->weights);
  free(s->velocity);
  free(s->acc);
  free(s->live);
  free(s->contrib);
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
  return s->received;
}
const float *ps_shard_weights(const ps_shard_t *s) {
  return s->weights;
}

int ps_shard_contains(const ps_shard_t *s, uint64_t key_begin, uint64_t count) {
  return count > 0 && key_begin >= s->begin && key_begin < s->end &&
         count <= s->end - key_begin;
}

static int check_slice(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                       char *errbuf, size_t errlen) {
  if (ps_shard_contains(s, key_begin, count)) return PS_OK;
  return fail(errbuf, errlen, PS_ERR_UNKNOWN_KEY,
              "keys [%llu,+%llu) are not inside the shard [%llu,%llu)",
              (unsigned long long)key_begin, (unsigned long long)count,
              (unsigned long long)s->begin, (unsigned long long)s->end);
}

/* Adds g (n values at offset off) to this step's sum: keys outside the valid
 * interval are copied, not added, and a gap the interval has to bridge is
 * zeroed, so acc never needs clearing between steps. */
static void acc_add(ps_shard_t *s, uint64_t off, uint64_t n, const float *g) {
  float *acc = s->acc;
  uint64_t a = off, b = off + n;
  if (s->acc_lo == s->acc_hi) {
    memcpy(acc + a, g, (size_t)n * sizeof(float));
    s->acc_lo = a;
    s->acc_hi = b;
    return;
  }
  uint64_t lo = s->acc_lo, hi = s->acc_hi;
  if (a < lo) {
    uint64_t e = b < lo ? b : lo;
    memcpy(acc + a, g, (size_t)(e - a) * sizeof(float));
    if (e < lo) memset(acc + e, 0, (size_t)(lo - e) * sizeof(float));
    s->acc_lo = a;
  }
  uint64_t oa = a > lo ? a : lo, ob = b < hi ? b : hi;
  if (oa < ob) ps_accumulate(acc + oa, g + (oa - a), (size_t)(ob - oa));
  if (b > hi) {
    uint64_t c = a > hi ? a : hi;
    if (c > hi) memset(acc + hi, 0, (size_t)(c - hi) * sizeof(float));
    memcpy(acc + c, g + (c - a), (size_t)(b - c) * sizeof(float));
    s->acc_hi = b;
  }
}

/* Applies the step once every live worker has pushed the whole range. */
static int bsp_try_complete(ps_shard_t *s) {
  if (s->ncontrib == 0) return 0;
  for (size_t i = 0; i < s->nlive; i++) {
    const contribution_t *c = find_contribution(s, s->live[i]);
    if (c == NULL || c->received < s->len) return 0;
  }
  /* Keys no one pushed this step (only when a worker left half-way through
   * its push) contribute nothing. */
  if (s->acc_lo > 0) memset(s->acc, 0, (size_t)s->acc_lo * sizeof(float));
  if (s->acc_hi < s->len)
    memset(s->acc + s->acc_hi, 0, (size_t)(s->len - s->acc_hi) * sizeof(float));
  /* The mean over every worker that contributed, live or not since: a
   * gradient computed on this step's weights is as good as the others. One
   * that left half-way through its push counts as a whole contributor; per
   * key counts would cost a counter per key for a rare case. */
  ps_apply_sgd(s->weights, s->velocity, s->acc, (size_t)s->len,
               s->learning_rate, s->momentum, 1.0f / (float)s->ncontrib);
  s->acc_lo = s->acc_hi = 0;
  s->received = 0;
  s->ncontrib = 0;
  s->clock++;
  return 1;
}

int ps_shard_push(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                  uint64_t count, const float *g, uint64_t step, int *applied,
                  char *errbuf, size_t errlen) {
  if (applied) *applied = 0;
  int rc = check_slice(s, key_begin, count, errbuf, errlen);
  if (rc != PS_OK) return rc;
  uint64_t off = key_begin - s->begin;

  if (s->mode == PS__CONSISTENCY_MODE__MODE_ASP) {
    /* Each push is scaled by 1/live workers: the learning rate is tuned for
     * the mean gradient of a global batch (BSP, --standalone), and N workers
     * each applying their own batch's mean at full rate step N times too far
     * (one epoch of the 2-worker MLP: test accuracy 0.71-0.76 at scale 1,
     * 0.80-0.83 at scale 1/2). */
    ps_apply_sgd(s->weights + off, s->velocity ? s->velocity + off : NULL, g,
                 (size_t)count, s->learning_rate, s->momentum,
                 s->nlive > 1 ? 1.0f / (float)s->nlive : 1.0f);
    if (step != UINT64_MAX && step + 1 > s->clock) s->clock = step + 1;
    if (applied) *applied = 1;
    return PS_OK;
  }

  if (step < s->clock)
    return fail(errbuf, errlen, PS_ERR_REFUSED,
                "push for step %llu but the server is at step %llu: a "
                "duplicate or stale push",
                (unsigned long long)step, (unsigned long long)s->clock);
  if (step > s->clock)
    return fail(errbuf, errlen, PS_ERR_REFUSED,
                "push for step %llu but the server is at step %llu: the "
                "worker did not pull step %llu first",
                (unsigned long long)step, (unsigned long long)s->clock,
                (unsigned long long)s->clock);
  if (!is_live(s, worker))
    return fail(errbuf, errlen, PS_ERR_REFUSED,
                "push for step %llu from worker %u, which is not a live "
                "worker of the view",
                (unsigned long long)step, worker);
  contribution_t *c = find_contribution(s, worker);
  uint64_t had = c ? c->received : 0;
  if (count > s->len - had)
    return fail(errbuf, errlen, PS_ERR_REFUSED,
                "worker %u pushed %llu of the %llu values of [%llu,%llu) for "
                "step %llu already; %llu more is a duplicate push",
                worker, (unsigned long long)had, (unsigned long long)s->len,
                (unsigned long long)s->begin, (unsigned long long)s->end,
                (unsigned long long)step, (unsigned long long)count);
  if (c == NULL) {
    if (s->ncontrib == s->contrib_cap) {
      size_t cap = s->contrib_cap ? 2 * s->contrib_cap : 8;
      contribution_t *grown = realloc(s->contrib, cap * sizeof(*grown));
      if (grown == NULL)
        return fail(errbuf, errlen, PS_ERR_NOMEM,
                    "no memory to track worker %u's push", worker);
      s->contrib = grown;
      s->contrib_cap = cap;
    }
    c = &s->contrib[s->ncontrib++];
    c->worker = worker;
    c->received = 0;
  }

  acc_add(s, off, count, g);
  c->received += count;
  s->received += count;
  /* Only a worker finishing its share can finish the step. */
  int done = c->received == s->len ? bsp_try_complete(s) : 0;
  if (applied) *applied = done;
  return PS_OK;
}

int ps_shard_read(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  float *out, char *errbuf, size_t errlen) {
  int rc = check_slice(s, key_begin, count, errbuf, errlen);
  if (rc != PS_OK) return rc;
  memcpy(out, s->weights + (key_begin - s->begin),
         (size_t)count * sizeof(float));
  return PS_OK;
}

int ps_shard_set_live_workers(ps_shard_t *s, const uint32_t *live, size_t n,
                              int *applied) {
  if (applied) *applied = 0;
  int ok;
  uint32_t *copy = copy_ids(live, n, &ok);
  if (!ok) return PS_ERR_NOMEM;
  free(s->live);
  s->live = copy;
  s->nlive = n;
  int done = 0;
  if (s->mode == PS__CONSISTENCY_MODE__MODE_BSP) done = bsp_try_complete(s);
  if (applied) *applied = done;
  return PS_OK;
}
