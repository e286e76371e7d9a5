#!/usr/bin/env bash
# bundle.container: builds the GPU bundle from this build and runs its CPU
# path (run.sh --cpu-only --quick) in a clean Debian 12 container, the
# minbase image with nothing installed, without a network: the bundle must
# start and train with nothing but itself. Then checks the result file:
# every step passed, the MLP trained (accuracy well above chance) alone and
# as 2 workers of a cluster, and test_cuda, with no GPU in the container,
# says skipped (77) with the runtime's reason, rather than failing.
#   container_test.sh SOURCE_DIR BUILD_DIR
# Exits 77 (skipped) only when podman cannot run a container here.
set -euo pipefail
src=${1:?usage: container_test.sh SOURCE_DIR BUILD_DIR}
build=${2:?usage: container_test.sh SOURCE_DIR BUILD_DIR}
export CONTAINERS_CONF=$src/tests/deploy/containers.conf
if ! command -v podman >/dev/null 2>&1; then
  echo "SKIPPED: podman is not installed"
  exit 77
fi
if ! image=$("$src/tests/deploy/base-image.sh" "$build/deploy-cache" 2>"$build/bundle-base-image.log"); then
  echo "SKIPPED: no Debian 12 base image for podman:"
  tail -5 "$build/bundle-base-image.log"
  exit 77
fi
if ! podman run --rm --network=none "$image" true 2>"$build/bundle-podman.log"; then
  echo "SKIPPED: podman cannot run a container here:"
  tail -5 "$build/bundle-podman.log"
  exit 77
fi

bundle=$build/gpu-bundle
"$src/tests/gpu/bundle.sh" "$build" "$bundle"
du -sh "$bundle"
res=$build/bundle-container-results
rm -rf "$res"
mkdir -p "$res"
# The bundle read-only, as it would be on a machine we do not control; the
# launcher unpacks OpenBLAS under TMPDIR then.
set +e
podman run --rm --network=none -v "$bundle:/bundle:ro" -v "$res:/results" \
  -e PS_BENCH_THREADS=1 "$image" \
  sh -c '/bundle/run.sh --cpu-only --quick /results/results.txt; \
         /bundle/launch test_cuda > /results/test_cuda.out 2>&1; \
         echo "test_cuda_exit=$?" >> /results/test_cuda.out'
rc=$?
set -e
cat "$res/results.txt" || true
cat "$res/test_cuda.out" || true
fail() { echo "bundle.container: $*" >&2; exit 1; }
[ "$rc" = 0 ] || fail "run.sh --cpu-only in the container exited $rc"
grep -q '^status=ok' "$res/results.txt" || fail "a step of run.sh failed"
for mode in standalone cluster; do
  line=$(grep "^RESULT model=mlp mode=$mode device=cpu backend=cpu" "$res/results.txt") \
    || fail "no MLP $mode result"
  acc=$(echo "$line" | sed -n 's/.*test_accuracy=\([0-9.]*\).*/\1/p')
  awk -v a="$acc" 'BEGIN { exit !(a > 0.6) }' \
    || fail "MLP $mode test accuracy $acc after 300 steps, not above 0.6"
  echo "MLP $mode in the container: test accuracy $acc"
done
grep -q '^RESULT model=cnn mode=cluster device=cpu backend=cpu' "$res/results.txt" \
  || fail "no CNN cluster result"
# No GPU in the container: skipped (77) with the reason, not failed.
grep -q '^test_cuda_exit=77' "$res/test_cuda.out" || fail "test_cuda did not skip"
grep -q 'SKIPPED: no GPU on this machine' "$res/test_cuda.out" \
  || fail "test_cuda did not say why it skipped"
echo "bundle.container: passed"
