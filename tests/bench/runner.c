/* The two kinds of worker process of ps-bench.
 *
 * A client registers with the cluster as one worker of a synthetic model
 * (one tensor, model_floats long, in the codecs of --codec), reports the
 * servers' ranges, then runs the measurements the controller asks for, one
 * line per command:
 *
 *   run ps|raw push|pull|pushpull|fused SIZE WINDOW DURATION_MS
 *     -> res BYTES REQUESTS OPS ELAPSED_NS WIRE_BYTES HISTOGRAM
 *        | err MESSAGE
 *   quit
 *
 * BYTES counts the float32 values moved (goodput), WIRE_BYTES the payload
 * bytes that went over the sockets (a coded request's frame, both ways).
 *
 * An op moves SIZE bytes to or from every server at once: one request per
 * server (push, pull), a push then a pull per server (pushpull), or one
 * push-pull per server whose reply carries the values (fused). WINDOW
 * ops are kept in flight; each op's latency is from its start to its last
 * reply. "ps" goes through libps-client to the real servers (pulls with
 * the zero-copy ps_client_pull_frames_start, or with --pull-copy into an
 * array as ps_client_pull does); "raw" sends
 * the same messages over plain DEALER sockets to raw ZeroMQ servers that
 * only answer (no protobuf, no apply), with the same zero-copy sends, so
 * the ratio of the two is what the parameter server costs over ZeroMQ.
 * With a codec, raw moves frames of the coded sizes (no encoding). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "bench.h"
#include "common/codec.h"
#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"

#define RESULT_MAX 65536

const char *ps_bench_op_name(ps_bench_op_t op) {
  static const char *names[] = {"push",   "pull",  "pushpull",
                                "sparse", "apply", "fused"};
  return op < PS_BENCH_NOPS ? names[op] : "?";
}

static int parse_op(const char *s) {
  for (int i = 0; i < PS_BENCH_NOPS; i++)
    if (strcmp(s, ps_bench_op_name((ps_bench_op_t)i)) == 0) return i;
  return -1;
}

static int reply(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int reply(int fd, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return -1;
  if ((size_t)n > sizeof(line) - 2) n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  return ps_bench_write_all(fd, line, (size_t)n);
}

/* ---- raw ZeroMQ wire format ---- */

enum { RAW_PUSH = 1, RAW_PULL = 2, RAW_FUSED = 3 };

typedef struct {
  uint32_t kind;
  uint32_t op_slot;     /* which op of the window */
  uint64_t reply_bytes; /* what a pull's or a fused op's reply carries */
} raw_hdr_t;

/* Zero-copy frames count themselves back in, as libps-client's do, so both
 * sides pay the same for ownership tracking. */
static atomic_uint_fast64_t raw_unreleased;

static void raw_release_cb(void *data, void *hint) {
  (void)data;
  (void)hint;
  atomic_fetch_sub_explicit(&raw_unreleased, 1, memory_order_acq_rel);
}

static int raw_send_payload(void *sock, const void *data, uint64_t bytes,
                            int flags) {
  zmq_msg_t m;
  atomic_fetch_add_explicit(&raw_unreleased, 1, memory_order_relaxed);
  if (zmq_msg_init_data(&m, (void *)data, bytes, raw_release_cb, NULL) != 0) {
    atomic_fetch_sub(&raw_unreleased, 1);
    return -1;
  }
  if (zmq_msg_send(&m, sock, flags) < 0) {
    zmq_msg_close(&m);
    return -1;
  }
  return 0;
}

/* ---- the raw server ---- */

int ps_bench_raw_server_main(void *arg) {
  ps_bench_raw_args_t *a = arg;
  /* Aligned and touched, like a server's weights (a version buffer):
   * untouched pages would all be the kernel's zero page, and the kernel's
   * copy into the socket is several times slower from a source that is
   * not cache-line aligned (measured: 16 bytes off, as calloc gives). */
  size_t wbytes =
      ((a->max_floats ? a->max_floats : 1) * sizeof(float) + 63) / 64 * 64;
  float *weights = aligned_alloc(64, wbytes);
  if (weights) memset(weights, 0, wbytes);
  void *ctx = zmq_ctx_new();
  void *sock = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0;
  zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof(zero));
  zmq_setsockopt(sock, ZMQ_RCVHWM, &zero, sizeof(zero));
  if (weights == NULL || zmq_bind(sock, "tcp://127.0.0.1:*") != 0) {
    reply(a->ctl_fd, "err raw server: cannot bind: %s", zmq_strerror(errno));
    return 1;
  }
  char ep[128];
  size_t eplen = sizeof(ep);
  zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &eplen);
  reply(a->ctl_fd, "endpoint %s", ep);

  zmq_pollitem_t items[2] = {{sock, 0, ZMQ_POLLIN, 0},
                             {NULL, a->ctl_fd, ZMQ_POLLIN, 0}};
  for (;;) {
    if (zmq_poll(items, 2, -1) < 0 && errno != EINTR) break;
    if (items[1].revents & ZMQ_POLLIN) break; /* "quit" or EOF */
    for (;;) {
      zmq_msg_t route, hdr, body;
      zmq_msg_init(&route);
      if (zmq_msg_recv(&route, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&route);
        break;
      }
      zmq_msg_init(&hdr);
      zmq_msg_recv(&hdr, sock, 0);
      int more = zmq_msg_more(&hdr);
      while (more) { /* a push's values: received and dropped */
        zmq_msg_init(&body);
        zmq_msg_recv(&body, sock, 0);
        more = zmq_msg_more(&body);
        zmq_msg_close(&body);
      }
      raw_hdr_t h = {0};
      if (zmq_msg_size(&hdr) == sizeof(h))
        memcpy(&h, zmq_msg_data(&hdr), sizeof(h));
      int pull = (h.kind == RAW_PULL || h.kind == RAW_FUSED) &&
                 h.reply_bytes <= a->max_floats * sizeof(float);
      zmq_msg_send(&route, sock, ZMQ_SNDMORE);
      zmq_msg_send(&hdr, sock, pull ? ZMQ_SNDMORE : 0);
      if (pull) raw_send_payload(sock, weights, h.reply_bytes, 0);
    }
  }
  zmq_close(sock);
  zmq_ctx_term(ctx);
  free(weights);
  return 0;
}

/* ---- one measurement ---- */

typedef struct {
  uint64_t t0;
  int parts_left;    /* raw: replies still owed */
  uint64_t *tickets; /* ps: 2 * nservers */
  uint8_t *frames;   /* ps: 1 where the ticket is a zero-copy pull */
  int ntickets;
} op_slot_t;

typedef struct {
  ps_client_t *client;
  int nservers;
  uint64_t *begins; /* each server's first key */
  uint64_t *lens;
  float *values, *out;
  void *zctx;
  void **raw; /* DEALER per raw server */
  int nraw;
  int window_max;
  int pull_copy; /* pulls into an array (ps_client_pull) instead of spans */
  int codec, pull_codec; /* the tensor's (PS_CODEC_*) */
  float topk_fraction;
  op_slot_t *slots;
  ps_bench_hist_t hist;
  char errmsg[512];
  uint64_t fresh_next; /* --sparse-fresh: this client's next sequence number */
} runner_t;

typedef struct {
  uint64_t bytes, requests, ops, elapsed_ns, wire;
} tally_t;

/* Answers a run on fd: "res <bytes> <requests> <ops> <ns> <histogram>\n",
 * built in result (RESULT_MAX bytes). */
static void send_result(int fd, const tally_t *t, const ps_bench_hist_t *hist,
                        char *result) {
  int hn =
      snprintf(result, RESULT_MAX, "res %llu %llu %llu %llu %llu ",
               (unsigned long long)t->bytes, (unsigned long long)t->requests,
               (unsigned long long)t->ops, (unsigned long long)t->elapsed_ns,
               (unsigned long long)t->wire);
  if (ps_bench_hist_format(hist, result + hn, (size_t)(RESULT_MAX - hn - 2)) <
      0) {
    reply(fd, "err histogram too large");
    return;
  }
  size_t rl = strlen(result);
  result[rl++] = '\n';
  ps_bench_write_all(fd, result, rl);
}

static int requests_per_op(ps_bench_op_t op, int nservers) {
  return (op == PS_BENCH_PUSHPULL ? 2 : 1) * nservers;
}

/* Values one request moves: a fused one carries them both ways. */
static uint64_t floats_per_request(ps_bench_op_t op, uint64_t n) {
  return op == PS_BENCH_FUSED ? 2 * n : n;
}

/* Payload bytes of one request of n values each way in the tensor's
 * codecs: what a push (or a push-pull's push) sends, what a pull (or a
 * push-pull's reply) brings. */
static uint64_t push_wire(const runner_t *r, uint64_t n) {
  return ps_codec_encoded_bytes(r->codec, n,
                                ps_codec_topk_count(n, r->topk_fraction));
}

static uint64_t pull_wire(const runner_t *r, uint64_t n) {
  return ps_codec_encoded_bytes(r->pull_codec, n, 0);
}

static int ps_op_start(runner_t *r, ps_bench_op_t op, uint64_t n,
                       op_slot_t *s) {
  s->ntickets = 0;
  s->t0 = ps_now_ns();
  for (int i = 0; op == PS_BENCH_FUSED && i < r->nservers; i++) {
    s->frames[s->ntickets] = 0;
    if (ps_client_pushpull_start(r->client, r->begins[i], n, r->values, 0,
                                 r->out, &s->tickets[s->ntickets]) != PS_OK) {
      snprintf(r->errmsg, sizeof(r->errmsg), "push_pull start: %s",
               ps_client_errmsg(r->client));
      return -1;
    }
    s->ntickets++;
  }
  for (int pass = 0; op != PS_BENCH_FUSED && pass < 2; pass++) {
    int is_push = pass == 0;
    if (is_push && op == PS_BENCH_PULL) continue;
    if (!is_push && op == PS_BENCH_PUSH) continue;
    for (int i = 0; i < r->nservers; i++) {
      uint64_t *t = &s->tickets[s->ntickets];
      s->frames[s->ntickets] = !is_push && !r->pull_copy;
      int rc =
          is_push ? ps_client_push_start(r->client, r->begins[i], n, r->values,
                                         0, t)
          : r->pull_copy
              ? ps_client_pull_start(r->client, r->begins[i], n, r->out, 0, t)
              : ps_client_pull_frames_start(r->client, r->begins[i], n, 0, t);
      if (rc != PS_OK) {
        snprintf(r->errmsg, sizeof(r->errmsg), "%s start: %s",
                 is_push ? "push" : "pull", ps_client_errmsg(r->client));
        return -1;
      }
      s->ntickets++;
    }
  }
  return 0;
}

static int ps_op_wait(runner_t *r, op_slot_t *s) {
  int failed = 0;
  for (int i = 0; i < s->ntickets; i++) {
    int rc;
    if (s->frames[i]) {
      /* The values are used where they landed, as the raw client does. */
      const ps_client_span_t *spans;
      size_t nspans;
      rc = ps_client_wait_frames(r->client, s->tickets[i], &spans, &nspans);
      if (rc == PS_OK) ps_client_release(r->client, s->tickets[i]);
    } else {
      rc = ps_client_wait(r->client, s->tickets[i]);
    }
    if (rc != PS_OK && !failed) {
      failed = 1;
      snprintf(r->errmsg, sizeof(r->errmsg), "wait: %s",
               ps_client_errmsg(r->client));
    }
  }
  ps_bench_hist_add(&r->hist, ps_now_ns() - s->t0);
  return failed ? -1 : 0;
}

static int run_ps(runner_t *r, ps_bench_op_t op, uint64_t n, int window,
                  uint64_t duration_ns, tally_t *t) {
  uint64_t start = ps_now_ns(), end = start + duration_ns;
  int head = 0, inflight = 0, rc = 0;
  uint64_t per_op = (uint64_t)requests_per_op(op, r->nservers);
  uint64_t push0, pull0, push1, pull1;
  ps_client_wire_bytes(r->client, &push0, &pull0);
  for (;;) {
    while (rc == 0 && inflight < window && ps_now_ns() < end) {
      rc = ps_op_start(r, op, n, &r->slots[(head + inflight) % window]);
      if (rc == 0) inflight++;
    }
    if (inflight == 0) break;
    if (ps_op_wait(r, &r->slots[head]) != 0) rc = -1;
    head = (head + 1) % window;
    inflight--;
    if (rc == 0) t->ops++;
  }
  t->elapsed_ns = ps_now_ns() - start;
  t->requests = t->ops * per_op;
  t->bytes = t->requests * floats_per_request(op, n) * sizeof(float);
  ps_client_wire_bytes(r->client, &push1, &pull1);
  t->wire = (push1 - push0) + (pull1 - pull0);
  return rc;
}

static int raw_op_start(runner_t *r, ps_bench_op_t op, uint64_t n, int slot,
                        op_slot_t *s) {
  s->t0 = ps_now_ns();
  s->parts_left = requests_per_op(op, r->nraw);
  for (int i = 0; op == PS_BENCH_FUSED && i < r->nraw; i++) {
    raw_hdr_t h = {RAW_FUSED, (uint32_t)slot, pull_wire(r, n)};
    if (zmq_send(r->raw[i], &h, sizeof(h), ZMQ_SNDMORE) < 0 ||
        raw_send_payload(r->raw[i], r->values, push_wire(r, n), 0) != 0) {
      snprintf(r->errmsg, sizeof(r->errmsg), "raw send: %s",
               zmq_strerror(errno));
      return -1;
    }
  }
  for (int pass = 0; op != PS_BENCH_FUSED && pass < 2; pass++) {
    int is_push = pass == 0;
    if (is_push && op == PS_BENCH_PULL) continue;
    if (!is_push && op == PS_BENCH_PUSH) continue;
    for (int i = 0; i < r->nraw; i++) {
      raw_hdr_t h = {is_push ? RAW_PUSH : RAW_PULL, (uint32_t)slot,
                     pull_wire(r, n)};
      if (zmq_send(r->raw[i], &h, sizeof(h), is_push ? ZMQ_SNDMORE : 0) < 0 ||
          (is_push &&
           raw_send_payload(r->raw[i], r->values, push_wire(r, n), 0) != 0)) {
        snprintf(r->errmsg, sizeof(r->errmsg), "raw send: %s",
                 zmq_strerror(errno));
        return -1;
      }
    }
  }
  return 0;
}

/* Takes every reply waiting on raw socket i; returns -1 on an error. */
static int raw_drain(runner_t *r, int i, int *got) {
  for (;;) {
    zmq_msg_t hdr;
    zmq_msg_init(&hdr);
    if (zmq_msg_recv(&hdr, r->raw[i], ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&hdr);
      if (errno == EAGAIN) return 0;
      snprintf(r->errmsg, sizeof(r->errmsg), "raw recv: %s",
               zmq_strerror(errno));
      return -1;
    }
    raw_hdr_t h = {0};
    if (zmq_msg_size(&hdr) == sizeof(h))
      memcpy(&h, zmq_msg_data(&hdr), sizeof(h));
    int more = zmq_msg_more(&hdr);
    zmq_msg_close(&hdr);
    while (more) {
      /* A pull's values: used where they landed, as a zero-copy
       * receiver would; libps-client copies them to the caller. */
      zmq_msg_t body;
      zmq_msg_init(&body);
      zmq_msg_recv(&body, r->raw[i], 0);
      more = zmq_msg_more(&body);
      zmq_msg_close(&body);
    }
    if (h.op_slot < (uint32_t)r->window_max) r->slots[h.op_slot].parts_left--;
    (*got)++;
  }
}

static int run_raw(runner_t *r, ps_bench_op_t op, uint64_t n, int window,
                   uint64_t duration_ns, tally_t *t) {
  uint64_t start = ps_now_ns(), end = start + duration_ns;
  int head = 0, inflight = 0, rc = 0;
  uint64_t per_op = (uint64_t)requests_per_op(op, r->nraw);
  zmq_pollitem_t items[64];
  for (int i = 0; i < r->nraw; i++)
    items[i] = (zmq_pollitem_t){r->raw[i], 0, ZMQ_POLLIN, 0};
  for (;;) {
    while (rc == 0 && inflight < window && ps_now_ns() < end) {
      int slot = (head + inflight) % window;
      rc = raw_op_start(r, op, n, slot, &r->slots[slot]);
      if (rc == 0) inflight++;
    }
    if (inflight == 0) break;
    /* Ops finish in order on each socket; the oldest decides. The same
     * loop as libps-client's: poll (at once when a reply waits), then take
     * what the ready sockets hold. */
    while (rc == 0 && r->slots[head].parts_left > 0) {
      if (zmq_poll(items, r->nraw, 1000) < 0 && errno != EINTR) {
        snprintf(r->errmsg, sizeof(r->errmsg), "zmq_poll: %s",
                 zmq_strerror(errno));
        rc = -1;
      }
      int got = 0;
      for (int i = 0; i < r->nraw && rc == 0; i++)
        if ((items[i].revents & ZMQ_POLLIN) && raw_drain(r, i, &got) != 0)
          rc = -1;
      if (rc == 0 && ps_now_ns() > end + 30ull * 1000000000ull) {
        snprintf(r->errmsg, sizeof(r->errmsg), "raw server did not answer");
        rc = -1;
      }
    }
    if (rc != 0) break;
    ps_bench_hist_add(&r->hist, ps_now_ns() - r->slots[head].t0);
    head = (head + 1) % window;
    inflight--;
    t->ops++;
  }
  t->elapsed_ns = ps_now_ns() - start;
  t->requests = t->ops * per_op;
  t->bytes = t->requests * floats_per_request(op, n) * sizeof(float);
  uint64_t per_server = op == PS_BENCH_PUSH ? push_wire(r, n)
                        : op == PS_BENCH_PULL
                            ? pull_wire(r, n)
                            : push_wire(r, n) + pull_wire(r, n);
  t->wire = t->ops * (uint64_t)r->nraw * per_server;
  return rc;
}

/* ---- the client process ---- */

/* Zipf's law over ranks 1..n with exponent s, by rejection-inversion
 * (Hormann and Derflinger 1996): O(1) per draw, no table, any n. */
typedef struct {
  double s, n, hx1, hxn, s2;
} zipf_t;

static double zipf_helper1(double x) { /* log1p(x) / x */
  return fabs(x) > 1e-8 ? log1p(x) / x
                        : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x));
}

static double zipf_helper2(double x) { /* expm1(x) / x */
  return fabs(x) > 1e-8 ? expm1(x) / x
                        : 1 + x * 0.5 * (1 + x * (1.0 / 3) * (1 + 0.25 * x));
}

static double zipf_h(const zipf_t *z, double x) {
  return exp(-z->s * log(x));
}

static double zipf_hint(const zipf_t *z, double x) {
  double lx = log(x);
  return zipf_helper2((1 - z->s) * lx) * lx;
}

static double zipf_hinv(const zipf_t *z, double x) {
  double t = x * (1 - z->s);
  if (t < -1) t = -1;
  return exp(zipf_helper1(t) * x);
}

static void zipf_init(zipf_t *z, double s, uint64_t n) {
  z->s = s;
  z->n = (double)n;
  z->hx1 = zipf_hint(z, 1.5) - 1;
  z->hxn = zipf_hint(z, z->n + 0.5);
  z->s2 = 2 - zipf_hinv(z, zipf_hint(z, 2.5) - zipf_h(z, 2));
}

static uint64_t xorshift(uint64_t *rng) {
  *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
  return *rng;
}

/* A rank in [1, n]. */
static uint64_t zipf_draw(const zipf_t *z, uint64_t *rng) {
  for (;;) {
    double u01 = (double)(xorshift(rng) >> 11) * 0x1p-53;
    double u = z->hxn + u01 * (z->hx1 - z->hxn);
    double x = zipf_hinv(z, u);
    double k = floor(x + 0.5);
    if (k < 1) k = 1;
    if (k > z->n) k = z->n;
    if (k - x <= z->s2 || u >= zipf_hint(z, k + 0.5) - zipf_h(z, k))
      return (uint64_t)k;
  }
}

/* A rank's id: hashed, so the hot ranks spread over the servers. */
static uint64_t zipf_id(uint64_t rank) {
  uint64_t x = rank * 0x9e3779b97f4a7c15ull;
  x ^= x >> 31, x *= 0xbf58476d1ce4e5b9ull, x ^= x >> 29;
  return x;
}

/* keys[0, nkeys): the first nkeys distinct ids of Zipf draws; set is an
 * open-addressed table of 2 * cap slots (0 marks empty: ids are hashes of
 * ranks >= 1, and one that hashes to 0 is drawn again). */
static void zipf_keys(const zipf_t *z, uint64_t *rng, uint64_t *keys,
                      uint64_t nkeys, uint64_t *set, uint64_t slots) {
  memset(set, 0, slots * sizeof(*set));
  uint64_t got = 0;
  while (got < nkeys) {
    uint64_t id = zipf_id(zipf_draw(z, rng));
    if (id == 0) continue;
    uint64_t i = id & (slots - 1);
    while (set[i] != 0 && set[i] != id) i = (i + 1) & (slots - 1);
    if (set[i] == id) continue;
    set[i] = id;
    keys[got++] = id;
  }
}

/* The sparse op: each call pushes, then pulls, the rows of nkeys random
 * distinct ids. Ids are stratified (one per slice of the id space, at a
 * random place in it) so they are distinct without a set, then shuffled so
 * the client sees them unsorted as a trainer's batch would be. A call is
 * one push or one pull; bytes count keys and rows. */
static int run_sparse(runner_t *r, const ps_bench_client_args_t *a,
                      uint64_t nkeys, uint64_t duration_ns, tally_t *t) {
  if (a->sparse_dim == 0 || nkeys == 0 || nkeys > a->sparse_keys ||
      a->sparse_space < nkeys) {
    snprintf(r->errmsg, sizeof(r->errmsg), "bad sparse request of %llu keys",
             (unsigned long long)nkeys);
    return -1;
  }
  size_t dim = a->sparse_dim;
  uint64_t *keys = malloc(nkeys * sizeof(*keys));
  float *vals = malloc(nkeys * dim * sizeof(float));
  float *out = malloc(nkeys * dim * sizeof(float));
  if (!keys || !vals || !out) {
    free(keys), free(vals), free(out);
    snprintf(r->errmsg, sizeof(r->errmsg), "out of memory");
    return -1;
  }
  /* Gradients of zero: the rows stay put, the update still runs. */
  memset(vals, 0, nkeys * dim * sizeof(float));
  uint64_t rng = ps_now_ns() | 1, slice = a->sparse_space / nkeys;
  zipf_t z;
  uint64_t *set = NULL, slots = 1;
  if (a->sparse_zipf > 0) {
    zipf_init(&z, a->sparse_zipf, a->sparse_space);
    while (slots < 2 * nkeys) slots <<= 1;
    if ((set = malloc(slots * sizeof(*set))) == NULL) {
      free(keys), free(vals), free(out);
      snprintf(r->errmsg, sizeof(r->errmsg), "out of memory");
      return -1;
    }
  }
  uint64_t start = ps_now_ns(), end = start + duration_ns;
  int rc = 0;
  while (rc == 0 && ps_now_ns() < end) {
    if (a->sparse_fresh) {
      for (uint64_t i = 0; i < nkeys; i++)
        keys[i] = (r->fresh_next + i) * (uint64_t)a->nclients +
                  (uint64_t)a->client_index;
      r->fresh_next += nkeys;
    } else if (set) {
      zipf_keys(&z, &rng, keys, nkeys, set, slots);
    } else {
      for (uint64_t i = 0; i < nkeys; i++)
        keys[i] = i * slice + xorshift(&rng) % slice;
    }
    for (uint64_t i = nkeys - 1; i > 0; i--) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      uint64_t j = rng % (i + 1), k = keys[i];
      keys[i] = keys[j], keys[j] = k;
    }
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
      uint64_t t0 = ps_now_ns();
      int st = pass == 0
                   ? ps_client_sparse_push(r->client, PS_BENCH_SPARSE_TABLE,
                                           keys, nkeys, vals, 0)
                   : ps_client_sparse_pull(r->client, PS_BENCH_SPARSE_TABLE,
                                           keys, nkeys, out);
      if (st != PS_OK) {
        snprintf(r->errmsg, sizeof(r->errmsg), "sparse %s: %s",
                 pass == 0 ? "push" : "pull", ps_client_errmsg(r->client));
        rc = -1;
        break;
      }
      ps_bench_hist_add(&r->hist, ps_now_ns() - t0);
      t->ops++;
    }
  }
  t->elapsed_ns = ps_now_ns() - start;
  t->requests = t->ops;
  t->bytes = t->ops * nkeys * (sizeof(uint64_t) + dim * sizeof(float));
  free(keys), free(vals), free(out), free(set);
  return rc;
}

/* A fill (--sparse-ids): pushes nids fresh ids of this client (its share
 * of the run's), --sparse-keys per call, one call at a time, pushes only,
 * so the servers create every row once. Writes "prog <ids pushed>" to fd
 * about every second, so the controller sees it alive on long fills. */
static int run_fill(runner_t *r, const ps_bench_client_args_t *a,
                    uint64_t nids, int fd, tally_t *t) {
  size_t dim = a->sparse_dim;
  uint64_t per = a->sparse_keys;
  if (dim == 0 || per == 0) {
    snprintf(r->errmsg, sizeof(r->errmsg), "no sparse table to fill");
    return -1;
  }
  uint64_t *keys = malloc(per * sizeof(*keys));
  float *vals = calloc(per * dim, sizeof(float));
  if (!keys || !vals) {
    free(keys), free(vals);
    snprintf(r->errmsg, sizeof(r->errmsg), "out of memory");
    return -1;
  }
  uint64_t start = ps_now_ns(), last_prog = start, done = 0;
  int rc = 0;
  while (rc == 0 && done < nids && !ps_bench_interrupted) {
    uint64_t n = nids - done < per ? nids - done : per;
    /* Ascending already: the client has nothing to sort. */
    for (uint64_t i = 0; i < n; i++)
      keys[i] = (r->fresh_next + i) * (uint64_t)a->nclients +
                (uint64_t)a->client_index;
    uint64_t t0 = ps_now_ns();
    if (ps_client_sparse_push(r->client, PS_BENCH_SPARSE_TABLE, keys, n, vals,
                              0) != PS_OK) {
      snprintf(r->errmsg, sizeof(r->errmsg), "sparse push: %s",
               ps_client_errmsg(r->client));
      rc = -1;
      break;
    }
    uint64_t t1 = ps_now_ns();
    ps_bench_hist_add(&r->hist, t1 - t0);
    r->fresh_next += n;
    done += n;
    t->ops++;
    t->bytes += n * (sizeof(uint64_t) + dim * sizeof(float));
    if (t1 - last_prog >= 1000000000ull) {
      last_prog = t1;
      if (reply(fd, "prog %llu", (unsigned long long)done) != 0) rc = -1;
    }
  }
  if (rc == 0 && done < nids) {
    snprintf(r->errmsg, sizeof(r->errmsg), "interrupted");
    rc = -1;
  }
  t->elapsed_ns = ps_now_ns() - start;
  t->requests = t->ops;
  free(keys), free(vals);
  return rc;
}

static ps_client_t *connect_client(const ps_bench_client_args_t *a, char *err,
                                   size_t errlen) {
  ps_tensor_spec_t t;
  memset(&t, 0, sizeof(t));
  snprintf(t.name, sizeof(t.name), "bench");
  t.offset = 0;
  t.length = a->model_floats;
  t.init = PS__INIT__INIT_ZERO;
  t.push_codec = a->codec;
  t.pull_codec = a->pull_codec;
  t.topk_fraction = a->codec == PS_CODEC_TOPK ? a->topk_fraction : 0;
  ps_sparse_spec_t sp;
  memset(&sp, 0, sizeof(sp));
  snprintf(sp.name, sizeof(sp.name), "%s", PS_BENCH_SPARSE_TABLE);
  sp.dim = a->sparse_dim;
  sp.init = PS__INIT__INIT_UNIFORM;
  sp.init_scale = 0.01f;
  if (a->sparse_optimizer >= 0) {
    sp.has_optimizer = 1;
    sp.optimizer.kind = a->sparse_optimizer;
    sp.optimizer.learning_rate = 0.01f;
    if (a->sparse_optimizer == PS_OPTIMIZER_ADAGRAD ||
        a->sparse_optimizer == PS_OPTIMIZER_ADAM)
      sp.optimizer.epsilon = 1e-8f;
    if (a->sparse_optimizer == PS_OPTIMIZER_ADAM)
      sp.optimizer.beta1 = 0.9f, sp.optimizer.beta2 = 0.999f;
    if (a->sparse_optimizer == PS_OPTIMIZER_FTRL)
      sp.optimizer.ftrl_beta = 1.0f;
  }
  ps_model_t model;
  memset(&model, 0, sizeof(model));
  if (a->sparse_dim > 0) {
    model.nsparse = 1;
    model.sparse = &sp;
  }
  model.ntensors = 1;
  model.tensors = &t;
  model.total = a->model_floats;
  model.optimizer = PS__OPTIMIZER__OPT_SGD;
  /* Gradients are zero: the weights stay put, the kernel still runs. */
  model.learning_rate = 0.01f;
  model.momentum = 0.0f;
  model.seed = 1;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = a->scheduler;
  o.timeout_ms = a->timeout_ms;
  /* The bench keeps its own window of ops; the library's must not be the
   * one that limits (a pushpull op is two requests per server). */
  o.window = 2 * a->window_max;
  o.chunk_bytes = a->chunk_bytes;
  o.keys_dir = a->keys_dir;
  int rc;
  return ps_client_new(&o, &model, &rc, err, errlen);
}

int ps_bench_client_main(void *arg) {
  const ps_bench_client_args_t *a = arg;
  ps_log_init("bench-client", (ps_log_level_t)a->log_level);
  runner_t r;
  memset(&r, 0, sizeof(r));
  char err[512];
  r.client = connect_client(a, err, sizeof(err));
  if (r.client == NULL) {
    reply(a->ctl_fd, "err cannot join the cluster at %s: %s", a->scheduler,
          err);
    return 1;
  }
  const ps_view_t *v = ps_client_view(r.client);
  r.nservers = (int)v->nranges;
  r.window_max = a->window_max;
  r.pull_copy = a->pull_copy;
  r.codec = a->codec;
  r.pull_codec = a->pull_codec;
  r.topk_fraction = a->topk_fraction;
  r.begins = calloc(v->nranges, sizeof(*r.begins));
  r.lens = calloc(v->nranges, sizeof(*r.lens));
  /* Cache-line aligned, as a trainer's arrays should be: the kernel copies
   * a pushed frame into the socket several times slower from a source that
   * is not (see the raw server), for ours and raw alike. */
  size_t vbytes = (a->max_floats * sizeof(float) + 63) / 64 * 64;
  r.values = aligned_alloc(64, vbytes ? vbytes : 64);
  r.out = aligned_alloc(64, vbytes ? vbytes : 64);
  if (r.values) memset(r.values, 0, vbytes);
  if (r.out) memset(r.out, 0, vbytes);
  r.slots = calloc((size_t)a->window_max, sizeof(*r.slots));
  int ok =
      r.begins && r.lens && r.values && r.out && r.slots && r.nservers <= 32;
  for (int i = 0; ok && i < a->window_max; i++)
    ok = (r.slots[i].tickets =
              calloc(2 * (size_t)r.nservers + 2, sizeof(uint64_t))) != NULL &&
         (r.slots[i].frames = calloc(2 * (size_t)r.nservers + 2, 1)) != NULL;
  if (!ok) {
    reply(a->ctl_fd, "err out of memory (or more than 32 servers)");
    return 1;
  }
  char line[1024];
  int n = snprintf(line, sizeof(line), "ready %d", r.nservers);
  for (size_t i = 0; i < v->nranges; i++) {
    r.begins[i] = v->ranges[i].begin;
    r.lens[i] = v->ranges[i].end - v->ranges[i].begin;
    n += snprintf(line + n, sizeof(line) - (size_t)n, " %" PRIu64, r.lens[i]);
  }
  if (a->nraw > 0) {
    r.zctx = zmq_ctx_new();
    r.raw = calloc((size_t)a->nraw, sizeof(*r.raw));
    r.nraw = a->nraw;
    for (int i = 0; i < a->nraw; i++) {
      r.raw[i] = zmq_socket(r.zctx, ZMQ_DEALER);
      int zero = 0;
      zmq_setsockopt(r.raw[i], ZMQ_LINGER, &zero, sizeof(zero));
      zmq_setsockopt(r.raw[i], ZMQ_SNDHWM, &zero, sizeof(zero));
      zmq_setsockopt(r.raw[i], ZMQ_RCVHWM, &zero, sizeof(zero));
      if (zmq_connect(r.raw[i], a->raw_eps[i]) != 0) {
        reply(a->ctl_fd, "err cannot connect to raw server %s: %s",
              a->raw_eps[i], zmq_strerror(errno));
        return 1;
      }
    }
  }
  reply(a->ctl_fd, "%s", line);

  char *result = malloc(RESULT_MAX);
  int status = 0;
  for (;;) {
    int len = ps_bench_read_line(a->ctl_fd, line, sizeof(line), -1);
    if (len <= 0 || strcmp(line, "quit") == 0) break;
    char mode[16], opname[16];
    unsigned long long size, duration_ms;
    int window;
    if (sscanf(line, "fill %llu", &size) == 1) {
      tally_t t = {0};
      memset(&r.hist, 0, sizeof(r.hist));
      r.errmsg[0] = '\0';
      if (run_fill(&r, a, size, a->ctl_fd, &t) != 0) {
        reply(a->ctl_fd, "err %s", r.errmsg);
        status = 1;
        continue;
      }
      send_result(a->ctl_fd, &t, &r.hist, result);
      continue;
    }
    if (sscanf(line, "run %15s %15s %llu %d %llu", mode, opname, &size, &window,
               &duration_ms) == 5 &&
        parse_op(opname) == PS_BENCH_SPARSE && strcmp(mode, "ps") == 0) {
      /* size is the number of keys per call. */
      tally_t t = {0};
      memset(&r.hist, 0, sizeof(r.hist));
      r.errmsg[0] = '\0';
      if (run_sparse(&r, a, size, duration_ms * 1000000ull, &t) != 0) {
        reply(a->ctl_fd, "err %s", r.errmsg);
        status = 1;
        continue;
      }
      send_result(a->ctl_fd, &t, &r.hist, result);
      continue;
    }
    if (sscanf(line, "run %15s %15s %llu %d %llu", mode, opname, &size, &window,
               &duration_ms) != 5 ||
        parse_op(opname) < 0 || window < 1 || window > a->window_max ||
        size % sizeof(float) != 0 || size / sizeof(float) > a->max_floats) {
      reply(a->ctl_fd, "err bad command \"%s\"", line);
      continue;
    }
    ps_bench_op_t op = (ps_bench_op_t)parse_op(opname);
    uint64_t nf = size / sizeof(float);
    int bad_len = 0;
    for (int i = 0; i < r.nservers; i++) bad_len |= r.lens[i] < nf;
    tally_t t = {0};
    memset(&r.hist, 0, sizeof(r.hist));
    r.errmsg[0] = '\0';
    int rc;
    if (bad_len)
      rc = -1, snprintf(r.errmsg, sizeof(r.errmsg),
                        "a server's range is shorter than %llu bytes", size);
    else if (strcmp(mode, "raw") == 0 && r.nraw > 0)
      rc = run_raw(&r, op, nf, window, duration_ms * 1000000ull, &t);
    else if (strcmp(mode, "ps") == 0)
      rc = run_ps(&r, op, nf, window, duration_ms * 1000000ull, &t);
    else
      rc = -1, snprintf(r.errmsg, sizeof(r.errmsg), "no %s servers", mode);
    if (rc != 0) {
      reply(a->ctl_fd, "err %s", r.errmsg);
      status = 1;
      continue;
    }
    send_result(a->ctl_fd, &t, &r.hist, result);
  }
  free(result);
  /* Done goes to the scheduler; once every worker is done the cluster
   * shuts itself down. */
  ps_client_destroy(&r.client);
  for (int i = 0; i < r.nraw; i++) zmq_close(r.raw[i]);
  if (r.zctx) zmq_ctx_term(r.zctx);
  for (int i = 0; i < a->window_max; i++) {
    free(r.slots[i].tickets);
    free(r.slots[i].frames);
  }
  free(r.slots);
  free(r.raw);
  free(r.begins);
  free(r.lens);
  free(r.values);
  free(r.out);
  return status;
}
