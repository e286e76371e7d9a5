/* The ranges this server holds a copy of: adopting a view (which ranges,
 * as primary or backup), the live set, a primary's duties to its backups
 * (snapshots, ReplicaSynced), and answering workers that join. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/view.h"
#include "server_int.h"

/* "[0,1024),[2048,4096)" into buf, for logs and error messages. */
const char *ps__server_format_ranges(const ps_server_t *s, char *buf,
                                     size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  if (s->nranges == 0) {
    snprintf(buf, len, "none");
    return buf;
  }
  for (size_t i = 0; i < s->nranges && n < len; i++) {
    const owned_range_t *r = &s->ranges[i];
    int w = snprintf(buf + n, len - n, "%s[%llu,%llu)%s", i ? "," : "",
                     (unsigned long long)r->begin, (unsigned long long)r->end,
                     r->primary ? "" : (r->shard ? "b" : "b?"));
    if (w < 0) break;
    n += (size_t)w;
  }
  return buf;
}

/* Sets r's live set (ps_shard_set_live), saying so in the log when the
 * clock skipped steps that no live worker contributes to. */
int ps__server_range_set_live(owned_range_t *r, const ps_shard_live_t *live,
                              size_t nlive, int *applied) {
  ps_shard_stats_t before, after;
  ps_shard_stats(r->shard, &before);
  uint64_t from = ps_shard_clock(r->shard);
  int rc = ps_shard_set_live(r->shard, live, nlive, applied);
  ps_shard_stats(r->shard, &after);
  if (after.skipped_steps > before.skipped_steps)
    PS_WARN("steps_skipped",
            "range=[%llu,%llu) from=%llu to=%llu reason=\"no live worker "
            "contributes before step %llu\"",
            (unsigned long long)r->begin, (unsigned long long)r->end,
            (unsigned long long)from,
            (unsigned long long)ps_shard_clock(r->shard),
            (unsigned long long)ps_shard_clock(r->shard));
  return rc;
}

/* ---- views and the ranges they give ---- */

/* The node ids of the view's live workers, into *ids (caller frees; NULL
 * when there are none). Returns 0 when out of memory. */
static int live_worker_ids(const ps_view_t *view, uint32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  size_t count = 0;
  for (size_t i = 0; i < view->nnodes; i++)
    if (view->nodes[i].role == PS__ROLE__ROLE_WORKER &&
        view->nodes[i].state == PS__NODE_STATE__NODE_STATE_ALIVE)
      count++;
  if (count == 0) return 1;
  *ids = malloc(count * sizeof(**ids));
  if (*ids == NULL) return 0;
  for (size_t i = 0; i < view->nnodes; i++)
    if (view->nodes[i].role == PS__ROLE__ROLE_WORKER &&
        view->nodes[i].state == PS__NODE_STATE__NODE_STATE_ALIVE)
      (*ids)[(*n)++] = view->nodes[i].id;
  return 1;
}

/* The view's live workers with the first step each contributes to, into
 * *live (caller frees; NULL when there are none). A worker that joins a
 * running job is in it from its join_clock on, also while the servers
 * still confirm that step (joining): a shard must not pass the step before
 * the worker is counted. Returns 0 when out of memory. */
static int live_set(const ps_view_t *view, ps_shard_live_t **live, size_t *n) {
  uint32_t *ids;
  if (!live_worker_ids(view, &ids, n)) return 0;
  *live = NULL;
  if (*n == 0) return 1;
  *live = calloc(*n, sizeof(**live));
  if (*live == NULL) {
    free(ids);
    return 0;
  }
  for (size_t i = 0; i < *n; i++) {
    const ps_node_t *node = ps_view_node(view, ids[i]);
    (*live)[i] = (ps_shard_live_t){ids[i], node ? node->join_clock : 0};
  }
  free(ids);
  return 1;
}

static void owned_free(ps_server_t *s, owned_range_t *r, const char *why) {
  /* The chain first: dropping it completes the pushes that were waiting
   * behind it, and a PushPull among them that was applied and acked may
   * park its pull on r, which the parked pulls' failure then answers. */
  if (r->primary && s->repl) ps_repl_drop_chain(s->repl, r->begin, r->end);
  ps__server_fail_parked(s, r, PS_ERR_STALE_EPOCH, why);
  ps_shard_destroy(&r->shard);
  ps_dedup_destroy(&r->dedup);
  ps__server_sparse_retire_tables(s, &r->sparse, r->nsparse);
  ps__server_snap_in_free(&r->incoming);
}

static int listed(const uint32_t *ids, uint32_t n, uint32_t id) {
  for (uint32_t k = 0; k < n; k++)
    if (ids[k] == id) return 1;
  return 0;
}

/* Keeps the ids of the n in ids that are backups of vr; returns how many. */
static uint32_t keep_backups(uint32_t *ids, uint32_t n, const ps_range_t *vr) {
  uint32_t keep = 0;
  for (uint32_t k = 0; k < n; k++)
    if (ps_range_has_backup(vr, ids[k])) ids[keep++] = ids[k];
  return keep;
}

/* Tells the scheduler that backup holds [begin, end) (ReplicaSynced). */
static void send_replica_synced(ps_server_t *s, uint64_t begin, uint64_t end,
                                uint32_t backup, uint64_t bytes, uint64_t ms) {
  if (s->member == NULL) return;
  Ps__ReplicaSynced rs = PS__REPLICA_SYNCED__INIT;
  rs.range_begin = begin;
  rs.range_end = end;
  rs.backup = backup;
  rs.bytes = bytes;
  rs.duration_ms = ms;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SYNCED;
  env.replica_synced = &rs;
  int rc = ps_member_send(s->member, &env);
  if (rc != PS_OK)
    PS_WARN("replica_synced_send_failed", "backup=%u err=%s", backup,
            ps_err_name(rc));
}

/* A primary's duties after a view: its backups (a new one gets the whole
 * range first), the live set, replayed by every backup. */
static int primary_adopt(ps_server_t *s, owned_range_t *r, const ps_range_t *vr,
                         const ps_shard_live_t *live, size_t nlive) {
  int applied = 0;
  int rc = ps__server_range_set_live(r, live, nlive, &applied);
  if (rc != PS_OK) return rc;
  if (applied) ps__server_after_apply(s, r);
  rc = ps_repl_set_chain(s->repl, s->view, vr);
  if (rc != PS_OK) return rc;
  /* Forget the backups that left: one that comes back needs a snapshot. */
  r->nsnapped = keep_backups(r->snapped, r->nsnapped, vr);
  r->nsynced = keep_backups(r->synced, r->nsynced, vr);
  for (uint32_t k = 0; k < vr->nbackups; k++) {
    uint32_t b = vr->backups[k];
    if (!ps_range_backup_syncing(vr, b)) continue;
    if (listed(r->synced, r->nsynced, b)) {
      /* The scheduler missed our word (it was down): say it again. */
      send_replica_synced(s, r->begin, r->end, b, 0, 0);
      continue;
    }
    if (listed(r->snapped, r->nsnapped, b)) continue;
    rc = ps_repl_snapshot(s->repl, b, r->shard, r->dedup, r->sparse,
                          r->sparse ? r->nsparse : 0);
    if (rc != PS_OK) return rc;
    r->snapped[r->nsnapped++] = b;
  }
  /* After the snapshots: a new backup must have the range before a change
   * to it. */
  rc = ps_repl_live(s->repl, r->begin, r->end, live, nlive);
  /* A step the live set completed above went to no chain (a backup just
   * promoted had none): the backups that stayed hear of it now; the ones
   * just sent a snapshot hold it already. */
  if (rc == PS_OK) ps__server_flush_step(s, r);
  return rc;
}

/* Answers the scheduler for every worker that joins at a step (see
 * proto NodeInfo.join_clock): ok when no range this server is the primary
 * of has applied that step yet. */
static void answer_joins(ps_server_t *s) {
  const ps_view_t *v = s->view;
  for (size_t i = 0; i < v->nnodes; i++) {
    const ps_node_t *n = &v->nodes[i];
    if (n->role != PS__ROLE__ROLE_WORKER || !n->joining) continue;
    uint64_t clock = 0;
    for (size_t j = 0; j < s->nranges; j++) {
      const owned_range_t *r = &s->ranges[j];
      if (!r->primary || r->shard == NULL) continue;
      uint64_t c = ps_shard_clock(r->shard);
      if (c > clock) clock = c;
    }
    Ps__JoinReply jr = PS__JOIN_REPLY__INIT;
    jr.node = n->id;
    jr.join_clock = n->join_clock;
    jr.ok = clock <= n->join_clock;
    jr.clock = clock;
    Ps__Envelope env = PS__ENVELOPE__INIT;
    env.body_case = PS__ENVELOPE__BODY_JOIN_REPLY;
    env.join_reply = &jr;
    if (s->member) ps_member_send(s->member, &env);
    PS_INFO("join_answered", "worker=%u join_clock=%llu ok=%d clock=%llu",
            n->id, (unsigned long long)n->join_clock, jr.ok,
            (unsigned long long)clock);
  }
}

/* Adopts view: every range it gives this node, as primary or backup, gets
 * an entry (the shard kept when this node held the range already: a backup
 * promoted to primary goes on from its replayed state), the others are
 * dropped. A range's first copies start from the model's initializer (or
 * the checkpoint being restored); a backup added later waits for its
 * primary's snapshot. Returns PS_OK or a failure that must stop the
 * server. */
int ps__server_adopt_view(ps_server_t *s, ps_view_t *view, char *err,
                          size_t errlen) {
  uint32_t me = s->node_id;
  size_t nmine = 0;
  for (size_t i = 0; i < view->nranges; i++) {
    const ps_range_t *vr = &view->ranges[i];
    if (vr->begin < vr->end &&
        (vr->server_id == me || ps_range_has_backup(vr, me)))
      nmine++;
  }
  ps_shard_live_t *live = NULL;
  size_t nlive = 0;
  int live_ok = live_set(view, &live, &nlive);
  owned_range_t *next = calloc(nmine ? nmine : 1, sizeof(*next));
  if (!live_ok || next == NULL) {
    free(live);
    free(next);
    snprintf(err, errlen, "out of memory adopting view epoch %llu",
             (unsigned long long)view->epoch);
    return PS_ERR_NOMEM;
  }
  /* A job's first view (or a restart's) starts every copy from the
   * initializer; later, only a range with no copy anywhere does. */
  int first = s->view == NULL;
  size_t k = 0;
  int rc = PS_OK;
  for (size_t i = 0; i < view->nranges && rc == PS_OK; i++) {
    const ps_range_t *vr = &view->ranges[i];
    int primary = vr->server_id == me;
    if (vr->begin >= vr->end || (!primary && !ps_range_has_backup(vr, me)))
      continue;
    owned_range_t *r = &next[k++];
    r->begin = vr->begin;
    r->end = vr->end;
    r->primary = primary;
    r->primary_id = vr->server_id;
    for (size_t j = 0; j < s->nranges; j++) {
      owned_range_t *old = &s->ranges[j];
      if (old->begin != vr->begin || old->end != vr->end) continue;
      r->shard = old->shard;
      r->dedup = old->dedup;
      r->sparse = old->sparse;
      r->nsparse = old->nsparse;
      r->parked = old->parked;
      r->incoming = old->incoming; /* a backup's snapshot on its way */
      /* A new primary's backups hold what it holds (a promoted backup
       * followed the same steps). */
      r->repl_clock = old->primary && primary ? old->repl_clock
                      : old->shard            ? ps_shard_clock(old->shard)
                                              : 0;
      if (old->primary && primary) {
        r->nsnapped = old->nsnapped;
        memcpy(r->snapped, old->snapped, sizeof(r->snapped));
        r->nsynced = old->nsynced;
        memcpy(r->synced, old->synced, sizeof(r->synced));
        /* A handover in progress outlives views that leave the range here
         * (a worker joined meanwhile): only the scheduler ends it. */
        r->handover_id = old->handover_id;
        r->handover_to = old->handover_to;
        r->handover_since_ms = old->handover_since_ms;
        r->handover_ready = old->handover_ready;
        r->handover_resumed = old->handover_resumed;
      }
      if (!primary && old->primary) {
        ps__server_fail_parked(s, r, PS_ERR_STALE_EPOCH,
                               "this server is now a backup of the range");
        ps_repl_drop_chain(s->repl, r->begin, r->end);
        rc = ps__server_handover_demoted(s, old, err, errlen);
      }
      if (primary && !old->primary)
        PS_WARN("promoted",
                "range=[%llu,%llu) epoch=%llu clock=%llu backups=%u",
                (unsigned long long)r->begin, (unsigned long long)r->end,
                (unsigned long long)view->epoch,
                (unsigned long long)(r->shard ? ps_shard_clock(r->shard) : 0),
                vr->nbackups);
      memset(old, 0, sizeof(*old));
    }
    if (rc != PS_OK) break;
    if (r->dedup == NULL && (r->dedup = ps_dedup_new()) == NULL) {
      rc = PS_ERR_NOMEM;
      snprintf(err, errlen, "out of memory adopting view epoch %llu",
               (unsigned long long)view->epoch);
      break;
    }
    int from_init =
        r->shard == NULL && (primary || !ps_range_backup_syncing(vr, me));
    if (from_init) {
      uint64_t t0 = uv_hrtime();
      r->shard = ps_shard_new_tick(vr->begin, vr->end, &view->model, view->mode,
                                   view->staleness, NULL, 0,
                                   ps__server_fill_tick, s, &rc, err, errlen);
      if (r->shard == NULL) break;
      PS_INFO("range_filled", "range=[%llu,%llu) keys=%llu ms=%llu",
              (unsigned long long)vr->begin, (unsigned long long)vr->end,
              (unsigned long long)(vr->end - vr->begin),
              (unsigned long long)((uv_hrtime() - t0) / 1000000));
      ps__server_sparse_free_tables(&r->sparse, r->nsparse);
      r->nsparse = view->model.nsparse;
      if ((r->sparse = ps__server_sparse_new_tables(s, view)) == NULL) {
        rc = PS_ERR_NOMEM;
        snprintf(err, errlen, "out of memory creating sparse tables");
        break;
      }
      if (primary && !first)
        /* Every copy of the range was lost: the job goes on, but from the
         * initial weights for these keys. */
        PS_ERROR("range_reinitialized", "range=[%llu,%llu) epoch=%llu",
                 (unsigned long long)vr->begin, (unsigned long long)vr->end,
                 (unsigned long long)view->epoch);
      /* A first copy's live set is the view's; a backup's then follows its
       * primary's stream. */
      int ignored;
      rc = ps_shard_set_live(r->shard, live, nlive, &ignored);
    }
  }
  if (rc != PS_OK) {
    /* The server stops (the caller's promise); what moved is freed. */
    for (size_t i = 0; i < k; i++) owned_free(s, &next[i], "the server stops");
    free(next);
    free(live);
    return rc;
  }
  for (size_t j = 0; j < s->nranges; j++) {
    owned_range_t *old = &s->ranges[j];
    if (old->shard == NULL && old->dedup == NULL) continue;
    /* Planned (a copy moved to another server, or a drain) or after a
     * failover: the scheduler's log says which. */
    PS_INFO("range_dropped", "range=[%llu,%llu) role=%s epoch=%llu",
            (unsigned long long)old->begin, (unsigned long long)old->end,
            old->primary ? "primary" : "backup",
            (unsigned long long)view->epoch);
    owned_free(s, old, "the range moved to another server in a new view");
  }
  free(s->ranges);
  s->ranges = next;
  s->nranges = nmine;
  ps_view_destroy(&s->view);
  s->view = view;
  ps_repl_set_identity(s->repl, me, view->epoch);

  if (nlive != view->live_workers)
    PS_WARN("view_live_workers_mismatch",
            "epoch=%llu live_workers=%u alive_worker_nodes=%zu",
            (unsigned long long)view->epoch, view->live_workers, nlive);
  for (size_t i = 0; i < s->nranges && rc == PS_OK; i++) {
    owned_range_t *r = &s->ranges[i];
    if (!r->primary) continue;
    const ps_range_t *vr = NULL;
    for (size_t j = 0; j < view->nranges; j++)
      if (view->ranges[j].begin == r->begin && view->ranges[j].end == r->end)
        vr = &view->ranges[j];
    rc = primary_adopt(s, r, vr, live, nlive);
  }
  free(live);
  ps__server_report_clock(s);
  if (rc != PS_OK) {
    snprintf(err, errlen, "adopting view epoch %llu: %s",
             (unsigned long long)view->epoch, ps_strerror(rc));
    return rc;
  }
  answer_joins(s);
  ps__server_serve_deferred(s);
  ps__server_handover_progress(s); /* a backup may have left a chain */
  return PS_OK;
}

/* ps-server/replica.h: a new backup holds the range; the scheduler may promote
 * it. */
void ps__server_repl_synced(void *arg, uint64_t begin, uint64_t end,
                            uint32_t backup, uint64_t bytes, uint64_t ms) {
  ps_server_t *s = arg;
  s->stats.snapshots_out++;
  s->stats.snapshot_bytes_out += bytes;
  PS_INFO("re_replicated",
          "range=[%llu,%llu) backup=%u bytes=%llu duration_ms=%llu "
          "epoch=%llu",
          (unsigned long long)begin, (unsigned long long)end, backup,
          (unsigned long long)bytes, (unsigned long long)ms,
          (unsigned long long)ps__server_view_epoch(s));
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->begin == begin && r->end == end &&
        listed(r->snapped, r->nsnapped, backup) &&
        !listed(r->synced, r->nsynced, backup))
      r->synced[r->nsynced++] = backup;
  }
  send_replica_synced(s, begin, end, backup, bytes, ms);
}
