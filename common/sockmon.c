#include "sockmon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <zmq.h>

#include "err.h"
#include "log.h"
#include "time.h"
#include "transport.h"

/* accept_failed is logged at most this often. */
#define SOCKMON_LOG_EVERY_MS 5000
/* Events read per turn of the loop: while out of descriptors ZeroMQ retries
 * the accept, and reports it, as fast as it can; the loop must still turn
 * (heartbeats, requests on the connections already open). */
#define SOCKMON_DRAIN_MAX 256

struct ps_sockmon_s {
  uv_loop_t *loop;
  void *monitored;
  void *pair;
  uv_poll_t poll;
  uv_idle_t resume; /* more events may wait after a bounded drain */
  int open_handles;
  char name[32];
  char endpoint[128];
  uint64_t failures;
  uint64_t connections; /* accepted and not yet disconnected */
  uint64_t unlogged;    /* since the last accept_failed line */
  int last_errno;
  uint64_t last_log_ms;
  uv_timer_t flush;                     /* logs what came after the last line */
  ps_sockmon_handshake_cb handshake_cb; /* a connecting socket's */
  void *handshake_arg;
};

static void log_failures(ps_sockmon_t *m) {
  if (m->unlogged == 0) return;
  PS_WARN("accept_failed",
          "socket=%s endpoint=%s errno=%d reason=\"%s\" count=%" PRIu64
          " total=%" PRIu64,
          m->name, m->endpoint[0] ? m->endpoint : "-", m->last_errno,
          strerror(m->last_errno), m->unlogged, m->failures);
  m->unlogged = 0;
  m->last_log_ms = ps_now_ms();
}

static void on_flush(uv_timer_t *t) {
  log_failures(t->data);
}

/* One event: a frame of uint16 event + uint32 value, then the endpoint. */
static int read_event(ps_sockmon_t *m) {
  zmq_msg_t head, addr;
  zmq_msg_init(&head);
  if (zmq_msg_recv(&head, m->pair, ZMQ_DONTWAIT) < 0) {
    zmq_msg_close(&head);
    return 0;
  }
  int more = zmq_msg_more(&head);
  uint16_t event = 0;
  uint32_t value = 0;
  if (zmq_msg_size(&head) >= 6) {
    const uint8_t *p = zmq_msg_data(&head);
    memcpy(&event, p, 2);
    memcpy(&value, p + 2, 4);
  }
  zmq_msg_close(&head);
  if (more) {
    zmq_msg_init(&addr);
    if (zmq_msg_recv(&addr, m->pair, 0) >= 0 && m->endpoint[0] == '\0') {
      size_t n = zmq_msg_size(&addr);
      if (n >= sizeof(m->endpoint)) n = sizeof(m->endpoint) - 1;
      memcpy(m->endpoint, zmq_msg_data(&addr), n);
      m->endpoint[n] = '\0';
    }
    zmq_msg_close(&addr);
  }
  if (event == ZMQ_EVENT_ACCEPT_FAILED) {
    m->failures++;
    m->unlogged++;
    m->last_errno = (int)value;
  } else if (event == ZMQ_EVENT_ACCEPTED) {
    m->connections++;
  } else if ((event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ||
              event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) &&
             m->handshake_cb) {
    m->handshake_cb(m->handshake_arg, event, value);
  } else if (event == ZMQ_EVENT_DISCONNECTED && m->connections > 0) {
    /* A bound socket's disconnections are of connections it accepted,
     * refused handshakes included. */
    m->connections--;
  }
  return 1;
}

static void on_idle(uv_idle_t *h);

static void drain(ps_sockmon_t *m) {
  int n = 0;
  while (n < SOCKMON_DRAIN_MAX && read_event(m)) n++;
  if (n == SOCKMON_DRAIN_MAX)
    uv_idle_start(&m->resume, on_idle);
  else
    uv_idle_stop(&m->resume);
  if (m->unlogged == 0) return;
  uint64_t now = ps_now_ms();
  if (m->last_log_ms == 0 || now - m->last_log_ms >= SOCKMON_LOG_EVERY_MS)
    log_failures(m);
  else if (!uv_is_active((uv_handle_t *)&m->flush))
    uv_timer_start(&m->flush, on_flush,
                   m->last_log_ms + SOCKMON_LOG_EVERY_MS - now, 0);
}

static void on_idle(uv_idle_t *h) {
  drain(h->data);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  drain(h->data);
}

static ps_sockmon_t *sockmon_new(uv_loop_t *loop, void *ctx, void *sock,
                                 const char *name, int events,
                                 ps_sockmon_handshake_cb cb, void *arg,
                                 int *err) {
  int dummy;
  if (err == NULL) err = &dummy;
  ps_sockmon_t *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    *err = PS_ERR_NOMEM;
    return NULL;
  }
  m->loop = loop;
  m->monitored = sock;
  m->handshake_cb = cb;
  m->handshake_arg = arg;
  snprintf(m->name, sizeof(m->name), "%s", name ? name : "socket");
  char ep[64];
  snprintf(ep, sizeof(ep), "inproc://ps-sockmon-%p", (void *)m);
  int fd = -1;
  size_t fdlen = sizeof(fd);
  int linger = 0;
  if (zmq_socket_monitor(sock, ep, events) != 0 ||
      (m->pair = zmq_socket(ctx, ZMQ_PAIR)) == NULL ||
      zmq_setsockopt(m->pair, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
      ps_zmq_connect(m->pair, ep) != 0 ||
      zmq_getsockopt(m->pair, ZMQ_FD, &fd, &fdlen) != 0) {
    PS_WARN("sockmon_failed", "socket=%s zmq=\"%s\"", m->name,
            zmq_strerror(zmq_errno()));
    if (m->pair) zmq_close(m->pair);
    zmq_socket_monitor(sock, NULL, 0);
    free(m);
    *err = PS_ERR_ZMQ;
    return NULL;
  }
  uv_poll_init(loop, &m->poll, fd);
  uv_idle_init(loop, &m->resume);
  uv_timer_init(loop, &m->flush);
  m->poll.data = m->resume.data = m->flush.data = m;
  m->open_handles = 3;
  uv_poll_start(&m->poll, UV_READABLE, on_poll);
  /* ZMQ_FD signals only once a read found the socket empty: read now, so
   * the first event wakes the loop. */
  drain(m);
  *err = PS_OK;
  return m;
}

ps_sockmon_t *ps_sockmon_new(uv_loop_t *loop, void *ctx, void *sock,
                             const char *name, int *err) {
  return sockmon_new(
      loop, ctx, sock, name,
      ZMQ_EVENT_ACCEPT_FAILED | ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED,
      NULL, NULL, err);
}

ps_sockmon_t *ps_sockmon_new_handshakes(uv_loop_t *loop, void *ctx, void *sock,
                                        const char *name,
                                        ps_sockmon_handshake_cb cb, void *arg,
                                        int *err) {
  return sockmon_new(
      loop, ctx, sock, name,
      ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, cb,
      arg, err);
}

uint64_t ps_sockmon_accept_failures(const ps_sockmon_t *m) {
  return m ? m->failures : 0;
}

uint64_t ps_sockmon_connections(ps_sockmon_t *m) {
  if (m == NULL) return 0;
  /* The events the I/O thread queued so far, the connection being asked
   * about included (ZeroMQ reports it accepted before its handshake). */
  while (read_event(m)) {
  }
  return m->connections;
}

static void on_close(uv_handle_t *h) {
  ps_sockmon_t *m = h->data;
  if (--m->open_handles == 0) free(m);
}

void ps_sockmon_destroy(ps_sockmon_t **m_p) {
  ps_sockmon_t *m = *m_p;
  if (m == NULL) return;
  *m_p = NULL;
  log_failures(m);
  zmq_socket_monitor(m->monitored, NULL, 0);
  zmq_close(m->pair);
  uv_poll_stop(&m->poll);
  uv_idle_stop(&m->resume);
  uv_timer_stop(&m->flush);
  uv_close((uv_handle_t *)&m->poll, on_close);
  uv_close((uv_handle_t *)&m->resume, on_close);
  uv_close((uv_handle_t *)&m->flush, on_close);
}

int ps_raise_nofile_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    PS_WARN("nofile_limit", "err=\"getrlimit: %s\"", strerror(errno));
    return PS_ERR_IO;
  }
  rlim_t was = rl.rlim_cur;
  /* An unlimited hard limit still stops at the kernel's nr_open. */
  rlim_t want = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      PS_WARN("nofile_limit", "soft=%llu hard=%llu err=\"setrlimit: %s\"",
              (unsigned long long)was, (unsigned long long)rl.rlim_max,
              strerror(errno));
      return PS_ERR_IO;
    }
  }
  PS_INFO("nofile_limit", "soft=%llu hard=%llu was=%llu",
          (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
          (unsigned long long)was);
  return PS_OK;
}
