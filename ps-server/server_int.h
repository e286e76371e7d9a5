/* The server daemon's insides, shared by its files and private to them:
 * the server's state, a range it holds a copy of, a parked pull, a held
 * replication message, and the functions one file calls in another. The
 * public API is ps-server/server.h.
 *
 *   ps-server/server.c    life cycle, the data socket's loop and dispatch,
 *                         replies and refusals, stats, stopping, the scheduler
 *                         link's callbacks: views, checkpoints and restore
 *   ps-server/requests.c  workers' requests: push, pull, parked pulls, sparse
 *                         tables
 *   ps-server/backup.c    replication, the backup's side (ps-server/replica.c
 *                         has the primary's): Replicate, snapshots, messages
 *                         held for a view
 *   ps-server/ranges.c    adopting a view: the ranges this server holds, live
 *                         sets, a primary's duties to its backups, workers
 *                         joining
 *   ps-server/handover.c  planned moves of a primary (drain, rebalance)
 *
 * Loop thread only, like everything in ps-server/server.h.
 */
#ifndef PS_SERVER_SERVER_INT_H
#define PS_SERVER_SERVER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zmq.h>

#include "common/exporter.h"
#include "common/member.h"
#include "common/metrics.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "common/view.h"
#include "common/zap.h"
#include "dedup.h"
#include "proto/ps.pb-c.h"
#include "replica.h"
#include "saver.h"
#include "server.h"
#include "shard.h"
#include "sparse.h"

/* Payload frames are float32 little-endian on the wire and are applied in
 * place, which is only right on a little-endian host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "payload frames are applied in place: little-endian only");

/* Every body case has its own counters (ps_server_stats_t): ReplicaChunk
 * (64) was counted as undecoded while the array had 64 entries. */
_Static_assert(PS__ENVELOPE__BODY_REPLICA_CHUNK < PS_SERVER_NBODY &&
                   PS__ENVELOPE__BODY_PUSH_PULL < PS_SERVER_NBODY,
               "PS_SERVER_NBODY must exceed every Envelope body case");

/* A BSP pull that asked for a step the shard has not applied yet. */
typedef struct parked_pull_s {
  struct parked_pull_s *next;
  zmq_msg_t route; /* a reference to the peer's routing id (zmq_msg_copy) */
  uint64_t request_id;
  uint64_t key_begin, count, clock;
  uint64_t parked_ns; /* when it began to wait, for the BSP wait histogram */
  uint32_t worker;    /* its sender, for the count in flight */
  int duplicate;      /* a PushPull's whose push was a duplicate */
  int codec;          /* the reply's encoding (PS_CODEC_*) */
} parked_pull_t;

/* A PushPull (proto/ps.proto) whose push went to the replicator: its reply,
 * the weights of its slice at clock + 1, is also its ack, so it is built
 * only when the replicator reports the push on every backup (push_done).
 * Found there by (worker, request id, route); requests.c. */
typedef struct pushpull_s {
  struct pushpull_s *next;
  zmq_msg_t route; /* a reference to the peer's routing id (zmq_msg_copy) */
  uint64_t request_id;
  uint64_t key_begin, count;
  uint64_t pull_clock; /* the push's step + 1 */
  uint32_t worker;
  int codec;    /* the reply's encoding (PushPull.pull_codec, PS_CODEC_*) */
  int linked;   /* on s->pushpulls: push_done will answer it */
  int applying; /* its push is being applied: push_done only marks it */
  int ready;    /* push_done ran while it was applying */
  int status;   /* and said this */
} pushpull_t;

/* A snapshot of a range on its way in (ps-server/backup.c): the head's state
 * and the arrays filled chunk by chunk, installed when the last chunk is in. */
typedef struct snap_in_s snap_in_t;

/* A range this server holds a copy of: as its primary (serves workers,
 * forwards every change to the backups) or as a backup (replays what the
 * primary forwards). A backup added to a running job has no shard until
 * the primary's snapshot comes. */
typedef struct {
  uint64_t begin, end;
  ps_shard_t *shard;
  ps_dedup_t *dedup; /* (worker, seq) pairs applied: see ps-server/dedup.h */
  /* The range's rows of each sparse table of the model, in model order
   * (ps_view_sparse_range; nsparse = model.nsparse): NULL while a backup
   * waits for its snapshot, as shard is. */
  ps_sparse_table_t **sparse;
  size_t nsparse;
  parked_pull_t *parked; /* in arrival order */
  int primary;
  uint32_t primary_id; /* backups: the only node whose changes they take */
  /* Primaries: the backups already sent a snapshot of the range. */
  uint32_t nsnapped;
  uint32_t snapped[PS_MAX_REPLICAS - 1];
  /* ... of which these acked it: they hold the range. */
  uint32_t nsynced;
  uint32_t synced[PS_MAX_REPLICAS - 1];
  snap_in_t *incoming; /* backups: a snapshot being received */
  /* Primaries: a planned handover of the range (ps-server/handover.c); id
   * 0: none. While it holds, pushes wait for the view that moves the
   * range. resumed: one gave up waiting and took pushes again, so a later
   * demotion would leave this copy ahead of the new primary's. */
  uint64_t handover_id;
  uint32_t handover_to;
  uint64_t handover_since_ms;
  int handover_ready; /* HandoverReady went to the scheduler */
  int handover_resumed;
  /* Primaries replicating step by step (ps__server_step_repl): the clock
   * the backups were told of (ps_repl_step). */
  uint64_t repl_clock;
} owned_range_t;

/* A replication message that came ahead of our view (the snapshot of a
 * new backup can overtake the view that makes it one). */
typedef struct deferred_s {
  struct deferred_s *next;
  ps_msg_t m;
} deferred_t;

/* The ops of the request-time histogram (metrics.c: ps__server_op). */
enum {
  PS_SRV_OP_PUSH,
  PS_SRV_OP_PULL,
  PS_SRV_OP_REPLICATE,
  PS_SRV_OP_SNAPSHOT,
  PS_SRV_OP_SPARSE_PUSH,
  PS_SRV_OP_SPARSE_PULL,
  PS_SRV_OP_PUSH_PULL,
  PS_SRV_OP_OTHER,
  PS_SRV_NOPS
};

typedef struct {
  int armed;
  uint64_t last_ms;
  uint64_t suppressed;
  /* Reports what a window suppressed when no later line would carry it. */
  uv_timer_t flush_timer;
  int flush_open;
} ratelimit_t;

struct ps_server_s {
  uv_loop_t loop;
  int loop_ready;
  void *zctx;
  ps_zsock_t *data;
  ps_sockmon_t *data_mon; /* accepts that failed on data */
  ps_zap_t *zap;          /* CURVE: admits the keys of opts.keys */
  const ps_keys_t *keys;  /* CURVE: NULL for plaintext */
  ps_member_t *member;
  uv_signal_t sigterm, sigint;
  int signals_open;
  uv_timer_t stop_timer;
  int stop_timer_open;
  uv_timer_t notify_timer; /* systemd's watchdog, fed from this loop */
  int notify_timer_open;

  char *scheduler;
  char *advertise;
  char endpoint[PS_ADDR_MAX]; /* the bound one, kept after the socket closes */
  ps_frame_limits_t limits;
  int nonfinite; /* PS_SERVER_NONFINITE_* */
  uint64_t max_sparse_keys;
  uint64_t sparse_max_bytes; /* 0: no cap (ps-server/sparse.h) */
  uint32_t sparse_admit_after;
  /* The counters of sparse tables freed since (ranges dropped or replaced
   * by a snapshot), so the metrics' totals never go down. */
  ps_sparse_stats_t sparse_gone;
  int frame_limit_set; /* the first view's limit is on the data socket */
  int reserve_fd; /* holds the data address until it is bound; -1: none */
  /* Requests waiting here per worker node id (requests.c). */
  uint32_t *inflight;
  size_t inflight_nodes;
  uint32_t max_inflight_per_peer;
  /* PushPulls waiting for their push's replication (requests.c). */
  pushpull_t *pushpulls;

  uint32_t node_id;
  ps_view_t *view; /* the adopted view; its model built the shards */
  owned_range_t *ranges;
  size_t nranges;
  uint64_t reported_clock;

  ps_server_stats_t stats;
  ratelimit_t warn_limit;
  /* Checkpoints (ps-server/saver.h): shards written at the scheduler's request
   * and loaded at a restore. While the first view's ranges load, that view (or
   * a newer one) waits in restore_view and requests get NOT_READY. */
  ps_saver_t *saver;
  ps_view_t *restore_view;
  int restoring;
  float *scratch; /* aligned copies of unaligned push frames */
  size_t scratch_bytes;
  float *decoded; /* a coded push's values, or a coded pull's (codec.h) */
  size_t decoded_bytes;
  uint64_t *key_scratch; /* aligned copy of a sparse request's keys */
  size_t key_scratch_bytes;

  /* Replication (ps-server/replica.h): this node's primary side; and the backup
   * side's messages waiting for a newer view. */
  ps_repl_t *repl;
  deferred_t *deferred, **deferred_tail;
  size_t ndeferred;

  /* /metrics and /healthz (metrics.c); NULL when --metrics-bind is off.
   * The histograms are observed on the loop whether or not it is on. */
  ps_exporter_t *exporter;
  ps_hist_t hist_request[PS_SRV_NOPS]; /* loop time per request, by op */
  ps_hist_t hist_apply;                /* shard update time per push */
  ps_hist_t hist_bsp_wait;             /* parked pulls: time to their step */

  int stopping;
  int torn_down;
  int exit_status;
  char errmsg[512];
};

/* ps-server/server.c */
void ps__server_frame_limit(ps_server_t *s, const ps_view_t *v);
const char *ps__server_mode_name(int mode);
uint64_t ps__server_view_epoch(const ps_server_t *s);
void ps__server_count_sent(ps_server_t *s, Ps__Envelope *env, size_t payload);
/* ps_shard_new_tick's tick (arg: the server): a heartbeat while a new
 * shard fills on the loop. */
void ps__server_fill_tick(void *arg);
void ps__server_send_error(ps_server_t *s, zmq_msg_t *route,
                           uint64_t request_id, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void ps__server_refuse(ps_server_t *s, ps_msg_t *m, int code, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
void ps__server_dispatch(ps_server_t *s, ps_msg_t *m);

/* ps-server/requests.c */
/* 1 when m's sender is a node of role in our view and m came on a
 * connection with its token (common/auth.h); else refuses m with
 * PS_ERR_PERMISSION_DENIED and returns 0. */
int ps__server_sender_is(ps_server_t *s, ps_msg_t *m, int role);
void ps__server_fail_parked(ps_server_t *s, owned_range_t *r, int code,
                            const char *why);
void ps__server_report_clock(ps_server_t *s);
void ps__server_after_apply(ps_server_t *s, owned_range_t *r);

/* 1 when the job's ranges are replicated one BSP step at a time
 * (ps-server/replica.h, ps_repl_step): BSP and no sparse tables (a sparse
 * step's rows still travel push by push). */
int ps__server_step_repl(const ps_server_t *s);

/* A primary replicating step by step: tells the backups of the steps the
 * range applied since it last did (ps_repl_step), which acks the pushes
 * they held. No-op otherwise, and while the range has no chain yet (the
 * view that made this node its primary is being adopted: primary_adopt
 * calls it again). */
void ps__server_flush_step(ps_server_t *s, owned_range_t *r);
void ps__server_reply_ack(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                          uint64_t clock, int duplicate);
void ps__server_repl_push_done(void *arg, zmq_msg_t *route, uint64_t request_id,
                               uint32_t worker, uint64_t clock, int duplicate,
                               int status, const char *reason);
/* The float32 values of a push's frame f of count keys in codec
 * (PS_CODEC_*): the frame itself (aligned as ps__server_aligned_floats
 * does) when it is raw, else decoded into the server's own buffer, valid
 * until the next call. NULL with the reason in why (a malformed frame, no
 * memory) and *code set. */
float *ps__server_push_floats(ps_server_t *s, zmq_msg_t *f, uint64_t count,
                              int codec, int *code, char *why, size_t wlen);
const float *ps__server_aligned_floats(ps_server_t *s, zmq_msg_t *f,
                                       uint64_t count);
void ps__server_handle_push(ps_server_t *s, ps_msg_t *m);
void ps__server_handle_pull(ps_server_t *s, ps_msg_t *m);
void ps__server_handle_pushpull(ps_server_t *s, ps_msg_t *m);
/* Frees the PushPulls still waiting (the replicator is gone). */
void ps__server_pushpull_free(ps_server_t *s);
void ps__server_handle_sparse_push(ps_server_t *s, ps_msg_t *m);
void ps__server_handle_sparse_pull(ps_server_t *s, ps_msg_t *m);
/* The sparse tables of view's model, empty and capped as configured, for
 * a range: an array of model.nsparse (NULL when out of memory).
 * ps__server_sparse_free_tables frees one. */
ps_sparse_table_t **ps__server_sparse_new_tables(const ps_server_t *s,
                                                 const ps_view_t *view);
void ps__server_sparse_free_tables(ps_sparse_table_t ***t_p, size_t n);
/* The same, first adding their counters to s->sparse_gone. */
void ps__server_sparse_retire_tables(ps_server_t *s, ps_sparse_table_t ***t_p,
                                     size_t n);
/* Every sparse table's counters on this server, retired ones included
 * (rows: held now). */
void ps__server_sparse_stats(const ps_server_t *s, ps_sparse_stats_t *out);
/* Applies a worker's sparse push for step `step` to r's table t (ASP: now,
 * scaled as a dense push, at that step's schedule; BSP: into the step's
 * sums). */
int ps__server_sparse_apply(ps_server_t *s, owned_range_t *r,
                            ps_sparse_table_t *t, const uint64_t *keys,
                            size_t n, const float *g, uint64_t step,
                            char *err, size_t errlen);
/* A copy of frame f's n uint64 keys in the server's aligned scratch, or
 * NULL when out of memory. */
const uint64_t *ps__server_aligned_keys(ps_server_t *s, zmq_msg_t *f,
                                        uint64_t n);
void ps__server_sparse_free(ps_server_t *s);

/* ps-server/backup.c */
void ps__server_handle_replicate(ps_server_t *s, ps_msg_t *m);
void ps__server_handle_snapshot(ps_server_t *s, ps_msg_t *m);
void ps__server_handle_chunk(ps_server_t *s, ps_msg_t *m);
/* Drops a snapshot r was receiving. NULL-safe. */
void ps__server_snap_in_free(snap_in_t **in_p);
void ps__server_serve_deferred(ps_server_t *s);
void ps__server_deferred_free(ps_server_t *s);

/* ps-server/metrics.c */
int ps__server_op(int body_case);
const char *ps__server_op_name(int op);
void ps__server_metrics_init(ps_server_t *s);
int ps__server_metrics_start(ps_server_t *s, const char *bind, char *err,
                          size_t errlen);

/* ps-server/ranges.c */
const char *ps__server_format_ranges(const ps_server_t *s, char *buf,
                                     size_t len);
int ps__server_range_set_live(owned_range_t *r, const ps_shard_live_t *live,
                              size_t nlive, int *applied);
int ps__server_adopt_view(ps_server_t *s, ps_view_t *view, char *err,
                          size_t errlen);
void ps__server_repl_synced(void *arg, uint64_t begin, uint64_t end,
                            uint32_t backup, uint64_t bytes, uint64_t ms);

/* ps-server/handover.c */
void ps__server_handle_handover(ps_server_t *s, const Ps__Handover *h);
void ps__server_handover_progress(void *arg);
int ps__server_handover_holds(ps_server_t *s, owned_range_t *r);
int ps__server_handover_demoted(ps_server_t *s, const owned_range_t *old,
                                char *err, size_t errlen);

#endif
