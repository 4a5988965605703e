"""The authors' published code (github.com/vividitytech/text2videoGPT), timed on this machine.

    python bench/authors.py --authors /tmp/authors --mingpt /tmp/minGPT [--steps 3] [--gen_frames 32]

`--authors` is a checkout of their repository, `--mingpt` one of karpathy/minGPT (their code imports
`mingpt.model.Block` and `mingpt.utils.CfgNode`); nothing of theirs is copied here. For example:

    git -C <mirror of vividitytech/text2videoGPT> archive HEAD | tar -x -C /tmp/authors
    git -C <mirror of karpathy/minGPT> archive HEAD | tar -x -C /tmp/minGPT

What needs the network or is missing is stubbed at run time, never their model code: the T5 helper
module their `Unet.py` imports (only `get_encoded_dim`, for an unused text-conditioning layer; T5 is
never run), `beartype` (an identity decorator when not installed), and the GPT-2 tokenizer download
(the caption is tokenized with this repository's local GPT-2 BPE: the same ids). Their training step
is `train_text2video.py`'s loop body: `VideoUnetGPT` with their `Unet(dim=16, dim_mults=(1,2,4,8))`,
batch 1 (the only size their forward supports), a 16-frame 32x32 clip scaled to [-1, 1], the noise
schedule, backward, `clip_grad_norm_(1)` and their `configure_optimizers` AdamW. `generate` is
`test_text2video.py`'s call with `max_new_tokens` = frames and no cold start.

The benches import `measure_authors` to put the authors' figures beside theirs in the same run.
"""
from __future__ import annotations

import statistics
import sys
import time
import types
import typing
from pathlib import Path

import fire
import numpy as np
import torch

CAPTION = "a person doing basketball"
UCF101_CLASSES = 101


def _stub_missing_modules() -> None:
    """Stand-ins for what their code imports but does not use here (and would download)."""
    t5 = types.ModuleType("t5")
    t5.DEFAULT_T5_NAME = "google/t5-v1_1-base"
    t5.get_encoded_dim = lambda name: 768  # t5-v1_1-base's width: sizes an unused text_to_cond layer

    def t5_encode_text(*args, **kwargs):
        raise RuntimeError("bench/authors.py: T5 text encoding is stubbed (it would download T5)")

    t5.t5_encode_text = t5_encode_text
    sys.modules["t5"] = t5
    try:
        import beartype  # noqa: F401
    except ImportError:
        stub = types.ModuleType("beartype")
        stub.beartype = lambda fn: fn
        stub.typing = typing
        sys.modules["beartype"] = stub
        sys.modules["beartype.typing"] = typing


def load_authors_model(authors: str, mingpt: str, seed: int = 0):
    """Their VideoUnetGPT + Unet + AdamW, configured as train_text2video.py does (UCF101: 101 classes)."""
    for path, probe in ((authors, "VideoUnetGPT.py"), (mingpt, "mingpt/model.py")):
        if not (Path(path) / probe).is_file():
            raise SystemExit(f"bench/authors.py: {path} has no {probe}; pass a checkout of the repository")
    _stub_missing_modules()
    sys.path[:0] = [str(Path(authors).resolve()), str(Path(mingpt).resolve())]
    from Unet import Unet  # noqa: E402 (their code)
    from VideoUnetGPT import VideoUnetGPT  # noqa: E402

    torch.manual_seed(seed)
    config = VideoUnetGPT.get_default_config()
    config.model_type = "gpt2"
    config.weight_decay = 0.1
    config.learning_rate = 2e-4
    config.betas = (0.9, 0.95)
    config.vocab_size = 50257
    config.block_size = 1024
    config.classes = UCF101_CLASSES
    unet = Unet(dim=16, cond_dim=512, dim_mults=(1, 2, 4, 8), num_resnet_blocks=2,
                layer_attns=(False,) * 4, layer_cross_attns=(False,) * 4)
    model = VideoUnetGPT(config, unet)
    return model, model.configure_optimizers(config)


def _caption_ids() -> torch.Tensor:
    from t2v_dist.tokenizer import load_tokenizer

    return torch.tensor([load_tokenizer().encode(CAPTION)])


def time_train_step(model, optimizer, steps: int, frames: int = 16, deadline: float = float("inf")) -> float:
    """Median seconds of their training step (after one warm-up step) at batch 1."""
    x = _caption_ids()
    rng = np.random.default_rng(0)
    y = (torch.from_numpy(rng.integers(0, 256, (1, frames, 32, 32, 3))).float() - 127.5) / 127.5
    beta = torch.tensor(list(np.linspace(0, 0.9, 1024)), dtype=torch.float32)
    model.train()

    def step():
        loss, *_ = model(x, y, None, beta)
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=False)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()
    times = []
    while len(times) < steps and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_generate(model, frames: int, repeats: int = 1, deadline: float = float("inf")) -> float:
    """Median seconds of their `generate` of one `frames`-frame video for one prompt."""
    x = _caption_ids()
    model.eval()
    times = []
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=frames)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_authors(authors: str, mingpt: str, steps: int = 3, gen_frames: int = 32,
                    budget_s: float = float("inf"), generate: bool = True) -> dict:
    """{"step_s", "samples_per_s", "generate_s"}: their training step at batch 1 and their generate."""
    model, opt = load_authors_model(authors, mingpt)
    start = time.perf_counter()
    step_s = time_train_step(model, opt, steps, deadline=start + budget_s / 2)
    out = {"step_s": step_s, "samples_per_s": 1.0 / step_s}
    if generate:
        out["generate_s"] = time_generate(model, gen_frames, deadline=start + budget_s)
        out["generate_frames"] = gen_frames
    del model, opt
    return out


def authors_reference(authors: str, mingpt: str | None, budget_s: float) -> float:
    """The authors' training samples/s on this machine now (for a bench's ratio column), printed."""
    a = measure_authors(authors, mingpt or "", steps=3, budget_s=budget_s, generate=False)
    print(f"authors' training step (batch 1, fp32): {a['step_s']:.3f} s, {a['samples_per_s']:.3f} samples/s",
          flush=True)
    return a["samples_per_s"]


def main(authors: str, mingpt: str, steps: int = 3, gen_frames: int = 32, budget_s: float = 600,
         threads: int = 0, ours: bool = True):
    """Time the authors' training step and generate, and ours beside them (same process, same threads).

    Args:
        authors: checkout of github.com/vividitytech/text2videoGPT.
        mingpt: checkout of github.com/karpathy/minGPT (their dependency).
        steps: timed training steps (median; one warm-up step first).
        gen_frames: frames per generated video.
        budget_s: stop repeating once this many seconds are spent (each measurement runs at least once).
        threads: torch threads (0 = torch default).
        ours: also time this repository's model step at batch 1 and its generate, for the ratios.
    """
    from cpuinfo import cpu_line

    if threads:
        torch.set_num_threads(threads)
    print(cpu_line(), flush=True)
    start = time.perf_counter()
    a = measure_authors(authors, mingpt, steps, gen_frames, budget_s / 2 if ours else budget_s)
    print(f"authors: train step {a['step_s']:.3f} s at batch 1 ({a['samples_per_s']:.3f} samples/s); "
          f"generate {gen_frames} frames {a['generate_s']:.2f} s", flush=True)
    if not ours:
        return
    from model_throughput import build_model, make_batch, time_steps
    from t2v_dist.tokenizer import encode_caption, load_tokenizer

    model = build_model("gpt2", 32, max_frames=max(16, gen_frames))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    sec = time_steps(model, opt, make_batch(1, 16, 32, 1024), steps, "fp32")
    print(f"ours:    train step {sec:.3f} s at batch 1 fp32 ({1 / sec:.3f} samples/s, "
          f"{a['step_s'] / sec:.1f}x the authors)", flush=True)
    del opt
    ids = [encode_caption(load_tokenizer(), CAPTION, 64)]
    model.eval()
    times = []
    deadline = start + budget_s
    while len(times) < 3 and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, num_frames=gen_frames, seed=0)
        times.append(time.perf_counter() - t0)
    gen = statistics.median(times)
    print(f"ours:    generate {gen_frames} frames {gen:.2f} s ({a['generate_s'] / gen:.1f}x the authors)", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    fire.Fire(main)
