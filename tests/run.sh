#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: unit,
# integration and chaos suites on the normal build, then the unit suites
# again under AddressSanitizer + UndefinedBehaviorSanitizer.
#   ./tests/run.sh            everything
#   ./tests/run.sh -L unit    only suites with this ctest label (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc)

./deploy/install-deps.sh

echo "== build (RelWithDebInfo) =="
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$JOBS"

echo "== build (ASan + UBSan) =="
cmake -S "$ROOT" -B "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DPS_SANITIZE=ON >/dev/null
cmake --build "$ROOT/build-asan" -j"$JOBS"

echo "== tests =="
status=0
(cd "$ROOT/build" && ctest --output-on-failure "$@") || status=1
echo "== unit tests under ASan + UBSan =="
(cd "$ROOT/build-asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -L unit) || status=1
exit $status
