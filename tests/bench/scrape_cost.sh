#!/usr/bin/env bash
# What a Prometheus scraping every daemon every second costs the data plane
# (issue #12): ps-bench against a local cluster (a scheduler, 2 servers,
# replication 2, every daemon with --metrics-bind), alternating rounds
# without and with a Prometheus scraping all three every second, on the
# same machine in one run. Prints one line per round and the medians.
#
#   tests/bench/scrape_cost.sh [--build DIR] [--rounds N] [--reps N]
#                              [--sizes 1M] [--ops pushpull]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=$PWD/build ROUNDS=3 REPS=5 SIZES=1M OPS=pushpull
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --ops) OPS=$2; shift 2 ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
  esac
done
command -v prometheus >/dev/null || { echo "scrape_cost: prometheus not found (apt-get install prometheus)" >&2; exit 2; }
B=$BUILD/bin
TMP=$(mktemp -d /tmp/ps-scrape-cost.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "scrape_cost: failed (exit $rc); last lines of each log:" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 8 "$f" >&2; }; done
  fi
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 60 s) until Prometheus on port $1 sees $2 targets up.
wait_up() {
  for _ in $(seq 240); do
    n=$(curl -sf "http://127.0.0.1:$1/api/v1/query" --data-urlencode 'query=count(up == 1)' |
        sed -n 's/.*"value":\[[^,]*,"\([0-9]*\)"\].*/\1/p' || true)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 0.25
  done
  echo "scrape_cost: Prometheus did not see $2 targets up" >&2; return 1
}

run_round() { # $1 = off|on; prints the goodput (MB/s) of ours
  local mode=$1 sp mp0 mp1 mp2 pp
  sp=$(free_port); mp0=$(free_port); mp1=$(free_port); mp2=$(free_port)
  "$B/ps-scheduler" --bind "tcp://127.0.0.1:$sp" --mode asp --servers 2 --workers 1 \
    --metrics-bind "127.0.0.1:$mp0" --log-level warn 2>>"$TMP/daemons.log" & PIDS+=($!)
  "$B/ps-server" --scheduler "tcp://127.0.0.1:$sp" --metrics-bind "127.0.0.1:$mp1" --log-level warn 2>>"$TMP/daemons.log" & PIDS+=($!)
  "$B/ps-server" --scheduler "tcp://127.0.0.1:$sp" --metrics-bind "127.0.0.1:$mp2" --log-level warn 2>>"$TMP/daemons.log" & PIDS+=($!)
  local prom=
  if [ "$mode" = on ]; then
    pp=$(free_port)
    cat >"$TMP/prom.yml" <<YML
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: ps
    static_configs: [{targets: ['127.0.0.1:$mp0', '127.0.0.1:$mp1', '127.0.0.1:$mp2']}]
YML
    rm -rf "$TMP/tsdb"
    prometheus --config.file="$TMP/prom.yml" --storage.tsdb.path="$TMP/tsdb" \
      --web.listen-address="127.0.0.1:$pp" --log.level=error 2>>"$TMP/prom.log" & prom=$!; PIDS+=($prom)
    wait_up "$pp" 3
  fi
  "$B/ps-bench" --scheduler "tcp://127.0.0.1:$sp" --servers 2 --clients 1 --ops "$OPS" \
    --sizes "$SIZES" --windows 8 --reps "$REPS" --json >"$TMP/bench.json" 2>>"$TMP/bench.log"
  local scrapes=0
  if [ -n "$prom" ]; then
    scrapes=$(curl -sf "http://127.0.0.1:$pp/api/v1/query" --data-urlencode \
      'query=sum(ps_metrics_http_requests_total)' | sed -n 's/.*"value":\[[^,]*,"\([0-9.]*\)"\].*/\1/p' || true)
    kill "$prom"; wait "$prom" 2>/dev/null || true
  fi
  wait "${PIDS[@]:0:3}" 2>/dev/null || true
  PIDS=()
  python3 - "$TMP/bench.json" "$mode" "$scrapes" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"): continue
    r = json.loads(line)
    print("scrape=%-3s op=%s size=%s window=%s mbps=%s (min %s max %s) "
          "p50_us=%s p99_us=%s raw_mbps=%s ratio=%s scrapes=%s" % (
          sys.argv[2], r["op"], r["size"], r["window"], r.get("mbps"),
          r.get("mbps_min"), r.get("mbps_max"), r.get("p50_us"),
          r.get("p99_us"), r.get("raw_mbps"), r.get("ratio"), sys.argv[3]))
PY
}

for r in $(seq "$ROUNDS"); do
  run_round off
  run_round on
done
