"""The CPU benchmarks that compare the training job with the bare model step still run end to end, with the
tiny preset: the job's own batches are read back for the bare step, and the step profile accounts for the
whole step. No speed is asserted here (speed belongs in BENCHMARKS.md), only that the figures exist and
add up."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_throughput_times_the_bare_step_on_the_jobs_own_batches():
    out = bench("train_throughput.py", "--preset", "tiny", "--worlds", "1", "--precisions", "fp32", "--steps", "4",
                "--clips", "128", "--threads", "1")
    assert out.startswith("CPU: ") and "matmul peak fp32:" in out
    row = next(line.split() for line in out.splitlines() if re.match(r"\s+1\s+fp32\s", line))
    # ranks prec clips/step s/step samples/s frames/s data bare job/bare GFLOP/s %peak
    assert len(row) == 11, row
    clips, job_s, bare_s, share, rate = float(row[2]), float(row[3]), float(row[7]), row[8], float(row[9])
    assert clips > 1 and job_s > 0 and bare_s > 0 and rate > 0
    assert share.endswith("%") and float(share[:-1]) > 0 and row[10].endswith("%")


def test_step_profile_accounts_for_the_whole_step():
    out = bench("step_profile.py", "--preset", "tiny", "--steps", "2", "--clips", "64", "--threads", "1")
    phases = dict(re.findall(r"^\| (forward|backward|gradient clipping|optimizer) \| [\d.]+ \| ([\d.]+)% \|$",
                             out, re.M))
    assert set(phases) == {"forward", "backward", "gradient clipping", "optimizer"}, out
    assert abs(sum(float(v) for v in phases.values()) - 100) < 0.5
    kinds = {k: float(v) for k, v in re.findall(r"^\| ([a-z ,()-]+) \| [\d.]+ \| ([\d.]+)% \|[^|]*\|[^|]*\|$",
                                                 out, re.M)}
    assert {"matmul", "convolution", "normalization", "optimizer"} <= set(kinds), kinds
    assert abs(sum(kinds.values()) - 100) < 1.0
    assert re.search(r"^\| matmul \| [\d.]+ \| [\d.]+% \| \d+ \| \d+% \|$", out, re.M), out  # its own FLOP/s
    share, ceiling = map(float, re.search(r"= ([\d.]+)% of the fp32 matmul peak; .*: ([\d.]+)%$", out, re.M).groups())
    assert 0 < share < ceiling
