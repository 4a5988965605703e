#!/usr/bin/env bash
# Run the image with podman on this machine.
#   usage: container/podman-run.sh [podman run args] IMAGE [CMD ...]
# --runtime runc: crun fails on hybrid cgroup hosts. --ulimit: root here lacks CAP_SYS_RESOURCE and
# podman asks for nofile/nproc 1048576 ("setrlimit ... Operation not permitted"); podman caps its own
# nproc at kernel.pid_max, so ask for at most that.
set -euo pipefail
command -v runc >/dev/null || { echo "runc is missing: apt-get install runc" >&2; exit 1; }
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
PIDMAX=$(cat /proc/sys/kernel/pid_max)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt "$PIDMAX" ]; then NPROC=$PIDMAX; fi
exec nice -n 10 podman --runtime runc run --rm --pull=never --network=host \
  --ulimit nofile="$NOFILE:$NOFILE" --ulimit nproc="$NPROC:$NPROC" "$@"
