"""Everything that needs a GPU, in one run: writes gpu_check.json and gpu_check.md (run by bench/gpu_check.sh).

    python bench/gpu_check.py --out runs/gpu_check [--budget-s 480] [--dry-run] [--sections a,b]

Sections (each fails soft: its error is recorded and the next one runs; the report is rewritten
after every section, so a run cut short still leaves one):
  env              torch, CUDA, the GPU, which optional packages import
  cuda_tests       tests/test_attention.py (xformers and varlen vs SDPA in bf16, forward and backward)
                   and the compiled Triton loss kernel vs the reference (tests/test_ops_triton.py)
  ops_bench        bench/ops_motion_loss.py; targets: the Triton kernel >= 3x the eager reference,
                   within 1.5x of the read floor, and no (N_pairs, P) intermediate in its peak memory
  attention_bench  bench/attention.py at the real row lengths: decides attention.AUTO_ORDER
  train_gpt2       a short real run of launch/train.py: gpt2 preset, bf16, FusedAdam, the Triton
                   loss; tokens/s, samples/s, peak memory and MFU (target >= 40% on H100/H200)
--dry-run (or GPU_CHECK_DRY=1) checks the plumbing on a CPU in about a minute: the same commands
at toy sizes, the tests only collected, the training run's config validated but not run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "cuda_tests", "ops_bench", "attention_bench", "train_gpt2")
# Each section's share of the time budget (seconds at most); the total stays under 8 minutes on an H100/H200.
CAPS = {"env": 30, "cuda_tests": 100, "ops_bench": 110, "attention_bench": 70, "train_gpt2": 220}
CUDA_TESTS = ["tests/test_attention.py", "tests/test_ops_triton.py::test_compiled_kernel_on_cuda_matches_reference"]
TARGETS = {"ops_speedup_min": 3.0, "ops_over_read_floor_max": 1.5, "mfu_min": 0.40}


class SectionFailed(Exception):
    """A section ran but missed what it checks; its figures are still reported."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


def run(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> tuple[int, str]:
    """Run cmd (its own process group, killed whole on timeout); (exit code, output). 124 = timed out."""
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, log.read_text(errors="replace")


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---- sections ---------------------------------------------------------------------------------

def section_env(ctx) -> dict:
    import importlib.util

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "dry_run": ctx.dry}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count)
    elif not ctx.dry:
        raise SectionFailed("no CUDA device: run with --dry-run on a CPU")
    out["packages"] = {name: importlib.util.find_spec(name) is not None
                       for name in ("xformers", "triton", "deepspeed", "webdataset", "av", "fire")}
    out["varlen_attn"] = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    return out


def section_cuda_tests(ctx) -> dict:
    xml = ctx.out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}", *CUDA_TESTS]
    if ctx.dry:
        cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *CUDA_TESTS]
    rc, text = run(cmd, ctx.timeout("cuda_tests"), ctx.out / "cuda_tests.log")
    if ctx.dry:
        collected = re.search(r"(\d+) tests? collected", text)
        if rc or not collected:
            raise SectionFailed(f"pytest --collect-only exited {rc}:\n{tail(text)}")
        return {"collected": int(collected.group(1))}
    if not xml.exists():
        raise SectionFailed(f"pytest exited {rc} without a report:\n{tail(text)}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    skipped = re.findall(r"^SKIPPED \[\d+\] (.*)$", text, re.M)
    result = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
              "skip_reasons": skipped}
    if rc or counts["failures"] or counts["errors"]:
        raise SectionFailed(tail(text, 30), result)
    return result


# bench/ops_motion_loss.py's closing table: fixed-width columns (size 28, implementation 22)
_OPS_ROW = re.compile(r"^(?P<size>\d+f \d+x\d+ F=\d+)\s+(?P<impl>\S.{0,21}?)\s+(?P<ms>[\d.]+)\s+(?P<speedup>[\d.]+)x\s+"
                      r"(?P<peak>[\d.]+)\s+(?P<gbs>[\d.]+)\s+(?P<read>\d+)%\s+(?P<err>\S+)$")


def parse_ops_table(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        m = _OPS_ROW.match(line.strip())
        if m:
            size = re.match(r"(\d+)f (\d+)x\d+ F=(\d+)", m["size"])
            rows.append({"size": m["size"], "frames_per_sample": int(size[1]), "image_size": int(size[2]),
                         "frames_per_step": int(size[3]), "impl": m["impl"].strip(), "ms": float(m["ms"]),
                         "speedup": float(m["speedup"]), "peak_mib": float(m["peak"]), "gbs": float(m["gbs"]),
                         "read_share": int(m["read"]) / 100, "max_rel_err": float(m["err"])})
    return rows


def ops_targets(rows: list[dict], itemsize: int, pairs_per_sample: int = 4) -> list[dict]:
    """Per size, the Triton kernel against the three targets."""
    checks = []
    for r in rows:
        if r["impl"] != "triton":
            continue
        pixels = 3 * r["image_size"] ** 2
        n_pairs = r["frames_per_step"] // r["frames_per_sample"] * pairs_per_sample
        intermediate_mib = n_pairs * pixels * itemsize / 2**20
        over_floor = 1 / r["read_share"] if r["read_share"] > 0 else float("inf")
        checks.append({"size": r["size"], "speedup": r["speedup"], "over_read_floor": round(over_floor, 2),
                       "peak_mib": r["peak_mib"], "pairs_intermediate_mib": round(intermediate_mib, 2),
                       "max_rel_err": r["max_rel_err"],
                       "ok": r["speedup"] >= TARGETS["ops_speedup_min"]
                       and over_floor <= TARGETS["ops_over_read_floor_max"]
                       and r["peak_mib"] < intermediate_mib and r["max_rel_err"] < 2e-2})
    return checks


def section_ops_bench(ctx) -> dict:
    cmd = [sys.executable, "bench/ops_motion_loss.py"]
    if ctx.dry:
        cmd += ["--sizes", "quick", "--no-compile", "--warmup", "0", "--iters", "1"]
    rc, text = run(cmd, ctx.timeout("ops_bench"), ctx.out / "ops_bench.log")
    rows = parse_ops_table(text)
    if rc or not rows:
        raise SectionFailed(f"bench/ops_motion_loss.py exited {rc}, {len(rows)} table rows:\n{tail(text)}")
    itemsize = 4 if "float32" in text.splitlines()[1] else 2
    checks = ops_targets(rows, itemsize)
    result = {"rows": rows, "targets": checks}
    if not ctx.dry and (not checks or not all(c["ok"] for c in checks)):
        raise SectionFailed("targets missed: " + json.dumps([c for c in checks if not c["ok"]]), result)
    return result


def section_attention_bench(ctx) -> dict:
    out = ctx.out / "attention_bench.json"
    cmd = [sys.executable, "bench/attention.py", "--out", str(out)]
    if ctx.dry:
        cmd += ["--rows", "2", "--row-len", "64", "--heads", "2", "--head-dim", "16", "--warmup", "0", "--iters", "1"]
    rc, text = run(cmd, ctx.timeout("attention_bench"), ctx.out / "attention_bench.log")
    if rc or not out.exists():
        raise SectionFailed(f"bench/attention.py exited {rc}:\n{tail(text)}")
    result = json.loads(out.read_text())
    summary = {k: result[k] for k in ("fastest", "auto_picks", "auto_order", "auto_agrees", "skipped")}
    summary["runs"] = result["runs"]
    bad = [r for r in result["runs"] if r["max_rel_err_vs_sdpa"] > 2e-2]
    if bad:
        raise SectionFailed(f"backends differ from sdpa: {bad}", summary)
    if not ctx.dry and not result["auto_agrees"]:
        raise SectionFailed(f"the fastest backend is {result['fastest']} but auto picks {result['auto_picks']}: "
                            f"reorder t2v_dist/attention.py AUTO_ORDER", summary)
    return summary


def train_command(shards: Path, run_dir: Path, steps: int, port: int, rows: int, workers: int) -> list[str]:
    return [sys.executable, "launch/train.py", "--config", "launch/configs/paper.yaml", "--run_dir", str(run_dir),
            "--model.preset=gpt2", "--model.loss_backend=triton", "--model.attn_backend=auto",
            f"--data.train_shards={shards}/train-*.tar", "--data.val_shards=", "--data.resampled=true",
            f"--data.num_workers={workers}", "--data.token_budget=1024", f"--data.max_rows={rows}",
            f"--train.max_steps={steps}", "--train.precision=bf16", "--train.warmup_steps=1", "--train.log_every=1",
            "--eval.every=0", "--checkpoint.every=0", "--metrics.enabled=true", f"--metrics.port={port}"]


class MetricsPoller:
    """Scrapes rank 0's Prometheus endpoint every second: MFU and peak GPU memory as the run goes."""

    def __init__(self, port: int):
        self.url, self.samples = f"http://127.0.0.1:{port}/metrics", []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            try:
                text = urllib.request.urlopen(self.url, timeout=1).read().decode()
            except OSError:
                continue
            values = {}
            for name in ("t2v_mfu_ratio", "t2v_device_peak_memory_bytes"):
                m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
                if m:
                    values[name] = float(m.group(1))
            if values:
                self.samples.append(values)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section_train_gpt2(ctx) -> dict:
    shards, run_dir = ctx.work / "shards", ctx.work / "run_gpt2"
    clips = 64 if ctx.dry else 4096
    rc, text = run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(shards), "--num_clips", str(clips),
                    "--frames", "16", "--size", "32", "--samples_per_shard", str(clips // 16), "--workers", "0",
                    "--progress", "False"], ctx.timeout("train_gpt2"), ctx.out / "train_shards.log")
    if rc:
        raise SectionFailed(f"building synthetic shards exited {rc}:\n{tail(text)}")
    port = _free_port()
    cmd = train_command(shards, run_dir, steps=ctx.args.train_steps, port=port, rows=ctx.args.train_rows,
                        workers=ctx.args.train_workers)
    if ctx.dry:  # validate every override against the config schema, start nothing
        check = [sys.executable, "-m", "t2v_dist.config", "--config", "launch/configs/paper.yaml",
                 *[a for a in cmd[4:] if a.startswith("--") and "=" in a]]
        rc, text = run(check, ctx.timeout("train_gpt2"), ctx.out / "train_gpt2.log")
        if rc:
            raise SectionFailed(f"the training run's config is invalid:\n{tail(text)}")
        return {"command": " ".join(cmd), "config_hash": json.loads(text.split("\n", 1)[1])["config_hash"]}
    env = {"TORCH_EXTENSIONS_DIR": str(ctx.work / "torch_extensions")}
    poller = MetricsPoller(port)
    try:
        rc, text = run(cmd, ctx.timeout("train_gpt2"), ctx.out / "train_gpt2.log", env)
    finally:
        poller.stop()
    records = []
    log = run_dir / "train_log.jsonl"
    if log.exists():
        records = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "train"]
    steady = records[len(records) // 4:] or records  # the first steps compile kernels and fill the loader
    result = {"command": " ".join(cmd), "exit_code": rc, "steps_logged": len(records)}
    for key in ("tokens_per_s", "samples_per_s", "step_seconds", "data_share"):
        values = [r[key] for r in steady if key in r]
        if values:
            result[key] = statistics.median(values)
    mfus = [s["t2v_mfu_ratio"] for s in poller.samples[len(poller.samples) // 4:] if "t2v_mfu_ratio" in s]
    peaks = [s["t2v_device_peak_memory_bytes"] for s in poller.samples if "t2v_device_peak_memory_bytes" in s]
    if mfus:
        result["mfu"] = statistics.median(mfus)
    if peaks:
        result["peak_memory_gib"] = round(max(peaks) / 2**30, 2)
    optimizer = re.search(r"Basic Optimizer = (\w+)", text)
    attention = re.search(r"attention backend: (\w+)", text)
    result.update(optimizer=optimizer.group(1) if optimizer else None, attention=attention.group(1) if attention else None)
    if rc or not records:
        raise SectionFailed(f"launch/train.py exited {rc} after {len(records)} logged steps:\n{tail(text, 30)}", result)
    if result.get("optimizer") != "FusedAdam":
        raise SectionFailed(f"the optimizer was {result.get('optimizer')}, not FusedAdam", result)
    if result.get("mfu", 0) < TARGETS["mfu_min"]:
        raise SectionFailed(f"MFU {result.get('mfu')} is under {TARGETS['mfu_min']:.0%}", result)
    return result


SECTION_FNS = {"env": section_env, "cuda_tests": section_cuda_tests, "ops_bench": section_ops_bench,
               "attention_bench": section_attention_bench, "train_gpt2": section_train_gpt2}


# ---- the run and its report ---------------------------------------------------------------------

class Context:
    def __init__(self, args):
        self.args, self.dry, self.out = args, args.dry_run, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.deadline = time.monotonic() + args.budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, section: str) -> float:
        return min(CAPS[section], max(1.0, self.left()))


def summary_line(name: str, result: dict) -> str:
    f = result.get("figures") or {}
    if name == "env":
        return f"{f.get('gpu', 'no GPU')}, torch {f.get('torch')}, CUDA {f.get('cuda')}"
    if name == "cuda_tests":
        if "collected" in f:
            return f"{f['collected']} tests collected (dry run)"
        return f"{f.get('passed', '?')} passed, {f.get('failures', '?')} failed, {f.get('skipped', '?')} skipped"
    if name == "ops_bench":
        return "; ".join(f"{c['size']}: {c['speedup']}x ref, {c['over_read_floor']}x floor, {c['peak_mib']} MiB"
                         for c in f.get("targets", [])) or f"{len(f.get('rows', []))} rows, no Triton rows"
    if name == "attention_bench":
        return f"fastest {f.get('fastest')}, auto picks {f.get('auto_picks')}"
    if name == "train_gpt2":
        if "tokens_per_s" not in f:
            return f.get("config_hash", "") and f"config valid ({f['config_hash'][:12]})"
        mfu = f"{100 * f['mfu']:.1f}%" if "mfu" in f else "n/a"
        return (f"{f['tokens_per_s']:.0f} tokens/s, {f.get('samples_per_s', 0):.0f} samples/s, "
                f"MFU {mfu}, peak {f.get('peak_memory_gib', 'n/a')} GiB, {f.get('optimizer')}, {f.get('attention')}")
    return ""


def write_report(ctx, results: dict) -> None:
    report = {"dry_run": ctx.dry, "budget_s": ctx.args.budget_s, "targets": TARGETS, "sections": results,
              "ok": all(r["status"] == "ok" for r in results.values())}
    (ctx.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# GPU check{' (dry run, CPU)' if ctx.dry else ''}", "",
             "| section | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for name, r in results.items():
        error = (r.get("error") or "").strip().splitlines()[:1]
        text = "; ".join(t for t in ([summary_line(name, r)] if r.get("figures") else []) + [e[:160] for e in error] if t)
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {text.replace('|', '/')} |")
    (ctx.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu_check"))
    ap.add_argument("--budget-s", type=float, default=460, help="the whole run's time; sections get what is left")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1",
                    help="check the plumbing on a CPU (also GPU_CHECK_DRY=1)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in this order")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--train-rows", type=int, default=16, help="packed rows of 1024 positions per step")
    ap.add_argument("--train-workers", type=int, default=8, help="loader workers")
    args = ap.parse_args()
    ctx = Context(args)
    chosen = [s for s in args.sections.split(",") if s]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    results: dict[str, dict] = {}
    for name in chosen:
        t0 = time.monotonic()
        if ctx.left() < 5:
            results[name] = {"status": "skipped", "seconds": 0.0, "error": "out of time budget"}
        else:
            try:
                if name in os.environ.get("GPU_CHECK_FAIL", "").split(","):  # exercises fail-soft in the tests
                    raise RuntimeError(f"GPU_CHECK_FAIL names {name}")
                results[name] = {"status": "ok", "figures": SECTION_FNS[name](ctx)}
            except SectionFailed as exn:
                results[name] = {"status": "fail", "error": str(exn), "figures": exn.figures}
            except Exception as exn:
                results[name] = {"status": "error", "error": f"{type(exn).__name__}: {exn}"}
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['seconds']:.0f} s)", flush=True)
        write_report(ctx, results)
    print((ctx.out / "gpu_check.md").read_text())
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
