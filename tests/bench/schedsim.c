/* ps-schedsim: one real ps-scheduler against hundreds of simulated nodes
 * (issue #16, the scheduler at scale).
 *
 * One process, one thread, N fake members. Each has its own DEALER socket
 * with the routing id a real member gives its membership link (common/auth.h)
 * and speaks the member protocol of common/member.c with the same messages:
 * Register (workers with a model spec, servers with an address), a
 * Heartbeat every --heartbeat-ms carrying the member's view epoch, and
 * Views taken as they come. The sockets are watched with epoll on ZMQ_FD,
 * edge-triggered, and drained until ZMQ_EVENTS says empty, after every
 * wakeup and every send, as common/transport.c does; a sweep over every
 * socket once a second counts anything that path missed (it should find
 * nothing).
 *
 * For each cluster size it measures, against a scheduler it starts (or one
 * given with --scheduler):
 *   - the scheduler's CPU (utime + stime from /proc/PID/stat) over a window
 *     of steady heartbeating, as % of one core;
 *   - failure detection: a worker's socket is closed (the process died);
 *     the time from its last heartbeat (where the scheduler counts its
 *     silence from) until the first and the last live member holds the
 *     view that says it is dead, against --heartbeat-timeout-ms; the same
 *     for a server (a failover);
 *   - publishing: a replacement worker registers at t1; the scheduler
 *     publishes at once; the time until the first and the last member holds
 *     that view (the last minus the first is the fan-out);
 *   - the size of the View message sent to servers and to workers.
 * Every receipt is stamped when the message is read off the socket, on one
 * monotonic clock. Only two observers (the first server and the first
 * worker) decode every View in full (ps_view_from_pb, as a real member
 * does) and check what it says; the others read the envelope's epoch
 * without decoding the view, so that the simulator's own decoding of N
 * views does not delay the reading of the last socket and inflate the
 * fan-out it measures.
 *
 * A test and bench program: built in the build tree, never installed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/beat.h"
#include "common/config.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/member.h"
#include "common/proc.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "common/view.h"
#include "proto/ps.pb-c.h"
#include "tests/bench/bench.h"

#define SIM_MAX_SIZES 16
#define SIM_MAX_NODES 20000
#define SIM_REGISTER_RETRY_US 1000000
#define SIM_SWEEP_US 1000000
/* Views remembered per member, newest last: enough for the few views one
 * measurement spans. */
#define SIM_RING 8
#define SIM_OBSERVERS 2

typedef struct {
  void *sock;
  int fd;
  ps_auth_token_t token;
  int role; /* PS__ROLE__* */
  int alive;
  int registered;
  uint32_t node_id;
  uint64_t epoch; /* the newest view it holds */
  uint64_t request_id;
  uint64_t register_sent_us;
  uint64_t heartbeat_sent_us; /* the last one */
  uint64_t ring_epoch[SIM_RING];
  uint64_t ring_us[SIM_RING];
  unsigned ring_next;
  /* --heartbeat-udp: the key and port from its RegisterReply; 0: none. */
  uint8_t beat_key[PS_BEAT_KEY_BYTES];
  uint16_t beat_port;
  uint64_t beat_seq;
} sim_member_t;

typedef struct {
  int64_t nodes, servers, workers;
  size_t view_bytes_server, view_bytes_worker;   /* whole views */
  size_t delta_bytes_server, delta_bytes_worker; /* deltas (0: none) */
  uint64_t form_ms;
  double cpu_pct, sim_cpu_pct;
  double acks_per_s, hb_per_s;
  uint64_t window_views; /* views published during the CPU window */
  double detect_w_first_ms, detect_w_last_ms;
  double publish_first_ms, publish_last_ms;
  double detect_s_first_ms, detect_s_last_ms;
  uint64_t dup_views;   /* views received at an epoch already held */
  uint64_t delta_skips; /* deltas dropped: the member lacked their base */
  uint64_t fenced;      /* members the scheduler declared dead unasked */
  double sim_stall_ms;  /* this process's longest turn of its loop */
  uint64_t sweep_found; /* messages the sweep read before the epoll path */
  int ok;
  char why[640];
} sim_result_t;

static struct {
  /* options */
  char *nodes_s, *scheduler, *bin_dir, *log_dir;
  int64_t scheduler_pid, heartbeat_ms, timeout_ms, window_s, margin_ms;
  double server_fraction, cpu_goal, publish_goal_ms;
  int check, log_level, view_deltas, heartbeat_udp;
  /* state */
  void *ctx;
  int ep;
  int udp;         /* the members' heartbeat datagrams go out of this socket */
  size_t *by_node; /* node id -> member index + 1 (0: none), 4 x cap */
  sim_member_t *m;
  size_t n, cap;
  size_t observer[SIM_OBSERVERS]; /* a server's and a worker's index */
  pid_t sched_pid;
  char sched_ep[128];
  char run_dir[PATH_MAX];
  uint64_t hb_next_ms; /* heartbeat wheel: the next ms slot to serve */
  uint64_t last_sweep_us;
  uint64_t acks, heartbeats, dup_views, sweep_found, errors, fenced;
  uint64_t last_turn_us, max_gap_us; /* this process's longest stall */
  /* What the observers saw of the latest view. */
  size_t view_bytes[SIM_OBSERVERS];  /* the last whole view */
  size_t delta_bytes[SIM_OBSERVERS]; /* the last delta */
  uint64_t obs_epoch[SIM_OBSERVERS];
  uint32_t watch_id;    /* a node whose state the observers follow */
  int watch_state;      /* its state in the server observer's latest view */
  uint64_t watch_epoch; /* the epoch that first showed watch_state dead */
  uint32_t obs_nnodes;  /* nodes in the server observer's latest view */
  int obs_bad;          /* an observer's view failed validation */
  ps_view_t *obs_held[SIM_OBSERVERS]; /* each observer's latest view */
  uint64_t delta_skips; /* deltas against a view the member lacked */
  char obs_why[512];
  volatile sig_atomic_t interrupted;
} S;

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void on_signal(int sig) {
  (void)sig;
  S.interrupted = 1;
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "ps-schedsim: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  return -1;
}

/* ---- the envelope without decoding its body --------------------------- */

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* One protobuf field of [*p, end): its number and wire type, a varint's
 * value, a length-delimited field's bytes. Moves *p past it; -1 on bytes
 * that are not protobuf. */
typedef struct {
  uint32_t field;
  unsigned wire;
  uint64_t v;           /* varint: the value; length-delimited: the length */
  const uint8_t *bytes; /* length-delimited: the field's bytes */
} pb_field_t;

static int next_field(const uint8_t **p, const uint8_t *end, pb_field_t *f) {
  uint64_t key;
  if (read_varint(p, end, &key) != 0) return -1;
  f->field = (uint32_t)(key >> 3);
  f->wire = (unsigned)(key & 7);
  switch (f->wire) {
    case 0:
      return read_varint(p, end, &f->v);
    case 1:
      if (end - *p < 8) return -1;
      *p += 8;
      return 0;
    case 2:
      if (read_varint(p, end, &f->v) != 0 || f->v > (uint64_t)(end - *p))
        return -1;
      f->bytes = *p;
      *p += f->v;
      return 0;
    case 5:
      if (end - *p < 4) return -1;
      *p += 4;
      return 0;
    default:
      return -1;
  }
}

/* The body's field number and the envelope's epoch, reading only the
 * envelope's own fields, and for a View its base_epoch (field 55; 0: a
 * whole view) from the View's own fields, without decoding the nodes. -1
 * if the bytes are not an envelope. */
static int peek_envelope(const uint8_t *p, size_t len, uint32_t *body,
                         uint64_t *epoch, uint64_t *base) {
  const uint8_t *end = p + len;
  *body = 0;
  *epoch = 0;
  *base = 0;
  pb_field_t f;
  while (p < end) {
    if (next_field(&p, end, &f) != 0) return -1;
    if (f.wire == 0 && f.field == 4) *epoch = f.v;
    if (f.wire != 2 || f.field < 10) continue;
    *body = f.field;
    if (f.field != PS__ENVELOPE__BODY_VIEW) continue;
    const uint8_t *q = f.bytes, *vend = f.bytes + f.v;
    pb_field_t g;
    while (q < vend) {
      if (next_field(&q, vend, &g) != 0) return -1;
      if (g.wire == 0 && g.field == 55) *base = g.v;
    }
  }
  return *body ? 0 : -1;
}

/* ---- members ----------------------------------------------------------- */

static void member_kill(size_t idx);

static void member_send(sim_member_t *m, Ps__Envelope *env) {
  env->sender = m->node_id;
  env->epoch = m->epoch;
  env->request_id = ++m->request_id;
  if (ps_msg_send(m->sock, NULL, env, NULL, 0) != PS_OK) S.errors++;
}

static void send_register(sim_member_t *m, size_t idx) {
  Ps__Register reg = PS__REGISTER__INIT;
  Ps__ModelSpec spec = PS__MODEL_SPEC__INIT;
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  Ps__TensorSpec *tp[1] = {&t};
  char addr[64];
  reg.role = (Ps__Role)m->role;
  reg.rank = 0xffffffffu;
  if (m->role == PS__ROLE__ROLE_SERVER) {
    /* Never connected to: only the scheduler's table and the view hold
     * it. Distinct per member, as the scheduler requires. */
    snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%zu", 20000 + idx);
    reg.address = addr;
  } else {
    reg.address = "";
    t.name = "w";
    t.offset = 0;
    t.length = 1u << 20;
    spec.n_tensors = 1;
    spec.tensors = tp;
    spec.optimizer = PS__OPTIMIZER__OPT_SGD;
    spec.learning_rate = 0.1f;
    reg.model = &spec;
  }
  Ps__Envelope env;
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &reg;
  member_send(m, &env);
  m->register_sent_us = now_us();
}

static void send_heartbeat(sim_member_t *m) {
  m->heartbeat_sent_us = now_us();
  if (m->beat_port != 0) {
    /* As common/member.c does once the scheduler answers its datagrams. */
    ps_beat_t b = {.type = PS_BEAT_BEAT,
                   .node_id = m->node_id,
                   .seq = ++m->beat_seq,
                   .epoch = m->epoch};
    uint8_t out[PS_BEAT_BYTES];
    ps_beat_pack(&b, m->beat_key, out);
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons(m->beat_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (sendto(S.udp, out, sizeof(out), 0, (struct sockaddr *)&to,
               sizeof(to)) != (ssize_t)sizeof(out))
      S.errors++;
    S.heartbeats++;
    return;
  }
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  hb.metrics_address = "";
  Ps__Envelope env;
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  member_send(m, &env);
  S.heartbeats++;
}

static int observer_slot(size_t idx) {
  for (int k = 0; k < SIM_OBSERVERS; k++)
    if (S.observer[k] == idx) return k;
  return -1;
}

/* An observer decodes the view as a real member does and notes what the
 * measurements check. */
static void observe_view(int slot, const uint8_t *data, size_t len,
                         uint64_t env_epoch) {
  Ps__Envelope *env = ps__envelope__unpack(NULL, len, data);
  if (env == NULL || env->body_case != PS__ENVELOPE__BODY_VIEW) {
    S.obs_bad = 1;
    snprintf(S.obs_why, sizeof(S.obs_why), "a view that does not decode");
    if (env) ps__envelope__free_unpacked(env, NULL);
    return;
  }
  char why[256];
  ps_view_t *v =
      ps_view_from_pb_base(env->view, S.obs_held[slot], why, sizeof(why));
  if (v == NULL || v->epoch != env_epoch) {
    S.obs_bad = 1;
    snprintf(S.obs_why, sizeof(S.obs_why), "view epoch %" PRIu64 ": %s",
             env_epoch, v ? "epoch differs from the envelope's" : why);
  } else {
    if (env->view->base_epoch != 0)
      S.delta_bytes[slot] = len;
    else
      S.view_bytes[slot] = len;
    S.obs_epoch[slot] = v->epoch;
    if (slot == 0) {
      S.obs_nnodes = (uint32_t)v->nnodes;
      for (size_t i = 0; i < v->nnodes; i++) {
        if (v->nodes[i].id != S.watch_id || S.watch_id == 0) continue;
        S.watch_state = v->nodes[i].state;
        if (S.watch_state == PS__NODE_STATE__NODE_STATE_DEAD &&
            S.watch_epoch == 0)
          S.watch_epoch = v->epoch;
      }
    }
  }
  if (v != NULL) {
    /* The base of the next delta, as a member keeps it. */
    ps_view_destroy(&S.obs_held[slot]);
    S.obs_held[slot] = v;
  }
  ps__envelope__free_unpacked(env, NULL);
}

static void on_header(sim_member_t *m, size_t idx, const uint8_t *data,
                      size_t len, uint64_t t) {
  uint32_t body;
  uint64_t epoch, base;
  if (peek_envelope(data, len, &body, &epoch, &base) != 0) {
    S.errors++;
    return;
  }
  if (body == PS__ENVELOPE__BODY_VIEW) {
    if (epoch <= m->epoch) {
      S.dup_views++; /* a resend that crossed a newer one */
      return;
    }
    if (base != 0 && base != m->epoch) {
      /* A delta against a view this member does not hold: a real member
       * drops it and waits for the whole view its heartbeats ask for. */
      S.delta_skips++;
      return;
    }
    m->epoch = epoch;
    m->ring_epoch[m->ring_next % SIM_RING] = epoch;
    m->ring_us[m->ring_next % SIM_RING] = t;
    m->ring_next++;
    int slot = observer_slot(idx);
    if (slot >= 0) observe_view(slot, data, len, epoch);
    return;
  }
  if (body == PS__ENVELOPE__BODY_ACK) {
    S.acks++;
    return;
  }
  Ps__Envelope *env = ps__envelope__unpack(NULL, len, data);
  if (env == NULL) {
    S.errors++;
    return;
  }
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER_REPLY:
      if (!m->registered) {
        const Ps__RegisterReply *rr = env->register_reply;
        m->registered = 1;
        m->node_id = rr->node_id;
        if (rr->node_id < 4 * S.cap) S.by_node[rr->node_id] = idx + 1;
        if (rr->beat_port != 0 && rr->beat_key.len == PS_BEAT_KEY_BYTES) {
          m->beat_port = (uint16_t)rr->beat_port;
          memcpy(m->beat_key, rr->beat_key.data, PS_BEAT_KEY_BYTES);
        }
      }
      break;
    case PS__ENVELOPE__BODY_ERROR:
      if (env->error->code == PS_ERR_FENCED) {
        /* A real member exits: the cluster moved on without it. */
        S.fenced++;
        member_kill(idx);
      } else {
        if (S.errors++ < 5)
          fprintf(stderr, "ps-schedsim: member %zu (node %u): %s: %s\n", idx,
                  m->node_id, ps_err_name(env->error->code),
                  env->error->message ? env->error->message : "");
      }
      break;
    case PS__ENVELOPE__BODY_SHUTDOWN:
      break;
    default:
      S.errors++;
      break;
  }
  ps__envelope__free_unpacked(env, NULL);
}

/* Reads every message the socket holds. Returns how many. */
static unsigned member_drain(size_t idx) {
  sim_member_t *m = &S.m[idx];
  unsigned got = 0;
  while (m->alive && got < 100000) {
    int ev = 0;
    size_t sz = sizeof(ev);
    if (zmq_getsockopt(m->sock, ZMQ_EVENTS, &ev, &sz) != 0 ||
        !(ev & ZMQ_POLLIN))
      break;
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, m->sock, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&f);
      break;
    }
    uint64_t t = now_us();
    got++;
    if (zmq_msg_more(&f)) {
      /* Nothing the scheduler sends a member has payload frames. */
      S.errors++;
      while (zmq_msg_more(&f)) {
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, m->sock, ZMQ_DONTWAIT) < 0) break;
      }
    } else {
      on_header(m, idx, zmq_msg_data(&f), zmq_msg_size(&f), t);
    }
    zmq_msg_close(&f);
  }
  return got;
}

static int member_open(size_t idx, int role) {
  if (S.n == S.cap) return fail("too many members");
  sim_member_t *m = &S.m[idx];
  memset(m, 0, sizeof(*m));
  m->role = role;
  char err[256];
  if (ps_auth_token_new(&m->token) != PS_OK)
    return fail("getrandom failed: %s", strerror(errno));
  m->sock = zmq_socket(S.ctx, ZMQ_DEALER);
  if (m->sock == NULL)
    return fail("zmq_socket (member %zu): %s", idx, zmq_strerror(zmq_errno()));
  size_t fsz = sizeof(m->fd);
  if (ps_zsock_configure(m->sock, err, sizeof(err)) != PS_OK ||
      ps_auth_set_routing_id(m->sock, &m->token, PS_AUTH_USE_MEMBER, err,
                             sizeof(err)) != PS_OK ||
      zmq_connect(m->sock, S.sched_ep) != 0 ||
      zmq_getsockopt(m->sock, ZMQ_FD, &m->fd, &fsz) != 0) {
    zmq_close(m->sock);
    return fail("member %zu socket: %s", idx,
                err[0] ? err : zmq_strerror(zmq_errno()));
  }
  struct epoll_event e = {.events = EPOLLIN | EPOLLET, .data.u64 = idx};
  if (epoll_ctl(S.ep, EPOLL_CTL_ADD, m->fd, &e) != 0) {
    zmq_close(m->sock);
    return fail("epoll_ctl: %s", strerror(errno));
  }
  m->alive = 1;
  S.n++;
  send_register(m, idx);
  member_drain(idx);
  return 0;
}

/* The member's process died: its connection closes, nothing more from it. */
static void member_kill(size_t idx) {
  sim_member_t *m = &S.m[idx];
  if (!m->alive) return;
  epoll_ctl(S.ep, EPOLL_CTL_DEL, m->fd, NULL);
  zmq_close(m->sock);
  m->sock = NULL;
  m->alive = 0;
}

static void members_close_all(void) {
  for (size_t i = 0; i < S.n; i++) member_kill(i);
  S.n = 0;
}

/* ---- the loop ---------------------------------------------------------- */

/* The scheduler's acks of heartbeat datagrams: each checked with its
 * member's key, as a member does. */
static void udp_drain(void) {
  uint8_t buf[128];
  for (;;) {
    ssize_t n = recv(S.udp, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) break;
    int type;
    uint32_t id;
    ps_beat_t b;
    if (ps_beat_peek(buf, (size_t)n, &type, &id) != PS_OK) {
      S.errors++;
      continue;
    }
    size_t at = id < 4 * S.cap ? S.by_node[id] : 0;
    sim_member_t *m = at ? &S.m[at - 1] : NULL;
    if (m == NULL || !m->alive || m->node_id != id) continue; /* killed */
    if (ps_beat_open(buf, (size_t)n, m->beat_key, &b) != PS_OK ||
        b.type != PS_BEAT_ACK) {
      S.errors++;
      continue;
    }
    S.acks++;
  }
}

/* Heartbeats: member i beats in the ms slots congruent to i modulo the
 * period, so N members spread evenly over it, each once per period. */
static void heartbeats_due(uint64_t t_us) {
  uint64_t now_ms = t_us / 1000;
  uint64_t period = (uint64_t)S.heartbeat_ms;
  /* A loop that fell behind by more than a period skips ahead: each
   * member still beats once in it. */
  if (S.hb_next_ms == 0)
    S.hb_next_ms = now_ms;
  else if (now_ms >= S.hb_next_ms && now_ms - S.hb_next_ms >= period)
    S.hb_next_ms = now_ms - period + 1;
  for (; S.hb_next_ms <= now_ms; S.hb_next_ms++) {
    for (size_t i = S.hb_next_ms % period; i < S.n; i += period) {
      sim_member_t *m = &S.m[i];
      if (!m->alive) continue;
      if (m->registered)
        send_heartbeat(m);
      else if (t_us - m->register_sent_us >= SIM_REGISTER_RETRY_US)
        send_register(m, i);
      else
        continue;
      member_drain(i); /* a send can swallow the fd's edge */
    }
  }
}

/* Runs the members until done(arg) holds or deadline (monotonic us).
 * Returns 1 if done held, 0 at the deadline or on interruption. */
static int run_until(int (*done)(void *), void *arg, uint64_t deadline) {
  struct epoll_event ev[256];
  for (;;) {
    if (done && done(arg)) return 1;
    uint64_t t = now_us();
    if (t >= deadline || S.interrupted) return 0;
    if (S.last_turn_us && t - S.last_turn_us > S.max_gap_us)
      S.max_gap_us = t - S.last_turn_us;
    S.last_turn_us = t;
    int n = epoll_wait(S.ep, ev, 256, 1);
    for (int i = 0; i < n; i++) {
      size_t idx = (size_t)ev[i].data.u64;
      if (idx == SIZE_MAX)
        udp_drain();
      else if (idx < S.n)
        member_drain(idx);
    }
    t = now_us();
    heartbeats_due(t);
    if (t - S.last_sweep_us >= SIM_SWEEP_US) {
      S.last_sweep_us = t;
      for (size_t i = 0; i < S.n; i++) S.sweep_found += member_drain(i);
    }
  }
}

/* When member m received epoch e; 0 if it has not (or forgot). */
static uint64_t receipt_us(const sim_member_t *m, uint64_t e) {
  for (unsigned k = 0; k < SIM_RING; k++)
    if (m->ring_epoch[k] == e) return m->ring_us[k];
  return 0;
}

static int all_hold(void *arg) {
  uint64_t e = *(uint64_t *)arg;
  for (size_t i = 0; i < S.n; i++)
    if (S.m[i].alive && S.m[i].epoch < e) return 0;
  return 1;
}

static int all_registered(void *arg) {
  (void)arg;
  for (size_t i = 0; i < S.n; i++)
    if (S.m[i].alive && (!S.m[i].registered || S.m[i].epoch == 0)) return 0;
  return 1;
}

static int watch_dead(void *arg) {
  (void)arg;
  return S.watch_epoch != 0;
}

static int observer_past(void *arg) {
  uint64_t e = *(uint64_t *)arg;
  return S.obs_epoch[0] > e;
}

/* First and last receipt of epoch e over the live members, in ms after t0.
 * Returns -1 if a live member never got e itself (it skipped to a later
 * one: that view never reached it). */
static int spread(uint64_t e, uint64_t t0, double *first, double *last) {
  uint64_t lo = UINT64_MAX, hi = 0;
  for (size_t i = 0; i < S.n; i++) {
    if (!S.m[i].alive) continue;
    uint64_t r = receipt_us(&S.m[i], e);
    if (r == 0) return -1;
    if (r < lo) lo = r;
    if (r > hi) hi = r;
  }
  *first = lo > t0 ? (double)(lo - t0) / 1e3 : 0;
  *last = hi > t0 ? (double)(hi - t0) / 1e3 : 0;
  return 0;
}

/* ---- the scheduler process --------------------------------------------- */

/* utime + stime of pid in clock ticks; -1 if unreadable. */
static long long proc_cpu_ticks(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* comm may hold spaces */
  unsigned long long ut, st;
  if (p == NULL ||
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
             &ut, &st) != 2)
    return -1;
  return (long long)(ut + st);
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int start_scheduler(const sim_result_t *r) {
  if (S.scheduler && S.scheduler[0]) {
    snprintf(S.sched_ep, sizeof(S.sched_ep), "%s", S.scheduler);
    S.sched_pid = (pid_t)S.scheduler_pid;
    return 0;
  }
  char bin[PATH_MAX];
  if (S.bin_dir && S.bin_dir[0]) {
    snprintf(bin, sizeof(bin), "%s", S.bin_dir);
  } else {
    ssize_t n = readlink("/proc/self/exe", bin, sizeof(bin) - 1);
    bin[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(bin, '/');
    if (slash) *slash = '\0';
  }
  int port = ps_bench_free_port();
  if (port < 0) return fail("no free port on 127.0.0.1 for the scheduler");
  snprintf(S.sched_ep, sizeof(S.sched_ep), "tcp://127.0.0.1:%d", port);
  char path[PATH_MAX + 32], log[PATH_MAX + 64], servers[24], workers[24],
      timeout[24];
  snprintf(path, sizeof(path), "%s/ps-scheduler", bin);
  snprintf(log, sizeof(log), "%s/scheduler-%" PRId64 ".log", S.run_dir,
           r->nodes);
  snprintf(servers, sizeof(servers), "%" PRId64, r->servers);
  snprintf(workers, sizeof(workers), "%" PRId64, r->workers);
  snprintf(timeout, sizeof(timeout), "%" PRId64, S.timeout_ms);
  /* ASP: a replacement worker joins at once (BSP would wait for the
   * servers' JoinReply, which fake servers do not send). */
  char *argv[] = {
      path,
      "--bind",
      S.sched_ep,
      "--servers",
      servers,
      "--workers",
      workers,
      "--mode",
      "asp",
      "--heartbeat-timeout-ms",
      timeout,
      "--insecure",
      "--log-level",
      "info",
      S.view_deltas ? "--view-deltas=true" : "--view-deltas=false",
      S.heartbeat_udp ? "--heartbeat-udp=true" : "--heartbeat-udp=false",
      NULL};
  if (access(path, X_OK) != 0)
    return fail("cannot run %s: %s (--bin-dir)", path, strerror(errno));
  S.sched_pid = ps_proc_spawn(path, argv, log);
  if (S.sched_pid < 0)
    return fail("cannot start %s: %s", path, strerror(errno));
  return 0;
}

static void stop_scheduler(void) {
  if (S.scheduler && S.scheduler[0]) return; /* not ours */
  if (S.sched_pid <= 0) return;
  int status;
  kill(S.sched_pid, SIGTERM);
  if (!ps_proc_wait(S.sched_pid, 5000, &status)) {
    kill(S.sched_pid, SIGKILL);
    ps_proc_wait(S.sched_pid, 5000, &status);
  }
  S.sched_pid = 0;
}

/* ---- one cluster size --------------------------------------------------- */

static int kill_and_detect(size_t idx, double *first, double *last, char *why,
                           size_t whylen) {
  S.watch_id = S.m[idx].node_id;
  S.watch_epoch = 0;
  member_kill(idx);
  /* The scheduler counts the silence from the last heartbeat it got. */
  uint64_t t0 = S.m[idx].heartbeat_sent_us;
  uint64_t deadline = now_us() + (uint64_t)S.timeout_ms * 1000 + 10000000;
  if (!run_until(watch_dead, NULL, deadline) || S.fenced > 0) {
    if (S.fenced > 0)
      snprintf(why, whylen,
               "%" PRIu64
               " live members were declared dead (this "
               "process's longest stall: %.0f ms; see the scheduler's log)",
               S.fenced, (double)S.max_gap_us / 1e3);
    else
      snprintf(why, whylen,
               "node %u was not declared dead within %" PRId64 " ms + 10 s",
               S.watch_id, S.timeout_ms);
    return -1;
  }
  uint64_t e = S.watch_epoch;
  if (!run_until(all_hold, &e, now_us() + 10000000)) {
    snprintf(why, whylen,
             "the view of epoch %" PRIu64
             " (node %u dead) did not reach every member within 10 s",
             e, S.watch_id);
    return -1;
  }
  if (spread(e, t0, first, last) != 0) {
    snprintf(why, whylen, "a member skipped the view of epoch %" PRIu64, e);
    return -1;
  }
  return 0;
}

static int run_size(sim_result_t *r) {
  S.n = 0;
  memset(S.by_node, 0, 4 * S.cap * sizeof(*S.by_node));
  S.hb_next_ms = 0;
  S.acks = S.heartbeats = S.dup_views = S.sweep_found = S.errors = 0;
  S.fenced = S.delta_skips = 0;
  for (int k = 0; k < SIM_OBSERVERS; k++) ps_view_destroy(&S.obs_held[k]);
  S.last_turn_us = S.max_gap_us = 0;
  memset(S.view_bytes, 0, sizeof(S.view_bytes));
  memset(S.delta_bytes, 0, sizeof(S.delta_bytes));
  memset(S.obs_epoch, 0, sizeof(S.obs_epoch));
  S.watch_id = 0;
  S.watch_epoch = 0;
  S.obs_bad = 0;
  if (start_scheduler(r) != 0) return -1;
  uint64_t t_start = now_us();
  /* Servers first in the table: the first server and the first worker are
   * the observers; the last of each are killed. */
  for (int64_t i = 0; i < r->nodes; i++) {
    int role = i < r->servers ? PS__ROLE__ROLE_SERVER : PS__ROLE__ROLE_WORKER;
    if (member_open((size_t)i, role) != 0) return -1;
  }
  S.observer[0] = 0;
  S.observer[1] = (size_t)r->servers;
  if (!run_until(all_registered, NULL, t_start + 60000000)) {
    snprintf(r->why, sizeof(r->why),
             "not every member registered and got the first view in 60 s");
    return -1;
  }
  r->form_ms = (now_us() - t_start) / 1000;
  /* Settle: every member beats at the current epoch. */
  run_until(NULL, NULL, now_us() + 1000000);
  if (S.fenced > 0) goto fenced;

  /* Steady heartbeating: the scheduler's CPU. */
  uint64_t e0 = S.obs_epoch[0];
  uint64_t acks0 = S.acks, hb0 = S.heartbeats;
  long long c0 = S.sched_pid > 0 ? proc_cpu_ticks(S.sched_pid) : -1;
  double s0 = self_cpu_s();
  uint64_t w0 = now_us();
  run_until(NULL, NULL, w0 + (uint64_t)S.window_s * 1000000);
  uint64_t w1 = now_us();
  long long c1 = S.sched_pid > 0 ? proc_cpu_ticks(S.sched_pid) : -1;
  double secs = (double)(w1 - w0) / 1e6;
  r->cpu_pct =
      c0 >= 0 && c1 >= 0
          ? (double)(c1 - c0) / (double)sysconf(_SC_CLK_TCK) / secs * 100.0
          : -1;
  r->sim_cpu_pct = (self_cpu_s() - s0) / secs * 100.0;
  r->acks_per_s = (double)(S.acks - acks0) / secs;
  r->hb_per_s = (double)(S.heartbeats - hb0) / secs;
  r->window_views = S.obs_epoch[0] - e0;
  if (S.fenced > 0) goto fenced;

  /* A worker dies. */
  size_t victim = (size_t)r->nodes - 1;
  if (kill_and_detect(victim, &r->detect_w_first_ms, &r->detect_w_last_ms,
                      r->why, sizeof(r->why)) != 0)
    return -1;
  run_until(NULL, NULL, now_us() + 300000);

  /* Its replacement registers: the scheduler publishes at once. */
  uint64_t before = S.obs_epoch[0];
  size_t fresh = S.n;
  uint64_t t1 = now_us();
  if (member_open(fresh, PS__ROLE__ROLE_WORKER) != 0) return -1;
  if (!run_until(observer_past, &before, t1 + 10000000)) {
    snprintf(r->why, sizeof(r->why), "no view after a worker joined in 10 s");
    return -1;
  }
  uint64_t ej = S.obs_epoch[0];
  if (!run_until(all_hold, &ej, now_us() + 10000000)) {
    snprintf(r->why, sizeof(r->why),
             "the view of epoch %" PRIu64
             " (a worker joined) did not reach "
             "every member within 10 s",
             ej);
    return -1;
  }
  if (spread(ej, t1, &r->publish_first_ms, &r->publish_last_ms) != 0) {
    snprintf(r->why, sizeof(r->why),
             "a member skipped the view of epoch %" PRIu64, ej);
    return -1;
  }
  run_until(NULL, NULL, now_us() + 300000);

  /* A server dies: a failover. */
  if (kill_and_detect((size_t)r->servers - 1, &r->detect_s_first_ms,
                      &r->detect_s_last_ms, r->why, sizeof(r->why)) != 0)
    return -1;
  r->view_bytes_server = S.view_bytes[0];
  r->delta_bytes_server = S.delta_bytes[0];
  r->delta_bytes_worker = S.delta_bytes[1];
  r->view_bytes_worker = S.view_bytes[1];
  r->dup_views = S.dup_views;
  r->delta_skips = S.delta_skips;
  r->sweep_found = S.sweep_found;
  r->fenced = S.fenced;
  r->sim_stall_ms = (double)S.max_gap_us / 1e3;
  if (S.obs_bad) {
    snprintf(r->why, sizeof(r->why), "observer: %s", S.obs_why);
    return -1;
  }
  if (S.fenced > 0) goto fenced;
  if (S.errors > 0) {
    snprintf(r->why, sizeof(r->why),
             "%" PRIu64 " unexpected messages or send failures", S.errors);
    return -1;
  }
  return 0;
fenced:
  snprintf(r->why, sizeof(r->why),
           "%" PRIu64
           " live members were declared dead (this process's "
           "longest stall: %.0f ms; see the scheduler's log)",
           S.fenced, (double)S.max_gap_us / 1e3);
  return -1;
}

/* ---- main ---------------------------------------------------------------- */

static int parse_sizes(const char *s, int64_t *out, int max) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno || v < 2 || v > SIM_MAX_NODES || n == max ||
        (*end != ',' && *end != '\0'))
      return -1;
    out[n++] = v;
    p = *end == ',' ? end + 1 : end;
  }
  return n;
}

static void print_results(const sim_result_t *r, int n, FILE *f) {
  fprintf(f,
          "# ps-schedsim: heartbeat %" PRId64
          " ms, scheduler "
          "--heartbeat-timeout-ms %" PRId64
          " --view-deltas=%s --heartbeat-udp=%s, CPU window "
          "%" PRId64 " s\n",
          S.heartbeat_ms, S.timeout_ms, S.view_deltas ? "true" : "false",
          S.heartbeat_udp ? "true" : "false", S.window_s);
  fprintf(f,
          "%6s %5s %5s %9s %9s %7s %7s %8s %8s %8s %7s %9s %9s %9s %9s %9s "
          "%9s %6s %5s %4s\n",
          "nodes", "srv", "wrk", "view_srv", "view_wrk", "dlt_srv", "dlt_wrk",
          "form_ms", "sch_cpu%", "sim_cpu%", "acks/s", "pub_1st", "pub_all",
          "dw_1st", "dw_all", "ds_1st", "ds_all", "dups", "skips", "ok");
  for (int i = 0; i < n; i++)
    fprintf(f,
            "%6" PRId64 " %5" PRId64 " %5" PRId64
            " %9zu %9zu %7zu %7zu %8" PRIu64
            " %8.2f %8.1f %7.0f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %6" PRIu64
            " %5" PRIu64 " %4s\n",
            r[i].nodes, r[i].servers, r[i].workers, r[i].view_bytes_server,
            r[i].view_bytes_worker, r[i].delta_bytes_server,
            r[i].delta_bytes_worker, r[i].form_ms, r[i].cpu_pct,
            r[i].sim_cpu_pct, r[i].acks_per_s, r[i].publish_first_ms,
            r[i].publish_last_ms, r[i].detect_w_first_ms, r[i].detect_w_last_ms,
            r[i].detect_s_first_ms, r[i].detect_s_last_ms, r[i].dup_views,
            r[i].delta_skips, r[i].ok ? "yes" : "NO");
  fprintf(f,
          "# vs goals: CPU < %.0f%% of a core at 10 Hz, view to all < %.0f "
          "ms\n",
          S.cpu_goal, S.publish_goal_ms);
  for (int i = 0; i < n; i++) {
    if (!r[i].ok) {
      fprintf(f, "# %" PRId64 " nodes: FAILED: %s\n", r[i].nodes, r[i].why);
      continue;
    }
    fprintf(f,
            "# %" PRId64
            " nodes: cpu %.2f%% = %.2fx goal; view to all %.1f "
            "ms = %.2fx goal; worker death seen by all %.1f ms, server %.1f "
            "ms (timeout %" PRId64
            " ms); heartbeats sent %.0f/s; views "
            "published in the window %" PRIu64 "; read by the sweep %" PRIu64
            "; longest stall of this process %.0f ms\n",
            r[i].nodes, r[i].cpu_pct, r[i].cpu_pct / S.cpu_goal,
            r[i].publish_last_ms, r[i].publish_last_ms / S.publish_goal_ms,
            r[i].detect_w_last_ms, r[i].detect_s_last_ms, S.timeout_ms,
            r[i].hb_per_s, r[i].window_views, r[i].sweep_found,
            r[i].sim_stall_ms);
  }
}

/* --check: what must hold for the run to pass (the integration test). */
static int check_result(sim_result_t *r) {
  double limit = (double)(S.timeout_ms + S.margin_ms);
  /* The scheduler acks one heartbeat per PS_MEMBER_ACK_EVERY_MS (the
   * first one sent after it passed). */
  double ack_period = (double)S.heartbeat_ms;
  if (S.heartbeat_ms < PS_MEMBER_ACK_EVERY_MS)
    ack_period = (double)(PS_MEMBER_ACK_EVERY_MS + S.heartbeat_ms);
  double want = (double)r->nodes * 1000.0 / ack_period;
  if (r->detect_w_last_ms > limit || r->detect_s_last_ms > limit)
    snprintf(r->why, sizeof(r->why),
             "a death reached every member after %.1f / %.1f ms, over the "
             "timeout %" PRId64 " ms + margin %" PRId64 " ms",
             r->detect_w_last_ms, r->detect_s_last_ms, S.timeout_ms,
             S.margin_ms);
  /* Both count from the victim's last heartbeat: the scheduler got it
   * after it was sent, and the view came after the scheduler's decision. */
  else if (r->detect_w_first_ms < (double)S.timeout_ms ||
           r->detect_s_first_ms < (double)S.timeout_ms)
    snprintf(r->why, sizeof(r->why),
             "a death was seen %.1f / %.1f ms after the last heartbeat, "
             "before the timeout %" PRId64 " ms",
             r->detect_w_first_ms, r->detect_s_first_ms, S.timeout_ms);
  else if (r->acks_per_s < 0.8 * want)
    snprintf(r->why, sizeof(r->why), "%.0f heartbeat acks/s, %.0f expected",
             r->acks_per_s, want);
  else if (r->window_views != 0)
    snprintf(r->why, sizeof(r->why),
             "%" PRIu64 " views published while nothing changed",
             r->window_views);
  else if (r->view_bytes_server == 0 || r->view_bytes_worker == 0)
    snprintf(r->why, sizeof(r->why), "an observer saw no view");
  /* On loopback no view is lost, so every member holds every delta's
   * base; the deaths and the join each published one. */
  else if (S.view_deltas &&
           (r->delta_bytes_server == 0 || r->delta_bytes_worker == 0))
    snprintf(r->why, sizeof(r->why), "an observer saw no delta");
  else if (r->delta_skips != 0)
    snprintf(r->why, sizeof(r->why),
             "%" PRIu64 " deltas came to members without their base",
             r->delta_skips);
  else
    return 0;
  return -1;
}

int main(int argc, char **argv) {
  S.log_level = PS_LOG_WARN;
  const ps_opt_t opts[] = {
      {"nodes", PS_OPT_STRING, &S.nodes_s, "100,500,1000", 0, 0, NULL,
       "Cluster sizes to simulate, comma-separated (2 to 20000): each is a "
       "fresh scheduler and that many fake members."},
      {"server-fraction", PS_OPT_DOUBLE, &S.server_fraction, "0.1", 0.001,
       0.999, NULL,
       "The share of the members that are servers (at least 1, the rest "
       "workers): 0.1 is 100 servers and 900 workers at 1000."},
      {"heartbeat-ms", PS_OPT_INT, &S.heartbeat_ms, "100", 10, 10000, NULL,
       "Each member's heartbeat period (a real member's default)."},
      {"heartbeat-timeout-ms", PS_OPT_INT, &S.timeout_ms, "400", 10, 3600000,
       NULL, "The scheduler's --heartbeat-timeout-ms (its default)."},
      {"window-s", PS_OPT_INT, &S.window_s, "5", 1, 3600, NULL,
       "Length of the steady-heartbeat window the scheduler's CPU is "
       "measured over."},
      {"scheduler", PS_OPT_STRING, &S.scheduler, NULL, 0, 0, NULL,
       "Use this running scheduler instead of starting one; it must expect "
       "exactly the members of the one size given with --nodes and be "
       "plaintext (--insecure), ASP."},
      {"scheduler-pid", PS_OPT_INT, &S.scheduler_pid, "0", 0, 4194304, NULL,
       "With --scheduler: its pid, for its CPU (0: not measured)."},
      {"bin-dir", PS_OPT_STRING, &S.bin_dir, NULL, 0, 0, NULL,
       "Where ps-scheduler is; default: this program's own directory."},
      {"log-dir", PS_OPT_STRING, &S.log_dir, NULL, 0, 0, NULL,
       "Where the scheduler's logs go (kept); default: a temporary "
       "directory, removed after a run that passed."},
      {"cpu-goal", PS_OPT_DOUBLE, &S.cpu_goal, "10", 0.01, 100, NULL,
       "Goal for the scheduler's CPU in % of one core, for the ratios."},
      {"publish-goal-ms", PS_OPT_DOUBLE, &S.publish_goal_ms, "100", 0.01,
       100000, NULL, "Goal for a view to reach every member, for the ratios."},
      {"view-deltas", PS_OPT_BOOL, &S.view_deltas, "true", 0, 0, NULL,
       "Passed to the scheduler it starts: false sends every view whole "
       "(the baseline deltas are measured against)."},
      {"heartbeat-udp", PS_OPT_BOOL, &S.heartbeat_udp, "false", 0, 0, NULL,
       "Passed to the scheduler it starts: the members heartbeat as UDP "
       "datagrams (common/beat.h) once registered, and read the scheduler's "
       "acks from one socket."},
      {"check", PS_OPT_BOOL, &S.check, "false", 0, 0, NULL,
       "Exit 1 unless every size passed: every view reached every member, "
       "deaths were declared after the timeout and seen by all within "
       "timeout + --margin-ms, heartbeats were acked at the rate the "
       "scheduler promises (one per member every 500 ms), and "
       "nothing was published while nothing changed."},
      {"margin-ms", PS_OPT_INT, &S.margin_ms, "400", 0, 600000, NULL,
       "With --check: how long after the timeout a death may reach the "
       "last member."},
      {"log-level", PS_OPT_ENUM, &S.log_level, "warn", 0, 0,
       "debug|info|warn|error", "Lowest level of this program's log lines."},
  };
  const ps_config_t cfg = {
      .program = "ps-schedsim",
      .summary =
          "Hundreds of simulated nodes against one real scheduler: "
          "its CPU, view fan-out and failure detection.",
      .usage = "[options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  char err[512];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  int64_t sizes[SIM_MAX_SIZES];
  int nsizes = parse_sizes(S.nodes_s, sizes, SIM_MAX_SIZES);
  if (nsizes <= 0)
    return ps_config_refuse(&cfg,
                            "option --nodes: \"%s\" is not a list of 1 to %d "
                            "sizes, each 2 to %d",
                            S.nodes_s, SIM_MAX_SIZES, SIM_MAX_NODES);
  if (S.scheduler && S.scheduler[0] && nsizes != 1)
    return ps_config_refuse(&cfg,
                            "option --scheduler: give one size with --nodes "
                            "(a scheduler expects one cluster)");
  ps_log_init("schedsim", (ps_log_level_t)S.log_level);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  ps_raise_nofile_limit();

  int64_t most = 0;
  for (int i = 0; i < nsizes; i++)
    if (sizes[i] > most) most = sizes[i];
  S.cap = (size_t)most + 1;
  S.m = calloc(S.cap, sizeof(*S.m));
  S.by_node = calloc(4 * S.cap, sizeof(*S.by_node));
  S.ctx = zmq_ctx_new();
  S.ep = epoll_create1(EPOLL_CLOEXEC);
  S.udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct epoll_event ue = {.events = EPOLLIN, .data.u64 = SIZE_MAX};
  if (S.m == NULL || S.by_node == NULL || S.ctx == NULL || S.ep < 0 ||
      S.udp < 0 || epoll_ctl(S.ep, EPOLL_CTL_ADD, S.udp, &ue) != 0 ||
      zmq_ctx_set(S.ctx, ZMQ_MAX_SOCKETS, (int)S.cap + 64) != 0) {
    fail("cannot set up: %s", strerror(errno));
    return PS_EXIT_FAILURE;
  }
  int own_dir = !(S.log_dir && S.log_dir[0]);
  if (own_dir) {
    snprintf(S.run_dir, sizeof(S.run_dir), "/tmp/ps-schedsim.XXXXXX");
    if (mkdtemp(S.run_dir) == NULL) {
      fail("mkdtemp: %s", strerror(errno));
      return PS_EXIT_FAILURE;
    }
  } else {
    snprintf(S.run_dir, sizeof(S.run_dir), "%s", S.log_dir);
    mkdir(S.run_dir, 0755);
  }

  sim_result_t res[SIM_MAX_SIZES];
  memset(res, 0, sizeof(res));
  int all_ok = 1;
  for (int i = 0; i < nsizes && !S.interrupted; i++) {
    sim_result_t *r = &res[i];
    r->nodes = sizes[i];
    r->servers = (int64_t)((double)sizes[i] * S.server_fraction + 0.5);
    if (r->servers < 1) r->servers = 1;
    if (r->servers > sizes[i] - 1) r->servers = sizes[i] - 1;
    r->workers = sizes[i] - r->servers;
    fprintf(stderr,
            "ps-schedsim: %" PRId64 " nodes (%" PRId64 " servers, %" PRId64
            " workers)...\n",
            r->nodes, r->servers, r->workers);
    r->ok = run_size(r) == 0;
    if (r->ok && S.check && check_result(r) != 0) r->ok = 0;
    if (!r->ok) all_ok = 0;
    members_close_all();
    stop_scheduler();
  }
  print_results(res, nsizes, stdout);
  if (S.interrupted) fprintf(stderr, "ps-schedsim: interrupted\n");
  if (own_dir && all_ok && !S.interrupted) {
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", S.run_dir);
    if (system(cmd) != 0)
      fprintf(stderr, "ps-schedsim: cannot remove %s\n", S.run_dir);
  } else {
    fprintf(stderr, "ps-schedsim: scheduler logs in %s\n", S.run_dir);
  }
  close(S.ep);
  zmq_ctx_term(S.ctx);
  free(S.m);
  free(S.by_node);
  if (S.udp >= 0) close(S.udp);
  ps_config_free(&cfg);
  if (S.interrupted) return PS_EXIT_FAILURE;
  return S.check && !all_ok ? PS_EXIT_FAILURE : PS_EXIT_OK;
}
