"""launch/slurm.sh and launch/shards_slurm.sh on a real SLURM: two slurmd (node0, node1) on 127.0.0.1.

The module starts a private cluster (tests/slurm/cluster_start.sh: its own munged, slurmctld and
slurmd under /tmp, non-default ports, found by the clients through SLURM_CONF) and stops it after.
Jobs train the tiny demo config for a few steps on 2 CPU ranks. Covered: 1 node x 2 tasks, 2 nodes
x 1 task, USR1 preemption -> checkpoint -> requeue on the same job id -> exact resume, the requeue
cap, a crashed rank, Prometheus finding every rank through the file_sd targets, and the shard array
job. Skipped only where SLURM cannot be installed (not root, no apt); under CI=true that fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from prom_server import PrometheusServer
from test_train import keys_by_step, latest_step

REPO = Path(__file__).resolve().parents[1]
SLURM_SH = str(REPO / "launch" / "slurm.sh")
SHARDS_SH = str(REPO / "launch" / "shards_slurm.sh")
STEPS = 8
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port_run(n: int) -> int:
    """A port p with p .. p+n-1 all free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must provide SLURM (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    """Environment for sbatch/scontrol against a private 2-node cluster; stopped after the module."""
    if os.geteuid() != 0:
        _unavailable("SLURM test cluster needs root (munged user switch, slurmd mount namespaces)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        _unavailable("SLURM is not installed and apt-get is not available to install it")
    folder = Path(f"/tmp/t2v-slurm-{os.getpid()}")  # short: munge's socket path must fit in 108 bytes
    env = dict(os.environ, T2V_SLURM_DIR=str(folder), T2V_SLURM_NODES="2", T2V_SLURM_PORT=str(_free_port_run(3)))
    start = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "cluster_start.sh")], env=env,
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    try:
        if start.returncode != 0:
            if shutil.which("sbatch") is None:
                _unavailable(f"SLURM could not be installed: {start.stderr[-1000:]}")
            pytest.fail(f"cluster_start.sh failed:\n{start.stdout}\n{start.stderr[-3000:]}")
        job_env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"), GLOO_SOCKET_IFNAME="lo",
                       T2V_METRICS_BIND="127.0.0.1", T2V_PYTHON=sys.executable, T2V_TASK_EXIT_WAIT="15",
                       PYTHONUNBUFFERED="1")
        job_env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            job_env.pop(var, None)
        yield job_env
    finally:
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "cluster_stop.sh"), "--purge"], env=env,
                       capture_output=True, timeout=120)


def sbatch(env: dict, *args: str, **extra_env: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], env=dict(env, **extra_env), cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().split(";")[0]


def job_info(env: dict, job: str) -> dict[str, str]:
    line = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                          timeout=30, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def wait_job(env: dict, job: str, log: Path | None = None, timeout: float = 400) -> dict[str, str]:
    """Poll scontrol (sbatch --wait polls every 32 s) until the job ended; its fields."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(env, job)
        if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"job {job} did not end in {timeout}s; log:\n{log.read_text()[-4000:] if log else ''}")


def wait_until(predicate, env: dict, job: str, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        state = job_info(env, job)["JobState"]
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "COMPLETING"):
            pytest.fail(f"job {job} ended ({state}) before the condition; log:\n{log.read_text()[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"condition not reached in {timeout}s; log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def train_job(env: dict, run_dir: Path, nodes: int, tasks_per_node: int, *overrides: str, steps: int = STEPS,
              **extra_env: str) -> tuple[str, Path]:
    log = run_dir / "slurm.out"
    run_dir.mkdir(parents=True, exist_ok=True)
    job = sbatch(env, f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--cpus-per-task=1",
                 f"--output={log}", "--time=15", SLURM_SH,
                 "--config", str(REPO / "launch" / "configs" / "demo.yaml"), "--run_dir", str(run_dir),
                 f"--data.train_shards={env['T2V_TEST_SHARDS']}/train-*.tar",
                 f"--data.val_shards={env['T2V_TEST_SHARDS']}/val-*.tar", "--data.frames=8",
                 "--data.token_budget=64", "--data.max_rows=2", "--data.num_workers=1",
                 f"--train.max_steps={steps}", "--train.warmup_steps=2", "--train.log_every=1",
                 "--train.log_keys=true", "--checkpoint.every=4", "--eval.every=0", "--metrics.enabled=false",
                 *overrides, **extra_env)
    return job, log


@pytest.fixture(scope="module")
def env(cluster, tmp_path_factory) -> dict:
    """The cluster's job environment plus the training shards."""
    shards = tmp_path_factory.mktemp("shards")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(shards), "--num_clips", "96",
                    "--frames", "8", "--size", "32", "--seed", "3", "--samples_per_shard", "12",
                    "--val_fraction", "0.15", "--progress", "False"], check=True, cwd=REPO, capture_output=True)
    return dict(cluster, T2V_TEST_SHARDS=str(shards))


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> Path:
    """1 node x 2 tasks, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    job, log = train_job(env, run_dir, nodes=1, tasks_per_node=2)
    info = wait_job(env, job, log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text()[-4000:]
    return run_dir


def test_one_node_two_tasks_trains_to_completion(reference):
    text = (reference / "slurm.out").read_text()
    assert "start: 2 tasks on node" in text and "training finished" in text
    assert latest_step(reference) == STEPS
    ckpt = reference / "checkpoints" / f"step{STEPS:08d}"
    assert (ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()
    assert (ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    assert sorted(keys_by_step(reference, 0)) == list(range(1, STEPS + 1))


def test_two_nodes_preempted_requeued_resume_exactly(env, reference, tmp_path):
    """2 nodes x 1 task; USR1 (as SLURM's --signal sends it) -> checkpoint, exit 75, requeue of the same
    job id, resume; the ranks train on exactly the samples of the uninterrupted 1-node run."""
    run_dir = tmp_path / "run"
    job, log = train_job(env, run_dir, nodes=2, tasks_per_node=1)
    wait_until(lambda: (run_dir / "keys" / "rank1.tsv").exists() and len(keys_by_step(run_dir, 1)) >= 2,
               env, job, log)
    subprocess.run(["scancel", "--signal=USR1", "--full", job], env=env, check=True, timeout=30)
    info = wait_job(env, job, log)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-4000:]
    assert "start: 2 tasks on node[0-1]" in text
    assert f"preempted, checkpoint saved: requeueing job {job} (requeue 1 of at most 10)" in text
    stopped = re.search(r"resuming at step (\d+)", text)
    assert stopped and 2 <= int(stopped.group(1)) < STEPS, text[-4000:]
    assert "training finished" in text and latest_step(run_dir) == STEPS
    for rank in (0, 1):
        assert keys_by_step(run_dir, rank) == keys_by_step(reference, rank), f"rank {rank} saw other samples"


def test_prometheus_finds_every_rank_and_the_requeue_cap_fails_the_job(env, tmp_path):
    """2 nodes x 1 task with metrics: a real Prometheus with the project's file_sd config scrapes both
    ranks, again after a requeue; preempted once more than T2V_MAX_REQUEUES=1, the job fails."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = _free_port_run(2)
    config = (REPO / "monitoring" / "prometheus.yml").read_text()
    config = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", config)
    config = re.sub(r"refresh_interval: \S+", "refresh_interval: 1s", config)
    config = re.sub(r"- /shared/runs/demo/prometheus/rank\*\.json", f"- {run_dir}/prometheus/rank*.json", config)
    assert str(run_dir) in config
    with PrometheusServer(None, tmp_path / "prom", config=config) as prom:
        job, log = train_job(env, run_dir, 2, 1, "--metrics.enabled=true", steps=2000, T2V_METRICS_PORT=str(base),
                             T2V_METRICS_NODE_STRIDE="1", T2V_MAX_REQUEUES="1")
        for restart in (0, 1):
            def both_ranks_scraped():
                up = prom.query(f'up{{job_id="{job}"}} == 1 and on(rank) t2v_step{{job_id="{job}"}} >= 1')
                return {(s["metric"]["rank"], s["metric"]["node"]) for s in up} == {("0", "node0"), ("1", "node1")}
            wait_until(both_ranks_scraped, env, job, log)
            targets = {json.loads((run_dir / "prometheus" / f"rank{r:05d}.json").read_text())[0]["targets"][0]
                       for r in (0, 1)}
            assert targets == {f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"}
            assert job_info(env, job)["Restarts"] == str(restart)
            subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True, timeout=30)
            if restart == 0:
                wait_until(lambda: job_info(env, job)["Restarts"] == "1" and "restart 1] start" in log.read_text(),
                           env, job, log)
        info = wait_job(env, job, log)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "75:0"), text[-4000:]
    assert "preempted, checkpoint saved, but the job was requeued 1 times already (T2V_MAX_REQUEUES=1)" in text
    assert 2 <= latest_step(run_dir) < 2000  # the checkpoint of the last preemption is there to resume from
    assert not list((run_dir / "prometheus").glob("rank*.json")), "a clean exit removes the targets"


def test_a_crashed_rank_fails_the_job_without_requeue(env, tmp_path):
    run_dir = tmp_path / "run"
    job, log = train_job(env, run_dir, 1, 2, steps=2000)
    wait_until(lambda: (run_dir / "keys" / "rank1.tsv").exists(), env, job, log)
    ranks = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job}".encode() in environ and b"SLURM_PROCID=1" in environ
                and b"launch/train.py" in cmdline and b"SLURM_STEP_ID=0" in environ):
            ranks.append(int(proc.name))
    assert ranks, "rank 1 of the job not found"
    os.kill(min(ranks), signal.SIGKILL)  # the rank, not its DataLoader worker (a later child); the OOM killer's way
    info = wait_job(env, job, log)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "137:0", "0"), text[-4000:]
    assert "task 1: Killed" in text
    assert "training failed with exit code 137" in text and "requeueing" not in text


def _tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_array_job_builds_the_shards_of_a_single_build(env, tmp_path):
    args = ["synthetic", "--num_clips", "70", "--frames", "4", "--size", "16", "--seed", "5",
            "--samples_per_shard", "8", "--val_fraction", "0.2"]
    single, split = tmp_path / "single", tmp_path / "array"
    subprocess.run([sys.executable, "-m", "shards.cli", *args, "--out", str(single), "--progress", "False"],
                   cwd=REPO, check=True, capture_output=True)
    array = sbatch(env, "--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/%x-%A_%a.out", SHARDS_SH,
                   *args, "--out", str(split))
    for task in range(3):
        info = wait_job(env, f"{array}_{task}", tmp_path / f"t2v-shards-{array}_{task}.out")
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0")
    final_log = tmp_path / f"t2v-shards-final-{array}.out"
    deadline = time.time() + 120
    while not (final_log.exists() and "every shard verified" in final_log.read_text()):
        assert time.time() < deadline, final_log.read_text() if final_log.exists() else "no final step log"
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in tmp_path.glob("t2v-shards-*.out"))
    assert all(f"task {k} of 3" in logs for k in range(3))
    tars = sorted(p.name for p in single.glob("*.tar"))
    assert len(tars) >= 6 and tars == sorted(p.name for p in split.glob("*.tar"))
    for name in tars:
        assert (split / name).read_bytes() == (single / name).read_bytes(), name
        assert _tar_members(split / name) == _tar_members(single / name)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (single, split))
    for field in ("splits", "inputs", "samples", "errors", "settings"):
        assert a[field] == b[field], field
    assert {**a["config"], "out": None} == {**b["config"], "out": None}


def test_launchers_refuse_to_run_outside_sbatch_and_bad_exit_code_is_refused():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for script in (SLURM_SH, SHARDS_SH):
        run = subprocess.run(["bash", script, "synthetic", "--out", "x"], env=env, capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
        assert run.returncode == 2 and "run it with sbatch" in run.stderr, run.stderr
    from t2v_dist.config import Config, ConfigError

    assert Config.load(None, ["--train.preempted_exit_code=75"]).train.preempted_exit_code == 75
    with pytest.raises(ConfigError, match="train.preempted_exit_code"):
        Config.load(None, ["--train.preempted_exit_code=300"])
