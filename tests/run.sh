#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite:
#   1. RelWithDebInfo with gcc: unit, integration, chaos and deploy suites
#      (deploy: the systemd units, the .deb, and real runs of the package
#      under systemd and of the Compose cluster in podman containers, and
#      of deploy/slurm on a one-node Slurm cluster; those report themselves
#      skipped where podman cannot run containers or Slurm cannot start);
#   2. Release with gcc and Debug with clang: built, warning-free;
#   3. RelWithDebInfo (-O2: a sanitizer run of the daemons at -O0 would be
#      several times slower) with AddressSanitizer + UBSan: the unit and
#      integration suites again;
#   4. the libFuzzer harnesses (clang, -DPS_FUZZ=ON, target ps-fuzz): each
#      runs 30 s on its seed corpus (ctest -L fuzz, tests/fuzz/run.sh).
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

build() { # build DIR [cmake args...] [--target TARGET]
  local dir=$1 args=() target=()
  shift
  while [ $# -gt 0 ]; do
    if [ "$1" = --target ]; then
      target=(--target "$2")
      shift 2
    else
      args+=("$1")
      shift
    fi
  done
  echo "== build $(basename "$dir"): ${args[*]} ${target[*]} =="
  cmake -S "$ROOT" -B "$dir" -DPS_WERROR=ON "${args[@]}" >/dev/null
  cmake --build "$dir" -j"$JOBS" "${target[@]}"
}

build "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
build "$ROOT/build-release" -DCMAKE_BUILD_TYPE=Release
CC=clang build "$ROOT/build-clang" -DCMAKE_BUILD_TYPE=Debug
build "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPS_SANITIZE=ON
# Only the harnesses and what they link: the rest of the tree is built and
# tested by the builds above.
CC=clang build "$ROOT/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPS_FUZZ=ON --target ps-fuzz

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
# The fuzzing build registers every suite but builds only the harnesses: it
# runs the fuzz label, or what the arguments ask for when they name fuzz.
if [ $# -eq 0 ] || [[ "$*" == *fuzz* ]]; then
  echo "== fuzzing: each harness 30 s on its corpus =="
  fuzz_labels=(-L fuzz)
  [ $# -gt 0 ] && fuzz_labels=("$@")
  (cd "$ROOT/build-fuzz" && ctest --output-on-failure -j2 \
    "${fuzz_labels[@]}") || status=1
fi
exit $status
