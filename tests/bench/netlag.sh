#!/usr/bin/env bash
# Hosts with latency (issue #16): every daemon in its own network namespace
# behind a bridge, each link rate-limited by the kernel's tbf and delayed by
# ps-netlag (tests/bench/netlag.c: this kernel has no sch_netem), then
#   1. ps-bench (push and pull, 64 KiB and 1 MiB, window 1 and 8) against a
#      scheduler and 2 servers (replication 2),
#   2. one BSP training run (2 servers, 2 workers, the MLP, STEPS steps):
#      samples/s,
#   3. failover: an ASP training run whose server 0 is SIGKILLed: the time
#      to the scheduler's failover view and to the worker's next step,
# at each setting: none (the relays with no delay and no rate: the
# baseline), 100us/10gbit and 1ms/1gbit (ONE-WAY delay per link, each way,
# and the rate of every veth).
#
#   sudo tests/bench/netlag.sh [OUT_DIR]     (build first: build/bin)
#
# Needs root, ip netns, veth, a bridge and tc's tbf; says why and exits 77
# otherwise. Everything it made (namespaces, links, processes) goes at the
# end, on failure too. Figures go to stdout and OUT_DIR/summary.txt.
#
# Topology: bridge psnl0 (10.77.0.1) in this namespace; namespace psnl-NAME
# for each of sched, s0, s1, w0, w1, bench, with a veth to the bridge
# (10.77.0.10 and up). Each daemon's listening endpoint is reached only
# through a ps-netlag relay on 10.77.0.1 (servers --advertise it), so every
# connection crosses: sender veth (tbf) -> relay (delay) -> receiver veth
# (tbf). The relays themselves cost CPU on this 2-core host: the baseline
# goes through them too, with no delay.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${PS_BIN_DIR:-$root/build/bin}
out=${1:-$(mktemp -d /tmp/netlag.XXXXXX)}
STEPS=${STEPS:-400}
mkdir -p "$out"
export PS_INSECURE=true

skip() {
  echo "netlag.sh: skipped: $*" >&2
  exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "no ip(8)"
command -v tc >/dev/null || skip "no tc(8)"
for b in ps-scheduler ps-server ps-worker ps-bench ps-netlag psctl; do
  [ -x "$bin/$b" ] || { echo "netlag.sh: no $bin/$b (build first)" >&2; exit 1; }
done

NODES=(sched s0 s1 w0 w1 bench)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in "${NODES[@]}"; do ip netns del "psnl-$n" 2>/dev/null || true; done
  ip link del psnl0 2>/dev/null || true
}
trap cleanup EXIT

ip_of() { # node -> its address
  local i
  for i in "${!NODES[@]}"; do
    [ "${NODES[$i]}" = "$1" ] && { echo "10.77.0.$((10 + i))"; return; }
  done
}

setup_net() {
  cleanup
  ip link add psnl0 type bridge || skip "cannot create a bridge"
  ip addr add 10.77.0.1/24 dev psnl0
  ip link set psnl0 up
  local i
  for i in "${!NODES[@]}"; do
    local n=${NODES[$i]} ns=psnl-${NODES[$i]}
    ip netns add "$ns" || skip "ip netns add failed"
    ip link add "psnlh$i" type veth peer name "psnln$i" ||
      skip "cannot create a veth pair"
    ip link set "psnln$i" netns "$ns"
    ip link set "psnlh$i" master psnl0
    ip link set "psnlh$i" up
    ip netns exec "$ns" ip addr add "$(ip_of "$n")/24" dev "psnln$i"
    ip netns exec "$ns" ip link set "psnln$i" up
    ip netns exec "$ns" ip link set lo up
  done
}

# set_rate RATE: tbf on both ends of every veth ("" removes it).
set_rate() {
  local i
  for i in "${!NODES[@]}"; do
    local ns=psnl-${NODES[$i]}
    tc qdisc del dev "psnlh$i" root 2>/dev/null || true
    ip netns exec "$ns" tc qdisc del dev "psnln$i" root 2>/dev/null || true
    [ -z "$1" ] && continue
    # burst: at least rate x 1 ms (tbf wants >= rate / HZ).
    local burst=$2
    tc qdisc add dev "psnlh$i" root tbf rate "$1" burst "$burst" latency 50ms
    ip netns exec "$ns" tc qdisc add dev "psnln$i" root tbf rate "$1" \
      burst "$burst" latency 50ms
  done
}

# relay NAME LISTEN_PORT TARGET DELAY_US
relay() {
  "$bin/ps-netlag" --listen "10.77.0.1:$2" --to "$3" --delay-us "$4" \
    2>>"$run/relay-$1.log" &
  pids+=($!)
}

# in NODE LOGNAME CMD...: runs CMD in NODE's namespace, in the background.
in_ns() {
  local n=$1 log=$2
  shift 2
  ip netns exec "psnl-$n" "$@" >"$run/$log.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

# cluster DELAY_US WORKERS MODE [extra scheduler args]: scheduler and 2
# servers behind relays. The scheduler's endpoint for the others: $sched_ep.
cluster() {
  local d=$1 w=$2 mode=$3
  shift 3
  relay sched 17000 "$(ip_of sched):7000" "$d"
  relay s0 17001 "$(ip_of s0):7100" "$d"
  relay s1 17002 "$(ip_of s1):7100" "$d"
  sched_ep=tcp://10.77.0.1:17000
  in_ns sched scheduler "$bin/ps-scheduler" --bind "tcp://$(ip_of sched):7000" \
    --servers 2 --workers "$w" --mode "$mode" "$@"
  sched_pid=$last_pid
  in_ns s0 server0 "$bin/ps-server" --scheduler "$sched_ep" \
    --bind "tcp://$(ip_of s0):7100" --advertise tcp://10.77.0.1:17001
  s0_pid=$last_pid
  in_ns s1 server1 "$bin/ps-server" --scheduler "$sched_ep" \
    --bind "tcp://$(ip_of s1):7100" --advertise tcp://10.77.0.1:17002
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# ms since the epoch of a log line's ts=...
ts_ms() {
  sed -n 's/^ts=\([^ ]*\) .*/\1/p' | head -n 1 |
    { read -r t && date -d "$t" +%s%3N; }
}

summary=$out/summary.txt
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

setup_net
say "# tests/bench/netlag.sh, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
say "# one-way delay per link (ps-netlag, each way) / tbf rate per veth"
for setting in none:0: 100us:100:10gbit 1ms:1000:1gbit; do
  IFS=: read -r name delay rate <<<"$setting"
  case $rate in
    10gbit) set_rate 10gbit 1250000 ;;
    1gbit) set_rate 1gbit 125000 ;;
    *) set_rate "" "" ;;
  esac
  run=$out/$name
  mkdir -p "$run"
  say "== $name (delay ${delay} us each way, rate ${rate:-unlimited})"

  # 1. ps-bench.
  cluster "$delay" 1 asp
  sleep 0.5
  ip netns exec psnl-bench "$bin/ps-bench" --scheduler "$sched_ep" \
    --servers 2 --clients 1 --ops push,pull --sizes 64K,1M --windows 1,8 \
    --reps 3 --rep-ms 1000 --warmup-ms 300 --json >"$run/bench.json" \
    2>"$run/bench.log" || say "  ps-bench failed (see $run/bench.log)"
  python3 - "$run/bench.json" <<'EOF' | tee -a "$summary" || true
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("op") not in ("push", "pull") or r.get("mbps") is None:
        continue
    rows.append("  ps-bench %-4s %8d B window %d: %8.1f MB/s, p50 %6.0f us"
                % (r["op"], r["size"], r["window"], r["mbps"],
                   r.get("p50_us") or 0))
print("\n".join(rows) if rows else "  (no ps-bench rows parsed)")
EOF
  stop_all

  # 2. BSP training: samples/s.
  cluster "$delay" 2 bsp
  in_ns w0 worker0 "$bin/ps-worker" --scheduler "$sched_ep" --rank 0 \
    --max-steps "$STEPS" --eval-every-epoch=false --report "$run/report.json"
  w0=$last_pid
  in_ns w1 worker1 "$bin/ps-worker" --scheduler "$sched_ep" --rank 1 \
    --max-steps "$STEPS" --eval-every-epoch=false
  w1=$last_pid
  wait "$w0" "$w1" || say "  a worker failed (see $run/worker*.log)"
  sps=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f" % r.get("samples_per_sec", 0))' "$run/report.json" 2>/dev/null || echo "?")
  say "  training (bsp, 2 servers, 2 workers, $STEPS steps): $sps samples/s"
  stop_all

  # 3. Failover: SIGKILL server 0 while an ASP worker trains.
  cluster "$delay" 1 asp
  in_ns w0 failover "$bin/ps-worker" --scheduler "$sched_ep" --rank 0 \
    --epochs 100 --progress-ms 50 --eval-every-epoch=false
  deadline=$((SECONDS + 60))
  until grep -q "event=progress" "$run/failover.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || break
    sleep 0.1
  done
  sleep 1
  step_at_kill=$(grep "event=progress" "$run/failover.log" | tail -n 1 |
    sed 's/.* step=\([0-9]*\).*/\1/')
  kill_ms=$(date +%s%3N)
  { kill -9 "$s0_pid" && wait "$s0_pid"; } 2>/dev/null || true
  view_ms=""
  resumed_ms=""
  deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ] && { [ -z "$view_ms" ] || [ -z "$resumed_ms" ]; }; do
    [ -n "$view_ms" ] || view_ms=$(grep "why=failover" "$run/scheduler.log" |
      ts_ms || true)
    if [ -n "$view_ms" ] && [ -z "$resumed_ms" ]; then
      # The first progress line after the view with a step past the kill's
      # and a timestamp after the view.
      resumed_ms=$(grep "event=progress" "$run/failover.log" |
        awk -v s="$step_at_kill" '{ for (i = 1; i <= NF; i++)
          if ($i ~ /^step=/) { split($i, a, "="); if (a[2] + 0 > s + 0) print } }' |
        while read -r line; do
          t=$(echo "$line" | ts_ms)
          [ "$t" -gt "$view_ms" ] && { echo "$t"; break; }
        done || true)
    fi
    sleep 0.05
  done
  if [ -n "$view_ms" ] && [ -n "$resumed_ms" ]; then
    say "  failover (asp, server 0 SIGKILLed at step $step_at_kill): failover view $((view_ms - kill_ms)) ms, worker past it $((resumed_ms - kill_ms)) ms after the kill"
  else
    say "  failover: not measured (view ${view_ms:-none}, resumed ${resumed_ms:-no}; see $run)"
  fi
  stop_all
done
say "# logs: $out"
