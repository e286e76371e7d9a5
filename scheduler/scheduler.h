/* The scheduler: membership, the cluster view, barriers and the admin API.
 *
 * One ROUTER socket on a uv loop. Servers and workers register (node ids from
 * 1, ranks for workers, the job's model from the first worker), heartbeat,
 * enter barriers and report Done; psctl asks for Status. Once every expected
 * server and worker has registered, the key space is cut into --ranges
 * ranges (one per server by default) and the view (epoch 1) goes to every
 * node; every membership change
 * after that (a node declared dead, a worker done) publishes epoch + 1.
 *
 * Replication and failover (ARCHITECTURE "Failure semantics" 1-3): each
 * range has a primary and replication - 1 backups (scheduler/placement.h).
 * A server silent for the heartbeat timeout is declared dead: its ranges
 * fail over to their first synced backup, chains are topped up from the
 * live servers, and the new view goes out at once. A server that registers
 * while the job runs (up to --servers alive) becomes a spare that takes
 * the backups missing; one that registers with --join (Register.join) is
 * one server more, and copies of ranges move to it (scheduler/handover.c); a
 * worker may take the slot of a dead one (its rank) and, in BSP, joins at a
 * step every server has confirmed it is not past. A node declared dead that
 * speaks again is fenced: it gets an Error PS_ERR_FENCED ("fenced: declared
 * dead at epoch N") and must exit.
 *
 * Checkpoints: see scheduler/coordinator.h for how one is taken. The
 * scheduler starts them (psctl checkpoint, every N steps, every S seconds),
 * records the latest complete one, and holds the end of a job until one in
 * progress is written or failed. With a state file it survives its own
 * restart: nodes of the persisted view keep heartbeating to the same
 * endpoint and are recognised by their ids, so the job goes on; pushes and
 * pulls never involve the scheduler and go on while it is down.
 *
 * When the job ends (every worker done or dead, at least one done), a node
 * leaves, ps_sched_stop is called, or (with handle_signals) SIGTERM/SIGINT
 * arrives, the scheduler sends Shutdown to every node and closes all its
 * handles, so the uv_run that drives it returns. The socket's linger is set
 * so that the Shutdown messages still leave while the caller terminates the
 * ZeroMQ context.
 *
 * Loop thread only: create it, stop it and destroy it on the thread that
 * runs the loop (or before that thread starts / after it ended).
 */
#ifndef PS_SCHEDULER_H
#define PS_SCHEDULER_H

#include <stdint.h>
#include <uv.h>

#include "common/keys.h"

typedef struct ps_sched_s ps_sched_t;

typedef struct {
  const char *bind;         /* "tcp://127.0.0.1:7000"; a "*" port is fine */
  uint32_t servers;         /* expected servers, >= 1 */
  uint32_t workers;         /* expected workers, >= 1 */
  /* Ranges the key space is cut into for the first view, at least one per
   * server (0: one per server). More ranges than servers is what lets
   * servers join and leave a running job (issue #16): copies of whole
   * ranges move between servers, so a job that may grow to N servers
   * wants a multiple of every count it may have (e.g. 12 for 2 to 4). */
  uint32_t ranges;
  int mode;                 /* PS__CONSISTENCY_MODE__* */
  uint32_t staleness;       /* MODE_SSP's bound, 0 to PS_SSP_STALENESS_MAX */
  int heartbeat_timeout_ms; /* silence after which a node is dead, > 0 */
  /* Read the socket at most once every read_batch_ms (0: at once): a
   * thousand nodes' heartbeats then cost a wakeup per batch, not per
   * message (common/transport.h's batch_ms). */
  int read_batch_ms;
  /* Send every view whole: no deltas (View.base_epoch) to the members
   * that hold the previous one. For comparison (ps-schedsim) and for
   * members that predate deltas. */
  int full_views;
  /* Take heartbeats over UDP on the port of bind (scheduler/beats.c,
   * common/beat.h): members told so in their RegisterReply send them as
   * signed datagrams, which a thousand members cost a fraction of what
   * their ZeroMQ messages do (ps-scheduler: on unless --heartbeat-udp=false).
   * Off: heartbeats on the membership links. */
  int heartbeat_udp;
  int handle_signals;       /* stop on SIGTERM/SIGINT (daemons; not tests) */
  /* Copies of each range, primary included: 1 to PS_MAX_REPLICAS (0: the
   * default, 2); more than the servers is capped, with a log line. */
  uint32_t replication;
  /* After a failover, hand primaries back to servers that lead fewer
   * ranges (once their backups are in step), so every live server carries
   * its share (scheduler/handover.c). */
  int rebalance;
  /* Checkpoints (issue #4); zero values turn each off. Paths are copied and
   * made absolute (servers may run elsewhere on a shared file system). */
  const char *checkpoint_dir;      /* base directory; psctl may name another */
  uint64_t checkpoint_every_steps; /* BSP: at every multiple of this step */
  double checkpoint_every_s;       /* at most this long between checkpoints */
  int checkpoint_timeout_ms;       /* give one up after this; 0: 120000 */
  /* Start from this checkpoint (a directory with a MANIFEST, or a base
   * directory with LATEST): verified here, every byte, before anything
   * else; the job's model and starting step are the checkpoint's, and the
   * servers load their ranges from it, whatever their number. */
  const char *restore;
  /* Persist the scheduler's state here on every change (view, epoch,
   * nodes, latest checkpoint); a scheduler started with a state file of a
   * job that did not finish takes that job over (ARCHITECTURE "Failure
   * semantics" 4), and --restore is then ignored. */
  const char *state_file;
  /* Serve /metrics and /healthz on this HOST:PORT (common/exporter.h), on
   * the scheduler's loop; NULL or "": off. */
  const char *metrics_bind;
  /* CURVE (issue #13; common/keys.h): the scheduler's own key and the
   * table of keys admitted, with roles; must outlive the scheduler. NULL:
   * plaintext, no role checks. */
  const ps_keys_t *keys;
  /* With keys: connections held at once, more refused at the handshake
   * (common/zap.h); 0: no cap. */
  uint64_t max_connections;
  /* Issue #16: the most workers the job may grow to with workers that
   * register with join_new_rank (ps-worker --join), ranks workers to
   * max_workers - 1; 0 or workers: the job cannot grow. */
  uint32_t max_workers;
} ps_sched_opts_t;

/* Binds the socket and starts the timers on loop. Returns NULL with *err and
 * errbuf set on a bad option or a bind failure. Caller owns the result;
 * opts->bind is copied. */
ps_sched_t *ps_sched_new(uv_loop_t *loop, void *zmq_ctx,
                         const ps_sched_opts_t *opts, int *err, char *errbuf,
                         size_t errlen);

/* The endpoint actually bound, with the port resolved; valid until destroy. */
const char *ps_sched_endpoint(const ps_sched_t *s);

/* Sends Shutdown{reason} to every node and closes the scheduler's handles.
 * Does nothing if the scheduler is already shutting down. */
void ps_sched_stop(ps_sched_t *s, const char *reason);

/* 1 once the scheduler has shut the cluster down (job finished, a node left,
 * a signal, ps_sched_stop), else 0. */
int ps_sched_finished(const ps_sched_t *s);

/* The current view epoch; 0 before the first view. */
uint64_t ps_sched_epoch(const ps_sched_t *s);

/* One line for a service manager's status: what the scheduler waits for,
 * or the epoch and the live servers and workers. */
void ps_sched_describe(const ps_sched_t *s, char *buf, size_t len);

/* Stops everything that still runs; the memory is freed once the loop has
 * run the close callbacks (at once if they already ran). Sets *s_p to NULL. */
void ps_sched_destroy(ps_sched_t **s_p);

#endif
