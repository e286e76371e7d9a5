/* Replication, the backup's side: replaying a primary's changes and taking
 * its snapshot of a range, and holding the messages that come ahead of our
 * view. ps-server/replica.c has the primary's side. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/log.h"
#include "common/optimizer.h"
#include "common/transport.h"
#include "server_int.h"

/* Replication messages from a primary whose view is newer than ours wait
 * for our view; more than this is not a view in transit. */
#define DEFERRED_MAX 65536

/* ---- replication, the backup's side (ps-server/replica.h: primary) ---- */

static void defer(ps_server_t *s, ps_msg_t *m) {
  if (s->ndeferred >= DEFERRED_MAX) {
    ps__server_refuse(
        s, m, PS_ERR_REFUSED,
        "%d replication messages already wait for view epoch %llu",
        DEFERRED_MAX, (unsigned long long)m->env->epoch);
    return;
  }
  deferred_t *d = calloc(1, sizeof(*d));
  if (d == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM,
                      "no memory to hold a replication message");
    return;
  }
  /* Moved, frames and all: ps_msg_close of the original closes nothing. */
  d->m.has_route = m->has_route;
  zmq_msg_init(&d->m.route);
  if (m->has_route) zmq_msg_move(&d->m.route, &m->route);
  m->has_route = 0;
  d->m.env = m->env;
  m->env = NULL;
  d->m.request_id = m->request_id;
  /* The sender's key (CURVE): role_allowed checks it again when the
   * message is served; without it a held replicate read as a "none" key's
   * and was refused, and the primary's replication of the range failed. */
  memcpy(d->m.user_id, m->user_id, sizeof(d->m.user_id));
  d->m.npayload = m->npayload;
  for (int i = 0; i < m->npayload; i++) {
    zmq_msg_init(&d->m.payload[i]);
    zmq_msg_move(&d->m.payload[i], &m->payload[i]);
    zmq_msg_close(&m->payload[i]);
  }
  m->npayload = 0;
  *s->deferred_tail = d;
  s->deferred_tail = &d->next;
  s->ndeferred++;
}

/* The range [begin, end) this server is a backup of, with sender as its
 * primary, for a replication message m; NULL after taking care of m:
 * held for a newer view (defer), or refused (fencing: a primary that the
 * view replaced must not get an ack). */
static owned_range_t *replica_range(ps_server_t *s, ps_msg_t *m, uint64_t begin,
                                    uint64_t end) {
  uint64_t mine = ps__server_view_epoch(s);
  if (s->view == NULL || m->env->epoch > mine || s->restoring) {
    defer(s, m);
    return NULL;
  }
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->begin == begin && r->end == end && !r->primary &&
        r->primary_id == m->env->sender)
      return ps__server_sender_is(s, m, PS__ROLE__ROLE_SERVER) ? r : NULL;
  }
  ps__server_refuse(
      s, m, PS_ERR_FENCED,
      "node %u is not the primary of [%llu,%llu) with server %u as its "
      "backup at epoch %llu (its epoch %llu)",
      m->env->sender, (unsigned long long)begin, (unsigned long long)end,
      s->node_id, (unsigned long long)mine, (unsigned long long)m->env->epoch);
  return NULL;
}

static void reply_replica_ack(ps_server_t *s, ps_msg_t *m, uint64_t clock) {
  s->stats.replicated++;
  ps__server_reply_ack(s, &m->route, m->request_id, clock, 0);
}

/* A primary's sparse push, replayed through the same table code in the
 * primary's order. */
static void replay_sparse_push(ps_server_t *s, ps_msg_t *m, owned_range_t *r) {
  const Ps__Replicate *p = m->env->replicate;
  if (ps_dedup_check(r->dedup, p->worker, p->seq) == PS_DEDUP_DUP) {
    reply_replica_ack(s, m, ps_shard_clock(r->shard));
    return;
  }
  ps_sparse_table_t *t = NULL;
  for (size_t i = 0; r->sparse && p->table && i < r->nsparse; i++)
    if (strcmp(ps_sparse_table_name(r->sparse[i]), p->table) == 0)
      t = r->sparse[i];
  if (t == NULL) {
    ps__server_refuse(s, m, PS_ERR_UNKNOWN_KEY,
                      "no sparse table \"%s\" in [%llu,%llu)",
                      p->table ? p->table : "", (unsigned long long)r->begin,
                      (unsigned long long)r->end);
    return;
  }
  size_t nvals = (size_t)p->nkeys * ps_sparse_table_dim(t);
  if (zmq_msg_size(&m->payload[1]) != nvals * sizeof(float)) {
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "table \"%s\": values frame has %zu bytes for %llu rows "
                      "of dim %u",
                      p->table, zmq_msg_size(&m->payload[1]),
                      (unsigned long long)p->nkeys, ps_sparse_table_dim(t));
    return;
  }
  char why[256] = "out of memory";
  const uint64_t *keys = ps__server_aligned_keys(s, &m->payload[0], p->nkeys);
  const float *g = ps__server_aligned_floats(s, &m->payload[1], nvals);
  int rc = keys && g ? ps_dedup_reserve(r->dedup, p->worker) : PS_ERR_NOMEM;
  if (rc == PS_OK)
    rc = ps_shard_check_step(r->shard, p->worker, p->clock, why, sizeof(why));
  if (rc == PS_OK)
    rc = ps__server_sparse_apply(s, r, t, keys, p->nkeys, g, p->clock, why,
                                 sizeof(why));
  if (rc != PS_OK) {
    PS_ERROR("replica_diverged",
             "range=[%llu,%llu) primary=%u worker=%u seq=%llu table=%s "
             "reason=\"%s\"",
             (unsigned long long)r->begin, (unsigned long long)r->end,
             m->env->sender, p->worker, (unsigned long long)p->seq, p->table,
             why);
    ps__server_refuse(s, m, rc, "backup %u cannot replay the sparse push: %s",
                      s->node_id, why);
    return;
  }
  ps_dedup_mark(r->dedup, p->worker, p->seq);
  reply_replica_ack(s, m, ps_shard_clock(r->shard));
}

/* A step the primary applied (or skipped): the same sum through the same
 * kernel, and its pushes marked as applied, so that this copy, promoted,
 * acks their resends instead of applying them twice. */
static void replay_step(ps_server_t *s, ps_msg_t *m, owned_range_t *r) {
  const Ps__Replicate *p = m->env->replicate;
  char why[256];
  const float *sum = NULL;
  if (p->n_step_workers != p->n_step_seqs) {
    ps__server_refuse(s, m, PS_ERR_PROTO, "%zu step workers but %zu seqs",
                      p->n_step_workers, p->n_step_seqs);
    return;
  }
  if (p->sum && p->count != r->end - r->begin) {
    ps__server_refuse(
        s, m, PS_ERR_PROTO, "step sum of %llu values for a range of %llu",
        (unsigned long long)p->count, (unsigned long long)(r->end - r->begin));
    return;
  }
  if (p->sum &&
      (sum = ps__server_aligned_floats(s, &m->payload[0], p->count)) == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to align a step's sum");
    return;
  }
  int rc = PS_OK;
  for (size_t i = 0; i < p->n_step_workers && rc == PS_OK; i++)
    rc = ps_dedup_reserve(r->dedup, p->step_workers[i]);
  int applied = 0;
  if (rc == PS_OK)
    rc = ps_shard_follow_step(r->shard, p->clock, sum, p->step_scale,
                              p->clock_after, &applied, why, sizeof(why));
  else
    snprintf(why, sizeof(why), "out of memory");
  if (rc != PS_OK) {
    PS_ERROR("replica_diverged",
             "range=[%llu,%llu) primary=%u step=%llu reason=\"%s\"",
             (unsigned long long)r->begin, (unsigned long long)r->end,
             m->env->sender, (unsigned long long)p->clock, why);
    ps__server_refuse(s, m, rc, "backup %u cannot replay step %llu: %s",
                      s->node_id, (unsigned long long)p->clock, why);
    return;
  }
  for (size_t i = 0; i < p->n_step_workers; i++)
    ps_dedup_mark(r->dedup, p->step_workers[i], p->step_seqs[i]);
  reply_replica_ack(s, m, ps_shard_clock(r->shard));
  if (applied) ps__server_after_apply(s, r);
}

/* A primary's pushes (REPL_PUSH: one; REPL_PUSHES: n, frame i for push
 * i), replayed in its order through the same decoder and shard code, so
 * this copy holds bitwise the primary's values. One ack for the message:
 * sent before the apply for one push (the primary goes on meanwhile),
 * after them for several. A push this copy cannot take means the copies
 * differ: the message is refused (the primary fails those workers'
 * pushes, and the log says replica_diverged). A push the range applied
 * already (a resent message) is skipped. */
static void replay_pushes(ps_server_t *s, ps_msg_t *m, owned_range_t *r,
                          Ps__ReplPush *const *pushes, size_t n) {
  uint64_t clock_after = ps_shard_clock(r->shard);
  for (size_t i = 0; i < n; i++) {
    const Ps__ReplPush *p = pushes[i];
    if (ps_dedup_check(r->dedup, p->worker, p->seq) == PS_DEDUP_DUP) continue;
    char why[256];
    int code = PS_OK;
    const float *g = ps__server_push_floats(
        s, &m->payload[i], p->count, (int)p->codec, &code, why, sizeof(why));
    int rc = g ? ps_dedup_reserve(r->dedup, p->worker) : code;
    if (rc == PS_OK)
      rc = ps_shard_push_begin(r->shard, p->worker, p->key_begin, p->count,
                               p->clock, &clock_after, why, sizeof(why));
    else if (g != NULL)
      snprintf(why, sizeof(why), "out of memory");
    if (rc != PS_OK) {
      PS_ERROR("replica_diverged",
               "range=[%llu,%llu) primary=%u worker=%u seq=%llu "
               "reason=\"%s\"",
               (unsigned long long)r->begin, (unsigned long long)r->end,
               m->env->sender, p->worker, (unsigned long long)p->seq, why);
      ps__server_refuse(s, m, rc, "backup %u cannot replay push %zu of %zu: %s",
                        s->node_id, i + 1, n, why);
      return;
    }
    ps_dedup_mark(r->dedup, p->worker, p->seq);
    if (n == 1) reply_replica_ack(s, m, clock_after);
    int applied = 0;
    ps_shard_push_end(r->shard, p->worker, p->key_begin, p->count, g, p->clock,
                      &applied);
    if (applied) ps__server_after_apply(s, r);
    if (n == 1) return;
  }
  reply_replica_ack(s, m, clock_after);
}

void ps__server_handle_replicate(ps_server_t *s, ps_msg_t *m) {
  const Ps__Replicate *p = m->env->replicate;
  owned_range_t *r = replica_range(s, m, p->range_begin, p->range_end);
  if (r == NULL) return;
  if (r->shard == NULL) {
    ps__server_refuse(
        s, m, PS_ERR_NOT_READY, "server %u has no snapshot of [%llu,%llu) yet",
        s->node_id, (unsigned long long)r->begin, (unsigned long long)r->end);
    return;
  }
  int rc;
  int applied = 0;
  if (p->kind == PS__REPLICATE_KIND__REPL_LIVE) {
    if (p->n_live_from != p->n_live) {
      ps__server_refuse(s, m, PS_ERR_PROTO,
                        "%zu live workers but %zu first steps", p->n_live,
                        p->n_live_from);
      return;
    }
    ps_shard_live_t *live = calloc(p->n_live + 1, sizeof(*live));
    if (live == NULL) {
      ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory for a live set");
      return;
    }
    for (size_t i = 0; i < p->n_live; i++)
      live[i] = (ps_shard_live_t){p->live[i], p->live_from[i]};
    /* Step by step, the primary says when a live set completes or skips
     * a step (REPL_STEP): this copy's part of a step (a snapshot's) may
     * differ from the primary's whole one. */
    if (ps__server_step_repl(s))
      rc = ps_shard_set_live_only(r->shard, live, p->n_live);
    else
      rc = ps__server_range_set_live(r, live, p->n_live, &applied);
    free(live);
    if (rc != PS_OK) {
      ps__server_refuse(s, m, rc, "cannot set the live set of [%llu,%llu)",
                        (unsigned long long)r->begin,
                        (unsigned long long)r->end);
      return;
    }
    reply_replica_ack(s, m, ps_shard_clock(r->shard));
    if (applied) ps__server_after_apply(s, r);
    return;
  }
  if (p->kind == PS__REPLICATE_KIND__REPL_SPARSE_PUSH) {
    replay_sparse_push(s, m, r);
    return;
  }
  if (p->kind == PS__REPLICATE_KIND__REPL_STEP) {
    replay_step(s, m, r);
    return;
  }
  if (p->kind == PS__REPLICATE_KIND__REPL_PUSH) {
    Ps__ReplPush one = PS__REPL_PUSH__INIT;
    one.worker = p->worker;
    one.seq = p->seq;
    one.key_begin = p->key_begin;
    one.count = p->count;
    one.clock = p->clock;
    one.codec = p->codec;
    Ps__ReplPush *list[1] = {&one};
    replay_pushes(s, m, r, list, 1);
    return;
  }
  if (p->kind == PS__REPLICATE_KIND__REPL_PUSHES) {
    replay_pushes(s, m, r, p->pushes, p->n_pushes);
    return;
  }
  ps__server_refuse(s, m, PS_ERR_UNSUPPORTED, "replication kind %d",
                    (int)p->kind);
}

struct snap_in_s {
  uint64_t request_id; /* the head's: every chunk repeats it */
  uint32_t primary;
  uint32_t nchunks, got;
  uint64_t clock, acc_lo, acc_hi, bytes;
  uint32_t ndedup;
  float *weights, *state, *acc; /* acc: range offsets [acc_lo, acc_hi) */
  int state_slots;
  uint64_t *opt_steps;
  size_t nopt_steps;
  ps_shard_live_t *live;
  size_t nlive;
  ps_shard_contrib_t *contrib; /* every step's; the current one's first */
  size_t ncontrib;
  /* SSP: the sums of the steps after the current one (ReplicaSnapshot
   * pending_*): pending[i].acc points into acc_ahead[i], its contrib into
   * contrib. */
  ps_shard_pending_t pending[PS_SSP_STALENESS_MAX];
  float *acc_ahead[PS_SSP_STALENESS_MAX];
  size_t npending;
  ps_dedup_record_t *dedup;
  ps_sparse_table_t **sparse; /* filled by the SNAP_SPARSE_* chunks */
  size_t nsparse;
};

void ps__server_snap_in_free(snap_in_t **in_p) {
  snap_in_t *in = *in_p;
  if (in == NULL) return;
  free(in->weights);
  free(in->state);
  free(in->opt_steps);
  free(in->acc);
  for (size_t i = 0; i < in->npending; i++) free(in->acc_ahead[i]);
  free(in->live);
  free(in->contrib);
  free(in->dedup);
  ps__server_sparse_free_tables(&in->sparse, in->nsparse);
  free(in);
  *in_p = NULL;
}

/* A copy of frame f (n bytes) in fresh aligned memory, or NULL. */
static void *frame_dup(zmq_msg_t *f, size_t n) {
  void *p = malloc(n ? n : 1);
  if (p && n) memcpy(p, zmq_msg_data(f), n);
  return p;
}

/* The head of a snapshot of a range: this server is to become a backup in
 * step. Its state waits in r->incoming for the arrays. */
void ps__server_handle_snapshot(ps_server_t *s, ps_msg_t *m) {
  const Ps__ReplicaSnapshot *p = m->env->replica_snapshot;
  owned_range_t *r = replica_range(s, m, p->range_begin, p->range_end);
  if (r == NULL) return;
  size_t dbytes = zmq_msg_size(&m->payload[2]);
  if (dbytes != (size_t)p->ndedup * sizeof(ps_dedup_record_t)) {
    ps__server_refuse(
        s, m, PS_ERR_PROTO,
        "snapshot dedup frame has %zu bytes for %u records of %zu", dbytes,
        p->ndedup, sizeof(ps_dedup_record_t));
    return;
  }
  if (p->state_slots > PS_OPTIMIZER_SLOTS_MAX) {
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "snapshot with %u optimizer slots per key; at most %d",
                      p->state_slots, PS_OPTIMIZER_SLOTS_MAX);
    return;
  }
  uint64_t len = p->range_end - p->range_begin;
  size_t npending = p->n_pending_lo;
  uint64_t ahead_contrib = 0;
  int bad = p->n_pending_hi != npending || p->n_pending_ncontrib != npending ||
            npending > s->view->staleness;
  for (size_t i = 0; !bad && i < npending; i++) {
    bad = p->pending_lo[i] > p->pending_hi[i] || p->pending_hi[i] > len;
    ahead_contrib += p->pending_ncontrib[i];
  }
  if (bad || ahead_contrib > p->ncontrib) {
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "snapshot of [%llu,%llu) with %zu later steps' sums "
                      "(staleness %u): lists of different lengths, too many, "
                      "an interval outside the range or more contributions "
                      "than the %u of the frame",
                      (unsigned long long)p->range_begin,
                      (unsigned long long)p->range_end, npending,
                      s->view->staleness, p->ncontrib);
    return;
  }
  ps__server_snap_in_free(&r->incoming);
  int ahead_ok = 1;
  snap_in_t *in = calloc(1, sizeof(*in));
  if (in != NULL) {
    in->request_id = m->request_id;
    in->primary = m->env->sender;
    in->nchunks = p->nchunks;
    in->clock = p->clock;
    in->acc_lo = p->acc_lo;
    in->acc_hi = p->acc_hi;
    in->ndedup = p->ndedup;
    in->nlive = p->nlive;
    in->ncontrib = p->ncontrib - ahead_contrib; /* the current step's */
    in->npending = npending;
    in->weights = malloc(len * sizeof(float));
    in->state_slots = (int)p->state_slots;
    in->state =
        p->state_slots ? malloc(len * p->state_slots * sizeof(float)) : NULL;
    in->nopt_steps = p->n_opt_steps;
    in->opt_steps = malloc((p->n_opt_steps + 1) * sizeof(uint64_t));
    if (in->opt_steps && p->n_opt_steps)
      memcpy(in->opt_steps, p->opt_steps, p->n_opt_steps * sizeof(uint64_t));
    in->acc = malloc((p->acc_hi - p->acc_lo) * sizeof(float) + 1);
    in->live = frame_dup(&m->payload[0], zmq_msg_size(&m->payload[0]));
    in->contrib = frame_dup(&m->payload[1], zmq_msg_size(&m->payload[1]));
    in->dedup = frame_dup(&m->payload[2], dbytes);
    size_t k = in->ncontrib;
    for (size_t i = 0; i < npending; i++) {
      ps_shard_pending_t *pd = &in->pending[i];
      pd->acc_lo = p->pending_lo[i];
      pd->acc_hi = p->pending_hi[i];
      in->acc_ahead[i] = malloc((pd->acc_hi - pd->acc_lo) * sizeof(float) + 1);
      if (in->acc_ahead[i] == NULL) ahead_ok = 0;
      pd->acc = in->acc_ahead[i];
      pd->contrib = in->contrib ? in->contrib + k : NULL;
      pd->ncontrib = p->pending_ncontrib[i];
      k += pd->ncontrib;
    }
    in->bytes =
        zmq_msg_size(&m->payload[0]) + zmq_msg_size(&m->payload[1]) + dbytes;
    in->nsparse = s->view->model.nsparse;
    in->sparse = ps__server_sparse_new_tables(s, s->view);
  }
  if (in == NULL || in->weights == NULL ||
      (p->state_slots && in->state == NULL) || in->opt_steps == NULL ||
      in->acc == NULL || !ahead_ok || in->live == NULL || in->contrib == NULL ||
      in->dedup == NULL || in->sparse == NULL) {
    ps__server_snap_in_free(&in);
    ps__server_refuse(s, m, PS_ERR_NOMEM,
                      "no memory for a snapshot of [%llu,%llu) (%llu values)",
                      (unsigned long long)p->range_begin,
                      (unsigned long long)p->range_end,
                      (unsigned long long)len);
    return;
  }
  r->incoming = in;
}

/* Puts the received state in place of whatever r held. */
static int snap_install(ps_server_t *s, owned_range_t *r, char *why,
                        size_t whylen) {
  snap_in_t *in = r->incoming;
  int rc = PS_OK;
  ps_shard_t *shard = ps_shard_new_tick(
      r->begin, r->end, &s->view->model, s->view->mode, s->view->staleness,
      NULL, 0, ps__server_fill_tick, s, &rc, why, whylen);
  ps_dedup_t *dedup = ps_dedup_new();
  if (shard == NULL || dedup == NULL) {
    if (shard != NULL) snprintf(why, whylen, "out of memory");
    ps_shard_destroy(&shard);
    ps_dedup_destroy(&dedup);
    return rc != PS_OK ? rc : PS_ERR_NOMEM;
  }
  ps_shard_state_t st = {
      .clock = in->clock,
      .weights = in->weights,
      .state = in->state,
      .state_slots = in->state_slots,
      .opt_steps = in->opt_steps,
      .nopt_steps = in->nopt_steps,
      .acc_lo = in->acc_lo,
      .acc_hi = in->acc_hi,
      .acc = in->acc,
      .live = in->live,
      .nlive = in->nlive,
      .contrib = in->contrib,
      .ncontrib = in->ncontrib,
      .pending = in->npending ? in->pending : NULL,
      .npending = in->npending,
  };
  rc = ps_shard_import(shard, &st, why, whylen);
  if (rc == PS_OK) {
    rc = ps_dedup_import(dedup, in->dedup, in->ndedup);
    if (rc != PS_OK) snprintf(why, whylen, "bad dedup records");
  }
  if (rc != PS_OK) {
    ps_shard_destroy(&shard);
    ps_dedup_destroy(&dedup);
    return rc;
  }
  ps_shard_destroy(&r->shard);
  ps_dedup_destroy(&r->dedup);
  ps__server_sparse_retire_tables(s, &r->sparse, r->nsparse);
  r->shard = shard;
  r->dedup = dedup;
  r->sparse = in->sparse;
  r->nsparse = in->nsparse;
  in->sparse = NULL;
  return PS_OK;
}

static void snap_finish(ps_server_t *s, ps_msg_t *m, owned_range_t *r);

/* A chunk of a snapshot's sparse rows (or BSP sums) into the tables it
 * fills. 1, or 0 after refusing m and dropping the snapshot. */
static int snap_sparse_chunk(ps_server_t *s, ps_msg_t *m, owned_range_t *r) {
  const Ps__ReplicaChunk *p = m->env->replica_chunk;
  snap_in_t *in = r->incoming;
  int sums = p->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SUM;
  ps_sparse_table_t *t = p->table < in->nsparse ? in->sparse[p->table] : NULL;
  size_t floats = t == NULL ? 0
                  : sums    ? ps_sparse_table_dim(t)
                            : ps_sparse_table_row_floats(t);
  size_t want = (size_t)p->count * floats * sizeof(float);
  if (t == NULL || zmq_msg_size(&m->payload[1]) != want) {
    ps__server_snap_in_free(&r->incoming);
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "snapshot chunk of sparse table %u: no such table, or "
                      "%zu bytes for %llu rows of %zu floats",
                      p->table, zmq_msg_size(&m->payload[1]),
                      (unsigned long long)p->count, floats);
    return 0;
  }
  uint64_t *keys = frame_dup(&m->payload[0], p->count * sizeof(uint64_t));
  float *rows = frame_dup(&m->payload[1], want);
  int rc = keys && rows ? PS_OK : PS_ERR_NOMEM;
  if (rc == PS_OK)
    rc = sums ? ps_sparse_table_put_pending(t, keys, p->count, rows)
              : ps_sparse_table_put(t, keys, p->count, rows);
  free(keys);
  free(rows);
  if (rc != PS_OK) {
    ps__server_snap_in_free(&r->incoming);
    ps__server_refuse(s, m, rc, "no memory for %llu sparse rows of a snapshot",
                      (unsigned long long)p->count);
    return 0;
  }
  in->bytes += want + p->count * sizeof(uint64_t);
  return 1;
}

/* A piece of the arrays of the snapshot r is receiving; the last one
 * installs it and acks the head. */
void ps__server_handle_chunk(ps_server_t *s, ps_msg_t *m) {
  const Ps__ReplicaChunk *p = m->env->replica_chunk;
  owned_range_t *r = replica_range(s, m, p->range_begin, p->range_end);
  if (r == NULL) return;
  snap_in_t *in = r->incoming;
  if (in == NULL || in->request_id != m->request_id ||
      in->primary != m->env->sender) {
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "snapshot chunk of [%llu,%llu) without its head",
                      (unsigned long long)r->begin, (unsigned long long)r->end);
    return;
  }
  if (p->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SKETCH) {
    ps_sparse_table_t *t = p->table < in->nsparse ? in->sparse[p->table] : NULL;
    uint32_t *cells = frame_dup(&m->payload[0], p->count * sizeof(uint32_t));
    int rc = t && cells ? ps_sparse_table_put_sketch(t, cells, p->count)
                        : PS_ERR_INVAL;
    free(cells);
    if (rc != PS_OK) {
      ps__server_snap_in_free(&r->incoming);
      ps__server_refuse(s, m, PS_ERR_PROTO,
                        "snapshot sketch of sparse table %u: no such table or "
                        "%llu counters, not what this server's cap keeps",
                        p->table, (unsigned long long)p->count);
      return;
    }
    in->bytes += p->count * sizeof(uint32_t);
    if (++in->got < in->nchunks) return;
    snap_finish(s, m, r);
    return;
  }
  if (p->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_ROWS ||
      p->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SUM) {
    if (!snap_sparse_chunk(s, m, r)) return;
    if (++in->got < in->nchunks) return;
    snap_finish(s, m, r);
    return;
  }
  uint64_t len = r->end - r->begin, lo = 0, hi = len;
  float *dst = in->weights;
  if (p->array == PS__SNAPSHOT_ARRAY__SNAP_STATE) {
    dst = in->state;
    hi = len * (uint64_t)in->state_slots;
  } else if (p->array == PS__SNAPSHOT_ARRAY__SNAP_SUM && p->step_ahead == 0) {
    lo = in->acc_lo;
    hi = in->acc_hi;
    dst = in->acc; /* holds range offsets [acc_lo, acc_hi) */
  } else if (p->array == PS__SNAPSHOT_ARRAY__SNAP_SUM) {
    /* SSP: a later step's sum; NULL (refused) when not announced. */
    size_t i = p->step_ahead - 1;
    dst = i < in->npending ? in->acc_ahead[i] : NULL;
    lo = i < in->npending ? in->pending[i].acc_lo : 0;
    hi = i < in->npending ? in->pending[i].acc_hi : 0;
  } else if (p->array != PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS) {
    dst = NULL;
  }
  if (dst == NULL || p->offset < lo || p->offset > hi ||
      p->count > hi - p->offset) {
    ps__server_snap_in_free(&r->incoming);
    ps__server_refuse(
        s, m, PS_ERR_PROTO,
        "snapshot chunk of array %d, offsets [%llu,+%llu), outside "
        "[%llu,%llu) or not announced",
        (int)p->array, (unsigned long long)p->offset,
        (unsigned long long)p->count, (unsigned long long)lo,
        (unsigned long long)hi);
    return;
  }
  ps_msg_payload_gather(m, dst + (p->offset - lo));
  in->bytes += p->count * sizeof(float);
  if (++in->got < in->nchunks) return;
  snap_finish(s, m, r);
}

/* The last chunk is in: installs the snapshot and acks its head. */
static void snap_finish(ps_server_t *s, ps_msg_t *m, owned_range_t *r) {
  snap_in_t *in = r->incoming;
  uint64_t len = r->end - r->begin;
  char why[256] = "";
  uint64_t clock = in->clock, bytes = in->bytes;
  uint32_t ndedup = in->ndedup;
  int rc = snap_install(s, r, why, sizeof(why));
  ps__server_snap_in_free(&r->incoming);
  if (rc != PS_OK) {
    ps__server_refuse(s, m, rc, "snapshot of [%llu,%llu) refused: %s",
                      (unsigned long long)r->begin, (unsigned long long)r->end,
                      why);
    return;
  }
  s->stats.snapshots_in++;
  PS_INFO("replica_filled",
          "range=[%llu,%llu) primary=%u clock=%llu keys=%llu workers=%u "
          "epoch=%llu bytes=%llu",
          (unsigned long long)r->begin, (unsigned long long)r->end,
          m->env->sender, (unsigned long long)clock, (unsigned long long)len,
          ndedup, (unsigned long long)ps__server_view_epoch(s),
          (unsigned long long)bytes);
  reply_replica_ack(s, m, clock);
}

/* Serves, in order, the held replication messages our view has caught up
 * with; stops at the first one still ahead, so a primary's changes keep
 * their order. */
void ps__server_serve_deferred(ps_server_t *s) {
  while (s->deferred && s->view &&
         s->deferred->m.env->epoch <= s->view->epoch && !s->restoring) {
    deferred_t *d = s->deferred;
    s->deferred = d->next;
    if (s->deferred == NULL) s->deferred_tail = &s->deferred;
    s->ndeferred--;
    ps__server_dispatch(s, &d->m);
    ps_msg_close(&d->m);
    free(d);
  }
}

void ps__server_deferred_free(ps_server_t *s) {
  while (s->deferred) {
    deferred_t *d = s->deferred;
    s->deferred = d->next;
    ps_msg_close(&d->m);
    free(d);
  }
  s->deferred_tail = &s->deferred;
  s->ndeferred = 0;
}
