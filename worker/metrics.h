/* ps-worker's /metrics and /healthz (common/exporter.h) on a small thread
 * of its own.
 *
 * Why a thread, when the server and the scheduler serve on their loops:
 * the trainer's loop is no event loop. It blocks in ps_client_wait, in
 * BLAS and on the GPU for whole steps, so a scrape served there would wait
 * for a step. libps-client's background thread does run a uv loop
 * (client_thread.c), but it is the client's private link to the scheduler:
 * serving there would put trainer figures behind the client's public API.
 * So the endpoint runs on its own uv loop on one thread, which sleeps in
 * epoll between scrapes, and reads the trainer's figures
 * (ps_trainer_stats_t) as single-writer atomics: the training loop takes
 * no lock and never waits for a scrape.
 *
 * Start and stop from the main thread.
 */
#ifndef PS_WORKER_METRICS_H
#define PS_WORKER_METRICS_H

#include <stddef.h>

#include "worker/trainer.h"

typedef struct ps_worker_metrics_s ps_worker_metrics_t;

/* Serves stats on bind ("HOST:PORT") from a new thread. stats must outlive
 * the endpoint. Returns NULL with the reason in err (a bad address, the
 * port taken). Caller owns the result. */
ps_worker_metrics_t *ps_worker_metrics_start(const char *bind,
                                             ps_trainer_stats_t *stats,
                                             char *err, size_t errlen);

/* Stops serving, joins the thread, frees m and sets *m_p to NULL.
 * NULL-safe. */
void ps_worker_metrics_stop(ps_worker_metrics_t **m_p);

/* The address bound, port resolved ("127.0.0.1:9411"); valid until
 * ps_worker_metrics_stop. Any thread (it never changes). */
const char *ps_worker_metrics_address(const ps_worker_metrics_t *m);

#endif
