/* A ZeroMQ socket driven by a libuv loop.
 *
 * ZeroMQ exposes a socket's readiness as ZMQ_FD, an edge-triggered file
 * descriptor: it signals that ZMQ_EVENTS changed, not that a message waits.
 * So the socket is watched with uv_poll for readability and drained until
 * ZMQ_EVENTS has no ZMQ_POLLIN; a uv_prepare handle drains it once more
 * before every blocking wait of the loop, because a send on the socket can
 * swallow the edge of a message that arrived meanwhile. A drain takes at
 * most a few milliseconds' worth of messages and then lets the loop turn
 * (a uv_idle handle resumes it), so a flood of requests never holds up the
 * loop's timers, such as the heartbeat.
 *
 * Every complete message goes to recv_cb. Messages that fail validation go to
 * recv_cb too, with the status and reason, so the owner can answer with an
 * Error and count it. The callback must ps_msg_close() the message (or move
 * frames out of it first). Loop thread only.
 */
#ifndef PS_TRANSPORT_H
#define PS_TRANSPORT_H

#include <uv.h>

#include "auth.h"
#include "frame.h"
#include "keys.h"

typedef struct ps_zsock_s ps_zsock_t;

/* Keeps the buffers of big messages in the process's heap. libzmq mallocs
 * a fresh buffer for every message it receives; glibc serves one above its
 * mmap threshold (128 KiB at start) with a fresh mapping and, once the
 * threshold has risen, trims the heap's top back to the kernel on free, so
 * every 1 MiB push or pull reply faulted its pages in anew: half of a
 * 2 + 2 training job's CPU time on our 2-core test machines (train_bench:
 * 7,400 -> 16,100 samples/s). Sets the mmap threshold to glibc's maximum
 * (32 MiB) and the trim threshold to 256 MiB; GLIBC_TUNABLES still wins
 * when set. Process-wide, so the programs call it at start, not the
 * library; programs that link libps-client may do the same (mallopt). */
void ps_transport_tune_malloc(void);

/* status: PS_OK or the validation failure; reason is "" on success. */
typedef void (*ps_zsock_recv_cb)(ps_zsock_t *zs, ps_msg_t *msg, int status,
                                 const char *reason, void *arg);

/* Creates a ZeroMQ socket of type (ZMQ_ROUTER, ZMQ_DEALER) on ctx, bound to
 * bind_ep (if non-NULL) and connected to connect_ep (if non-NULL), and starts
 * watching it on loop. Returns NULL and sets *err (and errbuf, which names
 * the call that failed and why) on failure, e.g. an address already in use.
 * A failure after libuv took the socket's handles leaves them closing: the
 * loop must run once more before it can be closed, as after
 * ps_zsock_destroy. The caller owns the result. */
typedef struct {
  const ps_frame_limits_t *limits; /* NULL: ps_frame_default_limits */
  /* A node's connections carry its token (common/auth.h): the routing id
   * a connecting socket shows its peer's ROUTER, or NULL for none. */
  const ps_auth_token_t *token;
  char token_use; /* PS_AUTH_USE_* */
  /* CURVE (common/keys.h), NULL for plaintext: a socket that binds is a
   * CURVE server (the context needs a ZAP handler, common/zap.h), one that
   * connects a client of the peer whose public key (Z85) is peer_key. */
  const ps_keys_t *keys;
  const char *peer_key;
  /* Read at most once every batch_ms milliseconds (0: as soon as a message
   * is announced, the default). Each wakeup of the reader costs more than a
   * small message (libzmq's eventfd on both sides, a poll and a getpid per
   * ZMQ_EVENTS): a socket that takes thousands of small messages a second
   * (the scheduler's heartbeats) reads them in batches instead, each
   * message waiting at most batch_ms longer. */
  unsigned batch_ms;
} ps_zsock_opts_t;

ps_zsock_t *ps_zsock_new(uv_loop_t *loop, void *ctx, int type,
                         const char *bind_ep, const char *connect_ep,
                         const ps_zsock_opts_t *opts, ps_zsock_recv_cb cb,
                         void *arg, int *err, char *errbuf, size_t errlen);

/* zmq_bind and zmq_connect, again when a signal interrupted them: both
 * first serve the socket's pending commands, and a signal (a libFuzzer
 * timer, SIGCHLD) landing there fails them with EINTR though nothing is
 * wrong. 0, or -1 with zmq_errno() set, as they. */
int ps_zmq_bind(void *sock, const char *ep);
int ps_zmq_connect(void *sock, const char *ep);

/* Whether connecting to ep makes libzmq look a host name up (a tcp://
 * endpoint whose host is not an address). ps_zsock_new gives such a socket
 * a context of its own, whose I/O thread alone a slow lookup can stall. */
int ps_zsock_endpoint_has_name(const char *ep);

/* Terminates a context whose sockets are closed, on a detached thread: a
 * term waits for the context's I/O thread, which may be in a slow lookup.
 * NULL: nothing. */
void ps_zctx_term_async(void *ctx);

/* The underlying ZeroMQ socket, for ps_msg_send and ps_msg_reply_error. */
void *ps_zsock_socket(ps_zsock_t *zs);

/* The endpoint actually bound (resolves "tcp://127.0.0.1:*"); "" if none. */
const char *ps_zsock_endpoint(ps_zsock_t *zs);

/* Stops watching, closes the socket (linger 0) and frees zs once libuv has
 * closed its handles; sets *zs_p to NULL. The loop must run once more for the
 * memory to be freed. */
void ps_zsock_destroy(ps_zsock_t **zs_p);

/* Sets the usual options on a fresh socket: linger 0, unlimited HWM on send
 * and receive (flow control is the window's job, and a full HWM on a ROUTER
 * drops messages silently), TCP keepalive, and a send timeout of 0 (a send
 * on a socket left without a pipe fails with EAGAIN instead of blocking).
 * Returns PS_OK, or PS_ERR_ZMQ with the option that was refused and why in
 * err. */
int ps_zsock_configure(void *sock, char *err, size_t errlen);

#endif
