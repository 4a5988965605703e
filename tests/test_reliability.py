"""Reliability of the training job as an operator meets it: one job per run dir, no silent restart or
rollback, data errors counted over every rank, preemption during evaluation, and clear errors before
DeepSpeed starts. Real 2-rank DeepSpeed runs on real (partly damaged) shards, real signals, a real
full disk (a tmpfs in a user namespace)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from prom_server import free_port
from t2v_dist.runlock import RunLock, RunLockedError
from test_train import (DEEPSPEED, TRAIN, cmdline, env, latest_step, launch_ranks, records,  # noqa: F401
                        shards, wait, wait_until)

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "launch" / "configs" / "demo.yaml")
pytestmark = pytest.mark.timeout(900)


def run_args(shards: Path, run_dir: Path, **over) -> list[str]:
    """Every setting these tests rely on, explicit (the demo config changes)."""
    opts = {"model.preset": "tiny", "model.max_frames": 16, "model.image_size": 32, "model.max_caption_tokens": 32,
            "data.train_shards": f"{shards}/train-*.tar", "data.val_shards": f"{shards}/val-*.tar",
            "data.image_size": 32, "data.frames": 8, "data.token_budget": 64, "data.max_rows": 2,
            "data.max_caption_tokens": 32, "data.num_workers": 1, "train.max_steps": 400, "train.lr": 3e-3,
            "train.warmup_steps": 2, "train.log_every": 1, "train.precision": "fp32",
            "train.gradient_accumulation_steps": 1, "checkpoint.every": 3, "checkpoint.keep_last": 5,
            "eval.every": 0, "metrics.enabled": "false"}
    opts.update({k.replace("__", "."): v for k, v in over.items()})
    return [TRAIN, "--config", DEMO, "--run_dir", str(run_dir), *(f"--{k}={v}" for k, v in opts.items())]


def launch_group(args: list[str], log: Path) -> subprocess.Popen:
    """`deepspeed --num_gpus 2` as its own process group, so a test can signal it as a scheduler does."""
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def preempt_group(launcher: subprocess.Popen, log: Path) -> int:
    """SIGTERM to the launcher's whole process group; wait for every process of it. The launcher's exit code."""
    group = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    os.killpg(launcher.pid, signal.SIGTERM)
    rc = wait(launcher, log, timeout=120)  # `deepspeed` itself dies of the signal at once ...
    _, alive = psutil.wait_procs(group, timeout=120)  # ... while launch.py gives the ranks 30 s to finish
    assert not alive, f"still running: {alive}"
    return rc[0]


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    procs = psutil.Process(launcher.pid).children(recursive=True)
    return next(p.pid for p in procs if f"--local_rank={rank}" in cmdline(p) and TRAIN in cmdline(p))


def run_once(args: list[str], log: Path, world: int = 1, timeout: float = 300) -> tuple[list[int], str, float]:
    """Launch, wait; (exit codes, this launch's log, seconds)."""
    start, offset = time.time(), log.stat().st_size if log.exists() else 0
    rc = wait(launch_ranks(args, log, world=world), log, timeout=timeout)
    return rc, log.read_text()[offset:], time.time() - start


@pytest.fixture(scope="module")
def damaged_shards(shards, tmp_path_factory) -> Path:  # noqa: F811 - the fixture imported from test_train
    """The synthetic shards with every train tar cut at 2/3: every rank skips samples."""
    out = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(shards, out)
    for tar in out.glob("train-*.tar"):
        data = tar.read_bytes()
        tar.write_bytes(data[: len(data) * 2 // 3])
    return out


# ------------------------------------------------------------------------------ the run lock, by itself

HOLD = "import sys; from t2v_dist.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held')"


def test_run_lock_names_its_holder_and_takes_over_only_stale_locks(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = RunLock(tmp_path).acquire()
    # A second job (another process) fails at once, naming this process.
    second = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            env=env(), timeout=120)
    assert second.returncode != 0 and "RunLockedError" in second.stderr
    assert f"is in use by another job (host {socket.gethostname()}, pid {os.getpid()}" in second.stderr
    lock.release()
    assert not lock.path.exists()

    # A job that died holding the lock (here: a process that exits without releasing it): stale on this host.
    subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, check=True, env=env(), timeout=120)
    dead_pid = json.loads(lock.path.read_text())["pid"]
    with RunLock(tmp_path) as taken:
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    assert f"its process {dead_pid} is gone" in caplog.text and not lock.path.exists()

    def holder(**fields):
        lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
                                         "job_id": None, "since": "earlier", **fields}))

    holder(pid_start=1.0)  # this pid, but a process that started at another time: the pid was reused
    RunLock(tmp_path).acquire().release()
    holder()               # this very process, still running
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}, since earlier"):
        RunLock(tmp_path).acquire()

    # On another host the process cannot be checked: never taken over, unless it is this SLURM job, requeued.
    holder(host="node-b", pid=1, job_id="4242")
    with pytest.raises(RunLockedError, match="host node-b, pid 1, SLURM job 4242"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    with pytest.raises(RunLockedError, match="host node-b"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    requeued = RunLock(tmp_path).acquire()
    assert "belongs to this SLURM job 4242 (requeued from host node-b)" in caplog.text
    assert json.loads(requeued.path.read_text())["job_id"] == "4242"
    requeued.release()


# ------------------------------------------------------------------------------------- entry points

def test_train_help_lists_sections_and_how_to_print_every_field():
    out = subprocess.run([sys.executable, TRAIN, "--help"], cwd=REPO, capture_output=True, text=True, env=env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Config sections: model, data, train, eval, checkpoint, metrics" in out.stdout
    assert "python -m t2v_dist.config --config launch/configs/demo.yaml --print" in out.stdout
    fields = subprocess.run([sys.executable, "-m", "t2v_dist.config", "--config", DEMO, "--print",
                             "--train.max_steps=7"], cwd=REPO, capture_output=True, text=True, env=env(), timeout=120)
    assert fields.returncode == 0, fields.stderr
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in fields.stdout.splitlines()[1:]}
    assert rows["train.max_steps"] == ["int", "1000", "7"]           # type, default, this config's value
    assert rows["checkpoint.tag"][:2] == ["str", "|"] and rows["metrics.port"][:2] == ["int", "9400"]
    assert len(rows) > 60


# ----------------------------------------------------------------------------- preflight, before DeepSpeed

def test_preflight_reports_every_problem_before_deepspeed_starts(shards, tmp_path):
    """Empty val pattern, busy metrics port, unwritable run dir and a too-small checkpoint disk: one message,
    in seconds, and DeepSpeed never builds its engine."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    small = tmp_path / "small_disk"
    small.mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    args = run_args(shards, not_a_dir / "run", data__val_shards=f"{shards}/nothing-*.tar", metrics__enabled="true",
                    metrics__port=port, checkpoint__dir=str(small / "ck"))
    cmd = [sys.executable, *args]
    namespaced = subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    if namespaced:  # a 1 MiB disk for the checkpoints: the tiny model's checkpoint needs ~60 MB
        cmd = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs {small} && exec "$@"', "sh", *cmd]
    start = time.time()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env(), timeout=300)
    took = time.time() - start
    busy.close()
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "preflight checks failed before DeepSpeed started" in text, text[-3000:]
    assert f"data.val_shards: pattern '{shards}/nothing-*.tar' matches no file" in text
    assert f"metrics.port: 127.0.0.1:{port} (metrics.port={port} + local rank 0) is in use" in text
    assert f"run_dir: {not_a_dir / 'run'} is not writable" in text
    if namespaced:
        # One checkpoint of the demo model (weights + 2 Adam moments + fp32 master, all in fp32): ~16 bytes/parameter.
        from t2v_dist.config import Config
        from t2v_dist.model import T2VModel

        gib = T2VModel(Config.load(DEMO).model).num_params() * 16 / 2**30
        need = re.search(rf"checkpoint.dir: {small / 'ck'} has 0.00 GiB free, one checkpoint of this model needs "
                         r"about (\d+\.\d+) GiB", text)
        assert need and abs(float(need.group(1)) - gib) <= 0.5 * gib, text[-3000:]
    assert "DeepSpeed info" not in text and "starting at step" not in text  # no engine was built
    assert took < 120, f"preflight took {took:.0f}s"


# ------------------------------------------------- one run dir, one job; summed data errors; no silent restart

def _data_errors_per_rank(shards: Path, run_dir: Path, last_step: int) -> list[dict[int, dict[str, int]]]:
    """[rank] -> step -> skipped samples by reason, from the real loader (no workers: exact)."""
    from t2v_dist.config import Config
    from t2v_dist.data import ShardLoader

    cfg = Config.load(DEMO, run_args(shards, run_dir, data__num_workers=0)[5:])
    ranks = []
    for rank in (0, 1):
        loader = ShardLoader(cfg.data, split="train", rank=rank, world_size=2)
        batches = iter(loader)
        counts = {}
        for step in range(1, last_step + 1):
            next(batches)
            counts[step] = loader.error_counts()
        batches.close()
        ranks.append(counts)
    return ranks


@pytest.mark.slow
def test_one_job_per_run_dir_summed_data_errors_and_no_silent_restart(damaged_shards, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = run_args(damaged_shards, run_dir, data__num_workers=0)
    launcher = launch_group(args, log)
    wait_until(lambda: latest_step(run_dir) >= 3, 400, [launcher], log)

    # A second job on the same run dir fails at once and names the holder: rank 0 of the first job.
    rc, text, took = run_once(args, log)
    assert rc == [1], text[-3000:]
    assert f"is in use by another job (host {socket.gethostname()}, pid {rank_pid(launcher, 0)}" in text
    assert "run.lock" in text and "starting at step" not in text and took < 120

    # Preemption through the deepspeed launcher: the ranks checkpoint and exit 0, the launcher dies of the SIGTERM.
    assert preempt_group(launcher, log) == -signal.SIGTERM
    assert "after a preemption signal" in log.read_text() and not (run_dir / "run.lock").exists()
    stopped = latest_step(run_dir)
    tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step*"))
    assert stopped > 3 and f"step{stopped:08d}" in tags

    # data_errors in the log are both ranks' counts summed (each rank reads its own damaged shards).
    train = records(run_dir)
    rank0, rank1 = _data_errors_per_rank(damaged_shards, run_dir, train[-1]["step"])
    summed = {s: {k: rank0[s].get(k, 0) + rank1[s].get(k, 0) for k in {*rank0[s], *rank1[s]}} for s in rank0}
    assert [r["data_errors"] for r in train] == [summed[r["step"]] for r in train]
    assert rank1[train[-1]["step"]] and summed[train[-1]["step"]] != rank0[train[-1]["step"]]  # not rank 0's alone

    # The accepted config is the run's record, with a history line per accepted start.
    config = json.loads((run_dir / "config.json").read_text())
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 0 and history[0]["resumed_from"] is None
    assert history[0]["config"] == config and config["model"]["n_layer"] == 2

    # `latest` gone or damaged: an error listing the complete tags, never a fresh start or a rollback.
    latest = run_dir / "checkpoints" / "latest"
    good = latest.read_bytes()
    listing = f"Complete checkpoints in {run_dir / 'checkpoints'} (oldest first): {', '.join(tags)}."
    latest.unlink()
    rc, text, _ = run_once(args, log)
    assert rc == [1] and "holds checkpoints but no 'latest' file" in text and listing in text, text[-3000:]
    assert f"--checkpoint.tag={tags[-1]}" in text and "starting at step" not in text and not latest.exists()
    latest.write_bytes(b"\x00\x9c\xffstep")
    rc, text, _ = run_once(args, log)
    assert rc == [1] and f"{latest} is unreadable" in text and listing in text, text[-3000:]
    latest.write_bytes(good)

    # Another world size: the message gives the exact conversion command.
    rc, text, _ = run_once(args, log)
    src = run_dir / "checkpoints" / f"step{stopped:08d}"
    assert rc == [1] and "written by 2 ranks and this run has 1" in text, text[-3000:]
    command = f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {src} --output_folder {src}_universal"
    assert command in text

    # A rejected resume (another model) leaves config.json and its history as they were, and names the field.
    rc, text, _ = run_once(args + ["--model.n_layer=3"], log, world=2)
    assert rc != [0, 0] and "does not fit the model this config builds" in text, text[-3000:]
    assert "model.n_layer: checkpoint 2, this config 3" in text
    assert json.loads((run_dir / "config.json").read_text()) == config
    assert len((run_dir / "config_history.jsonl").read_text().splitlines()) == 1

    # An explicit earlier tag is the one way back; the accepted resume joins the history.
    back = int(tags[0].removeprefix("step"))
    rc, text, _ = run_once(run_args(damaged_shards, run_dir, data__num_workers=0, checkpoint__tag=tags[0],
                                    train__max_steps=back + 1), log, world=2)
    assert rc == [0, 0] and f"resuming at step {back}" in text and f"from checkpoint {tags[0]}" in text, text[-3000:]
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["resumed_from"]) for h in history] == [(0, None), (back, tags[0])]
    assert history[1]["config"]["checkpoint"]["tag"] == tags[0]


# --------------------------------------------------------------------- preemption during sample generation

@pytest.mark.slow
def test_sigterm_during_evaluation_checkpoints_within_the_deadline(shards, tmp_path):
    """SIGTERM to the deepspeed launcher's process group while rank 0 generates 200 sample videos (minutes
    of work): the ranks stop at the next prompt and checkpoint before the launcher's 30 s SIGKILL."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    prompts = "[" + ", ".join(f"a red circle moves left {i}" for i in range(200)) + "]"
    args = run_args(shards, run_dir, eval__every=2, eval__batches=1, eval__num_frames=16, eval__prompts=prompts,
                    eval__formats="[png]", checkpoint__every=0, checkpoint__preempt_deadline_s=20)
    launcher = launch_group(args, log)
    wait_until(lambda: "evaluating at step 2" in log.read_text(), 400, [launcher], log)
    time.sleep(2)  # into the generation
    signalled = time.time()
    assert preempt_group(launcher, log) == -signal.SIGTERM
    text = log.read_text()
    assert latest_step(run_dir) == 2, text[-4000:]
    on_disk = float(re.search(r"after a preemption signal: on disk ([\d.]+)s after it "
                              r"\(checkpoint.preempt_deadline_s=20\)", text).group(1))
    assert on_disk < 20 and time.time() - signalled < 60
    assert "preempted, stopped cleanly at step 2" in text and "not written yet" not in text
    evals = records(run_dir, "eval")
    assert evals and evals[-1]["step"] == 2 and evals[-1]["interrupted"] is True
    sheet = run_dir / "samples" / "step_000002" / "prompts.json"
    assert not sheet.exists() or len(json.loads(sheet.read_text())) < 200  # stopped early, kept what it made


def test_single_process_picks_another_rendezvous_port_when_its_own_was_taken():
    """Between choosing a free port and binding it, another process may take it: a single process tries again."""
    code = """
import os, socket
import t2v_dist.distributed as d
real = d._free_port
taken = socket.socket(); taken.bind(("127.0.0.1", 0)); taken.listen()
ports = iter([taken.getsockname()[1]])
d._free_port = lambda: next(ports, None) or real()   # the first pick is a port someone else holds
env = d.init_distributed()
print("ok", env.world_size, os.environ["MASTER_PORT"] != str(taken.getsockname()[1]))
"""
    clean = {k: v for k, v in env().items() if k not in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=clean,
                         timeout=300)
    assert out.returncode == 0 and "ok 1 True" in out.stdout, out.stderr[-2000:]
