#!/usr/bin/env bash
# Three hosts on one machine: network namespaces joined by a bridge (in a
# namespace of its own, so the machine's own network is never touched),
# one address each, no loopback between them. The scheduler runs on host 1,
# a server and a worker on each of hosts 2 and 3; every daemon binds and
# advertises its host's address, so every link crosses the "network". The
# job must train to its end and every process exit 0.
#   tests/deploy/netns_run.sh BIN_DIR WORK_DIR
# Exits 77 (skipped) where namespaces cannot be made (not root, no ip).
set -euo pipefail
BIN=${1:?usage: netns_run.sh BIN_DIR WORK_DIR}
WORK=${2:?usage: netns_run.sh BIN_DIR WORK_DIR}
STEPS=300
DEADLINE_S=${PS_NETNS_DEADLINE_S:-180}

if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then
  echo "SKIPPED: needs root and iproute2 to make network namespaces"
  exit 77
fi
tag=ps$$
sw=$tag-sw
hosts=("$tag-h1" "$tag-h2" "$tag-h3")
net=10.77.$(($$ % 200 + 20))
pids=()

cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${hosts[@]}" "$sw"; do ip netns del "$n" 2>/dev/null || true; done
  exit $rc
}
trap cleanup EXIT INT TERM

if ! ip netns add "$sw" 2>/dev/null; then
  echo "SKIPPED: ip netns add is not permitted here"
  exit 77
fi
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
for i in 1 2 3; do
  h=${hosts[$((i - 1))]}
  ip netns add "$h"
  ip -n "$sw" link add "v$i" type veth peer name eth0 netns "$h"
  ip -n "$sw" link set "v$i" master br0 up
  ip -n "$h" addr add "$net.$i/24" dev eth0
  ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
done

rm -rf "$WORK" && mkdir -p "$WORK"
sched=tcp://$net.1:7000
run_on() { # run_on HOST LOG PROGRAM ARGS...
  local h=$1 log=$2
  shift 2
  ip netns exec "$h" "$@" >"$WORK/$log" 2>&1 &
  pids+=($!)
}
run_on "${hosts[0]}" scheduler.log "$BIN/ps-scheduler" --bind "$sched" \
  --servers 2 --workers 2 --heartbeat-timeout-ms 3000
for i in 2 3; do
  h=${hosts[$((i - 1))]}
  run_on "$h" "server$i.log" "$BIN/ps-server" --scheduler "$sched" \
    --bind "tcp://$net.$i:7101"
  run_on "$h" "worker$i.log" "$BIN/ps-worker" --scheduler "$sched" \
    --rank $((i - 2)) --epochs 1 --max-steps $STEPS \
    --report "$WORK/report$i.json"
done

# Every process must end, and end well, before the deadline.
end=$((SECONDS + DEADLINE_S))
names=(scheduler server2 worker2 server3 worker3)
for k in "${!pids[@]}"; do
  p=${pids[$k]}
  while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if kill -0 "$p" 2>/dev/null; then
    echo "FAIL: ${names[$k]} still running after ${DEADLINE_S} s" >&2
    tail -n 20 "$WORK"/*.log >&2
    exit 1
  fi
  st=0
  wait "$p" || st=$?
  if [ $st -ne 0 ]; then
    echo "FAIL: ${names[$k]} exited $st" >&2
    tail -n 20 "$WORK/${names[$k]}.log" >&2
    exit 1
  fi
done
pids=()

# The servers were reached at their hosts' addresses, not loopback.
for i in 2 3; do
  grep -q "tcp://$net.$i:7101" "$WORK/scheduler.log" || {
    echo "FAIL: the scheduler never saw server $i at tcp://$net.$i:7101" >&2
    exit 1
  }
done
for i in 2 3; do
  steps=$(sed -n 's/.*"steps": *\([0-9]*\).*/\1/p' "$WORK/report$i.json")
  acc=$(sed -n 's/.*"test_accuracy": *\([0-9.]*\).*/\1/p' "$WORK/report$i.json")
  echo "worker on host $i: steps $steps, test accuracy $acc"
  [ "$steps" = "$STEPS" ] || { echo "FAIL: worker $i did $steps steps, not $STEPS" >&2; exit 1; }
done
echo "netns: 3 hosts ($net.1-3), a job of $STEPS steps trained to its end"
