#!/usr/bin/env bash
# T2V_PYTHON for launch/slurm.sh: each SLURM task runs python inside the image with Apptainer.
#   T2V_IMAGE=/shared/images/t2v-dist.sif T2V_PYTHON=$PWD/container/apptainer-python.sh sbatch ... launch/slurm.sh ...
#   T2V_APPTAINER_ARGS  more `apptainer exec` flags, e.g. "--bind /shared" (the run and data storage)
# --nv makes the node's GPUs and driver visible; --cleanenv is not used, so SLURM's and slurm.sh's
# variables (RANK mapping, MASTER_ADDR, metrics) reach the ranks. The image's entry point moves the
# compiler caches off the read-only image. slurm.sh passes the checkout's launch/train.py: the checkout
# must be visible in the container (Apptainer binds $HOME and the submit dir; else --bind it).
set -euo pipefail
: "${T2V_IMAGE:?set T2V_IMAGE to the .sif (or docker://...) image}"
nv=--nv
command -v nvidia-smi >/dev/null 2>&1 || nv=
# shellcheck disable=SC2086  # T2V_APPTAINER_ARGS is a list of flags
exec apptainer exec $nv ${T2V_APPTAINER_ARGS:-} "$T2V_IMAGE" /opt/t2v/container/entrypoint.sh python "$@"
