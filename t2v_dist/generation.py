"""`t2v-generate`: videos for prompts from a trained model (a run dir's checkpoint or an exported file).

    t2v-generate --run_dir runs/demo --prompts "a red circle moves left" "a blue square moves up" --out out/
    t2v-generate --weights runs/demo/model.safetensors --prompts_file prompts.txt --formats gif,png

Writes, under --out, one file per prompt and format (`000_a-red-circle-moves-left.mp4`, `.gif`, and a
`.png` strip of its frames), `sheet.png` (every prompt's frames in a row, the prompt written under it)
and `prompts.json` (the prompts, their files, the model and the settings). A prompt's noise is drawn
from (seed, its index in the list), so its video does not depend on --batch_size.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from t2v_dist.inference import InferenceError, load_for_inference
from t2v_dist.model import T2VModel
from t2v_dist.tokenizer import encode_caption, load_tokenizer
from t2v_dist.video_io import FORMATS, write_contact_sheet, write_gif, write_mp4


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """'mp4,gif,png' (or fire's tuple of it) -> ['mp4', 'gif', 'png']; an unknown format is an error."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(f).strip().lower().lstrip(".") for f in items if str(f).strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise InferenceError(f"--formats: unknown format {', '.join(map(repr, unknown))}; choose from {','.join(FORMATS)}")
    if not names:
        raise InferenceError(f"--formats: empty; choose from {','.join(FORMATS)}")
    return list(dict.fromkeys(names))


def read_prompts(prompts: str | Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """The prompts of --prompts (one or several values) or of --prompts_file (one per line, blank lines skipped)."""
    if (prompts is None) == (prompts_file is None):
        raise InferenceError("give exactly one of --prompts (one or more values) or --prompts_file (one per line)")
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InferenceError(f"--prompts_file {path}: cannot read it: {exc}") from None
        found = [line.strip() for line in text.splitlines() if line.strip()]
        if not found:
            raise InferenceError(f"--prompts_file {path}: no prompts (one per line)")
        return found
    found = [prompts] if isinstance(prompts, str) else list(prompts)
    if not found:
        raise InferenceError("--prompts: no prompts given")
    for i, p in enumerate(found):
        if not isinstance(p, str) or not p.strip():
            raise InferenceError(f"--prompts: prompt {i} is empty or not text: {p!r}")
    return [p.strip() for p in found]


def encode_prompts(prompts: Sequence[str], max_tokens: int, tokenizer_path: str | None = None) -> list[list[int]]:
    """Token ids of each prompt (ending in <|endoftext|>); a prompt over the model's limit is an error."""
    tok = load_tokenizer(tokenizer_path if tokenizer_path and Path(tokenizer_path).is_dir() else None)
    ids = []
    for i, prompt in enumerate(prompts):
        try:
            ids.append(encode_caption(tok, prompt, max_tokens))
        except ValueError as exc:
            raise InferenceError(f"prompt {i}: {exc}") from None
    return ids


def max_num_frames(model: T2VModel, token_ids: Sequence[Sequence[int]]) -> int:
    """The most frames the model can generate for these captions: its frame limit and its positions."""
    cfg = model.cfg
    longest = max(len(t) for t in token_ids)
    return min(cfg.max_frames, cfg.n_positions - longest + 1)


def generate_videos(model: T2VModel, token_ids: Sequence[Sequence[int]], num_frames: int, seed: int = 0,
                    batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """uint8 videos (N, num_frames, H, W, 3), `batch_size` prompts at a time; prompt i's noise comes from (seed, i)."""
    from tqdm import tqdm

    videos = []
    with tqdm(total=len(token_ids), unit="prompt", desc="generating", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(token_ids), batch_size):
            batch = [list(t) for t in token_ids[start:start + batch_size]]
            out = model.generate(batch, num_frames=num_frames, seed=seed,
                                 sample_ids=list(range(start, start + len(batch))))
            videos.append(out.cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(videos)


def file_stem(index: int, prompt: str) -> str:
    """'007_a-red-circle-moves-left': the index keeps names unique and in order; the slug makes them readable."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].rstrip("-")
    return f"{index:03d}_{slug or 'prompt'}"


def write_outputs(out: str | Path, prompts: Sequence[str], videos: np.ndarray, formats: Sequence[str],
                  fps: int, scale: int) -> list[dict]:
    """One file per prompt and format, plus sheet.png; returns one record per prompt with its file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
        stem = file_stem(i, prompt)
        files = {}
        if "mp4" in formats:
            files["mp4"] = write_mp4(out / f"{stem}.mp4", video, fps=fps, scale=scale).name
        if "gif" in formats:
            files["gif"] = write_gif(out / f"{stem}.gif", video, fps=fps, scale=scale).name
        if "png" in formats:
            files["png"] = write_contact_sheet(out / f"{stem}.png", [video], scale=scale, captions=[prompt]).name
        records.append({"index": i, "prompt": prompt, "files": files})
    write_contact_sheet(out / "sheet.png", list(videos), scale=scale, captions=list(prompts))
    return records


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InferenceError(f"--{name} must be an integer >= {minimum}, got {value!r}")
    return value


def generate(run_dir: str | None = None, weights: str | None = None, tag: str | None = None,
             prompts: list[str] | None = None, prompts_file: str | None = None, num_frames: int = 16,
             seed: int = 0, batch_size: int = 8, out: str = "samples", formats: str = "mp4,gif,png",
             scale: int = 4, fps: int = 8, device: str = "cpu", progress: bool = True) -> str:
    """Generate a video for each prompt with a trained model.

    Args:
        run_dir: a training run dir; its latest checkpoint is used (any world size). Or give --weights.
        weights: an exported .safetensors file (launch/export.py). Or give --run_dir.
        tag: a checkpoint of --run_dir, e.g. step00000100; default the latest.
        prompts: one or more prompts: --prompts "a red circle moves left" "a blue square moves up".
        prompts_file: a UTF-8 text file with one prompt per line (instead of --prompts).
        num_frames: frames per video; at most the model's max_frames (and its positions).
        seed: noise seed; prompt i's noise comes from (seed, i), whatever --batch_size.
        batch_size: prompts generated together.
        out: output folder (created).
        formats: comma-separated, any of mp4,gif,png (png: a strip of the frames with the prompt).
        scale: nearest-neighbour upscale factor of the written frames.
        fps: frame rate of mp4 and gif.
        device: cpu or cuda (bf16 on a GPU).
        progress: show a progress bar over the prompts.
    """
    fmt = parse_formats(formats)
    texts = read_prompts(prompts, prompts_file)
    num_frames, seed = _int("num_frames", num_frames, 1), _int("seed", seed, 0)
    batch_size, scale, fps = _int("batch_size", batch_size, 1), _int("scale", scale, 1), _int("fps", fps, 1)
    model, meta = load_for_inference(run_dir=run_dir, tag=tag, weights=weights, device=device)
    cfg = meta["config"]
    ids = encode_prompts(texts, model.cfg.max_caption_tokens, cfg.data.tokenizer_path)
    limit = max_num_frames(model, ids)
    if num_frames > limit:
        raise InferenceError(f"--num_frames {num_frames}: this model takes at most {limit} frames "
                             f"(max_frames={model.cfg.max_frames}, n_positions={model.cfg.n_positions})")
    with torch.inference_mode():
        videos = generate_videos(model, ids, num_frames, seed=seed, batch_size=batch_size, progress=progress)
    records = write_outputs(out, texts, videos, fmt, fps=fps, scale=scale)
    for record, t in zip(records, ids):
        record["tokens"] = len(t)
    summary = {
        "model": {k: meta[k] for k in ("source", "tag", "step", "config_hash", "device", "dtype")},
        "num_frames": num_frames, "seed": seed, "formats": fmt, "fps": fps, "scale": scale,
        "size": list(videos.shape[2:4]), "sheet": "sheet.png", "prompts": records,
    }
    (Path(out) / "prompts.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return f"{len(texts)} videos in {out} (sheet.png, prompts.json)"


def gather_list_flag(argv: Sequence[str], flag: str) -> list[str]:
    """Fold `--flag a b c` (several values, as argparse's nargs='+') into one `--flag=[...]` that fire parses
    as a list of strings, whatever the values look like (numbers, commas, brackets)."""
    out, i, argv = [], 0, list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == f"--{flag}" or arg.startswith(f"--{flag}="):
            values = [arg.split("=", 1)[1]] if "=" in arg else []
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            out.append(f"--{flag}={values!r}")
        else:
            out.append(arg)
            i += 1
    return out


def run_cli(fn, name: str, argv: Sequence[str] | None = None) -> None:
    """fire over `fn` with `--prompts` taking several values; an input error is one line and exit code 1."""
    import fire

    argv = gather_list_flag(sys.argv[1:] if argv is None else argv, "prompts")
    try:
        fire.Fire(fn, command=argv, name=name)  # fire prints what `fn` returns
    except InferenceError as exc:
        raise SystemExit(f"{name}: error: {exc}") from None


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(generate, "t2v-generate", argv)
