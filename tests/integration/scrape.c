#include "scrape.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

char *h_http_get(int port, const char *path, int *status, int timeout_ms) {
  uint64_t deadline = h_now_ms() + (uint64_t)timeout_ms;
  *status = 0;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return NULL;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return NULL;
  }
  char req[4096];
  int n = snprintf(req, sizeof(req),
                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Connection: close\r\n\r\n",
                   path);
  if (n < 0 || (size_t)n >= sizeof(req) ||
      send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
    close(fd);
    return NULL;
  }
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  int closed = 0;
  while (buf && h_now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int left = (int)(deadline - h_now_ms());
    if (poll(&p, 1, left > 0 ? left : 0) <= 0) continue;
    if (len + 1 >= cap) {
      char *grown = realloc(buf, cap * 2);
      if (grown == NULL) break;
      buf = grown;
      cap *= 2;
    }
    ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      closed = 1;
      break;
    }
    len += (size_t)r;
  }
  close(fd);
  if (buf == NULL || !closed) {
    free(buf);
    return NULL;
  }
  buf[len] = '\0';
  char *body = strstr(buf, "\r\n\r\n");
  if (strncmp(buf, "HTTP/1.1 ", 9) != 0 || body == NULL) {
    free(buf);
    return NULL;
  }
  *status = atoi(buf + 9);
  memmove(buf, body + 4, strlen(body + 4) + 1);
  return buf;
}

double h_metric(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
    if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, 0);
  }
  return NAN;
}

static void url_encode(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t k = 0;
  for (const unsigned char *p = (const unsigned char *)in; *p && k + 4 < cap;
       p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
        (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-') {
      out[k++] = (char)*p;
    } else {
      out[k++] = '%';
      out[k++] = hex[*p >> 4];
      out[k++] = hex[*p & 15];
    }
  }
  out[k] = '\0';
}

int h_prom_query_ok(int port, const char *expr, char *why, size_t len) {
  char enc[4096], path[4200];
  url_encode(expr, enc, sizeof(enc));
  snprintf(path, sizeof(path), "/api/v1/query?query=%s", enc);
  int status;
  char *body = h_http_get(port, path, &status, 10000);
  int ok = body && status == 200 && strstr(body, "\"status\":\"success\"");
  if (!ok) snprintf(why, len, "HTTP %d: %.300s", status, body ? body : "");
  free(body);
  return ok;
}

double h_prom_query(int port, const char *expr, int timeout_ms) {
  char enc[2048], path[2200];
  url_encode(expr, enc, sizeof(enc));
  snprintf(path, sizeof(path), "/api/v1/query?query=%s", enc);
  int status;
  char *body = h_http_get(port, path, &status, timeout_ms);
  double v = NAN;
  /* {"status":"success","data":{"resultType":"vector","result":[{"metric":
   * {...},"value":[1700000000.123,"42"]}]}} */
  const char *at = body && status == 200 ? strstr(body, "\"value\":[") : NULL;
  if (at) at = strchr(at, ',');
  if (at && at[1] == '"') v = strtod(at + 2, NULL);
  free(body);
  return v;
}

int h_prom_wait_ge(int port, const char *expr, double min, int timeout_ms,
                   double *last) {
  uint64_t deadline = h_now_ms() + (uint64_t)timeout_ms;
  double v = NAN;
  for (;;) {
    v = h_prom_query(port, expr, 5000);
    if (v >= min || h_now_ms() >= deadline) break;
    h_sleep_ms(250);
  }
  if (last) *last = v;
  return v >= min;
}

const char *h_which(const char *tool) {
  static char path[1024];
  const char *env = getenv("PATH");
  char dirs[4096];
  snprintf(dirs, sizeof(dirs), "%s", env ? env : "/usr/bin:/bin");
  for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d;
       d = strtok_r(NULL, ":", &save)) {
    snprintf(path, sizeof(path), "%s/%s", d, tool);
    if (access(path, X_OK) == 0) return path;
  }
  return NULL;
}

void h_mcluster_start(h_cluster_t *c, h_mcluster_t *m, const char *epochs,
                      const char *max_steps) {
  char bind[5][32];
  for (int i = 0; i < 5; i++) {
    m->port[i] = h_free_port();
    snprintf(bind[i], sizeof(bind[i]), "127.0.0.1:%d", m->port[i]);
  }
  m->sched = h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep,
                     "--servers", "2", "--workers", "2", "--replication", "2",
                     "--heartbeat-timeout-ms", "2000", "--metrics-bind",
                     bind[0], NULL);
  m->server[0] = h_spawn(c, "server0", "ps-server", "--scheduler", c->sched_ep,
                         "--metrics-bind", bind[1], NULL);
  m->server[1] = h_spawn(c, "server1", "ps-server", "--scheduler", c->sched_ep,
                         "--metrics-bind", bind[2], NULL);
  m->worker[0] =
      h_spawn(c, "worker0", "ps-worker", "--scheduler", c->sched_ep, "--rank",
              "0", "--epochs", epochs, "--max-steps", max_steps,
              "--progress-ms", "500", "--metrics-bind", bind[3], NULL);
  m->worker[1] =
      h_spawn(c, "worker1", "ps-worker", "--scheduler", c->sched_ep, "--rank",
              "1", "--epochs", epochs, "--max-steps", max_steps,
              "--progress-ms", "500", "--metrics-bind", bind[4], NULL);
}

int h_scrape_wait_ge(int port, const char *series, double min, int timeout_ms,
                     double *last) {
  uint64_t deadline = h_now_ms() + (uint64_t)timeout_ms;
  double v = NAN;
  for (;;) {
    int status = 0;
    char *body = h_http_get(port, "/metrics", &status, 5000);
    if (body && status == 200) v = h_metric(body, series);
    free(body);
    if (v >= min || h_now_ms() >= deadline) break;
    h_sleep_ms(100);
  }
  if (last) *last = v;
  return v >= min;
}
