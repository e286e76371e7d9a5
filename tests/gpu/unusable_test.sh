#!/bin/sh
# gpu.unusable (issue 18, item 2), end to end: on a machine where a GPU
# seems present (a fake nvidia-smi that lists one) but CUDA cannot use it
# (no driver here), ps-worker --device auto trains on the CPU and logs
# lvl=error event=gpu_unusable with the runtime's reason and the driver's
# and runtime's versions, and test_cuda fails instead of skipping.
#   unusable_test.sh BUILD_DIR
# Skipped (77) where a real GPU's device node is present: the fake is then
# beside the point.
set -u
build=${1:?usage: unusable_test.sh BUILD_DIR}
if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
  echo "SKIPPED: this machine has a GPU device node; the test fakes one"
  exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ps-gpu-unusable.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-fake)"\n' \
  > "$tmp/nvidia-smi"
chmod +x "$tmp/nvidia-smi"
fail() { echo "gpu.unusable: $*" >&2; exit 1; }

PATH=$tmp:$PATH "$build/bin/ps-worker" --standalone --device auto \
  --max-steps 2 --eval-every-epoch=false > "$tmp/worker.out" 2>&1
rc=$?
cat "$tmp/worker.out"
[ "$rc" = 0 ] || fail "ps-worker exited $rc"
line=$(grep 'lvl=error .*event=gpu_unusable' "$tmp/worker.out") \
  || fail "no lvl=error event=gpu_unusable line"
for w in "a GPU is present" "nvidia-smi: GPU 0" "driver " "runtime "; do
  case "$line" in *"$w"*) ;; *) fail "the error line does not say \"$w\"" ;; esac
done
grep -q 'event=device requested=auto backend=cpu' "$tmp/worker.out" \
  || fail "ps-worker did not fall back to the CPU"

PATH=$tmp:$PATH "$build/tests/test_cuda" > "$tmp/cuda.out" 2>&1
rc=$?
cat "$tmp/cuda.out"
[ "$rc" = 1 ] || fail "test_cuda exited $rc, not 1 (77 would be a skip)"
grep -q 'FAILED: a GPU is present' "$tmp/cuda.out" || fail "test_cuda did not say why"
echo "gpu.unusable: passed"
