# shellcheck shell=bash
# Shared by tests/bench/sparse_rss.sh and sparse_cap.sh (sourced): a
# scheduler and one ps-server on loopback (replication 1, plaintext, the
# server's metrics on a free port), ps-bench's fill against them with
# --sparse-hold, and readers of the server's memory and metrics.
# Needs: B (the bin directory); bench_scratch makes TMP and PIDS.

# Makes TMP (a scratch directory) and PIDS (the processes to kill), and a
# trap that on failure shows each log's last lines under $1's name, then
# kills what PIDS holds and removes TMP.
bench_scratch() {
  BENCH_NAME=$1
  TMP=$(mktemp -d "/tmp/ps-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "$BENCH_NAME: failed (exit $rc); last lines of each log:" >&2
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 8 "$f" >&2; }; done
  fi
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts the cluster; extra arguments go to ps-server. Sets SCHED_EP,
# SERVER_PID, METRICS_PORT; waits (at most 30 s) for the metrics endpoint
# (/healthz says 503 until the job starts, so /metrics).
start_cluster() {
  local sp
  sp=$(free_port); METRICS_PORT=$(free_port)
  SCHED_EP="tcp://127.0.0.1:$sp"
  "$B/ps-scheduler" --bind "$SCHED_EP" --mode asp --servers 1 --workers 1 \
    --replication 1 --heartbeat-timeout-ms 600000 --insecure \
    --log-level warn 2>>"$TMP/scheduler.log" & PIDS+=($!)
  "$B/ps-server" --scheduler "$SCHED_EP" --metrics-bind "127.0.0.1:$METRICS_PORT" \
    --insecure --log-level warn "$@" 2>>"$TMP/server.log" & SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "ps-server exited at start" >&2; return 1; }
    sleep 0.25
  done
  echo "ps-server's metrics did not come up within 30 s" >&2; return 1
}

# The server's resident memory in bytes (VmRSS).
server_rss() {
  awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$SERVER_PID/status"
}

# Its peak resident memory so far (VmHWM), in bytes.
server_hwm() {
  awk '/^VmHWM:/ {print $2 * 1024}' "/proc/$SERVER_PID/status"
}

# One metric's value from the server (summed over its series).
server_metric() {
  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}

# Starts ps-bench's fill of $1 fresh ids (more ps-bench arguments after it)
# in the background, its stdin a fifo the script holds; BENCH_PID.
start_fill() {
  local ids=$1; shift
  rm -f "$TMP/hold" "$TMP/bench.out"
  mkfifo "$TMP/hold"
  "$B/ps-bench" --scheduler "$SCHED_EP" --servers 1 --clients 1 --ops sparse \
    --sizes 4K --sparse-ids "$ids" --sparse-hold --timeout-ms 600000 "$@" \
    <"$TMP/hold" >"$TMP/bench.out" 2>>"$TMP/bench.log" & BENCH_PID=$!
  PIDS+=("$BENCH_PID")
  exec 7>"$TMP/hold"
}

# Waits until the fill is done and held (at most $1 seconds).
wait_held() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    grep -qx held "$TMP/bench.out" 2>/dev/null && return 0
    kill -0 "$BENCH_PID" 2>/dev/null || { echo "ps-bench exited before the fill was held" >&2; return 1; }
    sleep 0.2
  done
  echo "the fill was not done within $1 s" >&2; return 1
}

# Lets ps-bench go; the job ends and every daemon exits (at most 60 s;
# then they are stopped). Fails unless ps-bench and the server exit 0 by
# themselves (a sanitizer's report at exit shows here).
release_fill() {
  exec 7>&-
  local deadline=$((SECONDS + 60)) rc=0 src=0
  for p in "${PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  done
  wait "$BENCH_PID" || rc=$?
  wait "$SERVER_PID" || src=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
  [ $rc = 0 ] || { echo "ps-bench exited $rc" >&2; return 1; }
  [ $src = 0 ] || { echo "ps-server exited $src" >&2; return 1; }
}
