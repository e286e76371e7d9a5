#!/usr/bin/env bash
# Resident memory per sparse row (issue #14): one ps-server, one ps-bench
# client pushing N fresh ids of dim D to it, with the table's optimizer
# (SGD keeps no state per row, Adagrad one float per weight). Reads the
# server's VmRSS before the job and after the fill (rows still held), and
# compares the growth per row with the row's own bytes (weights and
# optimizer state). Prints one line per (optimizer, N).
#
#   tests/bench/sparse_rss.sh [--build DIR] [--rows 1000000,4000000]
#                             [--dim 16] [--optimizers sgd,adagrad]
#                             [--max-ratio R]  (exit 1 when a ratio is above R)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=$PWD/build ROWS=1000000,4000000 DIM=16 OPTS=sgd,adagrad MAX_RATIO=
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --dim) DIM=$2; shift 2 ;;
    --optimizers) OPTS=$2; shift 2 ;;
    --max-ratio) MAX_RATIO=$2; shift 2 ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
B=$BUILD/bin
# shellcheck source=tests/bench/sparse_lib.sh
. "$(dirname "$0")/sparse_lib.sh"
bench_scratch sparse_rss

# Floats per row: the weights, and the optimizer's state slots of dim each.
row_floats() {
  case "$1" in
    sgd) echo "$DIM" ;;
    adagrad) echo $((2 * DIM)) ;;
    adam) echo $((3 * DIM + 2)) ;;
    ftrl) echo $((3 * DIM)) ;;
    *) echo "sparse_rss: unknown optimizer $1" >&2; return 2 ;;
  esac
}

for opt in ${OPTS//,/ }; do
  for n in ${ROWS//,/ }; do
    rf=$(row_floats "$opt")
    start_cluster
    before=$(server_rss)
    start_fill "$n" --sparse-dim "$DIM" --sparse-optimizer "$opt" --sparse-keys 16384
    wait_held 1800
    after=$(server_rss)
    rows=$(server_metric ps_server_sparse_rows)
    fill=$(grep '^fill' "$TMP/bench.out" | sed 's/.*| *//')
    release_fill
    [ "$rows" = "$n" ] || { echo "sparse_rss: the server holds $rows rows, not $n" >&2; exit 1; }
    python3 - "$opt" "$n" "$DIM" "$rf" "$before" "$after" "$fill" <<'PY' | tee -a "$TMP/lines"
import sys
opt, n, dim, rf, before, after, fill = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
row = 4 * rf
per = (after - before) / n
print("sparse_rss optimizer=%s rows=%d dim=%d row_bytes=%d rss_before=%d "
      "rss_after=%d bytes_per_row=%.1f mib_per_million_rows=%.1f ratio=%.3f "
      "fill: %s" % (opt, n, dim, row, before, after, per, per * 1e6 / 2**20,
                    per / row, fill))
PY
  done
done
if [ -n "$MAX_RATIO" ]; then
  python3 - "$MAX_RATIO" "$TMP/lines" <<'PY'
import re, sys
limit = float(sys.argv[1])
bad = [l for l in open(sys.argv[2]) if float(re.search(r"ratio=([0-9.]+)", l).group(1)) > limit]
for l in bad: print("sparse_rss: above %.2fx: %s" % (limit, l.strip()), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
fi
