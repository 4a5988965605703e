"""host_memory.keep_freed_memory: a CPU step's large buffers stay in the process for the next step."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# 12 times in a fresh process (its own, because the setting cannot be undone): allocate and fill 240 MB of
# tensors, as a training step does, then free them. Prints, per step, the page faults of allocating and
# filling, and the change in resident memory when the tensors are freed.
PROBE = textwrap.dedent("""
    import os, resource, sys
    import torch
    from t2v_dist.host_memory import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    def step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(50_000_000); b = torch.ones(10_000_000)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        held = resident()
        del a, b
        return f"{faults},{resident() - held}"
    print(kept, *[step() for _ in range(12)])
""")


def _steps(mode: str) -> tuple[str, list[int], list[int]]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True)
    kept, *steps = out.stdout.split()
    faults, freed = zip(*(map(int, s.split(",")) for s in steps))
    return kept, list(faults), list(freed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_for_the_next_step():
    kept, faults, freed = _steps("keep")
    assert kept == "True"
    assert max(abs(f) for f in freed) < 8 << 20, freed  # freeing 240 MB leaves it resident
    # Once the heap has room for the step (glibc's placement can take a few steps, and shift again while
    # small blocks settle between the large ones), a step's buffers need no page from the OS.
    assert min(faults[6:]) < 1_000, faults
    _, plain_faults, plain_freed = _steps("plain")
    assert max(plain_freed) < -200 << 20, plain_freed  # glibc's default: the buffers go back to the OS...
    assert min(plain_faults) > 40_000, plain_faults  # ...and every step maps and faults in ~60k pages again
