"""A real Prometheus server for tests: scrapes given targets every second on 127.0.0.1.

    with PrometheusServer(["127.0.0.1:9400"], workdir) as prom:
        value = prom.wait_for("sum(t2v_samples_total)", lambda v: v > 0)

`PrometheusServer(None, workdir, config=TEXT)` runs a given config file instead (e.g. the project's
monitoring/prometheus.yml with its file_sd paths pointed at a test's run dir).

`require_prometheus()` skips a test when the binary is missing on a developer machine but fails it
under CI (CI=true), where .ci/run installs the Debian package.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_free_ports() -> int:
    """A base port such that base and base + 1 (rank 1's exporter) are both free."""
    while True:
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue


def require_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "the `prometheus` binary is not installed (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must provide it (.ci/run installs it)")
        pytest.skip(reason)
    return binary


class PrometheusServer:
    def __init__(self, targets: Sequence[str] | None, workdir: str | Path, scrape_interval: str = "1s",
                 config: str | None = None):
        self.binary = require_prometheus()
        self.targets = list(targets or [])
        self.config = config
        self.workdir = Path(workdir)
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config or
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: t2v\n"
            f"    scrape_interval: {self.scrape_interval}\n"
            f"    static_configs:\n      - targets: {json.dumps(self.targets)}\n")
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def query(self, expr: str) -> list[dict]:
        """Instant query -> the API's result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def wait_for(self, expr: str, predicate: Callable[[float], bool] = lambda v: True,
                 timeout: float = 30.0) -> list[dict]:
        """Poll until some series of `expr` has a value satisfying `predicate`; returns the result vector."""
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            last = self.query(expr)
            if any(predicate(float(s["value"][1])) for s in last):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"{expr!r} never satisfied the predicate within {timeout}s; last result {last}; "
                           f"targets {self.query('up')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
