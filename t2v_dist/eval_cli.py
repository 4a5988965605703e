"""`t2v-eval`: the text-faithfulness evaluation of a trained model, as a table and eval.json.

    t2v-eval --run_dir runs/demo                       # latest checkpoint; val clips from the run's config
    t2v-eval --weights runs/demo/model.safetensors --val_shards 'data/demo/val-*.tar' --out /tmp/ev

The evaluation itself is `t2v_dist.evaluation.evaluate_model`: single-object prompts covering every
colour, shape and direction (seen and held-out combinations), several seeds each, scored by the
hand-written detectors, beside the floors (chance, a static first frame, shuffled captions), the motion
ratio and the teacher-forced frame PSNR against the copy-the-previous-frame baseline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2v_dist.generation import run_cli
from t2v_dist.inference import InferenceError, load_for_inference
from t2v_dist.tokenizer import load_tokenizer
from t2v_dist.video_io import write_contact_sheet

ATTRIBUTES = ("colour", "shape", "direction", "all")


def _pct(value: Any) -> str:
    return f"{100 * value:5.1f}%" if isinstance(value, (int, float)) else "    - "


def _accuracies(entry: Any) -> dict:
    """A score entry is {"accuracy": {attr: x}}, or {attr: x} itself."""
    if isinstance(entry, dict) and isinstance(entry.get("accuracy"), dict):
        return entry["accuracy"]
    return entry if isinstance(entry, dict) else {}


def format_report(report: dict) -> str:
    """The evaluation as a plain-text table (accuracies in %, one row per set of videos)."""
    faith = report.get("faithfulness", {})
    rows = [("generated", faith.get("n"), _accuracies(faith))]
    for split in ("seen", "unseen"):
        if split in faith:
            rows.append((f"  {split} combinations", faith[split].get("n"), _accuracies(faith[split])))
    for name, entry in report.get("floors", {}).items():
        rows.append((f"floor: {name.replace('_', ' ')}", entry.get("n") if isinstance(entry, dict) else None,
                     _accuracies(entry)))
    lines = [f"{'videos':<30} {'n':>5} " + " ".join(f"{a:>9}" for a in ATTRIBUTES)]
    for name, n, acc in rows:
        lines.append(f"{name:<30} {n if n is not None else '':>5} " + " ".join(f"{_pct(acc.get(a)):>9}" for a in ATTRIBUTES))
    motion = report.get("motion", {})
    if motion:
        lines.append(f"motion |dframe|: generated {motion.get('generated', float('nan')):.4f}, "
                     f"real {motion.get('real', float('nan')):.4f}, ratio {motion.get('ratio', float('nan')):.2f}")
    tf = report.get("teacher_forced", {})
    if "error" in tf:
        lines.append(f"teacher-forced frame PSNR: not measured ({tf['error']})")
    elif tf:
        lines.append(f"teacher-forced frame PSNR {tf.get('psnr_db', float('nan')):.2f} dB (MSE {tf.get('mse', float('nan')):.5f}); "
                     f"copy-previous baseline {tf.get('copy_previous_psnr_db', float('nan')):.2f} dB "
                     f"(MSE {tf.get('copy_previous_mse', float('nan')):.5f})")
    return "\n".join(lines)


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InferenceError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return value


def write_sheet(path: Path, videos, report: dict, per_row: int) -> Path:
    """The first seed's videos, one row each, with the prompt and what the detectors saw written under it."""
    specs, found = report["specs"][:per_row], report["faithfulness"]["detections"][:per_row]
    captions = [f"{s['caption']} ({'seen' if s['seen'] else 'UNSEEN'}) -> {d['colour']} {d['shape']} {d['direction']}"
                for s, d in zip(specs, found)]
    return write_contact_sheet(path, list(videos[:per_row]), scale=2, captions=captions)


def evaluate(run_dir: str | None = None, weights: str | None = None, tag: str | None = None,
             num_frames: int | None = None, seeds_per_prompt: int | None = None, batch_size: int | None = None,
             holdout: bool | None = None, val_shards: str | None = None, val_clips: int | None = None,
             seed: int = 0, textured_fraction: float = 0.0, out: str | None = None, device: str = "cpu") -> str:
    """Score how faithfully a trained model's videos follow their captions (synthetic shapes).

    Args:
        run_dir: a training run dir; its latest checkpoint is used (any world size). Or give --weights.
        weights: an exported .safetensors file (launch/export.py). Or give --run_dir.
        tag: a checkpoint of --run_dir, e.g. step00000100; default the latest.
        num_frames: frames per generated video (>= 2); default the run's eval.num_frames.
        seeds_per_prompt: videos per prompt (16 prompts); default the run's eval.faithfulness_seeds.
        batch_size: prompts generated together; default the run's eval.faithfulness_batch_size.
        holdout: the train shards were built with --holdout (report held-out combinations as unseen);
            default the run's eval.holdout.
        val_shards: val shards for the teacher-forced frame PSNR; default the run's data.val_shards
            ('' skips it).
        val_clips: val clips read for the PSNR; default the run's eval.faithfulness_val_clips.
        seed: generation seed (prompt i's noise comes from (seed, i)).
        textured_fraction: background of the reference clips (floors, real motion): match the train set.
        out: folder for eval.json and sheet.png; default RUN_DIR/eval/TAG, or WEIGHTS' folder/eval.
        device: cpu or cuda (bf16 on a GPU).
    """
    from t2v_dist.evaluation import evaluate_model, faithfulness_prompts, generate_for_specs

    model, meta = load_for_inference(run_dir=run_dir, tag=tag, weights=weights, device=device)
    e = meta["config"].eval
    frames = _positive("num_frames", e.num_frames if num_frames is None else num_frames, 2)
    if frames > model.cfg.max_frames:
        raise InferenceError(f"--num_frames {frames}: this model takes at most {model.cfg.max_frames} frames")
    seeds = _positive("seeds_per_prompt", getattr(e, "faithfulness_seeds", 3) if seeds_per_prompt is None
                      else seeds_per_prompt)
    batch = _positive("batch_size", getattr(e, "faithfulness_batch_size", 16) if batch_size is None else batch_size)
    clips = _positive("val_clips", getattr(e, "faithfulness_val_clips", 16) if val_clips is None else val_clips, 0)
    held_out = bool(getattr(e, "holdout", True) if holdout is None else holdout)
    seed = _positive("seed", seed, 0)
    shards = meta["config"].data.val_shards if val_shards is None else val_shards
    path = meta["config"].data.tokenizer_path
    tokenizer = load_tokenizer(path if path and Path(path).is_dir() else None)
    specs = faithfulness_prompts(seeds, holdout=held_out)
    with torch.inference_mode():
        videos = generate_for_specs(model, tokenizer, specs, frames, batch, seed)
        report = evaluate_model(model, tokenizer, num_frames=frames, seeds_per_prompt=seeds, batch_size=batch,
                                holdout=held_out, val_shards=(shards or None) if clips else None,
                                val_clips=clips or 1, seed=seed, textured_fraction=textured_fraction,
                                videos=videos, details=True)
    report["model"] = {k: meta[k] for k in ("source", "tag", "step", "config_hash", "device", "dtype")}
    report["settings"] = {"num_frames": frames, "seeds_per_prompt": seeds, "holdout": held_out, "seed": seed,
                          "val_shards": shards or None, "val_clips": clips, "textured_fraction": textured_fraction}
    out_dir = Path(out) if out else (Path(run_dir) / "eval" / str(meta["tag"]) if run_dir is not None
                                     else Path(weights).parent / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_sheet(out_dir / "sheet.png", videos, report, per_row=len(specs) // seeds)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    step = f" step {meta['step']}" if meta.get("step") is not None else ""
    return f"{meta['source']}{step}\n{format_report(report)}\nwrote {out_dir / 'eval.json'} and sheet.png"


def main(argv=None) -> None:
    run_cli(evaluate, "t2v-eval", argv)
