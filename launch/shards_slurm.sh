#!/usr/bin/env bash
#SBATCH --job-name=t2v-shards
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
#
# Build shards as a SLURM array job: task k of N builds shards k, k+N, k+2N, ... of the same plan a
# single `t2v-shards` run makes, so the shards are byte for byte those of a single build. Submit from
# the checkout with a t2v-shards subcommand and its flags:
#
#   sbatch --array=0-9 -p cpu -t 4:00:00 launch/shards_slurm.sh ucf101 --src /data/UCF-101 --out /shared/ucf --frames 16
#   sbatch --array=0-2 launch/shards_slurm.sh synthetic --out data/syn --num_clips 100000
#
# - Each task runs `t2v-shards ... --task_index K --num_tasks N --workers $SLURM_CPUS_PER_TASK` (K and N
#   from SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT; --array must be a range such as 0-9 or 0-9%4).
#   Builds are incremental: a requeued or resubmitted task keeps its complete shards.
# - The first task submits the final step once: a job that starts when every task succeeded
#   (--dependency=afterok), reruns the command without the split (it reuses every shard and writes
#   OUT/summary.json) and checks the folder with `t2v-shards stats --verify`. A failed task cancels it.
# - Without --array it is one task that builds everything, then verifies.
# Logs: %x-%A_%a.out in the submit folder, or where -o puts them; the final step's log goes next to them,
# t2v-shards-final-<array job id>.out.
# Environment: T2V_ROOT (checkout; default: where this script was submitted from), T2V_PYTHON.
set -uo pipefail

log() { echo "[shards_slurm.sh job ${SLURM_JOB_ID:-?}] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }
[ -n "${SLURM_JOB_ID:-}" ] || die "run it with sbatch: sbatch --array=0-N launch/shards_slurm.sh SUBCOMMAND --out DIR ..."
[ $# -ge 1 ] || die "give a t2v-shards subcommand and its flags, e.g. synthetic --out data/syn"

# The batch script runs from a copy in slurmd's spool: find the checkout from the submitted path.
job_info=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null)
submitted=$(sed -n 's/^ *Command=\([^ ]*\).*/\1/p' <<<"$job_info" | head -n1)
if [ -z "${T2V_ROOT:-}" ]; then
  if [ -n "$submitted" ] && [ -f "$(dirname "$submitted")/train.py" ]; then
    T2V_ROOT=$(cd "$(dirname "$submitted")/.." && pwd)
  else
    T2V_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
  fi
fi
[ -f "$T2V_ROOT/shards/cli.py" ] || die "$T2V_ROOT/shards/cli.py not found: set T2V_ROOT to the checkout"
if [ -z "${T2V_PYTHON:-}" ]; then
  if [ -x "$T2V_ROOT/.venv/bin/python" ]; then T2V_PYTHON=$T2V_ROOT/.venv/bin/python; else T2V_PYTHON=python3; fi
fi
export PYTHONPATH=$T2V_ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
shards() { "$T2V_PYTHON" -m shards.cli "$@"; }

out=""
prev=""
for arg in "$@"; do
  case $arg in --out=*) out=${arg#--out=};; esac
  [ "$prev" = --out ] && out=$arg
  prev=$arg
done
[ -n "$out" ] || die "no --out DIR among the arguments: $*"
workers=()
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && workers=(--workers "$SLURM_CPUS_PER_TASK")

finish() {  # the whole set: reuse every shard, write summary.json, verify every tar against its stats
  shards "$1" "${workers[@]}" "${@:2}" --mode incremental --progress False || exit $?
  shards stats --src "$out" --verify True || die "t2v-shards stats --verify found shards that do not match their stats"
  log "summary $out/summary.json written; every shard verified"
}

if [ "${T2V_SHARDS_STEP:-}" = final ]; then
  log "final step of array job ${T2V_SHARDS_ARRAY_JOB:-?}"
  finish "$@"
  exit 0
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  finish "$@"
  exit 0
fi

step=${SLURM_ARRAY_TASK_STEP:-1}
count=$SLURM_ARRAY_TASK_COUNT
index=$(( (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / step ))
[ $(( (SLURM_ARRAY_TASK_MAX - SLURM_ARRAY_TASK_MIN) / step + 1 )) = "$count" ] \
  || die "--array must be a range with one step (e.g. 0-9 or 0-9%4), got tasks ${SLURM_ARRAY_TASK_MIN}..${SLURM_ARRAY_TASK_MAX} ($count)"

if [ "$index" = 0 ]; then
  final_name=t2v-shards-final-$SLURM_ARRAY_JOB_ID
  if [ -z "$(squeue -h -o %i -n "$final_name" 2>/dev/null)" ]; then  # not again after a requeue
    [ -n "$submitted" ] && [ -f "$submitted" ] || submitted=$T2V_ROOT/launch/shards_slurm.sh
    log_dir=$(dirname "$(sed -n 's/^ *StdOut=\(.*\)$/\1/p' <<<"$job_info" | head -n1)")  # next to the tasks' logs
    final=$(sbatch --parsable --job-name="$final_name" --dependency="afterok:$SLURM_ARRAY_JOB_ID" \
      --kill-on-invalid-dep=yes --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
      ${SLURM_JOB_PARTITION:+--partition="$SLURM_JOB_PARTITION"} --output="$log_dir/$final_name.out" --open-mode=append \
      --chdir="$PWD" --export="ALL,T2V_SHARDS_STEP=final,T2V_SHARDS_ARRAY_JOB=$SLURM_ARRAY_JOB_ID,T2V_ROOT=$T2V_ROOT" \
      "$submitted" "$@") || die "could not submit the final step"
    log "final step: job $final (after every task of $SLURM_ARRAY_JOB_ID succeeded)"
  fi
fi
log "task $index of $count"
shards "$1" "${workers[@]}" "${@:2}" --task_index "$index" --num_tasks "$count" --progress False
