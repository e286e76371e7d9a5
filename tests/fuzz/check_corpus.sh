#!/usr/bin/env bash
# check_corpus.sh GENERATOR CORPUS_DIR: the committed seeds (gen-*) are
# exactly what the generator writes now. Regression inputs (regress-*) are
# not the generator's and are left alone.
set -euo pipefail
gen=$1
corpus=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$gen" "$out"
status=0
for dir in "$out"/*/ "$corpus"/*/; do
  h=$(basename "$dir")
  diff <(cd "$out/$h" 2>/dev/null && ls gen-* 2>/dev/null) \
       <(cd "$corpus/$h" 2>/dev/null && ls gen-* 2>/dev/null) >/dev/null || {
    echo "check_corpus: $h: the seeds differ in name from the generator's" \
         "(run: $gen $corpus)" >&2
    status=1
    continue
  }
  for f in "$out/$h"/gen-*; do
    cmp -s "$f" "$corpus/$h/$(basename "$f")" || {
      echo "check_corpus: $h/$(basename "$f") is not what the generator" \
           "writes (run: $gen $corpus)" >&2
      status=1
    }
  done
done
exit $status
