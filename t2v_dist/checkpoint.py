"""DeepSpeed checkpoints of a run: save / keep the last K / resume, plus the portable fp32 export.

Layout of `<run_dir>/checkpoints` (DeepSpeed's own, one folder per tag):

    step00001000/mp_rank_00_model_states.pt           module weights + our client state (rank 0 writes it)
    step00001000/*zero_pp_rank_R_mp_rank_00_optim_states.pt   rank R's ZeRO-2 partition (fp32 master + Adam)
    latest                                             tag of the newest complete checkpoint

A one-rank run trains without ZeRO (stage 0, see config.build_deepspeed_config): its checkpoint has no
partition files, the fp32 weights and the whole optimizer state are in the model-states file, and it
resumes at any world size as it is (`load` hands the full tensors to the ZeRO partitions).

`latest` is replaced atomically only after every rank has written its files (and rank 0 has marked
the tag `complete.json`), so a crash during a save leaves the previous checkpoint as the resume point.
Resuming never guesses: a missing or unreadable `latest` next to existing tags is an error that lists
the complete tags (`choose_resume`), and the newest complete checkpoint, regular or universal, wins.
The client state holds what DeepSpeed does not: the step, every rank's loader position and RNG states
(gathered to rank 0, which alone writes the model-states file), and the config with its hash.

Changing the world size: a ZeRO-2 checkpoint of several ranks is partitioned by rank. Convert it once with

    python -m deepspeed.checkpoint.ds_to_universal \
        --input_folder  RUN/checkpoints/step00001000 \
        --output_folder RUN/checkpoints/step00001000_universal

(which also writes RUN/checkpoints/latest_universal) and resume with
`--checkpoint.load_universal=true` or `--checkpoint.tag=step00001000_universal`. A universal checkpoint is
loaded only when it is the newest one (or named): once the resumed run has saved a newer regular
checkpoint, that one wins. Loader positions and RNG states are per rank and are dropped when the world
size differs.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
LATEST_UNIVERSAL = "latest_universal"
TAG_RE = re.compile(r"^step(\d{8,})$")
UNIVERSAL_TAG_RE = re.compile(r"^step(\d{8,})_universal$")
COMPLETE = "complete.json"  # written by rank 0 into a tag once every rank's files are on disk
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES_GLOB = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"  # one per data-parallel rank (ZeRO-2)
CONFIG_HISTORY = "config_history.jsonl"


class ResumeError(RuntimeError):
    """The run dir's checkpoints do not say unambiguously where to resume; the message says what to do."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk filled up); the previous one is still the resume point."""
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


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _disk_note(path: Path) -> str:
    """'the disk is full (12 MB free of 1 TB)' or the free space: torch reports ENOSPC as 'unexpected pos'."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    free = f"{usage.free / 2**20:,.0f} MiB free of {usage.total / 2**30:,.1f} GiB"
    if usage.free < max(256 * 2**20, usage.total // 100):
        return f"the disk holding {path} is full ({free}); free space there or set checkpoint.dir elsewhere"
    return f"{path} has {free}"


def save(engine, ckpt_dir: str | Path, step: int, client_state: Mapping[str, Any], keep_last: int) -> Path:
    """Collective save of tag `step########`; then `latest` points to it and older tags beyond `keep_last` go.

    If any rank fails to write its files (a full disk, a lost mount), every rank raises
    `CheckpointWriteError`, the incomplete tag is removed and `latest` still names the previous one.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    error: BaseException | None = None
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=dict(client_state), save_latest=False)
    except (OSError, RuntimeError) as exc:
        error = exc
        _barrier()  # the barrier that ends save_checkpoint, which the other ranks are waiting in
    # Every rank's partition is on disk before `latest` moves, or every rank stops.
    if _any_rank(error is not None, engine.device):
        note = _disk_note(ckpt_dir)
        _barrier()
        if _is_rank0():
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        what = f"this rank: {type(error).__name__}: {error}" if error else "another rank failed"
        raise CheckpointWriteError(f"writing checkpoint {ckpt_dir / tag} failed: {note}. The incomplete tag was "
                                   f"removed; '{LATEST}' still names the previous checkpoint. ({what})") from error
    if _is_rank0():
        _write_atomic(ckpt_dir / tag / COMPLETE, json.dumps({"step": int(step), "world_size": _world_size(),
                                                             "time": time.time()}))
        _write_atomic(ckpt_dir / LATEST, tag)
        tags = list_tags(ckpt_dir)
        # Only tags up to the new one are pruned: later ones are leftovers of a run that was rolled back.
        done = [t for t in tags if int(TAG_RE.match(t).group(1)) <= step]
        for old in done[:-keep_last]:
            shutil.rmtree(ckpt_dir / old)
    _barrier()
    return ckpt_dir / tag


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def find_latest(ckpt_dir: str | Path, universal: bool = False) -> str | None:
    """Tag named by `latest` (or `latest_universal`), None if there is none; raises if it names a missing folder."""
    pointer = Path(ckpt_dir) / (LATEST_UNIVERSAL if universal else LATEST)
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    if not tag or not (pointer.parent / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint {tag!r}, which is not a folder in {pointer.parent}")
    return tag


# --------------------------------------------------------------------------- which checkpoint to resume

@dataclass(frozen=True)
class Resume:
    tag: str
    step: int
    universal: bool  # made by ds_to_universal: loads at any world size


def tag_step(tag: str) -> int | None:
    m = TAG_RE.match(tag) or UNIVERSAL_TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def is_universal(tag_dir: Path) -> bool:
    return (tag_dir / "zero").is_dir()


def _partition_files(tag_dir: Path) -> int:
    return len(list(tag_dir.glob(OPTIM_STATES_GLOB)))


def is_partitioned(tag_dir: Path) -> bool:
    """A ZeRO checkpoint (partition files) or a universal one; False for a one-rank stage-0 checkpoint."""
    return is_universal(tag_dir) or _partition_files(tag_dir) > 0


def saved_world_size(tag_dir: Path) -> int:
    """Ranks that wrote a regular checkpoint: one optimizer partition file each (ZeRO), or one (stage 0)."""
    return _partition_files(tag_dir) or 1


def is_complete(tag_dir: Path) -> bool:
    """Every rank's files are there: the `complete.json` mark, or (older tags and ds_to_universal output) the files."""
    if not (tag_dir / MODEL_STATES).is_file():
        return False
    if is_universal(tag_dir) or (tag_dir / COMPLETE).is_file():
        return True
    return _partition_files(tag_dir) > 0


def complete_tags(ckpt_dir: str | Path) -> list[str]:
    """Complete regular and universal tags, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    tags = [p.name for p in d.iterdir() if p.is_dir() and tag_step(p.name) is not None and is_complete(p)]
    return sorted(tags, key=lambda t: (tag_step(t), t))


def _resume_hint(ckpt_dir: Path) -> str:
    tags = complete_tags(ckpt_dir)
    if not tags:
        return (f"{ckpt_dir} holds no complete checkpoint. To start from scratch, move {ckpt_dir} away or use "
                f"another --run_dir.")
    return (f"Complete checkpoints in {ckpt_dir} (oldest first): {', '.join(tags)}. Resume from one explicitly "
            f"with --checkpoint.tag=TAG (the newest: --checkpoint.tag={tags[-1]}), or use another --run_dir to "
            f"start from scratch.")


def _read_pointer(pointer: Path) -> Resume | None:
    """The complete tag that `latest` / `latest_universal` names; None if the file does not exist."""
    try:
        raw = pointer.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResumeError(f"{pointer} cannot be read ({exc}). {_resume_hint(pointer.parent)}") from exc
    try:
        tag = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        tag = None
    if not tag or tag_step(tag) is None:
        raise ResumeError(f"{pointer} is unreadable: it holds {raw[:40]!r}, not a checkpoint tag. "
                          f"{_resume_hint(pointer.parent)}")
    tag_dir = pointer.parent / tag
    if not tag_dir.is_dir() or not is_complete(tag_dir):
        state = "incomplete" if tag_dir.is_dir() else "missing"
        raise ResumeError(f"{pointer} names checkpoint {tag!r}, which is {state}. {_resume_hint(pointer.parent)}")
    return Resume(tag, tag_step(tag), is_universal(tag_dir))


def choose_resume(ckpt_dir: str | Path, world_size: int, tag: str | None = None,
                  load_universal: bool = False) -> Resume | None:
    """The checkpoint a run resumes from, None for a fresh run; `ResumeError` instead of any guess.

    - `tag` (checkpoint.tag) names one explicitly; it must be complete.
    - Otherwise `latest` names it. Tags without a readable `latest` are an error that lists the
      complete tags: never a silent start from step 0 or a rollback.
    - `latest_universal` is used only when it is newer than `latest` (or the only pointer); at the same
      step, when load_universal is set or the regular checkpoint has another world size.
    - A ZeRO checkpoint of another world size is an error that gives the ds_to_universal command; a
      one-rank stage-0 checkpoint loads at any world size.
    """
    d = Path(ckpt_dir)
    if tag is not None:
        tag_dir = d / tag
        if tag_step(tag) is None or not tag_dir.is_dir() or not is_complete(tag_dir):
            raise ResumeError(f"checkpoint.tag={tag}: {tag_dir} is not a complete checkpoint. {_resume_hint(d)}")
        chosen = Resume(tag, tag_step(tag), is_universal(tag_dir))
    else:
        regular = _read_pointer(d / LATEST)
        universal = _read_pointer(d / LATEST_UNIVERSAL)
        if regular is None and (list_tags(d) or (universal is None and complete_tags(d))):
            raise ResumeError(f"{d} holds checkpoints but no '{LATEST}' file, so it is not known which one is "
                              f"current. {_resume_hint(d)}")
        candidates = [c for c in (regular, universal) if c is not None]
        if not candidates:
            return None
        chosen = max(candidates, key=lambda c: c.step)
        if regular and universal and regular.step == universal.step:
            other_world = is_partitioned(d / regular.tag) and saved_world_size(d / regular.tag) != world_size
            chosen = universal if (load_universal or other_world) else regular
    if is_partitioned(d / chosen.tag) and not chosen.universal:
        saved = saved_world_size(d / chosen.tag)
        if saved != world_size:
            src = d / chosen.tag
            raise ResumeError(
                f"checkpoint {src} was written by {saved} ranks and this run has {world_size}: a ZeRO-2 checkpoint "
                f"is partitioned by rank. Convert it once with\n"
                f"    python -m deepspeed.checkpoint.ds_to_universal --input_folder {src} "
                f"--output_folder {src}_universal\n"
                f"then relaunch with --checkpoint.load_universal=true (or --checkpoint.tag={chosen.tag}_universal).")
    return chosen


def tag_to_resume(run_dir: str | Path, ckpt_dir: str | Path, tag: str | None) -> str | None:
    """checkpoint.tag, or None once it has been used: an earlier start of this run resumed from it (see
    `config_history.jsonl`) and has saved a checkpoint since. Relaunching the same command (a SLURM
    requeue) then continues from `latest` instead of rolling back again."""
    if tag is None or tag_step(tag) is None:
        return tag
    try:
        lines = (Path(run_dir) / CONFIG_HISTORY).read_text(encoding="utf-8").splitlines()
        history = [json.loads(line) for line in lines]
        used_at = max(h["unix_time"] for h in history if h.get("resumed_from") == tag)
    except (OSError, ValueError, KeyError):  # no history, none resumed from this tag, or an older format
        return tag
    latest = _read_pointer(Path(ckpt_dir) / LATEST)
    try:
        saved_at = json.loads((Path(ckpt_dir) / latest.tag / COMPLETE).read_text(encoding="utf-8"))["time"]
    except (AttributeError, OSError, ValueError, KeyError):
        return tag
    return None if saved_at > used_at else tag


def set_load_universal(ds_config: dict, resume: Resume | None) -> dict:
    """DeepSpeed loads universal checkpoints only with this flag, and regular ones only without it."""
    ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": bool(resume and resume.universal)}
    return ds_config


def _model_differences(tag_dir: Path, model: Mapping[str, Any] | None) -> str:
    """'model.n_layer: checkpoint 2, this config 3; ...' from the config saved in the checkpoint."""
    if model is None:
        return ""
    try:
        saved = torch.load(tag_dir / MODEL_STATES, map_location="cpu", mmap=True, weights_only=False)["config"]["model"]
    except Exception:  # noqa: BLE001 - only improves an error message
        return ""
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r}, this config {v!r}" for k, v in model.items()
             if saved.get(k) != v]
    return f" Differences: {'; '.join(diffs)}." if diffs else ""


def load(engine, ckpt_dir: str | Path, tag: str | None = None, model_config: Mapping[str, Any] | None = None
         ) -> dict | None:
    """Collective resume: weights, optimizer, LR schedule; returns the client state.

    `tag` is what `choose_resume` picked (None: choose now, from the engine's world size and
    load_universal flag). None when there is no checkpoint yet (a fresh run). `model_config` (the
    current config's model section) makes a mismatch error name the differing fields.
    """
    if tag is None:
        resume = choose_resume(ckpt_dir, _world_size(), load_universal=engine.load_universal_checkpoint())
        if resume is None:
            return None
        tag = resume.tag
    tag_dir = Path(ckpt_dir) / tag
    partitioned = is_partitioned(tag_dir)
    if partitioned and engine.zero_optimization_stage() == 0:
        raise ResumeError(f"checkpoint {tag_dir} is ZeRO-partitioned and this engine runs without ZeRO; build it "
                          f"with config.build_deepspeed_config(..., resume_partitioned=True)")
    try:
        if not partitioned and engine.zero_optimization_stage() > 0:
            return _load_full_into_zero(engine, tag_dir)
        load_path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise RuntimeError(f"checkpoint {tag_dir} does not fit the model this config builds (it was "
                           f"written with another model config or model code); resume with the config it was "
                           f"written with (run_dir/config.json) or start a new "
                           f"--run_dir.{_model_differences(tag_dir, model_config)} {exc}") from exc
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {ckpt_dir}")
    return client_state


def _load_full_into_zero(engine, tag_dir: Path) -> dict:
    """A stage-0 checkpoint (full fp32 weights and optimizer state in one file) into a ZeRO engine of any
    world size: every rank copies its fragment of each tensor (DeepSpeed's safe_set_full_* API).

    The optimizer state is matched to parameters by the order `config.optimizer_groups` gives them, the
    order the saved torch optimizer numbered them in."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    from t2v_dist.config import optimizer_groups

    saved = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=False)
    module = saved["module"]
    engine.module.load_state_dict(module)  # the low-precision copy; the fp32 master follows
    names = {id(p): n for n, p in engine.module.named_parameters()}
    params = [p for g in optimizer_groups(engine.module.parameters(), 0.0) for p in g["params"]]
    optim = saved["optimizer"]
    order = [i for g in optim["param_groups"] for i in g["params"]]
    if len(order) != len(params):
        raise RuntimeError(f"checkpoint {tag_dir}: its optimizer has {len(order)} parameters, the model "
                           f"{len(params)}: state_dict does not fit")
    states = [optim["state"].get(i, {}) for i in order]
    step = next((st["step"] for st in states if "step" in st), None)
    zero, base = engine.optimizer, engine.optimizer.optimizer
    # Adam creates its state at the first step; a resumed one needs it now, linked to every parameter's
    # fragment (what ZeRO does after its first step).
    for group in base.param_groups:
        for flat in group["params"]:
            st = base.state[flat]
            for key in ("exp_avg", "exp_avg_sq"):
                st.setdefault(key, torch.zeros_like(flat))
            if step is not None:  # torch's AdamW counts per parameter: here per flat fp32 partition
                st["step"] = torch.as_tensor(step, dtype=torch.float32).to(flat.device).clone()
    zero._lazy_init_hp_params_optimizer_state()
    for saved_group, group in zip(optim["param_groups"], base.param_groups):
        group["lr"] = saved_group["lr"]  # the schedule's next step() sets it only after the next update
        if "step" in saved_group:  # DeepSpeed's FusedAdam counts steps per group
            group["step"] = saved_group["step"]
    for p, state in zip(params, states):
        safe_set_full_fp32_param(p, module[names[id(p)]].float())
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                safe_set_full_optimizer_state(p, state[key].float(), key)
    if engine.lr_scheduler is not None and saved.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    engine.global_steps = saved.get("global_steps", 0)
    engine.global_samples = saved.get("global_samples", 0)
    engine.skipped_steps = saved.get("skipped_steps", 0)
    return saved


def record_config(run_dir: str | Path, config: Mapping[str, Any], config_hash: str, step: int,
                  tag: str | None) -> None:
    """Rank 0, once a start or resume is accepted: `config.json` and a line in `config_history.jsonl`.

    The history keeps every config the run's checkpoints were trained with, with the step it took over.
    """
    run_dir = Path(run_dir)
    _write_atomic(run_dir / "config.json", json.dumps(dict(config), indent=1))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "unix_time": time.time(), "step": int(step),
             "resumed_from": tag, "config_hash": config_hash, "job": os.environ.get("SLURM_JOB_ID"),
             "config": dict(config)}
    with open(run_dir / CONFIG_HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------------------------ fp32 export

def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def read_fp32(ckpt_dir: str | Path, tag: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 weights, client state) of checkpoint `tag`: merged from every rank's ZeRO partition by
    DeepSpeed's offline reader (no engine, no process group, any world size), or as saved (stage 0)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    client = torch.load(Path(ckpt_dir) / tag / MODEL_STATES, map_location="cpu", mmap=True, weights_only=False)
    if not is_partitioned(Path(ckpt_dir) / tag):
        as_fp32: dict[tuple, torch.Tensor] = {}  # one copy per storage: tied weights stay tied
        return {k: as_fp32.setdefault(_storage_key(v), v.float()) for k, v in client["module"].items()}, client
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag), client


def export_fp32(ckpt_dir: str | Path, out_path: str | Path, tag: str | None = None) -> dict[str, str]:
    """Merge the ZeRO partitions of `tag` (default: latest) into one fp32 safetensors file.

    safetensors refuses tensors that share memory, so a tied weight (the LM head tied to wte) is
    stored once and its other names go into the metadata; `load_fp32` restores them. The metadata
    also carries the step, config and config hash of the checkpoint. Returns the metadata.
    """
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    tag = tag or find_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"{ckpt_dir}: no '{LATEST}' checkpoint to export")
    state, client = read_fp32(ckpt_dir, tag)
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
