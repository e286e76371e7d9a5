/* Helpers for the metrics tests: a bounded HTTP GET, reading one series
 * out of the Prometheus text format, and querying a Prometheus server's
 * HTTP API. Every call has a deadline. */
#ifndef PS_TEST_SCRAPE_H
#define PS_TEST_SCRAPE_H

#include <stddef.h>

/* GET http://127.0.0.1:port/path (Connection: close). Returns the body
 * (caller frees) with *status the HTTP status, or NULL if no complete
 * response came within timeout_ms. */
char *h_http_get(int port, const char *path, int *status, int timeout_ms);

/* The value of the sample written exactly as series ("name" or
 * "name{a=\"b\"}") in a text-format page, or NAN if it has none. */
double h_metric(const char *text, const char *series);

/* The value of a PromQL instant query's first result against the
 * Prometheus on port, or NAN (no result, no answer). */
double h_prom_query(int port, const char *expr, int timeout_ms);

/* 1 if Prometheus on port evaluates expr without an error (any result,
 * empty included); else 0 with its answer in why. */
int h_prom_query_ok(int port, const char *expr, char *why, size_t len);

/* Polls h_prom_query until its value is >= min or timeout_ms passes;
 * returns 1 if it got there. *last (if not NULL) gets the last value. */
int h_prom_wait_ge(int port, const char *expr, double min, int timeout_ms,
                   double *last);

/* The path of tool on $PATH, or NULL (static buffer). */
const char *h_which(const char *tool);

#include "harness.h"

/* A training cluster with --metrics-bind on every daemon: a scheduler, 2
 * servers (replication 2) and 2 ps-workers on Fashion-MNIST, BSP. The
 * heartbeat timeout is 2 s, not 400 ms: on a loaded 2-core machine a
 * half-second stall of the whole host must not declare servers dead.
 * port[0] is the scheduler's metrics port, port[1..2] the servers',
 * port[3..4] the workers'. */
typedef struct {
  int port[5];
  h_proc_t *sched, *server[2], *worker[2];
} h_mcluster_t;

/* Starts it; epochs and max_steps go to the workers as given. */
void h_mcluster_start(h_cluster_t *c, h_mcluster_t *m, const char *epochs,
                      const char *max_steps);

/* Polls GET /metrics on port until series is >= min; returns 1 if it got
 * there within timeout_ms, with the value in *last (if not NULL). */
int h_scrape_wait_ge(int port, const char *series, double min, int timeout_ms,
                     double *last);

#endif
