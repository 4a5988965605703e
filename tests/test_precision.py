"""Precision by capability: auto picks bf16 only where the CPU runs it natively, as torch reports it."""
from __future__ import annotations

import logging

import pytest
import torch

from t2v_dist.config import Config, build_deepspeed_config, resolve_precision
from t2v_dist.precision import choose_precision, cpu_bf16_features, cpu_capabilities, describe_cpu

# What torch.cpu.get_capabilities() reports on the CPUs of the issue (trimmed to the keys that matter).
EPYC_AVX2 = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False,
             "avx512_bf16": False, "amx_bf16": False, "amx_tile": False, "num_physical_cores": 2}
XEON_AMX = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True,
            "avx512_bf16": True, "amx_bf16": True, "amx_tile": True, "num_physical_cores": 2}
COOPER_LAKE = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx512_f": True, "avx512_bf16": True,
               "amx_bf16": False}
SKYLAKE_AVX512 = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx512_f": True, "avx512_bf16": False,
                  "amx_bf16": False}
GRAVITON3 = {"architecture": "aarch64", "cpu_name": "Neoverse-V1", "neon": True, "bf16": True, "sve": True}
GRAVITON2 = {"architecture": "aarch64", "cpu_name": "Neoverse-N1", "neon": True, "bf16": False, "sve": False}


@pytest.mark.parametrize("caps, expected", [
    (EPYC_AVX2, "fp32"), (SKYLAKE_AVX512, "fp32"), (GRAVITON2, "fp32"), ({}, "fp32"),
    (XEON_AMX, "bf16"), (COOPER_LAKE, "bf16"), (GRAVITON3, "bf16"),
])
def test_auto_picks_bf16_only_where_the_cpu_has_native_bf16(caps, expected):
    choice = choose_precision("auto", "cpu", caps)
    assert choice.precision == expected and not choice.slow
    assert choice.reason.startswith(f"precision auto -> {expected}")


def test_forced_bf16_on_a_cpu_that_emulates_it_is_flagged_slow():
    slow = choose_precision("bf16", "cpu", EPYC_AVX2)
    assert slow.precision == "bf16" and slow.slow and "much slower than fp32" in slow.reason
    assert not choose_precision("bf16", "cpu", XEON_AMX).slow
    assert not choose_precision("fp32", "cpu", EPYC_AVX2).slow
    assert choose_precision("fp32", "cpu", XEON_AMX).precision == "fp32"  # an explicit fp32 is kept


def test_bad_precision_names_the_field():
    with pytest.raises(ValueError, match="train.precision"):
        choose_precision("fp16", "cpu", XEON_AMX)


def test_features_and_description_name_what_was_found():
    assert cpu_bf16_features(XEON_AMX) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_features(EPYC_AVX2) == []
    assert "bf16 emulated" in describe_cpu(EPYC_AVX2) and "AMD EPYC" in describe_cpu(EPYC_AVX2)
    assert "bf16 native: amx_bf16+avx512_bf16" in describe_cpu(XEON_AMX)


def test_this_cpu_follows_torchs_report():
    """On the machine running the suite: the decision agrees with torch's own capability flags."""
    caps = cpu_capabilities()
    native = bool(caps.get("amx_bf16") or caps.get("avx512_bf16") or caps.get("bf16") or caps.get("sve_bf16"))
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    if caps.get("architecture") == "x86_64":  # torch's private probes, where this torch has them
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        if probe is not None:
            assert bool(probe()) == bool(caps.get("avx512_bf16"))


def test_deepspeed_config_follows_the_resolved_precision():
    cfg = Config.load(None, ["--train.precision=auto"])
    expected = resolve_precision("auto", "cpu") == "bf16"
    assert build_deepspeed_config(cfg, 2, "cpu")["bf16"]["enabled"] is expected
    assert build_deepspeed_config(Config.load(None, ["--train.precision=fp32"]), 2, "cpu")["bf16"]["enabled"] is False


def test_one_rank_runs_without_zero_unless_it_resumes_a_partitioned_checkpoint():
    """One rank: no ZeRO, fp32 weights and bf16 by autocast (the bare step); resuming a ZeRO or universal
    checkpoint: ZeRO-1 without per-gradient hooks; several ranks: the JSON's ZeRO-2."""
    cfg = Config.load(None, ["--train.precision=bf16"])
    plain = build_deepspeed_config(cfg, 1, "cpu")
    assert plain["zero_optimization"] == {"stage": 0} and plain["bf16"]["enabled"] is False
    assert plain["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    fp32 = build_deepspeed_config(Config.load(None, ["--train.precision=fp32"]), 1, "cpu")
    assert fp32["zero_optimization"] == {"stage": 0} and "torch_autocast" not in fp32
    resumed = build_deepspeed_config(cfg, 1, "cpu", resume_partitioned=True)
    one = resumed["zero_optimization"]
    assert resumed["bf16"]["enabled"] is True and "torch_autocast" not in resumed
    assert one["stage"] == 1 and one["overlap_comm"] is False and one["reduce_bucket_size"] >= 124_000_000
    assert build_deepspeed_config(cfg, 2, "cpu", resume_partitioned=True)["zero_optimization"]["stage"] == 2
    two = build_deepspeed_config(cfg, 2, "cpu")["zero_optimization"]
    assert two["stage"] == 2 and two["overlap_comm"] is True and two["reduce_bucket_size"] == 50_000_000
