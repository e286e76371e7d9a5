#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a trained model: installs what
# is missing, builds, starts a scheduler, servers and workers on loopback,
# trains the Fashion-MNIST MLP, prints the test accuracy, and leaves no
# process behind (also on Ctrl-C).
#
#   ./deploy/quickstart.sh [--epochs N] [--servers N] [--workers N]
#                          [--mode bsp|asp|ssp] [--batch-size B] [--replication N]
#                          [--no-baseline] [--metrics]
#
# --metrics: every daemon serves /metrics and /healthz on the ports that
# deploy/prometheus/prometheus.yml scrapes (scheduler 9400, servers 9401..,
# workers 9411..).
#
# Run from a terminal, worker 0 shows its progress there as one line
# redrawn in place; otherwise its log lines are shown. Worker 0 writes
# its figures to metrics.csv, drawn into metrics.png when gnuplot is
# installed (deploy/plot.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

EPOCHS=10
SERVERS=2
WORKERS=2
MODE=bsp
BATCH=32
REPLICATION=2
BASELINE=1
METRICS=0
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) EPOCHS=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --replication) REPLICATION=$2; shift 2 ;;
    --no-baseline) BASELINE=0; shift ;;
    --metrics) METRICS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in EPOCHS SERVERS WORKERS BATCH REPLICATION; do
  case "${!v}" in ''|*[!0-9]*|0) echo "quickstart: --${v,,} must be a positive integer, got '${!v}'" >&2; exit 2 ;; esac
done
case "$MODE" in bsp|asp|ssp) ;; *) echo "quickstart: --mode must be bsp, asp or ssp (staleness 3), got '$MODE'" >&2; exit 2 ;; esac

./deploy/install-deps.sh
echo "== build =="
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null
BIN=$ROOT/build/bin

RUN=$(mktemp -d /tmp/ps-quickstart.XXXXXX)
PIDS=()
# Waits for the daemons, SIGKILLing any still running after $1 seconds.
# (kill -0 would see exited children as alive until they are reaped.)
wait_daemons() {
  ( sleep "$1"; kill -KILL "${PIDS[@]}" 2>/dev/null ) &
  local killer=$!
  wait "${PIDS[@]}" 2>/dev/null || true
  kill "$killer" 2>/dev/null || true
  wait "$killer" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait_daemons 5
  fi
  { wait; } 2>/dev/null || true # the tail of worker 0's output
}
trap cleanup EXIT
trap 'echo; echo "quickstart: interrupted, stopping the cluster"; exit 130' INT TERM

# A free port for the scheduler.
PORT=7000
while ss -Htln "sport = :$PORT" | grep -q .; do PORT=$((PORT + 1)); done
SCHED=tcp://127.0.0.1:$PORT

# CURVE on every link (issue #13): a key per role in the run's folder,
# found by every program through PS_KEYS_DIR (psctl uses admin.key).
for role in scheduler server worker admin; do
  "$BIN/psctl" keygen --role "$role" --out "$RUN/keys" >/dev/null
done
export PS_KEYS_DIR=$RUN/keys
echo "== cluster: scheduler $SCHED, $SERVERS servers, $WORKERS workers, $MODE, $EPOCHS epochs, batch $BATCH per worker, $REPLICATION copies of each range =="
echo "   logs in $RUN; CURVE keys in $RUN/keys (PS_KEYS_DIR=$RUN/keys psctl status)"
# --metrics-bind for a daemon: base port + index, when --metrics is on.
metrics() { [ $METRICS -eq 1 ] && echo "--metrics-bind=127.0.0.1:$(($1 + $2))" || true; }
if [ $METRICS -eq 1 ]; then
  echo "   metrics: http://127.0.0.1:9400/metrics (scheduler), :9401.. (servers), :9411.. (workers);"
  echo "   prometheus --config.file=$ROOT/deploy/prometheus/prometheus.yml --storage.tsdb.path=$RUN/prometheus"
fi
"$BIN/ps-scheduler" --bind "$SCHED" --servers "$SERVERS" --workers "$WORKERS" \
  --mode "$MODE" --replication "$REPLICATION" $(metrics 9400 0) >"$RUN/scheduler.log" 2>&1 &
PIDS+=($!)
for i in $(seq 0 $((SERVERS - 1))); do
  "$BIN/ps-server" --scheduler "$SCHED" $(metrics 9401 "$i") >"$RUN/server$i.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 $((WORKERS - 1))); do
  "$BIN/ps-worker" --scheduler "$SCHED" --rank "$i" --epochs "$EPOCHS" \
    --batch-size "$BATCH" $(metrics 9411 "$i") >"$RUN/worker$i.log" 2>&1 &
  PIDS+=($!)
done
# Worker 0 shows its progress here and writes the report and the figures.
W0_ARGS=(--scheduler "$SCHED" --rank 0 --epochs "$EPOCHS" --batch-size "$BATCH"
  $(metrics 9411 0) --report "$RUN/report.json" --metrics-csv "$RUN/metrics.csv")
status=0
if [ -t 1 ] && [ -t 2 ]; then
  # In the foreground on this terminal itself, so that it draws its
  # progress line here (and stops cleanly on Ctrl-C, like the others).
  echo "   worker 0 writes to this terminal"
  "$BIN/ps-worker" "${W0_ARGS[@]}" || status=$?
else
  "$BIN/ps-worker" "${W0_ARGS[@]}" >"$RUN/worker0.log" 2>&1 &
  PIDS+=($!)
  W0=$!
  # Shown by a tail that ends with the worker (a `> >(tee ...)` would leave
  # a process substitution that bash later fails to wait for, with a
  # warning).
  tail -n +1 --pid=$W0 -f "$RUN/worker0.log" &
  SHOW=$!
  wait $W0 || status=$?
  wait $SHOW 2>/dev/null || true
  unset 'PIDS[-1]' # reaped: waiting for it again would be an error
fi
if [ $status -ne 0 ] || [ ! -s "$RUN/report.json" ]; then
  echo "quickstart: training failed (exit $status); last lines of each log:" >&2
  for f in "$RUN"/*.log; do echo "--- $f" >&2; tail -n 5 "$f" >&2; done
  exit 1
fi
# The job is over: the scheduler tells every daemon to exit.
wait_daemons 10
PIDS=()

num() { sed -n "s/.*\"$1\": *\([0-9.eE+-]*\).*/\1/p" "$RUN/report.json" | head -1; }
ACC=$(num test_accuracy); SPS=$(num samples_per_sec); WALL=$(num wall_seconds)
echo
echo "== result =="
printf 'test accuracy      %s\n' "$ACC"
printf 'wall time          %s s\n' "$WALL"
printf 'samples/s          %s (all workers)\n' "$SPS"

if [ $BASELINE -eq 1 ]; then
  # The same model in one process, same global batch, a few hundred steps:
  # the baseline the distributed throughput is measured against.
  GLOBAL=$((BATCH * WORKERS))
  "$BIN/ps-worker" --standalone --batch-size "$GLOBAL" --max-steps 400 \
    --report "$RUN/standalone.json" >"$RUN/standalone.log" 2>&1
  SA=$(sed -n 's/.*"samples_per_sec": *\([0-9.eE+-]*\).*/\1/p' "$RUN/standalone.json" | head -1)
  RATIO=$(awk -v a="$SPS" -v b="$SA" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  printf 'standalone         %s samples/s (batch %s, one process)\n' "$SA" "$GLOBAL"
  printf 'cluster/standalone %s\n' "$RATIO"
fi
echo "report: $RUN/report.json"
echo "figures: $RUN/metrics.csv"
if command -v gnuplot >/dev/null; then
  if ./deploy/plot.sh "$RUN/metrics.csv" "$RUN/metrics.png" >/dev/null 2>"$RUN/plot.log"; then
    echo "plot: $RUN/metrics.png"
  else
    echo "quickstart: deploy/plot.sh failed (see $RUN/plot.log)" >&2
  fi
else
  echo "plot: install gnuplot-nox, then deploy/plot.sh $RUN/metrics.csv"
fi
