/* Heartbeats over UDP (issue #16, ps-scheduler --heartbeat-udp;
 * common/beat.h has the datagram and why).
 *
 * One UDP socket on the scheduler's own address and port, read like the
 * ZeroMQ socket in batches: after a read finds nothing more, reading stops
 * for read_batch_ms, so the heartbeats of a thousand members cost a wakeup
 * and a few recvmmsg calls per batch. A datagram is taken only with the
 * tag of its node's key and a sequence number above the last one taken;
 * it then counts as the heartbeat on the membership link would (last seen,
 * clock, the view resent to a node behind), and the node is acked by a
 * datagram to where the beat came from, every PS_MEMBER_ACK_EVERY_MS.
 * What needs an answer with a reason (a node that left, an epoch ahead of
 * the scheduler's) is not answered here: the member, without acks, sends
 * its heartbeats on the membership link again, where it gets that answer.
 * A dead node is fenced on its membership link at once. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/beat.h"
#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "scheduler/sched_int.h"

/* recvmmsg takes as many datagrams per call as the buffer holds
 * 64 KiB slots (libuv's rule). */
#define BEATS_PER_READ 16
#define BEAT_SLOT (64 * 1024)
#define BEATS_RCVBUF (4 << 20)

struct sched_beats_s {
  uv_udp_t udp;
  uv_timer_t batch_timer;
  uint16_t port;
  int reading;
  int closed; /* handles closed so far, of 2 */
  char *buf;  /* BEATS_PER_READ slots */
};

static void beats_free(sched_beats_t *bt) {
  free(bt->buf);
  free(bt);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  ps_sched_t *s = h->data;
  *buf = uv_buf_init(s->beats->buf, BEATS_PER_READ * BEAT_SLOT);
}

static void send_ack(ps_sched_t *s, sched_node_t *n, const ps_beat_t *b,
                     const struct sockaddr *to) {
  ps_beat_t ack = {.type = PS_BEAT_ACK,
                   .node_id = n->id,
                   .seq = b->seq,
                   .epoch = s->epoch,
                   .clock = n->clock};
  uint8_t out[PS_BEAT_BYTES];
  ps_beat_pack(&ack, n->beat_key, out);
  uv_buf_t buf = uv_buf_init((char *)out, sizeof(out));
  int rc = s->beats ? uv_udp_try_send(&s->beats->udp, &buf, 1, to) : UV_EBADF;
  if (rc < 0)
    s->stats.beat_acks_failed++;
  else
    s->stats.beat_acks++;
}

void ps__sched_beat_datagram(ps_sched_t *s, const uint8_t *data, size_t len,
                             const struct sockaddr *from) {
  int type;
  uint32_t id;
  ps_beat_t b;
  if (ps_beat_peek(data, len, &type, &id) != PS_OK || type != PS_BEAT_BEAT) {
    s->stats.beats_refused++;
    return;
  }
  sched_node_t *n = ps__sched_node_by_id(s, id);
  if (n == NULL || !n->beat_keyed) {
    s->stats.beats_refused++;
    return;
  }
  if (ps_beat_open(data, len, n->beat_key, &b) != PS_OK ||
      b.seq <= n->beat_seq) {
    /* Forged, or a replay of one taken already. */
    s->stats.beats_refused++;
    return;
  }
  n->beat_seq = b.seq;
  s->stats.beats++;
  uint64_t now = ps_now_ms();
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    /* The cluster moved on without it; told at most every ack period. */
    if (now - n->hb_acked_ms >= PS_MEMBER_ACK_EVERY_MS) {
      n->hb_acked_ms = now;
      ps__sched_fence(s, n, NULL);
    }
    return;
  }
  if (!ps__sched_node_holds_slot(n) || b.epoch > s->epoch) return;
  n->last_seen_ms = now;
  n->clock = b.clock;
  if (n->beat_acked_ms == 0 ||
      now - n->beat_acked_ms >= PS_MEMBER_ACK_EVERY_MS) {
    send_ack(s, n, &b, from);
    n->beat_acked_ms = now;
  }
  ps__sched_view_behind(s, n, b.epoch, now);
}

static void on_batch_timer(uv_timer_t *t);

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr, unsigned flags) {
  (void)buf;
  ps_sched_t *s = h->data;
  sched_beats_t *bt = s->beats;
  if (nread > 0 && addr != NULL) {
    if (!s->finished)
      ps__sched_beat_datagram(s, (const uint8_t *)buf->base, (size_t)nread,
                              addr);
    return;
  }
  if (nread < 0) {
    PS_WARN("beat_read_failed", "err=\"%s\"", uv_strerror((int)nread));
    return;
  }
  /* nread 0: the socket is empty (addr NULL), or a recvmmsg batch's end
   * (UV_UDP_MMSG_FREE), or an empty datagram. */
  if (addr == NULL && !(flags & UV_UDP_MMSG_FREE) &&
      s->opts.read_batch_ms > 0 && bt->reading) {
    uv_udp_recv_stop(&bt->udp);
    bt->reading = 0;
    uv_timer_start(&bt->batch_timer, on_batch_timer,
                   (uint64_t)s->opts.read_batch_ms, 0);
  }
}

static void on_batch_timer(uv_timer_t *t) {
  ps_sched_t *s = t->data;
  sched_beats_t *bt = s->beats;
  if (s->closing || bt->reading) return;
  if (uv_udp_recv_start(&bt->udp, on_alloc, on_recv) == 0) bt->reading = 1;
}

/* "tcp://HOST:PORT" (ZeroMQ's last endpoint: HOST numeric, IPv6 in
 * brackets) into an address. */
static int endpoint_addr(const char *ep, struct sockaddr_storage *ss) {
  const char *p = strncmp(ep, "tcp://", 6) == 0 ? ep + 6 : NULL;
  if (p == NULL) return PS_ERR_INVAL;
  const char *colon = strrchr(p, ':');
  if (colon == NULL) return PS_ERR_INVAL;
  char host[PS_ADDR_MAX];
  size_t hl = (size_t)(colon - p);
  if (hl >= 2 && p[0] == '[' && p[hl - 1] == ']') {
    p++;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof(host)) return PS_ERR_INVAL;
  memcpy(host, p, hl);
  host[hl] = '\0';
  int port = atoi(colon + 1);
  if (port <= 0 || port > 65535) return PS_ERR_INVAL;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return PS_OK;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return PS_OK;
  return PS_ERR_INVAL;
}

static void on_closed(uv_handle_t *h) {
  ps_sched_t *s = h->data;
  if (++s->beats->closed == 2) {
    beats_free(s->beats);
    s->beats = NULL;
  }
  ps__sched_handle_released(s);
}

/* A start that failed: the handles were never the scheduler's. */
static void on_failed_closed(uv_handle_t *h) {
  sched_beats_t *bt = h->data;
  if (++bt->closed == 2) beats_free(bt);
}

int ps__sched_beats_start(ps_sched_t *s, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  if (endpoint_addr(s->endpoint, &ss) != PS_OK)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "heartbeat-udp: no UDP address in the endpoint %s",
                   s->endpoint);
  sched_beats_t *bt = calloc(1, sizeof(*bt));
  char *buf = malloc(BEATS_PER_READ * BEAT_SLOT);
  if (bt == NULL || buf == NULL) {
    free(bt);
    free(buf);
    return ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
  }
  bt->buf = buf;
  int rc = uv_udp_init_ex(s->loop, &bt->udp, ss.ss_family | UV_UDP_RECVMMSG);
  if (rc != 0) {
    beats_free(bt);
    return ps_errf(err, errlen, PS_ERR_IO, "heartbeat-udp: %s",
                   uv_strerror(rc));
  }
  uv_timer_init(s->loop, &bt->batch_timer);
  rc = uv_udp_bind(&bt->udp, (const struct sockaddr *)&ss, 0);
  if (rc == UV_EADDRINUSE) {
    /* Another program holds the UDP port of that number: any other will
     * do (nodes learn it when they register), but a firewall opened for
     * that number will not let the datagrams through: said loudly. */
    uint16_t want =
        ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                       : ((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
      ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
    else
      ((struct sockaddr_in *)&ss)->sin_port = 0;
    rc = uv_udp_bind(&bt->udp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
      PS_WARN("beats_port_taken",
              "udp_port=%u reason=\"in use by another socket; heartbeat "
              "datagrams go to the port logged by beats_listening\"",
              want);
  }
  if (rc == 0) rc = uv_udp_recv_start(&bt->udp, on_alloc, on_recv);
  if (rc != 0) {
    bt->udp.data = bt;
    bt->batch_timer.data = bt;
    uv_close((uv_handle_t *)&bt->udp, on_failed_closed);
    uv_close((uv_handle_t *)&bt->batch_timer, on_failed_closed);
    return ps_errf(err, errlen, PS_ERR_IO,
                   "heartbeat-udp: bind udp on the port of %s: %s", s->endpoint,
                   uv_strerror(rc));
  }
  s->beats = bt;
  bt->udp.data = s;
  bt->batch_timer.data = s;
  s->open_handles += 2;
  bt->reading = 1;
  /* Room for the beats of a loop that stalls for a while (a datagram takes
   * about 1 KB of buffer): past net.core.rmem_max where the process may. */
  int rcvbuf = 0;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&bt->udp, &fd) == 0) {
    int want = BEATS_RCVBUF;
    socklen_t sl = sizeof(rcvbuf);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof(want)) != 0)
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof(want));
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &sl);
  }
  struct sockaddr_storage bound;
  int blen = sizeof(bound);
  uv_udp_getsockname(&bt->udp, (struct sockaddr *)&bound, &blen);
  bt->port = ntohs(bound.ss_family == AF_INET6
                       ? ((struct sockaddr_in6 *)&bound)->sin6_port
                       : ((struct sockaddr_in *)&bound)->sin_port);
  PS_INFO("beats_listening", "udp_port=%u batch_ms=%d rcvbuf=%d", bt->port,
          s->opts.read_batch_ms, rcvbuf);
  return PS_OK;
}

uint16_t ps__sched_beats_port(const ps_sched_t *s) {
  return s->beats ? s->beats->port : 0;
}

void ps__sched_beats_close(ps_sched_t *s) {
  sched_beats_t *bt = s->beats;
  if (bt == NULL) return;
  uv_udp_recv_stop(&bt->udp);
  uv_timer_stop(&bt->batch_timer);
  bt->reading = 0;
  uv_close((uv_handle_t *)&bt->udp, on_closed);
  uv_close((uv_handle_t *)&bt->batch_timer, on_closed);
}
