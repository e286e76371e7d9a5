/* psctl top: a live table of a job's nodes and their rates.
 *
 * A sample is one status answer from the scheduler (the nodes, their
 * states, addresses, clocks, the ranges they hold, and where each serves
 * /metrics, from its heartbeats) plus one scrape of /metrics of every
 * alive node that serves one, all at once under one deadline. Rates are
 * the differences of a node's counters between its last two scrapes over
 * the time between them: a server's pushes, pulls and bytes received, a
 * worker's steps and samples. A worker that serves no /metrics still gets
 * a step rate, from the clocks its heartbeats carry; a server that serves
 * none shows no rates ("-", null in JSON), since the scheduler counts no
 * requests.
 *
 * Why scrape rather than have the heartbeats carry the counters: the
 * daemons count all of this for Prometheus already, and the scheduler
 * stays out of the data plane's figures; the price is that rates need
 * --metrics-bind on the daemons.
 *
 * psctl's thread only.
 */
#ifndef PS_TOP_H
#define PS_TOP_H

#include <stdint.h>
#include <stdio.h>

#include "proto/ps.pb-c.h"

typedef struct ps_top_s ps_top_t;

typedef struct {
  const char *scheduler;     /* the endpoint asked, for the header */
  int json;                  /* print one JSON object per refresh */
  int clear;                 /* redraw in place (stdout is a terminal) */
  int64_t scrape_timeout_ms; /* deadline of one round of scrapes */
} ps_top_opts_t;

/* NULL when out of memory. The options' strings must outlive the result.
 * Caller owns the result. */
ps_top_t *ps_top_new(const ps_top_opts_t *o);

/* Takes the nodes of st (read during the call only), scrapes the alive
 * ones that serve /metrics and updates their rates. */
void ps_top_sample(ps_top_t *t, const Ps__Status *st);

/* Samples taken so far: rates exist from the second on. */
uint64_t ps_top_samples(const ps_top_t *t);

/* Prints the last sample: a table (redrawn in place with clear), or one
 * line of JSON. */
void ps_top_print(const ps_top_t *t, FILE *out);

/* Frees t and sets *t_p to NULL. NULL-safe. */
void ps_top_destroy(ps_top_t **t_p);

/* s as a JSON string (quoted, escaped) on out: psctl's --json output. */
void ps_top_json_string(FILE *out, const char *s);

/* The value of the samples of family name in a Prometheus text page,
 * summed over those whose labels contain label (e.g. "type=\"push\"";
 * NULL: all of them); NAN when there is none. Exposed for tests. */
double ps_top_metric_sum(const char *text, const char *name,
                         const char *label);

#endif
