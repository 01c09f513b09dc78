"""Pre-training (:func:`pretrain`), single-process or under ``torchrun``: set-up, step, loop.

:func:`setup` builds the run (model, data, sampler, optimiser, schedule, resume);
:func:`pretrain_step` is one MSSDF step; the generic loop, checkpoints, exact resume and
logging are :mod:`mssdf.engine`'s, shared with fine-tuning.

One step (global step ``s``, 0-based; ``b`` samples on this rank, ``G = b·W`` global):

1. the batch ``{m: (b, C_m, H, W)}`` raw values moves to the device;
2. masks ``{m: (b, N)}`` are generated there from the raw values
   (:func:`mssdf.pretrain.masks.step_masks`, seeded by (seed, s, mask group)), with the
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
differentiable gather (:func:`mssdf.engine.distributed.loss_gather`), so a run on W
processes computes the global-batch loss and gradient of one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from mssdf.atomic import atomic_write_text
from mssdf.engine.distributed import DistEnv, cleanup, init_distributed, loss_gather, seed_everything, wrap_ddp
from mssdf.engine.loop import LoopSpec, StepOutput, TrainState, amp_dtype, autocast, optimizer_step, resume, run_loop
from mssdf.engine.optim import build_optimizer, build_scheduler, momentum_at
from mssdf.engine.sampler import GlobalBatchSampler, GroupedBatchSampler, make_loader
from mssdf.engine.tracking import MetricSink
from mssdf.losses import mssdf_loss
from mssdf.model import MSSDF, ModelConfig, ema_update
from mssdf.paths import resolve
from mssdf.pretrain.config import PretrainConfig
from mssdf.pretrain.data import KeyedDataset, build_dataset, check_data, collate
from mssdf.pretrain.masks import step_masks
from mssdf.pretrain.mixture import MixtureDataset, config_groups, mixture_sampler
from mssdf.weights.native import save_pretrained
from mssdf.weights.timm_export import export_timm

TERMS = ("reconstruction", "contrast", "hsic", "modality")
#: Run settings that may differ between a checkpoint and the run resuming it (where it is
#: written and read from, how often it logs and saves, how far it runs, the per-process
#: batch as long as the global batch stays); anything else refuses to resume.
RESUMABLE_CHANGES = ("resume", "max_steps", "out_dir", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers",
                     "device", "export_timm", "batch_size", "data.root", "data.backend")


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


@dataclass
class PretrainRun:
    """A pre-training run, set up and ready to loop (see :func:`setup`)."""

    cfg: PretrainConfig
    env: DistEnv
    out_dir: Path
    model_cfg: ModelConfig
    state: TrainState  # state.model is the unwrapped MSSDF
    net: torch.nn.Module  # the module the forward goes through (DDP wrapper when distributed)
    dataset: Dataset
    sampler: GlobalBatchSampler | GroupedBatchSampler
    loader: DataLoader
    spec: LoopSpec
    total_steps: int
    warmup_steps: int
    peak_lr: float
    dtype: torch.dtype | None
    resumed_from: Path | None = None


def _channels_of(dataset: Dataset, names: tuple[str, ...]) -> dict[str, int]:
    sample = KeyedDataset(dataset, names)[(0, 0)]
    return {m: int(sample[m].shape[0]) for m in names}


def setup(cfg: PretrainConfig, env: DistEnv, out_dir: Path, dataset: Dataset | None = None,
          root: str | Path | None = None) -> PretrainRun:
    """Build the run: data, model (identical initial weights on every rank), sampler,
    AdamW groups and schedule, and the state of the newest checkpoint when ``cfg.resume``."""
    names = cfg.data.modality_names
    if dataset is None:
        dataset, channels, norm = build_dataset(cfg, root)
    else:
        channels, norm = _channels_of(dataset, names), {}
    mcfg = cfg.model_config(channels, norm)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and world size
    model = MSSDF(mcfg).to(env.device)
    seed_everything(cfg.seed + env.rank)  # per-rank streams (drop path, loader workers)

    if isinstance(dataset, MixtureDataset):  # one modality set per global batch
        sampler: GlobalBatchSampler | GroupedBatchSampler = mixture_sampler(dataset, cfg.batch_size, env.rank, env.world_size, cfg.seed)
    else:
        sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    spe = sampler.batches_per_epoch
    total_steps = cfg.epochs * spe
    warmup_steps = round(cfg.optim.warmup_epochs * spe)
    global_batch = cfg.batch_size * env.world_size
    peak_lr = cfg.optim.peak_lr(global_batch)
    optimizer = build_optimizer(model, peak_lr, cfg.optim.weight_decay, cfg.optim.betas)
    scheduler = build_scheduler(optimizer, peak_lr=peak_lr, min_lr=cfg.optim.min_lr, warmup_steps=warmup_steps, total_steps=total_steps)
    dtype = amp_dtype(cfg.precision, env.device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, scaler)
    resumed_from = None
    if cfg.resume:
        resumed_from = resume(state, out_dir, env, cfg.seed, config=cfg.to_dict(), may_change=RESUMABLE_CHANGES,
                              global_batch=global_batch)

    unused = (set(mcfg.modalities) != set(names) or len(names) < 2 or cfg.losses.modality == 0
              or cfg.losses.reconstruction == 0 or len(cfg.modality_sets) > 1)  # a mixture's batches leave adapters out
    net = wrap_ddp(model, env, find_unused_parameters=unused)
    keyed = KeyedDataset(dataset, () if isinstance(dataset, MixtureDataset) else names)
    loader = make_loader(keyed, sampler, collate, cfg.num_workers, env.device.type == "cuda", cfg.seed)
    spec = LoopSpec(end_step=min(total_steps, cfg.max_steps or total_steps), steps_per_epoch=spe, global_batch=global_batch,
                    log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints)
    return PretrainRun(cfg, env, out_dir, mcfg, state, net, dataset, sampler, loader, spec, total_steps, warmup_steps,
                       peak_lr, dtype, resumed_from)


def pretrain_step(run: PretrainRun) -> Callable[[dict[str, torch.Tensor], int], StepOutput]:
    """The MSSDF step of ``run``: masks, forward, loss, backward, AdamW, EMA teacher."""
    cfg, env, model, ema = run.cfg, run.env, run.state.model, run.cfg.ema_schedule
    spe, context = run.spec.steps_per_epoch, autocast(run.dtype, env.device)
    gather = loss_gather(env)  # pair terms over the global batch
    groups = group_names(run)

    def step_fn(batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        images = {m: x.to(env.device, non_blocking=True) for m, x in batch.items()}
        epoch_f = step / spe
        masks = step_masks(images, run.model_cfg.patch_size, cfg.masking, epoch_f, seed=cfg.seed, step=step,
                           first_index=env.rank * cfg.batch_size, group=cfg.mask_group)
        with context():
            out = run.net(images, masks)
            loss, terms = mssdf_loss(out, cfg.losses, *gather)
        lr, grad_norm = optimizer_step(run.state, loss, model.student_parameters(), cfg.optim.grad_clip,
                                       idle=model.idle_parameters(images))
        info = {"lr": lr}
        if ema is not None:
            momentum = momentum_at(step, run.total_steps, ema.momentum_start, ema.momentum_end)
            ema_update(model.teacher, model.encoder, momentum)  # unwrapped module, never the DDP wrapper
            info["momentum"] = momentum
        info["substitution_p"] = cfg.masking.substitution(epoch_f) if cfg.masking.cross_modal else 0.0
        if len(groups) > 1:  # which modality set this step trained (index into group_names(run))
            info["group"] = float(groups.index(batch_group(images)))
        scalars = {"loss": loss, **terms}
        if grad_norm is not None:
            scalars["grad_norm"] = grad_norm
        return StepOutput(scalars, info)

    return step_fn


def batch_group(images: dict[str, torch.Tensor]) -> str:
    """The group name of a batch ``{m: (b, C_m, S, S)}``: ``<m1>+<m2>...@S`` (as :class:`mssdf.pretrain.mixture.Group`)."""
    first = next(iter(images.values()))
    return f"{'+'.join(images)}@{first.shape[-1]}"


def group_names(run: PretrainRun) -> list[str]:
    """The run's batch groups (one unless it reads a mixture), as the ``group`` index of its history records."""
    return run_groups(run.cfg)


def run_groups(cfg: PretrainConfig) -> list[str]:
    """The batch group names of a run's configuration (see :func:`group_names`)."""
    if cfg.data.kind == "mixture":
        return [g.name for g in config_groups(cfg)]
    return [f"{'+'.join(cfg.data.modality_names)}@{cfg.crop}"]


def save_final(model: MSSDF, out_dir: str | Path, timm: bool = True) -> Path:
    """Write ``<out_dir>/final``: ``model.safetensors`` + ``config.json`` (+ timm exports)."""
    folder = Path(out_dir) / "final"
    save_pretrained(model, folder)
    if timm:
        export_timm(model, folder)
    return folder


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
    out_dir = resolve(cfg.out_dir, root)
    if dataset is None:
        check_data(cfg, root)  # fail on missing data before joining any process group
    env = init_distributed(cfg.device)
    try:
        run = setup(cfg, env, out_dir, dataset, root)
        return _loop(run, live, live_dir, progress, log)
    finally:
        cleanup(env)


def _loop(run: PretrainRun, live: bool, live_dir: str | Path | None, progress: bool, log) -> PretrainResult:
    cfg, env, state, spec = run.cfg, run.env, run.state, run.spec
    sink = MetricSink(env.is_main, spec.end_step, state.step, (live_dir or run.out_dir / "live") if live else None,
                      resume=run.resumed_from is not None, progress=progress, log=log, desc="pretrain")
    n_params = sum(p.numel() for p in state.model.student_parameters())
    sink.say(
        f"pretrain: {env.world_size} process(es) on {env.device}, {len(run.dataset)} samples, global batch {spec.global_batch}, "
        f"{spec.steps_per_epoch} steps/epoch, steps {state.step}->{spec.end_step} of {run.total_steps}, peak lr {run.peak_lr:.3g}, "
        f"{n_params / 1e6:.2f}M trainable parameters, precision {run.dtype or torch.float32}"
        + (f", resumed from {run.resumed_from}" if run.resumed_from else "")
    )
    try:
        run_loop(state, run.loader, run.sampler, pretrain_step(run), env=env, spec=spec, sink=sink,
                 out_dir=run.out_dir, config=cfg.to_dict())
        final_dir = None
        if env.is_main:
            final_dir = save_final(state.model, run.out_dir, timm=cfg.export_timm)
            atomic_write_text(run.out_dir / "history.json", json.dumps(state.history, indent=1) + "\n")
            sink.say(f"pretrain: done at step {state.step}; weights in {final_dir}")
    finally:
        sink.close()
    return PretrainResult(state.history, state.model, run.out_dir, final_dir, state.step, spec.steps_per_epoch,
                          run.resumed_from, {"total_steps": run.total_steps, "warmup_steps": run.warmup_steps,
                                             "peak_lr": run.peak_lr, "world_size": env.world_size,
                                             "global_batch": spec.global_batch, "groups": group_names(run)})


__all__ = ["PretrainResult", "PretrainRun", "setup", "pretrain_step", "batch_group", "group_names", "run_groups", "save_final", "pretrain", "TERMS", "RESUMABLE_CHANGES"]
