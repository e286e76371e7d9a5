/* Ranking and probability metrics of a binary classifier on a whole test
 * set: ROC AUC (exact, ties counted half) and log loss. Shared by ps-datagen
 * (the planted model's figures) and ps-worker (the trained model's), so the
 * two are measured by the same code. Any thread.
 */
#ifndef PS_AUC_H
#define PS_AUC_H

#include <stddef.h>
#include <stdint.h>

/* ROC AUC of score against label (0 or 1) over n examples: the probability
 * that a random positive scores above a random negative, ties counted half.
 * Sorts a copy of the scores: O(n log n) time, 12 n bytes. Returns PS_OK
 * with *auc set, PS_ERR_INVAL when the set has no positive or no negative
 * (AUC undefined), PS_ERR_NOMEM. */
int ps_auc(const float *score, const uint8_t *label, size_t n, double *auc);

/* Mean binary cross-entropy of probabilities p (clamped to [1e-7, 1 - 1e-7]
 * so that a confident mistake costs a finite amount) against label. 0 for
 * n == 0. */
double ps_log_loss(const float *p, const uint8_t *label, size_t n);

#endif
