"""DeepSpeed checkpoints of a run: save / keep the last K / resume, plus the portable fp32 export.

Layout of `<run_dir>/checkpoints` (DeepSpeed's own, one folder per tag):

    step00001000/mp_rank_00_model_states.pt           module weights + our client state (rank 0 writes it)
    step00001000/*zero_pp_rank_R_mp_rank_00_optim_states.pt   rank R's ZeRO-2 partition (fp32 master + Adam)
    latest                                             tag of the newest complete checkpoint

`latest` is replaced atomically only after every rank has written its files, so a crash during a
save leaves the previous checkpoint as the resume point. The client state holds what DeepSpeed does
not: the step, every rank's loader position and RNG states (gathered to rank 0, which alone writes
the model-states file), and the config with its hash.

Changing the world size: a ZeRO-2 checkpoint is partitioned by rank. Convert it once with

    python -m deepspeed.checkpoint.ds_to_universal \
        --input_folder  RUN/checkpoints/step00001000 \
        --output_folder RUN/checkpoints/step00001000_universal

(which also writes RUN/checkpoints/latest_universal) and resume with
`--checkpoint.load_universal=true` (DeepSpeed config `"checkpoint": {"load_universal": true}`).
Loader positions and RNG states are per rank and are dropped when the world size differs.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
LATEST_UNIVERSAL = "latest_universal"
TAG_RE = re.compile(r"^step(\d{8,})$")
TIED_METADATA_KEY = "t2v_tied"  # safetensors metadata: JSON {alias: stored name} of tied weights


def tag_for(step: int) -> str:
    return f"step{step:08d}"


# --------------------------------------------------------------------------------- client state

def rng_state() -> dict:
    """This process's RNG states, as plain Python / tensors (no numpy objects in the pickle)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather(obj: Any) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def build_client_state(step: int, loader_state: Mapping[str, Any], config: Mapping[str, Any],
                       config_hash: str) -> dict:
    """Collective: every rank calls it; the result (on every rank) lists all ranks' loader and RNG states."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    per_rank = _gather({"loader": dict(loader_state), "rng": rng_state()})
    return {
        "step": int(step),
        "world_size": len(per_rank),
        "loader_states": [r["loader"] for r in per_rank],
        "rng_states": [r["rng"] for r in per_rank],
        "config": dict(config),
        "config_hash": config_hash,
        # Lets ds_to_universal convert our checkpoints without --inject_missing_state.
        UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
    }


def restore_rank_state(client_state: Mapping[str, Any], rank: int, world_size: int) -> dict | None:
    """Set this rank's RNG states and return its loader state; None if the checkpoint's world size differs."""
    if client_state.get("world_size") != world_size:
        return None
    set_rng_state(client_state["rng_states"][rank])
    return client_state["loader_states"][rank]


# ------------------------------------------------------------------------------- save and load

def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_tags(ckpt_dir: str | Path) -> list[str]:
    """Step tags present in `ckpt_dir`, oldest first (complete or not)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    tags = [p.name for p in d.iterdir() if p.is_dir() and TAG_RE.match(p.name)]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)))


def save(engine, ckpt_dir: str | Path, step: int, client_state: Mapping[str, Any], keep_last: int) -> Path:
    """Collective save of tag `step########`; then `latest` points to it and older tags beyond `keep_last` go."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=dict(client_state), save_latest=False)
    _barrier()  # every rank's partition is on disk before `latest` moves
    if _is_rank0():
        _write_atomic(ckpt_dir / LATEST, tag)
        tags = list_tags(ckpt_dir)
        # Only tags up to the new one are pruned: later ones are leftovers of a run that was rolled back.
        done = [t for t in tags if int(TAG_RE.match(t).group(1)) <= step]
        for old in done[:-keep_last]:
            shutil.rmtree(ckpt_dir / old)
    _barrier()
    return ckpt_dir / tag


def find_latest(ckpt_dir: str | Path, universal: bool = False) -> str | None:
    """Tag named by `latest` (or `latest_universal`), None if there is none; raises if it names a missing folder."""
    pointer = Path(ckpt_dir) / (LATEST_UNIVERSAL if universal else LATEST)
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    if not tag or not (pointer.parent / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint {tag!r}, which is not a folder in {pointer.parent}")
    return tag


def load(engine, ckpt_dir: str | Path) -> dict | None:
    """Collective resume from the latest checkpoint: weights, optimizer, LR schedule; returns the client state.

    None when `ckpt_dir` has no checkpoint yet (a fresh run).
    """
    tag = find_latest(ckpt_dir, universal=engine.load_universal_checkpoint())
    if tag is None:
        return None
    try:
        load_path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise RuntimeError(f"checkpoint {Path(ckpt_dir) / tag} does not fit the model this config builds (it was "
                           f"written with another model config or model code); resume with the config it was "
                           f"written with (run_dir/config.json) or start a new --run_dir. {exc}") from exc
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {ckpt_dir}")
    return client_state


# ------------------------------------------------------------------------------------ fp32 export

def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def export_fp32(ckpt_dir: str | Path, out_path: str | Path, tag: str | None = None) -> dict[str, str]:
    """Merge the ZeRO partitions of `tag` (default: latest) into one fp32 safetensors file.

    safetensors refuses tensors that share memory, so a tied weight (the LM head tied to wte) is
    stored once and its other names go into the metadata; `load_fp32` restores them. The metadata
    also carries the step, config and config hash of the checkpoint. Returns the metadata.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    tag = tag or find_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no '{LATEST}' checkpoint to export")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    stored: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = _storage_key(tensor)
        if key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
            stored[name] = tensor.detach().contiguous()
    client = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", mmap=True,
                        weights_only=False)
    metadata = {TIED_METADATA_KEY: json.dumps(tied, sort_keys=True), "tag": tag}
    for key in ("step", "config_hash"):
        if key in client:
            metadata[key] = str(client[key])
    if "config" in client:
        metadata["config"] = json.dumps(client["config"], sort_keys=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    save_file(stored, str(tmp), metadata=metadata)
    os.replace(tmp, out_path)
    return metadata


def load_fp32(model: torch.nn.Module, path: str | Path, strict: bool = True) -> dict[str, str]:
    """Load an `export_fp32` file into `model` (tied names restored); returns the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(path))
    for alias, name in json.loads(metadata.get(TIED_METADATA_KEY, "{}")).items():
        state[alias] = state[name]
    model.load_state_dict(state, strict=strict)
    return metadata
