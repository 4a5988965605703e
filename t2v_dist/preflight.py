"""Checks a run's environment before DeepSpeed builds the engine, so a bad setting fails in seconds.

Each rank checks what it will touch: the train and val shard patterns, its metrics port, the run
dir and checkpoint dir (writable), and the free disk space there against one checkpoint's size
(the newest complete checkpoint's size on disk, or an estimate from the parameter count). The ranks
gather their findings, and if any rank found a problem every rank stops with the whole list.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import torch

from t2v_dist import checkpoint
from t2v_dist.config import Config, resolve_precision
from t2v_dist.data import expand_shards

# Per parameter: ZeRO-2 keeps fp32 master weights and both Adam moments (12 bytes), plus the module weights.
OPTIMIZER_BYTES_PER_PARAM = 12


class PreflightError(RuntimeError):
    """The run cannot work as configured; the message lists every problem found."""


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def checkpoint_bytes(cfg: Config, device_type: str) -> int:
    """One checkpoint's size: the newest complete one on disk, else params x (weight + optimizer bytes)."""
    tags = [t for t in checkpoint.complete_tags(cfg.checkpoint.dir) if not t.endswith("_universal")]
    if tags:
        size = 0
        for path in (Path(cfg.checkpoint.dir) / tags[-1]).rglob("*"):
            try:
                size += path.stat().st_size if path.is_file() else 0
            except OSError:  # pruned by a job that holds the run dir right now (the lock will say so)
                pass
        if size:
            return size
    from t2v_dist.model import T2VModel

    with torch.device("meta"):  # shapes only: no memory, no init
        params = T2VModel(cfg.model).num_params()
    weight = 2 if resolve_precision(cfg.train.precision, device_type) == "bf16" else 4
    return params * (weight + OPTIMIZER_BYTES_PER_PARAM)


def _writable(path: Path, key: str) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".preflight.{socket.gethostname()}.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"{key}: {path} is not writable ({exc.strerror or exc})"
    return None


def _port_free(bind: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter's HTTP server binds
        try:
            s.bind((bind, port))
        except OSError:
            return False
    return True


def problems(cfg: Config, local_rank: int, device_type: str) -> list[str]:
    """Everything wrong for this rank, as messages naming the config field; empty when all is well."""
    found: list[str] = []
    for key in ("train_shards", "val_shards"):
        spec = getattr(cfg.data, key)
        if key == "val_shards" and not spec:
            continue  # no validation set: evaluation reports sample videos only
        try:
            expand_shards(spec, f"data.{key}")
        except ValueError as exc:
            found.append(str(exc))
    m = cfg.metrics
    if m.enabled and not _port_free(m.bind, m.port + local_rank):
        found.append(f"metrics.port: {m.bind}:{m.port + local_rank} (metrics.port={m.port} + local rank {local_rank}) "
                     f"is in use; choose another metrics.port or set --metrics.enabled=false")
    run_dir, ckpt_dir = Path(cfg.run_dir), Path(cfg.checkpoint.dir)
    for path, key in ((run_dir, "run_dir"), (ckpt_dir, "checkpoint.dir")):
        error = _writable(path, key)
        if error:
            found.append(error)
    if not any(p.startswith("checkpoint.dir") for p in found):
        need = checkpoint_bytes(cfg, device_type)
        free = shutil.disk_usage(ckpt_dir).free
        if free < need:
            found.append(f"checkpoint.dir: {ckpt_dir} has {_gib(free)} free, one checkpoint of this model needs "
                         f"about {_gib(need)}; free space there or set checkpoint.dir elsewhere")
    return found


def check_all_ranks(cfg: Config, local_rank: int, device_type: str) -> None:
    """Collective when torch.distributed is initialized: if any rank found a problem, every rank raises
    `PreflightError` listing them all."""
    import torch.distributed as dist

    mine = problems(cfg, local_rank, device_type)
    if dist.is_available() and dist.is_initialized():
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (socket.gethostname(), mine))
    else:
        everyone = [(socket.gethostname(), mine)]
    lines: list[str] = []
    for rank, (host, found) in enumerate(everyone):
        lines += [f"{p} [rank {rank} on {host}]" for p in found if not any(p in line for line in lines)]
    if lines:
        raise PreflightError("preflight checks failed before DeepSpeed started:\n  - " + "\n  - ".join(lines))
