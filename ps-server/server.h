/* The ps-server daemon: one uv loop that serves the data plane (Push, Pull)
 * on a ROUTER socket and keeps the link to the scheduler.
 *
 * The server registers with the scheduler, advertising the endpoint workers
 * must connect to, and waits for a view. From the view it learns which key
 * ranges it owns and creates one shard per range (ps-server/shard.h); later
 * views update the epoch and the number of live workers. Every request must
 * carry the current view epoch and name a slice inside one owned range;
 * anything else gets an Error reply, is counted, and changes nothing.
 *
 * Runs until the scheduler sends Shutdown, or SIGTERM/SIGINT (the server then
 * tells the scheduler it leaves). All functions are called from the thread
 * that created the server; ps_server_run blocks on the server's loop.
 */
#ifndef PS_SERVER_SERVER_H
#define PS_SERVER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"
#include "common/keys.h"

typedef struct ps_server_s ps_server_t;

/* How long a server waits for a silent scheduler by default: long enough
 * for a supervisor to restart it from its state file. */
#define PS_SERVER_SCHEDULER_TIMEOUT_MS 60000

typedef struct {
  const char *scheduler; /* endpoint of the scheduler */
  const char *bind;      /* data endpoint; "tcp://127.0.0.1:*" picks a port */
  const char *advertise; /* what workers connect to; NULL or "": bound one */
  int heartbeat_ms;
  int scheduler_timeout_ms; /* 0: wait for the scheduler forever */
  /* Join a running job as one more server that takes its share of the
   * ranges (proto Register.join), rather than as a spare. */
  int join;
  ps_frame_limits_t limits;
  int handle_signals; /* stop on SIGTERM/SIGINT (the daemon); 0 in tests */
  /* Serve /metrics and /healthz on this HOST:PORT (common/exporter.h), on
   * the server's loop; NULL or "": off. */
  const char *metrics_bind;
  /* A push holding NaN or Inf: refused (PS_ERR_NONFINITE), or skipped
   * (applied as zeros, so a BSP step still counts it). Never applied. */
  int nonfinite; /* PS_SERVER_NONFINITE_* */
  /* Rows one sparse request may name (0: PS_SERVER_MAX_SPARSE_KEYS). */
  uint64_t max_sparse_keys;
  /* The sparse rows' memory cap (ps-server/sparse.h), per server in bytes
   * (0: none), and the pushes of an id before it gets a row (0, 1: the
   * first). */
  uint64_t sparse_max_bytes;
  uint32_t sparse_admit_after;
  /* Requests one worker may have waiting on this server (pushes not yet
   * on every backup, BSP pulls for a step to come); 0:
   * PS_SERVER_MAX_INFLIGHT_PER_PEER. */
  uint32_t max_inflight_per_peer;
  /* CURVE (issue #13; common/keys.h): the server's key and the keys
   * admitted, with roles; must outlive the server. NULL: plaintext. */
  const ps_keys_t *keys;
  /* With keys: connections held at once, more refused at the handshake
   * (common/zap.h); 0: no cap. */
  uint64_t max_connections;
} ps_server_opts_t;

#define PS_SERVER_MAX_INFLIGHT_PER_PEER 1024

#define PS_SERVER_MAX_SPARSE_KEYS (1u << 20)

#define PS_SERVER_NONFINITE_REJECT 0
#define PS_SERVER_NONFINITE_SKIP 1

/* Fills o with the defaults: scheduler tcp://127.0.0.1:7000, bind
 * tcp://127.0.0.1:*, heartbeat 100 ms, scheduler timeout 60 s, the default
 * frame limits, signals handled. */
void ps_server_opts_init(ps_server_opts_t *o);

/* Indexes of ps_server_stats_t.errors: -code of a ps_err_t. */
#define PS_SERVER_NERR 32
/* Indexes of ps_server_stats_t.requests: Ps__Envelope__BodyCase (0: the
 * header could not be decoded). */
#define PS_SERVER_NBODY 128

/* Counters for /metrics. Monotonic except parked_pulls. */
typedef struct {
  uint64_t requests[PS_SERVER_NBODY]; /* by body case */
  uint64_t bytes_in, bytes_out;       /* header and payload frames */
  uint64_t errors[PS_SERVER_NERR];    /* Error replies (or drops) by code */
  uint64_t bad_messages;              /* failed validation in ps_msg_recv */
  uint64_t applies;            /* BSP steps applied + ASP pushes applied */
  uint64_t pulls_parked;       /* BSP pulls that had to wait for a step */
  uint64_t parked_pulls;       /* waiting now */
  uint64_t send_failures;      /* replies ZeroMQ refused (the peer went away) */
  uint64_t unaligned_payloads; /* pushes copied to align their floats */
  uint64_t pull_bytes_zero_copy; /* pull reply bytes sent from the weights */
  uint64_t pull_bytes_copied;    /* pull reply bytes copied into frames */
  uint64_t views;                /* views received */
  uint64_t duplicate_pushes;     /* resent pushes acked without applying */
  uint64_t handover_held;        /* pushes told to wait for a handover */
  uint64_t handovers;            /* ranges handed to a backup (planned) */
  uint64_t nonfinite_pushes;     /* pushes holding NaN or Inf */
  uint64_t inflight_refused;     /* requests over a peer's cap in flight */
  uint64_t replicated;           /* changes replayed as a backup */
  uint64_t held_acks; /* pushes told they wait for their step (Ack.held) */
  uint64_t snapshots_in;         /* ranges received whole as a new backup */
  /* Bytes by body case: requests received, replies and errors sent. */
  uint64_t bytes_in_by[PS_SERVER_NBODY];
  uint64_t bytes_out_by[PS_SERVER_NBODY];
  uint64_t snapshots_out;      /* ranges a new backup acked whole */
  uint64_t snapshot_bytes_out; /* ... their bytes */
  uint64_t ckpt_writes;        /* checkpoint writes this server made durable */
  uint64_t ckpt_failures;      /* ... and that failed */
  uint64_t ckpt_bytes;         /* bytes of the files written */
  uint64_t ckpt_write_us;      /* snapshot to durable, summed */
  uint64_t ckpt_last_step;     /* the step of the newest one written */
} ps_server_stats_t;

/* Binds the data socket, connects to the scheduler and registers. Returns
 * NULL with *err and errbuf filled on failure (a bind that fails, a bad
 * endpoint). Caller owns the result (ps_server_destroy). */
ps_server_t *ps_server_new(const ps_server_opts_t *o, int *err, char *errbuf,
                           size_t errlen);

/* Runs the loop until the server stops. Returns PS_OK after the scheduler's
 * Shutdown or a signal; otherwise the failure that stopped it (registration
 * refused, scheduler silent for the timeout, a view the server cannot serve),
 * with the reason in ps_server_errmsg. */
int ps_server_run(ps_server_t *s);

/* Stops the server from its own loop (as Shutdown does); ps_server_run then
 * returns status. leave: tell the scheduler this node leaves. */
void ps_server_stop(ps_server_t *s, int status, const char *reason, int leave);

/* The data endpoint actually bound ("tcp://127.0.0.1:41234"). */
const char *ps_server_endpoint(const ps_server_t *s);

/* The counters, owned by the server, valid until destroy. */
const ps_server_stats_t *ps_server_stats(const ps_server_t *s);

/* The last error message; "" if none. */
const char *ps_server_errmsg(const ps_server_t *s);

/* Closes whatever is still open, frees the server, sets *s_p to NULL. */
void ps_server_destroy(ps_server_t **s_p);

#endif
