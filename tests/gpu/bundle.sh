#!/usr/bin/env bash
# Builds a self-contained folder for a GPU machine we do not control (issue
# 18): the programs and test binaries of a build, every shared library they
# load that is neither glibc nor the CUDA driver (resolved with ldd on this
# machine), a launcher that sets LD_LIBRARY_PATH, the Fashion-MNIST files,
# and run.sh, which on the GPU machine runs unit.cuda, the CUDA-vs-CPU
# parity and the benchmark and writes one result file.
#
#   tests/gpu/bundle.sh BUILD_DIR OUT_DIR [DATA_DIR]
#
# Left out, on purpose:
#  - glibc (libc, libm, ld.so, ...): the programs need GLIBC_<MANIFEST's
#    glibc_needed> of the machine's own, which run.sh reports; a glibc of
#    ours in LD_LIBRARY_PATH would break the machine's programs that the
#    scripts start (sh, awk) with its ld.so. GCC's runtime (libstdc++,
#    libgcc_s) sits in lib/compat, used where the machine's glibc is at
#    least compat_glibc.
#  - the CUDA driver (libcuda.so.1) and cuBLAS (over 500 MiB): the CUDA
#    runtime is linked in statically, and cuBLAS is opened at run time; the
#    launcher finds the machine's libcublas.so.13 (CUDA toolkit, pip wheel
#    or ld.so cache) and puts its folder after ours.
# OpenBLAS (36 MiB, every CPU's kernels) travels gzipped and is unpacked by
# the launcher on first use (into the bundle, or $TMPDIR if it is read-only),
# which keeps the folder under 64 MiB with the data set.
set -euo pipefail
build=${1:?usage: bundle.sh BUILD_DIR OUT_DIR [DATA_DIR]}
out=${2:?usage: bundle.sh BUILD_DIR OUT_DIR [DATA_DIR]}
data=${3:-/usr/share/datasets/fashion-mnist}
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$build" && pwd)

progs="ps-worker ps-server ps-scheduler psctl"
tests="test_cuda test_compute itest_layered_push"
for p in $progs; do
  [ -x "$build/bin/$p" ] || { echo "bundle: $build/bin/$p not built" >&2; exit 1; }
done
for t in $tests; do
  [ -x "$build/tests/$t" ] || { echo "bundle: $build/tests/$t not built" >&2; exit 1; }
done
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -s "$data/$f" ] || { echo "bundle: no $data/$f" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/data"
for p in $progs; do cp "$build/bin/$p" "$out/bin/"; done
for t in $tests; do cp "$build/tests/$t" "$out/bin/"; done
# Debug sections stay here: they would double the programs' size.
strip --strip-debug "$out"/bin/*

# glibc's own objects and the driver's, never bundled.
skip='^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libanl\.so|libcuda\.so|libnvidia-)'
missing=0
for f in "$out"/bin/*; do
  # "name => path (addr)", or "name => not found".
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [[ "$name" =~ $skip ]]; then continue; fi
    if [ "$path" = "not" ]; then
      echo "bundle: $(basename "$f") needs $name, which ldd cannot find" >&2
      missing=1
      continue
    fi
    [ -e "$out/lib/$name" ] || [ -e "$out/lib/$name.gz" ] || cp -L "$path" "$out/lib/$name"
  done < <(ldd "$f")
done
[ "$missing" = 0 ] || exit 1
if ls "$out"/lib/libcublas* "$out"/lib/libcudart* >/dev/null 2>&1; then
  echo "bundle: a CUDA library is linked at load time; it must not be" >&2
  exit 1
fi
# GCC's runtime from Debian 12 asks for glibc 2.35/2.36 (_dl_find_object,
# arc4random), which an older machine lacks, and the machine may have its
# own anyway (cuBLAS links it): the launcher uses ours only where glibc is
# new enough or there is none.
mkdir -p "$out/lib/compat"
for g in libstdc++.so.6 libgcc_s.so.1; do
  if [ -e "$out/lib/$g" ]; then mv "$out/lib/$g" "$out/lib/compat/"; fi
done
for big in "$out"/lib/libopenblas*; do
  [ -e "$big" ] || continue
  gzip -6 "$big"
done

cp "$data"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$out/data/"
cp "$here/launch" "$here/run.sh" "$out/"
chmod +x "$out/launch" "$out/run.sh"

# The newest glibc symbol version the files given ask for.
glibc_of() {
  for f in "$@"; do
    case "$f" in *.gz) continue ;; esac
    [ -f "$f" ] || continue
    objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' || true
  done | sed 's/GLIBC_//' | sort -V -u | tail -1
}
glibc_needed=$(glibc_of "$out"/bin/* "$out"/lib/*.so*)
compat_glibc=$(glibc_of "$out"/lib/compat/*)
{
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "build_glibc=$(ldd --version | head -1 | awk '{print $NF}')"
  echo "glibc_needed=$glibc_needed"
  echo "compat_glibc=$compat_glibc"
  nvcc=$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
  if [ -n "$nvcc" ] && [ -x "$nvcc" ]; then
    echo "cuda_runtime=static, $("$nvcc" --version | grep -o 'release [0-9.]*')"
  else
    echo "cuda_runtime=none (built without CUDA)"
  fi
  echo "cublas_needed=libcublas.so.13 (found on the machine by launch)"
  echo "libs=$(cd "$out/lib" && ls | tr '\n' ' ')"
  echo "compat_libs=$(cd "$out/lib/compat" && ls | tr '\n' ' ')"
} > "$out/MANIFEST"
size=$(du -sm "$out" | cut -f1)
echo "bundle: $out, ${size} MiB, glibc >= $glibc_needed ($compat_glibc for lib/compat)" >&2
if [ "$size" -ge 64 ]; then
  echo "bundle: ${size} MiB is not under 64 MiB" >&2
  exit 1
fi
