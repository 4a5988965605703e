"""Load a trained model for inference: from a run dir's checkpoint (any world size) or an exported file.

    model, meta = load_for_inference(run_dir="runs/demo")                 # latest checkpoint
    model, meta = load_for_inference(run_dir="runs/demo", tag="step00000100")
    model, meta = load_for_inference(weights="runs/demo/model.safetensors", device="cuda")

A ZeRO-2 checkpoint is merged from every rank's partition of the fp32 master weights (DeepSpeed's
offline reader; no engine, no process group), so a checkpoint written by 2 or 64 ranks loads the same
way. The model is in eval mode, fp32 on the CPU and bf16 on a GPU. Every failure raises
`InferenceError` with a one-line message that names the file or the flag.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from t2v_dist import checkpoint
from t2v_dist.config import Config, ConfigError
from t2v_dist.model import T2VModel


class InferenceError(ValueError):
    """A model could not be loaded, or the inference input does not fit it."""


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N'; a GPU that is not there is an error, not a silent CPU run."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InferenceError(f"--device {device!r}: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InferenceError(f"--device {device!r}: choose cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {device!r}: no CUDA device is available")
    return dev


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The run's checkpoint folder: run_dir/checkpoints, or checkpoint.dir of the run's config.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InferenceError(f"--run_dir {run_dir}: not a directory")
    default = run_dir / "checkpoints"
    config_json = run_dir / "config.json"
    if not default.is_dir() and config_json.is_file():
        try:
            configured = json.loads(config_json.read_text(encoding="utf-8")).get("checkpoint", {}).get("dir")
        except (OSError, ValueError, AttributeError):
            configured = None
        if configured and Path(configured).is_dir():
            return Path(configured)
    return default


def _pick_tag(ckpt_dir: Path, tag: str | None) -> str:
    tags = checkpoint.list_tags(ckpt_dir)
    if tag is not None:
        if not (ckpt_dir / tag).is_dir():
            known = ", ".join(tags) if tags else "none"
            raise InferenceError(f"--tag {tag}: no such checkpoint in {ckpt_dir} (tags: {known})")
        return tag
    try:
        latest = checkpoint.find_latest(ckpt_dir)
    except FileNotFoundError as exc:
        raise InferenceError(str(exc)) from None
    if latest is None:
        hint = f"; incomplete tags {', '.join(tags)} can be loaded with --tag" if tags else ""
        raise InferenceError(f"no checkpoint in {ckpt_dir} (no '{checkpoint.LATEST}' file){hint}")
    return latest


def _config_of(raw: Any, source: str) -> Config:
    try:
        if isinstance(raw, str):
            raw = json.loads(raw)
        return Config.from_dict(raw)
    except (ValueError, TypeError, ConfigError) as exc:
        raise InferenceError(f"{source}: the stored config does not fit this version of the code: {exc}") from None


def _build(cfg: Config, state: dict[str, torch.Tensor], source: str) -> T2VModel:
    model = T2VModel(cfg.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InferenceError(f"{source}: the weights do not fit the model of its config: {first}") from None
    return model


def _from_checkpoint(run_dir: str | Path, tag: str | None) -> tuple[T2VModel, dict]:
    ckpt_dir = checkpoint_dir(run_dir)
    tag = _pick_tag(ckpt_dir, tag)
    source = str(ckpt_dir / tag)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed's reader prints its progress to stdout
            state, client = checkpoint.read_fp32(ckpt_dir, tag)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, AssertionError) as exc:  # DeepSpeed asserts too
        raise InferenceError(f"{source}: cannot read the checkpoint: {type(exc).__name__}: {exc}") from None
    if "config" not in client:
        raise InferenceError(f"{source}: the checkpoint holds no config (was it written by launch/train.py?)")
    cfg = _config_of(client["config"], source)
    meta = {"source": source, "tag": tag, "step": client.get("step"), "config_hash": client.get("config_hash"),
            "world_size": client.get("world_size"), "config": cfg}
    return _build(cfg, state, source), meta


def _from_weights(weights: str | Path) -> tuple[T2VModel, dict]:
    from safetensors import SafetensorError

    from t2v_dist.export import load_exported

    path = Path(weights)
    if not path.is_file():
        raise InferenceError(f"--weights {path}: no such file")
    try:
        model, stored = load_exported(path)
    except ConfigError as exc:
        raise InferenceError(f"{path}: the stored config does not fit this version of the code: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: names or shapes differ
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InferenceError(f"{path}: the weights do not fit the model of its config: {first}") from None
    except (OSError, SafetensorError, ValueError) as exc:
        raise InferenceError(f"--weights {path}: not a readable exported model: {exc}") from None
    step = stored.get("step")
    meta = {"source": str(path), "tag": stored.get("tag"), "step": int(step) if step and step.isdigit() else step,
            "config_hash": stored.get("config_hash"), "world_size": None,
            "config": _config_of(stored["config"], str(path))}
    return model, meta


def load_for_inference(run_dir: str | os.PathLike | None = None, tag: str | None = None,
                       weights: str | os.PathLike | None = None, device: str = "cpu") -> tuple[T2VModel, dict]:
    """The model of a run's latest (or `tag`) checkpoint, or of an exported safetensors file.

    Returns (model in eval mode on `device`, bf16 on a GPU; meta) where meta holds `source`, `tag`,
    `step`, `config_hash`, `world_size` (of the training job; None for a file) and `config` (Config).
    """
    if (run_dir is None) == (weights is None):
        raise InferenceError("give exactly one of --run_dir (a training run) or --weights (an exported file)")
    if tag is not None and run_dir is None:
        raise InferenceError("--tag selects a checkpoint of --run_dir; it does not apply to --weights")
    dev = resolve_device(device)
    model, meta = _from_checkpoint(run_dir, tag) if run_dir is not None else _from_weights(weights)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    meta["device"], meta["dtype"] = str(dev), str(dtype).removeprefix("torch.")
    return model.to(device=dev, dtype=dtype).eval(), meta
