"""Check the image's training stack; the image build runs this and fails on any error.

    python /opt/t2v/container/check_stack.py     # also `IMAGE check`, e.g. on a GPU node:
    podman run --rm --device nvidia.com/gpu=all t2v-dist:cu130 check

Checks: `pip check`; torch is the pinned version (a CUDA build of the stack's CUDA on the cuda flavour);
DeepSpeed imports and its prebuilt FusedAdam op loads; xformers' C++/CUDA extensions load
(`python -m xformers.info`). Where a GPU is visible it also runs a FusedAdam step and an xformers
attention call; elsewhere those checks print that they were skipped. Exit code 1 on any failure.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import stack  # noqa: E402

FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(name)


def skip(name: str, why: str) -> None:
    print(f"skip {name}: {why}", flush=True)


def main() -> int:
    import torch

    pins = stack()
    flavour = os.environ.get("T2V_FLAVOUR") or ("cuda" if torch.version.cuda else "cpu")
    gpu = torch.cuda.is_available()
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    check("pip check", pip.returncode == 0, (pip.stdout + pip.stderr).strip())
    version = torch.__version__.split("+")[0]
    check("torch version", version == pins["torch"], f"{torch.__version__}, pinned {pins['torch']}")
    if flavour == "cuda":
        check("torch CUDA build", (torch.version.cuda or "").startswith(pins["cuda"]),
              f"torch.version.cuda={torch.version.cuda}, stack cuda {pins['cuda']}")

    import deepspeed
    check("deepspeed version", deepspeed.__version__.split("+")[0] == pins["deepspeed"],
          f"{deepspeed.__version__}, pinned {pins['deepspeed']}")
    if flavour == "cuda":
        from deepspeed.git_version_info import installed_ops
        check("DeepSpeed FusedAdam prebuilt", bool(installed_ops.get("fused_adam")), "DS_BUILD_FUSED_ADAM=1 at build")
        from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder
        try:
            FusedAdamBuilder().load(verbose=False)
            check("DeepSpeed FusedAdam loads", True)
        except Exception as exc:  # noqa: BLE001 - report whatever the loader raised
            check("DeepSpeed FusedAdam loads", False, repr(exc))
        if gpu:
            from deepspeed.ops.adam import FusedAdam
            p = torch.nn.Parameter(torch.ones(1024, device="cuda"))
            opt = FusedAdam([p], lr=0.1)
            p.grad = torch.ones_like(p)
            opt.step()
            check("FusedAdam step on GPU", bool((p < 1).all()), torch.cuda.get_device_name())
        else:
            skip("FusedAdam step on GPU", "no GPU visible")

        info = subprocess.run([sys.executable, "-m", "xformers.info"], capture_output=True, text=True)
        text = info.stdout + info.stderr
        cannot = "can't load" in text or "Failed to load" in text or "unable to load" in text.lower()
        check("xformers C++/CUDA extensions load", info.returncode == 0 and not cannot, text.strip()[-600:] if cannot
              or info.returncode else "")
        if gpu:
            import xformers.ops as xops
            q = torch.randn(1, 64, 4, 64, device="cuda", dtype=torch.bfloat16)
            out = xops.memory_efficient_attention(q, q, q, attn_bias=xops.LowerTriangularMask())
            check("xformers attention on GPU", bool(torch.isfinite(out).all()))
        else:
            skip("xformers attention on GPU", "no GPU visible")
    else:
        skip("FusedAdam, xformers", "CPU flavour (torch AdamW and SDPA are used on CPU)")
    print("stack check:", "FAILED " + ", ".join(FAILURES) if FAILURES else "passed", flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
