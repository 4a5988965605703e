#!/usr/bin/env bash
# Build the CPU flavour of the Dockerfile with podman on this machine, without any registry.
#   usage: container/podman-build.sh TAG [more podman build args]
#   env:   T2V_BASE_IMAGE (default localhost/t2v-debian:bookworm, made by container/make-base-image.sh)
# --isolation=chroot: crun cannot create containers on hosts with hybrid cgroup v1/v2 ("cgroups in hybrid
#   mode not supported"); chroot isolation needs no OCI runtime. Such builds use the host network.
# --format docker: the OCI format ignores SHELL (bash with pipefail).
# The host's local pip wheel folders are mounted read-only (pip in the build finds torch there).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$1
shift
BASE=${T2V_BASE_IMAGE:-localhost/t2v-debian:bookworm}
MOUNTS=()
while read -r m; do MOUNTS+=(-v "$m"); done < <(python3 container/pip_settings.py mounts)
exec nice -n 10 podman build --isolation=chroot --pull=never --network=host --layers --format docker \
  --build-arg FLAVOUR=cpu --build-arg TORCH_INDEX_URL= \
  --build-arg BASE_IMAGE="$BASE" --build-arg RUNTIME_IMAGE="$BASE" \
  "${MOUNTS[@]}" -t "$TAG" "$@" -f Dockerfile .
