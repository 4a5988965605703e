"""Shared fixtures: free loopback ports, a real Prometheus server, a one-rank gloo process group."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from prom_server import PrometheusServer, free_port as _free_port

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed JIT-builds a CPU op on first use; share the build with `make` and other runs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


@pytest.fixture
def free_port():
    """Call it for an unused 127.0.0.1 TCP port."""
    return _free_port


@pytest.fixture
def prometheus(tmp_path):
    """`start(targets)` runs Prometheus scraping `targets` (host:port) every second; stopped after the test."""
    servers: list[PrometheusServer] = []

    def start(targets, scrape_interval: str = "1s") -> PrometheusServer:
        server = PrometheusServer(targets, tmp_path / f"prometheus{len(servers)}", scrape_interval)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def dist_one_rank():
    """torch.distributed (gloo) with this pytest process as the only rank, as DeepSpeed expects."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        deepspeed.init_distributed(dist_backend="gloo")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
