#!/usr/bin/env bash
# The package on a clean Debian 12 under a real systemd: a container made
# from the base image with systemd as PID 1, the .deb installed with
# apt-get (its dependencies from Debian's archive), then
#   systemctl start ps-scheduler ps-server@a ps-server@b ps-worker@0 ps-worker@1
# runs a short job; mid-run `systemctl kill -s KILL ps-server@a`, systemd
# restarts it (Restart=on-failure), and the job still finishes: both
# workers exit 0 with a report.
#   tests/deploy/systemd_run.sh SOURCE_DIR BUILD_DIR
# Exit 77 (skipped) with the reason where podman cannot run containers.
set -euo pipefail
src=$1 out=$2/deploy
export CONTAINERS_CONF=${CONTAINERS_CONF:-$src/tests/deploy/containers.conf}
MAX_STEPS=${PS_DEPLOY_MAX_STEPS:-800}

skip() { echo "systemd_run: SKIPPED: $*"; exit 77; }
command -v podman >/dev/null || skip "podman is not installed"
base=$("$src/tests/deploy/base-image.sh" "$out/cache") ||
  skip "no Debian 12 base image could be made (mmdebstrap, podman import)"
podman run --rm --pull=never "$base" true >/dev/null 2>&1 ||
  skip "podman cannot run a container here: $(podman run --rm --pull=never "$base" true 2>&1 | tail -1)"
deb=$(ls "$out"/ps_*_amd64.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "systemd_run: no package in $out (deploy.package makes it)"; exit 1; }

# The systemd image, cached in podman's storage under a tag that names its
# Containerfile's hash.
cf=$src/tests/deploy/systemd.Containerfile
image=localhost/ps-deploy-systemd:$(sha256sum "$cf" | cut -c1-12)
if ! podman image exists "$image"; then
  mkdir -p "$out/ctx"
  podman build --pull=never -q -t "$image" -f "$cf" "$out/ctx" >/dev/null
fi

name=ps-deploy-systemd-$$
c() { podman exec "$name" "$@"; }
cleanup() {
  podman exec "$name" journalctl --no-pager -o short-precise \
    -u 'ps-*' >"$out/systemd-journal.log" 2>&1 || true
  podman rm -f "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() {
  echo "systemd_run: FAILED: $*"
  c systemctl --no-pager list-units --all 'ps-*' 2>&1 || true
  # The daemons' own lines, progress reports left out: what each did last.
  c journalctl --no-pager -o cat -u 'ps-*' 2>&1 |
    grep -v 'event=progress' | tail -150 || true
  exit 1
}
# Polls cmd (a string for sh in the container) until it succeeds.
wait_for() { # seconds what cmd
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until c sh -c "$*" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within $1 s"
    sleep 0.5
  done
}

t0=$(date +%s)
podman run -d --name "$name" --systemd=always -v "$out:/deb:ro" "$image" \
  >/dev/null
wait_for 60 "systemd running" \
  'systemctl is-system-running | grep -Eq "running|degraded"'
c sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /deb/$(basename "$deb") >/tmp/apt.log 2>&1" ||
  fail "apt-get install: $(c tail -20 /tmp/apt.log)"
t_installed=$(date +%s)
echo "systemd_run: $(basename "$deb") installed with apt-get in $((t_installed - t0)) s (container start included)"
c id ps >/dev/null || fail "postinst made no ps user"
# The node's keys (postinst): one pair per role, the daemons' secrets ps's
# and the admin's root's, all 0600, so the example configs run with CURVE.
keys_ls=$(c stat -c '%n %U %a' /etc/ps/keys/scheduler.key \
  /etc/ps/keys/server.key /etc/ps/keys/worker.key /etc/ps/keys/admin.key) ||
  fail "postinst made no keys in /etc/ps/keys"
want_ls='/etc/ps/keys/scheduler.key ps 600
/etc/ps/keys/server.key ps 600
/etc/ps/keys/worker.key ps 600
/etc/ps/keys/admin.key root 600'
[ "$keys_ls" = "$want_ls" ] || fail "keys' owners and modes: $keys_ls"
# The Python package (issue #17) came with it, for Debian's python3.
c python3 -c 'import ps; assert ps.__file__.startswith("/usr/lib/python3/dist-packages/")' ||
  fail "python3 cannot import the packaged ps"

# A short job: the example configs with a step limit.
c sed -i -e "s/^# max-steps = .*/max-steps = $MAX_STEPS/" -e 's/^epochs = .*/epochs = 1/' \
  /etc/ps/worker.conf
c timeout 120 systemctl start ps-scheduler ps-server@a ps-server@b \
  ps-worker@0 ps-worker@1 || fail "systemctl start"
t_ready=$(date +%s)
echo "systemd_run: all 5 units READY in $((t_ready - t_installed)) s"
for u in ps-scheduler ps-server@a ps-server@b ps-worker@0 ps-worker@1; do
  echo "systemd_run: $u: $(c systemctl show -p StatusText --value "$u")"
done
# Every daemon runs with CURVE; root's psctl finds the admin key by
# itself, a user without it (ps) is refused before anything is sent.
for u in ps-scheduler ps-server@a ps-worker@0; do
  c sh -c "journalctl -u $u | grep -Eq 'event=(curve|curve_on) '" ||
    fail "$u did not start with CURVE keys"
done
st=$(c psctl --timeout-ms 5000 status 2>&1) ||
  fail "psctl status as root (admin key from /etc/ps/keys): $st"
if c runuser -u ps -- psctl --timeout-ms 2000 status >/dev/null 2>&1; then
  fail "psctl status as ps (no admin key) was answered"
fi
echo "systemd_run: CURVE on every daemon; psctl status as root answered, as ps refused"

# Mid-run: the workers report progress, then server a is SIGKILLed.
wait_for 120 "training progress" \
  'journalctl -u ps-worker@0 | grep -q event=progress'
c systemctl kill -s KILL ps-server@a
t_kill=$(date +%s)
echo "systemd_run: SIGKILL to ps-server@a at step $(c sh -c 'journalctl -u ps-worker@0 | grep event=progress | tail -1' | sed -n 's/.* step=\([0-9]*\).*/\1/p')"
wait_for 60 "systemd restarting ps-server@a" \
  '[ "$(systemctl show -p NRestarts --value ps-server@a)" -ge 1 ] && systemctl is-active -q ps-server@a'
echo "systemd_run: ps-server@a restarted by systemd after $(($(date +%s) - t_kill)) s: $(c systemctl show -p StatusText --value ps-server@a)"

# The job finishes: every unit ends, the workers and the scheduler with
# exit 0, and each worker wrote its report.
wait_for 300 "the job finishing" \
  '! systemctl is-active -q ps-worker@0 && ! systemctl is-active -q ps-worker@1 && ! systemctl is-active -q ps-scheduler'
t_done=$(date +%s)
for u in ps-scheduler ps-worker@0 ps-worker@1 ps-server@b; do
  r=$(c systemctl show -p Result --value "$u")
  s=$(c systemctl show -p ExecMainStatus --value "$u")
  [ "$r" = success ] && [ "$s" = 0 ] || fail "$u ended with result $r, status $s"
done
for rank in 0 1; do
  rep=$(c cat /var/lib/ps/worker-$rank-report.json) ||
    fail "worker $rank wrote no report"
  steps=$(sed -n 's/.*"steps": \([0-9]*\).*/\1/p' <<<"$rep")
  acc=$(sed -n 's/.*"test_accuracy": \([0-9.]*\).*/\1/p' <<<"$rep")
  sps=$(sed -n 's/.*"samples_per_sec": \([0-9.]*\).*/\1/p' <<<"$rep")
  [ "$steps" = "$MAX_STEPS" ] || fail "worker $rank ran $steps steps, not $MAX_STEPS"
  awk -v a="$acc" 'BEGIN{exit !(a > 0.70)}' ||
    fail "worker $rank test accuracy $acc is not above 0.70"
  echo "systemd_run: worker $rank: $steps steps, test_accuracy $acc, $sps samples/s"
done
echo "systemd_run: failover in the scheduler's log: $(c sh -c 'journalctl -u ps-scheduler | grep -Eo "event=(node_dead|failover|server_dead)[^ ]*" | sort | uniq -c | tr "\n" " "')"
echo "systemd_run: job done $((t_done - t_kill)) s after the kill; whole run $((t_done - t0)) s"
