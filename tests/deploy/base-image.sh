#!/usr/bin/env bash
# Makes the Debian 12 base image the container tests build on, without a
# registry: mmdebstrap (minbase, from Debian's archive) into a tarball that
# is cached in CACHE_DIR, imported into podman and tagged
# docker.io/library/debian:12, so Dockerfiles that say `FROM debian:12`
# build unchanged with `podman build --pull=never`.
#   tests/deploy/base-image.sh CACHE_DIR    (prints the image name)
# Uses tests/deploy/containers.conf unless CONTAINERS_CONF is set.
set -euo pipefail
cache=${1:?usage: base-image.sh CACHE_DIR}
image=docker.io/library/debian:12
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
mkdir -p "$cache"
tar=$cache/debian12-minbase.tar
if [ ! -s "$tar" ]; then
  echo "base-image: mmdebstrap bookworm into $tar (a few minutes)" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$cache/partial.tar" \
    http://deb.debian.org/debian >&2
  mv "$cache/partial.tar" "$tar"
fi
podman import --quiet "$tar" "$image" >/dev/null
echo "$image"
