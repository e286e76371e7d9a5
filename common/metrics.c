#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Most label pairs on one sample: more is a mistake, not a use. */
#define PS__METRICS_MAX_LABELS 8
#define PS__METRICS_NAME_MAX 128

struct ps_metrics_s {
  char *buf;
  size_t len, cap;
  int nomem;
  /* Families of this scrape, for the named-twice check. */
  char **names;
  size_t nnames, names_cap;
  /* The family being written. */
  char family[PS__METRICS_NAME_MAX];
  ps_metric_type_t type;
  int open;
  char err[256];
};

const double ps_hist_seconds_bounds[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0};
const size_t ps_hist_seconds_nbounds =
    sizeof(ps_hist_seconds_bounds) / sizeof(ps_hist_seconds_bounds[0]);

ps_metrics_t *ps_metrics_new(void) {
  ps_metrics_t *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  m->cap = 16384;
  m->buf = malloc(m->cap);
  if (m->buf == NULL) {
    free(m);
    return NULL;
  }
  m->buf[0] = '\0';
  return m;
}

void ps_metrics_reset(ps_metrics_t *m) {
  for (size_t i = 0; i < m->nnames; i++) free(m->names[i]);
  m->nnames = 0;
  m->len = 0;
  m->buf[0] = '\0';
  m->nomem = 0;
  m->open = 0;
  m->family[0] = '\0';
  m->err[0] = '\0';
}

void ps_metrics_destroy(ps_metrics_t **m_p) {
  ps_metrics_t *m = m_p ? *m_p : NULL;
  if (m == NULL) return;
  *m_p = NULL;
  ps_metrics_reset(m);
  free(m->names);
  free(m->buf);
  free(m);
}

static void fail(ps_metrics_t *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(ps_metrics_t *m, const char *fmt, ...) {
  if (m->err[0] != '\0') return; /* the first mistake is the one to fix */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->err, sizeof(m->err), fmt, ap);
  va_end(ap);
}

static int reserve(ps_metrics_t *m, size_t more) {
  if (m->nomem) return -1;
  if (m->len + more + 1 <= m->cap) return 0;
  size_t cap = m->cap;
  while (m->len + more + 1 > cap) cap *= 2;
  char *grown = realloc(m->buf, cap);
  if (grown == NULL) {
    m->nomem = 1;
    fail(m, "out of memory rendering metrics");
    return -1;
  }
  m->buf = grown;
  m->cap = cap;
  return 0;
}

static void append(ps_metrics_t *m, const char *s, size_t n) {
  if (reserve(m, n) != 0) return;
  memcpy(m->buf + m->len, s, n);
  m->len += n;
  m->buf[m->len] = '\0';
}

static void append_str(ps_metrics_t *m, const char *s) {
  append(m, s, strlen(s));
}

/* Escapes \ and newline (HELP), and " too (label values). */
static void append_escaped(ps_metrics_t *m, const char *s, int quote) {
  for (const char *p = s; *p; p++) {
    if (*p == '\\')
      append(m, "\\\\", 2);
    else if (*p == '\n')
      append(m, "\\n", 2);
    else if (quote && *p == '"')
      append(m, "\\\"", 2);
    else
      append(m, p, 1);
  }
}

static void append_value(ps_metrics_t *m, double v) {
  char b[48];
  if (isnan(v))
    snprintf(b, sizeof(b), "NaN");
  else if (isinf(v))
    snprintf(b, sizeof(b), "%s", v > 0 ? "+Inf" : "-Inf");
  else if (v == floor(v) && fabs(v) < 1e15)
    snprintf(b, sizeof(b), "%.0f", v);
  else
    snprintf(b, sizeof(b), "%.15g", v);
  append_str(m, b);
}

static int valid_name(const char *s, int colon_ok) {
  if (s == NULL || *s == '\0') return 0;
  for (const char *p = s; *p; p++) {
    int alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                *p == '_' || (colon_ok && *p == ':');
    int digit = *p >= '0' && *p <= '9';
    if (!alpha && !(digit && p != s)) return 0;
  }
  return 1;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static const char *type_name(ps_metric_type_t t) {
  switch (t) {
    case PS_METRIC_COUNTER:
      return "counter";
    case PS_METRIC_GAUGE:
      return "gauge";
    case PS_METRIC_HISTOGRAM:
      return "histogram";
  }
  return "untyped";
}

int ps_metrics_family(ps_metrics_t *m, const char *name, ps_metric_type_t type,
                      const char *help) {
  if (m->err[0] != '\0') return -1;
  if (!valid_name(name, 1) || strlen(name) >= PS__METRICS_NAME_MAX) {
    fail(m,
         "metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]* of under %d "
         "characters",
         name ? name : "", PS__METRICS_NAME_MAX);
    return -1;
  }
  if (type != PS_METRIC_COUNTER && type != PS_METRIC_GAUGE &&
      type != PS_METRIC_HISTOGRAM) {
    fail(m, "metric %s: unknown type %d", name, (int)type);
    return -1;
  }
  if (type == PS_METRIC_COUNTER && !ends_with(name, "_total")) {
    fail(m, "counter %s must end in _total", name);
    return -1;
  }
  if (type != PS_METRIC_COUNTER && ends_with(name, "_total")) {
    fail(m, "%s %s must not end in _total (counters only)", type_name(type),
         name);
    return -1;
  }
  if (type == PS_METRIC_HISTOGRAM &&
      (ends_with(name, "_bucket") || ends_with(name, "_sum") ||
       ends_with(name, "_count"))) {
    fail(m, "histogram %s must not end in _bucket, _sum or _count", name);
    return -1;
  }
  for (size_t i = 0; i < m->nnames; i++)
    if (strcmp(m->names[i], name) == 0) {
      fail(m, "metric family %s is declared twice", name);
      return -1;
    }
  if (m->nnames == m->names_cap) {
    size_t cap = m->names_cap ? m->names_cap * 2 : 64;
    char **grown = realloc(m->names, cap * sizeof(*grown));
    if (grown == NULL) {
      fail(m, "out of memory rendering metrics");
      return -1;
    }
    m->names = grown;
    m->names_cap = cap;
  }
  m->names[m->nnames] = strdup(name);
  if (m->names[m->nnames] == NULL) {
    fail(m, "out of memory rendering metrics");
    return -1;
  }
  m->nnames++;
  snprintf(m->family, sizeof(m->family), "%s", name);
  m->type = type;
  m->open = 1;
  append_str(m, "# HELP ");
  append_str(m, name);
  append_str(m, " ");
  append_escaped(m, help ? help : "", 0);
  append_str(m, "\n# TYPE ");
  append_str(m, name);
  append_str(m, " ");
  append_str(m, type_name(type));
  append_str(m, "\n");
  return m->err[0] ? -1 : 0;
}

/* name{labels[, le="..."]} value */
static int write_sample(ps_metrics_t *m, const char *suffix,
                        const char *const *labels, size_t n, const char *le,
                        double value) {
  if (n > PS__METRICS_MAX_LABELS) {
    fail(m, "metric %s: %zu label pairs, at most %d", m->family, n,
         PS__METRICS_MAX_LABELS);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    const char *k = labels[2 * i], *v = labels[2 * i + 1];
    if (!valid_name(k, 0) || strncmp(k, "__", 2) == 0 || strcmp(k, "le") == 0 ||
        v == NULL) {
      fail(m, "metric %s: bad label %s=%s", m->family, k ? k : "(null)",
           v ? v : "(null)");
      return -1;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[2 * j], k) == 0) {
        fail(m, "metric %s: label %s given twice", m->family, k);
        return -1;
      }
  }
  append_str(m, m->family);
  append_str(m, suffix);
  if (n > 0 || le != NULL) {
    append_str(m, "{");
    for (size_t i = 0; i < n; i++) {
      if (i > 0) append_str(m, ",");
      append_str(m, labels[2 * i]);
      append_str(m, "=\"");
      append_escaped(m, labels[2 * i + 1], 1);
      append_str(m, "\"");
    }
    if (le != NULL) {
      if (n > 0) append_str(m, ",");
      append_str(m, "le=\"");
      append_str(m, le);
      append_str(m, "\"");
    }
    append_str(m, "}");
  }
  append_str(m, " ");
  append_value(m, value);
  append_str(m, "\n");
  return m->err[0] ? -1 : 0;
}

int ps_metrics_samplev(ps_metrics_t *m, double value, const char *const *labels,
                       size_t n) {
  if (m->err[0] != '\0') return -1;
  if (!m->open) {
    fail(m, "a sample written before any family");
    return -1;
  }
  if (m->type == PS_METRIC_HISTOGRAM) {
    fail(m, "histogram %s takes ps_metrics_histogram, not a sample", m->family);
    return -1;
  }
  return write_sample(m, "", labels, n, NULL, value);
}

/* Collects the NULL-terminated label pairs of a variadic call. */
static size_t collect_labels(ps_metrics_t *m, va_list ap, const char **out) {
  size_t k = 0;
  for (;;) {
    const char *s = va_arg(ap, const char *);
    if (s == NULL) break;
    if (k == 2 * PS__METRICS_MAX_LABELS) {
      fail(m, "metric %s: more than %d label pairs", m->family,
           PS__METRICS_MAX_LABELS);
      return SIZE_MAX;
    }
    out[k++] = s;
  }
  if (k % 2 != 0) {
    fail(m, "metric %s: a label without a value", m->family);
    return SIZE_MAX;
  }
  return k / 2;
}

int ps_metrics_sample(ps_metrics_t *m, double value, ...) {
  const char *labels[2 * PS__METRICS_MAX_LABELS];
  va_list ap;
  va_start(ap, value);
  size_t n = collect_labels(m, ap, labels);
  va_end(ap);
  if (n == SIZE_MAX) return -1;
  return ps_metrics_samplev(m, value, labels, n);
}

int ps_metrics_put(ps_metrics_t *m, const char *name, ps_metric_type_t type,
                   const char *help, double value) {
  if (ps_metrics_family(m, name, type, help) != 0) return -1;
  return ps_metrics_samplev(m, value, NULL, 0);
}

const char *ps_metrics_text(const ps_metrics_t *m, size_t *len) {
  if (len) *len = m->len;
  return m->buf;
}

const char *ps_metrics_error(const ps_metrics_t *m) {
  return m->err;
}

/* ---- histograms ---- */

int ps_hist_init(ps_hist_t *h, const double *bounds, size_t n, double unit) {
  memset(h, 0, sizeof(*h));
  if (n > PS_HIST_MAX_BUCKETS || !(unit > 0)) return -1;
  h->unit = unit;
  h->nbounds = n;
  for (size_t i = 0; i < n; i++) {
    if (!(bounds[i] >= 0) || (i > 0 && !(bounds[i] > bounds[i - 1]))) return -1;
    h->bounds[i] = (uint64_t)llround(bounds[i] / unit);
  }
  return 0;
}

static void bump(_Atomic uint64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

void ps_hist_observe(ps_hist_t *h, uint64_t v) {
  size_t i = 0;
  while (i < h->nbounds && v > h->bounds[i]) i++;
  bump(&h->sum, v);
  bump(&h->counts[i], 1);
}

uint64_t ps_hist_count(const ps_hist_t *h) {
  uint64_t n = 0;
  for (size_t i = 0; i <= h->nbounds; i++)
    n += atomic_load_explicit((_Atomic uint64_t *)&h->counts[i],
                              memory_order_relaxed);
  return n;
}

int ps_metrics_histogramv(ps_metrics_t *m, const ps_hist_t *h,
                          const char *const *labels, size_t n) {
  if (m->err[0] != '\0') return -1;
  if (!m->open || m->type != PS_METRIC_HISTOGRAM) {
    fail(m, "histogram samples written outside a histogram family (%s)",
         m->open ? m->family : "none");
    return -1;
  }
  /* The sum is read before the buckets: a concurrent observation then
   * shows in a bucket before it shows in the sum, never the other way. */
  double sum = (double)atomic_load_explicit((_Atomic uint64_t *)&h->sum,
                                            memory_order_relaxed) *
               h->unit;
  uint64_t cum = 0;
  char le[48];
  for (size_t i = 0; i <= h->nbounds; i++) {
    cum += atomic_load_explicit((_Atomic uint64_t *)&h->counts[i],
                                memory_order_relaxed);
    if (i < h->nbounds)
      snprintf(le, sizeof(le), "%.15g", (double)h->bounds[i] * h->unit);
    else
      snprintf(le, sizeof(le), "+Inf");
    if (write_sample(m, "_bucket", labels, n, le, (double)cum) != 0) return -1;
  }
  if (write_sample(m, "_sum", labels, n, NULL, sum) != 0) return -1;
  return write_sample(m, "_count", labels, n, NULL, (double)cum);
}

int ps_metrics_histogram(ps_metrics_t *m, const ps_hist_t *h, ...) {
  const char *labels[2 * PS__METRICS_MAX_LABELS];
  va_list ap;
  va_start(ap, h);
  size_t n = collect_labels(m, ap, labels);
  va_end(ap);
  if (n == SIZE_MAX) return -1;
  return ps_metrics_histogramv(m, h, labels, n);
}
