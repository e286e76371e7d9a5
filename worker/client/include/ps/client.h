/* libps-client: the library a trainer (or any program) links to talk to a
 * parameter-server cluster.
 *
 * A client registers with the scheduler as a worker, declaring the model it
 * trains, and waits for the cluster view. Then it pushes gradients and pulls
 * weights of the dense key space, or of named tensors; every call is split
 * into one request per server that owns a piece, all in flight at once, and
 * returns when every piece is answered or the deadline passes (PS_ERR_TIMEOUT
 * with the server named in ps_client_errmsg; PS_ERR_UNAVAILABLE when the
 * keys' server is dead in the view and no live replica holds them). A
 * client never hangs.
 *
 * Failover: a push carries a sequence number per piece that stays the same
 * across resends, so the servers apply it once however often it is sent.
 * Pieces refused for a stale epoch, or sent to a server the view moved
 * their keys off, are cut again by the newest view and resent; a push
 * unanswered for resend_ms is resent, with what else was in flight on its
 * connection, on a fresh connection.
 *
 * A slice is cut at the owning servers' range boundaries and into chunks
 * of at most chunk_bytes, and up to `window` requests are kept in flight to
 * every server at once, so a big tensor streams through a pipeline instead
 * of one message per server. Values travel without a copy in both
 * directions on the wire (pushes are sent straight from the caller's
 * array; replies are copied once, into the caller's array).
 *
 * Calls may also be started and waited for separately (ps_client_*_start,
 * ps_client_wait), so several pushes and pulls are in flight together; the
 * data plane progresses inside every ps_client call.
 *
 * A background thread keeps the client's heartbeats going while the caller
 * computes, and receives new views and the scheduler's shutdown. The data
 * plane runs on the calling thread. All ps_client_* functions must be called
 * from one thread (the one that created the client).
 */
#ifndef PS_CLIENT_H
#define PS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"
#include "ps/export.h"
#include "ps/model.h"
#include "ps/view.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ps_client_s ps_client_t;

typedef struct {
  const char *scheduler;  /* "tcp://127.0.0.1:7000" */
  int timeout_ms;         /* deadline of one call; default 30000 */
  int connect_timeout_ms; /* deadline to register and get a view; default 60000
                           */
  int heartbeat_ms;       /* default 100 */
  int64_t rank;           /* requested worker rank, -1 for any */
  int window;             /* requests in flight per server; default 8 */
  /* Largest value payload of one request, in bytes (a multiple of 4); a
   * bigger slice goes as several requests, cut at multiples of it from the
   * start of the owning server's range, so chunks line up with the
   * server's copy-on-write blocks. Default 1 MiB; 0: one request per
   * server whatever the size. */
  uint64_t chunk_bytes;
  /* A push unanswered for this long is sent again, with the same sequence
   * number, on a fresh connection to the keys' current owner, together
   * with every request in flight on its connection (pulls alone never
   * trigger it: a BSP pull waits at the server for its step). A message
   * lost with a server that was stopped or restarted then does not hold
   * the call up to its deadline, and a server that applied it already acks
   * the copy as a duplicate. Default 1000; 0: never. */
  int resend_ms;
  /* CURVE (appended for issue #13; fields only ever go at the end, and
   * ps_client_opts_init zeroes what it does not know). keys_dir: the
   * cluster's keys directory (`psctl keygen`); the client loads its own
   * worker key from key_file (NULL: keys_dir/worker.key) and connects to
   * the scheduler with the scheduler's key found there and to servers with
   * the keys in the view, every link encrypted and authenticated. NULL:
   * plaintext. Copied at ps_client_new; the files are read there. */
  const char *keys_dir;
  const char *key_file;
  /* Issue #16 (README "Workers join and leave"): non-zero to grow a
   * running bsp or ssp job by one worker with a new rank (the scheduler's
   * --max-workers allows it) rather than only take a free rank below its
   * --workers. The worker joins at a step the scheduler announces
   * (ps_client_start_clock). */
  int join_new_rank;
} ps_client_opts_t;

/* Most calls started and not yet waited for at once. */
#define PS_CLIENT_MAX_PENDING 4096

/* Fills o with the defaults above (scheduler NULL). */
PS_EXTERN void ps_client_opts_init(ps_client_opts_t *o);

/* Creates a client and connects it: registers as a worker declaring model,
 * waits for the view, and, for a worker that joins a running BSP job, until
 * the servers confirmed the step it joins at (its NodeInfo no longer
 * joining). Returns NULL with err/errmsg filled on failure (bad options, no
 * scheduler or no confirmation within connect_timeout_ms, a model that
 * disagrees with the other workers'). Caller owns the result. */
PS_EXTERN ps_client_t *ps_client_new(const ps_client_opts_t *o,
                                     const ps_model_t *model, int *err,
                                     char *errmsg, size_t errlen);

/* Sends Done if not sent, stops the heartbeat thread, closes the sockets,
 * frees the client and sets *c_p to NULL. */
PS_EXTERN void ps_client_destroy(ps_client_t **c_p);

/* This worker's rank among workers (0-based), the number of workers, the node
 * id the scheduler gave it, and the current view (owned by the client, valid
 * until the next call that may refresh it). */
PS_EXTERN uint32_t ps_client_rank(const ps_client_t *c);
PS_EXTERN uint32_t ps_client_num_workers(const ps_client_t *c);
PS_EXTERN uint32_t ps_client_node_id(const ps_client_t *c);
PS_EXTERN const ps_view_t *ps_client_view(ps_client_t *c);

/* The first step this worker computes: the job's start step (0, or the
 * step of the checkpoint it was restored from) or, for a worker that
 * joined a running job, the step the servers wait for it from (its
 * join_clock), whichever is later. A trainer pulls the weights as of this
 * clock and goes on from there. */
PS_EXTERN uint64_t ps_client_start_clock(ps_client_t *c);

/* Issue #16 (README "Workers join and leave"): the step this worker
 * leaves the job at (psctl remove-worker; the scheduler announces it in
 * the view), 0 when it is not leaving. A trainer stops before computing
 * that step and ends with ps_client_destroy (Done); the job goes on. */
PS_EXTERN uint64_t ps_client_leave_clock(ps_client_t *c);

/* Issue #16: this worker's share of the data of step, in the current
 * view: the step's set is the ranks of the workers that contribute to it
 * (join_clock <= step < leave_clock, a rank held twice counted once);
 * *count is its size, *index this worker's position in it by rank
 * (UINT32_MAX when it does not contribute to step), and *before the sum
 * of the set sizes of the steps before step: the worker batches the job
 * read before it. Step t's global batch is then count x batch examples,
 * from position before x batch of the job's stream of examples, and this
 * worker's from (before + index) x batch. Without joins and leaves:
 * count = the number of workers W, index = the rank, before = step x W.
 * Any out-parameter may be NULL. Returns PS_OK or PS_ERR_NOMEM. */
PS_EXTERN int ps_client_step_share(ps_client_t *c, uint64_t step,
                                   uint32_t *index, uint32_t *count,
                                   uint64_t *before);

/* The server clock of the weights the last pull or push-pull waited for
 * (ps_client_pull, ps_client_pushpull, or ps_client_wait on either)
 * returned: the lowest over the servers that answered it, so every
 * gradient of steps below it is in them. BSP: >= the clock asked for (a
 * push-pull of step t: t + 1); SSP: >= that clock - the view's staleness
 * (ps_view_staleness); ASP: no promise. UINT64_MAX before the first. */
PS_EXTERN uint64_t ps_client_last_pull_clock(const ps_client_t *c);

/* Pushes that servers acknowledged as duplicates (a resend of a push that
 * was applied already), since the client was created. */
PS_EXTERN uint64_t ps_client_duplicate_acks(const ps_client_t *c);

/* Payload bytes this client sent in dense pushes and received in dense
 * pull replies since it was created (resends included), as the codecs of
 * the model's tensors encode them (issue #15). Either pointer may be
 * NULL. */
PS_EXTERN void ps_client_wire_bytes(const ps_client_t *c, uint64_t *push_bytes,
                                    uint64_t *pull_bytes);

/* Tells the scheduler, with every heartbeat from now on, where this process
 * serves its Prometheus metrics ("HOST:PORT"; NULL or "": nowhere), so that
 * `psctl top` reads this worker's rates there. address is copied.
 * PS_ERR_INVAL (and the reason in ps_client_errmsg) if it is 256 bytes or
 * longer. */
PS_EXTERN int ps_client_set_metrics_address(ps_client_t *c,
                                            const char *address);

/* Pushes count gradient values for keys [key_begin, key_begin + count) as the
 * worker's step clock. values are read in place (no copy) and must stay
 * unchanged until the call returns. Returns when every owning server acked. */
PS_EXTERN int ps_client_push(ps_client_t *c, uint64_t key_begin, uint64_t count,
                             const float *values, uint64_t clock);

/* Pulls the weights of [key_begin, key_begin + count) as of server clock >=
 * clock (BSP: all gradients of steps < clock applied) into out. */
PS_EXTERN int ps_client_pull(ps_client_t *c, uint64_t key_begin, uint64_t count,
                             float *out, uint64_t clock);

/* Push and pull in one round trip: pushes grad (count values for keys
 * [key_begin, key_begin + count)) as the worker's step `step`, exactly as
 * ps_client_push does (same pieces, sequence numbers, resends after a
 * failover, applied once), and fills weights_out with the weights of the
 * same keys as of server clock >= step + 1: in BSP once step is applied
 * (what ps_client_pull(..., step + 1) after the push would give), in ASP
 * right after this push is applied. Each piece's reply is also its ack, so
 * it comes only once every copy of the range holds the push; a resend
 * that the server recognises as a duplicate still gets the weights (and
 * counts in ps_client_duplicate_acks). Half the messages of a push and a
 * pull, and the pull does not wait for the push's ack first. Keys in coded
 * tensors (ps_tensor_spec_t push_codec, pull_codec) travel as
 * ps_client_push and ps_client_pull would send and receive them: the
 * push encoded once when the call starts (top-k's residual updated once;
 * every resend carries the same bits), the weights in the pull codec.
 *
 * grad and weights_out must not overlap (the gradient is sent from where
 * it lies, while replies land in weights_out). A piece counts for
 * resend_ms like a push until the server says it waits for its step (BSP);
 * from then on it waits like a pull, outside the window, and is resent
 * only if the view moves its keys. */
PS_EXTERN int ps_client_pushpull(ps_client_t *c, uint64_t key_begin,
                                 uint64_t count, const float *grad,
                                 uint64_t step, float *weights_out);

/* Starts a push or a pull like the calls above and returns at once with
 * *ticket set; the call goes on inside later ps_client calls. Until
 * ps_client_wait(ticket) returns, the caller must leave values unchanged
 * (push) and must not use out (pull). A call that cannot start (bad keys,
 * too many pending, shutdown) returns the error and sets no ticket.
 * Requests of calls started earlier go out first; a pull started after a
 * push of the same keys sees that push (one connection per server, served
 * in order). */
PS_EXTERN int ps_client_push_start(ps_client_t *c, uint64_t key_begin,
                                   uint64_t count, const float *values,
                                   uint64_t clock, uint64_t *ticket);
PS_EXTERN int ps_client_pull_start(ps_client_t *c, uint64_t key_begin,
                                   uint64_t count, float *out, uint64_t clock,
                                   uint64_t *ticket);
/* ps_client_pushpull, started: grad must stay unchanged and weights_out
 * unused until ps_client_wait(ticket) returns. */
PS_EXTERN int ps_client_pushpull_start(ps_client_t *c, uint64_t key_begin,
                                       uint64_t count, const float *grad,
                                       uint64_t step, float *weights_out,
                                       uint64_t *ticket);

/* Waits until the call with this ticket has finished (every piece
 * answered, or failed, or past its deadline) and returns its status, with
 * the message in ps_client_errmsg on failure. Each ticket is waited for
 * once; PS_ERR_INVAL for a ticket that is not pending. (For a zero-copy
 * pull it drops the buffers: the same as ps_client_wait_frames followed by
 * ps_client_release.) */
PS_EXTERN int ps_client_wait(ps_client_t *c, uint64_t ticket);

/* Zero-copy pulls: the values stay in the buffers ZeroMQ received them in,
 * and the caller reads them there (to hand them to a GPU copy, say), which
 * saves the copy into an array that ps_client_pull makes. */
typedef struct {
  uint64_t key_begin; /* the first key of the span */
  uint64_t count;
  const float *values; /* count values, aligned for float */
} ps_client_span_t;

/* Starts a pull like ps_client_pull_start, keeping the reply buffers. */
PS_EXTERN int ps_client_pull_frames_start(ps_client_t *c, uint64_t key_begin,
                                          uint64_t count, uint64_t clock,
                                          uint64_t *ticket);

/* Waits like ps_client_wait for a call started with
 * ps_client_pull_frames_start. On PS_OK, *spans is set to *nspans spans in
 * key order that cover the slice exactly; they are owned by the client and
 * stay valid until ps_client_release(ticket), which every PS_OK must be
 * followed by. On failure nothing is held and the ticket is gone. */
PS_EXTERN int ps_client_wait_frames(ps_client_t *c, uint64_t ticket,
                                    const ps_client_span_t **spans,
                                    size_t *nspans);

/* Gives the buffers of a waited zero-copy pull back to ZeroMQ. */
PS_EXTERN void ps_client_release(ps_client_t *c, uint64_t ticket);

/* The same for one named tensor of the model. */
PS_EXTERN int ps_client_push_tensor(ps_client_t *c, const char *name,
                                    const float *values, uint64_t clock);
PS_EXTERN int ps_client_pull_tensor(ps_client_t *c, const char *name,
                                    float *out, uint64_t clock);

/* Sparse tables (issue #3). Pushes gradient rows (n * dim floats, row i for
 * keys[i]) to, or pulls rows into out (n * dim floats) from, the sparse
 * table named table. keys may come in any order but must be distinct; the
 * client sorts a copy, sends each range its rows (spread by a hash of the
 * key over the dense ranges, whose copies hold them) in ascending key
 * order, all at once, and puts pulled rows back in the caller's order. A
 * push is applied exactly once, also when resent after a failover. In BSP
 * a push must carry the step (clock) the worker is at, go before the
 * worker's dense push of that step, and moves the rows when that step is
 * applied; pull the next step's rows after the dense pull of that step.
 * Synchronous, with the same deadline as a dense call; no dense call may be
 * started and not waited for. A table the model does not have gives
 * PS_ERR_UNKNOWN_KEY. */
PS_EXTERN int ps_client_sparse_push(ps_client_t *c, const char *table,
                                    const uint64_t *keys, size_t n,
                                    const float *values, uint64_t clock);
PS_EXTERN int ps_client_sparse_pull(ps_client_t *c, const char *table,
                                    const uint64_t *keys, size_t n, float *out);

/* Blocks until every live worker has entered the barrier of this name. */
PS_EXTERN int ps_client_barrier(ps_client_t *c, const char *name);

/* Tells the scheduler this worker finished its job. */
PS_EXTERN int ps_client_done(ps_client_t *c);

/* Tells the scheduler this worker stops before its job is done (SIGTERM):
 * the scheduler then shuts the whole cluster down. Use instead of
 * ps_client_done, not after it. */
PS_EXTERN int ps_client_leave(ps_client_t *c, const char *reason);

/* 1 once the scheduler announced a shutdown (job over, SIGTERM somewhere). */
PS_EXTERN int ps_client_shutting_down(ps_client_t *c);

/* The last error's message ("" if none); owned by the client. */
PS_EXTERN const char *ps_client_errmsg(const ps_client_t *c);

#ifdef __cplusplus
}
#endif

#endif
