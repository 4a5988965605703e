#!/usr/bin/env bash
# cluster_stop.sh -- stop what cluster_start.sh started: cancel the jobs, then stop the slurmd, slurmctld
# and munged whose PIDs were recorded under $T2V_SLURM_DIR/run (each checked against /proc/PID/comm).
#   T2V_SLURM_DIR=/tmp/t2v-slurm bash tests/slurm/cluster_stop.sh [--purge]   (--purge: delete the folder)
set -uo pipefail
DIR=${T2V_SLURM_DIR:-/tmp/t2v-slurm}
log() { echo "[cluster_stop] $*" >&2; }
[ -d "$DIR" ] || { log "nothing to do ($DIR missing)"; exit 0; }
export SLURM_CONF=$DIR/slurm.conf

alive() { local p; p=$(cat "$1" 2>/dev/null) || return 1; [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; }

# Jobs first, so their steps end cleanly (slurmstepd outlives slurmd otherwise).
if alive "$DIR/run/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for pattern in 'slurmd-*.pid' 'slurmctld.pid' 'munged.pid'; do
  for pf in "$DIR"/run/$pattern; do
    [ -e "$pf" ] || continue
    case $(basename "$pf") in slurmctld*) comm=slurmctld;; slurmd*) comm=slurmd;; *) comm=munged;; esac
    if alive "$pf" "$comm"; then
      p=$(cat "$pf"); kill "$p"
      for _ in $(seq 1 50); do [ -d "/proc/$p" ] || break; sleep 0.2; done
      [ -d "/proc/$p" ] && { log "SIGKILL $comm $p"; kill -9 "$p"; }
    fi
    rm -f "$pf"
  done
done
# A task that outlived its step (e.g. the rank left behind when its peer was killed) must not outlive the
# cluster: kill every process started by one of this cluster's jobs (SLURM_JOB_ID set, our SLURM_CONF).
for envfile in /proc/[0-9]*/environ; do
  p=${envfile#/proc/}; p=${p%/environ}
  vars=$(tr '\0' '\n' < "$envfile" 2>/dev/null) || continue
  if grep -qx "SLURM_CONF=$SLURM_CONF" <<<"$vars" && grep -q '^SLURM_JOB_ID=' <<<"$vars"; then
    log "SIGKILL leftover job process $p ($(cat "/proc/$p/comm" 2>/dev/null))"
    kill -9 "$p" 2>/dev/null
  fi
done
[ "${1:-}" = --purge ] && rm -rf "$DIR"
log "stopped ($DIR)"
