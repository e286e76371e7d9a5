/* libps-client: see client.h.
 *
 * Two threads touch a client:
 *  - the background thread runs a uv loop with the ps_member (registration,
 *    heartbeats, views, Shutdown) so the scheduler hears from this worker
 *    while the caller is busy computing;
 *  - the calling thread runs the data plane (one DEALER per server), the
 *    barrier socket to the scheduler, and everything in client.h.
 *
 * What crosses between them is tiny: the registration result, the newest
 * view, the shutdown reason, and from the caller the stop/Done requests and
 * the clock. It sits in `shared` behind one mutex and condvar instead of a
 * message queue because the caller only ever wants the newest view (a queue
 * would hold views nobody reads) and ps_client_new must block for
 * "registered and a view" with a deadline, which a condvar does directly.
 * Views arrive every few seconds at most, so the lock is never contended
 * in a way that shows. The background thread also writes an eventfd on
 * every view and shutdown, so a caller waiting in zmq_poll on data sockets
 * wakes at once instead of at the end of its poll slice.
 *
 * The data plane: every push or pull is a call (ps__op_t, pooled, so a warm
 * client allocates nothing per call) cut into pieces, one per server range
 * and chunk. Pieces go out in the order their calls started, at most
 * `window` in flight per server; each conn keeps the request ids of its
 * pieces in flight in a window-sized slot array, so a reply finds its piece
 * in a handful of compares and a late one (a call that timed out, a piece
 * resent) finds nothing and is dropped. ps__progress drives every pending
 * call at once; it runs inside the ps_client calls, so nothing happens on
 * the data sockets while the caller computes, and the ZeroMQ I/O thread
 * keeps sending and receiving meanwhile.
 *
 * Pushes hand the caller's values to ZeroMQ without a copy. That is safe
 * while the call is pending (the caller keeps values unchanged), but a call
 * that fails may leave frames queued in ZeroMQ for a server that never took
 * them, and the caller is free to reuse the memory once wait returns. So
 * every wrapped frame carries a free callback that counts it back in its
 * call, and a push's wait returns only when ZeroMQ has let go of all of
 * them (closing the sockets that still hold some; see ps__op_settle).
 */
#include "worker/client.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/init.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"

/* zmq_poll never sleeps longer than this, so shutdown, new views and the
 * deadline are noticed promptly even if the eventfd wake-up were lost. */
#define PS__POLL_SLICE_MS 50
/* Defaults of ps_client_opts_t: window and chunk_bytes. Eight 1 MiB
 * requests in flight per server keep loopback and a 10 Gb/s link busy while
 * the server applies the ones before. */
#define PS__DEFAULT_WINDOW 8
#define PS__DEFAULT_CHUNK_BYTES (1u << 20)
#define PS__MAX_WINDOW 4096
/* A server that answers STALE_EPOCH with an older epoch than ours has not
 * received the new view yet: resend after this pause. */
#define PS__STALE_RETRY_MS 20
/* Long enough for a Barrier/Done queued on the scheduler socket to leave
 * when the client is destroyed, short enough not to hold up exit when the
 * scheduler is gone. */
#define PS__SCHED_LINGER_MS 1000
/* After the last reply, ZeroMQ's I/O thread may still hold acked frames for
 * a moment; past this, sockets holding frames are closed to free them. */
#define PS__RELEASE_GRACE_MS 100
/* How long ps_client_destroy waits for the scheduler to take the Done. */
#define PS__FAREWELL_WAIT_MS 3000
#define PS__ERRMSG_MAX 512

typedef enum {
  PS__PIECE_QUEUED,     /* split off, not sent yet */
  PS__PIECE_SENT,       /* waiting for the reply to request_id */
  PS__PIECE_STALE,      /* refused for its epoch; resend on a newer view */
  PS__PIECE_DONE,       /* answered */
  PS__PIECE_SUPERSEDED, /* re-split after a view change; ignore */
} ps__piece_state_t;

/* One request's worth of a call: a key slice owned by one server, at most
 * one chunk long. */
typedef struct {
  uint64_t key_begin, count;
  /* Pushes: kept across resends and re-splits, so a server that already
   * applied the piece recognises the resend as a duplicate. */
  uint64_t seq;
  uint32_t server_id;
  ps__piece_state_t state;
  uint64_t request_id; /* of the latest send */
  uint64_t epoch;      /* view epoch it was last sent with */
  uint64_t view_gen;   /* c->view_gen when last sent */
  uint64_t conn_gen;   /* the socket it went out on */
  uint64_t retry_at_ms;
} ps__piece_t;

/* One push or pull call, from start to wait. Kept in a pool with its piece
 * array, so a call allocates nothing once the client is warm. */
typedef struct ps__op_s {
  ps_client_t *c;
  uint64_t ticket;
  int is_push;
  uint64_t key_begin, count, clock;
  const float *values; /* push */
  float *out;          /* pull */
  uint64_t deadline_ms;
  int timeout_ms;
  ps__piece_t *pieces;
  size_t npieces, cap;
  size_t pending;   /* pieces not DONE or SUPERSEDED */
  size_t nstale;    /* pieces STALE */
  size_t scan_from; /* no QUEUED or STALE piece before this index */
  int finished;
  int status;
  int hold;     /* zero-copy pull: keep the reply frames */
  size_t nheld; /* frames kept */
  int waited;   /* hold: handed to the caller, awaiting release */
  char errmsg[PS__ERRMSG_MAX];
  /* Push frames ZeroMQ still holds; its I/O thread counts them down. */
  atomic_uint_fast64_t unreleased;
  struct ps__op_s *next_free;
  /* Kept across reuse of the op, like pieces. */
  zmq_msg_t *held;
  ps_client_span_t *spans;
  size_t held_cap;
} ps__op_t;

/* A request in flight on a connection: which piece of which call. */
typedef struct {
  uint64_t request_id;
  ps__op_t *op;
  size_t piece;
  uint64_t sent_at_ms; /* for the resend timer */
} ps__slot_t;

/* The data socket to one server. */
typedef struct {
  uint32_t server_id;
  char address[PS_ADDR_MAX];
  void *sock;
  uint64_t gen; /* distinguishes a reconnected socket from the old one */
  int inflight;
  ps__slot_t *slots; /* window entries; the first inflight are in use */
} ps__conn_t;

struct ps_client_s {
  ps_client_opts_t opts;
  char *scheduler;
  void *zctx;
  int wake_fd; /* eventfd: background thread -> caller's zmq_poll */

  /* Background thread. */
  pthread_t thread;
  int thread_started;
  uv_loop_t loop;
  uv_async_t async; /* caller -> thread: stop, Done, clock */
  int async_ready;
  ps_member_t *member;
  int thread_done_sent;
  /* The scheduler took our Done or Leave: a view lists this node as done or
   * left, or the cluster shut down. Until then the member stays, because
   * it resends a Done that crossed a view change (STALE_EPOCH). */
  int thread_farewell_taken;
  uv_timer_t farewell_timer; /* polls for that while stopping */
  int thread_stopping;
  uint64_t farewell_deadline_ms;
  uint64_t thread_clock;

  /* Guarded by mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct {
    int registered;
    uint32_t node_id, rank, num_workers;
    ps_view_t *view; /* newest view the caller has not taken yet */
    int shutdown;
    int shutdown_status;
    char shutdown_reason[256];
    int stop;
    int done;
    int leave; /* leave instead of done: the worker was told to stop */
    char leave_reason[128];
    uint64_t clock;
  } shared;

  /* Signalled when a call's last push frame is released (see
   * ps__op_settle); the counts themselves are atomics in the calls. */
  pthread_mutex_t rel_mu;
  pthread_cond_t rel_cv;

  /* Calling thread only. */
  uint32_t node_id, rank, num_workers;
  ps_view_t *view;
  uint64_t view_gen;
  ps__conn_t *conns;
  size_t nconns, conns_cap;
  uint64_t conn_gen;
  zmq_pollitem_t *poll_items; /* [0] is wake_fd, then busy data sockets */
  ps__conn_t **poll_conns;    /* the conn of each poll item */
  size_t poll_cap;
  void *sched_sock;
  ps__op_t **ops; /* started, not waited for yet, in start order */
  size_t nops, ops_cap;
  ps__op_t *free_ops;
  uint64_t next_ticket;
  uint64_t chunk_keys; /* 0: no chunking */
  uint64_t next_request_id;
  uint64_t next_seq;
  uint64_t last_clock;
  int done_sent;
  uint64_t duplicate_acks; /* pushes acked as already applied */
  uint64_t resends;        /* pieces resent by the resend timer */
  char errmsg[PS__ERRMSG_MAX];
};

static int ps__fail(ps_client_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int ps__fail(ps_client_t *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
  va_end(ap);
  return code;
}

static void ps__cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                                uint64_t deadline_ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(deadline_ms / 1000);
  ts.tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
  pthread_cond_timedwait(cv, mu, &ts);
}

static int ps__cond_init(pthread_cond_t *cv) {
  /* Deadlines are on the monotonic clock (common/time.h); a wall-clock
   * condvar would stretch or cut waits when the clock is stepped. */
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return -1;
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(cv, &attr);
  pthread_condattr_destroy(&attr);
  return rc == 0 ? 0 : -1;
}

static void ps__wake_caller(ps_client_t *c) {
  uint64_t one = 1;
  ssize_t w = write(c->wake_fd, &one, sizeof(one));
  (void)w; /* EAGAIN: the counter is already non-zero, the caller wakes */
}

static void ps__drain_wake(ps_client_t *c) {
  uint64_t n;
  ssize_t r = read(c->wake_fd, &n, sizeof(n));
  (void)r;
}

/* ---- background thread ------------------------------------------------ */

static void ps__member_registered_cb(ps_member_t *m, uint32_t node_id,
                                     uint32_t rank, uint32_t num_workers,
                                     void *arg) {
  ps_client_t *c = arg;
  pthread_mutex_lock(&c->mu);
  c->shared.registered = 1;
  c->shared.node_id = node_id;
  c->shared.rank = rank;
  c->shared.num_workers = num_workers;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void ps__member_view_cb(ps_member_t *m, ps_view_t *view, void *arg) {
  ps_client_t *c = arg;
  ps_view_t *old;
  if (c->thread_done_sent) {
    const ps_node_t *me = ps_view_node(view, ps_member_node_id(m));
    if (me == NULL || me->state == PS__NODE_STATE__NODE_STATE_DONE ||
        me->state == PS__NODE_STATE__NODE_STATE_LEFT)
      c->thread_farewell_taken = 1;
  }
  pthread_mutex_lock(&c->mu);
  /* Only the newest view matters to the caller; one it never took is
   * superseded. */
  old = c->shared.view;
  c->shared.view = view;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  ps_view_destroy(&old);
  ps__wake_caller(c);
}

static void ps__member_shutdown_cb(ps_member_t *m, int status,
                                   const char *reason, void *arg) {
  ps_client_t *c = arg;
  c->thread_farewell_taken = 1;
  pthread_mutex_lock(&c->mu);
  if (!c->shared.shutdown) {
    c->shared.shutdown = 1;
    c->shared.shutdown_status = status;
    snprintf(c->shared.shutdown_reason, sizeof(c->shared.shutdown_reason), "%s",
             reason ? reason : "");
  }
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  ps__wake_caller(c);
  PS_INFO("client_shutdown", "status=%s reason=\"%s\"", ps_err_name(status),
          reason ? reason : "");
}

static void ps__farewell_timer_cb(uv_timer_t *t) {
  ps_client_t *c = t->data;
  if (c->member && c->thread_done_sent && !c->thread_farewell_taken &&
      ps_now_ms() < c->farewell_deadline_ms)
    return;
  if (c->member && c->thread_done_sent && !c->thread_farewell_taken)
    PS_WARN("client_farewell_unconfirmed", "scheduler=%s wait_ms=%d",
            c->scheduler, PS__FAREWELL_WAIT_MS);
  ps_member_destroy(&c->member);
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, NULL);
  uv_close((uv_handle_t *)&c->async, NULL);
}

static void ps__thread_async_cb(uv_async_t *h) {
  ps_client_t *c = h->data;
  pthread_mutex_lock(&c->mu);
  int stop = c->shared.stop;
  int done = c->shared.done;
  int leave = c->shared.leave;
  uint64_t clock = c->shared.clock;
  pthread_mutex_unlock(&c->mu);

  if (c->member && clock != c->thread_clock) {
    ps_member_set_clock(c->member, clock);
    c->thread_clock = clock;
  }
  /* Done goes out before the member is destroyed in the same callback; the
   * member lingers its socket after a Done, so a destroy right after
   * ps_client_done still delivers it. It travels on the member's link so the
   * scheduler sees it where it sees this worker's heartbeats. */
  if (c->member && leave && !c->thread_done_sent) {
    ps_member_send_leave(c->member, c->shared.leave_reason);
    c->thread_done_sent = 1;
  }
  if (c->member && done && !c->thread_done_sent) {
    ps_member_send_done(c->member);
    c->thread_done_sent = 1;
  }
  if (stop && !c->thread_stopping) {
    c->thread_stopping = 1;
    /* Several workers finishing together each move the view on, and a Done
     * sent at the old epoch is refused as stale; the member resends it,
     * but only while it exists. So it stays until the Done is taken (or a
     * bounded wait passes: a scheduler that is gone answers nothing). The
     * member is never destroyed from inside its own callbacks, hence the
     * timer. */
    c->farewell_deadline_ms = ps_now_ms() + PS__FAREWELL_WAIT_MS;
    uv_timer_start(&c->farewell_timer, ps__farewell_timer_cb, 0, 10);
  }
}

static void *ps__thread_main(void *arg) {
  ps_client_t *c = arg;
  /* Runs until the stop request has closed the member and the async
   * handle, so every close callback has run when the thread ends. */
  uv_run(&c->loop, UV_RUN_DEFAULT);
  return NULL;
}

static void ps__thread_poke(ps_client_t *c) {
  if (c->async_ready) uv_async_send(&c->async);
}

/* ---- views and connections (calling thread) ----------------------------- */

static void ps__conn_close(ps__conn_t *k) {
  if (k->sock) zmq_close(k->sock);
  k->sock = NULL;
  k->inflight = 0;
}

static ps__conn_t *ps__conn_find(ps_client_t *c, uint32_t server_id) {
  for (size_t i = 0; i < c->nconns; i++)
    if (c->conns[i].server_id == server_id) return &c->conns[i];
  return NULL;
}

/* Returns the open socket to server_id, connecting it if needed. */
static int ps__conn_get(ps_client_t *c, uint32_t server_id, ps__conn_t **out) {
  const ps_node_t *node = ps_view_node(c->view, server_id);
  if (node == NULL || node->address[0] == '\0')
    return ps__fail(c, PS_ERR_PEER,
                    "server %u has no address in view epoch %" PRIu64,
                    server_id, c->view->epoch);
  ps__conn_t *k = ps__conn_find(c, server_id);
  if (k && k->sock && strcmp(k->address, node->address) == 0) {
    *out = k;
    return PS_OK;
  }
  if (k == NULL) {
    if (c->nconns == c->conns_cap) {
      size_t cap = c->conns_cap ? c->conns_cap * 2 : 8;
      ps__conn_t *n = realloc(c->conns, cap * sizeof(*n));
      if (n == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
      c->conns = n;
      c->conns_cap = cap;
    }
    k = &c->conns[c->nconns];
    memset(k, 0, sizeof(*k));
    k->slots = calloc((size_t)c->opts.window, sizeof(*k->slots));
    if (k->slots == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    c->nconns++;
    k->server_id = server_id;
  }
  ps__conn_close(k);
  snprintf(k->address, sizeof(k->address), "%s", node->address);
  void *s = zmq_socket(c->zctx, ZMQ_DEALER);
  if (s == NULL)
    return ps__fail(c, PS_ERR_ZMQ, "server %u (%s): socket: %s", server_id,
                    node->address, zmq_strerror(errno));
  if (ps_zsock_configure(s) != PS_OK || zmq_connect(s, node->address) != 0) {
    int e = errno;
    zmq_close(s);
    return ps__fail(c, PS_ERR_ZMQ, "server %u (%s): cannot connect: %s",
                    server_id, node->address, zmq_strerror(e));
  }
  k->sock = s;
  k->gen = ++c->conn_gen;
  k->inflight = 0;
  PS_DEBUG("client_connect", "server=%u addr=%s", server_id, node->address);
  *out = k;
  return PS_OK;
}

static int ps__conn_alive(ps_client_t *c, uint32_t server_id, uint64_t gen) {
  ps__conn_t *k = ps__conn_find(c, server_id);
  return k && k->sock && k->gen == gen;
}

/* Closes the sockets the new view makes useless: servers gone or moved. */
static void ps__conns_prune(ps_client_t *c) {
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    const ps_node_t *node = ps_view_node(c->view, k->server_id);
    if (node == NULL || node->role != PS__ROLE__ROLE_SERVER ||
        strcmp(node->address, k->address) != 0) {
      ps__conn_close(k);
      k->gen = 0;
    }
  }
}

/* Takes the newest view from the background thread, if there is one, and
 * reports a shutdown. Returns 1 if the view changed, 0 if not, or
 * PS_ERR_SHUTDOWN with errmsg set. */
static int ps__refresh(ps_client_t *c) {
  ps_view_t *fresh;
  pthread_mutex_lock(&c->mu);
  fresh = c->shared.view;
  c->shared.view = NULL;
  int shutdown = c->shared.shutdown;
  int status = c->shared.shutdown_status;
  char reason[sizeof(c->shared.shutdown_reason)];
  if (shutdown) memcpy(reason, c->shared.shutdown_reason, sizeof(reason));
  c->node_id = c->shared.node_id;
  c->rank = c->shared.rank;
  c->num_workers = c->shared.num_workers;
  pthread_mutex_unlock(&c->mu);

  int changed = 0;
  if (fresh) {
    PS_DEBUG("client_view",
             "epoch=%" PRIu64 " prev_epoch=%" PRIu64 " ranges=%zu",
             fresh->epoch, c->view ? c->view->epoch : 0, fresh->nranges);
    ps_view_destroy(&c->view);
    c->view = fresh;
    c->view_gen++;
    ps__conns_prune(c);
    changed = 1;
  }
  if (shutdown)
    return ps__fail(c, PS_ERR_SHUTDOWN,
                    "scheduler %s shut the cluster down "
                    "(%s): %s",
                    c->scheduler, ps_err_name(status), reason);
  return changed;
}

static const char *ps__server_addr(ps_client_t *c, uint32_t server_id) {
  ps__conn_t *k = ps__conn_find(c, server_id);
  if (k && k->address[0]) return k->address;
  const ps_node_t *node = c->view ? ps_view_node(c->view, server_id) : NULL;
  return node ? node->address : "?";
}

/* ---- calls: pool, tickets, release accounting --------------------------- */

static void ps__op_drop_held(ps__op_t *op) {
  for (size_t i = 0; i < op->nheld; i++) zmq_msg_close(&op->held[i]);
  op->nheld = 0;
}

static void ps__op_free(ps__op_t *op) {
  ps__op_drop_held(op);
  free(op->held);
  free(op->spans);
  free(op->pieces);
  free(op);
}

/* Keeps the payload frames of a zero-copy pull's reply for piece p. A frame
 * ZeroMQ left at an odd address inside its receive buffer (small messages)
 * is copied into one of its own, so every span is a float array. */
static int ps__op_hold(ps_client_t *c, ps__op_t *op, const ps__piece_t *p,
                       ps_msg_t *m) {
  if (op->nheld + (size_t)m->npayload > op->held_cap) {
    size_t cap = op->held_cap ? 2 * op->held_cap : 16;
    while (cap < op->nheld + (size_t)m->npayload) cap *= 2;
    zmq_msg_t *held = realloc(op->held, cap * sizeof(*held));
    if (held == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    op->held = held;
    ps_client_span_t *spans = realloc(op->spans, cap * sizeof(*spans));
    if (spans == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    op->spans = spans;
    op->held_cap = cap;
  }
  uint64_t key = p->key_begin;
  for (int i = 0; i < m->npayload; i++) {
    zmq_msg_t *h = &op->held[op->nheld];
    size_t bytes = zmq_msg_size(&m->payload[i]);
    if ((uintptr_t)zmq_msg_data(&m->payload[i]) % _Alignof(float) == 0) {
      zmq_msg_init(h);
      zmq_msg_move(h, &m->payload[i]);
    } else {
      if (zmq_msg_init_size(h, bytes) != 0)
        return ps__fail(c, PS_ERR_NOMEM, "out of memory");
      memcpy(zmq_msg_data(h), zmq_msg_data(&m->payload[i]), bytes);
    }
    ps_client_span_t *sp = &op->spans[op->nheld++];
    sp->key_begin = key;
    sp->count = bytes / sizeof(float);
    sp->values = zmq_msg_data(h);
    key += sp->count;
  }
  return PS_OK;
}

static ps__op_t *ps__op_find_ticket(ps_client_t *c, uint64_t ticket,
                                    size_t *index) {
  for (size_t i = 0; i < c->nops; i++)
    if (c->ops[i]->ticket == ticket) {
      if (index) *index = i;
      return c->ops[i];
    }
  return NULL;
}

/* A pooled call, registered as pending under a fresh ticket. */
static int ps__op_new(ps_client_t *c, ps__op_t **out) {
  if (c->nops >= PS_CLIENT_MAX_PENDING)
    return ps__fail(c, PS_ERR_REFUSED,
                    "%d calls are pending already; wait for some first",
                    PS_CLIENT_MAX_PENDING);
  if (c->nops == c->ops_cap) {
    size_t cap = c->ops_cap ? 2 * c->ops_cap : 16;
    ps__op_t **grown = realloc(c->ops, cap * sizeof(*grown));
    if (grown == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    c->ops = grown;
    c->ops_cap = cap;
  }
  ps__op_t *op = c->free_ops;
  if (op) {
    c->free_ops = op->next_free;
  } else if ((op = calloc(1, sizeof(*op))) == NULL) {
    return ps__fail(c, PS_ERR_NOMEM, "out of memory");
  }
  ps__piece_t *pieces = op->pieces;
  size_t cap = op->cap;
  memset(op, 0, offsetof(ps__op_t, unreleased));
  op->pieces = pieces;
  op->cap = cap;
  op->c = c;
  op->ticket = ++c->next_ticket;
  atomic_store(&op->unreleased, 0);
  op->next_free = NULL;
  op->nheld = 0;
  c->ops[c->nops++] = op;
  *out = op;
  return PS_OK;
}

/* Takes op off the pending list and back to the pool. */
static void ps__op_retire(ps_client_t *c, ps__op_t *op) {
  size_t i;
  ps__op_drop_held(op);
  if (ps__op_find_ticket(c, op->ticket, &i)) {
    memmove(&c->ops[i], &c->ops[i + 1], (c->nops - i - 1) * sizeof(*c->ops));
    c->nops--;
  }
  op->next_free = c->free_ops;
  c->free_ops = op;
}

/* ZeroMQ's I/O thread is done with one push frame of the call. Only the
 * last one takes the lock, to wake a waiter in ps__op_settle. */
static void ps__payload_released_cb(void *data, void *hint) {
  ps__op_t *op = hint;
  if (atomic_fetch_sub_explicit(&op->unreleased, 1, memory_order_acq_rel) ==
      1) {
    ps_client_t *c = op->c;
    pthread_mutex_lock(&c->rel_mu);
    pthread_cond_broadcast(&c->rel_cv);
    pthread_mutex_unlock(&c->rel_mu);
  }
}

static uint64_t ps__op_unreleased(ps__op_t *op) {
  return atomic_load_explicit(&op->unreleased, memory_order_acquire);
}

static void ps__op_fail(ps_client_t *c, ps__op_t *op, int status,
                        const char *msg);

/* Returns once ZeroMQ holds none of the call's push values, so the caller
 * may reuse them. Frames that reached their server were released by the
 * I/O thread right after the write, before the ack came back; frames
 * still queued (a server that never connected, a socket abandoned after a
 * view change) are only released when their socket closes, so after a
 * short grace every data socket is closed (they reconnect on the next
 * call), which fails the other calls with requests on them. ZeroMQ frees a
 * closed socket's queued frames on its own threads, so the final wait does
 * not depend on the network. */
static void ps__op_settle(ps_client_t *c, ps__op_t *op) {
  if (ps__op_unreleased(op) == 0) return;
  uint64_t grace = ps_now_ms() + PS__RELEASE_GRACE_MS;
  pthread_mutex_lock(&c->rel_mu);
  while (ps__op_unreleased(op) > 0 && ps_now_ms() < grace)
    ps__cond_wait_until(&c->rel_cv, &c->rel_mu, grace);
  uint64_t held = ps__op_unreleased(op);
  pthread_mutex_unlock(&c->rel_mu);
  if (held == 0) return;

  PS_DEBUG("client_release_close", "frames=%" PRIu64, held);
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    /* Failing a call frees its slots, so look again from the start. */
    for (int j = 0; j < k->inflight;) {
      ps__op_t *other = k->slots[j].op;
      if (other == op || other->finished) {
        j++;
        continue;
      }
      ps__op_fail(c, other, PS_ERR_PEER,
                  "connection reset to release the frames of a failed call");
      j = 0;
    }
    ps__conn_close(k);
    k->gen = 0;
  }
  uint64_t warn_at = ps_now_ms() + 1000;
  pthread_mutex_lock(&c->rel_mu);
  while (ps__op_unreleased(op) > 0) {
    ps__cond_wait_until(&c->rel_cv, &c->rel_mu, warn_at);
    if (ps__op_unreleased(op) > 0 && ps_now_ms() >= warn_at) {
      PS_WARN("client_release_slow", "frames=%" PRIu64, ps__op_unreleased(op));
      warn_at = ps_now_ms() + 1000;
    }
  }
  pthread_mutex_unlock(&c->rel_mu);
}

/* ---- pieces and the window ----------------------------------------------- */

static int ps__op_append(ps_client_t *c, ps__op_t *op, uint64_t key_begin,
                         uint64_t count, uint64_t seq, uint32_t server_id) {
  if (op->npieces == op->cap) {
    size_t cap = op->cap ? op->cap * 2 : 8;
    ps__piece_t *n = realloc(op->pieces, cap * sizeof(*n));
    if (n == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    op->pieces = n;
    op->cap = cap;
  }
  ps__piece_t *p = &op->pieces[op->npieces++];
  memset(p, 0, sizeof(*p));
  p->key_begin = key_begin;
  p->count = count;
  p->seq = seq;
  p->server_id = server_id;
  p->state = PS__PIECE_QUEUED;
  op->pending++;
  return PS_OK;
}

/* Cuts [key_begin, key_begin + count) at the current view's range
 * boundaries, and each range's part into chunks at multiples of chunk_keys
 * from the range's begin (so chunks line up with the server's blocks
 * whatever slice is asked for). seq 0 gives every piece a fresh sequence
 * number (pushes); otherwise the pieces inherit seq (a re-split resend). */
static int ps__op_split(ps_client_t *c, ps__op_t *op, uint64_t key_begin,
                        uint64_t count, uint64_t seq) {
  uint64_t key = key_begin, end = key_begin + count;
  while (key < end) {
    int r = ps_view_find_range(c->view, key);
    if (r < 0)
      return ps__fail(c, PS_ERR_INVAL,
                      "key %" PRIu64 " is in no range of view epoch %" PRIu64,
                      key, c->view->epoch);
    const ps_range_t *rg = &c->view->ranges[r];
    uint64_t piece_end = rg->end < end ? rg->end : end;
    if (c->chunk_keys) {
      uint64_t chunk_end =
          rg->begin + ((key - rg->begin) / c->chunk_keys + 1) * c->chunk_keys;
      if (chunk_end < piece_end) piece_end = chunk_end;
    }
    uint64_t piece_seq = seq;
    if (op->is_push && piece_seq == 0) piece_seq = ++c->next_seq;
    int rc =
        ps__op_append(c, op, key, piece_end - key, piece_seq, rg->server_id);
    if (rc != PS_OK) return rc;
    key = piece_end;
  }
  return PS_OK;
}

/* The one server owning all of [begin, begin + count) in the current view,
 * or -1 if none does. */
static int64_t ps__span_owner(const ps_view_t *v, uint64_t begin,
                              uint64_t count) {
  int r = ps_view_find_range(v, begin);
  if (r < 0 || v->ranges[r].end < begin + count) return -1;
  return v->ranges[r].server_id;
}

/* Frees the window slot of piece index i of op, if it holds one: the piece
 * was answered, or is given up. A late reply then matches nothing and is
 * dropped. */
static void ps__piece_unsend(ps_client_t *c, ps__op_t *op, size_t i) {
  const ps__piece_t *p = &op->pieces[i];
  ps__conn_t *k = ps__conn_find(c, p->server_id);
  if (k == NULL || k->sock == NULL || k->gen != p->conn_gen) return;
  for (int j = 0; j < k->inflight; j++) {
    if (k->slots[j].request_id != p->request_id) continue;
    k->slots[j] = k->slots[--k->inflight];
    return;
  }
}

static void ps__piece_set(ps__op_t *op, ps__piece_t *p, ps__piece_state_t st) {
  int was_open = p->state != PS__PIECE_DONE && p->state != PS__PIECE_SUPERSEDED;
  int is_open = st != PS__PIECE_DONE && st != PS__PIECE_SUPERSEDED;
  if (p->state == PS__PIECE_STALE) op->nstale--;
  if (st == PS__PIECE_STALE) op->nstale++;
  if (was_open && !is_open) op->pending--;
  p->state = st;
}

/* Ends op with status; its requests still in flight are given up. */
static void ps__op_fail(ps_client_t *c, ps__op_t *op, int status,
                        const char *msg) {
  if (op->finished) return;
  for (size_t i = 0; i < op->npieces; i++)
    if (op->pieces[i].state == PS__PIECE_SENT) ps__piece_unsend(c, op, i);
  op->finished = 1;
  op->status = status;
  snprintf(op->errmsg, sizeof(op->errmsg), "%s", msg);
}

/* The same with the client's last error message (set by ps__fail). */
static void ps__op_fail_errmsg(ps_client_t *c, ps__op_t *op, int status) {
  ps__op_fail(c, op, status, c->errmsg);
}

static void ps__fail_all(ps_client_t *c, int status) {
  for (size_t i = 0; i < c->nops; i++) ps__op_fail_errmsg(c, c->ops[i], status);
}

/* The resend timer: a request on k has waited resend_ms for its reply. It
 * may have been lost with a server that was stopped, restarted or cut off,
 * and ZeroMQ does not say so; the only sure way to get an answer is to ask
 * again on a new connection (the old one may hold a half-sent queue). So
 * the socket is closed and every piece in flight on it is queued again,
 * to be sent to the owner the current view names, with its sequence
 * number: one the server applied already comes back as a duplicate ack.
 * Replies to the old requests die with the socket. */
static void ps__conn_resend(ps_client_t *c, ps__conn_t *k, uint64_t now) {
  size_t n = 0;
  uint64_t oldest = now;
  for (int j = 0; j < k->inflight; j++) {
    ps__slot_t *sl = &k->slots[j];
    ps__op_t *op = sl->op;
    ps__piece_t *p = &op->pieces[sl->piece];
    if (op->finished || p->state != PS__PIECE_SENT ||
        p->request_id != sl->request_id)
      continue;
    ps__piece_set(op, p, PS__PIECE_QUEUED);
    if (sl->piece < op->scan_from) op->scan_from = sl->piece;
    if (sl->sent_at_ms < oldest) oldest = sl->sent_at_ms;
    n++;
  }
  PS_INFO("client_resend",
          "server=%u addr=%s pieces=%zu waited_ms=%" PRIu64 " resend_ms=%d",
          k->server_id, k->address, n, now - oldest, c->opts.resend_ms);
  c->resends += n;
  ps__conn_close(k);
  k->gen = 0;
}

/* Runs the resend timer over every connection; returns the earliest time
 * it must run again (UINT64_MAX: nothing in flight). */
static uint64_t ps__resend_due(ps_client_t *c, uint64_t now) {
  uint64_t next = UINT64_MAX;
  if (c->opts.resend_ms <= 0) return next;
  uint64_t after = (uint64_t)c->opts.resend_ms;
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    if (k->sock == NULL || k->inflight == 0) continue;
    /* Only pushes count: a BSP pull waits at the server for its step as
     * long as the slowest worker takes, while a push is answered as soon
     * as the backups hold it. */
    uint64_t oldest = UINT64_MAX;
    for (int j = 0; j < k->inflight; j++)
      if (k->slots[j].op->is_push && k->slots[j].sent_at_ms < oldest)
        oldest = k->slots[j].sent_at_ms;
    if (oldest == UINT64_MAX) continue;
    if (now >= oldest + after)
      ps__conn_resend(c, k, now);
    else if (oldest + after < next)
      next = oldest + after;
  }
  return next;
}

/* After a view change: pieces whose keys moved to another server, or whose
 * socket was closed because the server moved, are cut again by the new
 * view. Pieces still in flight to an unchanged server keep waiting: the
 * server answers them or says STALE_EPOCH. */
static int ps__op_rebase(ps_client_t *c, ps__op_t *op) {
  size_t n = op->npieces; /* re-split pieces are appended past n */
  for (size_t i = 0; i < n; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state == PS__PIECE_DONE || p->state == PS__PIECE_SUPERSEDED)
      continue;
    int owned = ps__span_owner(c->view, p->key_begin, p->count) ==
                (int64_t)p->server_id;
    if (owned && (p->state != PS__PIECE_SENT ||
                  ps__conn_alive(c, p->server_id, p->conn_gen)))
      continue;
    if (p->state == PS__PIECE_SENT) ps__piece_unsend(c, op, i);
    ps__piece_set(op, p, PS__PIECE_SUPERSEDED);
    uint64_t begin = p->key_begin, count = p->count, seq = p->seq;
    /* p may move: ps__op_split reallocates. */
    int rc = ps__op_split(c, op, begin, count, seq);
    if (rc != PS_OK) return rc;
  }
  return PS_OK;
}

static int ps__op_send_piece(ps_client_t *c, ps__op_t *op, size_t i,
                             ps__conn_t *k) {
  ps__piece_t *p = &op->pieces[i];
  Ps__Envelope env = PS__ENVELOPE__INIT;
  Ps__Push push = PS__PUSH__INIT;
  Ps__Pull pull = PS__PULL__INIT;
  zmq_msg_t payload;
  int npayload = 0;

  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  if (op->is_push) {
    push.key_begin = p->key_begin;
    push.count = p->count;
    push.clock = op->clock;
    push.seq = p->seq;
    env.body_case = PS__ENVELOPE__BODY_PUSH;
    env.push = &push;
    /* The values are the caller's: see ps__op_settle for why this is safe
     * and what happens to frames of a call that failed. */
    const float *src = op->values + (p->key_begin - op->key_begin);
    atomic_fetch_add_explicit(&op->unreleased, 1, memory_order_relaxed);
    if (ps_payload_wrap(&payload, (void *)src, p->count * sizeof(float),
                        ps__payload_released_cb, op) != PS_OK) {
      ps__payload_released_cb(NULL, op);
      return ps__fail(c, PS_ERR_ZMQ,
                      "server %u (%s): cannot wrap %" PRIu64 " values: %s",
                      p->server_id, k->address, p->count, zmq_strerror(errno));
    }
    npayload = 1;
  } else {
    pull.key_begin = p->key_begin;
    pull.count = p->count;
    pull.clock = op->clock;
    env.body_case = PS__ENVELOPE__BODY_PULL;
    env.pull = &pull;
  }
  int rc =
      ps_msg_send(k->sock, NULL, &env, npayload ? &payload : NULL, npayload);
  if (rc != PS_OK)
    return ps__fail(c, rc, "server %u (%s): send failed: %s", p->server_id,
                    k->address, zmq_strerror(errno));
  ps__piece_set(op, p, PS__PIECE_SENT);
  p->request_id = env.request_id;
  p->epoch = env.epoch;
  p->view_gen = c->view_gen;
  p->conn_gen = k->gen;
  p->retry_at_ms = 0;
  k->slots[k->inflight++] = (ps__slot_t){env.request_id, op, i, ps_now_ms()};
  return PS_OK;
}

/* Sends every piece of op that may go now: queued ones, and stale ones once
 * a newer view is here (or their retry time passed), within each server's
 * window. *room is the number of free window slots left in all; the scan
 * stops when none is. */
static int ps__op_send_ready(ps_client_t *c, ps__op_t *op, uint64_t now,
                             int64_t *room) {
  size_t first_left = op->npieces; /* first piece still to send */
  size_t i;
  for (i = op->scan_from; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state != PS__PIECE_QUEUED && p->state != PS__PIECE_STALE) continue;
    if (*room <= 0) break;
    if (p->state == PS__PIECE_STALE && c->view_gen <= p->view_gen &&
        (p->retry_at_ms == 0 || now < p->retry_at_ms)) {
      if (first_left > i) first_left = i;
      continue;
    }
    ps__conn_t *k = NULL;
    int rc = ps__conn_get(c, p->server_id, &k);
    if (rc != PS_OK || k == NULL) return rc != PS_OK ? rc : PS_ERR_PEER;
    if (k->inflight >= c->opts.window) {
      if (first_left > i) first_left = i;
      continue;
    }
    if ((rc = ps__op_send_piece(c, op, i, k)) != PS_OK) return rc;
    (*room)--;
  }
  if (i < op->npieces && first_left > i) first_left = i;
  op->scan_from = first_left;
  return PS_OK;
}

/* Free window slots over every server of the view: connected ones by their
 * count, others a whole window. */
static int64_t ps__window_room(ps_client_t *c) {
  int64_t room = 0;
  for (size_t i = 0; i < c->view->nranges; i++) {
    ps__conn_t *k = ps__conn_find(c, c->view->ranges[i].server_id);
    room += k && k->sock ? c->opts.window - k->inflight : c->opts.window;
  }
  return room;
}

/* Handles one reply from server k. Returns PS_OK, or the error that ends
 * the call the reply belongs to (already recorded on it). */
static void ps__on_reply(ps_client_t *c, ps__conn_t *k, ps_msg_t *m, int status,
                         const char *reason) {
  ps__op_t *op = NULL;
  size_t pi = 0;
  for (int j = 0; m->request_id && j < k->inflight; j++) {
    if (k->slots[j].request_id != m->request_id) continue;
    op = k->slots[j].op;
    pi = k->slots[j].piece;
    k->slots[j] = k->slots[--k->inflight];
    break;
  }
  if (op == NULL) {
    /* A reply to an earlier call that timed out, or to a piece already
     * resent: the request ids tell them apart, so it is just dropped. */
    PS_DEBUG("client_late_reply", "server=%u request=%" PRIu64 " status=%s",
             k->server_id, m->request_id, ps_err_name(status));
    return;
  }
  ps__piece_t *p = &op->pieces[pi];
  const char *what = op->is_push ? "push" : "pull";
  int rc = PS_OK;
  if (status != PS_OK) {
    rc = ps__fail(c, PS_ERR_PROTO, "server %u (%s): malformed %s reply: %s",
                  k->server_id, k->address, what, reason);
    ps__op_fail_errmsg(c, op, rc);
    return;
  }
  Ps__Envelope *env = m->env;
  if (env->body_case == PS__ENVELOPE__BODY_ERROR) {
    int code = env->error->code;
    const char *text = env->error->message ? env->error->message : "";
    /* NOT_READY: the server has not adopted its first view yet, which is
     * the same as being behind us. */
    if (code == PS_ERR_STALE_EPOCH || code == PS_ERR_NOT_READY) {
      ps__piece_set(op, p, PS__PIECE_STALE);
      if (pi < op->scan_from) op->scan_from = pi;
      /* A server behind us catches up by itself; one ahead means our view
       * is old, and the background thread brings the new one. */
      p->retry_at_ms = code == PS_ERR_NOT_READY || env->epoch < p->epoch
                           ? ps_now_ms() + PS__STALE_RETRY_MS
                           : 0;
      PS_INFO("client_stale_epoch",
              "server=%u our_epoch=%" PRIu64 " server_epoch=%" PRIu64
              " keys=%" PRIu64 "+%" PRIu64,
              k->server_id, p->epoch, env->epoch, p->key_begin, p->count);
      return;
    }
    if (code >= 0) code = PS_ERR_PROTO; /* an Error must carry a failure */
    rc = ps__fail(c, code, "server %u (%s): %s: %s", k->server_id, k->address,
                  ps_err_name(code), text);
    ps__op_fail_errmsg(c, op, rc);
    return;
  }
  if (op->is_push) {
    if (env->body_case != PS__ENVELOPE__BODY_ACK) {
      rc = ps__fail(c, PS_ERR_PROTO, "server %u (%s): %s reply to a push",
                    k->server_id, k->address, ps_body_name(env->body_case));
      ps__op_fail_errmsg(c, op, rc);
      return;
    }
    if (env->ack->duplicate) {
      /* A resend of a piece the server had applied: acked, not applied
       * again. Counted, as a measure of how much failover resent. */
      c->duplicate_acks++;
      PS_DEBUG("client_duplicate_ack",
               "server=%u keys=%" PRIu64 "+%" PRIu64 " seq=%" PRIu64,
               k->server_id, p->key_begin, p->count, p->seq);
    }
  } else {
    if (env->body_case != PS__ENVELOPE__BODY_PULL_REPLY) {
      rc = ps__fail(c, PS_ERR_PROTO, "server %u (%s): %s reply to a pull",
                    k->server_id, k->address, ps_body_name(env->body_case));
      ps__op_fail_errmsg(c, op, rc);
      return;
    }
    const Ps__PullReply *r = env->pull_reply;
    if (r->key_begin != p->key_begin || r->count != p->count) {
      rc = ps__fail(c, PS_ERR_PROTO,
                    "server %u (%s): pull reply for keys %" PRIu64 "+%" PRIu64
                    " to a request for %" PRIu64 "+%" PRIu64,
                    k->server_id, k->address, r->key_begin, r->count,
                    p->key_begin, p->count);
      ps__op_fail_errmsg(c, op, rc);
      return;
    }
    /* ps_msg_recv checked the frames against count; this guards the copy
     * against a change there. */
    size_t bytes = p->count * sizeof(float);
    if (m->npayload < 1 || ps_msg_payload_bytes(m) != bytes) {
      rc = ps__fail(c, PS_ERR_PROTO,
                    "server %u (%s): pull reply payload is not %zu bytes",
                    k->server_id, k->address, bytes);
      ps__op_fail_errmsg(c, op, rc);
      return;
    }
    if (op->hold) {
      rc = ps__op_hold(c, op, p, m);
      if (rc != PS_OK) {
        ps__op_fail_errmsg(c, op, rc);
        return;
      }
    } else {
      /* The one copy of a pull: from ZeroMQ's receive buffers into the
       * caller's array, frame by frame. */
      ps_msg_payload_gather(m, op->out + (p->key_begin - op->key_begin));
    }
  }
  ps__piece_set(op, p, PS__PIECE_DONE);
}

/* Receives every reply waiting on k. Returns how many, or a negative
 * ps_err_t when the socket failed (errmsg set). */
static int ps__drain(ps_client_t *c, ps__conn_t *k) {
  int n = 0;
  while (k->sock) {
    ps_msg_t m;
    char reason[256] = "";
    int rc = ps_msg_recv(k->sock, 0, &ps_frame_default_limits, &m, reason,
                         sizeof(reason));
    if (rc == PS_ERR_TIMEOUT) return n;
    if (rc != PS_OK && rc != PS_ERR_PROTO && rc != PS_ERR_VERSION &&
        rc != PS_ERR_TOO_BIG) {
      ps_msg_close(&m);
      return ps__fail(c, rc, "server %u (%s): receive failed: %s", k->server_id,
                      k->address, zmq_strerror(errno));
    }
    ps__on_reply(c, k, &m, rc, reason);
    ps_msg_close(&m);
    n++;
  }
  return n;
}

/* The range of the current view that holds key, if the view says it is
 * lost: its primary is dead and none of its backups is alive (the scheduler
 * had no replica to promote). NULL otherwise. */
static const ps_range_t *ps__range_lost(const ps_client_t *c, uint64_t key) {
  int r = ps_view_find_range(c->view, key);
  if (r < 0) return NULL;
  const ps_range_t *rg = &c->view->ranges[r];
  const ps_node_t *primary = ps_view_node(c->view, rg->server_id);
  if (primary == NULL || primary->state != PS__NODE_STATE__NODE_STATE_DEAD)
    return NULL;
  for (uint32_t b = 0; b < rg->nbackups && b < PS_MAX_REPLICAS - 1; b++) {
    const ps_node_t *n = ps_view_node(c->view, rg->backups[b]);
    if (n && n->state == PS__NODE_STATE__NODE_STATE_ALIVE) return NULL;
  }
  return rg;
}

static void ps__op_timeout(ps_client_t *c, ps__op_t *op) {
  const char *what = op->is_push ? "push" : "pull";
  size_t missing = 0;
  ps__piece_t *first = NULL;
  const ps_range_t *lost = NULL;
  for (size_t i = 0; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state == PS__PIECE_DONE || p->state == PS__PIECE_SUPERSEDED)
      continue;
    if (first == NULL) first = p;
    if (lost == NULL) lost = ps__range_lost(c, p->key_begin);
    missing++;
  }
  int rc;
  if (lost) {
    /* Not a slow server: the cluster has no copy of these keys left, and
     * saying so beats a timeout that invites waiting longer. */
    const char *addr = ps__server_addr(c, lost->server_id);
    PS_WARN("client_unavailable",
            "op=%s server=%u addr=%s range=%" PRIu64 "-%" PRIu64
            " epoch=%" PRIu64 " timeout_ms=%d missing=%zu",
            what, lost->server_id, addr, lost->begin, lost->end, c->view->epoch,
            op->timeout_ms, missing);
    rc = ps__fail(c, PS_ERR_UNAVAILABLE,
                  "%s of keys [%" PRIu64 ", %" PRIu64
                  "): server %u (%s) is "
                  "dead and no live replica holds them (view epoch %" PRIu64
                  ", waited %d ms)",
                  what, lost->begin, lost->end, lost->server_id, addr,
                  c->view->epoch, op->timeout_ms);
    ps__op_fail_errmsg(c, op, rc);
    return;
  }
  uint32_t sid = first->server_id;
  const char *addr = ps__server_addr(c, sid);
  PS_WARN("client_timeout",
          "op=%s server=%u addr=%s keys=%" PRIu64 "+%" PRIu64
          " timeout_ms=%d missing=%zu",
          what, sid, addr, first->key_begin, first->count, op->timeout_ms,
          missing);
  if (first->state == PS__PIECE_STALE)
    rc = ps__fail(c, PS_ERR_TIMEOUT,
                  "server %u (%s) refused %s of keys %" PRIu64 "+%" PRIu64
                  " for a stale epoch and no newer view came within %d ms",
                  sid, addr, what, first->key_begin, first->count,
                  op->timeout_ms);
  else
    rc = ps__fail(c, PS_ERR_TIMEOUT,
                  "server %u (%s) did not answer %s of keys %" PRIu64
                  "+%" PRIu64 " within %d ms (%zu piece(s) unanswered)",
                  sid, addr, what, first->key_begin, first->count,
                  op->timeout_ms, missing);
  ps__op_fail_errmsg(c, op, rc);
}

/* The poll set lives on the client so a call does not allocate it. */
static int ps__poll_reserve(ps_client_t *c, size_t n) {
  if (n <= c->poll_cap) return PS_OK;
  zmq_pollitem_t *items = realloc(c->poll_items, n * sizeof(*items));
  if (items == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
  c->poll_items = items;
  ps__conn_t **conns = realloc(c->poll_conns, n * sizeof(*conns));
  if (conns == NULL) return ps__fail(c, PS_ERR_NOMEM, "out of memory");
  c->poll_conns = conns;
  c->poll_cap = n;
  return PS_OK;
}

/* 1 if a call has a piece that waits for window room. */
static int ps__any_queued(const ps_client_t *c) {
  for (size_t i = 0; i < c->nops; i++) {
    const ps__op_t *op = c->ops[i];
    if (!op->finished && op->scan_from < op->npieces) return 1;
  }
  return 0;
}

/* Runs the data plane for every pending call: takes a new view (re-cutting
 * what moved), sends what the windows allow, receives replies, ends calls
 * that are answered or past their deadline. Returns when target has
 * finished, or, with target NULL, once nothing more is ready without
 * waiting. Failures are recorded on the calls they end. */
static void ps__progress(ps_client_t *c, ps__op_t *target) {
  for (;;) {
    int changed = ps__refresh(c);
    if (changed < 0) {
      ps__fail_all(c, changed);
      return;
    }
    uint64_t now = ps_now_ms();
    uint64_t resend_at = ps__resend_due(c, now);
    int64_t room = ps__window_room(c);
    uint64_t wake_at = now + PS__POLL_SLICE_MS;
    if (resend_at < wake_at) wake_at = resend_at;
    for (size_t i = 0; i < c->nops; i++) {
      ps__op_t *op = c->ops[i];
      if (op->finished) continue;
      int rc = PS_OK;
      if (changed) rc = ps__op_rebase(c, op);
      if (rc == PS_OK && room > 0) rc = ps__op_send_ready(c, op, now, &room);
      if (rc != PS_OK) {
        ps__op_fail_errmsg(c, op, rc);
        continue;
      }
      if (op->pending == 0) {
        op->finished = 1;
        op->status = PS_OK;
        continue;
      }
      if (now >= op->deadline_ms) {
        ps__op_timeout(c, op);
        continue;
      }
      if (op->deadline_ms < wake_at) wake_at = op->deadline_ms;
      if (op->nstale == 0) continue;
      for (size_t j = op->scan_from; j < op->npieces; j++) {
        const ps__piece_t *p = &op->pieces[j];
        if (p->state == PS__PIECE_STALE && p->retry_at_ms &&
            p->retry_at_ms < wake_at)
          wake_at = p->retry_at_ms;
      }
    }
    if (target && target->finished) return;

    if (target == NULL) {
      /* From a start: the requests are out. Replies are taken now only if
       * calls wait behind full windows, so the pipeline moves on while the
       * caller computes; otherwise the next wait takes them, and a start
       * costs no failed receive (each is a system call in ZeroMQ). */
      if (room > 0 || !ps__any_queued(c)) return;
      int got = 0;
      for (size_t i = 0; i < c->nconns; i++) {
        if (c->conns[i].sock == NULL || c->conns[i].inflight == 0) continue;
        int n = ps__drain(c, &c->conns[i]);
        if (n < 0) {
          ps__fail_all(c, n);
          return;
        }
        got += n;
      }
      if (got) continue;
      return;
    }

    /* Poll first: zmq_poll returns at once when a reply is already waiting,
     * and only the sockets that have one are then drained. */
    if (ps__poll_reserve(c, c->nconns + 1) != PS_OK) {
      ps__fail_all(c, PS_ERR_NOMEM);
      return;
    }
    zmq_pollitem_t *items = c->poll_items;
    ps__conn_t **polled = c->poll_conns;
    int n = 0;
    items[n] = (zmq_pollitem_t){.fd = c->wake_fd, .events = ZMQ_POLLIN};
    polled[n++] = NULL;
    for (size_t i = 0; i < c->nconns; i++) {
      if (c->conns[i].sock == NULL || c->conns[i].inflight == 0) continue;
      items[n] =
          (zmq_pollitem_t){.socket = c->conns[i].sock, .events = ZMQ_POLLIN};
      polled[n++] = &c->conns[i];
    }
    now = ps_now_ms();
    long slice = wake_at > now ? (long)(wake_at - now) : 0;
    if (zmq_poll(items, n, slice) < 0 && errno != EINTR) {
      ps__fail(c, PS_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
      ps__fail_all(c, PS_ERR_ZMQ);
      return;
    }
    if (items[0].revents & ZMQ_POLLIN) ps__drain_wake(c);
    for (int i = 1; i < n; i++) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      int got = ps__drain(c, polled[i]);
      if (got < 0) {
        ps__fail_all(c, got);
        return;
      }
    }
  }
}

static int ps__check_keys(ps_client_t *c, const char *what, uint64_t key_begin,
                          uint64_t count, const void *buf) {
  int rc = ps__refresh(c);
  if (rc < 0) return rc;
  uint64_t total = c->view->model.total;
  if (count > 0 && buf == NULL)
    return ps__fail(c, PS_ERR_INVAL, "%s: NULL buffer for %" PRIu64 " keys",
                    what, count);
  if (key_begin > total || count > total - key_begin)
    return ps__fail(c, PS_ERR_INVAL,
                    "%s: keys %" PRIu64 "+%" PRIu64
                    " outside the model's key space [0, %" PRIu64 ")",
                    what, key_begin, count, total);
  return PS_OK;
}

static void ps__report_clock(ps_client_t *c, uint64_t clock) {
  if (clock <= c->last_clock) return;
  c->last_clock = clock;
  pthread_mutex_lock(&c->mu);
  c->shared.clock = clock;
  pthread_mutex_unlock(&c->mu);
  ps__thread_poke(c);
}

/* Starts one call; count 0 gives a call that is finished at once. */
static int ps__start(ps_client_t *c, int is_push, int hold, uint64_t key_begin,
                     uint64_t count, const float *values, float *out,
                     uint64_t clock, uint64_t *ticket) {
  if (ticket == NULL)
    return ps__fail(c, PS_ERR_INVAL, "%s: ticket is NULL",
                    is_push ? "push" : "pull");
  int rc = ps__check_keys(c, is_push ? "push" : "pull", key_begin, count,
                          is_push ? (const void *)values
                          : hold  ? (const void *)ticket
                                  : (const void *)out);
  if (rc != PS_OK) return rc;
  if (is_push) ps__report_clock(c, clock);
  ps__op_t *op = NULL;
  if ((rc = ps__op_new(c, &op)) != PS_OK) return rc;
  op->is_push = is_push;
  op->hold = hold;
  op->key_begin = key_begin;
  op->count = count;
  op->clock = clock;
  op->values = values;
  op->out = out;
  op->timeout_ms = c->opts.timeout_ms;
  op->deadline_ms = ps_now_ms() + (uint64_t)c->opts.timeout_ms;
  rc = ps__op_split(c, op, key_begin, count, 0);
  if (rc != PS_OK) {
    ps__op_retire(c, op);
    return rc;
  }
  *ticket = op->ticket;
  /* Send what the windows take now, so the requests are on the wire while
   * the caller goes on. */
  ps__progress(c, NULL);
  return PS_OK;
}

int ps_client_push_start(ps_client_t *c, uint64_t key_begin, uint64_t count,
                         const float *values, uint64_t clock,
                         uint64_t *ticket) {
  return ps__start(c, 1, 0, key_begin, count, values, NULL, clock, ticket);
}

int ps_client_pull_start(ps_client_t *c, uint64_t key_begin, uint64_t count,
                         float *out, uint64_t clock, uint64_t *ticket) {
  return ps__start(c, 0, 0, key_begin, count, NULL, out, clock, ticket);
}

int ps_client_pull_frames_start(ps_client_t *c, uint64_t key_begin,
                                uint64_t count, uint64_t clock,
                                uint64_t *ticket) {
  return ps__start(c, 0, 1, key_begin, count, NULL, NULL, clock, ticket);
}

static int ps__cmp_span(const void *a, const void *b) {
  const ps_client_span_t *x = a, *y = b;
  return x->key_begin < y->key_begin ? -1 : x->key_begin > y->key_begin;
}

int ps_client_wait_frames(ps_client_t *c, uint64_t ticket,
                          const ps_client_span_t **spans, size_t *nspans) {
  ps__op_t *op = ps__op_find_ticket(c, ticket, NULL);
  if (op == NULL || !op->hold || op->waited)
    return ps__fail(c, PS_ERR_INVAL,
                    "no zero-copy pull is pending with ticket %" PRIu64,
                    ticket);
  if (spans == NULL || nspans == NULL)
    return ps__fail(c, PS_ERR_INVAL, "wait_frames: spans or nspans is NULL");
  ps__progress(c, op);
  int rc = op->status;
  if (rc != PS_OK) {
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", op->errmsg);
    ps__op_retire(c, op);
    return rc;
  }
  /* Pieces are answered in any order; the caller gets them by key. */
  qsort(op->spans, op->nheld, sizeof(*op->spans), ps__cmp_span);
  op->waited = 1;
  *spans = op->spans;
  *nspans = op->nheld;
  return PS_OK;
}

void ps_client_release(ps_client_t *c, uint64_t ticket) {
  ps__op_t *op = ps__op_find_ticket(c, ticket, NULL);
  if (op && op->hold && op->waited) ps__op_retire(c, op);
}

int ps_client_wait(ps_client_t *c, uint64_t ticket) {
  ps__op_t *op = ps__op_find_ticket(c, ticket, NULL);
  if (op == NULL)
    return ps__fail(c, PS_ERR_INVAL, "no call is pending with ticket %" PRIu64,
                    ticket);
  ps__progress(c, op);
  if (op->is_push) ps__op_settle(c, op);
  int rc = op->status;
  if (rc != PS_OK) snprintf(c->errmsg, sizeof(c->errmsg), "%s", op->errmsg);
  ps__op_retire(c, op);
  return rc;
}

int ps_client_push(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   const float *values, uint64_t clock) {
  uint64_t ticket;
  int rc = ps_client_push_start(c, key_begin, count, values, clock, &ticket);
  return rc != PS_OK ? rc : ps_client_wait(c, ticket);
}

int ps_client_pull(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   float *out, uint64_t clock) {
  uint64_t ticket;
  int rc = ps_client_pull_start(c, key_begin, count, out, clock, &ticket);
  return rc != PS_OK ? rc : ps_client_wait(c, ticket);
}

static int ps__tensor(ps_client_t *c, const char *name,
                      const ps_tensor_spec_t **t) {
  int rc = ps__refresh(c);
  if (rc < 0) return rc;
  if (name == NULL) return ps__fail(c, PS_ERR_INVAL, "tensor name is NULL");
  *t = ps_model_tensor(&c->view->model, name);
  if (*t == NULL)
    return ps__fail(c, PS_ERR_INVAL, "no tensor \"%s\" in the model", name);
  return PS_OK;
}

int ps_client_push_tensor(ps_client_t *c, const char *name, const float *values,
                          uint64_t clock) {
  const ps_tensor_spec_t *t = NULL;
  int rc = ps__tensor(c, name, &t);
  if (rc != PS_OK || t == NULL) return rc;
  return ps_client_push(c, t->offset, t->length, values, clock);
}

int ps_client_pull_tensor(ps_client_t *c, const char *name, float *out,
                          uint64_t clock) {
  const ps_tensor_spec_t *t = NULL;
  int rc = ps__tensor(c, name, &t);
  if (rc != PS_OK || t == NULL) return rc;
  return ps_client_pull(c, t->offset, t->length, out, clock);
}

/* ---- sparse tables (issue #3) ------------------------------------------- */

/* A caller's key and where it came from, for sorting a copy. */
typedef struct {
  uint64_t key;
  size_t at;
} ps__skey_t;

static int ps__cmp_skey(const void *a, const void *b) {
  uint64_t x = ((const ps__skey_t *)a)->key, y = ((const ps__skey_t *)b)->key;
  return x < y ? -1 : x > y;
}

/* One server's share of a sparse call: keys [off, off + n) of the grouped
 * arrays, ascending. */
typedef struct {
  uint32_t server_id;
  size_t off, n;
  uint64_t request_id; /* 0: not in flight */
  int done;
  uint64_t retry_at_ms; /* refused as stale or not ready: resend then */
} ps__spiece_t;

static int ps__sparse_send(ps_client_t *c, int is_push, const char *table,
                           uint32_t dim, ps__spiece_t *p, const uint64_t *keys,
                           const float *vals, uint64_t clock) {
  ps__conn_t *k;
  int rc = ps__conn_get(c, p->server_id, &k);
  if (rc != PS_OK) return rc;
  /* Copies, not loans: the grouped arrays are freed when the call ends,
   * which may be before ZeroMQ sends a frame of a call that timed out. */
  zmq_msg_t frames[2];
  int nframes = 1;
  size_t kbytes = p->n * sizeof(uint64_t);
  if (zmq_msg_init_size(&frames[0], kbytes) != 0)
    return ps__fail(c, PS_ERR_NOMEM, "out of memory");
  memcpy(zmq_msg_data(&frames[0]), keys + p->off, kbytes);
  if (is_push) {
    size_t vbytes = p->n * dim * sizeof(float);
    if (zmq_msg_init_size(&frames[1], vbytes) != 0) {
      zmq_msg_close(&frames[0]);
      return ps__fail(c, PS_ERR_NOMEM, "out of memory");
    }
    memcpy(zmq_msg_data(&frames[1]), vals + p->off * dim, vbytes);
    nframes = 2;
  }
  Ps__SparsePush push = PS__SPARSE_PUSH__INIT;
  Ps__SparsePull pull = PS__SPARSE_PULL__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  if (is_push) {
    push.table = (char *)table;
    push.nkeys = p->n;
    push.clock = clock;
    push.seq = ++c->next_seq;
    env.body_case = PS__ENVELOPE__BODY_SPARSE_PUSH;
    env.sparse_push = &push;
  } else {
    pull.table = (char *)table;
    pull.nkeys = p->n;
    env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL;
    env.sparse_pull = &pull;
  }
  rc = ps_msg_send(k->sock, NULL, &env, frames, nframes);
  if (rc != PS_OK)
    return ps__fail(c, rc, "server %u (%s): sparse send failed: %s",
                    p->server_id, k->address, zmq_strerror(errno));
  p->request_id = env.request_id;
  p->retry_at_ms = 0;
  return PS_OK;
}

/* Handles one reply on server p's socket. Returns PS_OK (p may now be
 * done or waiting to be resent) or a failure with errmsg set. */
static int ps__sparse_reply(ps_client_t *c, int is_push, uint32_t dim,
                            ps__spiece_t *p, ps_msg_t *m, int status,
                            const char *reason, float *rows) {
  const char *what = is_push ? "sparse push" : "sparse pull";
  const char *addr = ps__server_addr(c, p->server_id);
  if (status != PS_OK)
    return ps__fail(c, PS_ERR_PROTO, "server %u (%s): malformed %s reply: %s",
                    p->server_id, addr, what, reason);
  const Ps__Envelope *env = m->env;
  if (env->body_case == PS__ENVELOPE__BODY_ERROR) {
    int code = env->error->code;
    if (code == PS_ERR_STALE_EPOCH || code == PS_ERR_NOT_READY) {
      /* Refused before anything was applied: resending is safe. */
      p->request_id = 0;
      p->retry_at_ms = ps_now_ms() + PS__STALE_RETRY_MS;
      return PS_OK;
    }
    if (code >= 0) code = PS_ERR_PROTO;
    return ps__fail(c, code, "server %u (%s): %s: %s", p->server_id, addr,
                    ps_err_name(code),
                    env->error->message ? env->error->message : "");
  }
  if (is_push) {
    if (env->body_case != PS__ENVELOPE__BODY_ACK)
      return ps__fail(c, PS_ERR_PROTO, "server %u (%s): %s reply to a %s",
                      p->server_id, addr, ps_body_name(env->body_case), what);
  } else {
    const Ps__SparsePullReply *r = env->sparse_pull_reply;
    if (env->body_case != PS__ENVELOPE__BODY_SPARSE_PULL_REPLY ||
        r->nkeys != p->n || r->dim != dim || m->npayload != 1 ||
        ps_msg_payload_bytes(m) != p->n * dim * sizeof(float))
      return ps__fail(c, PS_ERR_PROTO,
                      "server %u (%s): %s reply does not match a pull of "
                      "%zu rows of dim %u",
                      p->server_id, addr, ps_body_name(env->body_case), p->n,
                      dim);
    ps_msg_payload_gather(m, rows + p->off * dim);
  }
  p->done = 1;
  p->request_id = 0;
  return PS_OK;
}

/* Sends every piece, then waits for all replies until the call's deadline,
 * resending pieces refused for their epoch (nothing of those was applied). */
static int ps__sparse_run(ps_client_t *c, int is_push, const char *table,
                          uint32_t dim, uint64_t salt, ps__spiece_t *pieces,
                          size_t npieces, const uint64_t *keys,
                          const float *vals, float *rows, uint64_t clock) {
  uint64_t deadline = ps_now_ms() + (uint64_t)c->opts.timeout_ms;
  int rc = ps__poll_reserve(c, npieces);
  if (rc != PS_OK) return rc;
  for (;;) {
    int changed = ps__refresh(c);
    if (changed < 0) return changed;
    uint64_t now = ps_now_ms();
    size_t pending = 0;
    uint64_t wake_at = deadline;
    for (size_t i = 0; i < npieces; i++) {
      ps__spiece_t *p = &pieces[i];
      if (p->done) continue;
      pending++;
      if (p->request_id != 0) continue;
      if (p->retry_at_ms > now) {
        if (p->retry_at_ms < wake_at) wake_at = p->retry_at_ms;
        continue;
      }
      /* A resend under a newer view must still go to the owner of every
       * key; re-cutting a call across servers is not done yet. */
      for (size_t j = p->off; j < p->off + p->n; j++)
        if (ps_view_sparse_owner(c->view, salt, keys[j]) !=
            (int64_t)p->server_id)
          return ps__fail(c, PS_ERR_STALE_EPOCH,
                          "table \"%s\": rows moved off server %u in view "
                          "epoch %" PRIu64 " during a sparse call",
                          table, p->server_id, c->view->epoch);
      rc = ps__sparse_send(c, is_push, table, dim, p, keys, vals, clock);
      if (rc != PS_OK) return rc;
    }
    if (pending == 0) return PS_OK;
    if (now >= deadline) {
      for (size_t i = 0; i < npieces; i++) {
        if (pieces[i].done) continue;
        return ps__fail(
            c, PS_ERR_TIMEOUT,
            "server %u (%s) did not answer sparse %s of %zu rows "
            "of \"%s\" within %d ms",
            pieces[i].server_id, ps__server_addr(c, pieces[i].server_id),
            is_push ? "push" : "pull", pieces[i].n, table, c->opts.timeout_ms);
      }
    }
    zmq_pollitem_t *items = c->poll_items;
    size_t nitems = 0;
    for (size_t i = 0; i < npieces; i++) {
      ps__conn_t *k = ps__conn_find(c, pieces[i].server_id);
      c->poll_conns[i] = NULL;
      if (pieces[i].done || pieces[i].request_id == 0 || k == NULL ||
          k->sock == NULL)
        continue;
      items[nitems] = (zmq_pollitem_t){.socket = k->sock, .events = ZMQ_POLLIN};
      c->poll_conns[nitems++] = k;
    }
    now = ps_now_ms();
    long slice = wake_at > now ? (long)(wake_at - now) : 0;
    if (slice > PS__POLL_SLICE_MS) slice = PS__POLL_SLICE_MS;
    if (zmq_poll(items, (int)nitems, slice) < 0 && errno != EINTR)
      return ps__fail(c, PS_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
    for (size_t i = 0; i < nitems; i++) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      ps__conn_t *k = c->poll_conns[i];
      for (;;) {
        ps_msg_t m;
        char reason[256] = "";
        int st = ps_msg_recv(k->sock, 0, &ps_frame_default_limits, &m, reason,
                             sizeof(reason));
        if (st == PS_ERR_TIMEOUT) break;
        if (st != PS_OK && st != PS_ERR_PROTO && st != PS_ERR_VERSION &&
            st != PS_ERR_TOO_BIG) {
          ps_msg_close(&m);
          return ps__fail(c, st, "server %u (%s): receive failed: %s",
                          k->server_id, k->address, zmq_strerror(errno));
        }
        ps__spiece_t *p = NULL;
        for (size_t j = 0; j < npieces && m.request_id; j++)
          if (pieces[j].server_id == k->server_id &&
              pieces[j].request_id == m.request_id)
            p = &pieces[j];
        /* Anything else is a late reply to an earlier call: dropped. */
        if (p) rc = ps__sparse_reply(c, is_push, dim, p, &m, st, reason, rows);
        ps_msg_close(&m);
        if (rc != PS_OK) return rc;
      }
    }
  }
}

static int ps__sparse(ps_client_t *c, int is_push, const char *table,
                      const uint64_t *keys, size_t n, const float *values,
                      float *out, uint64_t clock) {
  int rc = ps__refresh(c);
  if (rc < 0) return rc;
  if (table == NULL) return ps__fail(c, PS_ERR_INVAL, "table name is NULL");
  const ps_sparse_spec_t *spec = ps_model_sparse(&c->view->model, table);
  if (spec == NULL)
    return ps__fail(c, PS_ERR_UNKNOWN_KEY,
                    "no sparse table \"%s\" in the model", table);
  if (n == 0) return PS_OK;
  if (keys == NULL || (is_push ? values == NULL : out == NULL))
    return ps__fail(c, PS_ERR_INVAL, "sparse call on \"%s\": NULL array",
                    table);
  /* Sparse calls are synchronous and read replies straight off the
   * sockets; dense calls in flight would have theirs dropped. */
  if (c->nops > 0)
    return ps__fail(c, PS_ERR_INVAL,
                    "sparse call while %zu dense calls are not waited for",
                    c->nops);
  uint32_t dim = spec->dim;
  uint64_t salt = spec->salt;
  char tname[PS_NAME_MAX];
  snprintf(tname, sizeof(tname), "%s", spec->name);
  size_t ns = c->view->nsparse_servers;
  if (ns == 0)
    return ps__fail(c, PS_ERR_NOT_READY, "view epoch %" PRIu64 " has no server",
                    c->view->epoch);

  ps__skey_t *sorted = malloc(n * sizeof(*sorted));
  uint64_t *gkeys = malloc(n * sizeof(*gkeys));
  size_t *gfrom = malloc(n * sizeof(*gfrom));
  uint32_t *owner = malloc(n * sizeof(*owner));
  float *rows = malloc(n * dim * sizeof(float));
  ps__spiece_t *pieces = calloc(ns, sizeof(*pieces));
  size_t *fill = calloc(ns, sizeof(*fill));
  if (!sorted || !gkeys || !gfrom || !owner || !rows || !pieces || !fill) {
    rc = ps__fail(c, PS_ERR_NOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) sorted[i] = (ps__skey_t){keys[i], i};
  qsort(sorted, n, sizeof(*sorted), ps__cmp_skey);
  for (size_t i = 1; i < n; i++) {
    if (sorted[i].key == sorted[i - 1].key) {
      rc = ps__fail(c, PS_ERR_INVAL,
                    "sparse call on \"%s\": key %" PRIu64 " appears twice",
                    tname, sorted[i].key);
      goto out;
    }
  }
  for (size_t s = 0; s < ns; s++)
    pieces[s].server_id = c->view->sparse_servers[s];
  for (size_t i = 0; i < n; i++) {
    /* The index form of ps_view_sparse_owner, to avoid a search per key. */
    uint64_t h = ps_mix64(sorted[i].key ^ salt) >> 32;
    owner[i] = (uint32_t)((h * (uint64_t)ns) >> 32);
    pieces[owner[i]].n++;
  }
  size_t off = 0;
  for (size_t s = 0; s < ns; s++) {
    pieces[s].off = off;
    off += pieces[s].n;
    if (pieces[s].n == 0) pieces[s].done = 1;
  }
  /* A stable partition of the sorted keys: each server's stay ascending. */
  for (size_t i = 0; i < n; i++) {
    ps__spiece_t *p = &pieces[owner[i]];
    size_t at = p->off + fill[owner[i]]++;
    gkeys[at] = sorted[i].key;
    gfrom[at] = sorted[i].at;
    if (is_push)
      memcpy(rows + at * dim, values + sorted[i].at * dim, dim * sizeof(float));
  }
  rc = ps__sparse_run(c, is_push, tname, dim, salt, pieces, ns, gkeys, rows,
                      rows, clock);
  if (rc == PS_OK && !is_push)
    for (size_t i = 0; i < n; i++)
      memcpy(out + gfrom[i] * dim, rows + i * dim, dim * sizeof(float));
out:
  free(sorted);
  free(gkeys);
  free(gfrom);
  free(owner);
  free(rows);
  free(pieces);
  free(fill);
  return rc;
}

int ps_client_sparse_push(ps_client_t *c, const char *table,
                          const uint64_t *keys, size_t n, const float *values,
                          uint64_t clock) {
  return ps__sparse(c, 1, table, keys, n, values, NULL, clock);
}

int ps_client_sparse_pull(ps_client_t *c, const char *table,
                          const uint64_t *keys, size_t n, float *out) {
  return ps__sparse(c, 0, table, keys, n, NULL, out, 0);
}

/* ---- scheduler requests on the calling thread --------------------------- */

static int ps__sched_socket(ps_client_t *c) {
  if (c->sched_sock) return PS_OK;
  void *s = zmq_socket(c->zctx, ZMQ_DEALER);
  if (s == NULL)
    return ps__fail(c, PS_ERR_ZMQ, "scheduler %s: socket: %s", c->scheduler,
                    zmq_strerror(errno));
  int linger = PS__SCHED_LINGER_MS;
  if (ps_zsock_configure(s) != PS_OK ||
      zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
      zmq_connect(s, c->scheduler) != 0) {
    int e = errno;
    zmq_close(s);
    return ps__fail(c, PS_ERR_ZMQ, "scheduler %s: cannot connect: %s",
                    c->scheduler, zmq_strerror(e));
  }
  c->sched_sock = s;
  return PS_OK;
}

static int ps__barrier_send(ps_client_t *c, const char *name,
                            uint64_t *request_id) {
  Ps__Barrier barrier = PS__BARRIER__INIT;
  barrier.name = (char *)name;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  env.body_case = PS__ENVELOPE__BODY_BARRIER;
  env.barrier = &barrier;
  *request_id = env.request_id;
  int rc = ps_msg_send(c->sched_sock, NULL, &env, NULL, 0);
  if (rc != PS_OK)
    return ps__fail(c, rc, "barrier \"%s\": send to scheduler %s failed: %s",
                    name, c->scheduler, zmq_strerror(errno));
  return PS_OK;
}

/* What the scheduler said to one Barrier: 1 released, 0 refused for a stale
 * epoch (resend), or the error. */
static int ps__barrier_reply(ps_client_t *c, const char *name, ps_msg_t *m,
                             int status, const char *reason,
                             uint64_t *retry_at_ms) {
  if (status != PS_OK)
    return ps__fail(c, PS_ERR_PROTO,
                    "barrier \"%s\": bad reply from scheduler %s: %s", name,
                    c->scheduler, reason);
  Ps__Envelope *r = m->env;
  if (r->body_case == PS__ENVELOPE__BODY_ACK) return 1;
  if (r->body_case != PS__ENVELOPE__BODY_ERROR)
    return ps__fail(c, PS_ERR_PROTO,
                    "barrier \"%s\": scheduler %s sent %s, not ack", name,
                    c->scheduler, ps_body_name(r->body_case));
  int code = r->error->code < 0 ? r->error->code : PS_ERR_PROTO;
  if (code == PS_ERR_STALE_EPOCH) {
    /* A worker finished or died and the view moved on: enter again at the
     * new epoch once the background thread has it. */
    *retry_at_ms =
        r->epoch < c->view->epoch ? ps_now_ms() + PS__STALE_RETRY_MS : 0;
    return 0;
  }
  return ps__fail(c, code, "barrier \"%s\": scheduler %s: %s: %s", name,
                  c->scheduler, ps_err_name(code),
                  r->error->message ? r->error->message : "");
}

int ps_client_barrier(ps_client_t *c, const char *name) {
  int rc = ps__refresh(c);
  if (rc < 0) return rc;
  if (name == NULL || name[0] == '\0')
    return ps__fail(c, PS_ERR_INVAL, "barrier name is empty");
  if ((rc = ps__sched_socket(c)) != PS_OK) return rc;

  /* A barrier waits for every worker, including ones still starting up, so
   * it gets the start-up deadline rather than a data call's. */
  uint64_t deadline = ps_now_ms() + (uint64_t)c->opts.connect_timeout_ms;
  uint64_t request_id = 0, sent_gen = 0, retry_at = 0;
  int stale = 0;
  for (;;) {
    if ((rc = ps__refresh(c)) < 0) return rc;
    uint64_t now = ps_now_ms();
    if (request_id == 0 ||
        (stale && (c->view_gen > sent_gen || (retry_at && now >= retry_at)))) {
      if ((rc = ps__barrier_send(c, name, &request_id)) != PS_OK) return rc;
      sent_gen = c->view_gen;
      stale = 0;
      retry_at = 0;
    }
    if (now >= deadline)
      return ps__fail(c, PS_ERR_TIMEOUT,
                      "barrier \"%s\": %s from scheduler %s within %d ms", name,
                      stale ? "stale epoch and no newer view" : "no answer",
                      c->scheduler, c->opts.connect_timeout_ms);
    uint64_t wake_at =
        stale && retry_at && retry_at < deadline ? retry_at : deadline;
    uint64_t slice = wake_at > now ? wake_at - now : 0;
    if (slice > PS__POLL_SLICE_MS) slice = PS__POLL_SLICE_MS;
    zmq_pollitem_t items[2] = {
        {.fd = c->wake_fd, .events = ZMQ_POLLIN},
        {.socket = c->sched_sock, .events = ZMQ_POLLIN},
    };
    if (zmq_poll(items, 2, (long)slice) < 0 && errno != EINTR)
      return ps__fail(c, PS_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
    if (items[0].revents & ZMQ_POLLIN) ps__drain_wake(c);
    if (!(items[1].revents & ZMQ_POLLIN)) continue;
    for (;;) {
      ps_msg_t m;
      char reason[256] = "";
      rc = ps_msg_recv(c->sched_sock, 0, &ps_frame_default_limits, &m, reason,
                       sizeof(reason));
      if (rc == PS_ERR_TIMEOUT) break;
      if (rc != PS_OK && rc != PS_ERR_PROTO && rc != PS_ERR_VERSION &&
          rc != PS_ERR_TOO_BIG) {
        ps_msg_close(&m);
        return ps__fail(c, rc,
                        "barrier \"%s\": receive from scheduler %s failed: %s",
                        name, c->scheduler, reason);
      }
      if (stale || m.request_id != request_id) {
        /* An answer to an earlier barrier that timed out, or to the entry
         * about to be resent. */
        ps_msg_close(&m);
        continue;
      }
      rc = ps__barrier_reply(c, name, &m, rc, reason, &retry_at);
      ps_msg_close(&m);
      if (rc == 1) return PS_OK;
      if (rc < 0) return rc;
      stale = 1;
      PS_INFO("client_barrier_stale", "name=%s epoch=%" PRIu64, name,
              c->view->epoch);
    }
  }
}

int ps_client_done(ps_client_t *c) {
  if (c->done_sent) return PS_OK;
  c->done_sent = 1;
  pthread_mutex_lock(&c->mu);
  c->shared.done = 1;
  pthread_mutex_unlock(&c->mu);
  ps__thread_poke(c);
  PS_INFO("client_done", "scheduler=%s", c->scheduler);
  return PS_OK;
}

int ps_client_leave(ps_client_t *c, const char *reason) {
  if (c->done_sent) return PS_OK;
  c->done_sent = 1;
  pthread_mutex_lock(&c->mu);
  c->shared.leave = 1;
  snprintf(c->shared.leave_reason, sizeof(c->shared.leave_reason), "%s",
           reason ? reason : "");
  pthread_mutex_unlock(&c->mu);
  ps__thread_poke(c);
  PS_INFO("client_leave", "scheduler=%s reason=\"%s\"", c->scheduler,
          reason ? reason : "");
  return PS_OK;
}

int ps_client_shutting_down(ps_client_t *c) {
  pthread_mutex_lock(&c->mu);
  int s = c->shared.shutdown;
  pthread_mutex_unlock(&c->mu);
  return s;
}

/* ---- life cycle --------------------------------------------------------- */

void ps_client_opts_init(ps_client_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->scheduler = NULL;
  o->timeout_ms = 30000;
  o->connect_timeout_ms = 60000;
  o->heartbeat_ms = 100;
  o->rank = -1;
  o->window = PS__DEFAULT_WINDOW;
  o->chunk_bytes = PS__DEFAULT_CHUNK_BYTES;
  o->resend_ms = 1000;
}

static int ps__opts_check(const ps_client_opts_t *o, const ps_model_t *model,
                          char *errmsg, size_t errlen) {
  char bad[160] = "";
  if (o == NULL)
    snprintf(bad, sizeof(bad), "options are NULL");
  else if (o->scheduler == NULL || o->scheduler[0] == '\0')
    snprintf(bad, sizeof(bad), "scheduler endpoint is not set");
  else if (o->timeout_ms <= 0)
    snprintf(bad, sizeof(bad), "timeout_ms %d is not positive", o->timeout_ms);
  else if (o->connect_timeout_ms <= 0)
    snprintf(bad, sizeof(bad), "connect_timeout_ms %d is not positive",
             o->connect_timeout_ms);
  else if (o->heartbeat_ms <= 0)
    snprintf(bad, sizeof(bad), "heartbeat_ms %d is not positive",
             o->heartbeat_ms);
  else if (o->rank < -1 || o->rank >= (int64_t)UINT32_MAX)
    snprintf(bad, sizeof(bad),
             "rank %" PRId64 " is neither -1 (any) nor in [0, %u)", o->rank,
             UINT32_MAX);
  else if (o->window < 1 || o->window > PS__MAX_WINDOW)
    snprintf(bad, sizeof(bad), "window %d is not in [1, %d]", o->window,
             PS__MAX_WINDOW);
  else if (o->resend_ms < 0)
    snprintf(bad, sizeof(bad), "resend_ms %d is negative (0: never resend)",
             o->resend_ms);
  else if (o->chunk_bytes % sizeof(float) != 0)
    snprintf(bad, sizeof(bad),
             "chunk_bytes %" PRIu64 " is not a multiple of %zu (0: no chunks)",
             o->chunk_bytes, sizeof(float));
  else if (model == NULL || model->ntensors == 0)
    snprintf(bad, sizeof(bad), "the model has no tensors");
  if (bad[0] == '\0') return PS_OK;
  if (errmsg && errlen) snprintf(errmsg, errlen, "ps_client_new: %s", bad);
  return PS_ERR_INVAL;
}

static void ps__client_free(ps_client_t *c) {
  if (c->thread_started) {
    pthread_mutex_lock(&c->mu);
    c->shared.stop = 1;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    pthread_join(c->thread, NULL);
  } else if (c->async_ready) {
    /* The thread never ran: close the loop's handles here. */
    if (c->member) ps_member_destroy(&c->member);
    uv_close((uv_handle_t *)&c->async, NULL);
    uv_close((uv_handle_t *)&c->farewell_timer, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
  }
  if (c->async_ready && uv_loop_close(&c->loop) != 0)
    PS_ERROR("client_loop_busy", "scheduler=%s", c->scheduler);

  for (size_t i = 0; i < c->nconns; i++) ps__conn_close(&c->conns[i]);
  /* The context is gone (below): ZeroMQ released every frame, so the calls
   * its free callbacks point at can go. */
  free(c->poll_items);
  free(c->poll_conns);
  if (c->sched_sock) zmq_close(c->sched_sock);
  /* Waits up to the scheduler socket's linger for a last Barrier to go. */
  if (c->zctx) zmq_ctx_term(c->zctx);
  for (size_t i = 0; i < c->nconns; i++) free(c->conns[i].slots);
  free(c->conns);
  for (size_t i = 0; i < c->nops; i++) ps__op_free(c->ops[i]);
  free(c->ops);
  while (c->free_ops) {
    ps__op_t *op = c->free_ops;
    c->free_ops = op->next_free;
    ps__op_free(op);
  }

  ps_view_destroy(&c->view);
  ps_view_destroy(&c->shared.view);
  if (c->wake_fd >= 0) close(c->wake_fd);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->rel_cv);
  pthread_mutex_destroy(&c->rel_mu);
  free(c->scheduler);
  free(c);
}

/* A worker that registers while a BSP job runs gets a join step, and the
 * servers must confirm they are not past it before it may push: until
 * then the view lists it as joining. Waits for a view that does not. */
static int ps__wait_joined(ps_client_t *c, uint64_t deadline) {
  int logged = 0;
  for (;;) {
    const ps_node_t *me = ps_view_node(c->view, c->node_id);
    if (me == NULL || !me->joining) return PS_OK;
    if (!logged) {
      PS_INFO("client_joining", "join_clock=%" PRIu64 " epoch=%" PRIu64,
              me->join_clock, c->view->epoch);
      logged = 1;
    }
    pthread_mutex_lock(&c->mu);
    while (c->shared.view == NULL && !c->shared.shutdown &&
           ps_now_ms() < deadline)
      ps__cond_wait_until(&c->cv, &c->mu, deadline);
    pthread_mutex_unlock(&c->mu);
    int rc = ps__refresh(c);
    if (rc < 0) return rc;
    if (rc == 0 && ps_now_ms() >= deadline) {
      me = ps_view_node(c->view, c->node_id);
      return ps__fail(
          c, PS_ERR_TIMEOUT,
          "scheduler %s: the servers did not confirm this "
          "worker's join at step %" PRIu64 " within connect_timeout_ms %d",
          c->scheduler, me ? me->join_clock : 0, c->opts.connect_timeout_ms);
    }
  }
}

ps_client_t *ps_client_new(const ps_client_opts_t *o, const ps_model_t *model,
                           int *err, char *errmsg, size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  *err = ps__opts_check(o, model, errmsg, errlen);
  if (*err != PS_OK) return NULL;

  ps_client_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    *err = PS_ERR_NOMEM;
    if (errmsg && errlen) snprintf(errmsg, errlen, "out of memory");
    return NULL;
  }
  c->opts = *o;
  c->chunk_keys = o->chunk_bytes / sizeof(float);
  c->wake_fd = -1;
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->rel_mu, NULL);
  int rc = PS_OK;
  if (ps__cond_init(&c->cv) != 0 || ps__cond_init(&c->rel_cv) != 0 ||
      (c->scheduler = strdup(o->scheduler)) == NULL) {
    rc = ps__fail(c, PS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  c->opts.scheduler = c->scheduler;
  if ((c->zctx = zmq_ctx_new()) == NULL) {
    rc = ps__fail(c, PS_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    goto fail;
  }
  if ((c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    rc = ps__fail(c, PS_ERR_IO, "eventfd: %s", strerror(errno));
    goto fail;
  }
  if (uv_loop_init(&c->loop) != 0) {
    rc = ps__fail(c, PS_ERR_IO, "uv_loop_init failed");
    goto fail;
  }
  if (uv_async_init(&c->loop, &c->async, ps__thread_async_cb) != 0) {
    uv_loop_close(&c->loop);
    rc = ps__fail(c, PS_ERR_IO, "uv_async_init failed");
    goto fail;
  }
  c->async.data = c;
  uv_timer_init(&c->loop, &c->farewell_timer);
  c->farewell_timer.data = c;
  c->async_ready = 1;

  /* Created here, before the thread exists, so a failure is reported
   * synchronously; the loop only runs on the thread from then on. */
  ps_member_opts_t mo = {
      .scheduler = c->scheduler,
      .role = PS__ROLE__ROLE_WORKER,
      .address = "",
      .model = model,
      .rank = o->rank,
      .heartbeat_ms = o->heartbeat_ms,
      /* While the scheduler is down pushes and pulls go on
       * (ARCHITECTURE.md, failure semantics 4): never give up on it. */
      .scheduler_timeout_ms = 0,
  };
  ps_member_cbs_t cbs = {
      .registered_cb = ps__member_registered_cb,
      .view_cb = ps__member_view_cb,
      .shutdown_cb = ps__member_shutdown_cb,
      .arg = c,
  };
  int merr = PS_OK;
  c->member = ps_member_new(&c->loop, c->zctx, &mo, &cbs, &merr);
  if (c->member == NULL) {
    rc = ps__fail(c, merr < 0 ? merr : PS_ERR_IO,
                  "cannot start the link to scheduler %s: %s", c->scheduler,
                  ps_strerror(merr));
    goto fail;
  }
  if (pthread_create(&c->thread, NULL, ps__thread_main, c) != 0) {
    rc = ps__fail(c, PS_ERR_NOMEM, "cannot start the client thread");
    goto fail;
  }
  c->thread_started = 1;

  uint64_t deadline = ps_now_ms() + (uint64_t)o->connect_timeout_ms;
  pthread_mutex_lock(&c->mu);
  while (!(c->shared.registered && c->shared.view) && !c->shared.shutdown &&
         ps_now_ms() < deadline)
    ps__cond_wait_until(&c->cv, &c->mu, deadline);
  int registered = c->shared.registered;
  int ready = registered && c->shared.view;
  int shutdown = c->shared.shutdown;
  int status = c->shared.shutdown_status;
  char reason[sizeof(c->shared.shutdown_reason)];
  memcpy(reason, c->shared.shutdown_reason, sizeof(reason));
  pthread_mutex_unlock(&c->mu);

  if (shutdown) {
    /* status < 0: registration refused (e.g. a model that disagrees);
     * otherwise the job ended before this worker got going. */
    rc =
        ps__fail(c, status < 0 ? status : PS_ERR_SHUTDOWN,
                 "scheduler %s %s: %s", c->scheduler,
                 status < 0 ? "refused the registration" : "shut down", reason);
    goto fail;
  }
  if (!ready) {
    rc = ps__fail(c, PS_ERR_TIMEOUT,
                  "scheduler %s: %s within connect_timeout_ms %d", c->scheduler,
                  registered ? "registered but no cluster view"
                             : "no answer to registration",
                  o->connect_timeout_ms);
    goto fail;
  }
  if ((rc = ps__refresh(c)) < 0) goto fail;
  if ((rc = ps__wait_joined(c, deadline)) != PS_OK) goto fail;
  PS_INFO("client_ready",
          "scheduler=%s rank=%u epoch=%" PRIu64
          " ranges=%zu start_clock=%" PRIu64,
          c->scheduler, c->rank, c->view->epoch, c->view->nranges,
          ps_client_start_clock(c));
  *err = PS_OK;
  return c;

fail:
  *err = rc;
  if (errmsg && errlen) snprintf(errmsg, errlen, "%s", c->errmsg);
  PS_WARN("client_new_failed", "scheduler=%s err=%s", o->scheduler,
          ps_err_name(rc));
  ps__client_free(c);
  return NULL;
}

void ps_client_destroy(ps_client_t **c_p) {
  if (c_p == NULL || *c_p == NULL) return;
  ps_client_t *c = *c_p;
  *c_p = NULL;
  ps_client_done(c);
  ps__client_free(c);
}

uint32_t ps_client_rank(const ps_client_t *c) {
  return c->rank;
}

uint32_t ps_client_num_workers(const ps_client_t *c) {
  return c->num_workers;
}

uint32_t ps_client_node_id(const ps_client_t *c) {
  return c->node_id;
}

const ps_view_t *ps_client_view(ps_client_t *c) {
  (void)ps__refresh(c);
  return c->view;
}

uint64_t ps_client_start_clock(ps_client_t *c) {
  (void)ps__refresh(c);
  uint64_t start = c->view->start_clock;
  const ps_node_t *me = ps_view_node(c->view, c->node_id);
  if (me && me->join_clock > start) start = me->join_clock;
  return start;
}

uint64_t ps_client_duplicate_acks(const ps_client_t *c) {
  return c->duplicate_acks;
}

const char *ps_client_errmsg(const ps_client_t *c) {
  return c->errmsg;
}
