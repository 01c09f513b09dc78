"""The pre-training loop (:func:`pretrain`), single-process or under ``torchrun``.

One step (global step ``s``, 0-based; ``b`` samples on this rank, ``G = b·W`` global):

1. the batch ``{m: (b, C_m, H, W)}`` raw values moves to the device;
2. masks ``{m: (b, N)}`` are generated there from the raw values
   (:func:`mssdf.train.masks.step_masks`, seeded by (seed, s, mask group)), with the
   cross-modal substitution probability of the fractional epoch ``s / steps_per_epoch``;
3. forward and :func:`mssdf.losses.mssdf_loss` (bf16 autocast on CUDA by default, fp32
   on CPU); backward; optional global-norm clipping; AdamW step; the lr schedule steps;
4. the teacher follows the student encoder with momentum ``momentum_at(s)``, through the
   unwrapped module.

Under DDP the gradient is the mean over ranks of each rank's mean loss. That equals
the single-process mean over the global batch for terms that are means of per-sample
values with the same weight per sample: reconstruction (fixed masked count per
sample) and the modality cross-entropy. The pair terms (InfoNCE's negatives from other images, HSIC's
pairs) couple the samples of a batch; they all-gather the tokens of every rank with a
differentiable gather (:func:`mssdf.train.distributed.loss_gather`), so a run on W
processes computes the global-batch loss and gradient of one process.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from mssdf.atomic import atomic_write_text
from mssdf.losses import mssdf_loss
from mssdf.model import MSSDF, ema_update
from mssdf.paths import resolve
from mssdf.train.checkpointing import (
    capture_rng, checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, remove_partial, restore_rng,
    save_checkpoint, save_final,
)
from mssdf.train.config import PretrainConfig
from mssdf.train.data import GlobalBatchSampler, KeyedDataset, build_dataset, check_data, collate
from mssdf.train.distributed import (
    DistEnv, all_gather_objects, cleanup, init_distributed, loss_gather, mean_across_ranks, seed_everything, unwrap,
    wrap_ddp,
)
from mssdf.train.masks import step_masks
from mssdf.train.metrics import MetricSink, memory_mb
from mssdf.train.optim import build_optimizer, build_scheduler, momentum_at

TERMS = ("reconstruction", "contrast", "hsic", "modality")


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (on every rank)."""

    history: list[dict[str, float]]  # one record per logged step
    model: MSSDF  # the unwrapped model, on the training device
    out_dir: Path
    final_dir: Path | None  # <out_dir>/final (None on ranks other than 0)
    global_step: int
    steps_per_epoch: int
    resumed_from: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


def resolve_dir(path: str | Path, root: str | Path | None = None) -> Path:
    """Repository-relative ``path`` resolved (cwd-relative outside a repository)."""
    try:
        return resolve(path, root)
    except FileNotFoundError:
        return Path(path).resolve()


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` → bf16 on CUDA, none (fp32) on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _channels_of(dataset: Dataset, names: tuple[str, ...]) -> dict[str, int]:
    sample = KeyedDataset(dataset, names)[(0, 0)]
    return {m: int(sample[m].shape[0]) for m in names}


def pretrain(
    cfg: PretrainConfig,
    dataset: Dataset | None = None,
    *,
    live: bool = True,
    live_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
    root: str | Path | None = None,
) -> PretrainResult:
    """Run (or resume) pre-training as configured.

    Args:
        cfg: the validated run configuration.
        dataset: optional in-memory dataset whose items are mappings holding the
            ``data.modalities`` keys as ``(C, H, W)`` tensors (overrides ``cfg.data``;
            no normalisation statistics then, unless ``model.normalization`` is set).
        live: log metrics with dvclive (main process) to ``live_dir``
            (default ``<out_dir>/live``).
        progress: tqdm progress bar on the main process.
        log: printer for text lines on the main process (None: silent).
        root: repository root for relative paths (default: found from the cwd).

    Returns:
        :class:`PretrainResult`; final weights in ``<out_dir>/final`` (rank 0).
    """
    out_dir = resolve_dir(cfg.out_dir, root)
    if dataset is None:
        check_data(cfg, root)  # fail on missing data before joining any process group
    env = init_distributed(cfg.device)
    try:
        return _run(cfg, dataset, env, out_dir, live, live_dir, progress, log, root)
    finally:
        cleanup(env)


def _run(cfg, dataset, env: DistEnv, out_dir: Path, live, live_dir, progress, log, root) -> PretrainResult:
    names = cfg.data.modality_names
    if dataset is None:
        dataset, channels, norm = build_dataset(cfg, root)
    else:
        channels, norm = _channels_of(dataset, names), {}
    mcfg = cfg.model_config(channels, norm)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and world size
    model = MSSDF(mcfg).to(env.device)
    seed_everything(cfg.seed + env.rank)  # per-rank streams (drop path, loader workers)

    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    spe = sampler.batches_per_epoch
    total_steps = cfg.epochs * spe
    end_step = min(total_steps, cfg.max_steps or total_steps)
    warmup_steps = round(cfg.optim.warmup_epochs * spe)
    global_batch = cfg.batch_size * env.world_size
    peak_lr = cfg.optim.peak_lr(global_batch)
    optimizer = build_optimizer(model, peak_lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = build_scheduler(optimizer, peak_lr=peak_lr, min_lr=cfg.optim.min_lr, warmup_steps=warmup_steps, total_steps=total_steps)
    dtype = amp_dtype(cfg.precision, env.device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    ema = cfg.ema_schedule

    step, history, resumed_from = 0, [], None
    if cfg.resume and env.is_main:
        remove_partial(out_dir)
    if cfg.resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        step, history, resumed_from = int(state["position"]["global_step"]), list(state["history"]), ckpt
        if int(state["world_size"]) == env.world_size:
            restore_rng(state["rng"][env.rank])
        else:  # the data order and masks do not depend on the world size; only per-rank streams reseed
            seed_everything(cfg.seed + env.rank + 7919 * step)

    unused = (set(mcfg.modalities) != set(names) or len(names) < 2 or cfg.losses.modality == 0
              or cfg.losses.reconstruction == 0)
    net = wrap_ddp(model, env, find_unused_parameters=unused)
    loader = DataLoader(
        KeyedDataset(dataset, names), batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate,
        pin_memory=env.device.type == "cuda",
    )
    if live and live_dir is None:
        live_dir = out_dir / "live"
    sink = MetricSink(env.is_main, end_step, step, live_dir if live else None, resume=resumed_from is not None,
                      progress=progress, log=log)
    n_params = sum(p.numel() for p in model.student_parameters())
    sink.say(
        f"pretrain: {env.world_size} process(es) on {env.device}, {len(dataset)} samples, global batch {global_batch}, "
        f"{spe} steps/epoch, steps {step}->{end_step} of {total_steps}, peak lr {peak_lr:.3g}, "
        f"{n_params / 1e6:.2f}M trainable parameters, precision {dtype or torch.float32}"
        + (f", resumed from {resumed_from}" if resumed_from else "")
    )

    def checkpoint() -> None:
        rngs = all_gather_objects(capture_rng(), env)
        if env.is_main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
                "position": {"epoch": step // spe, "batch": step % spe, "global_step": step},
                "config": cfg.to_dict(), "history": history, "world_size": env.world_size,
            }
            save_checkpoint(checkpoint_path(out_dir, step), state)
            prune_checkpoints(out_dir, cfg.keep_checkpoints)

    autocast = (lambda: torch.autocast(env.device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    last_saved = step
    t_log, steps_since_log = time.perf_counter(), 0
    model.train()
    try:
        while step < end_step:
            sampler.set_position(step // spe, step % spe)
            for batch in loader:
                images = {m: x.to(env.device, non_blocking=True) for m, x in batch.items()}
                epoch_f = step / spe
                masks = step_masks(images, mcfg.patch_size, cfg.masking, epoch_f, seed=cfg.seed, step=step,
                                   first_index=env.rank * cfg.batch_size, group=cfg.mask_group)
                with autocast():
                    out = net(images, masks)
                    loss, terms = mssdf_loss(out, cfg.losses, *loss_gather(env))  # pair terms over the global batch
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = None
                if cfg.optim.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.student_parameters(), cfg.optim.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                momentum = 1.0
                if ema is not None:
                    momentum = momentum_at(step, total_steps, ema.momentum_start, ema.momentum_end)
                    ema_update(model.teacher, model.encoder, momentum)  # unwrapped module, never the DDP wrapper
                step += 1
                steps_since_log += 1
                sink.advance()

                if step % cfg.log_every == 0 or step == end_step:
                    names_t = ["loss", *terms]
                    vals = torch.stack([loss.detach().float(), *[v.float() for v in terms.values()]])
                    if grad_norm is not None:
                        names_t.append("grad_norm")
                        vals = torch.cat([vals, grad_norm.detach().float().reshape(1)])
                    vals = mean_across_ranks(vals, env).tolist()
                    if env.device.type == "cuda":
                        torch.cuda.synchronize(env.device)
                    elapsed = time.perf_counter() - t_log
                    rec = {"step": step, "epoch": step / spe, **dict(zip(names_t, vals)), "lr": lr}
                    if ema is not None:
                        rec["momentum"] = momentum
                    rec["substitution_p"] = cfg.masking.substitution(epoch_f) if cfg.masking.cross_modal else 0.0
                    rec["images_per_s"] = steps_since_log * global_batch / max(elapsed, 1e-9)
                    rec["memory_mb"] = memory_mb(env.device)
                    history.append(rec)
                    sink.record(rec)
                    t_log, steps_since_log = time.perf_counter(), 0
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < end_step:
                    checkpoint()
                    last_saved = step
                if step >= end_step:
                    break
        if last_saved != step:  # the end state is always resumable (a resumed finished run only re-exports)
            checkpoint()
        final_dir = None
        if env.is_main:
            final_dir = save_final(model, out_dir, timm=cfg.export_timm)
            atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1) + "\n")
            sink.say(f"pretrain: done at step {step}; weights in {final_dir}")
    finally:
        sink.close()
    return PretrainResult(history, model, out_dir, final_dir, step, spe, resumed_from,
                          {"total_steps": total_steps, "warmup_steps": warmup_steps, "peak_lr": peak_lr,
                           "world_size": env.world_size, "global_batch": global_batch})


__all__ = ["PretrainResult", "pretrain", "amp_dtype", "resolve_dir", "TERMS"]
