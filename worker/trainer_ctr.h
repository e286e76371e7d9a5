/* The training loop of ps-worker for the CTR model (--model ctr; worker/
 * model/ctr.h), behind ps_trainer_t (worker/trainer.h), which hands over
 * to it when its options name that model. Internal to ps-trainer.
 *
 * Data: Criteo text files read as streams (worker/data/criteo.h), rows
 * partitioned in blocks of the batch size by rank, so step s of worker r is
 * rows [(s W + r) B, (s W + r + 1) B) of the epoch, as trainer.h describes
 * for the image models, but in file order (a stream is not shuffled; a
 * generated data set is in random order already). An epoch has
 * floor(rows / (W B)) steps: the rows are counted once at start.
 *
 * A distributed step t: pull the dense weights as of clock t, pull the
 * batch's distinct ids from both sparse tables, forward and backward,
 * push the sparse tables' gradient rows (those ids only), then the dense
 * gradient as clock t. Sparse pushes are applied on arrival (the servers
 * have no BSP clock for sparse rows yet); because each is acknowledged
 * before its worker pushes step t's dense gradient, the dense pull of step
 * t + 1 sees every worker's sparse rows of step t. --standalone keeps both
 * tables in the worker (worker/model/local_table.h).
 *
 * Evaluation (rank 0, or a worker given --report): the whole test file,
 * AUC and log loss (worker/data/auc.h), after every epoch and at the end.
 */
#ifndef PS_TRAINER_CTR_H
#define PS_TRAINER_CTR_H

#include <stddef.h>

#include "worker/trainer.h"

typedef struct ps__trainer_ctr_s ps__trainer_ctr_t;

/* Checks the options, counts the training rows, builds the model and
 * joins the cluster (or builds the local tables). Results go to *res,
 * which must outlive the object. NULL with *err and errmsg as
 * ps_trainer_new. */
ps__trainer_ctr_t *ps__trainer_ctr_new(const ps_trainer_opts_t *o,
                                       ps_trainer_result_t *res, int *err,
                                       char *errmsg, size_t errlen);
int ps__trainer_ctr_run(ps__trainer_ctr_t *t);
const char *ps__trainer_ctr_errmsg(const ps__trainer_ctr_t *t);
void ps__trainer_ctr_destroy(ps__trainer_ctr_t **t_p);

#endif
