#!/usr/bin/env bash
# Every figure issue #15 sets a target for, from one invocation on one
# machine: training throughput against one process (train_bench.sh: the
# cluster with 1 and 2 copies, push and pull in one request or two, each
# codec, BSP and SSP with a straggler) and ps-bench's data plane (2
# copies against 1, push-pull against raw ZeroMQ).
#
#   tests/bench/issue15.sh [--build DIR] [--out DIR] [--epochs N]
#                          [--slow-ms MS] [--skip-train] [--skip-bench]
#
# --slow-ms: the straggler's extra time per step (default: measured, the
# time of a step of the 2 + 2 run, so that it runs at about half speed).
# Writes OUT (default BUILD/issue15)/summary.md and the runs' files.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=$ROOT/build
OUT=
EPOCHS=10
SLOW=
TRAIN=1
BENCH=1
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --slow-ms) SLOW=$2; shift 2 ;;
    --skip-train) TRAIN=0; shift ;;
    --skip-bench) BENCH=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "issue15: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
B=$BUILD/bin
[ -x "$B/ps-bench" ] || { echo "issue15: $B/ps-bench not found; build first" >&2; exit 2; }
OUT=${OUT:-$BUILD/issue15}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.md
{
  echo "# issue #15 figures, $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} >"$SUMMARY"

if [ $TRAIN -eq 1 ]; then
  if [ -z "$SLOW" ]; then
    # A step's time in the 2 + 2 job: the straggler's delay that halves
    # its speed.
    tests/bench/train_bench.sh --build "$BUILD" --epochs 1 --runs r2 \
      --out "$OUT/probe" >/dev/null
    SLOW=$(awk -F'|' '$2 ~ /r2/ { sps = $3 + 0; if (sps > 0) printf "%d", 64000 / sps + 0.5 }' \
      "$OUT/probe/table.txt")
    SLOW=${SLOW:-4}
  fi
  echo "## Training (tests/bench/train_bench.sh; straggler +$SLOW ms a step)" >>"$SUMMARY"
  RUNS="standalone,r1,r2,separate:--push-pull+separate"
  RUNS+=",fp16:--codec+fp16,int8:--codec+int8,topk:--codec+topk"
  RUNS+=",bsp-slow!$SLOW,ssp3-slow@--mode+ssp+--staleness+3!$SLOW"
  tests/bench/train_bench.sh --build "$BUILD" --epochs "$EPOCHS" --runs "$RUNS" \
    --out "$OUT/train"
  cat "$OUT/train/table.txt" >>"$SUMMARY"
  echo >>"$SUMMARY"
fi

if [ $BENCH -eq 1 ]; then
  # 2 servers, 1 client: 2 copies against 1, in the same invocation.
  for r in 1 2; do
    "$B/ps-bench" --local 2,1 --replication "$r" --ops push,pushpull \
      --sizes 64K,1M,16M --windows 1,8 --json >"$OUT/repl$r.jsonl"
  done
  # 1 + 1 against raw ZeroMQ: push then pull, and both in one request.
  "$B/ps-bench" --local 1,1 --ops pushpull,fused --sizes 64K,1M,16M \
    --windows 8 --json >"$OUT/raw.jsonl"
  python3 - "$OUT" >>"$SUMMARY" <<'EOF'
import json, sys
out = sys.argv[1]
def load(name):
    return [json.loads(l) for l in open(f"{out}/{name}") if l.startswith("{")]
one = {(c["op"], c["size"], c["window"]): c for c in load("repl1.jsonl")}
two = {(c["op"], c["size"], c["window"]): c for c in load("repl2.jsonl")}
print("## ps-bench --local 2,1: 2 copies against 1 (target >= 0.8)")
print("| op | size | window | 1 copy MB/s | 2 copies MB/s | ratio |")
print("| --- | --- | --- | --- | --- | --- |")
for k in sorted(one, key=lambda k: (k[0], k[1], k[2])):
    if k in two:
        a, b = one[k]["mbps"], two[k]["mbps"]
        print(f"| {k[0]} | {k[1] >> 10} KiB | {k[2]} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
print()
print("## ps-bench --local 1,1, window 8: ours against raw ZeroMQ (target >= 0.9)")
print("| op | size | ours MB/s | raw MB/s | ratio |")
print("| --- | --- | --- | --- | --- |")
for c in load("raw.jsonl"):
    print(f"| {c['op']} | {c['size'] >> 10} KiB | {c['mbps']:.0f} | {c['raw_mbps']:.0f} | {c['ratio']:.2f} |")
EOF
fi
cat "$SUMMARY"
