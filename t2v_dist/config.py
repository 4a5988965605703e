"""Typed run configuration: YAML file + dotted CLI overrides -> `Config`, and what DeepSpeed needs from it.

    cfg = Config.load("launch/configs/demo.yaml", ["--model.preset=gpt2", "--train.max_steps=1000"])

Overrides are merged into the raw YAML mapping before anything is built, so `--model.preset=gpt2`
re-derives every model field from the preset except those the YAML or CLI set explicitly. Values
are converted by the dataclass field's type; unknown keys and bad values raise `ConfigError`
naming the dotted key. Relative paths are relative to the working directory.

Check a config before starting workers (what the launch scripts do):

    python -m t2v_dist.config --config launch/configs/demo.yaml --world-size 2 [overrides...]

List every field with its type, default and the value a config gives it:

    python -m t2v_dist.config --config launch/configs/demo.yaml --print
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from t2v_dist.data import DataConfig
from t2v_dist.model import ModelConfig
from t2v_dist.precision import choose_precision

REPO_ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "auto")
VIDEO_FORMATS = ("mp4", "gif", "png")
ONE_RANK_BUCKET = 200_000_000  # elements: GPT-2 small's gradients in one reduce call


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the dotted key."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0                  # global L2 norm; 0 disables clipping
    precision: str = "auto"                 # fp32 | bf16 | auto (bf16 where the GPU/CPU runs it natively)
    keep_freed_memory: bool = True          # CPU: keep freed host memory for the next step (host_memory.py)
    gradient_accumulation_steps: int = 1
    # One micro-batch is one packed batch of data.max_rows rows (see packing.py), so this stays 1:
    # grow the batch with data.max_rows / the token budget or with gradient_accumulation_steps.
    train_micro_batch_size_per_gpu: int = 1
    train_batch_size: int | None = None     # if set: must equal micro x accumulation x world size
    log_every: int = 10
    max_bad_steps: int = 5                  # consecutive non-finite losses before the run stops
    seed: int = 0
    init_from_gpt2: str | None = None       # local folder of a transformers GPT2LMHeadModel (never downloaded)
    log_keys: bool = False                  # append "step<TAB>key" per trained sample to run_dir/keys/rankR.tsv
    # Exit code after a preemption signal once the checkpoint is saved. 0 keeps the deepspeed launcher and
    # torchrun happy; launch/slurm.sh sets 75 and requeues the job only on that code.
    preempted_exit_code: int = 0

    def __post_init__(self):
        self.betas = tuple(self.betas)
        _require(self.max_steps > 0, "train.max_steps", f"must be > 0, got {self.max_steps}")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, "train.min_lr", f"must be in [0, train.lr={self.lr}], got {self.min_lr}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
                 f"must be two values in [0, 1), got {self.betas}")
        _require(self.eps > 0, "train.eps", f"must be > 0, got {self.eps}")
        _require(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        _require(self.precision in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        _require(self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps",
                 f"must be >= 1, got {self.gradient_accumulation_steps}")
        _require(self.train_micro_batch_size_per_gpu == 1, "train.train_micro_batch_size_per_gpu",
                 f"must be 1 (one micro-batch is one packed batch of data.max_rows rows), "
                 f"got {self.train_micro_batch_size_per_gpu}")
        _require(self.train_batch_size is None or self.train_batch_size >= 1, "train.train_batch_size",
                 f"must be >= 1 or null, got {self.train_batch_size}")
        _require(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _require(self.max_bad_steps >= 1, "train.max_bad_steps", f"must be >= 1, got {self.max_bad_steps}")
        _require(self.seed >= 0, "train.seed", f"must be >= 0, got {self.seed}")
        _require(0 <= self.preempted_exit_code <= 255, "train.preempted_exit_code",
                 f"must be an exit status in [0, 255], got {self.preempted_exit_code}")


@dataclass
class EvalConfig:
    every: int = 500                        # optimizer steps between evaluations; 0 disables
    batches: int = 4                        # held-out packed batches per loss evaluation
    prompts: list[str] = field(default_factory=lambda: [
        "a red circle moves left", "a blue square moves right", "a green triangle moves up"])
    num_frames: int = 16
    formats: list[str] = field(default_factory=lambda: list(VIDEO_FORMATS))
    fps: int = 8
    scale: int = 4                          # nearest-neighbour upscale of saved videos, for viewing
    seed: int = 0
    # Text faithfulness on the synthetic shapes (t2v_dist.evaluation), on rank 0: eval.json beside the samples.
    faithfulness: bool = True
    faithfulness_seeds: int = 2             # videos per prompt (16 prompts)
    faithfulness_batch_size: int = 16       # prompts per generate call
    faithfulness_val_clips: int = 8         # val clips for the teacher-forced frame PSNR (0 skips it)
    holdout: bool = True                    # the train shards were built with --holdout: report unseen prompts apart

    def __post_init__(self):
        _require(self.every >= 0, "eval.every", f"must be >= 0 (0 disables), got {self.every}")
        _require(self.faithfulness_seeds >= 1, "eval.faithfulness_seeds",
                 f"must be >= 1, got {self.faithfulness_seeds}")
        _require(self.faithfulness_batch_size >= 1, "eval.faithfulness_batch_size",
                 f"must be >= 1, got {self.faithfulness_batch_size}")
        _require(self.faithfulness_val_clips >= 0, "eval.faithfulness_val_clips",
                 f"must be >= 0, got {self.faithfulness_val_clips}")
        _require(not self.faithfulness or self.num_frames >= 2, "eval.num_frames",
                 f"must be >= 2 with eval.faithfulness (direction needs motion), got {self.num_frames}")
        _require(self.batches >= 1, "eval.batches", f"must be >= 1, got {self.batches}")
        _require(all(isinstance(p, str) and p.strip() for p in self.prompts), "eval.prompts",
                 "must be non-empty strings")
        _require(self.num_frames >= 1, "eval.num_frames", f"must be >= 1, got {self.num_frames}")
        bad = [f for f in self.formats if f not in VIDEO_FORMATS]
        _require(not bad, "eval.formats", f"unknown {bad}; choose from {VIDEO_FORMATS}")
        _require(self.fps >= 1, "eval.fps", f"must be >= 1, got {self.fps}")
        _require(self.scale >= 1, "eval.scale", f"must be >= 1, got {self.scale}")


@dataclass
class CheckpointConfig:
    every: int = 1000                       # optimizer steps between checkpoints; 0: only at the end / on preemption
    keep_last: int = 3
    dir: str | None = None                  # default: <run_dir>/checkpoints
    # Resume from a universal checkpoint (made by ds_to_universal) with a different world size; used only
    # when it is the newest checkpoint (or ties with the regular one of its step).
    load_universal: bool = False
    tag: str | None = None                  # resume from this tag (e.g. step00001000) instead of `latest`
    # Seconds from a preemption signal to the checkpoint on disk: eval/sample work stops at the next
    # batch/prompt; a later checkpoint is logged as an error (deepspeed's launcher kills ranks after 30 s).
    preempt_deadline_s: float = 25.0

    def __post_init__(self):
        _require(self.every >= 0, "checkpoint.every", f"must be >= 0, got {self.every}")
        _require(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")
        _require(self.preempt_deadline_s > 0, "checkpoint.preempt_deadline_s",
                 f"must be > 0, got {self.preempt_deadline_s}")


@dataclass
class MetricsConfig:
    enabled: bool = True
    port: int = 9400                        # Prometheus port of local rank 0; local rank r serves port + r
    bind: str = "127.0.0.1"                 # set 0.0.0.0 to be scraped from other hosts
    peak_tflops: float = 0.0                # per-device peak for MFU; 0: known GPUs only, MFU absent otherwise

    def __post_init__(self):
        _require(1 <= self.port <= 65535, "metrics.port", f"must be in [1, 65535], got {self.port}")
        _require(bool(self.bind), "metrics.bind", "must be a host address")
        _require(self.peak_tflops >= 0, "metrics.peak_tflops", f"must be >= 0, got {self.peak_tflops}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    run_dir: str = "runs/default"
    deepspeed_config: str = "launch/ds_zero2.json"

    def __post_init__(self):
        _require(bool(self.run_dir), "run_dir", "must be a directory path")
        m, d = self.model, self.data
        _require(d.image_size == m.image_size, "data.image_size",
                 f"{d.image_size} differs from model.image_size={m.image_size}")
        _require(d.frames <= m.max_frames, "data.frames",
                 f"{d.frames} exceeds model.max_frames={m.max_frames} (the length of the noise schedule)")
        _require(self.eval.num_frames <= m.max_frames, "eval.num_frames",
                 f"{self.eval.num_frames} exceeds model.max_frames={m.max_frames}")
        _require(d.max_caption_tokens <= m.max_caption_tokens, "data.max_caption_tokens",
                 f"{d.max_caption_tokens} exceeds model.max_caption_tokens={m.max_caption_tokens}")
        longest = d.max_caption_tokens + d.frames - 1
        _require(longest <= m.n_positions, "data.frames",
                 f"data.max_caption_tokens + data.frames - 1 = {longest} exceeds model.n_positions={m.n_positions}")
        if self.checkpoint.dir is None:
            self.checkpoint.dir = str(Path(self.run_dir) / "checkpoints")

    @classmethod
    def load(cls, path: str | Path | None, overrides: typing.Sequence[str] = ()) -> "Config":
        """Read the YAML file `path` (None: defaults only) and apply dotted CLI overrides."""
        raw: dict = {}
        if path is not None:
            path = Path(path)
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot read config: {exc}") from exc
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
        for dotted, text in parse_overrides(overrides):
            _set_dotted(raw, dotted, _parse_cli_value(text, _field_type(dotted), dotted))
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> "Config":
        _check_keys(cls, raw, "")
        sections: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name == "model":
                sections["model"] = _build_model(value)
            else:
                sections[f.name] = _coerce(value, _hints(cls)[f.name], f.name)
        return cls(**sections)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of `to_dict()`: equal configs hash equal across processes and hosts."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def check_world_size(self, world_size: int) -> int:
        """Global batch in micro-batches for `world_size` ranks; raises if train.train_batch_size disagrees."""
        if world_size < 1:
            raise ConfigError(f"world_size must be >= 1, got {world_size}")
        t = self.train
        total = t.train_micro_batch_size_per_gpu * t.gradient_accumulation_steps * world_size
        if t.train_batch_size is not None and t.train_batch_size != total:
            raise ConfigError(
                f"train.train_batch_size={t.train_batch_size} must equal train_micro_batch_size_per_gpu "
                f"({t.train_micro_batch_size_per_gpu}) x gradient_accumulation_steps "
                f"({t.gradient_accumulation_steps}) x world size ({world_size}) = {total}")
        return total


# ----------------------------------------------------------------------------- building and typing

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_keys(cls, raw: Any, prefix: str) -> None:
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")


def _build_model(raw: Any) -> ModelConfig:
    raw = {} if raw is None else raw
    _check_keys(ModelConfig, raw, "model.")
    hints = _hints(ModelConfig)
    values = {k: _coerce(v, hints[k], f"model.{k}") for k, v in raw.items()}
    preset = values.pop("preset", ModelConfig.preset)
    try:
        return ModelConfig.from_preset(preset, **values)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc


def _build_dataclass(cls, raw: Any, key: str):
    raw = {} if raw is None else raw
    _check_keys(cls, raw, f"{key}.")
    hints = _hints(cls)
    values = {k: _coerce(v, hints[k], f"{key}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML or CLI value to the field type `tp`; errors name `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: must be one of {args}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _plain(obj: Any) -> Any:
    """JSON-ready copy: tuples become lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------- CLI overrides

def parse_overrides(args: typing.Sequence[str]) -> list[tuple[str, str]]:
    """`--a.b=v`, `a.b=v` or `--a.b v` -> [("a.b", "v"), ...]."""
    pairs, i = [], 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        key = arg[2:] if arg.startswith("--") else arg
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif arg.startswith("--") and i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            raise ConfigError(f"override {arg!r}: expected --section.key=value")
        if not key:
            raise ConfigError(f"override {arg!r}: empty key")
        pairs.append((key, value))
    return pairs


def _field_type(dotted: str) -> Any:
    """Type of the field a dotted key names, walking nested dataclasses from Config."""
    tp: Any = Config
    walked = []
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"unknown config key {dotted}: {'.'.join(walked)} has no sub-keys")
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {'.'.join(walked + close)}?)" if close else ""
            raise ConfigError(f"unknown config key {dotted}{hint}")
        tp = _hints(tp)[part]
        walked.append(part)
    return tp


def _accepts_str(tp: Any) -> bool:
    return tp is str or str in typing.get_args(tp)


def _parse_cli_value(text: str, tp: Any, key: str) -> Any:
    """CLI text -> Python value: string fields keep the text verbatim, others parse as YAML."""
    if text.lower() in ("null", "none", "~") and type(None) in typing.get_args(tp):
        return None
    if _accepts_str(tp) and typing.get_origin(tp) not in (list, tuple, dict):
        return text
    try:
        value = yaml.safe_load(text)
        if typing.get_origin(tp) in (list, tuple) and not isinstance(value, list):
            value = [yaml.safe_load(item) for item in text.split(",")]  # --train.betas=0.9,0.95
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse {text!r}: {exc}") from exc
    return value


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a mapping in the config file")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------- DeepSpeed inputs

def resolve_precision(precision: str, device_type: str) -> str:
    """'fp32' or 'bf16' for this device: auto means bf16 where the GPU or CPU runs it natively (precision.py)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: must be one of {PRECISIONS}, got {precision!r}")
    return choose_precision(precision, device_type).precision


def _strip_comments(obj: Any) -> Any:
    """Drop "_comment"-style keys (JSON has no comments; DeepSpeed must not see them)."""
    if isinstance(obj, dict):
        return {k: _strip_comments(v) for k, v in obj.items() if not str(k).startswith("_")}
    return obj


def _resolve_ds_path(path: str) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    if (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise ConfigError(f"deepspeed_config: {path} not found (relative to {Path.cwd()} or {REPO_ROOT})")


def build_deepspeed_config(cfg: Config, world_size: int, device_type: str, resume_partitioned: bool = False) -> dict:
    """The DeepSpeed config dict: the JSON file with batch sizes, precision and clipping from `cfg`.

    The optimizer and LR schedule are passed to `deepspeed.initialize` as client objects
    (`build_optimizer`, `lr_schedule.build_lr_scheduler`), so the JSON has no optimizer block.
    One rank has nothing to partition, reduce or overlap: its engine is the plain one (ZeRO stage 0,
    fp32 weights, bf16 by `torch.autocast`, so a step is the bare model step), unless it resumes a
    ZeRO-partitioned or universal checkpoint (`resume_partitioned`), which loads into ZeRO-1.
    """
    path = _resolve_ds_path(cfg.deepspeed_config)
    try:
        ds = _strip_comments(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"deepspeed_config: cannot read {path}: {exc}") from exc
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"deepspeed_config: {path} has an '{key}' block; the trainer passes its own")
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.train_micro_batch_size_per_gpu
    ds["gradient_accumulation_steps"] = t.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.check_world_size(world_size)
    ds["gradient_clipping"] = t.grad_clip
    bf16 = resolve_precision(t.precision, device_type) == "bf16"
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds["fp16"] = {"enabled": False}
    zero = ds.get("zero_optimization", {})
    if world_size == 1 and zero.get("stage") == 2:
        if resume_partitioned:
            # ZeRO-1 without per-gradient hooks reads ZeRO files and universal checkpoints on one rank.
            ds["zero_optimization"] = {**zero, "stage": 1, "overlap_comm": False,
                                       "reduce_bucket_size": ONE_RANK_BUCKET, "allgather_bucket_size": ONE_RANK_BUCKET}
        else:
            # DeepSpeed's bf16 mode and ZeRO's flat buffers cost one rank 20-60% of a step (BENCHMARKS.md,
            # "One rank"); its checkpoint (weights + optimizer in one file) resumes at any world size
            # (checkpoint.load).
            ds["zero_optimization"] = {"stage": 0}
            # The trainer clips (trainer.clip_gradients): DeepSpeed's stage-0 clipping drops the norm it computes.
            ds["gradient_clipping"] = 0.0
            if bf16:
                ds["bf16"] = {"enabled": False}
                ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if cfg.checkpoint.load_universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    return ds


def optimizer_groups(params: typing.Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Parameter groups in a fixed order (a saved optimizer state numbers parameters in this order):
    matrices with weight decay, then biases and norm gains without."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("build_optimizer: no trainable parameters")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(params: typing.Iterable[torch.nn.Parameter], cfg: TrainConfig,
                    device_type: str) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and norm gains), GPT-2 style.

    GPU: DeepSpeed FusedAdam (multi-tensor CUDA kernel). Elsewhere: torch's fused AdamW, the
    fastest CPU AdamW for GPT-2 small in bench/adamw_cpu.py: 4-26x the per-tensor loop, and ~1.7x
    DeepSpeedCPUAdam on the flat fp32 partition that ZeRO-2 hands the optimizer.
    """
    groups = optimizer_groups(params, cfg.weight_decay)
    if device_type == "cuda":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, adam_w_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


# ------------------------------------------------------------------------------------ CLI check

def main(argv: typing.Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Validate a run config and print it resolved, with its hash.",
                                     epilog="Overrides: --section.key=value, e.g. --train.max_steps=1000.")
    parser.add_argument("--config", help="YAML config file (default: the built-in defaults)")
    parser.add_argument("--world-size", type=int, default=1, help="number of ranks the run will use")
    parser.add_argument("--print", action="store_true", dest="print_fields",
                        help="list every field: dotted key, type, default and the value this config gives it")
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = Config.load(args.config, overrides)
        cfg.check_world_size(args.world_size)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_fields:
        print(describe_fields(cfg))
        return 0
    print(json.dumps({"config_hash": cfg.config_hash(), "config": cfg.to_dict()}, indent=2))
    return 0


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if not typing.get_args(tp) else str(tp).replace("typing.", "")


def field_rows(cfg: Config | None = None) -> list[tuple[str, str, Any, Any]]:
    """(dotted key, type, default, value in `cfg`) for every leaf field; sections first-level in order."""
    cfg = cfg or Config()
    defaults = Config()
    rows = []

    def walk(cls, obj, default, prefix):
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            value, dflt = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(tp):
                walk(tp, value, dflt, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", _type_name(tp), _plain(dflt), _plain(value)))

    walk(Config, cfg, defaults, "")
    return rows


def sections() -> tuple[list[str], list[str]]:
    """(config sections, plain top-level keys), in declaration order."""
    hints = _hints(Config)
    names = [f.name for f in dataclasses.fields(Config)]
    sections = [n for n in names if dataclasses.is_dataclass(hints[n])]
    return sections, [n for n in names if n not in sections]


def describe_fields(cfg: Config | None = None) -> str:
    rows = [("key", "type", "default", "value")]
    rows += [(k, t, json.dumps(d), json.dumps(v)) for k, t, d, v in field_rows(cfg)]
    widths = [min(32, max(len(r[i]) for r in rows)) for i in range(3)]  # a long list default overflows its column
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


if __name__ == "__main__":
    sys.exit(main())
