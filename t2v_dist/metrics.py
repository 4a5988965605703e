"""Training telemetry: a Prometheus endpoint per rank, a JSON-lines log and a console line.

Each rank serves its own registry on `port + local_rank` (so ranks of one node do not collide),
bound to 127.0.0.1 unless configured otherwise. Every series carries `rank` and `node` labels;
sum over ranks in PromQL for job totals, e.g.

    sum(rate(t2v_samples_total[1m]))                                    samples/s of the job
    rate(t2v_data_wait_seconds_sum[5m]) / rate(t2v_step_seconds_sum[5m])  data-loading share

Names follow Prometheus conventions: the unit last (`_seconds`, `_bytes`), `_total` on counters and
`_ratio` on gauges in 0..1. monitoring/grafana/dashboards/t2v.json plots every metric served here.

The training loop calls `observe_step` once per optimizer step; `Metrics(enabled=False, ...)` keeps
the same API with every call a no-op and no server.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any, Mapping

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LOSS_TERMS = ("text", "frame", "recon", "motion", "total")
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), matched against the CUDA device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops_per_device(device: torch.device | str, peak_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device for MFU: the configured value, else the table for known GPUs, else None."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def resident_memory_bytes() -> int:
    """Resident set size of this process, from /proc (psutil is not a dependency)."""
    with open("/proc/self/statm", "rb") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class Metrics:
    """Prometheus metrics of one rank. All methods are no-ops when `enabled` is False."""

    def __init__(self, *, enabled: bool = True, port: int = 9400, bind: str = "127.0.0.1", rank: int = 0,
                 local_rank: int = 0, node: str | None = None, peak_flops: float | None = None, world_size: int = 1):
        self.enabled = enabled
        self.rank, self.local_rank = rank, local_rank
        self.node = node or socket.gethostname()
        self.port = port + local_rank
        self.bind = bind
        self.peak_flops = peak_flops
        self._server = self._thread = None
        self._error_counts: dict[str, int] = {}
        if not enabled:
            return
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("rank", "node")
        reg = self.registry

        def child(metric):
            return metric.labels(rank=str(rank), node=self.node)

        self._samples = child(Counter("t2v_samples", "Training samples processed", labels, registry=reg))
        self._frames = child(Counter("t2v_frames", "Video frames processed", labels, registry=reg))
        self._tokens = child(Counter("t2v_tokens", "Non-padding sequence positions processed", labels, registry=reg))
        self._step_seconds = child(Histogram("t2v_step_seconds", "Wall time of one optimizer step, data wait included",
                                             labels, buckets=STEP_BUCKETS, registry=reg))
        self._data_seconds = child(Histogram("t2v_data_wait_seconds", "Time one step waited for its batches",
                                             labels, buckets=WAIT_BUCKETS, registry=reg))
        self._data_share = child(Gauge("t2v_data_loading_ratio", "Share of the last step spent waiting for data (0..1)",
                                       labels, registry=reg))
        self._loss = Gauge("t2v_loss", "Last training loss by term (unweighted terms; total is the weighted sum)",
                           labels + ("term",), registry=reg)
        self._lr = child(Gauge("t2v_learning_rate", "Learning rate of the last step", labels, registry=reg))
        self._grad_norm = child(Gauge("t2v_grad_norm", "Global gradient L2 norm before clipping", labels, registry=reg))
        self._step = child(Gauge("t2v_step", "Optimizer steps completed", labels, registry=reg))
        # The ranks the job was started with: a dashboard compares it with the ranks Prometheus reaches.
        child(Gauge("t2v_world_size", "Ranks in the training job", labels, registry=reg)).set(world_size)
        # Without a known device peak there is no MFU series at all rather than a made-up one.
        self._mfu = child(Gauge("t2v_mfu_ratio", "Model FLOPs utilisation of the last step (0..1)", labels,
                                registry=reg)) if peak_flops else None
        self._nonfinite = child(Counter("t2v_nonfinite_steps", "Micro-batches whose loss was NaN or infinite (skipped)", labels,
                                        registry=reg))
        self._errors = Counter("t2v_data_errors", "Samples the loader skipped, by reason", labels + ("reason",),
                               registry=reg)
        self._checkpoint_seconds = child(Histogram("t2v_checkpoint_seconds", "Wall time of one checkpoint save",
                                                   labels, buckets=CHECKPOINT_BUCKETS, registry=reg))
        # The last evaluation (t2v_dist.evaluation; rank 0 only): text faithfulness, its floors, motion, PSNR.
        self._eval_accuracy = Gauge("t2v_eval_accuracy_ratio", "Detector accuracy of generated videos (0..1), "
                                    "by attribute and prompt split (all, seen, unseen)",
                                    labels + ("attribute", "split"), registry=reg)
        self._eval_floor = Gauge("t2v_eval_floor_accuracy_ratio", "Accuracy of the evaluation's floors (0..1)",
                                 labels + ("attribute", "floor"), registry=reg)
        self._eval_motion = child(Gauge("t2v_eval_motion_ratio", "Mean |frame difference| of generated over real "
                                        "clips (0: static videos)", labels, registry=reg))
        self._eval_psnr = Gauge("t2v_eval_psnr_db", "Teacher-forced next-frame PSNR on val clips, by predictor "
                                "(model, copy_previous)", labels + ("predictor",), registry=reg)
        if os.path.exists("/proc/self/statm"):
            child(Gauge("t2v_process_resident_memory_bytes", "Resident memory of the rank process", labels,
                        registry=reg)).set_function(resident_memory_bytes)
        if torch.cuda.is_available():
            child(Gauge("t2v_device_peak_memory_bytes", "Peak GPU memory allocated by torch", labels,
                        registry=reg)).set_function(torch.cuda.max_memory_allocated)
        try:
            self._server, self._thread = start_http_server(self.port, addr=bind, registry=reg)
        except OSError as exc:
            raise OSError(f"metrics: cannot serve on {bind}:{self.port} (metrics.port={port} + local rank "
                          f"{local_rank}): {exc}") from exc

    @classmethod
    def from_config(cls, cfg, rank: int, local_rank: int, device: torch.device | str = "cpu") -> "Metrics":
        """From a `config.MetricsConfig`; MFU uses the device's peak when it is known."""
        world_size = (torch.distributed.get_world_size() if torch.distributed.is_initialized()
                      else int(os.environ.get("WORLD_SIZE", "1")))
        return cls(enabled=cfg.enabled, port=cfg.port, bind=cfg.bind, rank=rank, local_rank=local_rank,
                   peak_flops=peak_flops_per_device(device, cfg.peak_tflops) if cfg.enabled else None,
                   world_size=world_size)

    @property
    def url(self) -> str | None:
        return f"http://{self.bind}:{self.port}/metrics" if self.enabled else None

    def observe_step(self, *, step: int, step_seconds: float, data_seconds: float, samples: int, frames: int,
                     tokens: int, losses: Mapping[str, Any], lr: float, grad_norm: float | None = None,
                     flops: float | None = None) -> None:
        """One optimizer step of this rank. `losses` maps term -> scalar (float or tensor), with 'total'.

        A non-finite total counts in t2v_nonfinite_steps_total; the gauges still show the value.
        """
        if not self.enabled:
            return
        self._step.set(step)
        self._step_seconds.observe(step_seconds)
        self._data_seconds.observe(data_seconds)
        if step_seconds > 0:
            self._data_share.set(min(max(data_seconds / step_seconds, 0.0), 1.0))
        self._samples.inc(samples)
        self._frames.inc(frames)
        self._tokens.inc(tokens)
        for term, value in losses.items():
            self._loss.labels(rank=str(self.rank), node=self.node, term=term).set(float(value))
        total = float(losses["total"]) if "total" in losses else math.nan
        if not math.isfinite(total):
            self._nonfinite.inc()
        self._lr.set(lr)
        if grad_norm is not None:
            self._grad_norm.set(float(grad_norm))
        if flops is not None and self._mfu is not None and step_seconds > 0:
            self._mfu.set(flops / step_seconds / self.peak_flops)

    def set_data_errors(self, counts: Mapping[str, int]) -> None:
        """Cumulative skipped-sample counts by reason (the loader's `error_counts()`); adds the increase."""
        if not self.enabled:
            return
        for reason, count in counts.items():
            delta = int(count) - self._error_counts.get(reason, 0)
            if delta > 0:
                self._errors.labels(rank=str(self.rank), node=self.node, reason=reason).inc(delta)
            self._error_counts[reason] = int(count)

    def observe_nonfinite(self) -> None:
        """A micro-batch whose loss was NaN or infinite, skipped by the trainer."""
        if self.enabled:
            self._nonfinite.inc()

    def observe_checkpoint(self, seconds: float) -> None:
        if self.enabled:
            self._checkpoint_seconds.observe(seconds)

    def observe_eval(self, report: Mapping[str, Any]) -> None:
        """The report of `t2v_dist.evaluation.evaluate_model`; parts it lacks (or None values) are left alone."""
        if not self.enabled:
            return
        ids = {"rank": str(self.rank), "node": self.node}
        faith = report.get("faithfulness") or {}
        for split, key in (("all", "accuracy"), ("seen", "seen"), ("unseen", "unseen")):
            scores = faith.get(key)
            for attribute, value in (scores or {}).items():
                if attribute != "n" and value is not None:
                    self._eval_accuracy.labels(**ids, attribute=attribute, split=split).set(value)
        for floor, scores in (report.get("floors") or {}).items():
            for attribute, value in scores.items():
                self._eval_floor.labels(**ids, attribute=attribute, floor=floor).set(value)
        if (report.get("motion") or {}).get("ratio") is not None:
            self._eval_motion.set(report["motion"]["ratio"])
        forced = report.get("teacher_forced") or {}
        for predictor, key in (("model", "psnr_db"), ("copy_previous", "copy_previous_psnr_db")):
            if forced.get(key) is not None:
                self._eval_psnr.labels(**ids, predictor=predictor).set(forced[key])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


# ------------------------------------------------------------------------------ logs for people

def _json_safe(value: Any) -> Any:
    """Plain JSON (no NaN tokens, which strict parsers reject): non-finite floats become strings."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.1f}"


def format_console(record: Mapping[str, Any]) -> str:
    """One human line from a step record; keys that are absent are left out.

    Known keys: kind, step, max_steps, losses {term: value} (with 'total'), lr, grad_norm,
    samples_per_s, frames_per_s, tokens_per_s, flops_per_s (model FLOPs, all ranks), step_seconds,
    data_share, memory_bytes, mfu.
    """
    r = record
    parts = []
    head = f"{r.get('kind', 'train')} step {r['step']}" if "step" in r else r.get("kind", "train")
    if "max_steps" in r:
        head += f"/{r['max_steps']}"
    parts.append(head)
    losses = dict(r.get("losses", {}))
    if losses:
        total = losses.pop("total", None)
        terms = " ".join(f"{k} {float(v):.4g}" for k, v in losses.items())
        parts.append((f"loss {float(total):.4f} " if total is not None else "") + f"[{terms}]")
    if "lr" in r:
        parts.append(f"lr {r['lr']:.2e}")
    if r.get("grad_norm") is not None:
        parts.append(f"gnorm {float(r['grad_norm']):.3g}")
    rates = [f"{_si(r[k])} {k[:-6]}/s" for k in ("samples_per_s", "frames_per_s", "tokens_per_s", "flops_per_s")
             if k in r]
    if rates:
        parts.append(" ".join(rates))
    if "step_seconds" in r:
        timing = f"{r['step_seconds']:.3f} s/step"
        if "data_share" in r:
            timing += f", data {100 * r['data_share']:.0f}%"
        parts.append(timing)
    if "mfu" in r:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if "memory_bytes" in r:
        parts.append(f"mem {r['memory_bytes'] / 2**30:.2f} GiB")
    return " | ".join(parts)


class StepLogger:
    """Rank 0's run log: one JSON object per line in `path` and one console line per record."""

    def __init__(self, path: str | Path | None, stream: IO[str] | None = sys.stdout, enabled: bool = True):
        self.enabled = enabled
        self.stream = stream
        self._file = None
        if enabled and path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def log(self, record: Mapping[str, Any], console: bool = True) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            line = json.dumps({"time": time.time(), **_json_safe(dict(record))}, allow_nan=False)
            self._file.write(line + "\n")
            self._file.flush()
        if console and self.stream is not None:
            print(format_console(record), file=self.stream, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
