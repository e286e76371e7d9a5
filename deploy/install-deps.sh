#!/usr/bin/env bash
# Installs the Debian 12 packages the project builds, tests and trains with.
# Does nothing when they are all present; otherwise needs root and apt.
#   deploy/install-deps.sh           what building and training need
#   deploy/install-deps.sh --tests   and what the test suite needs as well
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libuv1-dev libsodium-dev
  libopenblas-dev zlib1g-dev libinih-dev libsystemd-dev libisal-dev
  check libsubunit-dev
  libhttp-parser-dev prometheus curl
  dataset-fashion-mnist
  iproute2 procps
)
if [ "${1:-}" = --tests ]; then
  PACKAGES+=(
    clang
    # libFuzzer and clang's ASan/UBSan runtimes, for the fuzzing build
    # (tests/fuzz; clang only recommends them).
    libclang-rt-14-dev
    # Container tests (tests/deploy): podman with runc, a base image made
    # from Debian's archive, names resolved on podman networks, Compose.
    podman runc mmdebstrap golang-github-containernetworking-plugin-dnsname
    podman-compose
    # deploy/slurm on a one-node Slurm cluster (tests/deploy/slurm_run.sh
    # starts its own munged, slurmctld and slurmd). Installing them starts
    # no Slurm daemon: Debian's units and init scripts for slurmctld and
    # slurmd do nothing without /etc/slurm/slurm.conf, which is not
    # shipped. munge's starts the machine's munged (its own key and
    # socket), which the test does not use.
    slurm-wlm munge
    # The package tests (tests/deploy): lint the .deb, validate compose.yaml.
    lintian docker-compose
    # deploy/k8s checked offline (tests/deploy/k8s_validate.py): the
    # manifests read by python3-yaml against a JSON Schema by
    # python3-jsonschema; python3-kubernetes is what that schema is made
    # from (tests/deploy/k8s_schema.py).
    python3-yaml python3-jsonschema python3-kubernetes
    # deploy/plot.sh, which integration.metrics_csv runs (and quickstart
    # uses when it is there).
    gnuplot-nox
    # The Python package's tests (ctest -L python): Debian's PyTorch 1.13 is
    # the tested version; python3-dev builds the extension.
    python3-dev python3-numpy python3-pytest python3-torch
  )
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
