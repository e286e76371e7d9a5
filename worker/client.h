/* libps-client: the library a trainer (or any program) links to talk to a
 * parameter-server cluster.
 *
 * A client registers with the scheduler as a worker, declaring the model it
 * trains, and waits for the cluster view. Then it pushes gradients and pulls
 * weights of the dense key space, or of named tensors; every call is split
 * into one request per server that owns a piece, all in flight at once, and
 * returns when every piece is answered or the deadline passes (PS_ERR_TIMEOUT
 * with the server named in ps_client_errmsg). A client never hangs.
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

#include "common/view.h"

typedef struct ps_client_s ps_client_t;

typedef struct {
  const char *scheduler;   /* "tcp://127.0.0.1:7000" */
  int timeout_ms;          /* deadline of one call; default 30000 */
  int connect_timeout_ms;  /* deadline to register and get a view; default 60000 */
  int heartbeat_ms;        /* default 500 */
  int64_t rank;            /* requested worker rank, -1 for any */
} ps_client_opts_t;

/* Fills o with the defaults above (scheduler NULL). */
void ps_client_opts_init(ps_client_opts_t *o);

/* Creates a client and connects it: registers as a worker declaring model,
 * waits for the view. Returns NULL with err/errmsg filled on failure (bad
 * options, no scheduler within the deadline, a model that disagrees with the
 * other workers'). Caller owns the result. */
ps_client_t *ps_client_new(const ps_client_opts_t *o, const ps_model_t *model,
                           int *err, char *errmsg, size_t errlen);

/* Sends Done if not sent, stops the heartbeat thread, closes the sockets,
 * frees the client and sets *c_p to NULL. */
void ps_client_destroy(ps_client_t **c_p);

/* This worker's rank among workers (0-based), the number of workers, the node
 * id the scheduler gave it, and the current view (owned by the client, valid
 * until the next call that may refresh it). */
uint32_t ps_client_rank(const ps_client_t *c);
uint32_t ps_client_num_workers(const ps_client_t *c);
uint32_t ps_client_node_id(const ps_client_t *c);
const ps_view_t *ps_client_view(ps_client_t *c);

/* Pushes count gradient values for keys [key_begin, key_begin + count) as the
 * worker's step clock. values are read in place (no copy) and must stay
 * unchanged until the call returns. Returns when every owning server acked. */
int ps_client_push(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   const float *values, uint64_t clock);

/* Pulls the weights of [key_begin, key_begin + count) as of server clock >=
 * clock (BSP: all gradients of steps < clock applied) into out. */
int ps_client_pull(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   float *out, uint64_t clock);

/* The same for one named tensor of the model. */
int ps_client_push_tensor(ps_client_t *c, const char *name,
                          const float *values, uint64_t clock);
int ps_client_pull_tensor(ps_client_t *c, const char *name, float *out,
                          uint64_t clock);

/* Blocks until every live worker has entered the barrier of this name. */
int ps_client_barrier(ps_client_t *c, const char *name);

/* Tells the scheduler this worker finished its job. */
int ps_client_done(ps_client_t *c);

/* Tells the scheduler this worker stops before its job is done (SIGTERM):
 * the scheduler then shuts the whole cluster down. Use instead of
 * ps_client_done, not after it. */
int ps_client_leave(ps_client_t *c, const char *reason);

/* 1 once the scheduler announced a shutdown (job over, SIGTERM somewhere). */
int ps_client_shutting_down(ps_client_t *c);

/* The last error's message ("" if none); owned by the client. */
const char *ps_client_errmsg(const ps_client_t *c);

#endif
