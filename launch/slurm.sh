#!/usr/bin/env bash
#SBATCH --job-name=t2v-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@300
#SBATCH --output=%x-%j.out
#
# Train on SLURM: one task per GPU (or per CPU rank), `srun python -u launch/train.py`, with requeue
# after preemption. Submit from the checkout (config paths are relative to the submit folder):
#
#   sbatch [sbatch options] launch/slurm.sh [--config FILE] [--run_dir DIR] [--section.key=value ...]
#
#   # 4 GPU nodes x 8 GPUs, 24 h slots, checkpoint 10 min before the limit, log in the run dir:
#   sbatch -p gpu -N4 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=12 -t 24:00:00 \
#       --signal=USR1@600 -o /shared/runs/paper/slurm-%j.out \
#       launch/slurm.sh --config launch/configs/paper.yaml --run_dir /shared/runs/paper
#   # CPU nodes (gloo): 2 nodes x 2 ranks, 1 core each
#   sbatch -N2 --ntasks-per-node=2 --cpus-per-task=1 launch/slurm.sh --config launch/configs/demo.yaml --run_dir runs/x
#
# What it does, at every start (a requeued job may get other nodes):
#   - MASTER_ADDR = the first host of the allocation, MASTER_PORT = 20000 + job id % 20000 (or $MASTER_PORT);
#     every task maps SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID to RANK/WORLD_SIZE/LOCAL_RANK
#     (t2v_dist/distributed.py). GPU nodes: NCCL, task i of a node uses GPU i, so give --gpus-per-node
#     (not --gpus-per-task). CPU nodes: gloo, OMP_NUM_THREADS = --cpus-per-task.
#   - No torchrun and no deepspeed launcher: SLURM's USR1 (`--signal=USR1@LEAD`, without `B:`) reaches
#     every rank, which finishes its step, saves a checkpoint and exits with $T2V_PREEMPTED_EXIT_CODE.
#     LEAD must cover one step + one checkpoint + 60 s. SIGTERM does the same. A signal sent only to
#     this batch shell (`--signal=B:USR1@LEAD`, `scancel --batch`) is forwarded to the ranks.
#   - On that code the job requeues itself (`scontrol requeue`, same job id, log appended) while
#     SLURM_RESTART_COUNT < $T2V_MAX_REQUEUES, and resumes from the checkpoint; past the cap it fails with
#     a message. Any other non-zero exit (a crashed rank) fails the job with that code, without requeue.
#     SLURM waits CredExpire (AuthInfo, default 120 s) before a requeued job may start again.
#   - Every rank serves Prometheus metrics on $T2V_METRICS_PORT + local rank, bound to $T2V_METRICS_BIND,
#     and writes RUN_DIR/prometheus/rankNNNNN.json (file_sd target with rank, node, job_id labels).
#
# Environment (exported into the job by sbatch):
#   T2V_ROOT                 checkout holding launch/train.py (default: the one this script was submitted from)
#   T2V_PYTHON               interpreter (default: $T2V_ROOT/.venv/bin/python if present, else python3)
#   T2V_PREEMPTED_EXIT_CODE  exit code of ranks that saved a checkpoint after a signal (75)
#   T2V_MAX_REQUEUES         requeues after preemption before the job fails instead (10)
#   T2V_METRICS_BIND         metrics bind address (0.0.0.0: reachable by a cluster Prometheus)
#   T2V_METRICS_PORT         port of local rank 0 (9400)
#   T2V_METRICS_NODE_STRIDE  add node index x stride to the port (0); for several SLURM nodes on one host
#   T2V_TASK_EXIT_WAIT       seconds srun gives the other ranks after the first one exits, then kills them (60)
#   TORCH_EXTENSIONS_DIR     shared cache for DeepSpeed's JIT-built ops (CPU: built once, ~1 min)
# Dotted overrides after the script name go to launch/train.py and win over the ones set here.
set -uo pipefail

log() { echo "[slurm.sh job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }
[ -n "${SLURM_JOB_ID:-}" ] || die "run it with sbatch: sbatch [options] launch/slurm.sh [train.py flags]"

# The batch script runs from a copy in slurmd's spool: find the checkout from the submitted path.
if [ -z "${T2V_ROOT:-}" ]; then
  submitted=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n1)
  if [ -n "$submitted" ] && [ -f "$(dirname "$submitted")/train.py" ]; then
    T2V_ROOT=$(cd "$(dirname "$submitted")/.." && pwd)
  else
    T2V_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
  fi
fi
TRAIN=$T2V_ROOT/launch/train.py
[ -f "$TRAIN" ] || die "$TRAIN not found: set T2V_ROOT to the checkout"
if [ -z "${T2V_PYTHON:-}" ]; then
  if [ -x "$T2V_ROOT/.venv/bin/python" ]; then T2V_PYTHON=$T2V_ROOT/.venv/bin/python; else T2V_PYTHON=python3; fi
fi
PREEMPTED=${T2V_PREEMPTED_EXIT_CODE:-75}
MAX_REQUEUES=${T2V_MAX_REQUEUES:-10}
case "$PREEMPTED$MAX_REQUEUES" in *[!0-9]*) die "T2V_PREEMPTED_EXIT_CODE and T2V_MAX_REQUEUES must be integers";; esac
[ "$PREEMPTED" -gt 0 ] && [ "$PREEMPTED" -lt 126 ] || die "T2V_PREEMPTED_EXIT_CODE must be in 1..125 (got $PREEMPTED)"

# Rendezvous, recomputed at every start.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE  # from the submitting shell, if any: SLURM's apply
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
export PYTHONUNBUFFERED=1
export T2V_METRICS_PORT=${T2V_METRICS_PORT:-9400} T2V_METRICS_NODE_STRIDE=${T2V_METRICS_NODE_STRIDE:-0}
JOB_REF=$SLURM_JOB_ID
[ -n "${SLURM_ARRAY_JOB_ID:-}" ] && JOB_REF=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
log "start: ${SLURM_NTASKS} tasks on ${SLURM_JOB_NODELIST}, master ${MASTER_ADDR}:${MASTER_PORT}, python ${T2V_PYTHON}"

# Each task computes its metrics port from its node index, then becomes the training process.
srun --kill-on-bad-exit=0 --wait="${T2V_TASK_EXIT_WAIT:-60}" \
  bash -c 'exec "$0" -u "$1" --metrics.port=$((T2V_METRICS_PORT + SLURM_NODEID * T2V_METRICS_NODE_STRIDE)) "${@:2}"' \
  "$T2V_PYTHON" "$TRAIN" --train.preempted_exit_code="$PREEMPTED" --metrics.bind="${T2V_METRICS_BIND:-0.0.0.0}" "$@" &
SRUN=$!
# Forward a signal that reached only this shell; `wait` returns early on it, so wait again.
forwarded=0
trap 'forwarded=1; log "got USR1: forwarding to the ranks"; kill -USR1 $SRUN 2>/dev/null' USR1
trap 'forwarded=1; log "got TERM: forwarding to the ranks"; kill -TERM $SRUN 2>/dev/null' TERM
while :; do
  forwarded=0
  wait $SRUN; rc=$?
  [ $forwarded = 1 ] || break
done

if [ "$rc" = 0 ]; then
  log "training finished"
  exit 0
fi
if [ "$rc" = "$PREEMPTED" ]; then
  restarts=${SLURM_RESTART_COUNT:-0}
  if [ "$restarts" -lt "$MAX_REQUEUES" ]; then
    log "preempted, checkpoint saved: requeueing job $JOB_REF (requeue $((restarts + 1)) of at most $MAX_REQUEUES)"
    scontrol requeue "$JOB_REF" && exit 0
    log "scontrol requeue $JOB_REF failed: the job ends here; resubmit the same command to resume"
  else
    log "preempted, checkpoint saved, but the job was requeued $restarts times already" \
        "(T2V_MAX_REQUEUES=$MAX_REQUEUES): not requeued, the job fails; resubmit the same command to resume"
  fi
  exit "$rc"
fi
log "training failed with exit code $rc (see the ranks' errors above): not requeued"
exit "$rc"
