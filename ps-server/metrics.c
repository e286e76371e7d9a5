/* The server's /metrics and /healthz: every value read from the server's
 * state on its loop thread at scrape time (common/exporter.h says why
 * there), plus the histograms the loop observes as it serves. */

#include "common/metrics.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/exporter.h"
#include "common/log.h"
#include "server_int.h"

static const char *const op_names[PS_SRV_NOPS] = {
    "push",        "pull",        "replicate", "snapshot",
    "sparse_push", "sparse_pull", "push_pull", "other"};

int ps__server_op(int body_case) {
  switch (body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      return PS_SRV_OP_PUSH;
    case PS__ENVELOPE__BODY_PULL:
      return PS_SRV_OP_PULL;
    case PS__ENVELOPE__BODY_REPLICATE:
      return PS_SRV_OP_REPLICATE;
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT:
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      return PS_SRV_OP_SNAPSHOT;
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      return PS_SRV_OP_SPARSE_PUSH;
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      return PS_SRV_OP_SPARSE_PULL;
    case PS__ENVELOPE__BODY_PUSH_PULL:
      return PS_SRV_OP_PUSH_PULL;
    default:
      return PS_SRV_OP_OTHER;
  }
}

const char *ps__server_op_name(int op) {
  return op >= 0 && op < PS_SRV_NOPS ? op_names[op] : "other";
}

void ps__server_metrics_init(ps_server_t *s) {
  for (int i = 0; i < PS_SRV_NOPS; i++)
    ps_hist_init(&s->hist_request[i], ps_hist_seconds_bounds,
                 ps_hist_seconds_nbounds, 1e-9);
  ps_hist_init(&s->hist_apply, ps_hist_seconds_bounds, ps_hist_seconds_nbounds,
               1e-9);
  ps_hist_init(&s->hist_bsp_wait, ps_hist_seconds_bounds,
               ps_hist_seconds_nbounds, 1e-9);
}

/* Bodies a server receives or sends: one series each, present from the
 * first scrape so that rate() has a start. */
static const int data_bodies_in[] = {
    PS__ENVELOPE__BODY_PUSH,          PS__ENVELOPE__BODY_PULL,
    PS__ENVELOPE__BODY_REPLICATE,     PS__ENVELOPE__BODY_REPLICA_SNAPSHOT,
    PS__ENVELOPE__BODY_REPLICA_CHUNK, PS__ENVELOPE__BODY_SPARSE_PUSH,
    PS__ENVELOPE__BODY_SPARSE_PULL,   PS__ENVELOPE__BODY_PUSH_PULL};
static const int data_bodies_out[] = {
    PS__ENVELOPE__BODY_ACK, PS__ENVELOPE__BODY_PULL_REPLY,
    PS__ENVELOPE__BODY_SPARSE_PULL_REPLY, PS__ENVELOPE__BODY_ERROR};

static int listed(const int *a, size_t n, int v) {
  for (size_t i = 0; i < n; i++)
    if (a[i] == v) return 1;
  return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void by_body(ps_metrics_t *m, const uint64_t *counts, const int *always,
                    size_t nalways) {
  for (int b = 0; b < PS_SERVER_NBODY; b++)
    if (counts[b] > 0 || listed(always, nalways, b))
      ps_metrics_sample(m, (double)counts[b], "type",
                        ps_body_name((Ps__Envelope__BodyCase)b), NULL);
}

static void render(ps_metrics_t *m, void *arg) {
  ps_server_t *s = arg;
  const ps_server_stats_t *st = &s->stats;
  char node[16];
  snprintf(node, sizeof(node), "%u", s->node_id);
  ps_metrics_family(m, "ps_server_info", PS_METRIC_GAUGE,
                    "Always 1: the node id the scheduler gave this server "
                    "(0 before it registered) and the endpoint it serves.");
  ps_metrics_sample(m, 1, "node_id", node, "endpoint", s->endpoint, NULL);

  ps_metrics_family(m, "ps_server_requests_total", PS_METRIC_COUNTER,
                    "Messages received on the data socket, by type.");
  by_body(m, st->requests, data_bodies_in, NELEM(data_bodies_in));
  ps_metrics_family(m, "ps_server_received_bytes_total", PS_METRIC_COUNTER,
                    "Bytes received on the data socket (header and payload "
                    "frames), by message type.");
  by_body(m, st->bytes_in_by, data_bodies_in, NELEM(data_bodies_in));
  ps_metrics_family(m, "ps_server_sent_bytes_total", PS_METRIC_COUNTER,
                    "Bytes of replies sent on the data socket, by type.");
  by_body(m, st->bytes_out_by, data_bodies_out, NELEM(data_bodies_out));

  ps_metrics_family(m, "ps_server_errors_total", PS_METRIC_COUNTER,
                    "Requests refused (an Error reply, or dropped when the "
                    "peer cannot be answered), by status code.");
  for (int i = 1; i < PS_SERVER_NERR; i++)
    if (strcmp(ps_err_name(-i), "ERR_UNKNOWN") != 0)
      ps_metrics_sample(m, (double)st->errors[i], "code", ps_err_name(-i),
                        NULL);
  if (st->errors[0] > 0)
    ps_metrics_sample(m, (double)st->errors[0], "code", "other", NULL);
  ps_metrics_put(m, "ps_server_bad_messages_total", PS_METRIC_COUNTER,
                 "Messages that failed validation (framing, sizes, limits).",
                 (double)st->bad_messages);
  ps_metrics_put(m, "ps_server_send_failures_total", PS_METRIC_COUNTER,
                 "Replies ZeroMQ refused to send (the peer went away).",
                 (double)st->send_failures);

  ps_metrics_family(m, "ps_server_request_seconds", PS_METRIC_HISTOGRAM,
                    "Time the server's loop spent serving one message, by "
                    "op (validation, apply, reply queued; a push's ack waits "
                    "for the backups after this).");
  for (int i = 0; i < PS_SRV_NOPS; i++)
    ps_metrics_histogram(m, &s->hist_request[i], "op", op_names[i], NULL);
  ps_metrics_put(m, "ps_server_applies_total", PS_METRIC_COUNTER,
                 "Updates applied to weights: BSP steps, ASP pushes, sparse "
                 "pushes.",
                 (double)st->applies);
  ps_sparse_stats_t sps;
  ps__server_sparse_stats(s, &sps);
  ps_metrics_put(m, "ps_server_sparse_rows", PS_METRIC_GAUGE,
                 "Sparse rows this server holds, primary and backup copies.",
                 (double)sps.rows);
  ps_metrics_put(m, "ps_server_sparse_evictions_total", PS_METRIC_COUNTER,
                 "Sparse rows evicted by --sparse-max-bytes (least recently "
                 "pushed first; they read as their initializer again).",
                 (double)sps.evictions);
  ps_metrics_put(m, "ps_server_sparse_not_admitted_total", PS_METRIC_COUNTER,
                 "Sparse row pushes dropped because the id was not yet "
                 "pushed --sparse-admit-after times.",
                 (double)sps.not_admitted);
  ps_metrics_family(m, "ps_server_apply_seconds", PS_METRIC_HISTOGRAM,
                    "Time of the shard update of one dense push on a "
                    "primary: summing into the step, and for the push that "
                    "completes a BSP step (or any ASP push) the optimizer "
                    "step.");
  ps_metrics_histogram(m, &s->hist_apply, NULL);

  ps_metrics_put(m, "ps_server_step", PS_METRIC_GAUGE,
                 "BSP step clock: the steps fully applied by the slowest "
                 "range this server is the primary of.",
                 (double)s->reported_clock);
  ps_metrics_family(m, "ps_server_bsp_wait_seconds", PS_METRIC_HISTOGRAM,
                    "Time a BSP pull waited for its step: for the slowest "
                    "worker's gradient to come in.");
  ps_metrics_histogram(m, &s->hist_bsp_wait, NULL);
  ps_metrics_put(m, "ps_server_parked_pulls", PS_METRIC_GAUGE,
                 "BSP pulls waiting for their step now.",
                 (double)st->parked_pulls);
  ps_metrics_put(m, "ps_server_pulls_parked_total", PS_METRIC_COUNTER,
                 "BSP pulls that had to wait for their step.",
                 (double)st->pulls_parked);
  ps_metrics_family(m, "ps_server_pull_reply_bytes_total", PS_METRIC_COUNTER,
                    "Pull reply payload bytes, sent straight from the "
                    "weights or copied into a frame.");
  ps_metrics_sample(m, (double)st->pull_bytes_zero_copy, "path", "zero_copy",
                    NULL);
  ps_metrics_sample(m, (double)st->pull_bytes_copied, "path", "copied", NULL);

  /* Ranges held, as the adopted view placed them. */
  size_t primary = 0, backup = 0, receiving = 0;
  uint64_t keys_primary = 0, keys_backup = 0;
  for (size_t i = 0; i < s->nranges; i++) {
    const owned_range_t *r = &s->ranges[i];
    if (r->primary) {
      primary++;
      keys_primary += r->end - r->begin;
    } else {
      backup++;
      keys_backup += r->end - r->begin;
      if (r->shard == NULL) receiving++;
    }
  }
  ps_metrics_family(m, "ps_server_ranges", PS_METRIC_GAUGE,
                    "Key ranges this server holds a copy of, by role.");
  ps_metrics_sample(m, (double)primary, "role", "primary", NULL);
  ps_metrics_sample(m, (double)backup, "role", "backup", NULL);
  ps_metrics_family(m, "ps_server_keys", PS_METRIC_GAUGE,
                    "Dense keys (float32 values) this server holds, by role.");
  ps_metrics_sample(m, (double)keys_primary, "role", "primary", NULL);
  ps_metrics_sample(m, (double)keys_backup, "role", "backup", NULL);
  ps_metrics_put(m, "ps_server_backup_ranges_syncing", PS_METRIC_GAUGE,
                 "Ranges this server is a new backup of and still receives "
                 "the primary's snapshot for.",
                 (double)receiving);
  ps_metrics_put(m, "ps_server_replication_pending_changes", PS_METRIC_GAUGE,
                 "Replication lag: changes this primary sent its backups "
                 "that they have not acked yet.",
                 s->repl ? (double)ps_repl_waiting(s->repl) : 0.0);
  ps_metrics_put(m, "ps_server_replicated_changes_total", PS_METRIC_COUNTER,
                 "Changes replayed as a backup.", (double)st->replicated);
  uint64_t fwd_pushes = 0, fwd_msgs = 0;
  if (s->repl) ps_repl_push_stats(s->repl, &fwd_pushes, &fwd_msgs);
  ps_metrics_put(m, "ps_server_forwarded_pushes_total", PS_METRIC_COUNTER,
                 "Workers' pushes this primary forwarded to its backups one "
                 "by one (ASP, SSP, a model with sparse tables).",
                 (double)fwd_pushes);
  ps_metrics_put(m, "ps_server_forward_messages_total", PS_METRIC_COUNTER,
                 "Messages to each backup that carried them: pushes that "
                 "come while the backups have yet to answer go together.",
                 (double)fwd_msgs);
  ps_metrics_put(m, "ps_server_held_acks_total", PS_METRIC_COUNTER,
                 "Pushes told they wait for their BSP step to be replicated "
                 "(Ack.held).",
                 (double)st->held_acks);
  ps_metrics_put(m, "ps_server_duplicate_pushes_total", PS_METRIC_COUNTER,
                 "Resent pushes recognised as applied already: acked, not "
                 "applied again.",
                 (double)st->duplicate_pushes);
  ps_metrics_put(m, "ps_server_inflight_refused_total", PS_METRIC_COUNTER,
                 "Requests refused because their worker already had "
                 "--max-inflight-per-peer waiting here.",
                 (double)st->inflight_refused);
  ps_metrics_put(m, "ps_server_nonfinite_pushes_total", PS_METRIC_COUNTER,
                 "Pushes holding NaN or Inf, refused or applied as zeros "
                 "(--nonfinite).",
                 (double)st->nonfinite_pushes);
  ps_metrics_put(m, "ps_server_curve_refused_total", PS_METRIC_COUNTER,
                 "CURVE handshakes refused by the ZAP handler (keys not in "
                 "--keys-dir).",
                 s->zap ? (double)ps_zap_refused(s->zap) : 0.0);
  ps_metrics_put(m, "ps_server_connections_refused_total", PS_METRIC_COUNTER,
                 "Handshakes refused because the server held "
                 "--max-connections connections.",
                 s->zap ? (double)ps_zap_over_cap(s->zap) : 0.0);
  ps_metrics_put(m, "ps_server_handovers_total", PS_METRIC_COUNTER,
                 "Ranges this server handed to a backup in a planned move "
                 "(psctl drain, rebalancing), without a failover.",
                 (double)st->handovers);
  ps_metrics_put(m, "ps_server_handover_held_pushes_total", PS_METRIC_COUNTER,
                 "Pushes told to wait for the view of a handover in progress.",
                 (double)st->handover_held);
  ps_metrics_family(m, "ps_server_snapshots_total", PS_METRIC_COUNTER,
                    "Whole ranges streamed to a new backup (sent, counted "
                    "when it acked) or received as one.");
  ps_metrics_sample(m, (double)st->snapshots_out, "direction", "sent", NULL);
  ps_metrics_sample(m, (double)st->snapshots_in, "direction", "received", NULL);
  ps_metrics_family(m, "ps_server_snapshot_bytes_total", PS_METRIC_COUNTER,
                    "Bytes of range snapshots sent (acked) and received.");
  ps_metrics_sample(m, (double)st->snapshot_bytes_out, "direction", "sent",
                    NULL);
  ps_metrics_sample(
      m,
      (double)(st->bytes_in_by[PS__ENVELOPE__BODY_REPLICA_SNAPSHOT] +
               st->bytes_in_by[PS__ENVELOPE__BODY_REPLICA_CHUNK]),
      "direction", "received", NULL);

  ps_metrics_family(m, "ps_server_checkpoint_writes_total", PS_METRIC_COUNTER,
                    "Checkpoint shard writes, by result.");
  ps_metrics_sample(m, (double)st->ckpt_writes, "result", "ok", NULL);
  ps_metrics_sample(m, (double)st->ckpt_failures, "result", "failed", NULL);
  ps_metrics_put(m, "ps_server_checkpoint_written_bytes_total",
                 PS_METRIC_COUNTER, "Bytes of checkpoint files written.",
                 (double)st->ckpt_bytes);
  ps_metrics_put(m, "ps_server_checkpoint_write_seconds_total",
                 PS_METRIC_COUNTER,
                 "Time checkpoint writes took, snapshot to durable, summed.",
                 (double)st->ckpt_write_us * 1e-6);
  ps_metrics_put(m, "ps_server_checkpoint_last_step", PS_METRIC_GAUGE,
                 "Step of the newest checkpoint this server wrote.",
                 (double)st->ckpt_last_step);

  ps_metrics_put(m, "ps_server_view_epoch", PS_METRIC_GAUGE,
                 "Epoch of the cluster view this server follows.",
                 (double)ps__server_view_epoch(s));
  ps_metrics_put(m, "ps_server_live_workers", PS_METRIC_GAUGE,
                 "Live workers in the adopted view.",
                 s->view ? (double)s->view->live_workers : 0.0);
}

static int health(char *reason, size_t len, void *arg) {
  ps_server_t *s = arg;
  if (s->stopping)
    snprintf(reason, len, "stopping");
  else if (s->view == NULL && !s->restoring)
    snprintf(reason, len, "waiting for the scheduler's first view");
  else if (s->restoring)
    snprintf(reason, len, "restoring its ranges from a checkpoint");
  else
    return 1;
  return 0;
}

int ps__server_metrics_start(ps_server_t *s, const char *bind, char *err,
                          size_t errlen) {
  char why[256];
  s->exporter = ps_exporter_new(&s->loop, bind, "server", NULL, render, health,
                                s, why, sizeof(why));
  if (s->exporter == NULL) {
    snprintf(err, errlen, "metrics endpoint: %s", why);
    return PS_ERR_CONFIG;
  }
  /* The heartbeats tell the scheduler, so psctl top can find it. */
  if (s->member &&
      ps_member_set_metrics_address(s->member,
                                    ps_exporter_address(s->exporter)) != PS_OK)
    PS_WARN("metrics_address_unsent", "address=%s reason=\"too long\"",
            ps_exporter_address(s->exporter));
  return PS_OK;
}
