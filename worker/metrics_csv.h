/* ps-worker --metrics-csv: the run's figures as CSV, for plots
 * (deploy/plot.sh) and spreadsheets. One header line, then one row per
 * progress interval, per epoch and once at the end:
 *
 *   time_s,kind,epoch,step,steps,loss,lr,samples_per_sec,test_loss,
 *   test_accuracy
 *
 *   time_s           seconds since training started (monotonic clock)
 *   kind             progress (every --progress-ms), epoch (an epoch ended),
 *                    final (the run ended, after its last evaluation)
 *   epoch            the epoch of the step (1-based); for epoch rows the
 *                    epoch that ended
 *   step, steps      global steps done, and the run's last step
 *   loss             progress: mean batch loss over the interval; epoch and
 *                    final: the epoch's mean batch loss
 *   lr               learning rate of that step (the schedule applied)
 *   samples_per_sec  the job's (all workers'): progress: over the interval;
 *                    epoch and final: since training started; evaluations
 *                    are left out of both
 *   test_loss, test_accuracy  of the evaluation at that row's step (the
 *                    worker that evaluates: rank 0, or one with --report
 *                    or --dump-weights); empty when there was none
 *
 * Numbers are plain C-locale decimals; a missing one is an empty field.
 * Rows are flushed as they are written, so a plot of a running job reads
 * what was measured so far.
 *
 * The trainer's thread only.
 */
#ifndef PS_METRICS_CSV_H
#define PS_METRICS_CSV_H

#include <stddef.h>
#include <stdint.h>

typedef struct ps_metrics_csv_s ps_metrics_csv_t;

typedef struct {
  double time_s;
  const char *kind; /* "progress", "epoch", "final" */
  uint64_t epoch, step, steps;
  double loss, lr, samples_per_sec;
  double test_loss, test_accuracy; /* NAN: no evaluation at this step */
} ps_metrics_csv_row_t;

/* Creates (truncates) path and writes the header. Returns NULL with the
 * reason in err. Caller owns the result. */
ps_metrics_csv_t *ps_metrics_csv_open(const char *path, char *err,
                                      size_t errlen);

/* Appends one row and flushes it. A write that fails is logged once
 * (event=metrics_csv_failed) and ends the file: training goes on without
 * it. NULL-safe. */
void ps_metrics_csv_row(ps_metrics_csv_t *c, const ps_metrics_csv_row_t *r);

/* Closes the file, frees c and sets *c_p to NULL. NULL-safe. */
void ps_metrics_csv_close(ps_metrics_csv_t **c_p);

#endif
