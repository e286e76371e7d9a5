#!/usr/bin/env bash
# Runs libFuzzer harnesses for a bounded time each, on a copy of their seed
# corpus (tests/fuzz/corpus/<harness>/), one after another:
#   tests/fuzz/run.sh SECONDS [HARNESS...]    (default: all six)
# Fails when a harness finds a crash, a leak, a timeout (an input slower
# than FUZZ_TIMEOUT_S, default 20 s) or an input that needs more than
# FUZZ_RSS_MB (default 2048) of memory; the input that did it is kept under
# $FUZZ_ARTIFACTS/<harness>/ (default ./fuzz-artifacts) with the log, to be
# reproduced with `build-fuzz/tests/fuzz_<harness> FILE`.
# For each harness prints one line from libFuzzer's final statistics:
# executions, executions per second, coverage (cov: edges, ft: features)
# and the corpus it ended with.
# Environment: FUZZ_BIN_DIR (default build-fuzz/tests), FUZZ_KEEP_CORPUS
# (a folder: the grown corpora are copied there, <harness>/ each).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
all=(frame server scheduler checkpoint state config)

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS [${all[*]}]" >&2
  exit 2
fi
seconds=$1
shift
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=("${all[@]}")
bin_dir=${FUZZ_BIN_DIR:-$root/build-fuzz/tests}
artifacts=${FUZZ_ARTIFACTS:-$PWD/fuzz-artifacts}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for h in "${harnesses[@]}"; do
  bin=$bin_dir/fuzz_$h
  if [ ! -x "$bin" ]; then
    echo "run.sh: no $bin (build with -DPS_FUZZ=ON, target ps-fuzz)" >&2
    status=1
    continue
  fi
  corpus=$work/$h
  mkdir -p "$corpus" "$artifacts/$h"
  cp "$here/corpus/$h"/* "$corpus/"
  log=$artifacts/$h/fuzz.log
  rc=0
  # The scratch files of the harnesses (checkpoints, state files) go to a
  # RAM-backed folder: fsync there costs nothing.
  "$bin" -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT_S:-20}" \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 \
    -artifact_prefix="$artifacts/$h/" "$corpus" >"$log" 2>&1 || rc=$?
  found=$(find "$artifacts/$h" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' -o -name 'slow-unit-*' \) | wc -l)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  echo "fuzz_$h: ${seconds}s execs=${execs:-?} exec/s=${rate:-?}" \
    "cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} crashes=$found rc=$rc"
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    echo "run.sh: fuzz_$h failed; log and inputs in $artifacts/$h:" >&2
    grep -E 'ERROR|SUMMARY|runtime error|fuzz_[a-z]+:|Test unit written' \
      "$log" | head -n 20 >&2 || tail -n 30 "$log" >&2
    status=1
  else
    rm -f "$log"
    rmdir "$artifacts/$h" 2>/dev/null || true
  fi
  if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
    mkdir -p "$FUZZ_KEEP_CORPUS/$h"
    cp "$corpus"/* "$FUZZ_KEEP_CORPUS/$h/"
  fi
done
rmdir "$artifacts" 2>/dev/null || true
exit $status
