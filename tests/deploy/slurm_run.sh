#!/usr/bin/env bash
# deploy/slurm on a real one-node Slurm cluster: a munged with a fresh key
# and its own socket, slurmctld and slurmd from a generated slurm.conf (state
# in WORK_DIR, ports that are free, no cgroups, no accounting), then
# `sbatch deploy/slurm/ps-train.sbatch` with 5 tasks: a scheduler, 2
# servers and 2 workers, all on CURVE keys, the node at its name
# (NodeAddr=localhost). The job must end COMPLETED with exit 0, every task
# must have written status 0 under its role, the servers must have
# advertised the node's name, and both workers must report STEPS steps and
# a test accuracy above 0.70. Then a step of too few tasks must be refused,
# and, with the node's NodeAddr set to 127.0.0.1, a short step straight
# from srun (1 server, 2 workers) must bind that address and end well.
#   tests/deploy/slurm_run.sh SOURCE_DIR BIN_DIR WORK_DIR
# Exits 77 (skipped), saying why, where Slurm cannot run: not root, Debian's
# slurm-wlm or munge missing, or a daemon that does not come up.
set -euo pipefail
SRC=${1:?usage: slurm_run.sh SOURCE_DIR BIN_DIR WORK_DIR}
BIN=${2:?usage: slurm_run.sh SOURCE_DIR BIN_DIR WORK_DIR}
WORK=${3:?usage: slurm_run.sh SOURCE_DIR BIN_DIR WORK_DIR}
SRC=$(cd "$SRC" && pwd)
BIN=$(cd "$BIN" && pwd)
STEPS=${PS_SLURM_TEST_STEPS:-800}
SERVERS=2
WORKERS=2
START_DEADLINE_S=30
JOB_DEADLINE_S=${PS_SLURM_JOB_DEADLINE_S:-240}
T0=$SECONDS

skip() {
  echo "SKIPPED: $*"
  exit 77
}
say() { echo "slurm_run: $*"; }

[ "$(id -u)" -eq 0 ] ||
  skip "slurmd must run as root to start job steps (SlurmdUser=root)"
for c in munged munge slurmctld slurmd sbatch srun scontrol sinfo squeue scancel; do
  command -v "$c" >/dev/null ||
    skip "$c not found: install slurm-wlm and munge (deploy/install-deps.sh --tests)"
done
for p in ps-scheduler ps-server ps-worker psctl; do
  [ -x "$BIN/$p" ] || { echo "FAIL: $BIN/$p not built" >&2; exit 1; }
done

rm -rf "$WORK"
mkdir -p "$WORK"/{state,spool,job}
WORK=$(cd "$WORK" && pwd)
# munged's socket path must fit a sockaddr_un (108 bytes), which a build
# tree's path may not: its own folder in /tmp.
MUNGE=$(mktemp -d /tmp/ps-munge.XXXXXX)
JOBID=
munged_pid='' ctld_pid='' slurmd_pid=''

# Waits up to $2 s for process $1 to end, then SIGKILLs it.
stop_pid() {
  local pid=$1 end=$((SECONDS + $2))
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do
    # A child that has exited stays visible to kill -0 until reaped.
    if ! ps -o stat= -p "$pid" | grep -qv Z; then break; fi
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
job_state() {
  scontrol show job -o "$JOBID" 2>/dev/null |
    sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
    # Jobs still there (the batch job, a step started straight from srun)
    # are cancelled and waited for, so nothing of them outlives the test
    # (slurmd kills their processes: proctrack/linuxproc). The cluster is
    # this test's own: every job in it is ours.
    local jobs end=$((SECONDS + 30))
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086 # one id per word
      scancel $jobs 2>/dev/null || true
      while [ -n "$(squeue -h -o %i 2>/dev/null || true)" ] && [ $SECONDS -lt $end ]; do
        sleep 0.5
      done
    fi
  fi
  stop_pid "$slurmd_pid" 10
  stop_pid "$ctld_pid" 10
  stop_pid "$munged_pid" 5
  rm -rf "$MUNGE"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  local f
  for f in "$WORK"/job.out "$WORK"/job/logs/*.log "$WORK"/failjob.out "$WORK"/ipjob.out \
    "$WORK"/ipjob/logs/*.log "$WORK"/slurmctld.log "$WORK"/slurmd.log; do
    [ -e "$f" ] || continue
    echo "--- $f (last 20 lines)" >&2
    tail -n 20 "$f" >&2
  done
}
fail() {
  echo "FAIL: $*" >&2
  show_logs
  exit 1
}

# free_port FROM [WIDTH]: the first P >= FROM with P .. P+WIDTH-1 free
# (nobody listens, not handed out before).
taken=" "
free_port() {
  local p=$1 width=${2:-1} i ok
  while :; do
    [ "$p" -lt 65000 ] || fail "no free TCP port found from $1"
    ok=1
    for ((i = p; i < p + width; i++)); do
      if ss -Htln "sport = :$i" | grep -q . || [[ $taken == *" $i "* ]]; then
        ok=0
        break
      fi
    done
    [ $ok -eq 0 ] || break
    p=$((p + 1))
  done
  for ((i = p; i < p + width; i++)); do taken+="$i "; done
  echo "$p"
}

# --- munge: a key of its own, its own socket.
dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
chmod 0600 "$MUNGE/munge.key"
# Clients need to reach the socket through the folder.
chmod 0755 "$MUNGE"
munged --foreground --socket="$MUNGE/munge.sock" --key-file="$MUNGE/munge.key" \
  --pid-file="$MUNGE/munged.pid" --seed-file="$MUNGE/munged.seed" \
  --log-file="$WORK/munged.log" >"$WORK/munged.out" 2>&1 &
munged_pid=$!
end=$((SECONDS + START_DEADLINE_S))
until munge -S "$MUNGE/munge.sock" -n 2>/dev/null | unmunge -S "$MUNGE/munge.sock" >/dev/null 2>&1; do
  if ! kill -0 "$munged_pid" 2>/dev/null; then
    skip "munged did not start: $(tail -n 1 "$WORK/munged.out")"
  fi
  [ $SECONDS -lt $end ] || skip "munged did not answer within ${START_DEADLINE_S} s"
  sleep 0.2
done

# --- slurm.conf: one node, this machine, at the name localhost (NodeAddr
# is the node's name unless set, so most clusters' nodes are reached by
# name); the last step below moves it to 127.0.0.1.
CTLD_PORT=$(free_port 16817)
SLURMD_PORT=$(free_port $((CTLD_PORT + 1)))
# The scheduler's port and, for servers at a named node, the next ones
# (1 + SLURM_LOCALID).
PS_PORT=$(free_port 17000 $((2 + SERVERS)))
PS_PORT2=$(free_port $((PS_PORT + 2 + SERVERS)))
CPUS=$(nproc)
export SLURM_CONF=$WORK/slurm.conf
cat >"$SLURM_CONF" <<EOF
# Generated by tests/deploy/slurm_run.sh
ClusterName=pstest
# slurmctld runs only where its host's short name is SlurmctldHost.
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
MailProg=/bin/true
# No cgroups: this may run in a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Keep finished jobs' records for the checks below.
MinJobAge=600
NodeName=localhost NodeAddr=localhost CPUs=$CPUS State=UNKNOWN
PartitionName=ps Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -c >"$WORK/slurmctld.out" 2>&1 &
ctld_pid=$!
slurmd -D -N localhost >"$WORK/slurmd.out" 2>&1 &
slurmd_pid=$!
end=$((SECONDS + START_DEADLINE_S))
node_state=
while :; do
  for d in slurmctld slurmd; do
    pid_var=${d/slurmctld/ctld}_pid
    if ! kill -0 "${!pid_var}" 2>/dev/null; then
      echo "--- $WORK/$d.out" && tail -n 10 "$WORK/$d.out"
      skip "$d exited at start ($(grep -m1 -i 'fatal\|error' "$WORK/$d.out" || echo 'no error line'))"
    fi
  done
  node_state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  [ "$node_state" = idle ] && break
  if [ $SECONDS -ge $end ]; then
    tail -n 10 "$WORK/slurmctld.out" "$WORK/slurmd.out"
    skip "the node was not idle within ${START_DEADLINE_S} s (sinfo: '${node_state:-no answer}')"
  fi
  sleep 0.5
done
say "slurmctld :$CTLD_PORT and slurmd :$SLURMD_PORT up, node idle after $((SECONDS - T0)) s"

# --- the job: CURVE keys in a folder every task sees.
for role in scheduler server worker admin; do
  "$BIN/psctl" keygen --role "$role" --out "$WORK/keys" >/dev/null
done
# 1+S+W tasks on this machine's few CPUs: --overcommit lets them share.
# Not sbatch --wait: it polls with a back-off that grows to 32 s, so it
# may return half a minute after the job. The job's state is polled here.
t_job=$SECONDS
JOBID=$(cd "$WORK" && env PS_KEYS_DIR="$WORK/keys" PS_SLURM_BIN_DIR="$BIN" \
  PS_SLURM_SERVERS=$SERVERS PS_SLURM_LAUNCH="$SRC/deploy/slurm/ps-slurm-launch" \
  PS_SLURM_SCHEDULER_PORT="$PS_PORT" PS_SLURM_OUT_DIR="$WORK/job" \
  PS_EPOCHS=1 PS_MAX_STEPS="$STEPS" \
  sbatch --parsable --overcommit --ntasks=$((1 + SERVERS + WORKERS)) \
  --output="$WORK/job.out" "$SRC/deploy/slurm/ps-train.sbatch" 2>"$WORK/sbatch.err") ||
  fail "sbatch failed: $(cat "$WORK/sbatch.err")"
JOBID=${JOBID%%;*}
[ -n "$JOBID" ] || fail "sbatch gave no job id: $(cat "$WORK/sbatch.err")"
say "submitted job $JOBID"
end=$((SECONDS + JOB_DEADLINE_S))
while :; do
  state=$(job_state)
  case "$state" in
    PENDING | CONFIGURING | RUNNING | COMPLETING | '') ;;
    *) break ;;
  esac
  [ $SECONDS -lt $end ] ||
    fail "job $JOBID not done within ${JOB_DEADLINE_S} s (state ${state:-unknown to scontrol})"
  sleep 0.5
done
job_s=$((SECONDS - t_job))
say "job $JOBID ended after $job_s s: $state"
cat "$WORK/job.out"

# --- the checks.
line=$(scontrol show job -o "$JOBID")
state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$line")
exitcode=$(sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p' <<<"$line")
if [ "$state" != COMPLETED ] || [ "$exitcode" != 0:0 ]; then
  fail "job $JOBID: JobState=$state ExitCode=$exitcode"
fi
grep -q '^ps-train: srun exited 0$' "$WORK/job.out" ||
  fail "the batch script did not see srun exit 0"

# check_exits DIR S W: task 0 the scheduler, 1..S servers, the rest
# workers, each with status 0.
check_exits() {
  local dir=$1 s=$2 w=$3 t f want
  for ((t = 0; t < 1 + s + w; t++)); do
    f=$dir/exit/task-$t
    [ -s "$f" ] || fail "task $t wrote no exit file ($f)"
    if [ "$t" -eq 0 ]; then
      want="role=scheduler rank=- node=localhost status=0"
    elif [ "$t" -le "$s" ]; then
      want="role=server rank=$((t - 1)) node=localhost status=0"
    else
      want="role=worker rank=$((t - 1 - s)) node=localhost status=0"
    fi
    [ "$(cat "$f")" = "$want" ] || fail "task $t: '$(cat "$f")', expected '$want'"
  done
  [ ! -e "$dir/exit/task-$((1 + s + w))" ] || fail "more tasks than 1+$s+$w wrote exit files in $dir"
}
# check_steps DIR W STEPS: every worker's report has STEPS steps.
check_steps() {
  local dir=$1 w=$2 want=$3 rank r steps
  for ((rank = 0; rank < w; rank++)); do
    r=$dir/report-$rank.json
    [ -s "$r" ] || fail "worker $rank wrote no report ($r)"
    steps=$(sed -n 's/.*"steps": *\([0-9]*\).*/\1/p' "$r" | head -n 1)
    [ "$steps" = "$want" ] || fail "worker $rank did ${steps:-no} steps, not $want ($r)"
  done
}

check_exits "$WORK/job" $SERVERS $WORKERS
check_steps "$WORK/job" $WORKERS "$STEPS"
# The node is a name: the scheduler bound every interface, each server
# advertised the name and the port of its task's index on the node.
sched_log=$WORK/job/logs/scheduler.log
grep -q "event=listening endpoint=tcp://0.0.0.0:$PS_PORT " "$sched_log" ||
  fail "the scheduler did not listen on tcp://0.0.0.0:$PS_PORT"
for ((i = 1; i <= SERVERS; i++)); do
  grep -q "role=server address=tcp://localhost:$((PS_PORT + 1 + i)) " "$sched_log" ||
    fail "server $((i - 1)) did not register as tcp://localhost:$((PS_PORT + 1 + i))"
done
grep -q 'curve_on' "$sched_log" || fail "the scheduler did not run with CURVE keys"
for ((rank = 0; rank < WORKERS; rank++)); do
  acc=$(sed -n 's/.*"test_accuracy": *\([0-9.]*\).*/\1/p' "$WORK/job/report-$rank.json" | head -n 1)
  awk -v a="${acc:-0}" 'BEGIN { exit !(a > 0.70) }' ||
    fail "worker $rank test accuracy ${acc:-none} is not above 0.70"
  say "worker $rank: $STEPS steps, test accuracy $acc"
done

# A step too small for its roles is refused by every task, naming why.
# (Each step straight from srun runs in the background and is waited
# for, so that a signal to this script is handled at once, not after it.)
bad_rc=0
env PS_SLURM_BIN_DIR="$BIN" PS_SLURM_SERVERS=2 PS_SLURM_OUT_DIR="$WORK/bad" \
  timeout 60 srun --overcommit --ntasks=3 --kill-on-bad-exit=1 \
  "$SRC/deploy/slurm/ps-slurm-launch" >"$WORK/bad.out" 2>&1 &
wait $! || bad_rc=$?
[ $bad_rc -eq 2 ] || fail "a 3-task step with 2 servers: srun exited $bad_rc, not 2 ($(tail -n 3 "$WORK/bad.out"))"
grep -q '3 tasks leave no worker' "$WORK/bad.out" ||
  fail "a 3-task step with 2 servers was not refused by name: $(tail -n 3 "$WORK/bad.out")"
[ ! -e "$WORK/bad" ] || fail "a refused step still made $WORK/bad"
say "a 3-task step with 2 servers is refused: $(grep -m1 'leave no worker' "$WORK/bad.out")"
# A task that fails ends the step: worker 0 exits 3 once the other tasks'
# programs have started (their logs exist), the others (stand-ins that wait
# for SIGTERM) are stopped by srun --kill-on-bad-exit, and every task's
# status is written down.
mkdir -p "$WORK/failbin"
cat >"$WORK/failbin/ps-scheduler" <<'END'
#!/bin/sh
trap "exit 0" TERM
sleep 120 &
wait
END
cp "$WORK/failbin/ps-scheduler" "$WORK/failbin/ps-server"
cat >"$WORK/failbin/ps-worker" <<'END'
#!/bin/sh
case " $* " in
  *" --rank 0 "*)
    logs=$PS_SLURM_OUT_DIR/logs i=0
    while [ $i -lt 300 ] && ! { [ -e "$logs/scheduler.log" ] &&
      [ -e "$logs/server-0.log" ] && [ -e "$logs/worker-1.log" ]; }; do
      sleep 0.1
      i=$((i + 1))
    done
    exit 3
    ;;
esac
trap "exit 0" TERM
sleep 120 &
wait
END
chmod +x "$WORK/failbin"/*
t_fail=$SECONDS
fail_rc=0
env PS_SLURM_BIN_DIR="$WORK/failbin" PS_SLURM_SERVERS=1 PS_SLURM_OUT_DIR="$WORK/failjob" \
  timeout 60 srun --overcommit --ntasks=4 --kill-on-bad-exit=1 \
  "$SRC/deploy/slurm/ps-slurm-launch" >"$WORK/failjob.out" 2>&1 &
wait $! || fail_rc=$?
fail_s=$((SECONDS - t_fail))
if [ $fail_rc -eq 0 ] || [ $fail_rc -eq 124 ]; then
  fail "a step whose worker exits 3: srun exited $fail_rc ($(tail -n 3 "$WORK/failjob.out"))"
fi
[ $fail_s -lt 60 ] || fail "a step whose worker exits 3 took $fail_s s to end"
[ "$(cat "$WORK/failjob/exit/task-2" 2>/dev/null)" = "role=worker rank=0 node=localhost status=3" ] ||
  fail "worker 0's exit file: '$(cat "$WORK/failjob/exit/task-2" 2>/dev/null)', expected its status 3"
for t in 0 1 3; do
  # Ended by the step's SIGTERM: the stand-in's own exit 0, or 143 where
  # the signal came before its trap was set.
  grep -Eq ' status=(0|143)$' "$WORK/failjob/exit/task-$t" 2>/dev/null ||
    fail "task $t of the failed step: '$(cat "$WORK/failjob/exit/task-$t" 2>/dev/null)', expected status 0 or 143"
done
say "a step whose worker exits 3 ends in $fail_s s (srun exit $fail_rc), every task's status written"

# The node at an IP: the launcher binds it, servers on ports ZeroMQ
# picks. A short job of 1 server and 2 workers straight from srun.
scontrol update NodeName=localhost NodeAddr=127.0.0.1 ||
  fail "scontrol could not set the node's NodeAddr to 127.0.0.1"
t_ip=$SECONDS
ip_rc=0
env PS_KEYS_DIR="$WORK/keys" PS_SLURM_BIN_DIR="$BIN" PS_SLURM_SERVERS=1 \
  PS_SLURM_SCHEDULER_PORT="$PS_PORT2" PS_SLURM_OUT_DIR="$WORK/ipjob" \
  PS_HEARTBEAT_MS=200 PS_HEARTBEAT_TIMEOUT_MS=2000 PS_EPOCHS=1 PS_MAX_STEPS=100 \
  timeout 120 srun --overcommit --ntasks=4 --kill-on-bad-exit=1 \
  "$SRC/deploy/slurm/ps-slurm-launch" >"$WORK/ipjob.out" 2>&1 &
wait $! || ip_rc=$?
[ $ip_rc -eq 0 ] || fail "the step at 127.0.0.1: srun exited $ip_rc ($(tail -n 5 "$WORK/ipjob.out"))"
check_exits "$WORK/ipjob" 1 2
check_steps "$WORK/ipjob" 2 100
grep -q "event=listening endpoint=tcp://127.0.0.1:$PS_PORT2 " "$WORK/ipjob/logs/scheduler.log" ||
  fail "the scheduler did not listen on tcp://127.0.0.1:$PS_PORT2"
grep -q "role=server address=tcp://127.0.0.1:[0-9]" "$WORK/ipjob/logs/scheduler.log" ||
  fail "the server did not register at tcp://127.0.0.1"
say "at NodeAddr 127.0.0.1: 1 server and 2 workers, 100 steps, every task exited 0 ($((SECONDS - t_ip)) s)"
say "PASS: job $JOBID ($((1 + SERVERS + WORKERS)) tasks) COMPLETED 0:0 in $job_s s, $((SECONDS - T0)) s in all"
