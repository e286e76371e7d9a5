#!/usr/bin/env bash
# integration.install: the project as a user gets it.
#
#   test_install.sh BUILD_DIR LIBDIR CC SOURCE [CFLAG...]
#
# Installs BUILD_DIR into a fresh prefix (cmake --install --prefix), checks
# what landed (five programs that run from there, libps-client.so with its
# SONAME, the public headers, ps-client.pc, no static library), builds
# SOURCE with CC and the CFLAGs using nothing but
# `pkg-config --cflags --libs ps-client`, and runs it against a scheduler
# and a server started from the prefix on loopback. Every wait has a
# deadline; the trap kills whatever is still running, on failure too.
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 BUILD_DIR LIBDIR CC SOURCE [CFLAG...]" >&2
  exit 2
fi
build=$1 libdir=$2 cc=$3 src=$4
shift 4
extra_cflags=("$@")
cmake=${CMAKE:-cmake} # ctest passes the cmake that configured the build

scratch_root=${PS_TEST_TMP:-${TMPDIR:-/tmp}}
mkdir -p "$scratch_root"
dir=$(mktemp -d "$scratch_root/install.XXXXXX")
prefix=$dir/prefix
pids=()

fail() {
  echo "install: $*" >&2
  exit 1
}

cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then
    for f in "$dir"/*.log; do
      [ -f "$f" ] || continue
      echo "---- $f ----" >&2
      tail -n 30 "$f" >&2
    done
    echo "install: failed; scratch in $dir" >&2
  else
    rm -rf "$prefix"
  fi
  exit $rc
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# Polls until file contains an event=NAME line, for at most ms.
wait_event() {
  local file=$1 name=$2 deadline=$(($(now_ms) + $3))
  until grep -q "event=$name " "$file" 2>/dev/null; do
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
}

# Polls until process pid exits, for at most ms; returns its exit status,
# or 124 if it still runs.
wait_exit() {
  local pid=$1 deadline=$(($(now_ms) + $2))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$(now_ms)" -lt "$deadline" ] || return 124
    sleep 0.02
  done
  local st=0
  wait "$pid" || st=$?
  return $st
}

# ---- install -------------------------------------------------------------
"$cmake" --install "$build" --prefix "$prefix" >"$dir/install.log" 2>&1 ||
  fail "cmake --install failed (see $dir/install.log)"

programs=(ps-scheduler ps-server ps-worker psctl ps-bench ps-datagen)
for p in "${programs[@]}"; do
  [ -x "$prefix/bin/$p" ] || fail "bin/$p not installed"
  if ldd "$prefix/bin/$p" | grep -q "not found"; then
    fail "bin/$p: $(ldd "$prefix/bin/$p" | grep "not found")"
  fi
  "$prefix/bin/$p" --help >"$dir/help-$p.out" 2>&1 ||
    fail "bin/$p --help exited $? from the prefix"
done

lib=$prefix/$libdir
[ -f "$lib/libps-client.so.0" ] || fail "$libdir/libps-client.so.0 missing"
[ -L "$lib/libps-client.so" ] || fail "$libdir/libps-client.so link missing"
soname=$(readelf -d "$lib/libps-client.so.0" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libps-client.so.0 ] || fail "SONAME is '$soname'"
for h in client err export model view; do
  [ -f "$prefix/include/ps/$h.h" ] || fail "include/ps/$h.h missing"
done
if grep -l '#include "\(common\|proto\|worker\)/' "$prefix"/include/ps/*.h; then
  fail "an installed header includes an internal one"
fi
statics=$(find "$prefix" -name '*.a')
[ -z "$statics" ] || fail "static libraries installed: $statics"

# ---- build a program through pkg-config alone ----------------------------
export PKG_CONFIG_PATH=$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
pc_flags=$(pkg-config --cflags --libs ps-client) ||
  fail "pkg-config --cflags --libs ps-client failed"
pc_libdir=$(pkg-config --variable=libdir ps-client)
[ "$(cd "$pc_libdir" && pwd -P)" = "$(cd "$lib" && pwd -P)" ] ||
  fail "ps-client.pc's libdir $pc_libdir is not $lib"
cp "$src" "$dir/push_pull.c"
# shellcheck disable=SC2086  # pkg-config's flags are words
(cd "$dir" && "$cc" -std=c11 -Wall -Wextra -Werror "${extra_cflags[@]}" \
  push_pull.c -o push_pull $pc_flags -Wl,-rpath,"$pc_libdir") \
  >"$dir/cc.log" 2>&1 || fail "cc failed: $(cat "$dir/cc.log")"
used=$(ldd "$dir/push_pull" | sed -n 's/.*libps-client\.so\.0 => \([^ ]*\).*/\1/p')
if [ -z "$used" ] ||
  [ "$(readlink -f "$used")" != "$(readlink -f "$lib/libps-client.so.0")" ]; then
  fail "push_pull loads libps-client from '$used', not the prefix"
fi

# ---- run it against a cluster from the prefix ----------------------------
"$prefix/bin/ps-scheduler" --bind 'tcp://127.0.0.1:*' --servers 1 \
  --workers 1 --heartbeat-timeout-ms 10000 >"$dir/scheduler.log" 2>&1 &
pids+=($!)
sched=$!
wait_event "$dir/scheduler.log" listening 10000 ||
  fail "the scheduler did not listen within 10 s"
ep=$(sed -n 's/.*event=listening endpoint=\([^ ]*\).*/\1/p' "$dir/scheduler.log")
"$prefix/bin/ps-server" --scheduler "$ep" >"$dir/server.log" 2>&1 &
pids+=($!)
server=$!

st=0
timeout 60 "$dir/push_pull" "$ep" >"$dir/push_pull.log" 2>&1 || st=$?
[ $st -eq 0 ] || fail "push_pull exited $st: $(cat "$dir/push_pull.log")"
grep -q "push_pull: ok" "$dir/push_pull.log" || fail "push_pull said no ok"

# The one worker is done: the job is over and both daemons exit 0.
st=0
wait_exit "$sched" 20000 || st=$?
[ $st -eq 0 ] || fail "the scheduler exited $st after the job (124: still running)"
st=0
wait_exit "$server" 20000 || st=$?
[ $st -eq 0 ] || fail "the server exited $st after the job (124: still running)"
echo "install: ok: installed, built with pkg-config, pushed and pulled ($ep)"
