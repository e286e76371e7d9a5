/* Replication and failover: re-placing the ranges when servers die or join
 * (scheduler/placement.h), and the primaries' word that a backup synced. */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"

/* ---- replication and failover (issue #4) ---------------------------- */

int ps__sched_server_alive(const ps_sched_t *s, uint32_t id) {
  const sched_node_t *n = ps__sched_node_by_id_const(s, id);
  return n != NULL && n->role == PS__ROLE__ROLE_SERVER &&
         n->state == PS__NODE_STATE__NODE_STATE_ALIVE;
}

sched_node_t *ps__sched_server_report(ps_sched_t *s, ps_msg_t *m,
                                      const char *event) {
  sched_node_t *n = ps__sched_node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG(event, "sender=%u", m->env->sender);
    return NULL;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    ps__sched_fence(s, n, m);
    return NULL;
  }
  ps__sched_node_touch(n, m, 1);
  return n;
}

/* 1 if server id is the primary or a backup of some range. */
int ps__sched_holds_replica(const ps_sched_t *s, uint32_t id) {
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].server_id == id || ps_range_has_backup(&s->ranges[i], id))
      return 1;
  return 0;
}

static uint64_t silent_ms(const sched_node_t *n, uint64_t now) {
  return n != NULL && now > n->last_seen_ms ? now - n->last_seen_ms : 0;
}

/* Logs what changed in one range's chain: before -> r, published as
 * epoch. A primary that just died is one whose dead_epoch is epoch. */
static void log_chain_change(ps_sched_t *s, const ps_range_t *before,
                             const ps_range_t *r, uint64_t epoch,
                             uint64_t now) {
  unsigned long long b = (unsigned long long)r->begin;
  unsigned long long e = (unsigned long long)r->end;
  const sched_node_t *old = ps__sched_node_by_id_const(s, before->server_id);
  if (r->server_id != before->server_id) {
    s->stats.failovers++;
    PS_WARN("failover",
            "range=[%llu,%llu) old=%u new=%u silent_ms=%" PRIu64
            " backups=%u syncing=%u epoch=%" PRIu64,
            b, e, before->server_id, r->server_id, silent_ms(old, now),
            r->nbackups, ps_place_nsyncing(r), epoch);
  } else if (!ps__sched_server_alive(s, r->server_id) && old != NULL &&
             old->dead_epoch == epoch) {
    s->stats.ranges_lost++;
    PS_ERROR("range_unavailable",
             "range=[%llu,%llu) primary=%u silent_ms=%" PRIu64 " epoch=%" PRIu64
             " reason=\"no live synced replica is left; requests for these "
             "keys fail with PS_ERR_UNAVAILABLE\"",
             b, e, r->server_id, silent_ms(old, now), epoch);
  }
  for (uint32_t k = 0; k < before->nbackups; k++) {
    uint32_t id = before->backups[k];
    if (id != r->server_id && !ps_range_has_backup(r, id))
      PS_INFO("replica_dropped",
              "range=[%llu,%llu) backup=%u primary=%u epoch=%" PRIu64, b, e, id,
              r->server_id, epoch);
  }
  for (uint32_t k = 0; k < r->nbackups; k++) {
    uint32_t id = r->backups[k];
    if (!ps_range_has_backup(before, id) && id != before->server_id)
      PS_INFO("replica_assigned",
              "range=[%llu,%llu) backup=%u primary=%u syncing=%d "
              "epoch=%" PRIu64,
              b, e, id, r->server_id, (int)((r->syncing_mask >> k) & 1u),
              epoch);
  }
}

/* Re-places the ranges after servers died or joined (scheduler/placement.h)
 * and logs every change for the view about to go out as epoch. Returns 1 if
 * a range changed. */
int ps__sched_replan(ps_sched_t *s, uint64_t epoch) {
  if (s->nranges == 0) return 0;
  ps_place_server_t *servers = calloc(s->nnodes + 1, sizeof(*servers));
  ps_range_t *before = calloc(s->nranges, sizeof(*before));
  if (servers == NULL || before == NULL) {
    /* The ranges stay as they were: clients time out on a dead primary
     * until the next change tries again. */
    PS_ERROR("replan_failed", "err=%s", ps_err_name(PS_ERR_NOMEM));
    free(servers);
    free(before);
    return 0;
  }
  size_t n = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *nd = &s->nodes[i];
    if (nd->role != PS__ROLE__ROLE_SERVER) continue;
    servers[n].id = nd->id;
    servers[n].alive = nd->state == PS__NODE_STATE__NODE_STATE_ALIVE;
    servers[n].leaving = nd->draining;
    n++;
  }
  memcpy(before, s->ranges, s->nranges * sizeof(*before));
  size_t changed =
      ps_place_repair(s->ranges, s->nranges, servers, n, s->replication);
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < s->nranges; i++)
    log_chain_change(s, &before[i], &s->ranges[i], epoch, now);
  free(servers);
  free(before);
  return changed > 0;
}

/* ---- servers' reports on replication (issue #4) --------------------- */

/* Like CheckpointReply, these come on a server's membership link and are
 * never answered with an Error (ps_member takes REFUSED as the loss of its
 * membership), except the fence for a server declared dead. */

void ps__sched_handle_replica_synced(ps_sched_t *s, ps_msg_t *m) {
  const Ps__ReplicaSynced *rs = m->env->replica_synced;
  sched_node_t *n = ps__sched_server_report(s, m, "replica_synced_ignored");
  if (n == NULL) return;
  ps_range_t *r = NULL;
  for (size_t i = 0; i < s->nranges && r == NULL; i++)
    if (s->ranges[i].begin == rs->range_begin &&
        s->ranges[i].end == rs->range_end)
      r = &s->ranges[i];
  /* Ids are never reused and a backup leaves a chain only when it dies, so
   * the current primary's word about a backup still syncing is never
   * stale. Anything else is (a primary replaced since, a repeat). */
  if (r == NULL || r->server_id != n->id || !ps_place_synced(r, rs->backup)) {
    PS_DEBUG("replica_synced_ignored",
             "sender=%u range=[%" PRIu64 ",%" PRIu64 ") backup=%u", n->id,
             rs->range_begin, rs->range_end, rs->backup);
    return;
  }
  s->stats.re_replications++;
  PS_INFO(
      "re_replicated",
      "range=[%" PRIu64 ",%" PRIu64 ") primary=%u backup=%u bytes=%" PRIu64
      " ms=%" PRIu64 " mbps=%.1f syncing_left=%u epoch=%" PRIu64,
      rs->range_begin, rs->range_end, n->id, rs->backup, rs->bytes,
      rs->duration_ms,
      (double)rs->bytes / 1e3 / (double)(rs->duration_ms ? rs->duration_ms : 1),
      ps_place_nsyncing(r), s->epoch);
  /* No new view: promotion is the scheduler's decision and reads this
   * state; the next view carries it to the nodes. */
  ps__sched_state_save(s);
}
