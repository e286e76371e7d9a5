#!/usr/bin/env bash
# Judges a soak run (tests/soak/soak.sh): WORK/samples.csv (t_s, name,
# role, pid, rss_kb, fds, step every few seconds per live daemon) and
# WORK/events.csv (start, kill, back, exit, fail).
#
# The long-lived daemons (started with the job and never killed) are
# judged on two windows of SOAK_WINDOW_S seconds: the first after the
# warm-up (SOAK_WARMUP_S; soak.sh: half the run) and the last of the run:
#   - VmRSS: the last window's floor (its least sample) at most
#     SOAK_RSS_PCT (5) percent above the first's. The floor, not the
#     median: memory that leaked is never given back, so a leak lifts the
#     floor, while what a daemon holds for a moment lifts single samples. A
#     server's resident set swings from one sample to the next while it
#     holds the same ranges (12.2 to 14.2 MB in one run: every push and
#     every replicated change in flight is a frame of a range's size, 313
#     KB here), so that its window medians moved 5.4% where its floors
#     moved 0.4%;
#   - open descriptors: the last window's median at most SOAK_FD_SLACK (2)
#     above the first's (a sample may catch a reconnection to a peer
#     killed moments ago, or a scrape's connection, one descriptor each);
#   - every worker's step moves: for each sample one window or more after
#     its first step, the step is higher than a window earlier.
# Also fails when an exit event of a process that was not killed has a
# status other than 0, or when the driver recorded a failure. Processes
# started again after a kill are reported apart (first and last sample),
# not judged: they lived through part of the faults only.
#   tests/soak/check.sh WORK
# SOAK_SECONDS, SOAK_WARMUP_S, SOAK_WINDOW_S come from the environment or
# else WORK/soak.env (written by soak.sh). Exit 0: pass; 1: fail.
# awk only (mawk is enough): CI machines may have no python.
set -euo pipefail
WORK=${1:?usage: check.sh WORK}
for v in SOAK_SECONDS SOAK_WARMUP_S SOAK_WINDOW_S; do
  if [ -z "${!v:-}" ] && [ -f "$WORK/soak.env" ]; then
    val=$(sed -n "s/^$v=\([0-9]*\)$/\1/p" "$WORK/soak.env")
    printf -v "$v" '%s' "$val"
  fi
  [[ ${!v:-} =~ ^[0-9]+$ ]] || { echo "check: $v not set (nor in $WORK/soak.env)" >&2; exit 2; }
done
RSS_PCT=${SOAK_RSS_PCT:-5}
FD_SLACK=${SOAK_FD_SLACK:-2}
for f in samples.csv events.csv; do
  [ -s "$WORK/$f" ] || { echo "check: $WORK/$f is missing" >&2; exit 2; }
done

awk -F, -v dur="$SOAK_SECONDS" -v warm="$SOAK_WARMUP_S" -v win="$SOAK_WINDOW_S" \
  -v rss_pct="$RSS_PCT" -v fd_slack="$FD_SLACK" '
function sort(a, n,    i, j, x) { # insertion sort of a[1..n]
  for (i = 2; i <= n; i++) {
    x = a[i]
    for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]
    a[j + 1] = x
  }
}
# Median (what "med") or least ("min") of field (R, F) of name over the
# samples with lo <= t < hi; "" if none.
function stat(what, name, field, lo, hi,    k, n, v) {
  n = 0
  for (k = 1; k <= N[name]; k++)
    if (T[name, k] >= lo && T[name, k] < hi) {
      v[++n] = (field == "R") ? R[name, k] : F[name, k]
    }
  if (n == 0) return ""
  sort(v, n)
  if (what == "min") return v[1]
  return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function bad(msg) { print "FAIL: " msg; failed++ }
FNR == 1 { next }
FILENAME ~ /events.csv$/ {
  t = $1 + 0; ev = $2; name = $3
  if (ev == "start") {
    split($5, d, " ")
    role[name] = d[1]; kind[name] = d[2]; started[name] = t
    order[++nnames] = name
  } else if (ev == "kill") {
    killed[name] = t; kills[role[name]]++
  } else if (ev == "exit") {
    exit_status[name] = $5
  } else if (ev == "fail") {
    bad("the driver: " substr($0, index($0, $5)))
  }
  next
}
{ # samples.csv
  name = $2; k = ++N[name]
  P[name] = $4; T[name, k] = $1 + 0; R[name, k] = $5 + 0; F[name, k] = $6 + 0
  S[name, k] = $7
}
END {
  end_lo = dur - win
  printf "soak: %d s, warm-up %d s; first window [%d, %d) s, last window [%d, %d] s; bounds: RSS +%s%%, fds +%d\n", \
    dur, warm, warm, warm + win, end_lo, dur, rss_pct, fd_slack
  printf "faults: %d server kills, %d worker kills\n", kills["server"], kills["worker"]
  printf "\n%-13s %-9s %-10s %8s %11s %11s %8s %5s %5s %12s\n", "process", "role", "kind", "pid", \
    "rss_kb@warm", "rss_kb@end", "rss", "fds@w", "fds@e", "steps"
  for (i = 1; i <= nnames; i++) {
    n = order[i]
    steps = "-"
    if (role[n] == "worker") {
      # first and last step this process reported
      fs = ""; ls = ""
      for (k = 1; k <= N[n]; k++) if (S[n, k] != "") { if (fs == "") fs = S[n, k]; ls = S[n, k] }
      steps = (fs == "") ? "none" : fs "-" ls
    }
    if (kind[n] == "original" && !(n in killed)) {
      r0 = stat("min", n, "R", warm, warm + win); r1 = stat("min", n, "R", end_lo, dur + 1)
      m0 = stat("med", n, "R", warm, warm + win); m1 = stat("med", n, "R", end_lo, dur + 1)
      f0 = stat("med", n, "F", warm, warm + win); f1 = stat("med", n, "F", end_lo, dur + 1)
      if (r0 == "" || r1 == "") {
        bad(n " has no samples in the first or the last window: it did not live through the soak")
        continue
      }
      pct = (r1 - r0) * 100.0 / r0
      printf "%-13s %-9s %-10s %8s %11d %11d %+7.2f%% %5g %5g %12s  (median %d -> %d kB, %+.2f%%)\n", \
        n, role[n], "long-lived", P[n], r0, r1, pct, f0, f1, steps, m0, m1, (m1 - m0) * 100.0 / m0
      if (pct > rss_pct)
        bad(sprintf("%s: VmRSS grew %.2f%% (least sample %d kB in the first window, %d kB in the last) > %s%%", \
          n, pct, r0, r1, rss_pct))
      if (f1 > f0 + fd_slack)
        bad(sprintf("%s: open descriptors %g in the last window vs %g after warm-up (slack %d)", \
          n, f1, f0, fd_slack))
    } else if (N[n] > 0) {
      what = (n in killed) ? "killed" : "restarted"
      if (kind[n] == "restart" && (n in killed)) what = "restart,killed"
      printf "%-13s %-9s %-14s %4s %11d %11d %8s %5d %5d %12s  (first and last sample, %d-%d s)\n", \
        n, role[n], what, P[n], R[n, 1], R[n, N[n]], "", F[n, 1], F[n, N[n]], steps, T[n, 1], T[n, N[n]]
    }
  }
  # Training moves: every worker, over every window of its life.
  for (i = 1; i <= nnames; i++) {
    n = order[i]
    if (role[n] != "worker") continue
    t_first = ""
    for (k = 1; k <= N[n]; k++) {
      if (S[n, k] == "") continue
      if (t_first == "") { t_first = T[n, k]; continue }
      if (T[n, k] < t_first + win) continue
      j = 0 # the latest sample at least a window before
      for (m = k - 1; m >= 1; m--) if (T[n, m] <= T[n, k] - win && S[n, m] != "") { j = m; break }
      if (j > 0 && S[n, k] + 0 <= S[n, j] + 0) {
        bad(sprintf("%s: training stopped: step %d at %.0f s, %d at %.0f s", n, S[n, j], T[n, j], S[n, k], T[n, k]))
        break
      }
    }
    if (kind[n] == "original" && !(n in killed) && t_first == "")
      bad(n ": never reported a step")
  }
  for (n in exit_status)
    if (!(n in killed) && exit_status[n] != 0)
      bad(sprintf("%s exited with status %s", n, exit_status[n]))
  if (failed) { printf "\ncheck: FAIL (%d)\n", failed; exit 1 }
  print "\ncheck: PASS"
}' "$WORK/events.csv" "$WORK/samples.csv"
