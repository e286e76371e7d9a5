/* A daemon's /metrics and /healthz, served by common/http.h on the loop
 * that owns the daemon's state.
 *
 * GET /metrics renders the daemon's metrics (render_cb, on the loop
 * thread, reading the daemon's state directly) in the Prometheus text
 * format, plus what every daemon has: ps_build_info,
 * ps_process_start_time_seconds, and the endpoint's own counters. A render
 * that breaks the format's rules answers 500 with the mistake, so a test
 * or a scrape sees it at once. GET /healthz answers 200 "ok" while
 * health_cb says the daemon serves, else 503 with health_cb's reason.
 * Anything else is 404.
 *
 * Loop thread only.
 */
#ifndef PS_EXPORTER_H
#define PS_EXPORTER_H

#include <stddef.h>
#include <uv.h>

#include "http.h"
#include "metrics.h"

typedef struct ps_exporter_s ps_exporter_t;

/* Writes the daemon's families into m (ps_metrics_family, ..._sample). */
typedef void (*ps_exporter_render_cb)(ps_metrics_t *m, void *arg);
/* 1 when the daemon serves; else 0 with a one-line reason in reason. */
typedef int (*ps_exporter_health_cb)(char *reason, size_t len, void *arg);

/* Serves on bind ("HOST:PORT"); daemon names the program in
 * ps_build_info ("server"). limits may be NULL. Returns NULL with the
 * reason in err. Logs event=metrics_listen with the address bound. Caller
 * owns the result. */
ps_exporter_t *ps_exporter_new(uv_loop_t *loop, const char *bind,
                               const char *daemon,
                               const ps_http_limits_t *limits,
                               ps_exporter_render_cb render_cb,
                               ps_exporter_health_cb health_cb, void *arg,
                               char *err, size_t errlen);

/* The address bound, port resolved ("127.0.0.1:9100"). */
const char *ps_exporter_address(const ps_exporter_t *e);

/* Stops serving; the memory goes once the loop ran the close callbacks.
 * Sets *e_p to NULL. NULL-safe. */
void ps_exporter_destroy(ps_exporter_t **e_p);

/* Checks a --metrics-bind value at start, so that a bad one is refused as
 * bad configuration: PS_OK, or PS_ERR_CONFIG with "option --NAME: ..." in
 * err. */
int ps_exporter_check_bind(const char *option, const char *value, char *err,
                           size_t errlen);

/* The help text of the --metrics-bind option, shared by every daemon. */
#define PS_METRICS_BIND_HELP                                                \
  "Serve Prometheus metrics (/metrics) and a health check (/healthz) over " \
  "HTTP on HOST:PORT (an IP address; [::1]:PORT for IPv6; port 0 picks a "  \
  "free one). Empty: off."

#endif
