#!/usr/bin/env bash
# The sparse memory cap on a stream of new ids (issue #14): one ps-server
# with --sparse-max-bytes, one ps-bench client pushing N distinct fresh ids
# of dim D (SGD: 4 * D bytes a row) to it. Samples the server's VmRSS and
# its ps_server_sparse_* metrics every few seconds while the ids stream,
# and checks: the rows held never pass the cap's rows (the server counts
# 4 * D + 40 bytes a row, ps-server/requests.c), the RSS (sampled, and its
# peak VmHWM at the end) grows by less than the cap, and at the end the
# table is full and evictions = ids - rows held. That an evicted row reads
# as its initializer is checked by integration.sparse (sparse_cap_holds).
# Exit 0 when all held, 1 when not, 2 on bad usage.
#
#   tests/bench/sparse_cap.sh [--build DIR] [--ids 100000000]
#       [--cap-bytes 67108864] [--dim 16] [--keys 16384] [--sample-s 5]
#       [--deadline-s 3600] [--no-rss-check (sanitizer builds)]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=$PWD/build IDS=100000000 CAP=67108864 DIM=16 KEYS=16384 SAMPLE=5
DEADLINE=3600 RSS_CHECK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --ids) IDS=$2; shift 2 ;;
    --cap-bytes) CAP=$2; shift 2 ;;
    --dim) DIM=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --sample-s) SAMPLE=$2; shift 2 ;;
    --deadline-s) DEADLINE=$2; shift 2 ;;
    --no-rss-check) RSS_CHECK=0; shift ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
done
B=$BUILD/bin
# shellcheck source=tests/bench/sparse_lib.sh
. "$(dirname "$0")/sparse_lib.sh"
bench_scratch sparse_cap

ROW_BYTES=$((4 * DIM))
CAP_ROWS=$((CAP / (ROW_BYTES + 40)))
WANT_ROWS=$((IDS < CAP_ROWS ? IDS : CAP_ROWS))
start_cluster --sparse-max-bytes "$CAP"
before=$(server_rss)
echo "sparse_cap: ids=$IDS dim=$DIM cap_bytes=$CAP cap_rows=$CAP_ROWS rss_before=$before"
t0=$SECONDS
start_fill "$IDS" --sparse-dim "$DIM" --sparse-keys "$KEYS" --sparse-optimizer sgd
fail=0 max_rss=0 max_rows=0 next=0
check() { # one sample
  local rss rows ev
  rss=$(server_rss); rows=$(server_metric ps_server_sparse_rows)
  ev=$(server_metric ps_server_sparse_evictions_total)
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  [ "$rows" -gt "$max_rows" ] && max_rows=$rows
  echo "sparse_cap: t=$((SECONDS - t0))s rss=$rss rss_growth=$((rss - before)) rows=$rows table_bytes=$((rows * (ROW_BYTES + 40))) evictions=$ev"
  if [ "$rows" -gt "$CAP_ROWS" ]; then
    echo "sparse_cap: FAIL: $rows rows held, the cap is $CAP_ROWS" >&2; fail=1
  fi
  if [ "$RSS_CHECK" = 1 ] && [ $((rss - before)) -gt "$CAP" ]; then
    echo "sparse_cap: FAIL: the RSS grew by $((rss - before)) bytes, more than the cap $CAP" >&2; fail=1
  fi
}
deadline=$((SECONDS + DEADLINE))
while ! grep -qx held "$TMP/bench.out" 2>/dev/null; do
  kill -0 "$BENCH_PID" 2>/dev/null || { echo "sparse_cap: ps-bench exited before the fill was held" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "sparse_cap: the fill was not done within $DEADLINE s" >&2; exit 1; }
  if [ $SECONDS -ge $next ]; then check; next=$((SECONDS + SAMPLE)); fi
  sleep 0.2
done
check
# The peak, which samples may miss (a push's rows are created before the
# cap evicts, and its frames are held while it is applied).
hwm=$(server_hwm)
if [ "$RSS_CHECK" = 1 ] && [ $((hwm - before)) -gt "$CAP" ]; then
  echo "sparse_cap: FAIL: the peak RSS grew by $((hwm - before)) bytes, more than the cap $CAP" >&2; fail=1
fi
rows=$(server_metric ps_server_sparse_rows)
ev=$(server_metric ps_server_sparse_evictions_total)
grep '^fill' "$TMP/bench.out" | sed 's/^/sparse_cap: /'
release_fill
echo "sparse_cap: done in $((SECONDS - t0)) s: ids=$IDS rows=$rows evictions=$ev max_rows=$max_rows max_rss_growth=$((max_rss - before)) peak_rss_growth=$((hwm - before)) cap_bytes=$CAP"
if [ "$rows" != "$WANT_ROWS" ]; then
  echo "sparse_cap: FAIL: the table holds $rows rows at the end, want $WANT_ROWS" >&2; fail=1
fi
if [ "$ev" != $((IDS - rows)) ]; then
  echo "sparse_cap: FAIL: $ev evictions, want ids - rows = $((IDS - rows))" >&2; fail=1
fi
exit $fail
