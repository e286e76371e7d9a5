#!/usr/bin/env bash
# The systemd units of deploy/systemd/ as systemd reads them:
# `systemd-analyze verify` on an instance of each (any complaint fails),
# with ExecStart pointed at the build's programs (the units name /usr/bin,
# where the package puts them); then `systemd-analyze security --offline`
# prints each unit's exposure score and fails above MAX_EXPOSURE.
#   tests/deploy/units.sh SOURCE_DIR BIN_DIR WORK_DIR
set -euo pipefail
src=$1 bin=$(cd "$2" && pwd) work=$3
MAX_EXPOSURE=${MAX_EXPOSURE:-3.0}
rm -rf "$work" && mkdir -p "$work"
for u in "$src"/deploy/systemd/*.service; do
  sed "s|/usr/bin/|$bin/|g" "$u" > "$work/$(basename "$u")"
done
status=0
for unit in ps-scheduler.service ps-server@a.service ps-worker@0.service; do
  out=$(systemd-analyze verify --man=no "$work/$unit" 2>&1) || status=1
  if [ -n "$out" ]; then
    echo "units: systemd-analyze verify $unit:"
    echo "$out"
    status=1
  else
    echo "units: verify $unit: clean"
  fi
  score=$(systemd-analyze security --offline=yes "$work/$unit" 2>&1 |
          sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' || true)
  echo "units: systemd-analyze security $unit: exposure ${score:-?}"
  if [ -z "$score" ] || awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN{exit !(s > m)}'; then
    echo "units: $unit exposure ${score:-unknown} is above $MAX_EXPOSURE"
    status=1
  fi
done
# The check must be able to fail: a unit with an unknown key and a bad
# value is refused.
printf '[Service]\nType=notify\nExecStart=%s/ps-scheduler\nRestart=sometimes\nWatchdogSecs=1\n' \
  "$bin" > "$work/ps-broken.service"
if [ -z "$(systemd-analyze verify --man=no "$work/ps-broken.service" 2>&1)" ]; then
  echo "units: verify passed a broken unit"
  status=1
fi
exit $status
