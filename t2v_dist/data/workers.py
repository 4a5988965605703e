"""How the DataLoader's workers are started: forked from a single-threaded fork server, not from the trainer.

A training process has threads that enter Python on their own (the communication backend's, the metrics
server's). Python 3.11's `fork()` copies the interpreter's locks as they are at that instant: if one of
those threads held the lock on the interpreter's thread list, the forked worker deadlocks before it runs a
line, and the rank waits for its first batch forever. (Seen in CI: an evaluation's worker hung in
`PyOS_AfterFork_Child`, inside `_PyThreadState_DeleteExcept`, with a gloo thread's state copied mid-way.)
multiprocessing's fork server is one process, started once and then idle, with no such threads; every
epoch's and every evaluation's workers are forked from it. It also keeps the trainer's memory (model,
optimizer) out of the workers.

The scheduler's preemption signals go to the whole process group, the fork server included, and workers
must outlive them (the trainer finishes its step and checkpoints first): the server starts with them
blocked, and `worker_server_preload`, which it imports first, sets them to "ignore". Every worker it forks
inherits both; the worker's `worker_init_fn` ignores them again (torch's worker set-up has installed its
own SIGTERM handler meanwhile) and only then unblocks them. multiprocessing's resource tracker, which the server needs, is
started with them blocked too: it ignores SIGTERM itself, and SIGUSR1 then stays blocked in it.

A worker watches its parent, which is the server, so the server must not outlive the training process:
it asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`, Linux), and its workers then
see their parent gone and exit (a `kill -9` of a rank, or the OOM killer, leaves no orphans). The kernel
sends that signal when the *thread* that started the server ends: create loaders with workers from the
main thread, or from one that lives as long as they do.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# '__main__': the entry script's imports happen once, in the server, instead of in every worker.
PRELOAD = ["__main__", "t2v_dist.data.worker_server_preload"]
TOKENIZER_ENV = "T2V_WORKER_SERVER_TOKENIZER"
PARENT_ENV = "T2V_WORKER_SERVER_PARENT"


def worker_context(tokenizer_path: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context for DataLoader workers; starts its server if it is not running (or died).
    A server started here loads the tokenizer at `tokenizer_path` (None: the default one) once, for all the
    workers it forks: building it takes about a second, which every epoch's workers would pay again."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    # Read by worker_server_preload in a server started now (and only then).
    os.environ[TOKENIZER_ENV], os.environ[PARENT_ENV] = tokenizer_path or "", str(os.getpid())
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)  # inherited through exec
    try:
        # The fork server needs multiprocessing's resource tracker, which ignores SIGTERM but not SIGUSR1 (it
        # keeps it blocked, as inherited); starting it unblocks SIGTERM here, so block again for the server.
        multiprocessing.resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        del os.environ[TOKENIZER_ENV], os.environ[PARENT_ENV]
    return ctx


def ignore_preemption_signals(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: the preemption signals are ignored from now on."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)
