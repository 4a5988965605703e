"""End-to-end training: real DeepSpeed ZeRO-2 with 2 CPU ranks over gloo, on real synthetic shards.

Launch styles covered: the `deepspeed --num_gpus 2` launcher, and plain processes with the env://
variables set (what `srun python` and torchrun do). Each run logs the sample keys it trains on per
step, so a resumed run can be compared with an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from prom_server import PrometheusServer, free_port, two_free_ports

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
STEPS = 24
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", "96",
                    "--frames", "8", "--size", "32", "--seed", "3", "--samples_per_shard", "12",
                    "--val_fraction", "0.15", "--progress", "False"], check=True, cwd=REPO)
    return out


def train_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [TRAIN, "--config", str(REPO / "launch" / "configs" / "demo.yaml"), "--run_dir", str(run_dir),
            f"--data.train_shards={shards}/train-*.tar", f"--data.val_shards={shards}/val-*.tar",
            "--data.frames=8", "--data.token_budget=64", "--data.max_rows=2", "--data.num_workers=1",
            f"--train.max_steps={STEPS}", "--train.lr=3e-3", "--train.warmup_steps=2", "--train.log_every=1",
            "--train.log_keys=true", "--checkpoint.every=4", "--checkpoint.keep_last=2", "--eval.every=0",
            "--metrics.enabled=false", *extra]


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    # Not the rendezvous of this pytest process (an in-process test's process group may still hold its port).
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def launch_deepspeed(args: list[str], log: Path) -> subprocess.Popen:
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def launch_ranks(args: list[str], log: Path, world: int = 2) -> list[subprocess.Popen]:
    """One process per rank with the env:// variables set, as `srun python` / torchrun do."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        e = dict(env(), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        # Each rank leads its own process group, as a task under srun does.
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=e, stdout=open(log, "ab"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait(procs, log: Path, timeout: float = 400) -> list[int]:
    procs = procs if isinstance(procs, list) else [procs]
    try:
        return [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"training did not finish in {timeout}s; log:\n{log.read_text()[-4000:]}")


def keys_by_step(run_dir: Path, rank: int) -> dict[int, list[str]]:
    """step -> keys trained at that step; a step replayed after a resume replaces the earlier record."""
    steps: dict[int, list[str]] = {}
    prev = None
    for line in (run_dir / "keys" / f"rank{rank}.tsv").read_text().splitlines():
        step, key = line.split("\t")
        step = int(step)
        if step != prev:
            steps[step] = []
            prev = step
        steps[step].append(key)
    return steps


def latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.exists() else 0


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def cmdline(proc: psutil.Process) -> list[str]:
    """A process's command line; empty for one that exited meanwhile (a DataLoader worker between epochs)."""
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def wait_until(predicate, timeout: float, procs, log: Path) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"training exited early; log:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"condition not reached in {timeout}s; log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run through the deepspeed launcher, with a final evaluation."""
    run_dir = tmp_path_factory.mktemp("reference")
    log = run_dir / "log.txt"
    rc = wait(launch_deepspeed(train_args(shards, run_dir, f"--eval.every={STEPS}", "--eval.num_frames=6"), log), log)
    assert rc == [0], log.read_text()[-4000:]
    return run_dir


def test_zero2_two_ranks_learns_and_writes_everything(reference):
    train = records(reference)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(list(r["losses"].values()))).all() for r in train)
    first = train[0]["losses"]
    last = {k: sum(r["losses"][k] for r in train[-3:]) / 3 for k in first}  # mean of the last 3 steps
    # A small set it can overfit: every term falls, the frame terms several-fold.
    assert last["total"] < 0.6 * first["total"], (first, last)
    assert last["frame"] < first["frame"] / 3 and last["recon"] < 0.6 * first["recon"], (first, last)
    assert last["text"] < first["text"] - 2, (first, last)
    ckpt = reference / "checkpoints" / f"step{STEPS:08d}"
    # ZeRO-2: the optimizer state is partitioned over the two ranks.
    assert (ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()
    assert (ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    kept = sorted(p.name for p in (reference / "checkpoints").glob("step*"))
    assert kept == [f"step{STEPS - 4:08d}", f"step{STEPS:08d}"]  # keep_last=2
    evals = records(reference, "eval")
    assert evals and evals[-1]["step"] == STEPS and set(evals[-1]["losses"]) >= {"total", "text", "frame"}
    samples = Path(evals[-1]["samples_dir"])
    assert (samples / "sample_0.mp4").stat().st_size > 0 and (samples / "sample_0.gif").exists()
    assert (samples / "sample_sheet.png").exists()
    # DeepSpeed's CPU all-reduce buffers (66 MB of /dev/shm per rank, never unlinked by DeepSpeed) are gone.
    port = re.search(r"master_port=(\d+)", (reference / "log.txt").read_text()).group(1)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    # Each rank trains on its own part of the data (79 clips: 3+ steps of the first epoch on either rank).
    k0, k1 = keys_by_step(reference, 0), keys_by_step(reference, 1)
    early0, early1 = (set(sum((k[s] for s in (1, 2, 3)), [])) for k in (k0, k1))
    assert early0 and early1 and not early0 & early1


def test_kill_minus_9_then_relaunch_resumes_exactly(shards, reference, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = train_args(shards, run_dir)
    launcher = launch_deepspeed(args, log)
    wait_until(lambda: latest_step(run_dir) >= 8, 300, [launcher], log)
    ranks = [c for c in psutil.Process(launcher.pid).children(recursive=True) if "train.py" in " ".join(cmdline(c))]
    victim = next(c for c in ranks if "--local_rank=1" in c.cmdline())
    os.kill(victim.pid, signal.SIGKILL)
    assert wait(launcher, log) != [0]
    crashed_at = latest_step(run_dir)
    assert 8 <= crashed_at < STEPS
    assert wait(launch_deepspeed(args, log), log) == [0], log.read_text()[-4000:]
    assert f"resuming at step {crashed_at}" in log.read_text()
    for rank in (0, 1):
        assert keys_by_step(run_dir, rank) == keys_by_step(reference, rank), f"rank {rank} saw other samples"


def test_sigterm_checkpoints_exits_zero_and_relaunch_continues(shards, reference, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = train_args(shards, run_dir, "--checkpoint.every=100")
    procs = launch_ranks(args, log)
    wait_until(lambda: (run_dir / "keys" / "rank1.tsv").exists()
               and len(keys_by_step(run_dir, 1)) >= 5, 300, procs, log)
    # SIGTERM to rank 1's whole process group (its DataLoader worker too), as SLURM does on preemption;
    # rank 0 gets nothing: the ranks must agree to stop together.
    os.killpg(procs[1].pid, signal.SIGTERM)
    assert wait(procs, log) == [0, 0], log.read_text()[-4000:]
    stopped_at = latest_step(run_dir)
    assert 5 <= stopped_at < STEPS, "a checkpoint was written at the signal"
    assert "after a preemption signal" in log.read_text()
    assert wait(launch_ranks(args, log), log) == [0, 0], log.read_text()[-4000:]
    assert latest_step(run_dir) == STEPS
    for rank in (0, 1):
        assert keys_by_step(run_dir, rank) == keys_by_step(reference, rank)


def test_prometheus_scrapes_a_training_run(shards, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    base = two_free_ports()
    args = train_args(shards, run_dir, "--metrics.enabled=true", f"--metrics.port={base}", "--train.max_steps=400",
                      "--checkpoint.every=0")
    value = lambda result: float(result[0]["value"][1])  # noqa: E731
    with PrometheusServer([f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], tmp_path / "prom") as prom:
        procs = launch_ranks(args, log)
        try:
            # Both ranks' exporters are scraped, and the counters and gauges carry real values.
            samples = prom.wait_for('min(t2v_samples_total{job="t2v"}) and count(t2v_samples_total) == 2',
                                    lambda v: v > 0, timeout=240)
            assert value(samples) > 0
            loss = prom.wait_for('t2v_loss{term="total",rank="1"}', lambda v: v > 0, timeout=60)
            assert 0 < value(loss) < 100
            share = prom.query("max(t2v_data_loading_ratio)")
            assert 0 <= value(share) <= 1
            assert prom.query("t2v_step_seconds_count") and prom.query("t2v_learning_rate")
            assert len(prom.query("t2v_frames_total")) == 2  # one series per rank
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            assert wait(procs, log) == [0, 0], log.read_text()[-4000:]


def test_bad_config_fails_fast_naming_the_field(tmp_path):
    demo = str(REPO / "launch" / "configs" / "demo.yaml")
    bad_key = subprocess.run([sys.executable, TRAIN, "--config", demo, "--train.max_step=3"], cwd=REPO,
                             capture_output=True, text=True, env=env(), timeout=120)
    assert bad_key.returncode != 0 and "train.max_step" in bad_key.stderr and "did you mean" in bad_key.stderr
    bad_batch = subprocess.run([sys.executable, TRAIN, "--config", demo, "--train.train_batch_size=3"], cwd=REPO,
                               capture_output=True, text=True, env=dict(env(), WORLD_SIZE="2"), timeout=120)
    assert bad_batch.returncode != 0 and "train.train_batch_size" in bad_batch.stderr
    bad_value = subprocess.run([sys.executable, TRAIN, "--config", demo, "--train.lr=-1"], cwd=REPO,
                               capture_output=True, text=True, env=env(), timeout=120)
    assert bad_value.returncode != 0 and "train.lr" in bad_value.stderr


def test_fp32_export_loads_and_generates(reference, tmp_path):
    out = tmp_path / "model.safetensors"
    subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), "--run_dir", str(reference), "--out", str(out)],
                   cwd=REPO, check=True, env=env(), timeout=300)
    from t2v_dist.export import load_exported

    model, meta = load_exported(out)
    assert int(meta["step"]) == STEPS
    states = torch.load(reference / "checkpoints" / f"step{STEPS:08d}" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)["module"]
    for name, value in model.state_dict().items():
        if name in states:
            torch.testing.assert_close(value, states[name].float(), msg=name)
    from t2v_dist.tokenizer import encode_caption, load_tokenizer

    ids = encode_caption(load_tokenizer(), "a red circle moves left", model.cfg.max_caption_tokens)
    video = model.generate([ids], num_frames=4, seed=0)
    assert video.shape == (1, 4, 32, 32, 3) and video.dtype == torch.uint8


def test_universal_checkpoint_resumes_on_one_rank(shards, reference, tmp_path):
    """2 ranks -> 1 rank: ds_to_universal, then --checkpoint.load_universal; the loader re-splits the epoch."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    (run_dir / "checkpoints").mkdir(parents=True)
    tag = f"step{STEPS:08d}"
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                    "--input_folder", str(reference / "checkpoints" / tag),
                    "--output_folder", str(run_dir / "checkpoints" / f"{tag}_universal")],
                   cwd=REPO, check=True, env=env(), timeout=300, capture_output=True)
    assert (run_dir / "checkpoints" / "latest_universal").read_text().strip() == f"{tag}_universal"
    args = train_args(shards, run_dir, f"--train.max_steps={STEPS + 4}", "--checkpoint.load_universal=true",
                      "--checkpoint.every=0")
    assert wait(launch_ranks(args, log, world=1), log) == [0], log.read_text()[-4000:]
    train = records(run_dir)
    assert train[0]["step"] == STEPS + 1 and train[-1]["step"] == STEPS + 4
    # The weights came back: the loss continues near where the 2-rank run ended, far below a fresh start.
    ended = records(reference)[-1]["losses"]["total"]
    fresh = records(reference)[0]["losses"]["total"]
    assert train[0]["losses"]["total"] < (ended + fresh) / 2


def test_one_rank_checkpoint_resumes_on_two_ranks(shards, tmp_path):
    """1 rank (no ZeRO: one checkpoint file, the trainer clips and logs the norm) -> 2 ZeRO-2 ranks with no
    conversion: the full weights and Adam state are split over the partitions and training goes on."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = train_args(shards, run_dir, "--train.max_steps=8", "--checkpoint.every=8")
    assert wait(launch_ranks(args, log, world=1), log) == [0], log.read_text()[-4000:]
    one = records(run_dir)
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in one)
    tag = run_dir / "checkpoints" / "step00000008"
    assert sorted(p.name for p in tag.iterdir()) == ["complete.json", "mp_rank_00_model_states.pt"]
    args = train_args(shards, run_dir, "--train.max_steps=12", "--checkpoint.every=12")
    assert wait(launch_ranks(args, log, world=2), log) == [0, 0], log.read_text()[-4000:]
    assert "resuming at step 8: 2 ranks" in log.read_text()
    two = records(run_dir)[len(one):]
    assert [r["step"] for r in two] == list(range(9, 13))
    # The weights and moments came back: the loss goes on near where the 1-rank run ended, not from scratch.
    ended, fresh = one[-1]["losses"]["total"], one[0]["losses"]["total"]
    assert two[0]["losses"]["total"] < (ended + fresh) / 2
    assert len(list((run_dir / "checkpoints" / "step00000012").glob("*zero_pp_rank_*"))) == 2


def test_nonfinite_losses_are_skipped_then_stop_the_run(shards, tmp_path):
    """An absurd learning rate drives the weights to inf: each bad micro-batch is skipped and counted,
    and max_bad_steps of them in a row stop the run with a clear message and a non-zero exit code."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = train_args(shards, run_dir, "--train.lr=1e30", "--train.min_lr=0", "--train.warmup_steps=0",
                      "--train.grad_clip=0", "--train.max_bad_steps=3", "--checkpoint.every=0")
    rc = wait(launch_ranks(args, log, world=1), log)
    text = log.read_text()
    assert rc != [0]
    assert "non-finite loss on some rank, micro-batch skipped (1 in a row)" in text
    assert "loss was NaN/inf for 3 micro-batches in a row (train.max_bad_steps=3)" in text


def test_resuming_with_another_model_fails_clearly(shards, reference, tmp_path):
    import shutil

    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    args = train_args(shards, run_dir, "--model.unet_base=16", f"--train.max_steps={STEPS + 2}")
    assert wait(launch_ranks(args, log), log) != [0, 0]
    assert "does not fit the model this config builds" in log.read_text()
