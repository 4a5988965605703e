"""Clean stop on preemption: SIGTERM / SIGUSR1 set a flag, ranks agree on it at step boundaries.

Schedulers signal ranks at different moments (SLURM's `--signal=USR1@120` reaches every task, a
`kill` may reach one), and a rank that leaves the step loop alone would hang the others in the next
collective. `should_stop()` therefore takes the MAX of the flag over all ranks, so every rank stops
after the same step, saves the checkpoint together and exits.
"""
from __future__ import annotations

import signal
import types

import torch
import torch.distributed as dist

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Install with `install()` in the main thread; poll `should_stop()` once per step on every rank."""

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS,
                 device: torch.device | str = "cpu"):
        self.signals = tuple(signals)
        self.device = torch.device(device)  # where the flag is all-reduced: cuda for NCCL, cpu for gloo
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # Only record: the step in flight finishes, and saving happens outside the handler.
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
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
