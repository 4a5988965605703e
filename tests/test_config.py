"""Run config: YAML + dotted overrides, typed errors naming the key, hash, DeepSpeed config, optimizer, LR."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2v_dist.config import (Config, ConfigError, build_deepspeed_config, build_optimizer, parse_overrides,
                             resolve_precision)
from t2v_dist.lr_schedule import build_lr_scheduler, lr_at

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "launch" / "configs"


@pytest.mark.parametrize("name, layers, width, frames", [("demo", 2, 128, 8), ("synthetic-cpu", 2, 128, 8),
                                                           ("paper", 12, 768, 16), ("gpt2-medium", 24, 1024, 16)])
def test_shipped_configs_load(name, layers, width, frames):
    cfg = Config.load(CONFIGS / f"{name}.yaml")
    assert (cfg.model.n_layer, cfg.model.d_model) == (layers, width)
    assert cfg.model.image_size == cfg.data.image_size == 32
    assert cfg.data.frames == cfg.model.max_frames == cfg.eval.num_frames == frames
    assert cfg.checkpoint.dir == str(Path(cfg.run_dir) / "checkpoints")
    cfg.check_world_size(2)


def test_overrides_are_typed_by_field():
    cfg = Config.load(CONFIGS / "demo.yaml", [
        "--train.max_steps=1_000", "--train.lr=1e-4", "--train.min_lr=1e-5", "--train.betas=0.8,0.9",
        "--metrics.enabled=false",
        "--data.min_frames", "null", "--eval.prompts=[a red circle moves up, a cat]", "run_dir=/tmp/x",
        "--train.train_batch_size=4", "--model.unet_mults=[1, 2, 4]", "--data.tokenizer_path=123"])
    assert cfg.train.max_steps == 1000 and cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.8, 0.9) and cfg.metrics.enabled is False and cfg.data.min_frames is None
    assert cfg.eval.prompts == ["a red circle moves up", "a cat"]
    assert cfg.run_dir == "/tmp/x" and cfg.checkpoint.dir == "/tmp/x/checkpoints"
    assert cfg.model.unet_mults == (1, 2, 4)
    assert cfg.data.tokenizer_path == "123"  # string fields keep the text verbatim
    assert cfg.train.train_batch_size == 4


def test_preset_override_rederives_model_but_keeps_explicit_fields():
    cfg = Config.load(CONFIGS / "demo.yaml", ["--model.preset=gpt2"])
    assert (cfg.model.preset, cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == ("gpt2", 12, 768, 12)
    assert cfg.model.max_frames == 8 and cfg.model.max_caption_tokens == 32  # set in demo.yaml
    cfg = Config.load(CONFIGS / "demo.yaml", ["--model.n_layer=3"])
    assert (cfg.model.preset, cfg.model.n_layer, cfg.model.d_model) == ("small", 3, 128)


@pytest.mark.parametrize("override, match", [
    ("--train.max_step=3", r"unknown config key train.max_step \(did you mean train.max_steps\?\)"),
    ("--model.n_layr=3", r"model.n_layr \(did you mean model.n_layer\?\)"),
    ("--data.shards=x", r"unknown config key data.shards"),
    ("--nosuch=1", r"unknown config key nosuch"),
    ("--run_dir.x=1", r"run_dir has no sub-keys"),
    ("--train.max_steps=abc", r"train.max_steps: expected an integer, got 'abc'"),
    ("--train.max_steps=1.5", r"train.max_steps: expected an integer"),
    ("--train.lr=fast", r"train.lr: expected a finite number"),
    ("--model.motion_tau=nan", r"model.motion_tau: expected a finite number"),
    ("--train.grad_clip=inf", r"train.grad_clip: expected a finite number"),
    ("--metrics.enabled=maybe", r"metrics.enabled: expected true/false"),
    ("--train.betas=0.9", r"train.betas: expected 2 values"),
    ("--train.betas=[0.9, 1.5]", r"train.betas: must be two values in \[0, 1\)"),
    ("--eval.formats=[webm]", r"eval.formats: unknown \['webm'\]"),
    ("--train.precision=fp16", r"train.precision: must be one of"),
    ("--train.train_micro_batch_size_per_gpu=2", r"train.train_micro_batch_size_per_gpu: must be 1"),
    ("--train.min_lr=1", r"train.min_lr: must be in \[0, train.lr"),
    ("--metrics.port=70000", r"metrics.port"),
    ("--model.preset=gpt5", r"unknown model preset 'gpt5'"),
    ("--data.frames=1", r"DataConfig.frames=1"),
    ("--data.frames=32", r"data.frames: 32 exceeds model.max_frames=8"),
    ("--data.image_size=64", r"data.image_size: 64 differs from model.image_size=32"),
    ("--eval.num_frames=64", r"eval.num_frames: 64 exceeds model.max_frames=8"),
    ("--data.max_caption_tokens=60", r"data.max_caption_tokens: 60 exceeds model.max_caption_tokens=32"),
    ("--train.max_steps", r"expected --section.key=value"),
    ("--=3", r"empty key"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        Config.load(CONFIGS / "demo.yaml", [override])


def test_bad_files_name_the_file_or_key(tmp_path):
    cases = {
        "list.yaml": ("- 1\n- 2\n", r"list.yaml: the top level must be a mapping"),
        "broken.yaml": ("train: {max_steps: [\n", r"broken.yaml: cannot read config"),
        "section.yaml": ("train: 3\n", r"train: must be a mapping"),
        "modelsec.yaml": ("model: [1]\n", r"model: must be a mapping"),
        "key.yaml": ("train:\n  warmup: 3\n", r"unknown config key train.warmup \(did you mean train.warmup_steps\?\)"),
        "type.yaml": ("checkpoint:\n  keep_last: three\n", r"checkpoint.keep_last: expected an integer"),
        "float.yaml": ("train:\n  lr: 3e-4\n", None),  # YAML 1.1 reads 3e-4 as a string; still a float here
        "empty.yaml": ("", None),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        if match is None:
            cfg = Config.load(path)
            assert isinstance(cfg.train.lr, float)
        else:
            with pytest.raises(ConfigError, match=match):
                Config.load(path)
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        Config.load(tmp_path / "nope.yaml")


def test_override_fuzz_only_raises_config_errors():
    keys = ["train.max_steps", "train.lr", "train.betas", "train.precision", "model.preset", "model.n_layer",
            "model.unet_mults", "model.motion_tau", "data.frames", "data.min_frames", "eval.prompts", "metrics.enabled",
            "checkpoint.dir", "run_dir", "train", "model", "nosuch.key", "train.lr.x"]
    values = ["", "0", "-1", "1e9", "nan", "inf", "true", "null", "[", "[1, 2]", "{a: 1}", "gpt2", "0.5,0.5",
              "'quoted'", "🙂", "1_0", "0x10", "[[]]"]
    rng = random.Random(0)
    for _ in range(400):
        args = [f"--{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 3))]
        try:
            cfg = Config.load(CONFIGS / "demo.yaml", args)
        except ConfigError:
            continue
        assert len(cfg.config_hash()) == 64  # whatever loads also hashes (no NaN in the canonical JSON)


def test_round_trip_and_hash():
    cfg = Config.load(CONFIGS / "paper.yaml")
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    changed = Config.load(CONFIGS / "paper.yaml", ["--train.lr=2.9e-4"])
    assert changed.config_hash() != cfg.config_hash()
    # Stable across processes (no dict-order or object-id leaks): the CLI check prints the same hash.
    out = subprocess.run([sys.executable, "-m", "t2v_dist.config", "--config", str(CONFIGS / "paper.yaml"),
                          "--world-size", "8"], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout)["config_hash"] == cfg.config_hash()


def test_cli_check_rejects_bad_batch_before_workers_start():
    out = subprocess.run([sys.executable, "-m", "t2v_dist.config", "--config", str(CONFIGS / "demo.yaml"),
                          "--world-size", "2", "--train.train_batch_size=3"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2
    assert "train.train_batch_size=3 must equal" in out.stderr and "world size (2) = 2" in out.stderr


def test_world_size_check():
    cfg = Config.load(CONFIGS / "demo.yaml", ["--train.gradient_accumulation_steps=4", "--train.train_batch_size=16"])
    assert cfg.check_world_size(4) == 16
    with pytest.raises(ConfigError, match=r"train.train_batch_size=16 must equal .* = 8"):
        cfg.check_world_size(2)
    with pytest.raises(ConfigError, match="world_size"):
        cfg.check_world_size(0)


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b=1", "c.d=x=y", "--e", "2"]) == [("a.b", "1"), ("c.d", "x=y"), ("e", "2")]
    with pytest.raises(ConfigError, match="expected --section.key=value"):
        parse_overrides(["positional"])


def test_deepspeed_config_is_filled_from_the_run_config(tmp_path):
    cfg = Config.load(CONFIGS / "demo.yaml", ["--train.gradient_accumulation_steps=3", "--train.grad_clip=0.5",
                                              "--checkpoint.load_universal=true"])
    ds = build_deepspeed_config(cfg, world_size=2, device_type="cpu")
    assert ds["train_batch_size"] == 6 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 2 and ds["checkpoint"]["load_universal"] is True
    assert not any(k.startswith("_") for k in ds) and not any(k.startswith("_") for k in ds["zero_optimization"])
    bf16 = Config.load(CONFIGS / "demo.yaml", ["--train.precision=bf16"])
    assert build_deepspeed_config(bf16, 2, "cpu")["bf16"]["enabled"] is True
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="has an 'optimizer' block"):
        build_deepspeed_config(Config.load(None, [f"--deepspeed_config={bad}"]), 1, "cpu")
    with pytest.raises(ConfigError, match="deepspeed_config: nope.json not found"):
        build_deepspeed_config(Config.load(None, ["--deepspeed_config=nope.json"]), 1, "cpu")


def test_precision_resolution():
    from t2v_dist.precision import cpu_bf16_features

    # auto on a CPU follows what torch says the CPU runs natively (tests/test_precision.py has the cases).
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_bf16_features() else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", "cpu")


def test_optimizer_groups_decay_only_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[2].weight.requires_grad_(False)
    cfg = Config.load(None, ["--train.weight_decay=0.2", "--train.betas=0.9,0.99"]).train
    opt = build_optimizer(model.parameters(), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.2 and {p.shape for p in decay["params"]} == {(10, 4), (4, 4)}
    assert no_decay["weight_decay"] == 0.0 and {p.shape for p in no_decay["params"]} == {(4,)}
    assert len(no_decay["params"]) == 2  # Linear bias and LayerNorm bias; the frozen gain is left out
    assert decay["betas"] == (0.9, 0.99) and decay["lr"] == cfg.lr
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([torch.zeros(2)], cfg, "cpu")


def test_lr_schedule_warmup_cosine_floor():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(10_000, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10) == 1.0
    assert lr_at(5, lr=1.0, min_lr=0.5, warmup_steps=10, max_steps=5) == pytest.approx(0.6)  # still warming up
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, **kw)


def test_lambda_lr_follows_lr_at_and_resumes_on_current_config():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=0.5)
    sched = build_lr_scheduler(opt, lr=0.5, min_lr=0.05, warmup_steps=3, max_steps=20)
    seen = []
    for _ in range(25):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 0.5, 0.05, 3, 20) for s in range(25)])
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=0.5)
    longer = build_lr_scheduler(opt2, lr=0.5, min_lr=0.05, warmup_steps=3, max_steps=100)
    longer.load_state_dict(state)
    opt2.step()
    longer.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(26, 0.5, 0.05, 3, 100))
    with pytest.raises(ValueError, match="param group 0 has lr=0.1"):
        build_lr_scheduler(torch.optim.AdamW([p], lr=0.1), lr=0.5, min_lr=0.0, warmup_steps=1, max_steps=2)


@pytest.mark.parametrize("partitioned", [False, True], ids=["stage0", "zero1"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero2_on_cpu_with_client_optimizer_and_schedule(dist_one_rank, precision, partitioned):
    """The shipped ZeRO-2 JSON + fused torch AdamW + LambdaLR run under a real DeepSpeed engine on CPU
    (one rank: no ZeRO, or ZeRO-1 when it resumes a partitioned checkpoint)."""
    import deepspeed

    cfg = Config.load(CONFIGS / "demo.yaml", [f"--train.precision={precision}", "--train.lr=0.03",
                                              "--train.min_lr=0.003", "--train.warmup_steps=2",
                                              "--train.max_steps=20", "--train.gradient_accumulation_steps=2"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 2))
    t = cfg.train
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model.parameters(), t, "cpu"),
        lr_scheduler=lambda opt: build_lr_scheduler(opt, t.lr, t.min_lr, t.warmup_steps, t.max_steps),
        config=build_deepspeed_config(cfg, world_size=1, device_type="cpu", resume_partitioned=partitioned))
    assert engine.zero_optimization_stage() == (1 if partitioned else 0)
    assert engine.bfloat16_enabled() == (precision == "bf16" and partitioned)
    assert engine.torch_autocast_enabled() == (precision == "bf16" and not partitioned)
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    assert next(engine.module.parameters()).dtype == dtype
    x = torch.randn(64, 8)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].sum(1)], 1)
    losses, lrs = [], []
    for _ in range(2 * t.max_steps):  # 2 micro-batches per optimizer step
        lrs.append(engine.get_lr()[0])
        loss = torch.nn.functional.mse_loss(engine(x.to(dtype)).float(), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert engine.global_steps == t.max_steps
    assert lrs[::2] == pytest.approx([lr_at(s, t.lr, t.min_lr, t.warmup_steps, t.max_steps) for s in range(t.max_steps)])
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    if partitioned:
        assert math.isfinite(float(engine.get_global_grad_norm()))
    else:  # the trainer clips and keeps the norm (trainer.clip_gradients)
        assert engine.gradient_clipping() == 0.0
