#!/bin/sh
# Fails when a global symbol is defined (strongly) by two of the libraries
# given, which are the project's modules: internal names are
# ps__<module>_* (STYLE.md) precisely so that any two modules link together.
# Usage: symbols.sh LIB...
set -eu
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for lib in "$@"; do
  name=$(basename "$lib")
  # Strong definitions only: weak and vague-linkage ones may repeat.
  nm -g --defined-only "$lib" 2>/dev/null |
    awk -v lib="$name" 'NF == 3 && $2 ~ /^[TDBRC]$/ { print $3, lib }' |
    sort -u >>"$tmp"
done
dups=$(awk '{ print $1 }' "$tmp" | sort | uniq -d)
if [ -n "$dups" ]; then
  echo "symbols defined by more than one module:"
  for s in $dups; do
    printf '  %s:' "$s"
    awk -v s="$s" '$1 == s { printf " %s", $2 }' "$tmp"
    echo
  done
  exit 1
fi
echo "$(wc -l <"$tmp") global symbols in $# libraries, none defined twice"
