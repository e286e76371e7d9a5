#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"

/* One drain handles at most this many messages, or this long, then gives
 * the loop back (an idle handle brings it back on the next turn): a flood
 * of requests must not starve the loop's timers, the heartbeat among them,
 * or a busy server is declared dead (a 100 MB push stalled three servers
 * past a 400 ms heartbeat timeout before this). */
#define DRAIN_BUDGET_MSGS 256
#define DRAIN_BUDGET_NS (5 * 1000 * 1000)

struct ps_zsock_s {
  uv_poll_t poll;
  uv_prepare_t prepare;
  uv_idle_t idle; /* running while a drain stopped with messages left */
  /* With batch_ms: a wakeup that comes sooner than batch_ms after the last
   * drain began stops the poll and arms this timer for the rest; the
   * timer's drain reads all that came meanwhile. */
  uv_timer_t batch_timer;
  uint64_t batch_ns;
  uint64_t drain_began_ns;
  int deferred;     /* the poll is stopped and batch_timer armed */
  int open_handles; /* freed when all four handles' close callbacks ran */
  void *sock;
  /* The socket's own context, when it connects to a host by name: libzmq
   * resolves names with a blocking getaddrinfo in its context's I/O thread,
   * at the connect and at every reconnect, and a lookup that takes seconds
   * (aardvark-dns drops queries while it reloads, and the resolver waits
   * 5 s per try) would stall every socket of a shared context, the
   * heartbeat's among them. Its own I/O thread stalls only this one. */
  void *own_ctx;
  int is_router;
  ps_frame_limits_t limits;
  ps_zsock_recv_cb cb;
  void *arg;
  char endpoint[256];
  /* Set while callbacks run, so a callback may destroy its own socket. */
  int in_drain;
  int closing;
};

static void zsock_close_sock(ps_zsock_t *zs);

/* Sets one socket option; on failure says which and why. */
static int set_opt(void *sock, int option, const char *name, const void *value,
                   size_t len, char *err, size_t errlen) {
  if (zmq_setsockopt(sock, option, value, len) == 0) return PS_OK;
  return ps_errf(err, errlen, PS_ERR_ZMQ, "zmq_setsockopt(%s): %s", name,
                 zmq_strerror(zmq_errno()));
}

int ps_zsock_configure(void *sock, char *err, size_t errlen) {
  int zero = 0;
  int one = 1;
  int rc;
  if ((rc = set_opt(sock, ZMQ_LINGER, "ZMQ_LINGER", &zero, sizeof(zero), err,
                    errlen)) != PS_OK ||
      (rc = set_opt(sock, ZMQ_SNDHWM, "ZMQ_SNDHWM", &zero, sizeof(zero), err,
                    errlen)) != PS_OK ||
      (rc = set_opt(sock, ZMQ_RCVHWM, "ZMQ_RCVHWM", &zero, sizeof(zero), err,
                    errlen)) != PS_OK ||
      (rc = set_opt(sock, ZMQ_TCP_KEEPALIVE, "ZMQ_TCP_KEEPALIVE", &one,
                    sizeof(one), err, errlen)) != PS_OK ||
      /* A send never waits: with no high-water mark it can block only
       * when the socket has no pipe at all, which is what a DEALER is left
       * with after its peer refused the handshake (a plaintext client
       * meeting a CURVE server, a stranger's key: libzmq 4.3 drops the
       * pipe). It fails with EAGAIN instead, and the caller's retry or
       * deadline takes over; a client blocked there hung forever. */
      (rc = set_opt(sock, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", &zero, sizeof(zero),
                    err, errlen)) != PS_OK)
    return rc;
  return PS_OK;
}

static void idle_cb(uv_idle_t *h);

static void drain(ps_zsock_t *zs) {
  if (zs->closing) return;
  zs->in_drain = 1;
  uint64_t t0 = uv_hrtime();
  zs->drain_began_ns = t0;
  int budget = DRAIN_BUDGET_MSGS, more = 0;
  for (;;) {
    if (budget-- == 0 || uv_hrtime() - t0 > DRAIN_BUDGET_NS) {
      more = 1;
      break;
    }
    /* Batched, receive until EAGAIN: ZMQ_EVENTS processes libzmq's
     * commands each time, and finding none costs a poll and a getpid (two
     * system calls, the larger part of a heartbeat's cost on the
     * scheduler's thread). A receive that finds nothing processes them
     * once and tries again, so one batch of messages pays that once. */
    if (zs->batch_ns == 0) {
      int events = 0;
      size_t sz = sizeof(events);
      if (zmq_getsockopt(zs->sock, ZMQ_EVENTS, &events, &sz) != 0) break;
      if (!(events & ZMQ_POLLIN)) break;
    }
    ps_msg_t msg;
    char reason[256];
    int rc = ps_msg_recv(zs->sock, zs->is_router, &zs->limits, &msg, reason,
                         sizeof(reason));
    if (rc == PS_ERR_TIMEOUT) break;
    if (rc == PS_OK) reason[0] = '\0';
    zs->cb(zs, &msg, rc, reason, zs->arg);
    if (zs->closing) break;
  }
  zs->in_drain = 0;
  if (!zs->closing) {
    /* Both fail only on a handle that is not an idle handle. */
    int uerr =
        more ? uv_idle_start(&zs->idle, idle_cb) : uv_idle_stop(&zs->idle);
    if (uerr != 0)
      PS_ERROR("zsock_idle_failed", "err=\"%s\"", uv_strerror(uerr));
  }
  if (zs->closing) {
    /* The owner destroyed the socket from inside its callback. */
    zsock_close_sock(zs);
  }
}

static void poll_cb(uv_poll_t *h, int status, int events);

/* The batch's time is up: read all that came, then listen again. */
static void batch_timer_cb(uv_timer_t *h) {
  ps_zsock_t *zs = h->data;
  if (zs->closing || !zs->deferred) return;
  zs->deferred = 0;
  drain(zs);
  if (zs->closing) return;
  int uerr = uv_poll_start(&zs->poll, UV_READABLE, poll_cb);
  if (uerr != 0) PS_ERROR("zsock_poll_failed", "err=\"%s\"", uv_strerror(uerr));
}

/* With batch_ms, a wakeup too soon after the last drain waits for the
 * rest of the batch: the poll stops (the fd stays readable until libzmq's
 * commands are read, so libuv would call back at once again) and the timer
 * drains later. Returns 1 if it deferred. */
static int batch_defer(ps_zsock_t *zs) {
  if (zs->batch_ns == 0) return 0;
  uint64_t since = uv_hrtime() - zs->drain_began_ns;
  if (since >= zs->batch_ns) return 0;
  uint64_t wait_ms = (zs->batch_ns - since + 999999) / 1000000;
  int uerr = uv_poll_stop(&zs->poll);
  if (uerr == 0)
    uerr = uv_timer_start(&zs->batch_timer, batch_timer_cb, wait_ms, 0);
  if (uerr != 0) {
    PS_ERROR("zsock_batch_failed", "err=\"%s\"", uv_strerror(uerr));
    (void)uv_poll_start(&zs->poll, UV_READABLE, poll_cb);
    return 0;
  }
  zs->deferred = 1;
  return 1;
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  ps_zsock_t *zs = h->data;
  (void)events;
  if (status < 0) {
    PS_ERROR("zsock_poll_failed", "err=%s", uv_strerror(status));
    return;
  }
  if (batch_defer(zs)) return;
  drain(zs);
}

/* Before the loop blocks: a message may have arrived while we were sending,
 * and the edge that announced it was consumed by that send's ZMQ_EVENTS
 * update. While a batch waits, its timer reads them; within a batch, one
 * that is waiting starts the wait. */
static void prepare_cb(uv_prepare_t *h) {
  ps_zsock_t *zs = h->data;
  if (zs->deferred || zs->closing) return;
  if (zs->batch_ns && uv_hrtime() - zs->drain_began_ns < zs->batch_ns) {
    int events = 0;
    size_t sz = sizeof(events);
    if (zmq_getsockopt(zs->sock, ZMQ_EVENTS, &events, &sz) == 0 &&
        (events & ZMQ_POLLIN))
      (void)batch_defer(zs);
    return;
  }
  drain(zs);
}

/* A drain ran out of budget with messages left: go on, a turn later. */
static void idle_cb(uv_idle_t *h) {
  drain(h->data);
}

static void *ctx_term_thread(void *ctx) {
  zmq_ctx_term(ctx);
  return NULL;
}

void ps_zctx_term_async(void *ctx) {
  if (ctx == NULL) return;
  pthread_t t;
  pthread_attr_t attr;
  int detached = pthread_attr_init(&attr) == 0;
  if (detached) {
    detached =
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
        pthread_create(&t, &attr, ctx_term_thread, ctx) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!detached) zmq_ctx_term(ctx);
}

/* Closes the socket and, if it has its own, terminates its context. */
static void zsock_close_sock(ps_zsock_t *zs) {
  if (zs->sock) zmq_close(zs->sock);
  zs->sock = NULL;
  ps_zctx_term_async(zs->own_ctx);
  zs->own_ctx = NULL;
}

/* Enough for any burst of signals; a socket that keeps failing with EINTR
 * fails as zmq_bind would. */
#define EINTR_RETRIES 100

int ps_zmq_bind(void *sock, const char *ep) {
  int rc, tries = 0;
  while ((rc = zmq_bind(sock, ep)) != 0 && zmq_errno() == EINTR &&
         ++tries < EINTR_RETRIES) {
  }
  return rc;
}

int ps_zmq_connect(void *sock, const char *ep) {
  int rc, tries = 0;
  while ((rc = zmq_connect(sock, ep)) != 0 && zmq_errno() == EINTR &&
         ++tries < EINTR_RETRIES) {
  }
  return rc;
}

/* A tcp:// endpoint whose host (after the source address, if any) is
 * neither an IPv4 nor an IPv6 literal, nor "*". */
int ps_zsock_endpoint_has_name(const char *ep) {
  if (ep == NULL || strncmp(ep, "tcp://", 6) != 0) return 0;
  const char *h = ep + 6;
  const char *semi = strrchr(h, ';');
  if (semi) h = semi + 1;
  const char *colon = strrchr(h, ':');
  size_t n = colon ? (size_t)(colon - h) : strlen(h);
  if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
  char host[256];
  if (n == 0 || n >= sizeof(host)) return 0;
  memcpy(host, h, n);
  host[n] = '\0';
  if (strcmp(host, "*") == 0) return 0;
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) != 1 &&
         inet_pton(AF_INET6, host, buf) != 1;
}

static void close_cb(uv_handle_t *h) {
  ps_zsock_t *zs = h->data;
  if (--zs->open_handles == 0) free(zs);
}

/* The options and endpoints of a fresh socket, before libuv sees it. */
static int zsock_open(ps_zsock_t *zs, const char *bind_ep,
                      const char *connect_ep, const ps_zsock_opts_t *o,
                      char *err, size_t errlen) {
  int rc = ps_zsock_configure(zs->sock, err, errlen);
  if (rc != PS_OK) return rc;
  if (zs->is_router) {
    /* Replies to a peer that went away fail loudly instead of vanishing;
     * a node's fresh connection with the routing id of its old one (a
     * resend on a new socket, a reconnect) takes its place instead of
     * being turned away while the old one is not yet noticed gone. */
    int one = 1;
    rc = set_opt(zs->sock, ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", &one,
                 sizeof(one), err, errlen);
    if (rc == PS_OK)
      rc = set_opt(zs->sock, ZMQ_ROUTER_HANDOVER, "ZMQ_ROUTER_HANDOVER", &one,
                   sizeof(one), err, errlen);
    if (rc != PS_OK) return rc;
  }
  if (o && o->token &&
      (rc = ps_auth_set_routing_id(zs->sock, o->token, o->token_use, err,
                                   errlen)) != PS_OK)
    return rc;
  /* The side that binds is the CURVE server; a ROUTER always is one, also
   * before it binds (a server binds its data address at its first view). */
  int curve_server = bind_ep != NULL || zs->is_router;
  if (o && o->keys && !curve_server && (o->peer_key == NULL || !o->peer_key[0]))
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "CURVE: no public key for the peer %s",
                   connect_ep ? connect_ep : "?");
  if (o && o->keys &&
      (rc = ps_keys_apply(zs->sock, o->keys, curve_server ? NULL : o->peer_key,
                          err, errlen)) != PS_OK)
    return rc;
  int64_t maxmsg = (int64_t)zs->limits.max_payload_bytes +
                   (int64_t)zs->limits.max_header_bytes;
  rc = set_opt(zs->sock, ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", &maxmsg,
               sizeof(maxmsg), err, errlen);
  if (rc != PS_OK) return rc;
  if (bind_ep) {
    if (ps_zmq_bind(zs->sock, bind_ep) != 0)
      return ps_errf(err, errlen, PS_ERR_ZMQ, "cannot bind %s: %s", bind_ep,
                     zmq_strerror(zmq_errno()));
    size_t len = sizeof(zs->endpoint);
    if (zmq_getsockopt(zs->sock, ZMQ_LAST_ENDPOINT, zs->endpoint, &len) != 0)
      return ps_errf(err, errlen, PS_ERR_ZMQ,
                     "zmq_getsockopt(ZMQ_LAST_ENDPOINT) after binding %s: %s",
                     bind_ep, zmq_strerror(zmq_errno()));
  }
  if (connect_ep && ps_zmq_connect(zs->sock, connect_ep) != 0)
    return ps_errf(err, errlen, PS_ERR_ZMQ, "cannot connect to %s: %s",
                   connect_ep, zmq_strerror(zmq_errno()));
  return PS_OK;
}

/* Starts watching the socket's fd on loop. On failure the handles already
 * initialised are closed, and zs is freed by the last close callback. */
static int zsock_watch(ps_zsock_t *zs, uv_loop_t *loop, char *err,
                       size_t errlen) {
  int fd;
  size_t fdlen = sizeof(fd);
  if (zmq_getsockopt(zs->sock, ZMQ_FD, &fd, &fdlen) != 0) {
    int rc = ps_errf(err, errlen, PS_ERR_ZMQ, "zmq_getsockopt(ZMQ_FD): %s",
                     zmq_strerror(zmq_errno()));
    zsock_close_sock(zs);
    free(zs);
    return rc;
  }
  int uerr = uv_poll_init(loop, &zs->poll, fd);
  if (uerr != 0) {
    int rc = ps_errf(err, errlen, PS_ERR_IO, "uv_poll_init(fd %d): %s", fd,
                     uv_strerror(uerr));
    zsock_close_sock(zs);
    free(zs);
    return rc;
  }
  zs->poll.data = zs;
  zs->prepare.data = zs;
  zs->idle.data = zs;
  zs->batch_timer.data = zs;
  zs->open_handles = 4;
  const char *what;
  if ((uerr = uv_prepare_init(loop, &zs->prepare)) != 0) {
    what = "uv_prepare_init";
    zs->open_handles = 1;
  } else if ((uerr = uv_idle_init(loop, &zs->idle)) != 0) {
    what = "uv_idle_init";
    zs->open_handles = 2;
  } else if ((uerr = uv_timer_init(loop, &zs->batch_timer)) != 0) {
    what = "uv_timer_init";
    zs->open_handles = 3;
  } else if ((uerr = uv_poll_start(&zs->poll, UV_READABLE, poll_cb)) != 0) {
    what = "uv_poll_start";
  } else if ((uerr = uv_prepare_start(&zs->prepare, prepare_cb)) != 0) {
    what = "uv_prepare_start";
  } else {
    return PS_OK;
  }
  int rc = ps_errf(err, errlen, PS_ERR_IO, "%s(fd %d): %s", what, fd,
                   uv_strerror(uerr));
  zs->closing = 1;
  zsock_close_sock(zs);
  uv_close((uv_handle_t *)&zs->poll, close_cb);
  if (zs->open_handles >= 2) uv_close((uv_handle_t *)&zs->prepare, close_cb);
  if (zs->open_handles >= 3) uv_close((uv_handle_t *)&zs->idle, close_cb);
  if (zs->open_handles >= 4)
    uv_close((uv_handle_t *)&zs->batch_timer, close_cb);
  return rc;
}

ps_zsock_t *ps_zsock_new(uv_loop_t *loop, void *ctx, int type,
                         const char *bind_ep, const char *connect_ep,
                         const ps_zsock_opts_t *opts, ps_zsock_recv_cb cb,
                         void *arg, int *err, char *errbuf, size_t errlen) {
  const ps_frame_limits_t *limits = opts ? opts->limits : NULL;
  int dummy;
  if (err == NULL) err = &dummy;
  ps_zsock_t *zs = calloc(1, sizeof(*zs));
  if (zs == NULL) {
    *err = ps_errf(errbuf, errlen, PS_ERR_NOMEM, "out of memory");
    return NULL;
  }
  zs->is_router = (type == ZMQ_ROUTER);
  zs->limits = limits ? *limits : ps_frame_default_limits;
  zs->cb = cb;
  zs->arg = arg;
  zs->batch_ns = opts ? (uint64_t)opts->batch_ms * 1000000 : 0;
  if (bind_ep == NULL && ps_zsock_endpoint_has_name(connect_ep)) {
    if ((zs->own_ctx = zmq_ctx_new()) == NULL) {
      *err = ps_errf(errbuf, errlen, PS_ERR_ZMQ, "zmq_ctx_new: %s",
                     zmq_strerror(zmq_errno()));
      free(zs);
      return NULL;
    }
    ctx = zs->own_ctx;
  }
  zs->sock = zmq_socket(ctx, type);
  if (zs->sock == NULL) {
    *err = ps_errf(errbuf, errlen, PS_ERR_ZMQ, "zmq_socket: %s",
                   zmq_strerror(zmq_errno()));
    zsock_close_sock(zs);
    free(zs);
    return NULL;
  }
  *err = zsock_open(zs, bind_ep, connect_ep, opts, errbuf, errlen);
  if (*err != PS_OK) {
    zsock_close_sock(zs);
    free(zs);
    return NULL;
  }
  *err = zsock_watch(zs, loop, errbuf, errlen);
  return *err == PS_OK ? zs : NULL;
}

void *ps_zsock_socket(ps_zsock_t *zs) {
  return zs->sock;
}

const char *ps_zsock_endpoint(ps_zsock_t *zs) {
  return zs->endpoint;
}

void ps_zsock_destroy(ps_zsock_t **zs_p) {
  ps_zsock_t *zs = *zs_p;
  if (zs == NULL) return;
  *zs_p = NULL;
  zs->closing = 1;
  uv_poll_stop(&zs->poll);
  uv_prepare_stop(&zs->prepare);
  uv_idle_stop(&zs->idle);
  uv_timer_stop(&zs->batch_timer);
  uv_close((uv_handle_t *)&zs->poll, close_cb);
  uv_close((uv_handle_t *)&zs->prepare, close_cb);
  uv_close((uv_handle_t *)&zs->idle, close_cb);
  uv_close((uv_handle_t *)&zs->batch_timer, close_cb);
  /* Inside drain() the socket is still being read: drain closes it. */
  if (!zs->in_drain) zsock_close_sock(zs);
}

void ps_transport_tune_malloc(void) {
#ifdef __GLIBC__
  const char *t = getenv("GLIBC_TUNABLES");
  if (t && strstr(t, "glibc.malloc.")) return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}
