"""Metrics: the exporter's text format, no-op mode, logs, and a real Prometheus scraping two ranks."""
from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from t2v_dist.metrics import Metrics, StepLogger, format_console, peak_flops_per_device, resident_memory_bytes

LOSSES = {"text": 2.5, "frame": 0.25, "recon": 0.125, "motion": -0.05, "total": 2.8}


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def non_loopback_address() -> str | None:
    """This host's outbound IPv4 address (no packet is sent), None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.fixture
def metrics(free_port):
    m = Metrics(port=free_port(), rank=3, local_rank=0, node="nodeA", peak_flops=1e12, world_size=4)
    yield m
    m.close()


def step(m: Metrics, **over):
    kw = dict(step=1, step_seconds=0.5, data_seconds=0.1, samples=4, frames=40, tokens=100, losses=LOSSES,
              lr=3e-4, grad_norm=0.75, flops=2.5e11)
    kw.update(over)
    m.observe_step(**kw)


def test_exporter_serves_every_metric_with_labels(metrics):
    step(metrics)
    step(metrics, step=2, samples=6, frames=60, tokens=150)
    metrics.set_data_errors({"bad_npy": 2})
    metrics.set_data_errors({"bad_npy": 5, "too_long": 1})
    metrics.observe_checkpoint(3.0)
    got = scrape(metrics.url)
    rl = dict(rank="3", node="nodeA")
    assert got[("t2v_samples_total", labels(**rl))] == 10
    assert got[("t2v_frames_total", labels(**rl))] == 100
    assert got[("t2v_tokens_total", labels(**rl))] == 250
    assert got[("t2v_step", labels(**rl))] == 2
    assert got[("t2v_world_size", labels(**rl))] == 4
    assert got[("t2v_step_seconds_count", labels(**rl))] == 2
    assert got[("t2v_step_seconds_sum", labels(**rl))] == pytest.approx(1.0)
    assert got[("t2v_data_wait_seconds_sum", labels(**rl))] == pytest.approx(0.2)
    assert got[("t2v_data_loading_ratio", labels(**rl))] == pytest.approx(0.2)
    for term, value in LOSSES.items():
        assert got[("t2v_loss", labels(term=term, **rl))] == pytest.approx(value)
    assert got[("t2v_learning_rate", labels(**rl))] == pytest.approx(3e-4)
    assert got[("t2v_grad_norm", labels(**rl))] == pytest.approx(0.75)
    assert got[("t2v_mfu_ratio", labels(**rl))] == pytest.approx(0.5)  # 2.5e11 FLOP in 0.5 s on a 1e12 FLOP/s device
    assert got[("t2v_data_errors_total", labels(reason="bad_npy", **rl))] == 5  # cumulative counts, not summed
    assert got[("t2v_data_errors_total", labels(reason="too_long", **rl))] == 1
    assert got[("t2v_checkpoint_seconds_count", labels(**rl))] == 1
    assert got[("t2v_nonfinite_steps_total", labels(**rl))] == 0
    assert got[("t2v_process_resident_memory_bytes", labels(**rl))] > 10 * 2**20


def test_nonfinite_loss_is_counted_and_shown(metrics):
    step(metrics, losses={**LOSSES, "total": math.nan})
    step(metrics, losses={**LOSSES, "total": math.inf})
    step(metrics)
    got = scrape(metrics.url)
    assert got[("t2v_nonfinite_steps_total", labels(rank="3", node="nodeA"))] == 2
    assert got[("t2v_loss", labels(rank="3", node="nodeA", term="total"))] == pytest.approx(2.8)


def test_port_is_base_plus_local_rank_and_bind_is_loopback(free_port):
    base = free_port()
    m = Metrics(port=base, rank=5, local_rank=1, node="n")
    try:
        assert m.port == base + 1 and m.url == f"http://127.0.0.1:{base + 1}/metrics"
        step(m)
        assert scrape(m.url)[("t2v_samples_total", labels(rank="5", node="n"))] == 4
        other = non_loopback_address()
        if other is not None:  # bound to loopback only: the host's other addresses do not answer
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((other, m.port)) != 0
    finally:
        m.close()
    with socket.socket() as s:  # closed: nothing listens there any more (TIME_WAIT allowed)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", base + 1))
        s.listen()


def test_busy_port_error_names_the_setting(free_port):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(OSError, match=rf"metrics.port={port}"):
            Metrics(port=port, rank=0, local_rank=0)


def test_disabled_metrics_are_noops():
    m = Metrics(enabled=False, port=1, rank=0, local_rank=0)
    step(m)
    m.set_data_errors({"x": 1})
    m.observe_checkpoint(1.0)
    m.close()
    assert m.url is None and not hasattr(m, "registry")


def test_from_config_and_peak_flops(free_port):
    class Cfg:
        enabled, port, bind, peak_tflops = True, free_port(), "127.0.0.1", 0.0

    m = Metrics.from_config(Cfg, rank=0, local_rank=0, device="cpu")
    try:
        step(m)
        got = scrape(m.url)
        assert not any(name == "t2v_mfu_ratio" for name, _ in got)  # CPU peak unknown: no made-up MFU
    finally:
        m.close()
    assert peak_flops_per_device("cpu") is None
    assert peak_flops_per_device("cpu", peak_tflops=2.0) == 2e12
    assert resident_memory_bytes() > 0


def test_step_logger_writes_strict_json_lines_and_console(tmp_path):
    out = io.StringIO()
    log = StepLogger(tmp_path / "logs" / "metrics.jsonl", stream=out)
    record = dict(step=7, max_steps=100, losses={**LOSSES, "total": math.nan}, lr=1e-4, grad_norm=1.5,
                  samples_per_s=12.5, frames_per_s=2500.0, tokens_per_s=123456.0, flops_per_s=2.5e11, step_seconds=0.25,
                  data_share=0.04, memory_bytes=3 * 2**30)
    log.log(record)
    log.log({"kind": "eval", "step": 7, "losses": {"total": 1.0}}, console=False)
    log.close()

    def no_nan(token):
        raise AssertionError(f"non-standard JSON token {token}")

    lines = [json.loads(line, parse_constant=no_nan) for line in
             (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["losses"]["total"] == "nan" and lines[1]["kind"] == "eval"
    assert lines[0]["step"] == 7 and "time" in lines[0]
    console = out.getvalue().strip().splitlines()
    assert len(console) == 1
    assert console[0] == format_console(record)
    for piece in ("train step 7/100", "loss nan", "text 2.5", "lr 1.00e-04", "gnorm 1.5", "2.5k frames/s",
                  "123.5k tokens/s", "250.0G flops/s", "0.250 s/step, data 4%", "mem 3.00 GiB"):
        assert piece in console[0], piece
    StepLogger(tmp_path / "never.jsonl", enabled=False).log(record)  # non-zero ranks: nothing at all
    assert not (tmp_path / "never.jsonl").exists()


EXPORTER = textwrap.dedent("""
    import sys, time
    from t2v_dist.metrics import Metrics
    base, local_rank = int(sys.argv[1]), int(sys.argv[2])
    m = Metrics(port=base, rank=local_rank, local_rank=local_rank, node="testnode")
    print("serving", m.port, flush=True)
    step = 0
    while True:
        step += 1
        m.observe_step(step=step, step_seconds=0.1, data_seconds=0.01, samples=2, frames=16, tokens=50,
                       losses={"text": 3.0, "frame": 0.5, "recon": 0.25, "motion": -0.1, "total": 3.7},
                       lr=1e-3, grad_norm=0.9)
        m.set_data_errors({"corrupt": step // 5})
        time.sleep(0.1)
""")


def test_real_prometheus_scrapes_two_ranks(prometheus, free_port, tmp_path):
    base = free_port()
    while True:  # rank 1 serves base + 1, which must be free as well
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            base = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", EXPORTER, str(base), str(r)], stdout=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    try:
        for p in procs:
            assert p.stdout.readline().startswith("serving"), "exporter did not start"
        prom = prometheus([f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"])
        samples = prom.wait_for("t2v_samples_total", lambda v: v > 0, timeout=60)
        prom.wait_for('count(up{job="t2v"} == 1)', lambda v: v == 2, timeout=60)
        result = prom.wait_for('t2v_loss{term="frame"}', lambda v: v == 0.5, timeout=30)
        ranks = {s["metric"]["rank"] for s in prom.wait_for('t2v_loss{term="total"}', timeout=30)}
        assert ranks == {"0", "1"}
        assert {s["metric"]["node"] for s in samples} == {"testnode"}
        assert all(s["metric"]["term"] == "frame" for s in result)
        prom.wait_for("sum(rate(t2v_frames_total[5s]))", lambda v: v > 0, timeout=30)
        prom.wait_for("sum(t2v_data_errors_total)", lambda v: v > 0, timeout=30)
        prom.wait_for("t2v_process_resident_memory_bytes", lambda v: v > 2**20, timeout=30)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
            p.stdout.close()
