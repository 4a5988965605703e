"""One job per run dir: an exclusive lock file `<run_dir>/run.lock` held by rank 0 while a job runs.

The file names its holder (host, pid, the pid's start time, SLURM job id, start time). A second job
fails at once with a message naming the holder. A lock is stale, and is taken over with a warning,
when its process is gone on this host (crash, `kill -9`), or when it belongs to this same SLURM job
on another host (a requeued job keeps its SLURM_JOB_ID; SLURM ends the old instance first). A lock
held on another host by another job is never taken over: only its owner knows it is gone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import psutil

LOCK_NAME = "run.lock"
log = logging.getLogger("t2v_dist.runlock")


class RunLockedError(RuntimeError):
    """Another job holds the run dir."""


def _identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": psutil.Process(pid).create_time(),
            "job_id": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(holder: dict) -> bool:
    """Is the holder's process still running on this host (and not a reused pid)?"""
    try:
        proc = psutil.Process(int(holder["pid"]))
        start = holder.get("pid_start")
        return start is None or abs(proc.create_time() - float(start)) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def stale_reason(holder: dict, me: dict) -> str | None:
    """Why the holder's lock may be taken over, or None if the holder may still be running."""
    if holder.get("host") == me["host"]:
        return None if _alive(holder) else f"its process {holder.get('pid')} is gone"
    if me["job_id"] and holder.get("job_id") == me["job_id"]:
        return f"it belongs to this SLURM job {me['job_id']} (requeued from host {holder.get('host')})"
    return None


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['job_id']}" if holder.get("job_id") else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}{job}, since {holder.get('since')}"


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = _identity()
        self.held = False

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a job starting right now, or damaged

    def acquire(self) -> "RunLock":
        """Create the lock file exclusively, taking over a stale one; `RunLockedError` if it is held."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released in between: try again
                try:
                    old = time.time() - self.path.stat().st_mtime > 10
                except FileNotFoundError:
                    continue  # released in between: try again
                # An unreadable file is being written by a job starting now, or was left damaged long ago.
                reason = "the lock file is unreadable" if holder == {} and old else (
                    stale_reason(holder, self.me) if holder else None)
                if reason is None:
                    who = describe(holder) if holder else "starting now"
                    raise RunLockedError(
                        f"run dir {self.path.parent} is in use by another job ({who}; "
                        f"lock file {self.path}). Wait for that job to end or use another --run_dir; if that job is "
                        f"gone (e.g. its node died), delete {self.path} and relaunch.") from None
                log.warning("taking over the lock of run dir %s: %s (%s)", self.path.parent, reason,
                            describe(holder) if holder else "no holder recorded")
                try:  # rename first: of two jobs taking over the same stale lock, one wins
                    os.rename(self.path, self.path.with_name(f".{LOCK_NAME}.stale{os.getpid()}"))
                    os.unlink(self.path.with_name(f".{LOCK_NAME}.stale{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.me))
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: other jobs keep taking it")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self.held and (self._read() or {}).get("pid") == self.me["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path, is_main: bool) -> RunLock | None:
    """Collective when torch.distributed is initialized: rank 0 takes the lock; if it cannot, every rank raises."""
    import torch.distributed as dist

    lock, error = None, None
    if is_main:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir).acquire()
        except RunLockedError as exc:
            error = str(exc)
        except OSError:
            pass  # the run dir is not writable: the preflight checks that follow say so
    if dist.is_available() and dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise RunLockedError(error)
    return lock
