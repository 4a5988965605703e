"""Who am I in the job: rank, world size, local rank and device, from any launcher.

Supported launchers, each setting its own variables:
  - `deepspeed` / `torchrun`: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
  - `srun python launch/train.py` under SLURM: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (the
    rendezvous address comes from MASTER_ADDR/MASTER_PORT, which launch/slurm.sh exports);
  - nothing: a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    node: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_picked_port: str | None = None  # MASTER_PORT chosen here for a single process (see init_distributed)


def _export_launcher_env() -> None:
    """Fill the torch.distributed env:// variables from SLURM's when a launcher did not set them."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "RANK" not in env:  # plain `python launch/train.py`
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("LOCAL_RANK", "0")
    if int(env["WORLD_SIZE"]) == 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in env:
            global _picked_port
            _picked_port = env["MASTER_PORT"] = str(_free_port())
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise RuntimeError(f"multi-process run without {', '.join(missing)}: launch with deepspeed, torchrun, or "
                           f"launch/slurm.sh, or export them")


def init_distributed(timeout_s: int = 600) -> DistEnv:
    """Initialise torch.distributed through DeepSpeed (NCCL on CUDA, gloo on CPU) and pick the device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    _export_launcher_env()
    local_rank = int(os.environ["LOCAL_RANK"])
    accel = get_accelerator()
    if accel.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    import torch.distributed as dist

    # A single process picks its own rendezvous port; another process may take it before the store binds
    # it (seen on a busy machine), so it picks again. A port given by a launcher or the user is kept.
    own_port = _picked_port is not None and os.environ.get("MASTER_PORT") == _picked_port
    for attempt in range(3 if own_port else 1):
        try:
            deepspeed.init_distributed(dist_backend=accel.communication_backend_name(),
                                       timeout=timedelta(seconds=timeout_s))
            break
        except dist.DistNetworkError as exc:
            if "EADDRINUSE" not in str(exc) or attempt == 2 or not own_port:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())

    if device.type == "cpu" and dist.get_world_size() > 1:
        _unlink_shm_allreduce_buffer(dist)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=device, node=socket.gethostname())


def _unlink_shm_allreduce_buffer(dist) -> None:
    """Remove this rank's name of DeepSpeed's CPU all-reduce buffer from /dev/shm once every rank has mapped it.

    When all ranks share a host, DeepSpeed's CPU backend creates a 66 MB shared-memory file per rank
    (deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>, ops/csrc/cpu/comm/shm.cpp) and never
    unlinks it: every 2-rank CPU run left 132 MB of /dev/shm (RAM) behind, until a machine full of finished
    runs killed a new one out of memory. After the barrier every rank has opened every other rank's file, so
    the names can go; the mappings live on until the processes exit, and a crash leaves nothing behind.
    """
    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    Path("/dev/shm", name).unlink(missing_ok=True)
