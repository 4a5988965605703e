"""Monitoring: monitoring/prometheus.yml and the Grafana dashboard, checked against a real scrape.

A real 2-rank training job (DeepSpeed ZeRO-2 on CPU, one shard with broken samples so the loader counts
errors) announces its ranks through file_sd; a real Prometheus runs the project's prometheus.yml
pointed at that run dir. Every panel expression of the dashboard is evaluated through Prometheus'
query API; the core panels must return data. The metric names on the dashboard and those the ranks
serve must match both ways.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loader_fixtures import write_tar
from prom_server import PrometheusServer, free_port, require_prometheus, two_free_ports

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "t2v.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "t2v.yaml"
PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "t2v.yaml"
# Panels that must show data for any running job (the others may be empty, e.g. no checkpoint yet).
CORE_PANELS = {"Ranks up / expected", "Step", "Samples/s", "Frames/s", "Tokens/s", "Step time per rank",
               "Straggler ratio (max/min over ranks)", "Data-loading share", "Loss by term"}
# Served only where torch sees a GPU: a CPU run cannot show them.
GPU_ONLY = {"t2v_device_peak_memory_bytes"}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out += [p] if p["type"] != "row" else p.get("panels", [])
    return out


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p["targets"]]


def concrete(expr: str, rate_window: str = "10s") -> str:
    """A panel expression with Grafana's variables filled in the way Grafana would."""
    out = (expr.replace("$__rate_interval", rate_window).replace('"$job"', '"t2v"')
           .replace('"$run"', '".*"'))
    assert "$" not in out, f"unhandled Grafana variable in {expr}"
    return out


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bt2v_[a-z0-9_]+", text))


def test_prometheus_config_passes_promtool():
    require_prometheus()
    promtool = shutil.which("promtool")
    assert promtool, "promtool ships with prometheus"
    result = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    job = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["job_name"] == "t2v" and job["honor_labels"] is True
    assert all(f.endswith("/prometheus/rank*.json") for sd in job["file_sd_configs"] for f in sd["files"])


def test_grafana_provisioning_is_self_contained():
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert "${DS_" not in text and "__inputs" not in dashboard  # nothing to fill in on import
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == source["uid"]  # the provisioned source by default
    boxes = []
    for p in panels(dashboard):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"] == p["datasource"] and t["expr"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g))
    for i, (a, ga) in enumerate(boxes):  # no panel hides another
        for b, gb in boxes[i + 1:]:
            overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                       and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
            assert not overlap, (a, b)
    ids = [p["id"] for p in dashboard["panels"]] + [q["id"] for p in dashboard["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids))
    assert CORE_PANELS <= {p["title"] for p in panels(dashboard)}


# ----------------------------------------------------------------------------- a real run, slow

def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def served_names(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """(every name in the exposition, including TYPE lines of families without series; family -> sample names)."""
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {s.name for s in family.samples if not s.name.endswith("_created")}
    declared = set(re.findall(r"^# TYPE (t2v_\w+)", text, re.M))
    return declared | {n for names in families.values() for n in names}, families


@pytest.fixture(scope="module")
def shards_with_errors(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    subprocess.run([sys.executable, "-m", "shards.cli", "synthetic", "--out", str(out), "--num_clips", "96",
                    "--frames", "8", "--size", "32", "--seed", "5", "--samples_per_shard", "12",
                    "--val_fraction", "0.15", "--progress", "False"], check=True, cwd=REPO, timeout=300)
    # Two shards of broken samples, one per rank, so both loaders count errors by reason.
    for n in (0, 1):
        write_tar(out / f"train-broken{n}.tar",
                  [(f"broken{n}_{i}.{ext}", data) for i in range(3)
                   for ext, data in (("frames.npy", b"not an npy file"), ("txt", b"a red circle moves left"))])
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dashboard_against_a_real_two_rank_run(shards_with_errors, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    base = two_free_ports()
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (sd,) = config["scrape_configs"][0]["file_sd_configs"]
    sd["files"], sd["refresh_interval"] = [str(run_dir / "prometheus" / "rank*.json")], "1s"
    args = [str(REPO / "launch" / "train.py"), "--config", str(REPO / "launch" / "configs" / "demo.yaml"),
            "--run_dir", str(run_dir), f"--data.train_shards={shards_with_errors}/train-*.tar",
            f"--data.val_shards={shards_with_errors}/val-*.tar", "--data.frames=8", "--data.token_budget=64",
            "--data.max_rows=2", "--data.num_workers=1", "--train.max_steps=2000", "--train.warmup_steps=2",
            "--train.log_every=5", "--checkpoint.every=4", "--checkpoint.keep_last=1",
            # A small evaluation (the eval panels): one video per prompt, PNG samples only.
            "--eval.every=6", "--eval.batches=1", "--eval.num_frames=8", "--eval.faithfulness_seeds=1",
            "--eval.faithfulness_val_clips=2", "--eval.formats=[png]", "--eval.holdout=false",
            "--metrics.enabled=true", f"--metrics.port={base}", "--metrics.peak_tflops=0.01"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                              env=dict(env, PYTHONUNBUFFERED="1", RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                       LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (0, 1)]
    try:
        with PrometheusServer(None, tmp_path / "prom", config=yaml.safe_dump(config)) as prom:
            # Both ranks found through their file_sd targets, labelled with the run dir they announced in.
            up = prom.wait_for('count(up{job="t2v"} == 1)', lambda v: v == 2, timeout=300)
            ranks = prom.query('up{job="t2v"}')
            assert {s["metric"]["rank"] for s in ranks} == {"0", "1"}
            assert {s["metric"]["run"] for s in ranks} == {str(run_dir)}, ranks
            assert up
            # Enough history for rates, a checkpoint and the broken samples.
            prom.wait_for("min(t2v_step)", lambda v: v >= 6, timeout=300)
            prom.wait_for("sum(t2v_checkpoint_seconds_count)", lambda v: v >= 2, timeout=120)
            prom.wait_for("sum(t2v_data_errors_total)", lambda v: v > 0, timeout=120)
            prom.wait_for("count(t2v_eval_accuracy_ratio)", lambda v: v > 0, timeout=300)

            dashboard = json.loads(DASHBOARD.read_text())
            empty = []
            # Rates over the whole short run: on 2 busy cores a 1 s scrape can time out, and a 10 s window
            # may then hold fewer than the two samples a rate needs.
            prom.wait_for("sum(rate(t2v_samples_total[1m]))", lambda v: v > 0, timeout=120)
            # A reason's series appears when its first error is logged: increase() needs two samples of it.
            prom.wait_for("min(count_over_time(t2v_data_errors_total[1m]))", lambda v: v >= 2, timeout=120)
            for title, expr in expressions(dashboard):
                result = prom.query(concrete(expr, "1m"))  # raises on a parse or evaluation error
                if not result:
                    empty.append(title)
            assert not CORE_PANELS & set(empty), f"core panels without data: {sorted(CORE_PANELS & set(empty))}"
            gpu_panels = {title for title, expr in expressions(dashboard) if metric_names(expr) & GPU_ONLY}
            assert set(empty) <= gpu_panels, f"panels without data on a CPU run: {sorted(set(empty) - gpu_panels)}"

            # Names: every one on the dashboard is served, and every served metric is on the dashboard.
            served, families = set(), {}
            for rank in (0, 1):
                names, fams = served_names(scrape(f"http://127.0.0.1:{base + rank}/metrics"))
                served |= names
                families.update(fams)
            on_dashboard = set().union(*(metric_names(expr) for _, expr in expressions(dashboard)))
            assert on_dashboard - served == GPU_ONLY, f"not served by the ranks: {on_dashboard - served - GPU_ONLY}"
            missing = sorted(f for f, samples in families.items() if f.startswith("t2v_")
                             and not f.endswith("_created")  # the client library's creation timestamps
                             and not (samples | {f, f + "_total"}) & on_dashboard)
            assert not missing, f"served but on no panel: {missing}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], log.read_text()[-4000:]
