"""bench/gpu_check.sh's plumbing, on a CPU: its dry run writes the JSON and markdown report, and a failing
section does not hide the others."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def gpu_check(out: Path, *args: str, fail: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "GPU_CHECK_FAIL": fail, "GPU_CHECK_WHEELS": str(out / "no-wheels")}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report


def test_dry_run_fails_soft_and_reports_every_section(tmp_path):
    proc, report = gpu_check(tmp_path, "--sections", "env,ops_bench,attention_bench", fail="ops_bench")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    sections = report["sections"]
    assert list(sections) == ["env", "ops_bench", "attention_bench"] and report["dry_run"] is True
    assert sections["ops_bench"]["status"] == "error" and "GPU_CHECK_FAIL" in sections["ops_bench"]["error"]
    assert sections["env"]["status"] == "ok" and sections["env"]["figures"]["cuda_available"] is False
    attention = sections["attention_bench"]
    assert attention["status"] == "ok" and attention["figures"]["fastest"] == "sdpa"
    assert {r["backend"] for r in attention["figures"]["runs"]} == {"sdpa"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| ops_bench | error |" in table and "| attention_bench | ok |" in table


@pytest.mark.slow
def test_dry_run_of_every_section_passes(tmp_path):
    proc, report = gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = {name: s["figures"] for name, s in report["sections"].items()}
    assert all(s["status"] == "ok" for s in report["sections"].values())
    assert figures["cuda_tests"]["collected"] >= 10          # the CUDA tests exist and import
    assert [r["impl"] for r in figures["ops_bench"]["rows"]] == ["reference"]  # the table was parsed
    assert "--train.precision=bf16" in figures["train_gpt2"]["command"]       # and its overrides validated


def test_ops_table_parser_and_targets():
    import sys
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_check import ops_targets, parse_ops_table

    text = ("16f 32x32 F=4096               reference                  12.500    1.00x     400.0    150.0      5%     0.0e+00\n"
            "16f 32x32 F=4096               compile(reference)          5.000    2.50x     100.0    300.0     10%     1.2e-07\n"
            "16f 32x32 F=4096               triton                      0.500   25.00x       2.0   3000.0     80%     3.1e-03\n")
    rows = parse_ops_table(text)
    assert [r["impl"] for r in rows] == ["reference", "compile(reference)", "triton"]
    (check,) = ops_targets(rows, itemsize=2)
    # 4096/16 samples x 4 pairs x 3072 pixels x 2 bytes = 6 MiB: a 2 MiB peak holds no such intermediate
    assert check["pairs_intermediate_mib"] == 6.0 and check["over_read_floor"] == 1.25 and check["ok"]
    (slow,) = ops_targets([{**rows[2], "speedup": 2.0}], itemsize=2)
    assert not slow["ok"]
