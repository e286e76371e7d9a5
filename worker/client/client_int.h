/* libps-client: see worker/client/include/ps/client.h.
 *
 * Two threads touch a client:
 *  - the background thread runs a uv loop with the ps_member (registration,
 *    heartbeats, views, Shutdown) so the scheduler hears from this worker
 *    while the caller is busy computing;
 *  - the calling thread runs the data plane (one DEALER per server), the
 *    barrier socket to the scheduler, and everything in
 * worker/client/include/ps/client.h.
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
 * resent) finds nothing and is dropped. ps__client_progress drives every
 * pending call at once; it runs inside the ps_client calls, so nothing happens
 * on the data sockets while the caller computes, and the ZeroMQ I/O thread
 * keeps sending and receiving meanwhile.
 *
 * Pushes hand the caller's values to ZeroMQ without a copy. That is safe
 * while the call is pending (the caller keeps values unchanged), but a call
 * that fails may leave frames queued in ZeroMQ for a server that never took
 * them, and the caller is free to reuse the memory once wait returns. So
 * every wrapped frame carries a free callback that counts it back in its
 * call, and a push's wait returns only when ZeroMQ has let go of all of
 * them (closing the sockets that still hold some; see ps__client_op_settle).
 */

/* The client's insides, shared by its files and private to them; the public
 * API is worker/client/include/ps/client.h.
 *
 *   worker/client/client.c         options, creating and destroying a client,
 *                                  accessors, Done and Leave, helpers every
 *                                  file uses (errors, deadlines on a condvar,
 *                                  the eventfd)
 *   worker/client/client_thread.c  the background thread: the member link's
 *                                  callbacks (registration, views, shutdown),
 *                                  Done/Leave on the link, the farewell wait
 *                                  when stopping
 *   worker/client/client_conn.c    views and connections on the calling thread:
 *                                  taking the newest view, the data socket to
 *                                  each server
 *   worker/client/client_data.c    the dense data plane: calls (pooled),
 *                                  pieces, windows, the resend timer, rebasing
 *                                  after a view change, the progress loop,
 *                                  replies, zero-copy pull frames, release
 *                                  accounting, and the dense calls of
 *                                  worker/client/include/ps/client.h
 *   worker/client/client_sparse.c  sparse table calls
 *   worker/client/client_sched.c   the scheduler socket of the calling thread:
 *                                  barriers
 */
#ifndef PS_WORKER_CLIENT_INT_H
#define PS_WORKER_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/member.h"
#include "common/view.h"
#include "ps/client.h"

/* zmq_poll never sleeps longer than this, so shutdown, new views and the
 * deadline are noticed promptly even if the eventfd wake-up were lost. */
#define PS__POLL_SLICE_MS 50
/* A server that answers STALE_EPOCH with an older epoch than ours has not
 * received the new view yet: resend after this pause. */
#define PS__STALE_RETRY_MS 20
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
  /* Codecs (issue #15). Pushes: the piece goes as enc (enc_bytes, in the
   * call's enc_buf, encoded once when the call started, so every resend
   * carries the same bits), or, with codec NONE and from_dq, as raw floats
   * from the call's dq (a coded piece the view cut differently). Pulls:
   * the encoding asked for the reply. Push-pulls: codec is the push's,
   * pull_codec the reply's. */
  int codec;
  int pull_codec;
  int from_dq;
  size_t enc_off, enc_bytes;
} ps__piece_t;

/* One push or pull call, from start to wait. Kept in a pool with its piece
 * array, so a call allocates nothing once the client is warm. */
typedef struct ps__op_s {
  ps_client_t *c;
  uint64_t ticket;
  int is_push;
  /* A push whose replies carry the weights at clock + 1 (PushPull) into
   * out: is_push is set too, as its pieces are pushes in every other way. */
  int pushpull;
  uint64_t key_begin, count, clock;
  const float *values; /* push */
  float *out;          /* pull, pushpull */
  uint64_t reply_clock; /* pull, pushpull: the lowest server clock of its
                           replies */
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
  /* Coded pushes: the encoded pieces, and dq[i], the value the servers
   * apply for key key_begin + i of a coded piece (what they decode). */
  unsigned char *enc_buf;
  size_t enc_cap;
  float *dq;
  size_t dq_cap;
} ps__op_t;

/* A request in flight on a connection: which piece of which call. */
typedef struct {
  uint64_t request_id;
  ps__op_t *op;
  size_t piece;
  uint64_t sent_at_ms; /* for the resend timer */
  /* A push-pull whose push the server acked: it waits for its step there
   * like a BSP pull, out of the window and of the resend timer. */
  int acked;
} ps__slot_t;

/* The data socket to one server. */
typedef struct {
  uint32_t server_id;
  char address[PS_ADDR_MAX];
  void *sock;
  /* sock's own context when address names a host: libzmq looks names up
   * in its context's I/O thread, and a slow lookup must not stall the
   * other servers' sockets nor the scheduler's (ps_zsock_new does the same
   * in the daemons). NULL: sock is on the client's context. */
  void *own_ctx;
  uint64_t gen; /* distinguishes a reconnected socket from the old one */
  int inflight;
  ps__slot_t *slots; /* window entries; the first inflight are in use */
  int acked;         /* of which acked push-pulls (outside the window) */
  int slots_cap;
} ps__conn_t;

struct ps_client_s {
  /* This node's token (common/auth.h), the member's: every connection
   * of the client shows it. */
  ps_auth_token_t token;
  ps_client_opts_t opts;
  ps_keys_t *keys; /* CURVE (opts.keys_dir), or NULL */
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
  uint64_t thread_metrics_gen;

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
    /* ps_client_set_metrics_address: the address, and a count of calls
     * the thread compares with thread_metrics_gen. */
    char metrics_address[PS_ADDR_MAX];
    uint64_t metrics_gen;
  } shared;

  /* Signalled when a call's last push frame is released (see
   * ps__client_op_settle); the counts themselves are atomics in the calls. */
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
  uint64_t last_pull_clock; /* ps_client_last_pull_clock */
  /* Payload bytes sent in pushes and received in pull replies. */
  uint64_t push_bytes, pull_bytes;
  /* Top-k error feedback: per key of the dense space, what the pushes
   * have not sent yet (NULL until the first top-k push). */
  float *residual;
  float *topk_scratch;
  size_t topk_scratch_cap;
  uint64_t resends;        /* pieces resent by the resend timer */
  char errmsg[PS__ERRMSG_MAX];
};

/* worker/client/client.c */
int ps__client_fail(ps_client_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ps__client_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                                uint64_t deadline_ms);
void ps__client_wake_caller(ps_client_t *c);
void ps__client_drain_wake(ps_client_t *c);

/* worker/client/client_thread.c */
void ps__client_member_registered_cb(ps_member_t *m, uint32_t node_id,
                                     uint32_t rank, uint32_t num_workers,
                                     void *arg);
void ps__client_member_view_cb(ps_member_t *m, ps_view_t *view, void *arg);
void ps__client_member_shutdown_cb(ps_member_t *m, int status,
                                   const char *reason, void *arg);
void ps__client_thread_async_cb(uv_async_t *h);
void *ps__client_thread_main(void *arg);
void ps__client_thread_poke(ps_client_t *c);

/* worker/client/client_conn.c */
void ps__client_conn_close(ps__conn_t *k);
ps__conn_t *ps__client_conn_find(ps_client_t *c, uint32_t server_id);
int ps__client_conn_get(ps_client_t *c, uint32_t server_id, ps__conn_t **out);
int ps__client_conn_alive(ps_client_t *c, uint32_t server_id, uint64_t gen);
int ps__client_refresh(ps_client_t *c);
const char *ps__client_server_addr(ps_client_t *c, uint32_t server_id);

/* worker/client/client_data.c */
void ps__client_op_free(ps__op_t *op);
int ps__client_poll_reserve(ps_client_t *c, size_t n);

#endif
