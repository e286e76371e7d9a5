/* The scheduler's insides, shared by its files and private to them: the
 * scheduler's state, a node's entry, the view as a protobuf, and the
 * functions one file calls in another. The public API is scheduler/scheduler.h.
 *
 *   scheduler/scheduler.c   life cycle, the socket loop and dispatch, replies,
 *                           the timer and signals, stopping and the end of the
 *                           job
 *   scheduler/membership.c  the node table, Register, heartbeats, Done,
 *                           leaving, deaths, fencing, workers joining a running
 *                           job
 *   scheduler/publish.c     building the view, publishing it, psctl status,
 *                           the nodes' metrics addresses psctl top reads
 *   scheduler/failover.c    re-placing ranges after deaths and joins,
 *                           ReplicaSynced
 *   scheduler/handover.c    planned moves of a primary: psctl drain, and
 *                           evening out primaries after a failover
 *   scheduler/barrier.c     barriers
 *   scheduler/ckpt.c        starting checkpoints, answering psctl, --restore
 *   scheduler/state.c       the state file (--state-file)
 *
 * Loop thread only, like everything in scheduler/scheduler.h.
 */
#ifndef PS_SCHED_INT_H
#define PS_SCHED_INT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/beat.h"
#include "common/checkpoint.h"
#include "common/exporter.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "common/view.h"
#include "common/zap.h"
#include "proto/ps.pb-c.h"
#include "scheduler/coordinator.h"
#include "scheduler/scheduler.h"

/* ZeroMQ routing identities are at most 255 bytes. */
#define SCHED_ROUTE_MAX 256
/* Servers a job may have, --join ones included (--servers' limit too). */
#define SCHED_MAX_SERVERS 4096
/* Ranges of the first cut (--ranges' limit). */
#define SCHED_MAX_RANGES 65536

/* Per-role counters are indexed by PS__ROLE__*. */
#define PS_ROLE_SLOTS 8

/* psctl calls waiting for the checkpoint in progress. */
#define SCHED_CKPT_WAITERS 16

typedef struct {
  uint32_t id;
  int role;  /* PS__ROLE__* */
  int state; /* PS__NODE_STATE__* */
  uint32_t rank;
  char address[PS_ADDR_MAX];
  /* The ROUTER identity of the node's membership link (from its Register
   * and heartbeats): where views and Shutdown go. A node may send requests
   * on other connections too (libps-client's barriers come from the caller's
   * thread), so replies always go back on the request's own route. */
  uint8_t route[SCHED_ROUTE_MAX];
  size_t route_len;
  /* The token of the connection it registered on (common/auth.h): every
   * message in its name must come with it. "": unknown (a state file of an
   * older scheduler). */
  char token[PS_AUTH_TOKEN_HEX + 1];
  /* A server's CURVE public key (Z85), the key of the connection it
   * registered on; "" without CURVE. Goes into the view. */
  char curve_key[PS_KEY_Z85_LEN + 1];
  uint64_t last_seen_ms;
  /* The newest view sent to the membership link, and when: a heartbeat
   * at an older epoch gets it again only if it was not sent already (it
   * is on its way) or long ago (lost with a connection). */
  uint64_t view_sent_epoch;
  uint64_t view_sent_ms;
  /* The node as the newest packed view showed it (publish.c), and that
   * view's epoch if the node changed in it: a delta against epoch E - 1
   * carries the nodes with shown_epoch == E. */
  ps_node_t shown;
  uint64_t shown_epoch;
  uint64_t hb_acked_ms; /* the last heartbeat Ack sent to it */
  /* Heartbeats over UDP (beats.c, common/beat.h): the key its datagrams
   * are signed with (made when it registers, kept in the state file) and
   * the last sequence number taken. */
  uint8_t beat_key[PS_BEAT_KEY_BYTES];
  int beat_keyed;
  uint64_t beat_seq;
  uint64_t beat_acked_ms; /* the last datagram ack sent to it */
  uint64_t clock;
  /* Where the node serves /metrics, from its heartbeats; "" when none. */
  char metrics_address[PS_ADDR_MAX];
  char *barrier; /* the barrier the worker waits in, or NULL */
  uint64_t barrier_request_id;
  uint8_t barrier_route[SCHED_ROUTE_MAX]; /* where its release goes */
  size_t barrier_route_len;
  uint64_t dead_epoch; /* the view epoch that declared it dead; 0: alive */
  int fence_logged;
  /* A worker joining a running BSP job: it contributes from join_clock on,
   * once every server holding a replica confirmed (JoinReply) that it is
   * not past that step; joining until then. */
  uint64_t join_clock;
  int joining;
  uint64_t join_started_ms; /* registration, for the log's duration */
  uint64_t join_asked_ms;   /* when the current join_clock went out */
  uint32_t *join_ok;        /* servers that confirmed join_clock */
  size_t njoin_ok;
  /* Issue #16 (workers.c): a worker psctl remove-worker takes out; the
   * first step it no longer contributes to (0: not leaving). */
  uint64_t leave_clock;
  /* A server being drained (psctl drain, handover.c): its primaries move
   * to backups, then it leaves every chain and is told to exit. The psctl
   * call waits on drain_route for the answer. */
  int draining;
  /* Elastic re-sharding (handover.c, issue #16): active, it takes its
   * share of the copies (the servers of the first view, --join ones, and
   * spares psctl add-server named); removing, a drain replaces each of its
   * copies before it goes (psctl remove-server); adding, psctl add-server
   * waits on drain_route until nothing is left to move. */
  int active;
  int removing;
  int adding;
  uint64_t drain_started_ms;
  uint64_t drain_request_id;
  uint8_t drain_route[SCHED_ROUTE_MAX];
  size_t drain_route_len;
} sched_node_t;

typedef struct sched_beats_s sched_beats_t;

struct ps_sched_s {
  uv_loop_t *loop;
  ps_zsock_t *zs;
  ps_sockmon_t *zs_mon; /* accepts that failed on zs */
  ps_zap_t *zap;        /* CURVE: admits the keys of opts.keys */
  sched_beats_t *beats; /* heartbeats over UDP (beats.c); NULL: off */
  uv_timer_t check_timer;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  int open_handles; /* close callbacks still to run */
  int closing;
  int destroy_requested;
  int finished;
  ps_sched_opts_t opts;
  char endpoint[PS_ADDR_MAX];
  uint64_t start_ms;

  uint64_t epoch; /* 0 until the first view is published */
  int published;
  sched_node_t *nodes; /* node id i is nodes[i - 1]: ids are never reused */
  size_t nnodes, cap;

  int has_model;
  uint32_t model_node; /* the worker whose spec became the job's model; 0:
                          the checkpoint the job was restored from */
  ps_model_t model;
  ps_range_t *ranges;
  size_t nranges;
  uint32_t replication; /* copies per range: the option capped by servers */

  /* Checkpoints and restore (issue #4). */
  ps_coord_t *coord;
  char *ckpt_base;        /* --checkpoint-dir made absolute; NULL: none */
  uint64_t ckpt_last_ms;  /* when the last one ended (every_s counts from) */
  uint64_t ckpt_retry_ms; /* no periodic checkpoint before this */
  uint64_t impersonation_logged_ms; /* rate limit of its warning */
  uint64_t role_refusal_logged_ms;  /* rate limit of its warning */
  int has_last;
  Ps__CheckpointInfo last; /* the latest complete one; strings below */
  char last_dir[PS_CHECKPOINT_PATH_MAX];
  char last_reason[32];
  uint64_t last_done_ms; /* monotonic, for its age */
  int has_failure;
  Ps__CheckpointInfo failure; /* the last failed one; strings below */
  char failure_dir[PS_CHECKPOINT_PATH_MAX];
  char failure_reason[32];
  char failure_error[512];
  uint64_t failure_ms; /* monotonic, for its age */
  struct {
    uint8_t route[SCHED_ROUTE_MAX];
    size_t route_len;
    uint64_t request_id;
  } waiters[SCHED_CKPT_WAITERS];
  size_t nwaiters;
  uint64_t start_clock; /* the step the job starts from */
  char *restore_dir;    /* the checkpoint the job was restored from */
  int ending;           /* the job is over; a checkpoint is being finished */
  char end_reason[256];
  char *state_file;
  int state_failed; /* the last save failed (logged once per failure run) */
  /* Restarted with backups still syncing: their primaries may have said
   * ReplicaSynced while we were down; the first check publishes a view so
   * they say it again. */
  int republish_syncing;
  /* When on_check last ran, and its period: a check that comes late means
   * this scheduler was stalled, not that the nodes were silent. */
  uint64_t last_check_ms, check_every_ms;
  /* When the last stall ended (a late check): every node is given a whole
   * timeout from then, since what it sent during the stall may be lost
   * (heartbeat datagrams past the socket's buffer), not only unread. */
  uint64_t stall_end_ms;
  /* The servers' step rate, from their heartbeat clocks: how far ahead of
   * a step boundary a periodic checkpoint must be asked for. */
  uint64_t rate_clock, rate_ms;
  double steps_per_ms;

  /* Planned moves of a primary (handover.c): at most one at a time; id 0
   * when none is in progress. */
  struct {
    uint64_t id;
    uint64_t begin, end;
    uint32_t from, to;
    uint64_t asked_ms;
    const char *why; /* "drain", "rebalance" or "reshard" */
  } handover;
  uint64_t handover_next_id;
  /* Copies move between servers (ps_place_next_step) once a server joined
   * with --join or psctl add-server or remove-server was used. */
  int elastic;

  /* The current epoch's view, packed (publish.c): [0] for servers, with
   * the nodes' tokens, [1] for the others; [2] and [3] the same as deltas
   * against epoch - 1 (View.base_epoch), when has_delta. Every send of it
   * shares these bytes. */
  struct {
    int valid;
    int has_delta;
    uint64_t epoch;
    zmq_msg_t msg[4];
  } view_wire;
  /* The ranges as the newest packed view showed them, and the epoch each
   * last changed in (publish.c): a delta carries those of its epoch. */
  ps_range_t *shown_ranges;
  uint64_t *shown_range_epoch;
  size_t nshown_ranges;

  /* /metrics and /healthz (metrics.c); NULL when off. Counters of events
   * the state does not keep (the rest is read from the state). */
  ps_exporter_t *exporter;
  struct {
    uint64_t failovers;       /* ranges whose primary moved to a backup */
    uint64_t ranges_lost;     /* ranges left with no live copy */
    uint64_t re_replications; /* new backups that finished syncing */
    uint64_t timeouts[PS_ROLE_SLOTS]; /* declared dead for silence, by role */
    uint64_t fenced[PS_ROLE_SLOTS];   /* dead nodes that spoke again */
    uint64_t barrier_entries;         /* workers entering a barrier */
    uint64_t barrier_releases;
    uint64_t ckpt_ok, ckpt_failed;
    uint64_t handovers;           /* planned moves of a primary done */
    uint64_t handovers_abandoned; /* ... given up (a node died, no answer) */
    uint64_t drains;              /* servers drained and told to exit */
    uint64_t copies_added;   /* re-sharding: copies made on another server */
    uint64_t copies_dropped; /* ... and dropped where they were too many */
    uint64_t impersonations; /* messages in another node's name */
    uint64_t role_refusals;  /* messages a key's role may not send */
    uint64_t views_whole, views_delta; /* views sent, by kind */
    uint64_t view_bytes;               /* ... and their bytes */
    /* Heartbeat datagrams (beats.c): taken, refused (not a beat, an
     * unknown node, a wrong tag, a replay), acks sent and failed. */
    uint64_t beats, beats_refused, beat_acks, beat_acks_failed;
    uint64_t heartbeats_link; /* heartbeats on the membership links */
  } stats;
};

/* Ps__View that points into the scheduler's state plus the arrays it needs;
 * valid until the state changes, so build, send, free in one go. */
typedef struct {
  Ps__View view;
  Ps__NodeInfo *infos;
  Ps__NodeInfo **info_ptrs;
  Ps__KeyRange *krs;
  Ps__KeyRange **kr_ptrs;
  uint32_t *syncing; /* PS_MAX_REPLICAS - 1 per range */
  Ps__ModelSpec model;
  Ps__TensorSpec *tensors;
  Ps__TensorSpec **tensor_ptrs;
  Ps__SparseTableSpec *sparse;
  Ps__SparseTableSpec **sparse_ptrs;
  Ps__OptimizerSpec *opts; /* the tensors' then the tables' own optimizers */
} view_pb_t;

/* scheduler/scheduler.c */
const char *ps__sched_role_name(int role);
const char *ps__sched_state_name(int state);
const char *ps__sched_mode_name(int mode);
const char *ps__sched_addr_or_dash(const char *a);
void *ps__sched_socket(ps_sched_t *s);
void ps__sched_envelope_init(const ps_sched_t *s, Ps__Envelope *env,
                             uint64_t request_id);
void ps__sched_send_to_route(ps_sched_t *s, const uint8_t *id, size_t id_len,
                             uint32_t node_id, Ps__Envelope *env);
void ps__sched_send_to_node(ps_sched_t *s, sched_node_t *n, Ps__Envelope *env);
/* Sends header (ps_msg_pack, of body) to n's membership link, sharing its
 * bytes; header stays the caller's. */
void ps__sched_send_packed_to_node(ps_sched_t *s, sched_node_t *n,
                                   zmq_msg_t *header, int body);
void ps__sched_reply(ps_sched_t *s, ps_msg_t *m, Ps__Envelope *env);
void ps__sched_reply_error(ps_sched_t *s, ps_msg_t *m, int code,
                           const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void ps__sched_reply_ack(ps_sched_t *s, ps_msg_t *m, uint64_t clock);
int ps__sched_check_job_finished(ps_sched_t *s);
/* What the socket's callback does with one received message (status and
 * reason from ps_msg_recv); the caller closes it. The periodic check: deaths,
 * failover, joins, checkpoints, handovers, as of now (ms, ps_now_ms). Both
 * exposed so that tests/fuzz feeds a scheduler in-process. */
void ps__sched_dispatch(ps_sched_t *s, ps_msg_t *m, int status,
                        const char *reason);
void ps__sched_check(ps_sched_t *s, uint64_t now);
int ps__sched_abs_path(const char *in, char *out, size_t len);

/* scheduler/beats.c: heartbeats over UDP (--heartbeat-udp) on the port of
 * s->endpoint; start fails (err set) when that port cannot be bound. */
int ps__sched_beats_start(ps_sched_t *s, char *err, size_t errlen);
void ps__sched_beats_close(ps_sched_t *s);
/* One datagram from the heartbeat port, from where it came (acks go
 * there); exposed so that tests/fuzz feeds it in-process (with no socket,
 * acks count as failed). */
void ps__sched_beat_datagram(ps_sched_t *s, const uint8_t *data, size_t len,
                             const struct sockaddr *from);
/* The UDP port heartbeats go to; 0: off. */
uint16_t ps__sched_beats_port(const ps_sched_t *s);
/* One of the scheduler's handles is closed (counted in open_handles). */
void ps__sched_handle_released(ps_sched_t *s);

/* scheduler/membership.c */
/* About ms of steps at the servers' measured rate, at least min (capped:
 * the rate comes from the clocks nodes report). */
uint64_t ps__sched_steps_ahead(const ps_sched_t *s, uint64_t ms, uint64_t min);
/* A heartbeat (either path) from n at epoch: n gets the view again when it
 * is behind, unless the one just sent is on its way. */
void ps__sched_view_behind(ps_sched_t *s, sched_node_t *n, uint64_t epoch,
                           uint64_t now);
sched_node_t *ps__sched_node_by_id(ps_sched_t *s, uint32_t id);
const sched_node_t *ps__sched_node_by_id_const(const ps_sched_t *s,
                                               uint32_t id);
int ps__sched_node_holds_slot(const sched_node_t *n);
/* Whether a worker that holds a slot has this rank (membership.c). */
int ps__sched_rank_taken(const ps_sched_t *s, uint32_t rank);
uint32_t ps__sched_count_nodes(const ps_sched_t *s, int role, int state);
uint32_t ps__sched_count_slots(const ps_sched_t *s, int role);
uint32_t ps__sched_live_workers(const ps_sched_t *s);
void ps__sched_fence(ps_sched_t *s, sched_node_t *n, ps_msg_t *m);
int ps__sched_join_check_all(ps_sched_t *s);
int ps__sched_join_retry_due(ps_sched_t *s, uint64_t now);
void ps__sched_declare_dead(ps_sched_t *s, sched_node_t *n, uint64_t silent);
void ps__sched_node_touch(sched_node_t *n, ps_msg_t *m, int membership_link);
void ps__sched_handle_register(ps_sched_t *s, ps_msg_t *m);
sched_node_t *ps__sched_sender_node(ps_sched_t *s, ps_msg_t *m);
int ps__sched_epoch_current(ps_sched_t *s, ps_msg_t *m);
int ps__sched_require_state(ps_sched_t *s, ps_msg_t *m, sched_node_t *n,
                            int role);
void ps__sched_handle_heartbeat(ps_sched_t *s, ps_msg_t *m);
void ps__sched_handle_done(ps_sched_t *s, ps_msg_t *m);
void ps__sched_handle_leave(ps_sched_t *s, ps_msg_t *m);
void ps__sched_handle_join_reply(ps_sched_t *s, ps_msg_t *m);

/* scheduler/publish.c */
void ps__sched_view_pb_free(view_pb_t *v);
int ps__sched_view_pb_build(ps_sched_t *s, view_pb_t *v);
/* Sends the current view to only, or (NULL) to every node that holds a
 * slot: a delta to those sent the previous epoch, else whole. Returns the
 * bytes sent. */
uint64_t ps__sched_send_view(ps_sched_t *s, sched_node_t *only);
void ps__sched_view_wire_drop(ps_sched_t *s);
void ps__sched_publish(ps_sched_t *s, const char *why);
void ps__sched_maybe_publish_first(ps_sched_t *s);
void ps__sched_handle_status(ps_sched_t *s, ps_msg_t *m);
/* Keeps the metrics address a heartbeat carries (after
 * ps__sched_handle_heartbeat took it) for the view's NodeInfo. */
void ps__sched_note_metrics_address(ps_sched_t *s, const ps_msg_t *m);

/* scheduler/failover.c */
int ps__sched_holds_replica(const ps_sched_t *s, uint32_t id);
/* 1 when node id is a server and alive. */
int ps__sched_server_alive(const ps_sched_t *s, uint32_t id);
/* The sender of a server's report on its membership link (ReplicaSynced,
 * HandoverReady), touched; NULL after dropping m (not a server: logged as
 * event at debug) or fencing it (declared dead). Such reports are never
 * answered with an Error: ps_member takes REFUSED as the end of its
 * membership. */
sched_node_t *ps__sched_server_report(ps_sched_t *s, ps_msg_t *m,
                                      const char *event);
int ps__sched_replan(ps_sched_t *s, uint64_t epoch);
void ps__sched_handle_replica_synced(ps_sched_t *s, ps_msg_t *m);

/* scheduler/handover.c */
void ps__sched_handover_tick(ps_sched_t *s, uint64_t now);
void ps__sched_handle_handover_ready(ps_sched_t *s, ps_msg_t *m);
void ps__sched_handle_drain(ps_sched_t *s, ps_msg_t *m);

/* scheduler/workers.c (issue #16) */
/* For a worker's Register: 1 when it grows the job with a new rank
 * (join_new_rank, every rank below --workers held), *rank set; 0 when it
 * registers as before; -1 when refused here (m answered). */
int ps__sched_worker_grow(ps_sched_t *s, ps_msg_t *m, uint32_t *rank);
void ps__sched_handle_remove_worker(ps_sched_t *s, ps_msg_t *m);
/* A worker's Done: 1 (state LEFT, logged) when psctl remove-worker took
 * it out, else 0. */
int ps__sched_worker_left(ps_sched_t *s, sched_node_t *n);

/* scheduler/barrier.c */
void ps__sched_barrier_leave(sched_node_t *n);
void ps__sched_barrier_check_all(ps_sched_t *s);
void ps__sched_handle_barrier(ps_sched_t *s, ps_msg_t *m);

/* scheduler/ckpt.c */
void ps__sched_coord_send_cb(ps_coord_t *c, uint32_t node_id,
                             Ps__CheckpointRequest *req, void *arg);
void ps__sched_coord_done_cb(ps_coord_t *c, int status, const char *reason,
                             const ps_coord_result_t *res, void *arg);
void ps__sched_handle_checkpoint_command(ps_sched_t *s, ps_msg_t *m);
/* dir (from psctl checkpoint --dir: relative, or absolute inside base)
 * made a path inside base into out; "" is base itself. PS_OK, or
 * PS_ERR_PERMISSION_DENIED with why when it would leave base. */
int ps__sched_ckpt_confine(const char *base, const char *dir, char *out,
                           size_t len, char *why, size_t whylen);
void ps__sched_handle_checkpoint_reply(ps_sched_t *s, ps_msg_t *m);
void ps__sched_ckpt_periodic(ps_sched_t *s, uint64_t now);
int ps__sched_restore_prepare(ps_sched_t *s, const char *path, char *err,
                              size_t errlen);

/* scheduler/metrics.c */
int ps__sched_metrics_start(ps_sched_t *s, const char *bind, char *err,
                            size_t errlen);
static inline int ps__sched_role_slot(int role) {
  return role >= 0 && role < PS_ROLE_SLOTS ? role : 0;
}

/* scheduler/state.c */
uint64_t ps__sched_unix_now_ms(void);
void ps__sched_state_save(ps_sched_t *s);
int ps__sched_state_load(ps_sched_t *s, char *err, size_t errlen);

#endif
