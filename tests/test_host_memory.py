"""host_memory.keep_freed_memory: a CPU step's large buffers stop page-faulting in again on every step."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Page faults of allocating, filling and freeing 240 MB of tensors, as a training step does, 8 times in a
# fresh process: its own process, because the setting cannot be undone.
PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from t2v_dist.host_memory import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    def step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(50_000_000); b = torch.ones(10_000_000)
        del a, b
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(kept, *[step() for _ in range(8)])
""")


def _faults(mode: str) -> tuple[str, list[int]]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True)
    kept, *faults = out.stdout.split()
    return kept, [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_for_the_next_step():
    kept, faults = _faults("keep")
    assert kept == "True"
    assert max(faults[-4:]) < 1_000, faults  # steady state: the buffers' pages stay mapped
    _, plain = _faults("plain")
    assert min(plain) > 40_000, plain  # glibc's default: every step maps (and faults in) ~60k pages again
