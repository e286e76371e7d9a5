#include "worker/data/auc.h"

#include <math.h>
#include <stdlib.h>

#include "common/err.h"

typedef struct {
  float score;
  uint8_t label;
} scored_t;

static int by_score(const void *a, const void *b) {
  float x = ((const scored_t *)a)->score, y = ((const scored_t *)b)->score;
  return (x > y) - (x < y);
}

int ps_auc(const float *score, const uint8_t *label, size_t n, double *auc) {
  scored_t *s = malloc((n ? n : 1) * sizeof(*s));
  if (s == NULL) return PS_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    s[i].score = score[i];
    s[i].label = label[i] ? 1 : 0;
  }
  qsort(s, n, sizeof(*s), by_score);
  /* Mann-Whitney: sum of the positives' ranks, a group of equal scores
   * sharing its mean rank. */
  double rank_sum = 0.0, pos = 0.0;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    double group_pos = 0.0;
    while (j < n && s[j].score == s[i].score) group_pos += s[j++].label;
    double mean_rank = ((double)i + 1.0 + (double)j) / 2.0;
    rank_sum += group_pos * mean_rank;
    pos += group_pos;
    i = j;
  }
  free(s);
  double neg = (double)n - pos;
  if (pos == 0.0 || neg == 0.0) return PS_ERR_INVAL;
  *auc = (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg);
  return PS_OK;
}

double ps_log_loss(const float *p, const uint8_t *label, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) {
    double q = p[i];
    if (q < 1e-7) q = 1e-7;
    if (q > 1.0 - 1e-7) q = 1.0 - 1e-7;
    sum -= label[i] ? log(q) : log1p(-q);
  }
  return n ? sum / (double)n : 0.0;
}
