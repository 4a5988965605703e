r"""Train the text-to-video transformer with DeepSpeed ZeRO-2.

One CPU process (fp32, gloo):
    python launch/train.py --config launch/configs/demo.yaml
2 CPU ranks on one machine (ZeRO-2 over gloo):
    deepspeed --num_gpus 2 launch/train.py --config launch/configs/demo.yaml --run_dir runs/demo
One GPU node, 8 GPUs (bf16, NCCL, xformers attention and the Triton loss when installed):
    deepspeed --num_gpus 8 launch/train.py --config launch/configs/paper.yaml --run_dir /ckpt/paper
Several nodes (a hostfile with "host slots=8" lines; SLURM: launch/slurm.sh runs `srun python launch/train.py`):
    deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 launch/train.py --config launch/configs/gpt2-medium.yaml \
        --run_dir /shared/runs/medium
Any config field can be overridden with a dotted flag, e.g.
    --model.preset=gpt2 --train.max_steps=1000 --data.train_shards='data/syn/train-{000000..000019}.tar'

A run dir that holds checkpoints is resumed from its newest complete one (`latest`, or a newer universal
one); --checkpoint.tag=TAG picks one explicitly. One job at a time per run dir (run_dir/run.lock).
SIGTERM or SIGUSR1 (what SLURM sends before preempting) makes every rank stop its step, evaluation or
sample generation, save a checkpoint and exit with train.preempted_exit_code (0; launch/slurm.sh sets 75).
Check a config without starting anything: python -m t2v_dist.config --config X --world-size N [overrides].
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from t2v_dist.checkpoint import ResumeError  # noqa: E402
from t2v_dist.config import Config, ConfigError, sections  # noqa: E402
from t2v_dist.preflight import PreflightError  # noqa: E402
from t2v_dist.runlock import RunLockedError  # noqa: E402
from t2v_dist.trainer import train  # noqa: E402


def main(config: str = "launch/configs/demo.yaml", run_dir: str | None = None, local_rank: int = -1, **overrides):
    """Train (or resume) one run.

    Args:
        config: YAML run config (sections model, data, train, eval, checkpoint, metrics).
        run_dir: where checkpoints, logs, metrics and samples go; overrides the config's run_dir.
        local_rank: set by the deepspeed launcher; LOCAL_RANK in the environment takes precedence.
        **overrides: dotted config fields, e.g. --model.preset=gpt2 --train.max_steps=1000.
    """
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")
    if local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    args = [f"--{key}={_as_text(value)}" for key, value in overrides.items()]
    if run_dir is not None:
        args.append(f"--run_dir={run_dir}")
    try:
        cfg = Config.load(config, args)
        # The batch arithmetic is checked before torch.distributed starts, so a bad value fails fast.
        cfg.check_world_size(int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))))
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    try:
        code = train(cfg)
    except (PreflightError, RunLockedError, ResumeError) as exc:
        # Every rank raises the same error; one copy of the message is enough.
        raise SystemExit(f"error: {exc}" if rank == 0 else 1) from None
    if code:
        raise SystemExit(code)


def usage() -> str:
    """--help: fire cannot list the dotted config keys that **overrides takes."""
    return (f"{__doc__.strip()}\n\nUsage: [deepspeed ...] launch/train.py [--config FILE] [--run_dir DIR] "
            f"[--section.key=value ...]\n\n{main.__doc__.strip()}\n\n"
            f"Config sections: {', '.join(sections()[0])}; top-level keys: {', '.join(sections()[1])}.\n"
            f"Every field with its type and default, and the value a config gives it:\n"
            f"    python -m t2v_dist.config --config launch/configs/demo.yaml --print\n")


def _as_text(value) -> str:
    """fire has already parsed flag values; give the config loader back their YAML text."""
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


if __name__ == "__main__":
    if any(arg in ("-h", "--help", "-help") for arg in sys.argv[1:]):
        print(usage())
        sys.exit(0)
    fire.Fire(main)
