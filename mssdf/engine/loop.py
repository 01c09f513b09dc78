"""Resume, the optimiser step and the step loop shared by every training task.

A task builds its model, optimiser, schedule, dataset and sampler, wraps them in a
:class:`TrainState`, and hands :func:`run_loop` one function ``step_fn(batch, step)``
that runs the forward and backward pass for global step ``step`` (usually ending in
:func:`optimizer_step`) and returns a :class:`StepOutput`. The loop positions the
sampler (exact resume: consumed batches are skipped unread), counts steps, logs the
rank-mean of the step's scalars every ``log_every`` steps, and writes atomic
checkpoints every ``checkpoint_every`` steps and at the end.

Checkpoint contents (``torch.load(weights_only=True)``; see
:mod:`mssdf.engine.checkpointing`): ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``rng`` (per rank), ``position`` (``epoch``, ``batch``, ``global_step``), ``config``,
``history``, ``world_size``, ``global_batch``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, ContextManager, Iterable, Mapping

import torch
from torch import nn

from mssdf.config import ConfigError
from mssdf.engine.checkpointing import (
    capture_rng, checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, remove_partial, restore_rng,
    save_checkpoint,
)
from mssdf.engine.distributed import DistEnv, all_gather_objects, mean_across_ranks, seed_everything
from mssdf.engine.tracking import MetricSink, memory_mb


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` → bf16 on CUDA, none (fp32) on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype: torch.dtype | None, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of autocast contexts for ``dtype`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class TrainState:
    """Everything a checkpoint saves and a resume restores (besides the RNG streams).

    ``model`` is the unwrapped module (never the DDP wrapper); ``step`` counts the
    optimisation steps done; ``history`` holds the logged records.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class LoopSpec:
    """How long the loop runs and how often it logs and saves.

    Attributes:
        end_step: stop after this many global steps (``max_steps`` or the schedule's end).
        steps_per_epoch: global batches per epoch (the sampler's).
        global_batch: samples per global step (for images/s).
        log_every, checkpoint_every: cadence in steps (``checkpoint_every`` 0: only at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
    """

    end_step: int
    steps_per_epoch: int
    global_batch: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int


@dataclass
class StepOutput:
    """What one step reports: ``scalars`` (tensors, averaged over ranks when logged, in
    order) and ``info`` (plain numbers of this rank, e.g. the learning rate used)."""

    scalars: dict[str, torch.Tensor]
    info: dict[str, float] = field(default_factory=dict)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_run(path: Path, saved: Mapping[str, Any], config: Mapping[str, Any], may_change: Collection[str] = (),
                   global_batch: int | None = None) -> None:
    """Refuse to resume a checkpoint under a different run configuration.

    Args:
        path: the checkpoint (named in the error).
        saved: its contents (``config``; ``global_batch`` where recorded).
        config: the current plain run config.
        may_change: keys (dotted; a prefix covers its sub-keys) that may differ, e.g. where
            the output goes, how often to log, how far to run.
        global_batch: the current global batch (the data order depends on it).

    Raises:
        ConfigError: listing each changed key with its saved and current value.
    """
    old, new = _flatten(saved.get("config", {})), _flatten(config)
    free = tuple(may_change)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")
               and not any(k == f or k.startswith(f + ".") for f in free)]
    lines = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in changed]
    if global_batch is not None and saved.get("global_batch") not in (None, global_batch):
        lines.append(f"global batch (batch_size x processes): {saved['global_batch']} -> {global_batch}")
    if lines:
        raise ConfigError(f"{path}: cannot resume: the run configuration changed since this checkpoint "
                          f"({'; '.join(lines)}). Restore it, or start a new run in another out_dir"
                          + (f" (these may change: {', '.join(free)})" if free else ""))


def resume(state: TrainState, out_dir: Path, env: DistEnv, seed: int, *, config: Mapping[str, Any] | None = None,
           may_change: Collection[str] = (), global_batch: int | None = None) -> Path | None:
    """Load the newest checkpoint of ``out_dir`` into ``state`` (None if there is none).

    Temporary files of a killed run are removed first (main process). With ``config``,
    the checkpoint must come from the same run (:func:`check_same_run`). RNG streams are
    restored exactly when the world size is unchanged; otherwise only the per-rank streams
    are reseeded from ``(seed, rank, step)`` (data order and masks never depend on them).
    """
    if env.is_main:
        remove_partial(out_dir)
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    saved = load_checkpoint(ckpt)
    if config is not None:
        check_same_run(ckpt, saved, config, may_change, global_batch)
    state.model.load_state_dict(saved["model"], strict=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.scaler is not None and saved.get("scaler") is not None:
        state.scaler.load_state_dict(saved["scaler"])
    state.step, state.history = int(saved["position"]["global_step"]), list(saved["history"])
    if int(saved["world_size"]) == env.world_size:
        restore_rng(saved["rng"][env.rank])
    else:
        seed_everything(seed + env.rank + 7919 * state.step)
    return ckpt


def save(state: TrainState, out_dir: Path, env: DistEnv, spec: LoopSpec, config: Mapping[str, Any]) -> None:
    """Write the checkpoint of ``state.step`` (collective: every rank's RNG is gathered)."""
    rngs = all_gather_objects(capture_rng(), env)
    if not env.is_main:
        return
    spe, step = spec.steps_per_epoch, state.step
    payload = {
        "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None, "rng": rngs,
        "position": {"epoch": step // spe, "batch": step % spe, "global_step": step},
        "config": dict(config), "history": state.history, "world_size": env.world_size,
        "global_batch": spec.global_batch,
    }
    save_checkpoint(checkpoint_path(out_dir, step), payload)
    prune_checkpoints(out_dir, spec.keep_checkpoints)


def optimizer_step(
    state: TrainState, loss: torch.Tensor, params: Iterable[torch.Tensor] | None = None, grad_clip: float | None = None,
    idle: Iterable[torch.Tensor] = (),
) -> tuple[float, torch.Tensor | None]:
    """Backward, optional global-norm clipping of ``params``, the optimiser and schedule steps.

    ``idle``: parameters this step's forward did not use. Their gradients are dropped
    (``None``) before the optimiser step, so AdamW leaves them untouched (no momentum
    update, no weight decay) exactly as in one process — DDP with
    ``find_unused_parameters`` hands them all-reduced *zero* gradients instead, which
    AdamW would apply.

    Returns:
        ``(lr, grad_norm)``: the learning rate this step used (the first group's) and the
        norm before clipping (None without clipping).
    """
    opt, scaler = state.optimizer, state.scaler
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    for p in idle:
        p.grad = None
    grad_norm = None
    if grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params or state.model.parameters()), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    lr = opt.param_groups[0]["lr"]
    state.scheduler.step()
    return lr, grad_norm


def run_loop(
    state: TrainState,
    loader: Iterable[Any],
    sampler: Any,
    step_fn: Callable[[Any, int], StepOutput],
    *,
    env: DistEnv,
    spec: LoopSpec,
    sink: MetricSink,
    out_dir: Path,
    config: Mapping[str, Any],
    after_step: Callable[[int], Mapping[str, float] | None] | None = None,
) -> None:
    """Run ``step_fn`` from ``state.step`` to ``spec.end_step``, logging and checkpointing.

    Args:
        state: the training state (``state.step`` is advanced in place).
        loader: iterates the batches of ``sampler``'s current position.
        sampler: has ``set_position(epoch, batch)`` (:class:`~mssdf.engine.sampler.GlobalBatchSampler`).
        step_fn: ``step_fn(batch, step) -> StepOutput`` for global step ``step`` (0-based).
        env, spec, sink, out_dir: where the run sits, its cadence, its metric sink, its folder.
        config: the plain run config stored in each checkpoint.
        after_step: optional ``after_step(step)`` called after every step (before its
            checkpoint, so what it records is saved with it), e.g. a validation pass; a
            mapping it returns is appended to ``state.history`` as ``{step, epoch, **it}``
            and sent to the sink. It must leave the model in train mode and not draw from
            the global RNG streams (evaluation without dropout does not), so resume stays exact.

    Every logged record is ``{step, epoch, <scalars (rank mean)>, <info>, images_per_s,
    memory_mb}`` and is appended to ``state.history``. The end state is always saved.
    """
    spe = spec.steps_per_epoch
    last_saved = state.step
    t_log, steps_since_log = time.perf_counter(), 0
    state.model.train()
    while state.step < spec.end_step:
        sampler.set_position(state.step // spe, state.step % spe)
        for batch in loader:
            out = step_fn(batch, state.step)
            state.step += 1
            steps_since_log += 1
            sink.advance()
            step = state.step
            if step % spec.log_every == 0 or step == spec.end_step:
                names = list(out.scalars)
                vals = mean_across_ranks(torch.stack([v.detach().float().reshape(()) for v in out.scalars.values()]), env)
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                elapsed = time.perf_counter() - t_log
                rec = {"step": step, "epoch": step / spe, **dict(zip(names, vals.tolist())), **out.info}
                rec["images_per_s"] = steps_since_log * spec.global_batch / max(elapsed, 1e-9)
                rec["memory_mb"] = memory_mb(env.device)
                state.history.append(rec)
                sink.record(rec)
                t_log, steps_since_log = time.perf_counter(), 0
            if after_step is not None:
                extra = after_step(step)
                if extra:
                    rec = {"step": step, "epoch": step / spe, **extra}
                    state.history.append(rec)
                    sink.record(rec)
                    t_log = time.perf_counter()  # evaluation time does not count against throughput
            if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < spec.end_step:
                save(state, out_dir, env, spec, config)
                last_saved = step
            if step >= spec.end_step:
                break
    if last_saved != state.step:  # the end state is always resumable (a resumed finished run only re-exports)
        save(state, out_dir, env, spec, config)


__all__ = [
    "amp_dtype", "autocast", "TrainState", "LoopSpec", "StepOutput", "check_same_run", "resume", "save", "optimizer_step", "run_loop",
]
