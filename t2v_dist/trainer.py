"""The training job: DeepSpeed ZeRO-2 over packed shard batches, with checkpoints, preemption and metrics.

Every rank runs `train(cfg)`. One optimizer step is `train.gradient_accumulation_steps` packed
micro-batches. The order of things in a step is fixed so that all ranks stay in lock-step:
  1. fetch micro-batches (timed: the data-wait share), forward, agree on finiteness, backward, step;
  2. metrics and the rank-0 log line;
  3. agree on preemption (all-reduce), then checkpoint (every N steps, at the end, on a signal);
  4. evaluate every N steps: validation losses on every rank, sample videos on rank 0.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from t2v_dist import checkpoint, file_sd, preflight, runlock
from t2v_dist.config import Config, build_deepspeed_config, build_optimizer
from t2v_dist.data import ShardLoader, expand_shards
from t2v_dist.distributed import DistEnv, init_distributed
from t2v_dist.evaluation import evaluate_at_step
from t2v_dist.host_memory import keep_freed_memory
from t2v_dist.lr_schedule import build_lr_scheduler
from t2v_dist.metrics import Metrics, StepLogger
from t2v_dist.model import LOSS_TERMS, build_model
from t2v_dist.precision import choose_precision
from t2v_dist.preemption import PreemptionHandler
from t2v_dist.tokenizer import encode_caption, load_tokenizer
from t2v_dist.video_io import save_samples

log = logging.getLogger("t2v_dist.train")


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for train.max_bad_steps micro-batches in a row."""


def _set_cpu_threads(env: DistEnv) -> None:
    """Share the cores among the ranks of this host unless the user pinned OMP_NUM_THREADS."""
    if env.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")  # torchrun, deepspeed
                      or os.environ.get("SLURM_NTASKS_PER_NODE") or 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0: only measure) and return the total norm before clipping: the one-rank
    engine's (ZeRO stage 0) clipping, which DeepSpeed's stage-0 path does without keeping the norm."""
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))


def _all_true(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class KeyLog:
    """Appends `step<TAB>key` for every sample a rank trains on (used to check exact resume)."""

    def __init__(self, path: Path | None):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")

    def write(self, step: int, keys: list[str]) -> None:
        if self.file:
            self.file.write("".join(f"{step}\t{k}\n" for k in keys))
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def evaluate(engine, cfg: Config, env: DistEnv, step: int, stop: Callable[[], bool] = lambda: False) -> dict:
    """Validation losses (mean over every rank's batches) and, on rank 0, sample videos for the prompts.

    `stop()` (a preemption signal) ends the work at the next batch or prompt, so the checkpoint comes in time."""
    model = engine.module
    model.eval()
    result: dict = {}
    try:
        if cfg.data.val_shards:
            names = ("total", *LOSS_TERMS)   # every rank knows them, also one that evaluates no batch
            sums = torch.zeros(len(names) + 1, dtype=torch.float64)
            # A small val set may have fewer shards than ranks: the first ones evaluate, the rest add zeros.
            val_ranks = min(env.world_size, len(expand_shards(cfg.data.val_shards, "data.val_shards")))
            val = (ShardLoader(cfg.data, split="val", rank=env.rank, world_size=val_ranks)
                   if env.rank < val_ranks else [])
            with torch.no_grad():
                for i, batch in enumerate(val):
                    if i >= cfg.eval.batches or stop():
                        break
                    out = model(batch.to(env.device))
                    n = batch.num_samples
                    sums += torch.tensor([float(out.loss) * n] + [float(out.terms[k]) * n for k in LOSS_TERMS]
                                         + [n], dtype=torch.float64)
            sums = sums.to(env.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
            if sums[-1] > 0:
                result["losses"] = {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)}
        if env.is_main and cfg.eval.prompts:
            tok = load_tokenizer(cfg.data.tokenizer_path)
            ids = [encode_caption(tok, p, cfg.model.max_caption_tokens) for p in cfg.eval.prompts]
            videos = []
            with torch.no_grad():
                for i, one in enumerate(ids):  # one prompt at a time: a signal waits for one video at most
                    if stop():
                        break
                    videos.append(model.generate([one], num_frames=cfg.eval.num_frames, seed=cfg.eval.seed,
                                                 sample_ids=[i]))
            videos = torch.cat(videos) if videos else None
        if env.is_main and cfg.eval.prompts and videos is not None:
            out_dir = Path(cfg.run_dir) / "samples" / f"step_{step:06d}"
            save_samples(out_dir, videos.cpu().numpy(), formats=cfg.eval.formats, fps=cfg.eval.fps,
                         scale=cfg.eval.scale, captions=cfg.eval.prompts[:len(videos)])
            (out_dir / "prompts.json").write_text(json.dumps(cfg.eval.prompts[:len(videos)], indent=1),
                                                  encoding="utf-8")
            result["samples_dir"] = str(out_dir)
        if env.is_main and cfg.eval.faithfulness and not stop():
            result["scores"] = evaluate_at_step(model, cfg, Path(cfg.run_dir) / "samples" / f"step_{step:06d}")
    finally:
        model.train()
    return result


def _sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Collective: {reason: count} summed over every rank (ranks may know different reasons)."""
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, counts)
    total: dict[str, int] = {}
    for rank_counts in everyone:
        for reason, n in rank_counts.items():
            total[reason] = total.get(reason, 0) + n
    return total


def _save_checkpoint(engine, cfg: Config, env: DistEnv, step: int, loader, metrics, preempt, preempted: bool) -> None:
    t_ckpt = time.perf_counter()
    state = checkpoint.build_client_state(step, loader.state_dict(), cfg.to_dict(), cfg.config_hash())
    path = checkpoint.save(engine, cfg.checkpoint.dir, step, state, cfg.checkpoint.keep_last)
    metrics.observe_checkpoint(time.perf_counter() - t_ckpt)
    since_signal = preempt.checkpoint_written() if preempted else None
    if env.is_main:
        note = ""
        if preempted:
            note = " after a preemption signal" + (
                f": on disk {since_signal:.1f}s after it (checkpoint.preempt_deadline_s="
                f"{cfg.checkpoint.preempt_deadline_s:g})" if since_signal is not None else " to another rank")
        log.info("checkpoint %s (%.1fs)%s", path, time.perf_counter() - t_ckpt, note)


def train(cfg: Config) -> int:
    """Run (or resume) training until train.max_steps or a preemption signal. Returns the exit code."""
    env = init_distributed()
    lock = None
    try:
        _set_cpu_threads(env)
        if env.device.type == "cpu" and cfg.train.keep_freed_memory and not keep_freed_memory():
            log.warning("train.keep_freed_memory: this C library is not glibc or refused mallopt; freed "
                        "host memory goes back to the OS as usual")
        cfg.check_world_size(env.world_size)
        lock = runlock.lock_run_dir(cfg.run_dir, env.is_main)  # first: a second job is told who holds the run dir
        # Before the engine is built (the slow part); a problem on any rank stops every rank.
        preflight.check_all_ranks(cfg, env.local_rank, env.device.type)
        tag = checkpoint.tag_to_resume(cfg.run_dir, cfg.checkpoint.dir, cfg.checkpoint.tag)
        if tag != cfg.checkpoint.tag and env.is_main:
            log.warning("checkpoint.tag=%s was used by an earlier start of this run, which has saved newer "
                        "checkpoints since: resuming from 'latest' (drop the flag to silence this)", cfg.checkpoint.tag)
        resume = checkpoint.choose_resume(cfg.checkpoint.dir, env.world_size, tag, cfg.checkpoint.load_universal)
        return _train(cfg, env, resume)
    finally:
        if lock:
            lock.release()
        # Joins the process group's threads: left to interpreter exit, one could still be joinable and the
        # process aborts ("terminate called without an active exception", exit -6) instead of its own code.
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, env: DistEnv, resume: checkpoint.Resume | None) -> int:
    import deepspeed

    run_dir = Path(cfg.run_dir)
    t = cfg.train
    torch.manual_seed(t.seed + env.rank)

    model = build_model(cfg.model, t.init_from_gpt2)
    choice = choose_precision(t.precision, env.device.type)
    precision = choice.precision
    if env.is_main:
        (log.warning if choice.slow else log.info)("%s", choice.reason)
    optimizer = build_optimizer(model.parameters(), t, env.device.type)
    partitioned = resume is not None and checkpoint.is_partitioned(Path(cfg.checkpoint.dir) / resume.tag)
    ds_config = build_deepspeed_config(cfg, env.world_size, env.device.type, resume_partitioned=partitioned)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer,
        lr_scheduler=lambda opt: build_lr_scheduler(opt, t.lr, t.min_lr, t.warmup_steps, t.max_steps),
        config=checkpoint.set_load_universal(ds_config, resume), dist_init_required=False)
    no_zero = engine.zero_optimization_stage() == 0  # then the trainer clips and keeps the gradient norm
    if no_zero and env.world_size == 1:
        engine.enable_backward_allreduce = False  # averaging gradients over one rank only copies them

    loader = ShardLoader(cfg.data, split="train", rank=env.rank, world_size=env.world_size)
    step = 0
    client = checkpoint.load(engine, cfg.checkpoint.dir, resume.tag, cfg.to_dict()["model"]) if resume else None
    if client is not None:
        if client.get("config_hash") != cfg.config_hash() and env.is_main:
            log.warning("resuming a checkpoint written with a different config (hash %s, now %s)",
                        client.get("config_hash"), cfg.config_hash())
        step = int(client["step"])
        own = checkpoint.restore_rank_state(client, env.rank, env.world_size)
        # Same world size: this rank's exact position. Otherwise: re-split the rest of the epoch.
        loader.load_state_dict(own if own is not None else client["loader_states"])
    if env.is_main:
        # Only now, with the resume accepted: a rejected one leaves the run's record as it was.
        checkpoint.record_config(run_dir, cfg.to_dict(), cfg.config_hash(), step, resume.tag if resume else None)
        log.info("%s at step %d: %d ranks on %s, %s, %.1fM parameters, run dir %s%s",
                 "resuming" if client else "starting", step, env.world_size, env.device.type, precision,
                 model.num_params() / 1e6, run_dir, f", from checkpoint {resume.tag}" if resume else "")

    metrics = Metrics.from_config(cfg.metrics, env.rank, env.local_rank, env.device)
    sd_target = file_sd.write_target(run_dir, metrics, env.world_size)  # Prometheus finds every rank
    logger = StepLogger(run_dir / "train_log.jsonl") if env.is_main else None
    keylog = KeyLog(run_dir / "keys" / f"rank{env.rank}.tsv" if t.log_keys else None)
    preempt = PreemptionHandler(device=env.device, deadline_s=cfg.checkpoint.preempt_deadline_s).install()
    batches = iter(loader)
    bad_in_a_row = 0
    grad_norm = None
    preempted = False
    try:
        while step < t.max_steps:
            t_step = time.perf_counter()
            data_s, samples, frames, tokens, flops = 0.0, 0, 0, 0, 0.0
            sums: dict[str, float] = {}
            micro = 0
            while micro < t.gradient_accumulation_steps:
                t_data = time.perf_counter()
                batch = next(batches)
                data_s += time.perf_counter() - t_data
                batch = batch.to(env.device, non_blocking=True)
                out = engine(batch)
                # All ranks must take the same path, or ZeRO's gradient reduction would hang.
                if not _all_true(bool(torch.isfinite(out.loss)), env.device):
                    bad_in_a_row += 1
                    metrics.observe_nonfinite()
                    log.warning("rank %d step %d: non-finite loss on some rank, micro-batch skipped (%d in a row)",
                                env.rank, step, bad_in_a_row)
                    if bad_in_a_row >= t.max_bad_steps:
                        raise NonFiniteLossError(f"loss was NaN/inf for {bad_in_a_row} micro-batches in a row "
                                                 f"(train.max_bad_steps={t.max_bad_steps}); lower train.lr or check the data")
                    continue
                bad_in_a_row = 0
                engine.backward(out.loss)
                if no_zero and engine.is_gradient_accumulation_boundary():
                    grad_norm = clip_gradients(model, t.grad_clip)
                engine.step()
                micro += 1
                keylog.write(step + 1, batch.keys)
                samples += batch.num_samples
                frames += batch.num_frames
                tokens += batch.num_tokens
                flops += model.flops_per_step(batch)
                names = ["total", *out.terms]
                values = torch.stack([out.loss.detach(), *out.terms.values()]).tolist()  # one device sync
                for k, v in zip(names, values):
                    sums[k] = sums.get(k, 0.0) + v
            step += 1
            step_s = time.perf_counter() - t_step
            losses = {k: v / t.gradient_accumulation_steps for k, v in sums.items()}
            lr = scheduler.get_last_lr()[0]
            if not no_zero:
                grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else None
            metrics.observe_step(step=step, step_seconds=step_s, data_seconds=data_s, samples=samples, frames=frames,
                                 tokens=tokens, losses=losses, lr=lr, grad_norm=grad_norm, flops=flops)
            metrics.set_data_errors(loader.error_counts())
            log_now = step % t.log_every == 0 or step == 1 or step == t.max_steps
            data_errors = _sum_over_ranks(loader.error_counts()) if log_now else None  # same steps on every rank
            if logger and log_now:
                logger.log({"kind": "train", "step": step, "max_steps": t.max_steps, "losses": losses, "lr": lr,
                            "grad_norm": grad_norm, "samples_per_s": samples * env.world_size / step_s,
                            "frames_per_s": frames * env.world_size / step_s,
                            "tokens_per_s": tokens * env.world_size / step_s,
                            "flops_per_s": flops * env.world_size / step_s, "step_seconds": step_s,
                            "data_share": data_s / step_s, "epoch": loader.epoch,
                            "data_errors": data_errors})

            preempted = preempt.should_stop()
            every = cfg.checkpoint.every
            saved = preempted or step == t.max_steps or (every and step % every == 0)
            if saved:
                _save_checkpoint(engine, cfg, env, step, loader, metrics, preempt, preempted)
            if not preempted and cfg.eval.every and (step % cfg.eval.every == 0 or step == t.max_steps):
                if env.is_main:
                    log.info("evaluating at step %d", step)
                result = evaluate(engine, cfg, env, step, stop=lambda: preempt.requested)
                if "scores" in result:
                    metrics.observe_eval(result["scores"])
                preempted = preempt.should_stop()  # a signal during the evaluation: checkpoint now
                if logger and result:
                    logger.log({"kind": "eval", "step": step, **result, **({"interrupted": True} if preempted else {})})
                if preempted and not saved:
                    _save_checkpoint(engine, cfg, env, step, loader, metrics, preempt, preempted)
            if preempted:
                break
    finally:
        batches.close()  # stops the DataLoader workers now, also when an exception is on its way out
        preempt.uninstall()
        keylog.close()
        file_sd.remove_target(sd_target)
        metrics.close()
        if logger:
            logger.close()
    if env.is_main:
        log.info("%s at step %d; checkpoints in %s", "preempted, stopped cleanly" if preempted else "done",
                 step, cfg.checkpoint.dir)
    dist.barrier()
    return t.preempted_exit_code if preempted else 0
