#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int bucket_of(uint64_t ns) {
  if (ns < 1) ns = 1;
  int msb = 63 - __builtin_clzll(ns);
  /* The PS_BENCH_HIST_SUB steps below the next power of two. */
  uint64_t sub = msb >= 6 ? (ns >> (msb - 6)) & 63 : (ns << (6 - msb)) & 63;
  int i = msb * PS_BENCH_HIST_SUB + (int)sub;
  return i < PS_BENCH_HIST_BUCKETS ? i : PS_BENCH_HIST_BUCKETS - 1;
}

/* The middle of bucket i, in ns. */
static double bucket_ns(int i) {
  int msb = i / PS_BENCH_HIST_SUB, sub = i % PS_BENCH_HIST_SUB;
  return (double)(1ull << msb) * (1.0 + (sub + 0.5) / PS_BENCH_HIST_SUB);
}

void ps_bench_hist_add(ps_bench_hist_t *h, uint64_t ns) {
  h->bucket[bucket_of(ns)]++;
  h->n++;
}

void ps_bench_hist_merge(ps_bench_hist_t *dst, const ps_bench_hist_t *src) {
  for (int i = 0; i < PS_BENCH_HIST_BUCKETS; i++)
    dst->bucket[i] += src->bucket[i];
  dst->n += src->n;
}

double ps_bench_hist_quantile_us(const ps_bench_hist_t *h, double q) {
  if (h->n == 0) return 0.0;
  uint64_t rank = (uint64_t)(q * (double)h->n + 0.5);
  if (rank < 1) rank = 1;
  if (rank > h->n) rank = h->n;
  uint64_t seen = 0;
  for (int i = 0; i < PS_BENCH_HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen >= rank) return bucket_ns(i) / 1000.0;
  }
  return bucket_ns(PS_BENCH_HIST_BUCKETS - 1) / 1000.0;
}

int ps_bench_hist_format(const ps_bench_hist_t *h, char *buf, size_t len) {
  size_t n = 0;
  if (len < 2) return -1;
  buf[0] = '\0';
  for (int i = 0; i < PS_BENCH_HIST_BUCKETS; i++) {
    if (h->bucket[i] == 0) continue;
    int w = snprintf(buf + n, len - n, "%s%d:%llu", n ? "," : "", i,
                     (unsigned long long)h->bucket[i]);
    if (w < 0 || (size_t)w >= len - n) return -1;
    n += (size_t)w;
  }
  if (n == 0) {
    buf[0] = '-';
    buf[1] = '\0';
    n = 1;
  }
  return (int)n;
}

int ps_bench_hist_parse(ps_bench_hist_t *h, const char *s) {
  if (strcmp(s, "-") == 0) return 0;
  while (*s) {
    char *end;
    long i = strtol(s, &end, 10);
    if (end == s || *end != ':' || i < 0 || i >= PS_BENCH_HIST_BUCKETS)
      return -1;
    s = end + 1;
    unsigned long long c = strtoull(s, &end, 10);
    if (end == s) return -1;
    h->bucket[i] += c;
    h->n += c;
    s = end;
    if (*s == ',')
      s++;
    else if (*s != '\0')
      return -1;
  }
  return 0;
}
