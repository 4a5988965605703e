"""Preemption: a real signal to one rank of a real 2-process gloo group stops both after the same step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from t2v_dist.preemption import PreemptionHandler

WORKER = textwrap.dedent("""
    import sys, time
    import torch.distributed as dist
    from t2v_dist.preemption import PreemptionHandler

    dist.init_process_group("gloo", init_method="env://")
    handler = PreemptionHandler().install()
    dist.barrier()
    print("ready", flush=True)
    for step in range(1, 3000):
        time.sleep(0.02)                      # the step's work
        if handler.should_stop():
            got = handler.received.name if handler.received else "none"
            print(f"stopped {step} {got}", flush=True)
            dist.destroy_process_group()
            sys.exit(0)
    sys.exit(3)                               # never told to stop
""")


@pytest.mark.parametrize("sig, target", [(signal.SIGUSR1, 1), (signal.SIGTERM, 0)],
                         ids=["SIGUSR1-to-rank1", "SIGTERM-to-rank0"])
def test_signal_to_one_rank_stops_all_ranks_at_the_same_step(free_port, sig, target):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line == "ready\n", f"worker failed to start: {line!r} {p.stderr.read() if not line else ''}"
        procs[target].send_signal(sig)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    stops = [out.split() for out, _ in outs]
    assert stops[0][0] == stops[1][0] == "stopped"
    assert stops[0][1] == stops[1][1], f"ranks stopped after different steps: {stops}"
    assert stops[target][2] == sig.name and stops[1 - target][2] == "none"


def test_local_signal_sets_flag_and_uninstall_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler(signals=(signal.SIGUSR1,)) as handler:
        assert not handler.requested and not handler.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested and handler.received == signal.SIGUSR1
        assert handler.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)  # a second signal keeps the first one's name
        assert handler.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_watchdog_reports_a_checkpoint_later_than_the_deadline(caplog):
    """A real signal starts the clock: past preempt_deadline_s without a checkpoint, an error says so."""
    caplog.set_level("INFO", logger="t2v_dist.preemption")
    with PreemptionHandler(signals=(signal.SIGUSR1,), deadline_s=0.3) as late:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.6)
        assert "preemption checkpoint is not written yet (checkpoint.preempt_deadline_s=0.3)" in caplog.text
        assert late.checkpoint_written() > 0.3
        assert "later than checkpoint.preempt_deadline_s=0.3" in caplog.text
    caplog.clear()
    with PreemptionHandler(signals=(signal.SIGUSR1,), deadline_s=0.3) as on_time:
        assert on_time.checkpoint_written() is None           # no signal: nothing to time
        os.kill(os.getpid(), signal.SIGUSR1)
        assert on_time.checkpoint_written() < 0.3
        time.sleep(0.5)                                        # the cancelled watchdog stays quiet
    assert caplog.text == ""
