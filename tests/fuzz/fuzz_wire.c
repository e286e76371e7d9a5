#include "fuzz_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/err.h"
#include "common/transport.h"

/* A message that was sent over inproc is there at once; this only bounds
 * a harness bug. */
#define DELIVER_WAIT_MS 5000

struct fuzz_wire_s {
  void *ctx;
  void *rx;
  int router;
  int nsenders;
  void *tx[FUZZ_SENDERS];
};

static unsigned read_u16(fuzz_input_t *in) {
  unsigned v = 0;
  if (in->n > 0) v = in->p[0];
  if (in->n > 1) v |= (unsigned)in->p[1] << 8;
  size_t take = in->n < 2 ? in->n : 2;
  in->p += take;
  in->n -= take;
  return v;
}

int fuzz_next_record(fuzz_input_t *in, fuzz_record_t *r) {
  if (in->n == 0) return 0;
  uint8_t head = in->p[0];
  in->p++;
  in->n--;
  memset(r, 0, sizeof(*r));
  if (head & 0x80) {
    r->control = 1;
    r->op = head & 0x7f;
    r->arg = read_u16(in);
    return 1;
  }
  r->from = head % FUZZ_SENDERS;
  int n = 0;
  if (in->n > 0) {
    n = in->p[0];
    in->p++;
    in->n--;
  }
  if (n > FUZZ_MAX_FRAMES) n = FUZZ_MAX_FRAMES;
  for (int i = 0; i < n; i++) {
    size_t len = read_u16(in);
    if (len > in->n) len = in->n;
    r->frame[i] = in->p;
    r->len[i] = len;
    in->p += len;
    in->n -= len;
  }
  /* ZeroMQ has no message of zero frames: one empty header stands in. */
  if (n == 0) {
    r->frame[0] = in->p;
    r->len[0] = 0;
    n = 1;
  }
  r->nframes = n;
  return 1;
}

static void must(int ok, const char *what) {
  if (ok) return;
  fprintf(stderr, "fuzz_wire: %s: %s\n", what, zmq_strerror(zmq_errno()));
  abort();
}

fuzz_wire_t *fuzz_wire_new(int router) {
  static unsigned serial;
  fuzz_wire_t *w = calloc(1, sizeof(*w));
  must(w != NULL, "calloc");
  w->ctx = zmq_ctx_new();
  must(w->ctx != NULL, "zmq_ctx_new");
  /* Room for the sockets a harness's inputs close faster than ZeroMQ's
   * reaper frees them (fuzz_pace_reaper). */
  zmq_ctx_set(w->ctx, ZMQ_MAX_SOCKETS, 4096);
  w->router = router;
  w->rx = zmq_socket(w->ctx, router ? ZMQ_ROUTER : ZMQ_PAIR);
  must(w->rx != NULL, "zmq_socket");
  int zero = 0;
  zmq_setsockopt(w->rx, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(w->rx, ZMQ_RCVHWM, &zero, sizeof(zero));
  char ep[64];
  snprintf(ep, sizeof(ep), "inproc://fuzz-wire-%u", serial++);
  must(ps_zmq_bind(w->rx, ep) == 0, "zmq_bind");
  w->nsenders = router ? FUZZ_SENDERS : 1;
  for (int i = 0; i < w->nsenders; i++) {
    w->tx[i] = zmq_socket(w->ctx, router ? ZMQ_DEALER : ZMQ_PAIR);
    must(w->tx[i] != NULL, "zmq_socket");
    zmq_setsockopt(w->tx[i], ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(w->tx[i], ZMQ_SNDHWM, &zero, sizeof(zero));
    if (router == FUZZ_WIRE_MEMBERS) {
      /* Each sender a node's membership link, with a token of its own
       * (common/auth.h): the scheduler registers nodes only on those. */
      ps_auth_token_t t;
      snprintf(t.hex, sizeof(t.hex), "%032x", i + 1);
      char err[128];
      must(ps_auth_set_routing_id(w->tx[i], &t, PS_AUTH_USE_MEMBER, err,
                                  sizeof(err)) == PS_OK,
           "routing id");
    } else if (router) {
      char id[16];
      int n = snprintf(id, sizeof(id), "fuzz-%d", i);
      zmq_setsockopt(w->tx[i], ZMQ_ROUTING_ID, id, (size_t)n);
    }
    must(ps_zmq_connect(w->tx[i], ep) == 0, "zmq_connect");
  }
  return w;
}

void *fuzz_wire_ctx(fuzz_wire_t *w) {
  return w->ctx;
}

/* libFuzzer's timer (SIGALRM, for -timeout) interrupts ZeroMQ calls: they
 * are tried again. */
static int poll_in(void *sock, long timeout_ms) {
  zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
  int rc;
  do {
    rc = zmq_poll(&item, 1, timeout_ms);
  } while (rc < 0 && zmq_errno() == EINTR);
  return rc;
}

static int send_frame(void *sock, const void *data, size_t len, int flags) {
  int rc;
  do {
    rc = zmq_send(sock, data, len, flags);
  } while (rc < 0 && zmq_errno() == EINTR);
  return rc;
}

static void *sender(fuzz_wire_t *w, unsigned from) {
  return w->tx[from % (unsigned)w->nsenders];
}

static int receive(fuzz_wire_t *w, const ps_frame_limits_t *limits, ps_msg_t *m,
                   char *err, size_t errlen) {
  /* Polled again after a receive that found nothing: zmq_poll may report
   * the socket readable before the message is. */
  for (int tries = 0; tries < 100; tries++) {
    must(poll_in(w->rx, DELIVER_WAIT_MS) == 1, "message not delivered");
    int rc = ps_msg_recv(w->rx, w->router, limits, m, err, errlen);
    if (rc != PS_ERR_TIMEOUT) return rc;
  }
  must(0, "message not received");
  return PS_ERR_TIMEOUT;
}

int fuzz_wire_deliver(fuzz_wire_t *w, const fuzz_record_t *r,
                      const ps_frame_limits_t *limits, ps_msg_t *m, char *err,
                      size_t errlen) {
  void *tx = sender(w, r->from);
  for (int i = 0; i < r->nframes; i++) {
    int flags = i + 1 < r->nframes ? ZMQ_SNDMORE : 0;
    must(send_frame(tx, r->frame[i], r->len[i], flags) >= 0, "zmq_send");
  }
  return receive(w, limits, m, err, errlen);
}

int fuzz_wire_deliver_env(fuzz_wire_t *w, unsigned from, Ps__Envelope *env,
                          ps_msg_t *m, char *err, size_t errlen) {
  must(ps_msg_send(sender(w, from), NULL, env, NULL, 0) == PS_OK,
       "ps_msg_send");
  return receive(w, NULL, m, err, errlen);
}

int fuzz_wire_resend(fuzz_wire_t *w, unsigned from, ps_msg_t *m,
                     const ps_frame_limits_t *limits, ps_msg_t *out, char *err,
                     size_t errlen) {
  must(ps_msg_send(sender(w, from), NULL, m->env, m->payload, m->npayload) ==
           PS_OK,
       "ps_msg_send");
  return receive(w, limits, out, err, errlen);
}

int fuzz_wire_idle(fuzz_wire_t *w) {
  /* A receive, not zmq_poll: poll may report a socket readable with
   * nothing to read. */
  zmq_msg_t part;
  zmq_msg_init(&part);
  int rc;
  do {
    rc = zmq_msg_recv(&part, w->rx, ZMQ_DONTWAIT);
  } while (rc < 0 && zmq_errno() == EINTR);
  if (rc < 0) {
    zmq_msg_close(&part);
    return 1;
  }
  /* Say what was left, for the report. */
  int n = 0, more;
  do {
    fprintf(stderr, "fuzz_wire: left over: frame %d of %zu bytes\n", n++,
            zmq_msg_size(&part));
    more = zmq_msg_more(&part);
    zmq_msg_close(&part);
    zmq_msg_init(&part);
  } while (more && zmq_msg_recv(&part, w->rx, ZMQ_DONTWAIT) >= 0);
  zmq_msg_close(&part);
  return 0;
}
