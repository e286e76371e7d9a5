#!/bin/sh
# Checks that a shared library exports its public API and nothing else.
#
#   check_symbols.sh LIB.so INCLUDE_DIR...
#
# The API is every function (and extern variable) declared in the headers
# INCLUDE_DIR/ps/*.h, read as a C compiler reads them (comments, #define
# lines and C++-only blocks dropped, struct and enum bodies skipped). The
# exports are `nm -D --defined-only LIB`. Prints one line per symbol that
# is exported but declared in no public header (a leak: hidden visibility
# or PS_EXTERN misused) and per declared function that is not exported (a
# public function without PS_EXTERN, or not linked in), and exits 1 if
# there is any. ctest runs it on libps-client.so (install.symbols) and on
# a library made to fail (install.symbols_catch).
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 LIB.so INCLUDE_DIR..." >&2
  exit 2
fi
lib=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for dir in "$@"; do
  for h in "$dir"/ps/*.h; do
    [ -f "$h" ] || { echo "symbols: no headers in $dir/ps" >&2; exit 2; }
    cat "$h"
    echo
  done
done >"$tmp/headers"

# Declared names: one statement per ';' once comments, preprocessor lines
# (with their continuations), #ifdef __cplusplus blocks and {...} bodies
# are gone. A statement with '(' that is not a typedef declares the
# function named just before its first '('; one that starts with PS_EXTERN
# and has none declares a variable.
awk '
  { line = $0
    while (line ~ /\\$/) {               # join continued lines
      sub(/\\$/, "", line)
      if ((getline nxt) <= 0) break
      line = line nxt
    }
    text = text line "\n"
  }
  END {
    out = ""
    while ((i = index(text, "/*")) > 0) {  # block comments
      rest = substr(text, i + 2)
      j = index(rest, "*/")
      if (j == 0) { text = substr(text, 1, i - 1); break }
      out = out substr(text, 1, i - 1) " "
      text = substr(rest, j + 2)
    }
    text = out text
    gsub(/\/\/[^\n]*/, "", text)
    n = split(text, lines, "\n")
    code = ""; skip = 0
    for (k = 1; k <= n; k++) {
      l = lines[k]
      if (l ~ /^[ \t]*#[ \t]*if(def)?[ \t]+(defined[ (]*)?__cplusplus/) {
        skip = 1; continue
      }
      if (skip && l ~ /^[ \t]*#[ \t]*endif/) { skip = 0; continue }
      if (skip || l ~ /^[ \t]*#/) continue
      code = code " " l
    }
    while (gsub(/\{[^{}]*\}/, " ", code) > 0) {}
    m = split(code, stmts, ";")
    for (k = 1; k <= m; k++) {
      s = stmts[k]
      gsub(/[ \t]+/, " ", s); sub(/^ /, "", s); sub(/ $/, "", s)
      if (s == "" || s ~ /^typedef /) continue
      p = index(s, "(")
      if (p > 0) s = substr(s, 1, p - 1)
      else if (s !~ /^PS_EXTERN /) continue
      sub(/\[[^]]*\]$/, "", s)
      sub(/[ \t]+$/, "", s)
      if (match(s, /[A-Za-z_][A-Za-z0-9_]*$/))
        print substr(s, RSTART, RLENGTH)
    }
  }' "$tmp/headers" | sort -u >"$tmp/declared"

nm -D --defined-only "$lib" >"$tmp/nm"
awk 'NF >= 3 { sub(/@.*/, "", $3); print $3 }' "$tmp/nm" | sort -u \
  >"$tmp/exported"

if [ ! -s "$tmp/declared" ]; then
  echo "symbols: found no declarations in $* (parser broken?)" >&2
  exit 1
fi

status=0
for s in $(comm -13 "$tmp/declared" "$tmp/exported"); do
  echo "symbols: $lib exports $s, declared in no public header"
  status=1
done
for s in $(comm -23 "$tmp/declared" "$tmp/exported"); do
  echo "symbols: $lib does not export $s, declared in a public header"
  status=1
done
if [ $status -eq 0 ]; then
  echo "symbols: $lib exports exactly the $(wc -l <"$tmp/declared") functions" \
    "of its public headers"
fi
exit $status
