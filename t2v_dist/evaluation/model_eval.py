"""One evaluation of a model: generate the faithfulness prompts' videos, score them beside their
floors, and measure motion and teacher-forced frame error. Used by the trainer and `t2v-eval`."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from t2v_dist.evaluation.detectors import detect
from t2v_dist.evaluation.faithfulness import (PromptSpec, faithfulness_prompts, floors, reference_clips,
                                              score_detections)
from t2v_dist.evaluation.video_metrics import motion_magnitude, read_val_clips, teacher_forced
from t2v_dist.tokenizer import encode_caption, load_tokenizer

log = logging.getLogger("t2v_dist.evaluation")


@torch.no_grad()
def generate_for_specs(model, tokenizer, specs: list[PromptSpec], num_frames: int = 16, batch_size: int = 16,
                       seed: int = 0) -> np.ndarray:
    """uint8 videos (B, T, H, W, 3), one per spec. Spec i's noise comes from (seed, i), so a video does
    not depend on `batch_size`."""
    ids = [encode_caption(tokenizer, s.caption, model.cfg.max_caption_tokens) for s in specs]
    videos = []
    for start in range(0, len(specs), batch_size):
        rows = list(range(start, min(start + batch_size, len(specs))))
        videos.append(model.generate([ids[i] for i in rows], num_frames=num_frames, seed=seed,
                                     sample_ids=rows).cpu().numpy())
    return np.concatenate(videos)


def evaluate_model(model, tokenizer, *, num_frames: int = 16, seeds_per_prompt: int = 3, batch_size: int = 16,
                   holdout: bool = True, val_shards: str | None = None, val_clips: int = 16, seed: int = 0,
                   textured_fraction: float = 0.0, videos: np.ndarray | None = None,
                   details: bool = False) -> dict:
    """The whole report (JSON-serialisable); see the package docstring.

    Args:
        num_frames: frames per generated video.
        seeds_per_prompt: videos per prompt (16 prompts).
        batch_size: prompts per `generate` call.
        holdout: the model was trained on `--holdout` shards (marks held-out prompts unseen).
        val_shards: shards for the teacher-forced frame error (skipped when None).
        val_clips: clips read from `val_shards`.
        seed: generation and noise seed.
        textured_fraction: background of the reference clips (floors, real motion): match the training set.
        videos: already generated videos for `faithfulness_prompts(seeds_per_prompt, holdout)`.
        details: add each video's spec and detection.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (a direction needs motion), got {num_frames}")
    clock = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        specs = faithfulness_prompts(seeds_per_prompt, holdout=holdout)
        if videos is None:
            videos = generate_for_specs(model, tokenizer, specs, num_frames, batch_size, seed)
        videos = np.asarray(videos)
        if videos.shape[0] != len(specs) or videos.ndim != 5:
            raise ValueError(f"videos: need {len(specs)} videos (B, T, H, W, 3), got shape {videos.shape}")
        reference = reference_clips(specs, videos.shape[1], videos.shape[2], textured_fraction)
        found = [detect(v) for v in videos]
        generated, real = motion_magnitude(videos), motion_magnitude(reference)
        report = {"faithfulness": score_detections(found, specs, details),
                  "floors": floors(videos, specs, reference, found),
                  "motion": {"generated": generated, "real": real, "ratio": generated / real}}
        if details:
            report["specs"] = [s.as_json() for s in specs]
        if val_shards:
            clips = read_val_clips(val_shards, model.cfg.image_size, num_frames, val_clips)
            report["teacher_forced"] = (teacher_forced(model, tokenizer, clips, seed) if clips
                                        else {"error": f"no readable clip of >= 2 frames in {val_shards}"})
    finally:
        model.train(was_training)
    report["seconds"] = round(time.perf_counter() - clock, 3)
    return report


def evaluate_at_step(model, cfg, out_dir: Path) -> dict:
    """The trainer's evaluation (a `config.Config`'s eval.faithfulness_* settings): the report, also
    written to OUT_DIR/eval.json. Val shards that cannot be read give teacher_forced {"error": ...}."""
    e = cfg.eval
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    report = evaluate_model(model, tokenizer, num_frames=e.num_frames, seeds_per_prompt=e.faithfulness_seeds,
                            batch_size=e.faithfulness_batch_size, holdout=e.holdout, seed=e.seed)
    if cfg.data.val_shards and e.faithfulness_val_clips:
        try:
            clips = read_val_clips(cfg.data.val_shards, model.cfg.image_size, e.num_frames, e.faithfulness_val_clips)
            report["teacher_forced"] = teacher_forced(model, tokenizer, clips, e.seed)
        except ValueError as exc:  # e.g. remote (pipe:) shards, or none readable
            report["teacher_forced"] = {"error": str(exc)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    log.info("faithfulness %s; motion ratio %.2f (%.1f s) -> %s", summary(report), report["motion"]["ratio"],
             report["seconds"], out_dir / "eval.json")
    return report


def summary(report: dict) -> str:
    """'colour 81% shape 62% direction 75% all 40% (unseen: ...)': one line for a log."""
    def line(scores: dict) -> str:
        return " ".join(f"{k} {100 * v:.0f}%" for k, v in scores.items() if k != "n" and v is not None)

    faith = report["faithfulness"]
    return line(faith["accuracy"]) + (f" (unseen: {line(faith['unseen'])})" if faith["unseen"]["n"] else "")
