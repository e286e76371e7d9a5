#include "worker/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/exporter.h"
#include "common/metrics.h"

struct ps_worker_metrics_s {
  uv_loop_t loop;
  uv_async_t stop;
  pthread_t thread;
  ps_exporter_t *exporter;
  ps_trainer_stats_t *stats;
};

static void render(ps_metrics_t *m, void *arg) {
  ps_worker_metrics_t *wm = arg;
  ps_trainer_stats_t *st = wm->stats;
  ps_metrics_put(m, "ps_worker_rank", PS_METRIC_GAUGE,
                 "This worker's rank (0 until it joined).",
                 ps_gauge_get(&st->rank));
  ps_metrics_put(m, "ps_worker_workers", PS_METRIC_GAUGE,
                 "Workers of the job, as this worker joined it.",
                 ps_gauge_get(&st->workers));
  ps_metrics_put(m, "ps_worker_training", PS_METRIC_GAUGE,
                 "1 while the worker trains, else 0.",
                 atomic_load(&st->phase) == PS_TRAINER_TRAINING ? 1.0 : 0.0);
  ps_metrics_put(m, "ps_worker_steps_total", PS_METRIC_COUNTER,
                 "Steps this worker computed and pushed.",
                 (double)ps_counter_get(&st->steps));
  ps_metrics_put(m, "ps_worker_samples_total", PS_METRIC_COUNTER,
                 "Training examples in those steps (sum the rate over "
                 "workers for the job's samples/s).",
                 (double)ps_counter_get(&st->samples));
  ps_metrics_put(m, "ps_worker_samples_per_second", PS_METRIC_GAUGE,
                 "The job's samples/s as this worker measured it over its "
                 "last progress interval (evaluation excluded).",
                 ps_gauge_get(&st->samples_per_sec));
  ps_metrics_put(m, "ps_worker_step", PS_METRIC_GAUGE,
                 "Global steps done (the next step's clock).",
                 ps_gauge_get(&st->step));
  ps_metrics_put(m, "ps_worker_total_steps", PS_METRIC_GAUGE,
                 "Global step at which this run ends.",
                 ps_gauge_get(&st->total_steps));
  ps_metrics_put(m, "ps_worker_epoch", PS_METRIC_GAUGE, "Whole epochs done.",
                 ps_gauge_get(&st->epoch));
  ps_metrics_family(m, "ps_worker_step_phase_seconds_total", PS_METRIC_COUNTER,
                    "Step time by phase: waiting for the weights (pull), "
                    "computing the gradient (compute), waiting for the "
                    "servers to ack it (push; with per-layer pushes the "
                    "compute of lower layers overlaps it).");
  ps_metrics_sample(m, (double)ps_counter_get(&st->pull_wait_ns) * 1e-9,
                    "phase", "pull", NULL);
  ps_metrics_sample(m, (double)ps_counter_get(&st->compute_ns) * 1e-9, "phase",
                    "compute", NULL);
  ps_metrics_sample(m, (double)ps_counter_get(&st->push_wait_ns) * 1e-9,
                    "phase", "push", NULL);
  ps_metrics_family(m, "ps_worker_step_seconds", PS_METRIC_HISTOGRAM,
                    "Duration of one training step, pull to ack.");
  ps_metrics_histogram(m, &st->step_seconds, NULL);
  ps_metrics_put(m, "ps_worker_train_loss", PS_METRIC_GAUGE,
                 "Mean batch loss of the current epoch so far.",
                 ps_gauge_get(&st->train_loss));
  /* NaN until the first evaluation: Prometheus stores it as such and
   * alert expressions compare false. */
  ps_metrics_put(m, "ps_worker_test_accuracy", PS_METRIC_GAUGE,
                 "Test-set accuracy of the last evaluation (0 to 1; NaN: "
                 "none yet; rank 0 evaluates).",
                 ps_gauge_get(&st->test_accuracy));
  ps_metrics_put(m, "ps_worker_test_loss", PS_METRIC_GAUGE,
                 "Test-set loss of the last evaluation (NaN: none yet).",
                 ps_gauge_get(&st->test_loss));
  ps_metrics_put(m, "ps_worker_evaluations_total", PS_METRIC_COUNTER,
                 "Test-set evaluations.",
                 (double)ps_counter_get(&st->evaluations));
  ps_metrics_put(m, "ps_worker_duplicate_acks_total", PS_METRIC_COUNTER,
                 "Resent pushes the servers had applied already (acked as "
                 "duplicates).",
                 (double)ps_counter_get(&st->duplicate_acks));
}

static int health(char *reason, size_t len, void *arg) {
  ps_worker_metrics_t *wm = arg;
  switch (atomic_load(&wm->stats->phase)) {
    case PS_TRAINER_TRAINING:
      return 1;
    case PS_TRAINER_STARTING:
      snprintf(reason, len, "starting: loading data, joining the cluster");
      return 0;
    case PS_TRAINER_FINISHED:
      snprintf(reason, len, "training finished");
      return 0;
    default:
      snprintf(reason, len, "training failed");
      return 0;
  }
}

static void stop_cb(uv_async_t *a) {
  ps_worker_metrics_t *wm = a->data;
  ps_exporter_destroy(&wm->exporter);
  uv_close((uv_handle_t *)a, NULL);
}

static void *thread_main(void *arg) {
  ps_worker_metrics_t *wm = arg;
  /* The async handle holds the loop until ps_worker_metrics_stop. */
  uv_run(&wm->loop, UV_RUN_DEFAULT);
  return NULL;
}

ps_worker_metrics_t *ps_worker_metrics_start(const char *bind,
                                             ps_trainer_stats_t *stats,
                                             char *err, size_t errlen) {
  ps_worker_metrics_t *wm = calloc(1, sizeof(*wm));
  if (wm == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  wm->stats = stats;
  int rc = uv_loop_init(&wm->loop);
  if (rc != 0) {
    snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(rc));
    free(wm);
    return NULL;
  }
  char why[256];
  /* Made before the thread runs the loop: a bad address fails here. */
  wm->exporter = ps_exporter_new(&wm->loop, bind, "worker", NULL, render,
                                 health, wm, why, sizeof(why));
  if (wm->exporter == NULL) {
    snprintf(err, errlen, "metrics endpoint: %s", why);
    uv_run(&wm->loop, UV_RUN_DEFAULT); /* frees what was opened */
    uv_loop_close(&wm->loop);
    free(wm);
    return NULL;
  }
  uv_async_init(&wm->loop, &wm->stop, stop_cb);
  wm->stop.data = wm;
  rc = pthread_create(&wm->thread, NULL, thread_main, wm);
  if (rc != 0) {
    snprintf(err, errlen, "cannot start the metrics thread: %s", strerror(rc));
    stop_cb(&wm->stop);
    uv_run(&wm->loop, UV_RUN_DEFAULT);
    uv_loop_close(&wm->loop);
    free(wm);
    return NULL;
  }
  return wm;
}

void ps_worker_metrics_stop(ps_worker_metrics_t **m_p) {
  ps_worker_metrics_t *wm = m_p ? *m_p : NULL;
  if (wm == NULL) return;
  *m_p = NULL;
  uv_async_send(&wm->stop);
  pthread_join(wm->thread, NULL);
  uv_loop_close(&wm->loop);
  free(wm);
}

const char *ps_worker_metrics_address(const ps_worker_metrics_t *wm) {
  /* Set before the thread started, never written since. */
  return ps_exporter_address(wm->exporter);
}
