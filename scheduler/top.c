#include "scheduler/top.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/time.h"
#include "common/view.h"
#include "scheduler/sched_int.h"

/* A page bigger than this is not a ps daemon's (a server's is ~18 KB). */
#define TOP_PAGE_MAX (8u << 20)

/* What one scrape read; NAN where the page had no such series. */
typedef struct {
  double pushes, pulls, bytes_in;       /* server counters */
  double steps, samples;                /* worker counters */
  double step, total_steps, epoch;      /* worker gauges */
  double loss, test_accuracy;
} top_figures_t;

typedef struct {
  uint32_t id;
  int role, state;
  uint32_t rank;
  uint64_t clock;
  uint32_t primary_of, backup_of;
  char address[PS_ADDR_MAX];
  char metrics_address[PS_ADDR_MAX];
  int seen; /* in the last status */

  /* The last scrape (scraped: it succeeded this sample) and the one
   * before, with when each was read. */
  int scraped;
  char scrape_error[160];
  top_figures_t cur, prev;
  uint64_t cur_ns, prev_ns;
  int has_cur, has_prev;
  /* Heartbeat clocks, for a worker without /metrics. */
  uint64_t clock_prev;
  uint64_t clock_ns, clock_prev_ns;
  int clock_samples;

  /* Rates over the last two samples; NAN: not known. */
  double push_rate, pull_rate, mb_in_rate, step_rate, sample_rate;
} top_node_t;

struct ps_top_s {
  ps_top_opts_t o;
  top_node_t *nodes;
  size_t nnodes, cap;
  uint64_t samples;
  /* From the last status. */
  uint64_t epoch, uptime_ms;
  int mode;
  uint32_t expected_servers, expected_workers;
  uint64_t sampled_unix_ms;
};

ps_top_t *ps_top_new(const ps_top_opts_t *o) {
  ps_top_t *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  t->o = *o;
  return t;
}

void ps_top_destroy(ps_top_t **t_p) {
  ps_top_t *t = t_p ? *t_p : NULL;
  if (t == NULL) return;
  *t_p = NULL;
  free(t->nodes);
  free(t);
}

uint64_t ps_top_samples(const ps_top_t *t) {
  return t->samples;
}

/* ---- the Prometheus text format ------------------------------------- */

double ps_top_metric_sum(const char *text, const char *name,
                         const char *label) {
  size_t nlen = strlen(name);
  double sum = 0;
  int found = 0;
  for (const char *line = text; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    const char *next = end ? end + 1 : NULL;
    if (len > nlen && line[0] != '#' && strncmp(line, name, nlen) == 0 &&
        (line[nlen] == '{' || line[nlen] == ' ')) {
      const char *value = line + nlen;
      int match = label == NULL;
      if (*value == '{') {
        const char *close = memchr(value, '}', len - nlen);
        if (close == NULL) {
          line = next;
          continue;
        }
        if (label) {
          size_t llen = strlen(label);
          for (const char *p = value; p + llen <= close && !match; p++)
            match = memcmp(p, label, llen) == 0;
        }
        value = close + 1;
      }
      if (match) {
        char *after;
        double v = strtod(value, &after);
        if (after != value) {
          sum += v;
          found = 1;
        }
      }
    }
    line = next;
  }
  return found ? sum : NAN;
}

/* a + b, either of them missing (NAN) counting as nothing. */
static double sum_found(double a, double b) {
  if (isnan(a)) return b;
  return isnan(b) ? a : a + b;
}

static void figures_read(top_figures_t *f, const char *page) {
  /* A push-pull (ps-worker's default) is a push and a pull. */
  double fused =
      ps_top_metric_sum(page, "ps_server_requests_total", "type=\"push_pull\"");
  f->pushes = sum_found(
      ps_top_metric_sum(page, "ps_server_requests_total", "type=\"push\""),
      fused);
  f->pulls = sum_found(
      ps_top_metric_sum(page, "ps_server_requests_total", "type=\"pull\""),
      fused);
  f->bytes_in = ps_top_metric_sum(page, "ps_server_received_bytes_total", NULL);
  f->steps = ps_top_metric_sum(page, "ps_worker_steps_total", NULL);
  f->samples = ps_top_metric_sum(page, "ps_worker_samples_total", NULL);
  f->step = ps_top_metric_sum(page, "ps_worker_step", NULL);
  f->total_steps = ps_top_metric_sum(page, "ps_worker_total_steps", NULL);
  f->epoch = ps_top_metric_sum(page, "ps_worker_epoch", NULL);
  f->loss = ps_top_metric_sum(page, "ps_worker_train_loss", NULL);
  f->test_accuracy = ps_top_metric_sum(page, "ps_worker_test_accuracy", NULL);
}

/* ---- scraping: every node at once, one deadline ------------------------ */

typedef struct {
  top_node_t *node;
  int fd;
  int phase; /* 0 connecting, 1 sending, 2 reading, 3 done */
  char req[PS_ADDR_MAX + 96];
  size_t req_len, req_sent;
  char *buf;
  size_t len, cap;
} top_scrape_t;

static void scrape_fail(top_scrape_t *sc, const char *fmt, const char *what) {
  snprintf(sc->node->scrape_error, sizeof(sc->node->scrape_error), fmt, what);
  if (sc->fd >= 0) close(sc->fd);
  sc->fd = -1;
  sc->phase = 3;
}

/* Opens the connection to "HOST:PORT" or "[V6]:PORT" (numeric, as the
 * daemons' --metrics-bind is). */
static void scrape_start(top_scrape_t *sc) {
  const char *a = sc->node->metrics_address;
  char host[PS_ADDR_MAX];
  const char *colon = strrchr(a, ':');
  sc->fd = -1;
  if (colon == NULL || colon == a || colon[1] == '\0') {
    scrape_fail(sc, "%s", "not a numeric HOST:PORT");
    return;
  }
  size_t hlen = (size_t)(colon - a);
  if (a[0] == '[' && hlen >= 2 && a[hlen - 1] == ']') {
    memcpy(host, a + 1, hlen - 2);
    host[hlen - 2] = '\0';
  } else {
    memcpy(host, a, hlen);
    host[hlen] = '\0';
  }
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || ai == NULL) {
    scrape_fail(sc, "%s", "not a numeric HOST:PORT");
    return;
  }
  sc->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (sc->fd < 0) {
    freeaddrinfo(ai);
    scrape_fail(sc, "socket: %s", strerror(errno));
    return;
  }
  int rc = connect(sc->fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (rc != 0 && errno != EINPROGRESS) {
    scrape_fail(sc, "connect: %s", strerror(errno));
    return;
  }
  int n = snprintf(sc->req, sizeof(sc->req),
                   "GET /metrics HTTP/1.1\r\nHost: %s\r\n"
                   "Connection: close\r\n\r\n",
                   a);
  sc->req_len = n > 0 && (size_t)n < sizeof(sc->req) ? (size_t)n : 0;
  sc->phase = 0;
}

/* One readiness event of sc's socket. */
static void scrape_step(top_scrape_t *sc, short revents) {
  if (sc->phase == 0) {
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(sc->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
      soerr = errno;
    if (soerr != 0) {
      scrape_fail(sc, "connect: %s", strerror(soerr));
      return;
    }
    sc->phase = 1;
  }
  if (sc->phase == 1) {
    ssize_t w = send(sc->fd, sc->req + sc->req_sent,
                     sc->req_len - sc->req_sent, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
      scrape_fail(sc, "send: %s", strerror(errno));
      return;
    }
    if (w > 0) sc->req_sent += (size_t)w;
    if (sc->req_sent == sc->req_len) sc->phase = 2;
    return;
  }
  if (sc->phase != 2 || !(revents & (POLLIN | POLLHUP | POLLERR))) return;
  if (sc->cap - sc->len < 4096) {
    size_t cap = sc->cap ? sc->cap * 2 : 65536;
    if (cap > TOP_PAGE_MAX + 1) {
      scrape_fail(sc, "a page of more than %s", "8 MiB");
      return;
    }
    char *grown = realloc(sc->buf, cap);
    if (grown == NULL) {
      scrape_fail(sc, "%s", "out of memory");
      return;
    }
    sc->buf = grown;
    sc->cap = cap;
  }
  ssize_t r = recv(sc->fd, sc->buf + sc->len, sc->cap - 1 - sc->len, 0);
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r < 0) {
    scrape_fail(sc, "recv: %s", strerror(errno));
    return;
  }
  if (r > 0) {
    sc->len += (size_t)r;
    return;
  }
  /* The end: "HTTP/1.1 200 OK\r\n...\r\n\r\nbody". */
  close(sc->fd);
  sc->fd = -1;
  sc->phase = 3;
  sc->buf[sc->len] = '\0';
  int status = 0;
  const char *body = strstr(sc->buf, "\r\n\r\n");
  if (sscanf(sc->buf, "HTTP/%*d.%*d %d", &status) != 1 || body == NULL) {
    scrape_fail(sc, "%s", "not an HTTP response");
    return;
  }
  if (status != 200) {
    char why[32];
    snprintf(why, sizeof(why), "%d", status);
    scrape_fail(sc, "HTTP status %s", why);
    return;
  }
  top_node_t *n = sc->node;
  n->prev = n->cur;
  n->prev_ns = n->cur_ns;
  n->has_prev = n->has_cur;
  figures_read(&n->cur, body + 4);
  n->cur_ns = ps_now_ns();
  n->has_cur = 1;
  n->scraped = 1;
}

static void scrape_all(ps_top_t *t) {
  top_scrape_t *sc = calloc(t->nnodes + 1, sizeof(*sc));
  struct pollfd *pfd = calloc(t->nnodes + 1, sizeof(*pfd));
  size_t *idx = calloc(t->nnodes + 1, sizeof(*idx));
  size_t n = 0;
  for (size_t i = 0; i < t->nnodes; i++) {
    top_node_t *node = &t->nodes[i];
    node->scraped = 0;
    node->scrape_error[0] = '\0';
    if (!node->seen || node->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        node->metrics_address[0] == '\0')
      continue;
    if (sc == NULL || pfd == NULL || idx == NULL) {
      snprintf(node->scrape_error, sizeof(node->scrape_error), "out of memory");
      continue;
    }
    sc[n].node = node;
    scrape_start(&sc[n]);
    n++;
  }
  uint64_t deadline = ps_now_ms() + (uint64_t)t->o.scrape_timeout_ms;
  for (;;) {
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
      if (sc[i].phase == 3) continue;
      pfd[np].fd = sc[i].fd;
      pfd[np].events = sc[i].phase <= 1 ? POLLOUT : POLLIN;
      pfd[np].revents = 0;
      idx[np++] = i;
    }
    uint64_t now = ps_now_ms();
    if (np == 0 || now >= deadline) break;
    int rc = poll(pfd, np, (int)(deadline - now));
    if (rc < 0 && errno != EINTR) break;
    for (size_t k = 0; rc > 0 && k < np; k++)
      if (pfd[k].revents) scrape_step(&sc[idx[k]], pfd[k].revents);
  }
  for (size_t i = 0; i < n; i++) {
    if (sc[i].phase != 3)
      scrape_fail(&sc[i], "no complete answer within %s",
                  "--timeout-ms");
    free(sc[i].buf);
  }
  free(sc);
  free(pfd);
  free(idx);
}

/* ---- samples and rates ------------------------------------------------- */

static top_node_t *node_slot(ps_top_t *t, uint32_t id) {
  for (size_t i = 0; i < t->nnodes; i++)
    if (t->nodes[i].id == id) return &t->nodes[i];
  if (t->nnodes == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    top_node_t *grown = realloc(t->nodes, cap * sizeof(*grown));
    if (grown == NULL) return NULL;
    t->nodes = grown;
    t->cap = cap;
  }
  top_node_t *n = &t->nodes[t->nnodes++];
  memset(n, 0, sizeof(*n));
  n->id = id;
  return n;
}

/* (cur - prev) / seconds; NAN if either is missing or the counter went
 * back (the daemon restarted on the same address). */
static double rate(double cur, double prev, double seconds) {
  if (isnan(cur) || isnan(prev) || cur < prev || seconds <= 0) return NAN;
  return (cur - prev) / seconds;
}

static void node_rates(top_node_t *n) {
  n->push_rate = n->pull_rate = n->mb_in_rate = NAN;
  n->step_rate = n->sample_rate = NAN;
  if (n->scraped && n->has_prev) {
    double s = (double)(n->cur_ns - n->prev_ns) * 1e-9;
    n->push_rate = rate(n->cur.pushes, n->prev.pushes, s);
    n->pull_rate = rate(n->cur.pulls, n->prev.pulls, s);
    double b = rate(n->cur.bytes_in, n->prev.bytes_in, s);
    n->mb_in_rate = isnan(b) ? NAN : b / 1e6;
    n->step_rate = rate(n->cur.steps, n->prev.steps, s);
    n->sample_rate = rate(n->cur.samples, n->prev.samples, s);
  }
  /* A worker without /metrics: its heartbeat clock is its step. */
  if (n->role == PS__ROLE__ROLE_WORKER && isnan(n->step_rate) &&
      n->metrics_address[0] == '\0' && n->clock_samples >= 2 &&
      n->state == PS__NODE_STATE__NODE_STATE_ALIVE)
    n->step_rate = rate((double)n->clock, (double)n->clock_prev,
                        (double)(n->clock_ns - n->clock_prev_ns) * 1e-9);
}

void ps_top_sample(ps_top_t *t, const Ps__Status *st) {
  const Ps__View *v = st->view;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  t->sampled_unix_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
  t->epoch = v->epoch;
  t->mode = v->mode;
  t->uptime_ms = st->uptime_ms;
  t->expected_servers = st->expected_servers;
  t->expected_workers = st->expected_workers;
  for (size_t i = 0; i < t->nnodes; i++) t->nodes[i].seen = 0;
  uint64_t now_ns = ps_now_ns();
  for (size_t i = 0; i < v->n_nodes; i++) {
    const Ps__NodeInfo *ni = v->nodes[i];
    top_node_t *n = node_slot(t, ni->id);
    if (n == NULL) continue; /* out of memory: one node fewer shown */
    n->seen = 1;
    n->role = ni->role;
    n->state = ni->state;
    n->rank = ni->rank;
    snprintf(n->address, sizeof(n->address), "%s",
             ni->address ? ni->address : "");
    const char *ma = ni->metrics_address ? ni->metrics_address : "";
    if (strcmp(ma, n->metrics_address) != 0) {
      /* Another endpoint (a restarted daemon): its counters start anew. */
      snprintf(n->metrics_address, sizeof(n->metrics_address), "%s", ma);
      n->has_cur = n->has_prev = 0;
    }
    n->clock_prev = n->clock;
    n->clock_prev_ns = n->clock_ns;
    n->clock = ni->clock;
    n->clock_ns = now_ns;
    n->clock_samples++;
    n->primary_of = n->backup_of = 0;
    for (size_t r = 0; r < v->n_ranges; r++) {
      const Ps__KeyRange *kr = v->ranges[r];
      if (kr->server_id == ni->id) n->primary_of++;
      for (size_t k = 0; k < kr->n_backups; k++)
        if (kr->backups[k] == ni->id) n->backup_of++;
    }
  }
  scrape_all(t);
  for (size_t i = 0; i < t->nnodes; i++) node_rates(&t->nodes[i]);
  t->samples++;
}

/* ---- printing ------------------------------------------------------------ */

void ps_top_json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(out, "\\u%04x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* A number, or null when it is not known. */
static void json_number(FILE *out, const char *key, double v, int decimals) {
  fprintf(out, ",\"%s\":", key);
  if (isnan(v) || isinf(v))
    fputs("null", out);
  else
    fprintf(out, "%.*f", decimals, v);
}

static void print_json(const ps_top_t *t, FILE *out) {
  fprintf(out, "{\"time_unix_ms\":%" PRIu64 ",\"scheduler\":",
          t->sampled_unix_ms);
  ps_top_json_string(out, t->o.scheduler);
  fprintf(out,
          ",\"epoch\":%" PRIu64 ",\"mode\":\"%s\",\"uptime_ms\":%" PRIu64
          ",\"expected_servers\":%u,\"expected_workers\":%u,\"nodes\":[",
          t->epoch, ps__sched_mode_name(t->mode), t->uptime_ms,
          t->expected_servers, t->expected_workers);
  int first = 1;
  for (size_t i = 0; i < t->nnodes; i++) {
    const top_node_t *n = &t->nodes[i];
    if (!n->seen) continue;
    fprintf(out, "%s{\"id\":%u,\"role\":\"%s\",\"state\":\"%s\",\"address\":",
            first ? "" : ",", n->id, ps__sched_role_name(n->role),
            ps__sched_state_name(n->state));
    first = 0;
    ps_top_json_string(out, n->address);
    fprintf(out, ",\"metrics_address\":");
    ps_top_json_string(out, n->metrics_address);
    fprintf(out, ",\"clock\":%" PRIu64 ",\"scraped\":%s,\"scrape_error\":",
            n->clock, n->scraped ? "true" : "false");
    if (n->scrape_error[0])
      ps_top_json_string(out, n->scrape_error);
    else
      fputs("null", out);
    if (n->role == PS__ROLE__ROLE_SERVER) {
      fprintf(out, ",\"primary_of\":%u,\"backup_of\":%u", n->primary_of,
              n->backup_of);
      json_number(out, "pushes_per_sec", n->push_rate, 2);
      json_number(out, "pulls_per_sec", n->pull_rate, 2);
      json_number(out, "mb_in_per_sec", n->mb_in_rate, 3);
    } else if (n->role == PS__ROLE__ROLE_WORKER) {
      int m = n->scraped;
      fprintf(out, ",\"rank\":%u", n->rank);
      json_number(out, "step", m ? n->cur.step : (double)n->clock, 0);
      json_number(out, "total_steps", m ? n->cur.total_steps : NAN, 0);
      json_number(out, "epochs_done", m ? n->cur.epoch : NAN, 0);
      json_number(out, "steps_per_sec", n->step_rate, 2);
      json_number(out, "samples_per_sec", n->sample_rate, 1);
      json_number(out, "loss", m ? n->cur.loss : NAN, 4);
      json_number(out, "test_accuracy", m ? n->cur.test_accuracy : NAN, 4);
    }
    fputc('}', out);
  }
  fputs("]}\n", out);
  fflush(out);
}

/* "%*.*f" or "-" right-aligned in width. */
static void cell(FILE *out, int width, double v, int decimals) {
  if (isnan(v) || isinf(v))
    fprintf(out, " %*s", width, "-");
  else
    fprintf(out, " %*.*f", width, decimals, v);
}

/* With clear, every line ends by erasing what the last frame left there. */
static void eol(const ps_top_t *t, FILE *out) {
  fputs(t->o.clear ? "\033[K\n" : "\n", out);
}

static void print_table(const ps_top_t *t, FILE *out) {
  uint32_t alive[2] = {0, 0};
  double pushes = 0, mb_in = 0, samples = 0;
  int have_pushes = 0, have_samples = 0, addr_w = 7;
  for (size_t i = 0; i < t->nnodes; i++) {
    const top_node_t *n = &t->nodes[i];
    if (!n->seen) continue;
    int r = n->role == PS__ROLE__ROLE_SERVER ? 0
            : n->role == PS__ROLE__ROLE_WORKER ? 1
                                               : -1;
    if (r >= 0 && n->state == PS__NODE_STATE__NODE_STATE_ALIVE) alive[r]++;
    if (r == 0 && (int)strlen(n->address) > addr_w)
      addr_w = (int)strlen(n->address);
    if (!isnan(n->push_rate)) {
      pushes += n->push_rate;
      have_pushes = 1;
    }
    if (!isnan(n->mb_in_rate)) mb_in += n->mb_in_rate;
    if (!isnan(n->sample_rate)) {
      samples += n->sample_rate;
      have_samples = 1;
    }
  }
  time_t now = (time_t)(t->sampled_unix_ms / 1000);
  struct tm tm;
  char when[16] = "";
  if (localtime_r(&now, &tm)) strftime(when, sizeof(when), "%H:%M:%S", &tm);
  if (t->o.clear) fputs("\033[H", out);
  fprintf(out, "psctl top  %s  scheduler %s  up %.1f s  epoch %" PRIu64 "  %s",
          when, t->o.scheduler, (double)t->uptime_ms / 1e3, t->epoch,
          ps__sched_mode_name(t->mode));
  eol(t, out);
  fprintf(out, "servers %u/%u alive  workers %u/%u alive", alive[0],
          t->expected_servers, alive[1], t->expected_workers);
  if (have_pushes) fprintf(out, "  pushes %.1f/s  in %.2f MB/s", pushes, mb_in);
  if (have_samples) fprintf(out, "  %.0f samples/s", samples);
  eol(t, out);
  eol(t, out);

  fprintf(out, "%4s  %-6s  %-5s  %-*s  %7s %8s %8s %8s %10s", "ID", "ROLE",
          "STATE", addr_w, "ADDRESS", "P/B", "PUSH/S", "PULL/S", "MB/S IN",
          "STEP");
  eol(t, out);
  int notes = 0;
  for (size_t i = 0; i < t->nnodes; i++) {
    const top_node_t *n = &t->nodes[i];
    if (!n->seen || n->role != PS__ROLE__ROLE_SERVER) continue;
    char pb[24];
    snprintf(pb, sizeof(pb), "%u/%u", n->primary_of, n->backup_of);
    fprintf(out, "%4u  %-6s  %-5s  %-*s  %7s", n->id, "server",
            ps__sched_state_name(n->state), addr_w,
            n->address[0] ? n->address : "-", pb);
    cell(out, 8, n->push_rate, 1);
    cell(out, 8, n->pull_rate, 1);
    cell(out, 8, n->mb_in_rate, 2);
    fprintf(out, " %10" PRIu64, n->clock);
    eol(t, out);
    notes |= n->scrape_error[0] || n->metrics_address[0] == '\0';
  }
  eol(t, out);
  fprintf(out, "%4s  %-6s  %-5s  %4s  %15s  %6s %8s %10s %8s %8s", "ID",
          "ROLE", "STATE", "RANK", "STEP", "EPOCHS", "STEPS/S", "SAMPLES/S",
          "LOSS", "TEST ACC");
  eol(t, out);
  for (size_t i = 0; i < t->nnodes; i++) {
    const top_node_t *n = &t->nodes[i];
    if (!n->seen || n->role != PS__ROLE__ROLE_WORKER) continue;
    char step[40];
    int m = n->scraped;
    if (m && !isnan(n->cur.step) && !isnan(n->cur.total_steps))
      snprintf(step, sizeof(step), "%.0f/%.0f", n->cur.step,
               n->cur.total_steps);
    else
      snprintf(step, sizeof(step), "%" PRIu64, n->clock);
    fprintf(out, "%4u  %-6s  %-5s  %4u  %15s", n->id, "worker",
            ps__sched_state_name(n->state), n->rank, step);
    cell(out, 6, m ? n->cur.epoch : NAN, 0);
    cell(out, 8, n->step_rate, 2);
    cell(out, 10, n->sample_rate, 0);
    cell(out, 8, m ? n->cur.loss : NAN, 4);
    cell(out, 8, m ? n->cur.test_accuracy : NAN, 4);
    eol(t, out);
    notes |= n->scrape_error[0] || n->metrics_address[0] == '\0';
  }
  if (notes) {
    eol(t, out);
    for (size_t i = 0; i < t->nnodes; i++) {
      const top_node_t *n = &t->nodes[i];
      if (!n->seen || n->role == PS__ROLE__ROLE_ADMIN) continue;
      if (n->scrape_error[0])
        fprintf(out, "node %u: /metrics at %s: %s", n->id, n->metrics_address,
                n->scrape_error);
      else if (n->metrics_address[0] == '\0' &&
               n->state == PS__NODE_STATE__NODE_STATE_ALIVE)
        fprintf(out,
                "node %u serves no /metrics (start it with --metrics-bind): "
                "no rates%s",
                n->id,
                n->role == PS__ROLE__ROLE_WORKER ? " but steps/s" : "");
      else
        continue;
      eol(t, out);
    }
  }
  if (t->o.clear)
    fputs("\033[J", out); /* what the last frame had below */
  else
    fputc('\n', out);
  fflush(out);
}

void ps_top_print(const ps_top_t *t, FILE *out) {
  if (t->o.json)
    print_json(t, out);
  else
    print_table(t, out);
}
