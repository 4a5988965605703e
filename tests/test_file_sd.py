"""Prometheus file_sd targets written by each rank (t2v_dist/file_sd.py), with a real metrics endpoint.

A real Prometheus reading these files for a 2-node SLURM job is in tests/test_slurm.py."""
from __future__ import annotations

import json
import socket
import urllib.request

from t2v_dist import file_sd
from t2v_dist.metrics import Metrics


def test_target_points_at_the_served_endpoint_with_job_labels(tmp_path, free_port, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURMD_NODENAME", "node7")
    metrics = Metrics(port=free_port(), bind="127.0.0.1", rank=3, local_rank=0)
    try:
        path = file_sd.write_target(tmp_path, metrics, world_size=4)
        assert path == tmp_path / "prometheus" / "rank00003.json"
        [entry] = json.loads(path.read_text())
        assert entry["labels"] == {"rank": "3", "local_rank": "0", "node": "node7", "job_id": "4711"}
        [target] = entry["targets"]
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
            assert b"t2v_samples_total" in r.read()
        assert [p.name for p in path.parent.iterdir()] == ["rank00003.json"], "no temp file left behind"
        file_sd.remove_target(path)
        assert not path.exists()
    finally:
        metrics.close()


def test_rank0_drops_targets_of_ranks_an_earlier_larger_run_had(tmp_path, free_port, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    folder = tmp_path / "prometheus"
    folder.mkdir()
    for rank in (0, 1, 2, 7):
        (folder / f"rank{rank:05d}.json").write_text("[]")
    metrics = Metrics(port=free_port(), bind="127.0.0.1", rank=0, local_rank=0)
    try:
        file_sd.write_target(tmp_path, metrics, world_size=2)
    finally:
        metrics.close()
    assert sorted(p.name for p in folder.iterdir()) == ["rank00000.json", "rank00001.json"]
    assert "job_id" not in json.loads((folder / "rank00000.json").read_text())[0]["labels"]


def test_wildcard_bind_advertises_the_host_name_and_ipv6_gets_brackets():
    assert file_sd.scrape_host("0.0.0.0") == socket.gethostname() == file_sd.scrape_host("::")
    assert file_sd.scrape_host("10.1.2.3") == "10.1.2.3"
    assert file_sd.target_entry("fe80::1", 9400, 0, 0, "n", None)[0]["targets"] == ["[fe80::1]:9400"]


def test_metrics_off_writes_nothing(tmp_path):
    assert file_sd.write_target(tmp_path, Metrics(enabled=False), world_size=1) is None
    assert not (tmp_path / "prometheus").exists()
