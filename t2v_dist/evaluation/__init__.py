"""Text-faithfulness and video-quality evaluation of a T2V model on the synthetic moving-shapes task.

No neural network judges the videos: hand-written detectors (`detectors.py`) read the object's colour
(nearest palette colour), shape (circle, square, triangle) and direction (centroid track -> one of the
8 directions, or "static") from a uint8 video, calibrated by tests on the generator's own clips.

The API (stable; the `t2v-eval` CLI and the trainer call it):

    from t2v_dist.evaluation import faithfulness_prompts, score_videos, evaluate_model, detect

    specs = faithfulness_prompts(seeds_per_prompt=3)       # list[PromptSpec]; 16 prompts x 3 seeds
    # PromptSpec(caption, colour, shape, direction, seen, seed): 8 prompts of combinations the train
    # split shows, 8 of shards.synthetic.HELD_OUT_COMBOS (seen=False; `t2v-shards synthetic --holdout`).
    # Together they cover every colour, shape and direction.

    scores = score_videos(videos, specs)                   # videos: uint8 (B, T, H, W, 3), one per spec
    # {"n", "accuracy": {"colour", "shape", "direction", "all"}, "seen": {..., "n"}, "unseen": {..., "n"}}

    report = evaluate_model(model, tokenizer, num_frames=16, seeds_per_prompt=3, batch_size=16,
                            val_shards="data/syn/val-*.tar")
    # {"faithfulness": scores, "floors": {"chance", "static_first_frame", "shuffled_captions",
    #   "ground_truth"}, "motion": {"generated", "real", "ratio"},
    #   "teacher_forced" (with val_shards): {"mse", "psnr_db", "copy_previous_mse", "copy_previous_psnr_db",
    #   "first_frame_mse", ...}, "seconds"}
    # JSON-serialisable. `videos=` takes videos generated elsewhere (for the same specs).

    detect(video) -> Detection(colour, shape, direction, ...)   # one video, uint8 (T, H, W, 3)

The trainer calls `evaluate_at_step(model, cfg, out_dir)` (eval.faithfulness_* settings; writes
out_dir/eval.json). Lower-level pieces: `generate_for_specs` (the videos evaluate_model scores),
`reference_clips` (the generator's clips for the specs), `floors`, `motion_magnitude`, `teacher_forced`
and `read_val_clips`.
"""
from t2v_dist.evaluation.detectors import Detection, detect
from t2v_dist.evaluation.faithfulness import (CHANCE, SEEN_COMBOS, PromptSpec, faithfulness_prompts, floors,
                                              reference_clips, score_videos)
from t2v_dist.evaluation.model_eval import evaluate_at_step, evaluate_model, generate_for_specs
from t2v_dist.evaluation.video_metrics import motion_magnitude, read_val_clips, teacher_forced

__all__ = [
    "CHANCE", "SEEN_COMBOS", "Detection", "PromptSpec", "detect", "evaluate_at_step", "evaluate_model",
    "faithfulness_prompts", "floors", "generate_for_specs", "motion_magnitude", "read_val_clips",
    "reference_clips", "score_videos", "teacher_forced",
]
