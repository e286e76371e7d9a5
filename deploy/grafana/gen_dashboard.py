#!/usr/bin/env python3
"""Writes ps-cluster.json, the Grafana dashboard of a parameter-server
cluster (issue #12), from the panel list below: edit this, run it, commit
both. Every query uses the metrics of README "Metrics and alerts"."""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                   "id": len(panels) + 1, "panels": []})
    y += 1


def ts(title, targets, x, w=12, h=8, unit="short", stack=False, desc=""):
    panels.append({
        "type": "timeseries", "title": title, "description": desc,
        "id": len(panels) + 1, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {
            "unit": unit,
            "custom": {"stacking": {"mode": "normal" if stack else "none"},
                       "fillOpacity": 20 if stack else 0}},
            "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l,
                     "refId": chr(ord("A") + i)}
                    for i, (e, l) in enumerate(targets)]})


def stat(title, expr, x, w=4, h=4, unit="short", thresholds=None, desc=""):
    steps = thresholds or [{"color": "green", "value": None}]
    panels.append({
        "type": "stat", "title": title, "description": desc,
        "id": len(panels) + 1, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {
            "unit": unit,
            "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]},
                    "colorMode": "background"},
        "targets": [{"datasource": DS, "expr": expr, "refId": "A"}]})


RED = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
AMBER = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]

row("Cluster")
stat("Live servers", 'sum(ps_scheduler_nodes{role="server",state="alive"})', 0)
stat("Dead servers", 'sum(ps_scheduler_nodes{role="server",state="dead"})', 4,
     thresholds=AMBER)
stat("Ranges without a live copy", "sum(ps_scheduler_ranges_without_live_copy)",
     8, thresholds=RED)
stat("Ranges short of copies", "sum(ps_scheduler_ranges_short_of_copies)", 12,
     thresholds=AMBER)
stat("View epoch", "max(ps_scheduler_view_epoch)", 16)
stat("Checkpoint age", "max(ps_scheduler_checkpoint_age_seconds)", 20, unit="s")
y += 4

row("Training")
ts("Throughput", [
    ("sum(rate(ps_worker_samples_total[1m]))", "samples/s (job)"),
    ("sum(rate(ps_worker_steps_total[1m])) / max(ps_worker_workers)",
     "steps/s"),
], 0, unit="short", desc="Examples and global steps per second, from the "
   "workers' counters.")
ts("Loss and accuracy", [
    ("ps_worker_train_loss", "train loss {{instance}}"),
    ("ps_worker_test_loss", "test loss {{instance}}"),
    ("ps_worker_test_accuracy", "test accuracy {{instance}}"),
], 12)
y += 8
ts("Step time breakdown (seconds per step)", [
    ('sum by (phase) (rate(ps_worker_step_phase_seconds_total[1m])) / '
     'scalar(sum(rate(ps_worker_steps_total[1m])))', "{{phase}}"),
], 0, unit="s", stack=True, desc="Waiting for the weights (pull), computing "
   "the gradient (compute), waiting for the servers' acks (push).")
ts("Step time quantiles", [
    ("histogram_quantile(0.5, sum by (le) "
     "(rate(ps_worker_step_seconds_bucket[1m])))", "p50"),
    ("histogram_quantile(0.99, sum by (le) "
     "(rate(ps_worker_step_seconds_bucket[1m])))", "p99"),
    ("histogram_quantile(0.99, sum by (le) "
     "(rate(ps_server_bsp_wait_seconds_bucket[1m])))",
     "p99 BSP wait for the slowest worker"),
], 12, unit="s")
y += 8

row("Replication")
ts("Ranges by state", [
    ("sum by (state) (ps_scheduler_ranges)", "{{state}}"),
], 0, w=8, stack=True)
ts("Membership", [
    ("sum by (role, state) (ps_scheduler_nodes)", "{{role}} {{state}}"),
], 8, w=8)
ts("Failovers, re-replication, lag", [
    ("sum(increase(ps_scheduler_failovers_total[5m]))", "failovers (5m)"),
    ("sum(ps_scheduler_re_replications_in_progress)", "backups syncing"),
    ("sum by (instance) (ps_server_replication_pending_changes)",
     "unacked changes {{instance}}"),
    ("sum(increase(ps_server_duplicate_pushes_total[5m]))",
     "resends deduplicated (5m)"),
], 16, w=8)
y += 8

row("Per server")
ts("Bytes received", [
    ("sum by (instance) (rate(ps_server_received_bytes_total[1m]))",
     "{{instance}}"),
], 0, w=8, unit="Bps")
ts("Requests", [
    ('sum by (instance, type) (rate(ps_server_requests_total'
     '{type=~"push|pull|push_pull|replicate"}[1m]))', "{{instance}} {{type}}"),
], 8, w=8, unit="reqps")
ts("Errors", [
    ("sum by (instance, code) (rate(ps_server_errors_total[1m])) > 0",
     "{{instance}} {{code}}"),
], 16, w=8, unit="reqps")
y += 8
ts("Request time p99 (loop)", [
    ("histogram_quantile(0.99, sum by (instance, op, le) "
     "(rate(ps_server_request_seconds_bucket[1m])))", "{{instance}} {{op}}"),
], 0, unit="s")
ts("Apply time p99", [
    ("histogram_quantile(0.99, sum by (instance, le) "
     "(rate(ps_server_apply_seconds_bucket[1m])))", "{{instance}}"),
], 12, unit="s")
y += 8

dash = {
    "title": "Parameter server",
    "uid": "ps-cluster",
    "tags": ["parameter-server"],
    "schemaVersion": 38,
    "version": 1,
    "editable": True,
    "time": {"from": "now-30m", "to": "now"},
    "refresh": "5s",
    "templating": {"list": [{
        "name": "datasource", "type": "datasource", "query": "prometheus",
        "label": "Prometheus", "hide": 0, "current": {}}]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "ps-cluster.json")
with open(out, "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
