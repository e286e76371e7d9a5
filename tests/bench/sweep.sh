#!/usr/bin/env bash
# The standard ps-bench sweep: 1 server + 1 client and 2 + 2, value sizes
# 4K, 64K, 1M, 16M per request, windows 1 and 8, push/pull/pushpull next to
# raw ZeroMQ from the same run, the sparse op (keys/s; no raw baseline) and
# the update kernel next to memcpy; then the scaling check: 64 clients
# against 2 servers next to 2 clients (pushpull, window 8, every size).
#
#   tests/bench/sweep.sh [--quick] [--build DIR] [--out DIR] [--no-plot]
#                        [--no-scaling] [--reps N] [--rep-ms MS]
#
# Writes into OUT (default build-bench/sweep): sweep.jsonl (ps-bench's
# lines), sweep.csv, table.txt (the human tables), scaling.txt and
# sweep.png (throughput vs size, ours and raw ZeroMQ side by side; gnuplot,
# installed as gnuplot-nox when missing). --quick is for CI: fewer sizes,
# shorter repetitions, 8 clients instead of 64 for the scaling check.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=$ROOT/build
OUT=
QUICK=0
PLOT=1
SCALING=1
REPS=
REP_MS=
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-plot) PLOT=0; shift ;;
    --no-scaling) SCALING=0; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --rep-ms) REP_MS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "sweep: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
BENCH=$BUILD/bin/ps-bench
if [ ! -x "$BENCH" ]; then
  echo "sweep: $BENCH not found; build first: cmake -S . -B $BUILD && cmake --build $BUILD" >&2
  exit 2
fi
OUT=${OUT:-$BUILD/sweep}
mkdir -p "$OUT"
JSONL=$OUT/sweep.jsonl
CSV=$OUT/sweep.csv
TABLE=$OUT/table.txt
: >"$JSONL"
: >"$TABLE"

ARGS=(--json)
[ $QUICK -eq 1 ] && ARGS+=(--quick)
[ -n "$REPS" ] && ARGS+=(--reps "$REPS")
[ -n "$REP_MS" ] && ARGS+=(--rep-ms "$REP_MS")
SIZES=4K,64K,1M,16M
[ $QUICK -eq 1 ] && SIZES=4K,64K

# ps-bench stops every process it started, also on Ctrl-C; this script
# only has to pass the signal on and not start the next run.
trap 'echo "sweep: interrupted" >&2; exit 130' INT TERM

run() {  # run LABEL ps-bench-args...
  local label=$1
  shift
  echo "== $label: ps-bench $*" | tee -a "$TABLE" >&2
  "$BENCH" "$@" "${ARGS[@]}" >>"$JSONL" 2> >(tee -a "$TABLE" >&2)
}

run "1 server, 1 client" --local 1,1 --ops push,pull,pushpull,sparse,apply \
  --sizes $SIZES
run "2 servers, 2 clients" --local 2,2 --ops push,pull,pushpull --sizes $SIZES
if [ $SCALING -eq 1 ]; then
  # The same cases one after the other, so both see the same machine.
  MANY=64
  [ $QUICK -eq 1 ] && MANY=8
  run "scaling, 2 clients" --local 2,2 --ops pushpull --windows 8 --sizes $SIZES
  run "scaling, $MANY clients" --local 2,$MANY --ops pushpull --windows 8 \
    --sizes $SIZES
fi

# ps-bench's JSON is flat, one object per line: awk reads it without jq.
awk '
function get(key,   m) {
  if (match($0, "\"" key "\":[^,}]*")) {
    m = substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
    gsub(/"/, "", m)
    return m
  }
  return ""
}
BEGIN {
  print "op,size,window,servers,clients,mbps,mbps_min,mbps_max,req_per_s,p50_us,p99_us,raw_mbps,raw_p50_us,raw_p99_us,ratio,p50_ratio"
}
{
  if (get("supported") == "false") next
  printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", get("op"), get("size"),
    get("window"), get("servers"), get("clients"), get("mbps"), get("mbps_min"),
    get("mbps_max"), get("req_per_s"), get("p50_us"), get("p99_us"),
    get("raw_mbps"), get("raw_p50_us"), get("raw_p99_us"), get("ratio"),
    get("p50_ratio")
}' "$JSONL" >"$CSV"
echo "sweep: $(($(wc -l <"$CSV") - 1)) cases in $CSV" >&2

if [ $SCALING -eq 1 ]; then
  awk -F, -v many=$MANY '
    NR > 1 && $1 == "pushpull" && $4 == 2 && $3 == 8 {
      if ($5 == 2) two[$2] = $6  # the last: the scaling run, not the 2+2 sweep
      if ($5 == many) lots[$2] = $6
    }
    END {
      for (s in lots)
        if (s in two)
          printf "scaling: pushpull %d bytes, window 8, 2 servers: %d clients %.1f MB/s, 2 clients %.1f MB/s: %.0f%%\n",
            s, many, lots[s], two[s], 100 * lots[s] / two[s]
    }' "$CSV" | tee "$OUT/scaling.txt" >&2
fi

[ $PLOT -eq 1 ] || exit 0
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "sweep: installing gnuplot-nox for the chart" >&2
  if ! { apt-get install -y gnuplot-nox >/dev/null 2>&1 ||
         { apt-get update >/dev/null 2>&1 && apt-get install -y gnuplot-nox >/dev/null 2>&1; }; }; then
    echo "sweep: cannot install gnuplot-nox; no chart (the CSV is there)" >&2
    exit 0
  fi
fi
DAT=$(mktemp -d /tmp/ps-sweep.XXXXXX)
trap 'rm -rf "$DAT"' EXIT
# One data file per panel and series: size, MB/s.
awk -F, -v dir="$DAT" '
  NR > 1 && ($1 == "push" || $1 == "pull" || $1 == "pushpull") &&
  (($4 == 1 && $5 == 1) || ($4 == 2 && $5 == 2)) {
    key = $1 "_" $4 "x" $5 "_w" $3
    if (seen[key "," $2]++) next
    print $2, $6 > (dir "/" key "_ours.dat")
    if ($12 != "" && $12 != "null") print $2, $12 > (dir "/" key "_raw.dat")
  }' "$CSV"
for f in "$DAT"/*.dat; do sort -n -o "$f" "$f"; done
gnuplot <<GP
set terminal pngcairo size 1500,900 font ",10"
set output "$OUT/sweep.png"
set multiplot layout 2,3 title "ps-bench: goodput vs value size per request (ours solid, raw ZeroMQ dashed)"
set logscale x 2
set xrange [3000:24000000]
set logscale y 10
set xlabel "bytes per request"
set ylabel "MB/s (log)"
set key bottom right
set grid
set xtics ("4K" 4096, "16K" 16384, "64K" 65536, "256K" 262144, "1M" 1048576, "4M" 4194304, "16M" 16777216)
do for [cfg in "1x1 2x2"] {
  do for [op in "push pull pushpull"] {
    set title sprintf("%s, %s (servers x clients)", op, cfg)
    plot for [w in "1 8"] sprintf("$DAT/%s_%s_w%s_ours.dat", op, cfg, w) using 1:2 with linespoints lw 2 title sprintf("ours, window %s", w), \
         for [w in "1 8"] sprintf("$DAT/%s_%s_w%s_raw.dat", op, cfg, w) using 1:2 with linespoints dt 2 lw 2 title sprintf("raw ZeroMQ, window %s", w)
  }
}
unset multiplot
GP
echo "sweep: chart in $OUT/sweep.png" >&2
