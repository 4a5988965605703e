"""How fast does a loss make the first frame depend on the caption? The evidence for `loss_preset`.

The first frame is predicted from the caption alone, so it is where a model learns to read its text.
This probe trains the model on 2-frame synthetic clips (one object on a plain background; `--variant`)
with each loss setting in turn and, every few steps, generates the first frame for captions that differ
in colour only ("a red circle moves left" vs "a blue circle moves left") and in shape and direction,
and prints the mean absolute difference of the two frames (0: the model ignores that part of the text).

    python bench/text_probe.py                                    # default with and without w_first, 150 steps each
    python bench/text_probe.py --settings 'default,default:w_first=0' --variant random-background
    python bench/text_probe.py --settings 'default,paper,paper:w_first=0' --steps 300 --budget_s 600
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.synthetic import SyntheticConfig, make_clip  # noqa: E402
from t2v_dist.model import ModelConfig, T2VModel  # noqa: E402
from t2v_dist.precision import describe_cpu  # noqa: E402
from t2v_dist.packing import pack_samples  # noqa: E402
from t2v_dist.tokenizer import encode_caption, load_tokenizer  # noqa: E402

# The data: "demo" is the variant `make demo` trains on (launch/demo.sh); "random-background" is the one it
# trained on before: paths through the centre on a random dark colour per clip, which no caption predicts.
VARIANTS = {"demo": dict(layout="outward", plain_colour=(20, 20, 20), sizes=("large",)),
            "random-background": dict(layout="centred")}
PAIRS = {"colour": ("a red circle moves left", "a blue circle moves left"),
         "shape+direction": ("a red circle moves left", "a red square moves up")}


def _model_config(setting: str, d_model: int) -> ModelConfig:
    """'paper' or 'default', optionally followed by ':key=value;key=value' overrides of loss fields."""
    preset, _, extra = setting.partition(":")
    overrides = {}
    for item in filter(None, extra.split(";")):
        key, value = item.split("=")
        overrides[key] = float(value)
    return ModelConfig.from_preset("tiny", d_model=d_model, n_head=4, max_frames=16, n_positions=64,
                                   loss_preset=preset, **overrides)


def probe(settings: str = "default,default:w_first=0", steps: int = 150, batch: int = 64, lr: float = 3e-3,
          d_model: int = 128, every: int = 50, clips: int = 3000, threads: int = 0, budget_s: float = 1800.0,
          seed: int = 0, variant: str = "demo") -> None:
    """Train each loss setting on 2-frame clips and print how much the first frame depends on the caption.

    Args:
        settings: loss settings separated by ',': a preset ('default', 'paper'), optionally with loss
            field overrides after ':', separated by ';' (e.g. 'paper:w_first=0;w_motion=0.1').
        steps: optimizer steps per setting.
        batch: clips per step.
        lr: AdamW learning rate (constant).
        d_model: width of the tiny preset.
        every: steps between probes.
        clips: synthetic clips to sample batches from.
        threads: torch threads (0: leave torch's default).
        budget_s: stop a setting after this many seconds.
        seed: torch and batch-sampling seed.
        variant: the synthetic data: 'demo' (one large object from just behind the centre on a fixed dark
            background, as `make demo`) or 'random-background' (paths through the centre on a random
            dark colour per clip).
    """
    if threads:
        torch.set_num_threads(threads)
    print(describe_cpu(), flush=True)
    tok = load_tokenizer()
    if variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    data_cfg = SyntheticConfig(frames=2, two_shape_fraction=0.0, textured_fraction=0.0, **VARIANTS[variant])
    data = []
    for i in range(clips):
        clip = make_clip(7, i, data_cfg)
        data.append({"key": f"probe{i}", "tokens": encode_caption(tok, clip.caption, 32), "frames": clip.frames})
    probe_ids = {name: [encode_caption(tok, c, 32) for c in pair] for name, pair in PAIRS.items()}
    print("setting | step | seconds | first-frame L1 | " + " | ".join(f"dependence on {n}" for n in PAIRS), flush=True)
    for setting in settings.split(","):
        torch.manual_seed(seed)
        model = T2VModel(_model_config(setting, d_model))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for step in range(steps + 1):
            if step % every == 0 or step == steps:
                model.eval()
                with torch.no_grad():
                    dep = [float((v[0] - v[1]).abs().mean()) for v in
                           (model.generate(ids, num_frames=1, seed=0, as_float=True)[:, 0] for ids in probe_ids.values())]
                model.train()
                first = float(out.terms["first"]) if step else float("nan")
                print(f"{setting} | {step} | {time.perf_counter() - t0:.0f} | {first:.4f} | "
                      + " | ".join(f"{d:.4f}" for d in dep), flush=True)
            if step == steps or time.perf_counter() - t0 > budget_s:
                break
            batch_clips = [data[j] for j in rng.choice(len(data), batch, replace=False)]
            out = model(pack_samples(batch_clips, 128, seed=step))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()


if __name__ == "__main__":
    fire.Fire(probe)
