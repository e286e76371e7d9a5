#!/bin/sh
# The GPU machine's one script (issue 18): what this machine is, unit.cuda
# (the CUDA backend against the CPU's, and a training run of each), the
# per-layer push end to end on the GPU (2 workers, BSP, equal to
# standalone), and a benchmark: MLP and CNN, standalone and 1 server + 2
# workers on loopback, the CPU backend and the GPU's in the same run. All
# of it goes to one result file, whose name it prints at the end.
#
#   ./run.sh [--cpu-only] [--quick] [RESULT_FILE]
#
# --cpu-only: no GPU step (the container test of the bundle runs this);
# --quick: fewer steps. Each step has a deadline, and a failed step is
# written down and the next one runs: the file is what to bring back.
# PS_BENCH_THREADS (default 4) is the CPU backend's BLAS threads.
export PS_INSECURE=true # loopback only
set -u
b=$(cd "$(dirname "$0")" && pwd)
cpu_only=0
quick=0
out=
for a in "$@"; do
  case "$a" in
    --cpu-only) cpu_only=1 ;;
    --quick) quick=1 ;;
    -*) echo "run.sh: unknown option $a" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
[ -n "$out" ] || out=$PWD/ps-gpu-results-$(hostname 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%SZ).txt
work=$(mktemp -d "${TMPDIR:-/tmp}/ps-gpu-run.XXXXXX")
threads=${PS_BENCH_THREADS:-4}
L="$b/launch"
failed=0

log() { echo "$*" | tee -a "$out"; }
# Runs a step with a deadline; its output goes to the result file, indented.
step() {
  name=$1 limit=$2
  shift 2
  log ""
  log "== $name (deadline ${limit}s): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$work/$name.out" 2>&1
  rc=$?
  t1=$(date +%s)
  tail -n 60 "$work/$name.out" | sed 's/^/  | /' >> "$out"
  case $rc in
    0) verdict=passed ;;
    77) verdict=skipped ;;
    124|137) verdict="timed out"; failed=1 ;;
    *) verdict="failed (exit $rc)"; failed=1 ;;
  esac
  log "== $name: $verdict in $((t1 - t0)) s"
  return $rc
}

: > "$out"
log "# ps GPU bundle run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "host=$(hostname 2>/dev/null) kernel=$(uname -r) cpus=$(nproc 2>/dev/null)"
log "glibc=$(ldd --version 2>/dev/null | head -1 | awk '{print $NF}') $(grep glibc_needed "$b/MANIFEST")"
sed 's/^/manifest: /' "$b/MANIFEST" >> "$out"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1 | sed 's/^/nvidia-smi: /' | tee -a "$out"
else
  log "nvidia-smi: not found"
fi
log "cublas=$("$L" sh -c 'echo $PS_BUNDLE_CUBLAS')"
"$L" sh -c 'ldd "$PS_BIN_DIR/ps-worker"' 2>&1 | sed 's/^/ldd ps-worker: /' >> "$out"

export CK_DEFAULT_TIMEOUT=1200 PS_TEST_TMP="$work/test-tmp"
mkdir -p "$PS_TEST_TMP"

if [ "$cpu_only" = 0 ]; then
  step unit.cuda 1500 "$L" test_cuda
  step layered_push.cuda 600 env PS_TEST_DEVICE=cuda "$L" itest_layered_push
fi
step unit.compute 300 "$L" test_compute

# One JSON report field, as text.
field() { sed -n "s/^ *\"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1"; }

# bench MODEL MODE DEVICE STEPS
bench() {
  model=$1 mode=$2 dev=$3 steps=$4
  tag=bench.$model.$mode.$dev
  rep=$work/$tag.json
  rm -f "$rep"
  common="--model $model --device $dev --threads $threads --epochs 1 --max-steps $steps --eval-every-epoch=false --progress-ms 5000"
  if [ "$mode" = standalone ]; then
    step "$tag" 900 "$L" ps-worker --standalone $common --report "$rep"
  else
    port=$((20000 + ($$ + steps) % 20000))
    ep=tcp://127.0.0.1:$port
    # The daemons end with the job; a job that never started (a worker
    # refused at start) leaves them waiting, so they get 30 s, then TERM.
    # A benchmark is no test of failure detection: the scheduler waits 5 s
    # (not 0.4) before it declares a node dead, as a busy machine (workers
    # decompressing the data set) can starve a server's heartbeats.
    step "$tag" 900 "$L" sh -c "
      ps-scheduler --bind $ep --servers 1 --workers 2 --mode bsp --heartbeat-timeout-ms 5000 > $work/$tag.sched.log 2>&1 &
      s=\$!
      ps-server --scheduler $ep > $work/$tag.server.log 2>&1 &
      v=\$!
      ps-worker --scheduler $ep --rank 1 $common > $work/$tag.w1.log 2>&1 &
      w1=\$!
      ps-worker --scheduler $ep --rank 0 $common --report $rep; rc=\$?
      wait \$w1 || rc=1
      i=0
      while [ \$i -lt 30 ] && { kill -0 \$s || kill -0 \$v; } 2>/dev/null; do
        sleep 1; i=\$((i + 1))
      done
      kill \$s \$v 2>/dev/null
      wait
      for f in $work/$tag.sched.log $work/$tag.server.log $work/$tag.w1.log; do
        echo \"--- \$f\"; tail -n 5 \$f
      done
      exit \$rc"
  fi
  if [ -s "$rep" ]; then
    log "RESULT model=$model mode=$mode device=$dev backend=$(field "$rep" backend) workers=$(field "$rep" workers) steps=$(field "$rep" steps) global_batch=$(field "$rep" global_batch_size) samples_per_sec=$(field "$rep" samples_per_sec) wall_s=$(field "$rep" wall_seconds) test_accuracy=$(field "$rep" test_accuracy) train_loss=$(field "$rep" train_loss)"
  else
    log "RESULT model=$model mode=$mode device=$dev failed: no report"
  fi
}

if [ "$quick" = 1 ]; then mlp_steps=300 cnn_steps=20; else mlp_steps=1875 cnn_steps=600; fi
devices="cpu"
[ "$cpu_only" = 1 ] || devices="cpu cuda"
for model in mlp cnn; do
  if [ "$model" = mlp ]; then n=$mlp_steps; else n=$cnn_steps; fi
  for mode in standalone cluster; do
    for dev in $devices; do bench "$model" "$mode" "$dev" "$n"; done
  done
done

log ""
log "# summary"
grep '^RESULT' "$out" | sed 's/^RESULT /  /' | tee -a "$out.summary" >/dev/null
cat "$out.summary" >> "$out" && rm -f "$out.summary"
log "status=$([ $failed = 0 ] && echo ok || echo some-steps-failed)"
rm -rf "$work"
echo "results: $out"
exit $failed
