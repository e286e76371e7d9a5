/* ps-netlag: a TCP relay that delays every byte by a fixed time, each way
 * (issue #16, "hosts with real latency", tests/bench/netlag.sh).
 *
 *   ps-netlag --listen HOST:PORT --to HOST:PORT --delay-us N
 *
 * Every connection accepted on --listen gets its own connection to --to;
 * what one side sends reaches the other delay-us later, in order, as
 * netem's delay would do on the link (this host's kernel has no sch_netem;
 * rate limits stay with the kernel's tbf). What waits is bounded
 * (MAX_QUEUED_BYTES a direction: reading stops until it drains), so a
 * fast sender meets TCP's back-pressure, not unbounded memory. One side
 * closing closes the other once what it sent was delivered. A libuv loop,
 * one thread, with a timerfd a direction (libuv's timers count whole
 * milliseconds; a 100 us link needs better); SIGTERM or SIGINT end it.
 *
 * A bench tool: built into bin/ next to the daemons, never installed. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <uv.h>

#include "common/config.h"
#include "common/err.h"

#define MAX_QUEUED_BYTES (64u << 20)
#define READ_BYTES (256u << 10)

typedef struct chunk_s {
  struct chunk_s *next;
  uint64_t due_ns;
  size_t len;
  char data[];
} chunk_t;

typedef struct pair_s pair_t;

/* One direction: bytes read from `from`, held, written to `to`. */
typedef struct {
  pair_t *pair;
  uv_tcp_t *from, *to;
  chunk_t *head, *tail;
  size_t queued; /* bytes held or being written */
  int eof;       /* from said EOF: shut `to` down once drained */
  int reading;
  int writes;      /* writes in flight */
  int tfd;         /* timerfd: the head chunk's due time */
  uv_poll_t timer; /* on tfd */
} dir_t;

struct pair_s {
  uv_tcp_t down; /* the accepted client */
  uv_tcp_t up;   /* our connection to --to */
  uv_connect_t connect;
  dir_t d[2]; /* 0: down -> up, 1: up -> down */
  int open_handles;
  int closing;
};

typedef struct {
  uv_write_t req;
  dir_t *dir;
  chunk_t *chunk;
} write_t;

static uint64_t delay_ns;
static struct sockaddr_storage to_addr;
static uint64_t connections, bytes_relayed;

static void pair_close(pair_t *p);

static void on_closed(uv_handle_t *h) {
  pair_t *p = ((dir_t *)h->data)->pair;
  if (--p->open_handles > 0) return;
  for (int i = 0; i < 2; i++) {
    if (p->d[i].tfd >= 0) close(p->d[i].tfd);
    chunk_t *c = p->d[i].head;
    while (c) {
      chunk_t *n = c->next;
      free(c);
      c = n;
    }
  }
  free(p);
}

static void pair_close(pair_t *p) {
  if (p->closing) return;
  p->closing = 1;
  uv_close((uv_handle_t *)&p->down, on_closed);
  uv_close((uv_handle_t *)&p->up, on_closed);
  for (int i = 0; i < 2; i++)
    if (uv_is_active((uv_handle_t *)&p->d[i].timer) ||
        p->d[i].timer.data != NULL)
      uv_close((uv_handle_t *)&p->d[i].timer, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  chunk_t *c = malloc(sizeof(*c) + READ_BYTES);
  *buf = uv_buf_init(c ? c->data : NULL, c ? READ_BYTES : 0);
}

static void flush(dir_t *d);

static void on_timer(uv_poll_t *t, int status, int events) {
  (void)status;
  (void)events;
  dir_t *d = t->data;
  uint64_t expirations;
  if (read(d->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
    return;
  flush(d);
}

/* Arms d's timerfd for the absolute monotonic time due_ns (uv_hrtime's
 * clock). */
static void arm(dir_t *d, uint64_t due_ns) {
  struct itimerspec its;
  memset(&its, 0, sizeof(its));
  its.it_value.tv_sec = (time_t)(due_ns / 1000000000u);
  its.it_value.tv_nsec = (long)(due_ns % 1000000000u);
  if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
    its.it_value.tv_nsec = 1;
  timerfd_settime(d->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

static void start_reading(dir_t *d);

static int drained(const dir_t *d) {
  return d->eof && d->head == NULL && d->writes == 0;
}

/* Once d's sender said EOF and all it sent was delivered, its receiver is
 * told (shutdown); once both ways are, the pair closes. */
static void finish_if_done(dir_t *d) {
  if (!drained(d)) return;
  uv_shutdown_t *sr = malloc(sizeof(*sr));
  if (sr == NULL || uv_shutdown(sr, (uv_stream_t *)d->to, on_shutdown) != 0)
    free(sr);
  if (drained(&d->pair->d[d == &d->pair->d[0] ? 1 : 0])) pair_close(d->pair);
}

static void on_written(uv_write_t *req, int status) {
  write_t *w = (write_t *)req;
  dir_t *d = w->dir;
  d->writes--;
  d->queued -= w->chunk->len;
  bytes_relayed += w->chunk->len;
  free(w->chunk);
  free(w);
  if (status < 0) {
    pair_close(d->pair);
    return;
  }
  if (d->pair->closing) return;
  if (!d->reading && !d->eof && d->queued < MAX_QUEUED_BYTES / 2)
    start_reading(d);
  finish_if_done(d);
}

/* Writes every chunk that is due, in order; re-arms the timer for the next
 * one. */
static void flush(dir_t *d) {
  if (d->pair->closing) return;
  uint64_t now = uv_hrtime();
  while (d->head && d->head->due_ns <= now) {
    chunk_t *c = d->head;
    d->head = c->next;
    if (d->head == NULL) d->tail = NULL;
    write_t *w = malloc(sizeof(*w));
    if (w == NULL) {
      free(c);
      pair_close(d->pair);
      return;
    }
    w->dir = d;
    w->chunk = c;
    uv_buf_t b = uv_buf_init(c->data, (unsigned)c->len);
    if (uv_write(&w->req, (uv_stream_t *)d->to, &b, 1, on_written) != 0) {
      free(c);
      free(w);
      pair_close(d->pair);
      return;
    }
    d->writes++;
  }
  if (d->head) arm(d, d->head->due_ns);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  dir_t *d = s->data;
  chunk_t *c =
      buf->base ? (chunk_t *)(buf->base - offsetof(chunk_t, data)) : NULL;
  if (n <= 0) {
    free(c);
    if (n == 0) return;
    if (n != UV_EOF) {
      pair_close(d->pair);
      return;
    }
    d->eof = 1;
    uv_read_stop(s);
    d->reading = 0;
    finish_if_done(d);
    return;
  }
  c->next = NULL;
  c->len = (size_t)n;
  c->due_ns = uv_hrtime() + delay_ns;
  if (d->tail)
    d->tail->next = c;
  else
    d->head = c;
  d->tail = c;
  d->queued += c->len;
  if (d->queued >= MAX_QUEUED_BYTES) {
    uv_read_stop(s);
    d->reading = 0;
  }
  if (delay_ns == 0)
    flush(d);
  else if (d->head == c)
    arm(d, c->due_ns);
}

static void start_reading(dir_t *d) {
  if (uv_read_start((uv_stream_t *)d->from, on_alloc, on_read) == 0)
    d->reading = 1;
}

static void on_connected(uv_connect_t *req, int status) {
  pair_t *p = req->data;
  if (status < 0) {
    fprintf(stderr, "ps-netlag: connect: %s\n", uv_strerror(status));
    pair_close(p);
    return;
  }
  uv_tcp_nodelay(&p->down, 1);
  uv_tcp_nodelay(&p->up, 1);
  start_reading(&p->d[0]);
  start_reading(&p->d[1]);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  pair_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return;
  uv_loop_t *loop = server->loop;
  uv_tcp_init(loop, &p->down);
  uv_tcp_init(loop, &p->up);
  p->open_handles = 2;
  p->down.data = &p->d[0];
  p->up.data = &p->d[1];
  for (int i = 0; i < 2; i++) {
    dir_t *d = &p->d[i];
    d->pair = p;
    d->from = i == 0 ? &p->down : &p->up;
    d->to = i == 0 ? &p->up : &p->down;
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (d->tfd >= 0 && uv_poll_init(loop, &d->timer, d->tfd) == 0) {
      d->timer.data = d;
      p->open_handles++;
      uv_poll_start(&d->timer, UV_READABLE, on_timer);
    }
  }
  if (p->open_handles != 4) {
    fprintf(stderr, "ps-netlag: timerfd: %s\n", strerror(errno));
    pair_close(p);
    return;
  }
  if (uv_accept(server, (uv_stream_t *)&p->down) != 0) {
    pair_close(p);
    return;
  }
  connections++;
  p->connect.data = p;
  if (uv_tcp_connect(&p->connect, &p->up, (struct sockaddr *)&to_addr,
                     on_connected) != 0)
    pair_close(p);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  uv_stop(h->loop);
}

/* "HOST:PORT" into addr; PS_OK or PS_ERR_INVAL. */
static int parse_addr(const char *s, struct sockaddr_storage *addr) {
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s) return PS_ERR_INVAL;
  char host[256];
  size_t n = (size_t)(colon - s);
  if (n >= sizeof(host)) return PS_ERR_INVAL;
  memcpy(host, s, n);
  host[n] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535) return PS_ERR_INVAL;
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr) == 0)
    return PS_OK;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)addr) == 0)
    return PS_OK;
  return PS_ERR_INVAL;
}

int main(int argc, char **argv) {
  char *listen_at = NULL, *to = NULL;
  int64_t delay_us = 0;
  const ps_opt_t opts[] = {
      {"listen", PS_OPT_STRING, &listen_at, NULL, 0, 0, NULL,
       "HOST:PORT (numeric) to accept connections on."},
      {"to", PS_OPT_STRING, &to, NULL, 0, 0, NULL,
       "HOST:PORT (numeric) each accepted connection is relayed to."},
      {"delay-us", PS_OPT_INT, &delay_us, "0", 0, 10000000, NULL,
       "What every byte waits, each way, in microseconds (timers have "
       "millisecond resolution: below 1000, a chunk waits at most until "
       "the next millisecond)."},
  };
  const ps_config_t cfg = {
      .program = "ps-netlag",
      .summary =
          "A TCP relay that delays every byte by a fixed time, each "
          "way, for benchmarks on links with latency where the "
          "kernel has no netem (tests/bench/netlag.sh).",
      .usage = "[options] --listen HOST:PORT --to HOST:PORT",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  char err[256];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return 0;
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  struct sockaddr_storage listen_addr;
  if (listen_at == NULL || parse_addr(listen_at, &listen_addr) != PS_OK)
    return ps_config_refuse(&cfg, "--listen: a numeric HOST:PORT is needed");
  if (to == NULL || parse_addr(to, &to_addr) != PS_OK)
    return ps_config_refuse(&cfg, "--to: a numeric HOST:PORT is needed");
  delay_ns = (uint64_t)delay_us * 1000u;
  signal(SIGPIPE, SIG_IGN);

  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t server;
  uv_tcp_init(loop, &server);
  int uerr = uv_tcp_bind(&server, (struct sockaddr *)&listen_addr, 0);
  if (uerr == 0) uerr = uv_listen((uv_stream_t *)&server, 512, on_connection);
  if (uerr != 0) {
    fprintf(stderr, "ps-netlag: listen on %s: %s\n", listen_at,
            uv_strerror(uerr));
    ps_config_free(&cfg);
    return 1;
  }
  uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  fprintf(stderr, "ps-netlag: %s -> %s, %" PRId64 " us each way\n", listen_at,
          to, delay_us);
  uv_run(loop, UV_RUN_DEFAULT);
  fprintf(stderr,
          "ps-netlag: %s -> %s: %" PRIu64 " connections, %" PRIu64
          " bytes relayed\n",
          listen_at, to, connections, bytes_relayed);
  ps_config_free(&cfg);
  return 0;
}
