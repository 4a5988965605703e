"""Consolidated fp32 weights: one safetensors file from a ZeRO checkpoint, and back into a model.

    python launch/export.py --run_dir runs/demo --out runs/demo/model.safetensors
    model, meta = load_exported("runs/demo/model.safetensors")   # ready for model.generate(...)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from t2v_dist.checkpoint import export_fp32, load_fp32
from t2v_dist.config import Config
from t2v_dist.model import T2VModel


def export_run(run_dir: str | Path, out: str | Path | None = None, tag: str | None = None) -> Path:
    """Merge the ZeRO partitions of a run's latest (or `tag`) checkpoint into `out` (default run_dir/model.safetensors)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "model.safetensors"
    export_fp32(run_dir / "checkpoints", out, tag=tag)
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[T2VModel, dict]:
    """Build the model from the config stored in the file's metadata and load its weights (strict)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' in the safetensors metadata; was it written by export_fp32?")
    model = T2VModel(Config.from_dict(json.loads(meta["config"])).model)
    load_fp32(model, path, strict=True)
    return model.to(device).eval(), meta
