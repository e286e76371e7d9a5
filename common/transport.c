#include "transport.h"

#include <errno.h>
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
  uv_idle_t idle;   /* running while a drain stopped with messages left */
  int open_handles; /* freed when both handles' close callbacks ran */
  void *sock;
  int is_router;
  ps_frame_limits_t limits;
  ps_zsock_recv_cb cb;
  void *arg;
  char endpoint[256];
  /* Set while callbacks run, so a callback may destroy its own socket. */
  int in_drain;
  int closing;
};

int ps_zsock_configure(void *sock) {
  int zero = 0;
  int one = 1;
  if (zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
      zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof(zero)) != 0 ||
      zmq_setsockopt(sock, ZMQ_RCVHWM, &zero, sizeof(zero)) != 0 ||
      zmq_setsockopt(sock, ZMQ_TCP_KEEPALIVE, &one, sizeof(one)) != 0)
    return PS_ERR_ZMQ;
  return PS_OK;
}

static void idle_cb(uv_idle_t *h);

static void drain(ps_zsock_t *zs) {
  if (zs->closing) return;
  zs->in_drain = 1;
  uint64_t t0 = uv_hrtime();
  int budget = DRAIN_BUDGET_MSGS, more = 0;
  for (;;) {
    if (budget-- == 0 || uv_hrtime() - t0 > DRAIN_BUDGET_NS) {
      more = 1;
      break;
    }
    int events = 0;
    size_t sz = sizeof(events);
    if (zmq_getsockopt(zs->sock, ZMQ_EVENTS, &events, &sz) != 0) break;
    if (!(events & ZMQ_POLLIN)) break;
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
    if (more)
      uv_idle_start(&zs->idle, idle_cb);
    else
      uv_idle_stop(&zs->idle);
  }
  if (zs->closing) {
    /* The owner destroyed the socket from inside its callback. */
    zmq_close(zs->sock);
    zs->sock = NULL;
  }
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  ps_zsock_t *zs = h->data;
  if (status < 0) {
    PS_ERROR("zsock_poll_failed", "err=%s", uv_strerror(status));
    return;
  }
  drain(zs);
}

/* Before the loop blocks: a message may have arrived while we were sending,
 * and the edge that announced it was consumed by that send's ZMQ_EVENTS
 * update. */
static void prepare_cb(uv_prepare_t *h) {
  drain(h->data);
}

/* A drain ran out of budget with messages left: go on, a turn later. */
static void idle_cb(uv_idle_t *h) {
  drain(h->data);
}

ps_zsock_t *ps_zsock_new(uv_loop_t *loop, void *ctx, int type,
                         const char *bind_ep, const char *connect_ep,
                         const ps_frame_limits_t *limits, ps_zsock_recv_cb cb,
                         void *arg, int *err, char *errbuf, size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  ps_zsock_t *zs = calloc(1, sizeof(*zs));
  if (zs == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  zs->is_router = (type == ZMQ_ROUTER);
  zs->limits = limits ? *limits : ps_frame_default_limits;
  zs->cb = cb;
  zs->arg = arg;
  zs->sock = zmq_socket(ctx, type);
  if (zs->sock == NULL) {
    *err = PS_ERR_ZMQ;
    snprintf(errbuf, errlen, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    free(zs);
    return NULL;
  }
  ps_zsock_configure(zs->sock);
  if (zs->is_router) {
    /* Replies to a peer that went away fail loudly instead of vanishing. */
    int one = 1;
    zmq_setsockopt(zs->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
  }
  int64_t maxmsg = (int64_t)zs->limits.max_payload_bytes +
                   (int64_t)zs->limits.max_header_bytes;
  zmq_setsockopt(zs->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));

  if (bind_ep && zmq_bind(zs->sock, bind_ep) != 0) {
    *err = PS_ERR_ZMQ;
    snprintf(errbuf, errlen, "cannot bind %s: %s", bind_ep,
             zmq_strerror(zmq_errno()));
    zmq_close(zs->sock);
    free(zs);
    return NULL;
  }
  if (bind_ep) {
    size_t len = sizeof(zs->endpoint);
    zmq_getsockopt(zs->sock, ZMQ_LAST_ENDPOINT, zs->endpoint, &len);
  }
  if (connect_ep && zmq_connect(zs->sock, connect_ep) != 0) {
    *err = PS_ERR_ZMQ;
    snprintf(errbuf, errlen, "cannot connect to %s: %s", connect_ep,
             zmq_strerror(zmq_errno()));
    zmq_close(zs->sock);
    free(zs);
    return NULL;
  }

  int fd;
  size_t fdlen = sizeof(fd);
  zmq_getsockopt(zs->sock, ZMQ_FD, &fd, &fdlen);
  uv_poll_init(loop, &zs->poll, fd);
  uv_prepare_init(loop, &zs->prepare);
  uv_idle_init(loop, &zs->idle);
  zs->poll.data = zs;
  zs->prepare.data = zs;
  zs->idle.data = zs;
  zs->open_handles = 3;
  uv_poll_start(&zs->poll, UV_READABLE, poll_cb);
  uv_prepare_start(&zs->prepare, prepare_cb);
  *err = PS_OK;
  return zs;
}

void *ps_zsock_socket(ps_zsock_t *zs) {
  return zs->sock;
}

const char *ps_zsock_endpoint(ps_zsock_t *zs) {
  return zs->endpoint;
}

static void close_cb(uv_handle_t *h) {
  ps_zsock_t *zs = h->data;
  if (--zs->open_handles == 0) free(zs);
}

void ps_zsock_destroy(ps_zsock_t **zs_p) {
  ps_zsock_t *zs = *zs_p;
  if (zs == NULL) return;
  *zs_p = NULL;
  zs->closing = 1;
  uv_poll_stop(&zs->poll);
  uv_prepare_stop(&zs->prepare);
  uv_idle_stop(&zs->idle);
  uv_close((uv_handle_t *)&zs->poll, close_cb);
  uv_close((uv_handle_t *)&zs->prepare, close_cb);
  uv_close((uv_handle_t *)&zs->idle, close_cb);
  /* Inside drain() the socket is still being read: drain closes it. */
  if (!zs->in_drain) {
    zmq_close(zs->sock);
    zs->sock = NULL;
  }
}
