#!/usr/bin/env bash
# Draws a training run's figures from ps-worker --metrics-csv into one PNG:
# training loss, test accuracy and samples/s, each against time.
#
#   deploy/plot.sh CSV [OUT.png]     (default OUT: CSV with .png)
#
# Needs gnuplot (Debian package gnuplot-nox; deploy/install-deps.sh
# installs it). Exit 0 with the PNG's path on stdout; 1 when gnuplot is
# missing or fails; 2 on bad usage or a CSV that is not ps-worker's.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  '') echo "plot.sh: missing CSV" >&2; usage >&2; exit 2 ;;
esac
[ $# -le 2 ] || { echo "plot.sh: too many arguments" >&2; usage >&2; exit 2; }
CSV=$1
OUT=${2:-${CSV%.csv}.png}
[ -r "$CSV" ] || { echo "plot.sh: cannot read $CSV" >&2; exit 2; }
HEADER="time_s,kind,epoch,step,steps,loss,lr,samples_per_sec,test_loss,test_accuracy"
if [ "$(head -n 1 "$CSV")" != "$HEADER" ]; then
  echo "plot.sh: $CSV does not start with ps-worker --metrics-csv's header ($HEADER)" >&2
  exit 2
fi
command -v gnuplot >/dev/null || {
  echo "plot.sh: gnuplot not found (Debian package gnuplot-nox: deploy/install-deps.sh installs it)" >&2
  exit 1
}

# gnuplot refuses a plot whose points are all undefined, so a panel with
# nothing to show (no evaluation, a run shorter than one progress
# interval) says so instead.
count() { awk -F, -v k="$1" -v c="$2" 'NR > 1 && (k == "" || $2 == k) && $c != "" { n++ } END { print n + 0 }' "$CSV"; }
N_LOSS=$(count "" 6)
N_ACC=$(count "" 10)
N_SPS=$(count progress 8)
[ "$N_LOSS" -gt 0 ] || { echo "plot.sh: $CSV has no rows yet" >&2; exit 2; }
# The same time axis on every panel.
XMAX=$(awk -F, 'NR > 1 && $1 > m { m = $1 } END { print (m > 0 ? m : 1) }' "$CSV")

# gnuplot strings are in single quotes: double any quote in the paths.
q() { printf "'%s'" "${1//\'/\'\'}"; }
TERMINAL="pngcairo size 900,1000 font 'sans,10'"
gnuplot -e 'set terminal' 2>/dev/null | grep -qw pngcairo || TERMINAL="png size 900,1000"

panel() { # title, ylabel, count, plot clause
  echo "set title '$1'"
  echo "set ylabel '$2'"
  if [ "$3" -gt 0 ]; then
    echo "plot $4"
  else
    echo "unset key; set yrange [0:1]; set label 1 'none in this file' at graph 0.5, 0.5 center"
    echo "plot NaN notitle"
    echo "unset label 1; set key; set autoscale y"
  fi
}

{
  echo "set terminal $TERMINAL"
  echo "set output $(q "$OUT")"
  echo "set datafile separator ','"
  echo "set key top right"
  echo "set grid"
  echo "set xlabel 'time (s)'"
  echo "set xrange [0:$XMAX]"
  echo "set multiplot layout 3,1 title $(q "$(basename "$CSV")")"
  echo "f = $(q "$CSV")"
  panel "training loss" "loss" "$N_LOSS" \
    "f every ::1 using 1:(strcol(2) eq 'progress' ? \$6 : NaN) with lines title 'per progress interval', f every ::1 using 1:(strcol(2) eq 'epoch' ? \$6 : NaN) with linespoints pt 7 title 'epoch mean'"
  panel "test accuracy" "accuracy" "$N_ACC" \
    "f every ::1 using 1:10 with linespoints pt 7 title 'test accuracy'"
  panel "throughput (all workers)" "samples/s" "$N_SPS" \
    "f every ::1 using 1:(strcol(2) eq 'progress' ? \$8 : NaN) with lines title 'samples/s'"
  echo "unset multiplot"
} | gnuplot || { echo "plot.sh: gnuplot failed on $CSV" >&2; exit 1; }
echo "$OUT"
