/* The primary's side of replication (ARCHITECTURE "Failure semantics" 1-2).
 *
 * For every range this node is the primary of, the server tells the
 * replicator the range's chain (its backups, from the view). Each change to
 * the range then goes to every backup, in the order the primary made it, on
 * one DEALER connection per backup node: pushes (the received frame itself,
 * by reference), live-set changes, and, once per new backup, a snapshot of
 * the whole range first (proto/ps.proto, Replicate and ReplicaSnapshot).
 * ZeroMQ keeps the order of one connection, so a backup that replays them
 * through the same shard code holds bitwise the primary's state.
 *
 * A worker's push is acknowledged (push_done) only when every backup that
 * was in the chain when it went out has acked it, and in the order the pushes
 * came: an ack never overtakes an earlier change that a backup may not hold
 * yet, which also makes a duplicate's ack (a resend of a push still in
 * flight to the backups) wait for the original's. A backup that leaves the
 * chain (a new view declared it dead) is no longer waited for. A backup
 * that refuses a change (it follows a newer view in which this node is not
 * the primary) fails the push with that reason: the primary was replaced,
 * and its acks would be lies (fencing).
 *
 * Loop thread only. Not a general queue: entries are a ring indexed by the
 * replication request id, so a backup's ack finds its entry by subtraction.
 */
#ifndef PS_SERVER_REPLICA_H
#define PS_SERVER_REPLICA_H

#include <stdint.h>
#include <uv.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/frame.h"
#include "common/view.h"
#include "dedup.h"
#include "shard.h"
#include "sparse.h"

typedef struct ps_repl_s ps_repl_t;

typedef struct {
  /* A push is replicated (status PS_OK) or cannot be (status < 0, reason
   * says why); the callee answers the worker on route (borrowed: copy it
   * to keep it). worker: the push's sender. clock is the shard clock after
   * the push. */
  void (*push_done)(void *arg, zmq_msg_t *route, uint64_t request_id,
                    uint32_t worker, uint64_t clock, int duplicate, int status,
                    const char *reason);
  /* backup acked the snapshot of [begin, end): it holds the range now. */
  void (*synced)(void *arg, uint64_t begin, uint64_t end, uint32_t backup,
                 uint64_t bytes, uint64_t ms);
  /* Backups acked changes (or left a chain): ps_repl_range_waiting may
   * have dropped. Optional. */
  void (*progress)(void *arg);
} ps_repl_cbs_t;

/* Returns NULL when out of memory. */
ps_repl_t *ps_repl_new(uv_loop_t *loop, void *zctx,
                       const ps_frame_limits_t *limits,
                       const ps_repl_cbs_t *cbs, void *arg);

/* Fails every waiting push with PS_ERR_SHUTDOWN (push_done), closes the
 * connections, frees the replicator and sets *r_p to NULL. The loop must
 * run once more for the sockets' handles to be freed. */
void ps_repl_destroy(ps_repl_t **r_p);

/* This node's token (common/auth.h): its connections to backups carry it,
 * which is how they know the changes are its. Before the first chain. */
void ps_repl_set_token(ps_repl_t *r, const ps_auth_token_t *t);

/* CURVE (common/keys.h): connections to backups are made with keys, to
 * the key each backup has in the view. keys must outlive r. */
void ps_repl_set_keys(ps_repl_t *r, const ps_keys_t *keys);

/* This node's id and view epoch, sent with every change. */
void ps_repl_set_identity(ps_repl_t *r, uint32_t node_id, uint64_t epoch);

/* The backups of [vr->begin, vr->end) this node is the primary of, from
 * view (for their addresses). Backups that left the chain are no longer
 * waited for. Returns PS_OK or PS_ERR_NOMEM / a connect failure. */
int ps_repl_set_chain(ps_repl_t *r, const ps_view_t *view,
                      const ps_range_t *vr);

/* This node is no longer the primary of [begin, end): pushes waiting for
 * its backups fail with PS_ERR_STALE_EPOCH. */
void ps_repl_drop_chain(ps_repl_t *r, uint64_t begin, uint64_t end);

/* Workers' pushes forwarded to backups one by one (ps_repl_push: ASP,
 * SSP, a model with sparse tables), and the messages that carried them: a
 * push that comes while the range's backups have yet to answer what they
 * were sent waits for them, and the pushes that waited go together (one
 * REPL_PUSHES message of up to PS_MAX_PAYLOAD_FRAMES pushes, or 8 MiB). */
void ps_repl_push_stats(const ps_repl_t *r, uint64_t *pushes,
                        uint64_t *messages);

/* Number of backups of the chain of [begin, end) (0 when unknown). */
uint32_t ps_repl_nbackups(const ps_repl_t *r, uint64_t begin, uint64_t end);

/* A worker's push of p's keys (already applied, or about to be, by the
 * caller) goes to every backup; push_done follows once all acked. payload
 * is the received frame (referenced, not copied); duplicate: the push was
 * applied before, nothing is forwarded and the ack only waits its turn.
 * Returns PS_OK or PS_ERR_NOMEM (nothing sent, push_done not called). */
int ps_repl_push(ps_repl_t *r, uint64_t begin, uint64_t end, zmq_msg_t *route,
                 uint64_t request_id, uint64_t clock_after, int duplicate,
                 uint32_t worker, const Ps__Push *p, zmq_msg_t *payload);

/* The same for a worker's sparse push p to the range's rows: frames are
 * its two received frames (keys, values), referenced. Never a duplicate:
 * a resent sparse push is acked through ps_repl_push's duplicate path. */
int ps_repl_sparse_push(ps_repl_t *r, uint64_t begin, uint64_t end,
                        zmq_msg_t *route, uint64_t request_id,
                        uint64_t clock_after, uint32_t worker,
                        const Ps__SparsePush *p, zmq_msg_t *frames);

/* Replication one BSP step at a time (a model without sparse tables):
 * instead of every worker's push, the primary sends each step's summed
 * gradient once (REPL_STEP), W times less traffic for W workers, and a
 * push's ack waits until its step is on every backup.
 *
 * ps_repl_hold: worker's push (route, request_id, its sequence number seq)
 * of the range's current step, applied here, is acked once that step is
 * replicated (ps_repl_step); duplicate: a resend of a push held (one
 * ps_repl_held finds), acked with it. PS_OK, PS_ERR_NOMEM, or
 * PS_ERR_INVAL when the range has no chain here.
 *
 * ps_repl_held: 1 if (worker, seq) is a push the range holds.
 *
 * ps_repl_step: the range's clock moved from step to clock_after (sum:
 * NULL, or the range's length in values, what step applied times scale;
 * copied): every backup is told (REPL_STEP, with the held pushes' (worker,
 * seq) pairs), and the held pushes are acked, in order, once all acked it
 * (failing if a backup refused it), or at once when the chain has no
 * backups and nothing else waits. PS_OK, PS_ERR_NOMEM or PS_ERR_INVAL (no
 * chain), nothing sent on an error. */
int ps_repl_hold(ps_repl_t *r, uint64_t begin, uint64_t end, zmq_msg_t *route,
                 uint64_t request_id, uint32_t worker, uint64_t seq,
                 int duplicate);
int ps_repl_held(const ps_repl_t *r, uint64_t begin, uint64_t end,
                 uint32_t worker, uint64_t seq);
int ps_repl_step(ps_repl_t *r, uint64_t begin, uint64_t end, uint64_t step,
                 uint64_t clock_after, const float *sum, float scale);

/* Whether this node keeps a chain for [begin, end) (it is its primary and
 * adopted the range's backups). */
int ps_repl_has_chain(const ps_repl_t *r, uint64_t begin, uint64_t end);

/* The range's live set changed (or was set): every backup replays it. */
int ps_repl_live(ps_repl_t *r, uint64_t begin, uint64_t end,
                 const ps_shard_live_t *live, size_t n);

/* Sends the whole state of shard (its dedup table, and the range's rows of
 * the nsparse sparse tables, in model order) to backup, which must be in
 * the range's chain. synced follows its ack. */
int ps_repl_snapshot(ps_repl_t *r, uint32_t backup, ps_shard_t *shard,
                     const ps_dedup_t *dedup, ps_sparse_table_t *const *sparse,
                     size_t nsparse);

/* Changes waiting for backups' acks. */
size_t ps_repl_waiting(const ps_repl_t *r);

/* Changes to [begin, end) that some backup has not acked yet: 0 means
 * every backup holds every change this node made to the range. */
size_t ps_repl_range_waiting(const ps_repl_t *r, uint64_t begin, uint64_t end);

#endif
