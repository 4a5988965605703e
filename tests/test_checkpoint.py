"""Checkpoints with a real DeepSpeed ZeRO-2 engine on CPU: save, keep the last K, `latest`, exact resume,
fp32 export with tied weights, and (2 ranks -> 1 rank) the universal checkpoint."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from t2v_dist import checkpoint as ck
from t2v_dist.config import Config, build_deepspeed_config, build_optimizer
from t2v_dist.lr_schedule import build_lr_scheduler, lr_at
from t2v_dist.trainer import clip_gradients

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "launch" / "configs" / "demo.yaml"
VOCAB = 32


class TiedLM(torch.nn.Module):
    """Embedding tied to the output head, like the model's wte / LM head, plus a buffer."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.body = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("temperature", torch.tensor([1.5]))

    def forward(self, ids):
        return self.head(torch.tanh(self.body(self.emb(ids)))) / self.temperature


def make_engine(init_seed: int, *overrides: str, partitioned: bool = False):
    """One rank: ZeRO stage 0 (what the trainer builds for a fresh run), or ZeRO-1 with `partitioned`."""
    import deepspeed

    cfg = Config.load(DEMO, ["--train.lr=0.01", "--train.warmup_steps=2", "--train.max_steps=20", *overrides])
    torch.manual_seed(init_seed)
    model = TiedLM()
    t = cfg.train
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model.parameters(), t, "cpu"),
        lr_scheduler=lambda opt: build_lr_scheduler(opt, t.lr, t.min_lr, t.warmup_steps, t.max_steps),
        config=build_deepspeed_config(cfg, world_size=torch.distributed.get_world_size(), device_type="cpu",
                                      resume_partitioned=partitioned))
    return engine, cfg


def train_step(engine, step: int) -> float:
    ids = torch.randint(0, VOCAB, (8, 6), generator=torch.Generator().manual_seed(step))
    logits = engine(ids[:, :-1]).float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    engine.backward(loss)
    if engine.zero_optimization_stage() == 0:
        clip_gradients(engine.module, engine.gradient_clipping() or 1.0)  # as the trainer does on one rank
    engine.step()
    return loss.item()


def test_save_keep_last_latest_and_exact_resume(dist_one_rank, tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    engine, cfg = make_engine(0)
    for step in range(9):
        train_step(engine, step)
        if (step + 1) % 3 == 0:
            state = ck.build_client_state(step + 1, {"shard": 2, "offset": step + 1}, cfg.to_dict(), cfg.config_hash())
            path = ck.save(engine, ckpt_dir, step + 1, state, keep_last=2)
            assert path == ckpt_dir / ck.tag_for(step + 1) and path.is_dir()
    assert ck.list_tags(ckpt_dir) == ["step00000006", "step00000009"]
    assert (ckpt_dir / "latest").read_text() == "step00000009" and ck.find_latest(ckpt_dir) == "step00000009"
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind
    expected = [train_step(engine, s) for s in range(9, 12)]

    resumed, _ = make_engine(123)  # different init: everything must come from the checkpoint
    state = ck.load(resumed, ckpt_dir)
    assert state["step"] == 9 and state["world_size"] == 1 and state["config_hash"] == cfg.config_hash()
    assert state["config"] == cfg.to_dict()
    assert ck.restore_rank_state(state, rank=0, world_size=1) == {"shard": 2, "offset": 9}
    assert ck.restore_rank_state(state, rank=0, world_size=2) is None  # other world size: no per-rank state
    t = cfg.train
    assert resumed.global_steps == 9
    assert resumed.get_lr()[0] == pytest.approx(lr_at(9, t.lr, t.min_lr, t.warmup_steps, t.max_steps))
    assert [train_step(resumed, s) for s in range(9, 12)] == expected  # weights, Adam moments and LR all restored


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_rank_checkpoint_is_unpartitioned_and_continues_in_a_zero_engine(dist_one_rank, tmp_path, precision):
    """One rank trains without ZeRO: its checkpoint has no partition files, resumes at any world size, and
    loaded into a ZeRO engine (fp32 master + Adam moments + step + LR) trains on as the original does."""
    ckpt_dir = tmp_path / "checkpoints"
    engine, cfg = make_engine(0, f"--train.precision={precision}")
    assert engine.zero_optimization_stage() == 0
    for step in range(4):
        train_step(engine, step)
    ck.save(engine, ckpt_dir, 4, ck.build_client_state(4, {"offset": 4}, cfg.to_dict(), cfg.config_hash()), 1)
    tag = ckpt_dir / "step00000004"
    assert sorted(p.name for p in tag.iterdir()) == [ck.COMPLETE, ck.MODEL_STATES]
    assert not ck.is_partitioned(tag) and ck.saved_world_size(tag) == 1
    assert ck.choose_resume(ckpt_dir, 4) == ck.Resume("step00000004", 4, False)  # no conversion needed
    expected = [train_step(engine, s) for s in range(4, 8)]

    zero, _ = make_engine(123, f"--train.precision={precision}", partitioned=True)
    assert zero.zero_optimization_stage() == 1
    state = ck.load(zero, ckpt_dir)
    assert state["step"] == 4 and zero.global_steps == 4 and state["loader_states"] == [{"offset": 4}]
    got = [train_step(zero, s) for s in range(4, 8)]
    if precision == "fp32":
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    else:  # the ZeRO engine computes with bf16 weights, stage 0 with fp32 weights under autocast
        assert got == pytest.approx(expected, abs=0.02)

    # The other way round needs the ZeRO engine that the trainer builds for it, and says so.
    ck.save(zero, tmp_path / "zero", 8, ck.build_client_state(8, {}, cfg.to_dict(), cfg.config_hash()), 1)
    plain, _ = make_engine(5, f"--train.precision={precision}")
    with pytest.raises(ck.ResumeError, match="ZeRO-partitioned and this engine runs without ZeRO"):
        ck.load(plain, tmp_path / "zero")


def test_rng_states_round_trip(dist_one_rank):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ck.build_client_state(0, {}, {}, "h")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.restore_rank_state(state, rank=0, world_size=1)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_rollback_leftovers_are_kept_and_pruning_counts_complete_tags(dist_one_rank, tmp_path):
    engine, cfg = make_engine(0)
    ckpt_dir = tmp_path / "ck"
    (ckpt_dir / "step00000050").mkdir(parents=True)   # a save interrupted before `latest` moved
    (ckpt_dir / "step00000050_universal").mkdir()      # conversions are never pruned
    state = ck.build_client_state(1, {}, cfg.to_dict(), cfg.config_hash())
    for step in (1, 2, 3):
        ck.save(engine, ckpt_dir, step, state, keep_last=1)
    assert ck.list_tags(ckpt_dir) == ["step00000003", "step00000050"]
    assert ck.find_latest(ckpt_dir) == "step00000003" and (ckpt_dir / "step00000050_universal").is_dir()
    with pytest.raises(ValueError, match="keep_last"):
        ck.save(engine, ckpt_dir, 4, state, keep_last=0)


def test_missing_or_dangling_latest(dist_one_rank, tmp_path):
    engine, _ = make_engine(0)
    assert ck.find_latest(tmp_path / "nothing") is None
    assert ck.load(engine, tmp_path / "nothing") is None  # fresh run
    (tmp_path / "latest").write_text("step00000007")
    with pytest.raises(FileNotFoundError, match=r"names checkpoint 'step00000007'"):
        ck.find_latest(tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'latest' checkpoint"):
        ck.export_fp32(tmp_path / "nothing", tmp_path / "x.safetensors")


@pytest.mark.parametrize("partitioned", [False, True], ids=["stage0", "zero1"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_export_fp32_round_trip_with_tied_weights(dist_one_rank, tmp_path, precision, partitioned):
    engine, cfg = make_engine(0, f"--train.precision={precision}", partitioned=partitioned)
    for step in range(3):
        train_step(engine, step)
    state = ck.build_client_state(3, {}, cfg.to_dict(), cfg.config_hash())
    ck.save(engine, tmp_path / "ck", 3, state, keep_last=1)
    out = tmp_path / "export" / "model.safetensors"
    meta = ck.export_fp32(tmp_path / "ck", out)
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys if k != "temperature")
    assert keys == {"emb.weight", "body.weight", "body.bias", "temperature"}  # the tied head is stored once
    assert json.loads(meta[ck.TIED_METADATA_KEY]) == {"head.weight": "emb.weight"}
    assert meta["step"] == "3" and meta["config_hash"] == cfg.config_hash()
    assert json.loads(meta["config"]) == cfg.to_dict()

    fresh = TiedLM()
    assert ck.load_fp32(fresh, out) == meta
    assert fresh.head.weight is fresh.emb.weight
    exported = torch.cat([p.detach().flatten() for n, p in fresh.named_parameters()
                          if n in ("emb.weight", "body.weight")])
    if partitioned:
        master = engine.optimizer.single_partition_of_fp32_groups[0]  # ZeRO's fp32 master weights
    else:  # stage 0 trains the fp32 weights themselves (bf16 by autocast)
        master = torch.cat([engine.module.emb.weight.detach().flatten(), engine.module.body.weight.detach().flatten()])
        assert engine.module.emb.weight.dtype == torch.float32
    assert torch.equal(exported, master[:exported.numel()])
    for name, p in engine.module.state_dict().items():
        atol = 0 if precision == "fp32" or not partitioned else 1e-2  # bf16 module weights: the rounded masters
        torch.testing.assert_close(fresh.state_dict()[name], p.float(), atol=atol, rtol=0)


WORKER = textwrap.dedent("""
    import json, sys
    import torch, deepspeed
    sys.path.insert(0, sys.argv[4])
    from test_checkpoint import make_engine, train_step
    from t2v_dist import checkpoint as ck

    mode, ckpt_dir, precision = sys.argv[1], sys.argv[2], sys.argv[3]
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    extra = ["--checkpoint.load_universal=true"] if mode == "universal" else []
    # As the trainer does: the checkpoint to resume decides whether one rank runs ZeRO (see make_engine).
    resume = ck.choose_resume(ckpt_dir, world, load_universal=mode == "universal") if mode != "train" else None
    partitioned = resume is not None and ck.is_partitioned(ck.Path(ckpt_dir) / resume.tag)
    engine, cfg = make_engine(100 * rank if mode != "train" else 0, f"--train.precision={precision}", *extra,
                              partitioned=partitioned)
    out = {"rank": rank, "zero_stage": int(engine.zero_optimization_stage())}
    start = 0
    if mode != "train":
        state = ck.load(engine, ckpt_dir, resume.tag)
        start = state["step"]
        out.update(resumed=start, saved_world=state["world_size"],
                   loader=ck.restore_rank_state(state, rank, world))
    losses = []
    for step in range(start, start + 3 if mode != "train" else 11):
        losses.append(train_step(engine, 1000 * step + rank))   # each rank sees its own data
        if mode == "train" and (step + 1) % 4 == 0:
            state = ck.build_client_state(step + 1, {"rank": rank, "offset": step + 1}, cfg.to_dict(),
                                          cfg.config_hash())
            ck.save(engine, ckpt_dir, step + 1, state, keep_last=1)
    out["losses"] = losses
    print("RESULT " + json.dumps(out), flush=True)
    torch.distributed.destroy_process_group()
""")


def run_ranks(tmp_path, world: int, mode: str, ckpt_dir: Path, port: int, precision: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(script), mode, str(ckpt_dir), precision, str(REPO / "tests")],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
        outs.append(json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))))
    return outs


@pytest.mark.slow
def test_two_ranks_resume_exactly_and_universal_checkpoint_resumes_on_one_rank(tmp_path, free_port):
    """bf16 ZeRO-2 over gloo: 2 ranks save at steps 4 and 8 (keep 1); 2 fresh ranks resume with identical
    losses; ds_to_universal converts step 8 and a single rank resumes with the same weights."""
    ckpt_dir = tmp_path / "ck"
    train = run_ranks(tmp_path, 2, "train", ckpt_dir, free_port(), "bf16")
    tag = ckpt_dir / "step00000008"
    assert ck.list_tags(ckpt_dir) == ["step00000008"]
    assert sorted(p.name for p in tag.iterdir()) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ck.COMPLETE, "mp_rank_00_model_states.pt"]

    resumed = run_ranks(tmp_path, 2, "resume", ckpt_dir, free_port(), "bf16")
    for r in (0, 1):
        assert resumed[r]["resumed"] == 8 and resumed[r]["loader"] == {"rank": r, "offset": 8}
        assert resumed[r]["losses"] == train[r]["losses"][8:11]

    # The export merges both ranks' partitions: in fp32 it reproduces rank 0's step-8 loss up to bf16 rounding.
    fresh = TiedLM()
    ck.export_fp32(ckpt_dir, tmp_path / "m.safetensors")
    ck.load_fp32(fresh, tmp_path / "m.safetensors")
    ids = torch.randint(0, VOCAB, (8, 6), generator=torch.Generator().manual_seed(1000 * 8 + 0))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(fresh(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(train[0]["losses"][8], abs=0.02)

    conv = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag),
                           "--output_folder", f"{tag}_universal", "--num_extract_workers", "1",
                           "--num_merge_workers", "1"], capture_output=True, text=True, cwd=REPO)
    assert conv.returncode == 0, conv.stdout[-2000:] + conv.stderr[-2000:]
    assert (ckpt_dir / "latest_universal").read_text() == "step00000008_universal"
    (one,) = run_ranks(tmp_path, 1, "universal", ckpt_dir, free_port(), "bf16")
    assert one["resumed"] == 8 and one["saved_world"] == 2 and one["loader"] is None
    # Same weights and data as rank 0 of the 2-rank run: the first loss (before any update) matches.
    assert one["losses"][0] == train[0]["losses"][8]
    assert torch.isfinite(torch.tensor(one["losses"])).all()


# ------------------------------------------------------------------ which checkpoint a run resumes from

def _save_steps(engine, cfg, ckpt_dir: Path, steps, keep_last: int = 5) -> None:
    for step in steps:
        train_step(engine, step)
        ck.save(engine, ckpt_dir, step, ck.build_client_state(step, {}, cfg.to_dict(), cfg.config_hash()), keep_last)


def test_missing_or_unreadable_latest_is_an_error_listing_complete_tags(dist_one_rank, tmp_path):
    """Never a silent start from step 0 or a rollback: tags without a readable `latest` stop the run."""
    engine, cfg = make_engine(0)
    d = tmp_path / "ck"
    assert ck.choose_resume(d, 1) is None                            # a fresh run
    _save_steps(engine, cfg, d, (1, 2, 3))
    assert json.loads((d / "step00000003" / ck.COMPLETE).read_text())["world_size"] == 1
    (d / "step00000004").mkdir()                                      # a save that never finished
    (d / "step00000004" / ck.MODEL_STATES).write_bytes(b"partial")
    assert ck.choose_resume(d, 1) == ck.Resume("step00000003", 3, False)
    listed = "step00000001, step00000002, step00000003. Resume from one explicitly with --checkpoint.tag=TAG " \
             "(the newest: --checkpoint.tag=step00000003)"

    (d / "latest").unlink()
    with pytest.raises(ck.ResumeError, match="no 'latest' file") as err:
        ck.choose_resume(d, 1)
    assert listed in str(err.value) and "step00000004" not in str(err.value)
    with pytest.raises(ck.ResumeError, match="no 'latest' file"):
        ck.load(engine, d)                                            # load() without a tag decides the same way

    (d / "latest").write_bytes(b"\xff\xfe\x00\x13garbage")
    with pytest.raises(ck.ResumeError, match=f"{d / 'latest'} is unreadable") as err:
        ck.choose_resume(d, 1)
    assert listed in str(err.value)
    (d / "latest").write_text("step00000004")
    with pytest.raises(ck.ResumeError, match="names checkpoint 'step00000004', which is incomplete"):
        ck.choose_resume(d, 1)
    with pytest.raises(ck.ResumeError, match="checkpoint.tag=step00000009: .* is not a complete checkpoint"):
        ck.choose_resume(d, 1, tag="step00000009")

    # The explicit tag wins over the broken pointer, and loads that step.
    chosen = ck.choose_resume(d, 1, tag="step00000002")
    assert chosen == ck.Resume("step00000002", 2, False)
    resumed, _ = make_engine(7)
    assert ck.load(resumed, d, chosen.tag)["step"] == 2 and resumed.global_steps == 2


def _to_universal(tag_dir: Path) -> None:
    conv = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
                           "--output_folder", f"{tag_dir}_universal", "--num_extract_workers", "1",
                           "--num_merge_workers", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert conv.returncode == 0, conv.stdout[-2000:] + conv.stderr[-2000:]


def test_newest_complete_checkpoint_wins_over_latest_universal(dist_one_rank, tmp_path):
    """Universal checkpoints are used only while they are the newest; another world size gets the command."""
    engine, cfg = make_engine(0, partitioned=True)  # a ZeRO checkpoint of one rank (a resumed universal one)
    d = tmp_path / "ck"
    _save_steps(engine, cfg, d, (3,))
    with pytest.raises(ck.ResumeError, match="written by 1 ranks and this run has 2") as err:
        ck.choose_resume(d, 2)
    assert (f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {d}/step00000003 "
            f"--output_folder {d}/step00000003_universal") in str(err.value)
    assert "--checkpoint.load_universal=true" in str(err.value)

    _to_universal(d / "step00000003")
    assert (d / "latest_universal").read_text().strip() == "step00000003_universal"
    regular, universal = ck.Resume("step00000003", 3, False), ck.Resume("step00000003_universal", 3, True)
    assert ck.choose_resume(d, 1) == regular                           # same step: the regular one ...
    assert ck.choose_resume(d, 1, load_universal=True) == universal    # ... unless asked for
    assert ck.choose_resume(d, 2) == universal                         # or the regular one cannot load here
    assert ck.choose_resume(d, 1, tag="step00000003_universal") == universal

    # The run resumed from the universal one saves step 6: from now on step 6 wins, flag or not.
    _save_steps(engine, cfg, d, (6,))
    assert ck.choose_resume(d, 1, load_universal=True) == ck.Resume("step00000006", 6, False)
    assert not ck.set_load_universal(build_deepspeed_config(cfg, 1, "cpu"), ck.Resume("step00000006", 6, False)
                                     )["checkpoint"]["load_universal"]
    fresh, _ = make_engine(5, partitioned=True)
    assert ck.load(fresh, d, "step00000006")["step"] == 6 and fresh.global_steps == engine.global_steps
    # Only a universal checkpoint newer than `latest` is taken on its own.
    (d / "latest").write_text("step00000003")
    assert ck.choose_resume(d, 1) == ck.Resume("step00000003", 3, False)  # a tie again
    (d / "step00000006").rename(d / "step00000002")
    (d / "latest").write_text("step00000002")
    assert ck.choose_resume(d, 1) == universal


DISK_FULL_WORKER = textwrap.dedent("""
    import json, os, sys
    import deepspeed
    sys.path.insert(0, sys.argv[2])
    from test_checkpoint import make_engine, train_step
    from t2v_dist import checkpoint as ck

    ckpt_dir = sys.argv[1]
    deepspeed.init_distributed(dist_backend="gloo")
    engine, cfg = make_engine(0)
    train_step(engine, 0)
    state = ck.build_client_state(1, {}, cfg.to_dict(), cfg.config_hash())
    ck.save(engine, ckpt_dir, 1, state, keep_last=3)
    try:
        with open(ckpt_dir + "/../filler", "wb") as f:   # fill the disk up
            while True:
                f.write(b"x" * 4096)
                f.flush()
    except OSError:
        pass
    try:
        ck.save(engine, ckpt_dir, 2, state, keep_last=3)
        print("RESULT saved", flush=True)
    except ck.CheckpointWriteError as exc:
        print("RESULT " + json.dumps(str(exc)), flush=True)
    print("STATE " + json.dumps([open(ckpt_dir + "/latest").read(), sorted(os.listdir(ckpt_dir))]), flush=True)
""")


def test_a_disk_that_fills_during_a_save_says_so(tmp_path, free_port):
    """A real ENOSPC: a 1 MiB tmpfs in a user + mount namespace, filled up between two saves."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (user namespaces) is not available here")
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    (tmp_path / "worker.py").write_text(DISK_FULL_WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="1", RANK="0",
               LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", PYTHONPATH=str(REPO))
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
              f"exec {sys.executable} {tmp_path / 'worker.py'} {mnt}/ck {REPO / 'tests'}")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("RESULT ", "STATE ")))
    assert "RESULT" in lines and "STATE" in lines, out.stdout[-3000:] + out.stderr[-3000:]
    message = json.loads(lines["RESULT"])
    assert f"writing checkpoint {mnt}/ck/step00000002 failed: the disk holding {mnt}/ck is full" in message, message
    assert "'latest' still names the previous checkpoint" in message
    latest, listing = json.loads(lines["STATE"])
    assert latest == "step00000001" and "step00000001" in listing and "step00000002" not in listing  # partial tag gone


def test_an_explicit_tag_rolls_back_once_not_on_every_relaunch(dist_one_rank, tmp_path):
    """A requeued job relaunches the same command: a --checkpoint.tag it already resumed from must not win again."""
    engine, cfg = make_engine(0)
    run_dir, d = tmp_path, tmp_path / "ck"
    _save_steps(engine, cfg, d, (3, 6))
    assert ck.tag_to_resume(run_dir, d, "step00000003") == "step00000003"     # first use: the way back
    ck.record_config(run_dir, cfg.to_dict(), cfg.config_hash(), 3, "step00000003")
    assert ck.tag_to_resume(run_dir, d, "step00000003") == "step00000003"     # crashed before a save: again
    _save_steps(engine, cfg, d, (4,))                                            # the resumed run saved step 4
    assert (d / "latest").read_text() == "step00000004"
    assert ck.tag_to_resume(run_dir, d, "step00000003") is None                # relaunch: continue from latest
    assert ck.tag_to_resume(run_dir, d, "step00000006") == "step00000006"      # another tag is a new request
    assert ck.tag_to_resume(run_dir, d, None) is None
    history = [json.loads(line) for line in (run_dir / ck.CONFIG_HISTORY).read_text().splitlines()]
    assert json.loads((run_dir / "config.json").read_text()) == cfg.to_dict() == history[0]["config"]
