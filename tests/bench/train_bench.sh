#!/usr/bin/env bash
# Training throughput (issue #15): the MLP on Fashion-MNIST, one process
# against clusters on loopback, every run in this one invocation, so the
# ratios compare figures from the same machine at the same time.
#
#   tests/bench/train_bench.sh [--build DIR] [--epochs N] [--servers N]
#       [--workers N] [--batch B] [--curve] [--runs LIST] [--out DIR]
#
# LIST is a comma-separated list of runs (default standalone,r1,r2):
#   standalone   ps-worker --standalone --threads 2, batch WORKERS x B
#   r1, r2       the cluster, BSP, 1 or 2 copies of every range
#   NAME:ARGS    a cluster run with 2 copies and the extra ps-worker ARGS
#                (words split on '+'), e.g. fp16:--codec+fp16
#   NAME@SCHED   (after ARGS or alone) extra ps-scheduler arguments, same
#                splitting, e.g. ssp:@--mode+ssp+--staleness+3
#   NAME!SLOW    the last worker also runs with --step-delay-ms SLOW
# Every run trains EPOCHS (10) epochs (the standalone one as many samples)
# and evaluates after each; the table gives samples/s (training only, all
# workers), the ratio to the standalone run, the wall time until the test
# accuracy first reached 0.86 (from worker 0's --metrics-csv), the final
# accuracy, the run's wall time, and the payload bytes worker 0 moved per
# step (pushes + pulls, its report's bytes_per_step: what the codecs of
# --codec save; "-" for the standalone run). Plaintext links unless --curve.
# Writes OUT (default BUILD/train-bench)/table.txt and each run's logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=$ROOT/build
EPOCHS=10
SERVERS=2
WORKERS=2
BATCH=32
CURVE=0
RUNS=standalone,r1,r2
OUT=
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --curve) CURVE=1; shift ;;
    --runs) RUNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "train_bench: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
B=$BUILD/bin
[ -x "$B/ps-worker" ] || { echo "train_bench: $B/ps-worker not found; build first" >&2; exit 2; }
OUT=${OUT:-$BUILD/train-bench}
mkdir -p "$OUT"
TABLE=$OUT/table.txt

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

SEC=(--insecure)
if [ $CURVE -eq 1 ]; then
  KEYS=$OUT/keys
  for role in scheduler server worker admin; do
    [ -f "$KEYS/$role.key" ] || "$B/psctl" keygen --role "$role" --out "$KEYS" >/dev/null
  done
  SEC=(--keys-dir "$KEYS")
fi

# The test accuracy's first reaching 0.86: time_s of that epoch row.
wall_to() {
  awk -F, -v t=0.86 'NR > 1 && $2 == "epoch" && $10 != "" && $10 >= t { print $1; exit }' "$1"
}
num() { sed -n "s/.*\"$1\": *\([0-9.eE+-]*\).*/\1/p" "$2" | head -1; }

SA_SPS=
row() { # name sps wall_to acc wall [bytes_per_step]
  local ratio=n/a bps=-
  [ -n "$SA_SPS" ] && ratio=$(awk -v a="$2" -v b="$SA_SPS" 'BEGIN { printf "%.2f", a / b }')
  [ -n "${6:-}" ] && bps=$(awk -v a="$6" 'BEGIN { printf "%.0f", a }')
  printf '| %-22s | %9.0f | %5s | %6s s | %6.4f | %6.1f s | %10s |\n' "$1" "$2" "$ratio" "${3:-never}" "$4" "$5" "$bps" | tee -a "$TABLE"
}

run_standalone() {
  local d=$OUT/standalone; rm -rf "$d"; mkdir -p "$d"
  "$B/ps-worker" --standalone --threads 2 --batch-size $((BATCH * WORKERS)) \
    --epochs "$EPOCHS" --report "$d/report.json" --metrics-csv "$d/metrics.csv" \
    --log-level warn >"$d/worker.log" 2>&1
  SA_SPS=$(num samples_per_sec "$d/report.json")
  row standalone "$SA_SPS" "$(wall_to "$d/metrics.csv")" \
    "$(num test_accuracy "$d/report.json")" "$(num wall_seconds "$d/report.json")"
}

run_cluster() { # name replication "worker args" "scheduler args" slow_ms
  local name=$1 repl=$2 wargs=$3 sargs=$4 slow=$5
  local d=$OUT/$name; rm -rf "$d"; mkdir -p "$d"
  local port; port=$(free_port)
  local sched=tcp://127.0.0.1:$port
  # shellcheck disable=SC2086 # the extra arguments are words on purpose
  "$B/ps-scheduler" --bind "$sched" --servers "$SERVERS" --workers "$WORKERS" \
    --mode bsp --replication "$repl" "${SEC[@]}" --log-level warn $sargs \
    >"$d/scheduler.log" 2>&1 & PIDS+=($!)
  for i in $(seq 0 $((SERVERS - 1))); do
    "$B/ps-server" --scheduler "$sched" "${SEC[@]}" --log-level warn \
      >"$d/server$i.log" 2>&1 & PIDS+=($!)
  done
  local w0=
  for i in $(seq 0 $((WORKERS - 1))); do
    local extra=()
    [ "$i" -eq 0 ] && extra=(--report "$d/report.json" --metrics-csv "$d/metrics.csv")
    [ -n "$slow" ] && [ "$i" -eq $((WORKERS - 1)) ] && extra+=(--step-delay-ms "$slow")
    # shellcheck disable=SC2086
    "$B/ps-worker" --scheduler "$sched" --rank "$i" --epochs "$EPOCHS" \
      --batch-size "$BATCH" "${SEC[@]}" --log-level warn "${extra[@]}" $wargs \
      >"$d/worker$i.log" 2>&1 & PIDS+=($!)
    [ "$i" -eq 0 ] && w0=$!
  done
  if ! wait "$w0" || [ ! -s "$d/report.json" ]; then
    echo "train_bench: run $name failed; logs in $d" >&2
    for f in "$d"/*.log; do echo "--- $f" >&2; tail -n 5 "$f" >&2; done
    exit 1
  fi
  cleanup
  row "$name" "$(num samples_per_sec "$d/report.json")" "$(wall_to "$d/metrics.csv")" \
    "$(num test_accuracy "$d/report.json")" "$(num wall_seconds "$d/report.json")" \
    "$(num bytes_per_step "$d/report.json")"
}

{
  echo "# train_bench $(date -u +%FT%TZ) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# $SERVERS servers + $WORKERS workers x batch $BATCH, $EPOCHS epochs, MLP 784-256-128-10, $([ $CURVE -eq 1 ] && echo CURVE || echo plaintext)"
  echo "| run                    | samples/s | ratio | to 0.86  | acc    | wall     | bytes/step |"
  echo "| ---                    | ---       | ---   | ---      | ---    | ---      | ---        |"
} | tee "$TABLE"
IFS=, read -r -a LIST <<<"$RUNS"
for r in "${LIST[@]}"; do
  case "$r" in
    standalone) run_standalone ;;
    r1) run_cluster r1 1 "" "" "" ;;
    r2) run_cluster r2 2 "" "" "" ;;
    *)
      name=${r%%[:@!]*}
      slow=; [[ "$r" == *'!'* ]] && slow=${r##*!}
      rest=${r%%!*}
      sargs=; [[ "$rest" == *@* ]] && sargs=${rest##*@}
      rest=${rest%%@*}
      wargs=; [[ "$rest" == *:* ]] && wargs=${rest#*:}
      run_cluster "$name" 2 "${wargs//+/ }" "${sargs//+/ }" "$slow" ;;
  esac
done
echo "table: $TABLE"
