/* Metrics in the Prometheus text exposition format, version 0.0.4.
 *
 * Two parts:
 *
 * - ps_metrics_t, the registry of one scrape: a daemon's render function
 *   declares each family (name, type, help) and writes its samples, read
 *   from the daemon's real state at that moment. Counters and gauges live
 *   where they always lived (the daemon's stats, its node table, its
 *   ranges); nothing is copied into the registry between scrapes, so a
 *   metric cannot drift from the state it reports. The registry checks
 *   what Prometheus and promtool would refuse: a family named twice, a
 *   bad metric or label name, a counter not ending in _total, a sample
 *   outside its family. The first such mistake is kept (ps_metrics_error)
 *   and later writes are ignored; tests assert there is none.
 *
 * - ps_hist_t, a histogram with fixed buckets, observed in integer units
 *   (nanoseconds, bytes) and rendered in base units (seconds, bytes) as
 *   _bucket{le=...}, _sum and _count. Its counters are single-writer
 *   atomics: one thread observes (a plain load and store, no locked
 *   instruction on the hot path), any thread may render it. _count is
 *   the +Inf bucket, so a scrape never shows _count below a bucket.
 *
 * ps_counter_t and ps_gauge_t are the same single-writer atomics for
 * values that one thread writes and another renders (the worker's trainer
 * and its metrics thread).
 *
 * Names follow Prometheus conventions: ps_ prefix, base units in the
 * name (_seconds, _bytes), counters end in _total.
 *
 * A registry belongs to the thread that renders with it.
 */
#ifndef PS_METRICS_H
#define PS_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
  PS_METRIC_COUNTER,
  PS_METRIC_GAUGE,
  PS_METRIC_HISTOGRAM,
} ps_metric_type_t;

/* The Content-Type of the text format. */
#define PS_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct ps_metrics_s ps_metrics_t;

/* An empty registry; NULL when out of memory. Caller owns the result. */
ps_metrics_t *ps_metrics_new(void);

/* Frees m and sets *m_p to NULL. NULL-safe. */
void ps_metrics_destroy(ps_metrics_t **m_p);

/* Empties m for the next scrape (keeps its memory). */
void ps_metrics_reset(ps_metrics_t *m);

/* Starts family name: its # HELP and # TYPE lines. Every sample written
 * until the next family belongs to it. Returns 0, or -1 after recording
 * the mistake (see above). */
int ps_metrics_family(ps_metrics_t *m, const char *name, ps_metric_type_t type,
                      const char *help);

/* One sample of the current counter or gauge family, with the labels given
 * as NULL-terminated name, value pairs ("op", "push", NULL); label values
 * are escaped. Returns 0 or -1 as above. */
int ps_metrics_sample(ps_metrics_t *m, double value, ...)
    __attribute__((sentinel));

/* The same with n label pairs in labels[2 * n]. */
int ps_metrics_samplev(ps_metrics_t *m, double value, const char *const *labels,
                       size_t n);

/* Family + one unlabelled sample: the common case. */
int ps_metrics_put(ps_metrics_t *m, const char *name, ps_metric_type_t type,
                   const char *help, double value);

/* The text so far, NUL-terminated, owned by m (valid until the next call
 * on m); *len (if not NULL) gets its length. */
const char *ps_metrics_text(const ps_metrics_t *m, size_t *len);

/* The first mistake made on m since its reset, or "" if none. */
const char *ps_metrics_error(const ps_metrics_t *m);

/* ---- histograms ---- */

#define PS_HIST_MAX_BUCKETS 24

typedef struct {
  size_t nbounds;
  uint64_t bounds[PS_HIST_MAX_BUCKETS]; /* upper bounds, in observed units */
  double unit;                          /* one observed unit in base units */
  _Atomic uint64_t counts[PS_HIST_MAX_BUCKETS + 1]; /* per bucket; last: +Inf */
  _Atomic uint64_t sum;                             /* in observed units */
} ps_hist_t;

/* Upper bounds for durations, in seconds: 50 us to 10 s. */
extern const double ps_hist_seconds_bounds[];
extern const size_t ps_hist_seconds_nbounds;

/* Sets h up with n (at most PS_HIST_MAX_BUCKETS) increasing upper bounds in
 * base units, observed in units of unit base units (1e-9: nanoseconds for
 * seconds). Returns 0, or -1 for bad bounds. */
int ps_hist_init(ps_hist_t *h, const double *bounds, size_t n, double unit);

/* Counts one observation of v units. One writer thread per histogram. */
void ps_hist_observe(ps_hist_t *h, uint64_t v);

/* Observations so far (its +Inf bucket). Any thread. */
uint64_t ps_hist_count(const ps_hist_t *h);

/* Writes h as a sample set of the current histogram family, with the
 * NULL-terminated label pairs (le is added). Returns 0 or -1 as above. */
int ps_metrics_histogram(ps_metrics_t *m, const ps_hist_t *h, ...)
    __attribute__((sentinel));
int ps_metrics_histogramv(ps_metrics_t *m, const ps_hist_t *h,
                          const char *const *labels, size_t n);

/* ---- single-writer values shared with a rendering thread ---- */

typedef _Atomic uint64_t ps_counter_t;
typedef _Atomic uint64_t ps_gauge_t; /* the bits of a double */

/* One writer thread per counter or gauge; any thread reads. */
static inline void ps_counter_add(ps_counter_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}
static inline uint64_t ps_counter_get(const ps_counter_t *c) {
  return atomic_load_explicit((ps_counter_t *)c, memory_order_relaxed);
}
static inline void ps_gauge_set(ps_gauge_t *g, double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  atomic_store_explicit(g, bits, memory_order_relaxed);
}
static inline double ps_gauge_get(const ps_gauge_t *g) {
  uint64_t bits = atomic_load_explicit((ps_gauge_t *)g, memory_order_relaxed);
  double v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

#endif
