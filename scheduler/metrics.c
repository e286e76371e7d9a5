/* The scheduler's /metrics and /healthz: membership, the view, the
 * ranges' replication state, checkpoints and barriers, read from the
 * scheduler's state on its loop thread at scrape time, plus the counters
 * of events the state does not keep (sched_int.h, stats). */

#include "common/metrics.h"

#include <stdio.h>

#include "common/err.h"
#include "common/exporter.h"
#include "common/time.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"

static const struct {
  int role;
  const char *name;
} roles[] = {{PS__ROLE__ROLE_SERVER, "server"},
             {PS__ROLE__ROLE_WORKER, "worker"}};

static const struct {
  int state;
  const char *name;
} states[] = {{PS__NODE_STATE__NODE_STATE_ALIVE, "alive"},
              {PS__NODE_STATE__NODE_STATE_DEAD, "dead"},
              {PS__NODE_STATE__NODE_STATE_DONE, "done"},
              {PS__NODE_STATE__NODE_STATE_LEFT, "left"}};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int alive(const ps_sched_t *s, uint32_t id) {
  const sched_node_t *n = ps__sched_node_by_id_const(s, id);
  return n != NULL && n->state == PS__NODE_STATE__NODE_STATE_ALIVE;
}

static void render(ps_metrics_t *m, void *arg) {
  ps_sched_t *s = arg;
  uint64_t now = ps_now_ms();

  ps_metrics_family(m, "ps_scheduler_nodes", PS_METRIC_GAUGE,
                    "Nodes the scheduler knows, by role and state (a dead "
                    "node stays dead: ids are never reused).");
  for (size_t r = 0; r < NELEM(roles); r++)
    for (size_t k = 0; k < NELEM(states); k++)
      ps_metrics_sample(
          m, (double)ps__sched_count_nodes(s, roles[r].role, states[k].state),
          "role", roles[r].name, "state", states[k].name, NULL);
  ps_metrics_family(m, "ps_scheduler_expected_nodes", PS_METRIC_GAUGE,
                    "Nodes the job is configured for (--servers, "
                    "--workers).");
  ps_metrics_sample(m, (double)s->opts.servers, "role", "server", NULL);
  ps_metrics_sample(m, (double)s->opts.workers, "role", "worker", NULL);
  uint32_t joining = 0, in_barrier = 0;
  uint64_t step = UINT64_MAX;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    if (n->role == PS__ROLE__ROLE_WORKER && n->joining) joining++;
    if (n->role == PS__ROLE__ROLE_WORKER && n->barrier) in_barrier++;
    if (n->role == PS__ROLE__ROLE_SERVER && ps__sched_holds_replica(s, n->id) &&
        n->clock < step)
      step = n->clock;
  }
  ps_metrics_put(m, "ps_scheduler_workers_joining", PS_METRIC_GAUGE,
                 "Workers joining a running BSP job, waiting for the servers "
                 "to confirm their step.",
                 (double)joining);
  ps_metrics_family(m, "ps_scheduler_heartbeat_timeouts_total",
                    PS_METRIC_COUNTER,
                    "Nodes declared dead after missing heartbeats for "
                    "--heartbeat-timeout-ms, by role.");
  for (size_t r = 0; r < NELEM(roles); r++)
    ps_metrics_sample(
        m, (double)s->stats.timeouts[ps__sched_role_slot(roles[r].role)],
        "role", roles[r].name, NULL);
  ps_metrics_family(m, "ps_scheduler_fenced_total", PS_METRIC_COUNTER,
                    "Nodes declared dead that spoke again and were fenced "
                    "(told to exit), by role.");
  for (size_t r = 0; r < NELEM(roles); r++)
    ps_metrics_sample(
        m, (double)s->stats.fenced[ps__sched_role_slot(roles[r].role)], "role",
        roles[r].name, NULL);

  ps_metrics_put(m, "ps_scheduler_view_epoch", PS_METRIC_GAUGE,
                 "Epoch of the published cluster view (0 before the first).",
                 (double)s->epoch);
  ps_metrics_put(m, "ps_scheduler_job_running", PS_METRIC_GAUGE,
                 "1 from the first view until the job ends, else 0.",
                 s->published && !s->finished && !s->ending ? 1.0 : 0.0);
  ps_metrics_put(m, "ps_scheduler_step", PS_METRIC_GAUGE,
                 "BSP step every range has applied: the least clock the "
                 "live servers holding ranges report in their heartbeats.",
                 step == UINT64_MAX ? 0.0 : (double)step);

  /* Ranges, as psctl status and the view_published line count them. */
  uint32_t by_state[PS_PLACE_UNAVAILABLE + 1] = {0};
  uint32_t syncing = 0;
  for (size_t i = 0; i < s->nranges; i++) {
    const ps_range_t *r = &s->ranges[i];
    by_state[ps_place_state(alive(s, r->server_id), r->nbackups,
                            ps_place_nsyncing(r), s->replication)]++;
    syncing += ps_place_nsyncing(r);
  }
  ps_metrics_family(m, "ps_scheduler_ranges", PS_METRIC_GAUGE,
                    "Key ranges by replication state: ok (every copy in "
                    "step), syncing (a new backup is being filled), "
                    "degraded (fewer copies than --replication, none "
                    "coming), unavailable (no live copy).");
  for (int st = PS_PLACE_OK; st <= PS_PLACE_UNAVAILABLE; st++)
    ps_metrics_sample(m, (double)by_state[st], "state",
                      ps_place_state_name((ps_place_state_t)st), NULL);
  ps_metrics_put(m, "ps_scheduler_ranges_without_live_copy", PS_METRIC_GAUGE,
                 "Ranges whose every copy is dead: requests for their keys "
                 "fail.",
                 (double)by_state[PS_PLACE_UNAVAILABLE]);
  ps_metrics_put(m, "ps_scheduler_ranges_short_of_copies", PS_METRIC_GAUGE,
                 "Ranges with fewer in-step copies than --replication "
                 "(syncing, degraded or unavailable).",
                 (double)(s->nranges - by_state[PS_PLACE_OK]));
  ps_metrics_put(m, "ps_scheduler_re_replications_in_progress", PS_METRIC_GAUGE,
                 "New backups still being filled by their primary's "
                 "snapshot.",
                 (double)syncing);
  ps_metrics_put(m, "ps_scheduler_replication_copies", PS_METRIC_GAUGE,
                 "Copies of each range the job keeps (--replication, capped "
                 "by the servers).",
                 (double)s->replication);
  ps_metrics_put(m, "ps_scheduler_failovers_total", PS_METRIC_COUNTER,
                 "Ranges whose primary died and whose backup was promoted.",
                 (double)s->stats.failovers);
  ps_metrics_family(m, "ps_scheduler_handovers_total", PS_METRIC_COUNTER,
                    "Planned moves of a range's primary to a backup in step "
                    "(psctl drain, rebalancing after a failover), by outcome.");
  ps_metrics_sample(m, (double)s->stats.handovers, "outcome", "done", NULL);
  ps_metrics_sample(m, (double)s->stats.handovers_abandoned, "outcome",
                    "abandoned", NULL);
  ps_metrics_family(m, "ps_scheduler_views_sent_total", PS_METRIC_COUNTER,
                    "Views sent to members, whole or as a delta against the "
                    "previous epoch (--view-deltas).");
  ps_metrics_sample(m, (double)s->stats.views_whole, "kind", "whole", NULL);
  ps_metrics_sample(m, (double)s->stats.views_delta, "kind", "delta", NULL);
  ps_metrics_family(m, "ps_scheduler_heartbeats_total", PS_METRIC_COUNTER,
                    "Heartbeats taken: on the members' ZeroMQ links, or as "
                    "UDP datagrams (--heartbeat-udp).");
  ps_metrics_sample(m, (double)s->stats.heartbeats_link, "path", "link", NULL);
  ps_metrics_sample(m, (double)s->stats.beats, "path", "udp", NULL);
  ps_metrics_put(m, "ps_scheduler_heartbeat_datagrams_refused_total",
                 PS_METRIC_COUNTER,
                 "UDP datagrams on the heartbeat port dropped: not a "
                 "heartbeat, an unknown node, a wrong tag or a replay.",
                 (double)s->stats.beats_refused);
  ps_metrics_put(m, "ps_scheduler_view_bytes_total", PS_METRIC_COUNTER,
                 "Bytes of the views sent to members.",
                 (double)s->stats.view_bytes);
  ps_metrics_put(m, "ps_scheduler_drains_total", PS_METRIC_COUNTER,
                 "Servers drained by psctl drain and told to exit.",
                 (double)s->stats.drains);
  ps_metrics_put(m, "ps_scheduler_curve_refused_total", PS_METRIC_COUNTER,
                 "CURVE handshakes refused by the ZAP handler (keys not in "
                 "--keys-dir).",
                 s->zap ? (double)ps_zap_refused(s->zap) : 0.0);
  ps_metrics_put(m, "ps_scheduler_connections_refused_total", PS_METRIC_COUNTER,
                 "Handshakes refused because the scheduler held "
                 "--max-connections connections.",
                 s->zap ? (double)ps_zap_over_cap(s->zap) : 0.0);
  ps_metrics_put(m, "ps_scheduler_permission_denied_total", PS_METRIC_COUNTER,
                 "Messages refused because the sender's key has a role that "
                 "may not send them, or in another node's name.",
                 (double)(s->stats.role_refusals + s->stats.impersonations));
  ps_metrics_put(m, "ps_scheduler_ranges_lost_total", PS_METRIC_COUNTER,
                 "Times a range was left without a live copy.",
                 (double)s->stats.ranges_lost);
  ps_metrics_put(m, "ps_scheduler_re_replications_total", PS_METRIC_COUNTER,
                 "New backups that finished syncing (ReplicaSynced).",
                 (double)s->stats.re_replications);

  ps_metrics_put(m, "ps_scheduler_workers_in_barrier", PS_METRIC_GAUGE,
                 "Live workers waiting in a barrier now.", (double)in_barrier);
  ps_metrics_put(m, "ps_scheduler_barrier_waits_total", PS_METRIC_COUNTER,
                 "Times a worker entered a barrier.",
                 (double)s->stats.barrier_entries);
  ps_metrics_put(m, "ps_scheduler_barrier_releases_total", PS_METRIC_COUNTER,
                 "Barriers released (every live worker in).",
                 (double)s->stats.barrier_releases);

  ps_metrics_family(m, "ps_scheduler_checkpoints_total", PS_METRIC_COUNTER,
                    "Coordinated checkpoints, by result (one cancelled by "
                    "the end of the job is neither).");
  ps_metrics_sample(m, (double)s->stats.ckpt_ok, "result", "ok", NULL);
  ps_metrics_sample(m, (double)s->stats.ckpt_failed, "result", "failed", NULL);
  ps_metrics_put(m, "ps_scheduler_checkpoint_in_progress", PS_METRIC_GAUGE,
                 "1 while a checkpoint is being taken.",
                 s->coord && ps_coord_active(s->coord) ? 1.0 : 0.0);
  ps_metrics_put(m, "ps_scheduler_checkpoint_last_step", PS_METRIC_GAUGE,
                 "Step of the newest complete checkpoint (0: none).",
                 s->has_last ? (double)s->last.step : 0.0);
  ps_metrics_put(m, "ps_scheduler_checkpoint_last_timestamp_seconds",
                 PS_METRIC_GAUGE,
                 "When the newest complete checkpoint was written, in "
                 "seconds since the Unix epoch (0: none).",
                 s->has_last ? (double)s->last.created_unix_ms / 1e3 : 0.0);
  uint64_t since = s->has_last ? s->last_done_ms : s->start_ms;
  ps_metrics_put(m, "ps_scheduler_checkpoint_age_seconds", PS_METRIC_GAUGE,
                 "Seconds since the newest complete checkpoint; with none, "
                 "since the scheduler started.",
                 now > since ? (double)(now - since) / 1e3 : 0.0);
  ps_metrics_put(m, "ps_scheduler_checkpoint_interval_seconds", PS_METRIC_GAUGE,
                 "--checkpoint-every-s (0: no periodic checkpoints by "
                 "time).",
                 s->opts.checkpoint_every_s);
  ps_metrics_put(m, "ps_scheduler_checkpoint_interval_steps", PS_METRIC_GAUGE,
                 "--checkpoint-every-steps (0: no periodic checkpoints by "
                 "step).",
                 (double)s->opts.checkpoint_every_steps);
}

static int health(char *reason, size_t len, void *arg) {
  ps_sched_t *s = arg;
  if (s->finished || s->closing) {
    snprintf(reason, len, "the job is over: shutting the cluster down");
    return 0;
  }
  /* Before the first view the scheduler serves registrations: healthy, or
   * nodes whose start waits on its health would never register. */
  return 1;
}

int ps__sched_metrics_start(ps_sched_t *s, const char *bind, char *err,
                            size_t errlen) {
  char why[256];
  s->exporter = ps_exporter_new(s->loop, bind, "scheduler", NULL, render,
                                health, s, why, sizeof(why));
  if (s->exporter == NULL) {
    snprintf(err, errlen, "metrics endpoint: %s", why);
    return PS_ERR_CONFIG;
  }
  return PS_OK;
}
