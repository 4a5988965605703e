"""Which precision to train in: bf16 where the device runs it natively, fp32 elsewhere.

The CPU's abilities are asked of torch (`torch.cpu.get_capabilities()`, cpuinfo underneath), never
guessed from /proc. bf16 is native on x86 with AVX512_BF16 or AMX-BF16 (oneDNN runs bf16 matmuls and
convolutions in hardware there) and on Arm with the BF16 extension. Without them oneDNN/ATen emulate
bf16 through fp32 conversions: on an AVX2-only EPYC a bf16 training step ran ~30x slower than fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

X86_BF16 = ("amx_bf16", "avx512_bf16")
ARM_BF16 = ("bf16", "sve_bf16")


def cpu_capabilities() -> Mapping:
    """torch's view of this CPU (instruction sets, core counts, name); empty where torch cannot tell."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return get() if get is not None else {}


def cpu_bf16_features(caps: Mapping | None = None) -> list[str]:
    """The native-bf16 features this CPU has, e.g. ['amx_bf16', 'avx512_bf16']; [] if bf16 is emulated."""
    caps = cpu_capabilities() if caps is None else caps
    return [f for f in (*X86_BF16, *ARM_BF16) if caps.get(f)]


def describe_cpu(caps: Mapping | None = None) -> str:
    """One line for logs and benchmark tables: name, cores, ATen's kernel level and the bf16 features."""
    caps = cpu_capabilities() if caps is None else caps
    bf16 = cpu_bf16_features(caps)
    cores = caps.get("num_physical_cores") or caps.get("num_logical_cores") or "?"
    return (f"{caps.get('cpu_name') or 'unknown CPU'} ({caps.get('architecture', '?')}, {cores} cores, "
            f"ATen {torch.backends.cpu.get_cpu_capability()}, bf16 {'native: ' + '+'.join(bf16) if bf16 else 'emulated'})")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str      # "fp32" or "bf16"
    reason: str         # one sentence for the log
    slow: bool = False  # bf16 was forced on a device that emulates it


def choose_precision(requested: str, device_type: str, caps: Mapping | None = None) -> PrecisionChoice:
    """Resolve train.precision ("fp32", "bf16" or "auto") for `device_type` ("cuda", "cpu", ...).

    `caps` (CPU capabilities, default: this CPU's) lets tests decide for other CPUs.
    """
    if requested not in ("fp32", "bf16", "auto"):
        raise ValueError(f"train.precision: must be one of fp32, bf16, auto; got {requested!r}")
    if device_type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        where = "this GPU" if native else "this GPU (bf16 not supported: pre-Ampere)"
    elif device_type == "cpu":
        features = cpu_bf16_features(caps)
        native = bool(features)
        where = f"this CPU ({'+'.join(features)})" if native else "this CPU (no AVX512_BF16/AMX/Arm BF16)"
    else:
        native, where = False, f"device {device_type!r}"
    if requested == "auto":
        if native:
            return PrecisionChoice("bf16", f"precision auto -> bf16: {where} runs bf16 natively")
        return PrecisionChoice("fp32", f"precision auto -> fp32: {where} has no native bf16")
    if requested == "bf16" and not native:
        return PrecisionChoice("bf16", f"precision bf16 forced on {where}, which emulates bf16: expect it to be "
                                       f"much slower than fp32 (use train.precision=auto or fp32)", slow=True)
    return PrecisionChoice(requested, f"precision {requested} (set in the config)")
