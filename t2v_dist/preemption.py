"""Clean stop on preemption: SIGTERM / SIGUSR1 set a flag, ranks agree on it at step boundaries.

Schedulers signal ranks at different moments (SLURM's `--signal=USR1@120` reaches every task, a
`kill` may reach one), and a rank that leaves the step loop alone would hang the others in the next
collective. `should_stop()` therefore takes the MAX of the flag over all ranks, so every rank stops
after the same step, saves the checkpoint together and exits.

Launchers kill ranks some time after their signal (`deepspeed` 30 s after it forwards SIGTERM), so
the time from the signal to the checkpoint must be bounded: long work (evaluation batches, sample
prompts) polls `requested` and stops at the next unit, `checkpoint_written()` logs the time taken,
and a watchdog logs an error if `deadline_s` passes without a checkpoint, so a lost one is never silent.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
import types

import torch
import torch.distributed as dist

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
log = logging.getLogger("t2v_dist.preemption")


class PreemptionHandler:
    """Install with `install()` in the main thread; poll `should_stop()` once per step on every rank."""

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS,
                 device: torch.device | str = "cpu", deadline_s: float | None = None):
        self.signals = tuple(signals)
        self.device = torch.device(device)  # where the flag is all-reduced: cuda for NCCL, cpu for gloo
        self.deadline_s = deadline_s        # checkpoint.preempt_deadline_s: signal -> checkpoint on disk
        self.received: signal.Signals | None = None
        self.received_at: float | None = None
        self._watchdog: threading.Timer | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # Only record: the step in flight finishes, and saving happens outside the handler.
        if self.received is None:
            self.received = signal.Signals(signum)
            self.received_at = time.monotonic()
            if self.deadline_s is not None:
                self._watchdog = threading.Timer(self.deadline_s, self._overdue)
                self._watchdog.daemon = True
                self._watchdog.start()

    def _overdue(self) -> None:
        log.error("%s arrived %.0f s ago and the preemption checkpoint is not written yet "
                  "(checkpoint.preempt_deadline_s=%g): the launcher may kill this process before it saves",
                  self.received.name, time.monotonic() - self.received_at, self.deadline_s)

    def checkpoint_written(self) -> float | None:
        """Stop the watchdog; seconds from the signal to now (None without a signal). Logs a late checkpoint."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.received_at is None:
            return None
        elapsed = time.monotonic() - self.received_at
        if self.deadline_s is not None and elapsed > self.deadline_s:
            log.error("preemption checkpoint written %.1f s after %s, later than checkpoint.preempt_deadline_s=%g",
                      elapsed, self.received.name, self.deadline_s)
        return elapsed

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    @property
    def requested(self) -> bool:
        """True once this process got a signal (local view, no communication)."""
        return self.received is not None

    def should_stop(self) -> bool:
        """Collective when torch.distributed is initialized: True on every rank if any rank got a signal."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
