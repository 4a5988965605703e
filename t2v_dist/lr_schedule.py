"""Linear warmup then cosine decay of the learning rate, as a pure function and as a LambdaLR.

The scheduler is stepped once per optimizer step (DeepSpeed steps a client scheduler at every
gradient-accumulation boundary), so `step` counts optimizer steps, starting at 0.
"""
from __future__ import annotations

import math

import torch


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup rises linearly to `lr` over `warmup_steps` (step 0 already gets lr / warmup_steps, so
    the first update is not wasted); cosine then falls from `lr` to `min_lr` at `max_steps` and
    stays there if training runs on.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps or max_steps <= warmup_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_steps: int,
                       max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR following `lr_at`; every param group must start at `lr`.

    The factor is a closure on purpose: LambdaLR checkpoints only `last_epoch` for plain functions,
    so a resumed run follows the schedule of its current config rather than the saved one.
    """
    for i, group in enumerate(optimizer.param_groups):
        if group["lr"] != lr:
            raise ValueError(f"param group {i} has lr={group['lr']}, expected the schedule's peak lr={lr}")

    def factor(step: int) -> float:
        return lr_at(step, lr, min_lr, warmup_steps, max_steps) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
