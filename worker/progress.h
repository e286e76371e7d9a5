/* ps-worker's progress line for a person at a terminal:
 *
 *   epoch 2/10 [=======>         ] step 1200/9370 12% loss 0.4213 acc 0.8412
 *   5123 samples/s ETA 1m32s
 *
 * (one line; common/log.h keeps it below the log lines and rewrites it in
 * place). Formatting only: the trainer decides when to draw it.
 *
 * Any thread; no state.
 */
#ifndef PS_PROGRESS_H
#define PS_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t epoch, epochs; /* the epoch in progress, 1-based, and of how many */
  uint64_t step, steps;   /* global steps done, and the run's last */
  double loss;            /* mean batch loss lately; NAN: none yet */
  double test_accuracy;   /* of the last evaluation; NAN: none */
  double samples_per_sec; /* NAN or <= 0: not known yet */
  double eta_s;           /* seconds left; NAN: not known */
} ps_progress_t;

/* Writes the line for p into buf (always terminated), with a bar that
 * fills what width (the columns it may take) leaves, at least 10 wide.
 * Returns the length written. */
size_t ps_progress_format(const ps_progress_t *p, size_t width, char *buf,
                          size_t len);

/* "42s", "3m05s", "1h02m": how long a person reads an ETA as. */
void ps_progress_duration(double seconds, char *buf, size_t len);

#endif
