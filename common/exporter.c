#include "exporter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "err.h"
#include "log.h"
#include "time.h"

#ifndef PS_VERSION
#define PS_VERSION "unknown"
#endif

struct ps_exporter_s {
  ps_http_t *http;
  ps_metrics_t *reg;
  char daemon[32];
  double start_unix_s;
  double last_render_s; /* the previous /metrics render, for its own gauge */
  ps_exporter_render_cb render_cb;
  ps_exporter_health_cb health_cb;
  void *arg;
  char health[256];
};

static double unix_now_s(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

/* What every daemon exports besides its own families. */
static void render_common(ps_exporter_t *e, ps_metrics_t *m) {
  ps_metrics_family(m, "ps_build_info", PS_METRIC_GAUGE,
                    "Always 1; the labels say which program and version.");
  ps_metrics_sample(m, 1, "daemon", e->daemon, "version", PS_VERSION, NULL);
  ps_metrics_put(m, "ps_process_start_time_seconds", PS_METRIC_GAUGE,
                 "When the daemon started, in seconds since the Unix epoch.",
                 e->start_unix_s);
  const ps_http_stats_t *st = ps_http_stats(e->http);
  ps_metrics_put(m, "ps_metrics_http_requests_total", PS_METRIC_COUNTER,
                 "HTTP requests the metrics endpoint answered, this one "
                 "excluded.",
                 (double)st->requests);
  ps_metrics_put(m, "ps_metrics_http_refused_total", PS_METRIC_COUNTER,
                 "Connections to the metrics endpoint closed at once: over "
                 "its connection limit.",
                 (double)st->refused);
  ps_metrics_put(m, "ps_metrics_http_bad_requests_total", PS_METRIC_COUNTER,
                 "Requests to the metrics endpoint refused as malformed or "
                 "too big.",
                 (double)st->bad);
  ps_metrics_put(m, "ps_metrics_render_seconds", PS_METRIC_GAUGE,
                 "Time the previous /metrics render took on the daemon's "
                 "loop thread.",
                 e->last_render_s);
}

static void on_request(ps_http_t *h, const char *method, const char *path,
                       ps_http_response_t *res, void *arg) {
  ps_exporter_t *e = arg;
  (void)h;
  (void)method;
  if (strcmp(path, "/metrics") == 0) {
    uint64_t t0 = ps_now_ns();
    ps_metrics_reset(e->reg);
    render_common(e, e->reg);
    e->render_cb(e->reg, e->arg);
    e->last_render_s = (double)(ps_now_ns() - t0) * 1e-9;
    const char *mistake = ps_metrics_error(e->reg);
    if (mistake[0] != '\0') {
      /* A bug in a render function: loud, never a silently partial page. */
      PS_ERROR("metrics_render_failed", "reason=\"%s\"", mistake);
      res->status = 500;
      res->body = mistake;
      res->body_len = strlen(mistake);
      return;
    }
    res->status = 200;
    res->content_type = PS_METRICS_CONTENT_TYPE;
    res->body = ps_metrics_text(e->reg, &res->body_len);
  } else if (strcmp(path, "/healthz") == 0) {
    char reason[200] = "";
    if (e->health_cb(reason, sizeof(reason), e->arg)) {
      snprintf(e->health, sizeof(e->health), "ok\n");
      res->status = 200;
    } else {
      snprintf(e->health, sizeof(e->health), "%s\n",
               reason[0] ? reason : "unhealthy");
      res->status = 503;
    }
    res->body = e->health;
    res->body_len = strlen(e->health);
  }
}

ps_exporter_t *ps_exporter_new(uv_loop_t *loop, const char *bind,
                               const char *daemon,
                               const ps_http_limits_t *limits,
                               ps_exporter_render_cb render_cb,
                               ps_exporter_health_cb health_cb, void *arg,
                               char *err, size_t errlen) {
  ps_exporter_t *e = calloc(1, sizeof(*e));
  if (e == NULL || (e->reg = ps_metrics_new()) == NULL) {
    snprintf(err, errlen, "out of memory");
    free(e);
    return NULL;
  }
  snprintf(e->daemon, sizeof(e->daemon), "%s", daemon);
  e->start_unix_s = unix_now_s();
  e->render_cb = render_cb;
  e->health_cb = health_cb;
  e->arg = arg;
  e->http = ps_http_new(loop, bind, limits, on_request, e, err, errlen);
  if (e->http == NULL) {
    ps_metrics_destroy(&e->reg);
    free(e);
    return NULL;
  }
  PS_INFO("metrics_listen", "addr=%s paths=/metrics,/healthz",
          ps_http_address(e->http));
  return e;
}

int ps_exporter_check_bind(const char *option, const char *value, char *err,
                           size_t errlen) {
  struct sockaddr_storage addr;
  char why[200];
  if (ps_http_parse_bind(value, &addr, why, sizeof(why)) == 0) return PS_OK;
  snprintf(err, errlen, "option --%s: %s", option, why);
  return PS_ERR_CONFIG;
}

const char *ps_exporter_address(const ps_exporter_t *e) {
  return ps_http_address(e->http);
}

void ps_exporter_destroy(ps_exporter_t **e_p) {
  ps_exporter_t *e = e_p ? *e_p : NULL;
  if (e == NULL) return;
  *e_p = NULL;
  /* No request reaches on_request once the endpoint is destroyed, so e
   * goes now; the endpoint's memory goes with its handles. */
  ps_http_destroy(&e->http);
  ps_metrics_destroy(&e->reg);
  free(e);
}
