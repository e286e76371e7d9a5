#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite:
#   1. RelWithDebInfo with gcc: unit, integration, chaos and deploy suites
#      (deploy: the systemd units, the .deb, and real runs of the package
#      under systemd and of the Compose cluster in podman containers; those
#      report themselves skipped where podman cannot run containers);
#   2. Release with gcc and Debug with clang: built, warning-free;
#   3. RelWithDebInfo (-O2: a sanitizer run of the daemons at -O0 would be
#      several times slower) with AddressSanitizer + UBSan: the unit and
#      integration suites again.
# Every build is made with -DPS_WERROR=ON: the project's own CI refuses
# warnings, a user's build (PS_WERROR off by default) never breaks on a
# newer compiler's new warning.
#   ./tests/run.sh            everything but the soak (ctest -L soak, 10
#                             minutes, runs only when asked)
#   ./tests/run.sh -L unit    only suites with this ctest label (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc)

./deploy/install-deps.sh --tests

build() { # build DIR [cmake args...]
  local dir=$1
  shift
  echo "== build $(basename "$dir"): $* =="
  cmake -S "$ROOT" -B "$dir" -DPS_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS"
}

build "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
build "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release
CC=clang build "$ROOT/build-clang" -DCMAKE_BUILD_TYPE=Debug
build "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPS_SANITIZE=ON

echo "== tests =="
status=0
labels=(-LE soak)
[ $# -gt 0 ] && labels=("$@")
(cd "$ROOT/build" && ctest --output-on-failure "${labels[@]}") || status=1
echo "== unit and integration tests under ASan + UBSan =="
asan_labels=(-L 'unit|integration')
[ $# -gt 0 ] && asan_labels=("$@")
(cd "$ROOT/build-asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure "${asan_labels[@]}") || status=1
exit $status
