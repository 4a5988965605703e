"""Prometheus file-based service discovery: each rank announces its metrics endpoint under the run dir.

A multi-node job's ranks land on hosts that are only known once the job runs (and may change when it
is requeued), so a static scrape config cannot list them. Every rank writes one target file instead:

    RUN_DIR/prometheus/rank00003.json
    [{"targets": ["gpu-node12:9403"],
      "labels": {"rank": "3", "local_rank": "3", "node": "gpu-node12", "job_id": "4711"}}]

and one Prometheus finds them all (see the README's SLURM section):

    scrape_configs:
      - job_name: t2v
        honor_labels: true          # the series' own rank/node labels win over the target's
        file_sd_configs: [{files: ["/shared/runs/paper/prometheus/*.json"], refresh_interval: 10s}]

The host is the metrics bind address, or this host's name when it binds every interface (0.0.0.0).
Files are replaced atomically (Prometheus may read at any moment) and removed at a clean exit, so a
finished job's targets disappear; a crashed rank's file stays and shows as down until the next start.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

TARGETS_DIR = "prometheus"
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")


def target_file(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / TARGETS_DIR / f"rank{rank:05d}.json"


def scrape_host(bind: str) -> str:
    """Where a scraper reaches an endpoint bound to `bind`."""
    return socket.gethostname() if bind in WILDCARD_BINDS else bind


def target_entry(host: str, port: int, rank: int, local_rank: int, node: str, job_id: str | None) -> list[dict]:
    """One file_sd entry; IPv6 hosts get brackets. Label values are strings, as Prometheus requires."""
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    labels = {"rank": str(rank), "local_rank": str(local_rank), "node": node}
    if job_id:
        labels["job_id"] = job_id
    return [{"targets": [address], "labels": labels}]


def write_target(run_dir: str | Path, metrics, world_size: int) -> Path | None:
    """Write this rank's target for the endpoint `metrics` (a `t2v_dist.metrics.Metrics`) serves.

    Returns the file (for `remove_target`), or None when metrics are off. Rank 0 also removes the
    files of ranks beyond `world_size`, left by an earlier, larger run in the same run dir."""
    if not metrics.enabled:
        return None
    path = target_file(run_dir, metrics.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metrics.rank == 0:
        for old in path.parent.glob("rank*.json"):
            stem = old.stem.removeprefix("rank")
            if stem.isdigit() and int(stem) >= world_size:
                old.unlink(missing_ok=True)
    # SLURMD_NODENAME tells apart the nodes of a test cluster that share one host; elsewhere the host name.
    node = os.environ.get("SLURMD_NODENAME") or metrics.node
    entry = target_entry(scrape_host(metrics.bind), metrics.port, metrics.rank, metrics.local_rank, node,
                         os.environ.get("SLURM_JOB_ID"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_target(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
