/* How long one push into a server's sparse table takes while the table
 * grows (no network, no loop): fills --rows fresh ids of dim 16 (SGD) in
 * pushes of --keys ascending ids, timing every call, and prints the
 * slowest call, p99.9, p99 and p50. A table that rehashes or copies all of
 * itself on growth shows it as a max far above p99.9: on the server, a
 * stall of its loop (heartbeats included) that long.
 *
 *   sparse-grow-bench [ROWS [KEYS]]   (defaults 4000000 4096) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "ps-server/sparse.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  uint64_t rows = argc > 1 ? strtoull(argv[1], NULL, 10) : 4000000;
  uint64_t keys = argc > 2 ? strtoull(argv[2], NULL, 10) : 4096;
  if (rows == 0 || keys == 0 || keys > rows) {
    fprintf(stderr,
            "usage: sparse-grow-bench [ROWS [KEYS]], 0 < KEYS <= ROWS\n");
    return 2;
  }
  ps_sparse_spec_t spec;
  memset(&spec, 0, sizeof(spec));
  snprintf(spec.name, sizeof(spec.name), "emb");
  spec.dim = 16;
  spec.init_scale = 0.01f;
  ps_model_t model;
  memset(&model, 0, sizeof(model));
  model.learning_rate = 0.01f;
  model.seed = 1;
  ps_sparse_table_t *t = ps_sparse_table_new(&spec, &model);
  uint64_t *ids = malloc(keys * sizeof(*ids));
  float *grads = calloc(keys * spec.dim, sizeof(float));
  uint64_t calls = (rows + keys - 1) / keys;
  double *lat = malloc(calls * sizeof(*lat));
  if (t == NULL || ids == NULL || grads == NULL || lat == NULL) {
    fprintf(stderr, "sparse-grow-bench: no memory\n");
    return 1;
  }
  uint64_t next = 0, slowest_at = 0;
  double total = 0;
  for (uint64_t c = 0; c < calls; c++) {
    uint64_t n = rows - next < keys ? rows - next : keys;
    for (uint64_t i = 0; i < n; i++) ids[i] = next + i;
    double t0 = now_us();
    char err[128];
    if (ps_sparse_table_push(t, ids, n, grads, 1.0f, 0, err, sizeof(err)) !=
        PS_OK) {
      fprintf(stderr, "sparse-grow-bench: %s\n", err);
      return 1;
    }
    lat[c] = now_us() - t0;
    total += lat[c];
    if (lat[c] > lat[slowest_at]) slowest_at = c;
    next += n;
  }
  uint64_t slowest_rows = (slowest_at + 1) * keys;
  qsort(lat, calls, sizeof(*lat), by_value);
  printf(
      "sparse_grow rows=%llu keys=%llu calls=%llu total_ms=%.1f "
      "p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f "
      "max_at_rows=%llu\n",
      (unsigned long long)rows, (unsigned long long)keys,
      (unsigned long long)calls, total / 1e3, lat[calls / 2],
      lat[calls * 99 / 100], lat[calls * 999 / 1000], lat[calls - 1],
      (unsigned long long)slowest_rows);
  free(lat);
  free(grads);
  free(ids);
  ps_sparse_table_destroy(&t);
  return 0;
}
