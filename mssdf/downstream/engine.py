"""Fine-tuning (:func:`finetune`): one engine for every downstream task, on :mod:`mssdf.engine`.

Tasks: semantic segmentation, height estimation, change detection (a siamese backbone,
:class:`~mssdf.downstream.heads.ChangeModel`) and scene classification (fine-tuning here;
the frozen-feature protocols ``knn`` and ``linear`` run in
:func:`mssdf.downstream.classification.probe_run`, which :func:`finetune` hands them to).

A run (:class:`~mssdf.downstream.config.FinetuneConfig`): a backbone from its
initialisation (:func:`mssdf.downstream.backbone.build_backbone`), the task's head
(:mod:`mssdf.downstream.heads`), the task's data (:mod:`mssdf.downstream.data`), then

1. ``mode: finetune`` trains everything, AdamW with layer-wise lr decay
   (:func:`mssdf.engine.optim.layer_decay_groups`: embeddings 0 … encoder block i → i+1 …
   the neck and head at ``depth + 1``); ``mode: linear`` freezes the encoder (its weights
   never change) and trains the feature-pyramid neck and the head;
2. warm-up then poly or cosine decay, per step; seeds; DDP under ``torchrun``; atomic
   checkpoints with exact resume; dvclive and tqdm — the shared
   :func:`mssdf.engine.loop.run_loop`;
3. every ``eval_every`` steps (and at the end) the validation split is evaluated; the
   weights with the best validation ``selection`` metric are kept in ``<out_dir>/best``;
4. at the end the best weights (``select_best: false``: the last ones) are evaluated on the
   test split; ``<out_dir>/metrics.json`` holds ``val`` (at the selected step), ``test``,
   ``best_step`` and the run's description; classification also writes the test
   predictions (``predictions.json``).

Under DDP on GPUs the decoders' BatchNorm layers become SyncBatchNorm (statistics over the
global batch, as mmseg's recipe); on CPU (gloo) each process normalises its own share, so a
W-process CPU run is close to, not equal to, one process with the global batch.

Evaluation covers whole samples (batched) or, with ``data.eval_window``, overlapping sliding
windows with averaged logits (:func:`mssdf.downstream.inference.sliding_window`); metrics
over the whole split (:mod:`mssdf.downstream.metrics`, torchmetrics: under DDP each rank
evaluates every W-th sample and the states are summed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from mssdf.atomic import atomic_write, atomic_write_text
from mssdf.data.io import IGNORE_INDEX
from mssdf.downstream.backbone import build_backbone, describe_init
from mssdf.downstream.classification import build_mixer, mix_batch, soft_cross_entropy
from mssdf.downstream.config import DENSE_CLASS_TASKS, FinetuneConfig
from mssdf.downstream.data import TaskData, build_task_data, check_boxes, check_target, check_targets, collate
from mssdf.downstream.heads import (build_change_model, build_classification_model, build_height_model,
                                    build_segmentation_model)
from mssdf.downstream.inference import sliding_window
from mssdf.downstream.metrics import ChangeMetrics, ClassificationMetrics, HeightMetrics, SegmentationMetrics
from mssdf.engine.distributed import DistEnv, cleanup, init_distributed, seed_everything, wrap_ddp
from mssdf.engine.loop import LoopSpec, StepOutput, TrainState, amp_dtype, autocast, optimizer_step, resume, run_loop
from mssdf.engine.optim import build_scaled_scheduler, layer_decay_groups
from mssdf.engine.sampler import GlobalBatchSampler, make_loader
from mssdf.engine.tracking import MetricSink
from mssdf.paths import resolve

#: Settings that may differ between a checkpoint and the run resuming it.
RESUMABLE_CHANGES = ("resume", "out_dir", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "device",
                     "eval_batch_size", "batch_size", "data.root", "backbone.models_dir")


@dataclass
class FinetuneRun:
    """A fine-tuning run, set up and ready to loop (see :func:`setup`)."""

    cfg: FinetuneConfig
    env: DistEnv
    out_dir: Path
    model: nn.Module  # unwrapped
    net: nn.Module  # the module the forward goes through (DDP wrapper when distributed)
    data: TaskData
    num_classes: int
    state: TrainState
    sampler: GlobalBatchSampler
    loader: DataLoader
    spec: LoopSpec
    dtype: torch.dtype | None
    init: str  # where the backbone's weights came from
    resumed_from: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)  # {"step", "score", "val"}


def build_model(cfg: FinetuneConfig, num_classes: int, root: str | Path | None = None) -> nn.Module:
    """Backbone (from ``cfg.backbone.init``) + the task's head; ``linear`` mode freezes the encoder."""
    backbone = build_backbone(cfg.backbone, root, neck=cfg.task != "classification")
    if cfg.task == "segmentation":
        model = build_segmentation_model(backbone, num_classes, aux=cfg.aux_weight > 0, channels=cfg.head_channels)
    elif cfg.task == "change":
        model = build_change_model(backbone, fusion=cfg.change_fusion, aux=cfg.aux_weight > 0, channels=cfg.head_channels)
    elif cfg.task == "classification":
        model = build_classification_model(backbone, num_classes, pool=cfg.pool, probe=cfg.mode == "linear")
    elif cfg.task == "detection":
        from mssdf.downstream.detection.fcos import DetectionModel

        model = DetectionModel(backbone, num_classes, channels=cfg.head_channels, num_convs=cfg.num_convs, obb=cfg.box_type == "obb")
    else:
        model = build_height_model(backbone, channels=cfg.head_channels)
    if cfg.mode == "linear":
        model.backbone.encoder.requires_grad_(False)
    return model


def setup(cfg: FinetuneConfig, env: DistEnv, root: str | Path | None = None) -> FinetuneRun:
    """Build the run: data (checked), model (identical initial weights on every rank), sampler,
    layer-decay AdamW and schedule, and the newest checkpoint's state when ``cfg.resume``."""
    out_dir = resolve(cfg.out_dir, root)
    torch.manual_seed(cfg.seed)  # the random init and the head: a function of the seed only
    probe = build_backbone(cfg.backbone, root)  # reads the init once, for its statistics and adapters
    wants = {m: probe.wants_normalized(m) for m in cfg.backbone.modalities}
    data = build_task_data(cfg, wants, root)
    num_classes = len(data.classes) if cfg.task != "height" else 1
    if cfg.task not in ("height", "detection") and num_classes < 2:  # detection: one class + background is fine
        raise ValueError(f"{data.description}: fewer than two classes {list(data.classes)}")
    check_targets(data, cfg.task, num_classes, limit=None if cfg.data.kind == "sample" else 4)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes, root)
    if env.distributed and env.device.type == "cuda":  # the decoders' BatchNorm over the global batch (the mmseg recipe)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(env.device)
    seed_everything(cfg.seed + env.rank)
    sampler = GlobalBatchSampler(len(data.train), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    depth = model.backbone.encoder.cfg.depth
    groups = layer_decay_groups(model, weight_decay=cfg.optim.weight_decay, layer_decay=cfg.optim.layer_decay,
                                num_layers=depth + 1, layer_id=_layer_id(model))
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)
    scheduler = build_scaled_scheduler(optimizer, peak_lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                                       total_steps=cfg.steps, schedule=cfg.optim.schedule, power=cfg.optim.power,
                                       min_ratio=cfg.optim.min_lr / cfg.optim.lr)
    dtype = amp_dtype(cfg.precision, env.device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, scaler)
    global_batch = cfg.batch_size * env.world_size
    resumed_from = None
    if cfg.resume:
        resumed_from = resume(state, out_dir, env, cfg.seed, config=cfg.to_dict(), may_change=RESUMABLE_CHANGES,
                              global_batch=global_batch)
    net = wrap_ddp(model, env, find_unused_parameters=cfg.mode == "linear" or (cfg.aux_weight == 0 and cfg.task in DENSE_CLASS_TASKS))
    loader = make_loader(data.train, sampler, collate, cfg.num_workers, env.device.type == "cuda", cfg.seed)
    spec = LoopSpec(end_step=cfg.steps, steps_per_epoch=sampler.batches_per_epoch, global_batch=global_batch,
                    log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints)
    best = json.loads((out_dir / "best" / "best.json").read_text()) if resumed_from and (out_dir / "best" / "best.json").is_file() else {}
    return FinetuneRun(cfg, env, out_dir, model, net, data, num_classes, state, sampler, loader, spec, dtype,
                       describe_init(cfg.backbone, root), resumed_from, best)


def _layer_id(model: nn.Module) -> Callable[[str], int]:
    """Layer of a parameter of the whole model: the backbone's own ids, the head after the encoder."""
    backbone = model.backbone
    depth = backbone.encoder.cfg.depth

    def layer(name: str) -> int:
        if name.startswith("backbone."):
            return min(backbone.layer_id(name[len("backbone."):]), depth + 1)
        return depth + 1

    return layer


# ----------------------------------------------------------------------------- the step
def task_loss(out: dict[str, torch.Tensor], target: torch.Tensor, cfg: FinetuneConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Segmentation and change: cross-entropy (ignore label excluded) + ``aux_weight`` × the
    auxiliary head's; classification: cross-entropy with ``label_smoothing`` (soft targets
    from mixup/cutmix: their cross-entropy); height: L1 / MSE / smooth-L1 over pixels with a
    finite target (metres).

    Args:
        out: ``{"out": (B, K, H, W) logits | (B, K) logits | (B, 1, H, W) heights, "aux": (B, K, H, W)}``.
        target: ``(B, H, W)`` int64 labels | ``(B,)`` int64 classes or ``(B, K)`` soft targets |
            float32 heights (NaN = no data).
    Returns:
        ``(loss, {term: value})``.
    """
    if cfg.task == "detection":
        from mssdf.downstream.detection.fcos import fcos_loss

        loss, terms = fcos_loss(out, out["strides"], target, out["cls"][0].shape[1], obb=cfg.box_type == "obb")
        return loss, {k: v for k, v in terms.items() if k != "positives"}
    if cfg.task == "classification":
        logits = out["out"].float()
        loss = soft_cross_entropy(logits, target) if target.is_floating_point() else \
            F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
        return loss, {"ce": loss.detach()}
    if cfg.task in DENSE_CLASS_TASKS:
        main = F.cross_entropy(out["out"].float(), target, ignore_index=IGNORE_INDEX)
        terms = {"ce": main.detach()}
        loss = main
        if "aux" in out and cfg.aux_weight > 0:
            aux = F.cross_entropy(out["aux"].float(), target, ignore_index=IGNORE_INDEX)
            terms["aux_ce"] = aux.detach()
            loss = loss + cfg.aux_weight * aux
        return loss, terms
    pred = out["out"].float()[:, 0]
    valid = torch.isfinite(target)
    if not valid.any():
        return pred.sum() * 0.0, {"height_loss": torch.zeros((), device=pred.device)}
    p, t = pred[valid], target[valid]
    loss = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}[cfg.height_loss](p, t)
    return loss, {"height_loss": loss.detach()}


def finetune_step(run: FinetuneRun) -> Callable[[dict[str, Any], int], StepOutput]:
    """One optimisation step of ``run``."""
    cfg, env = run.cfg, run.env
    context = autocast(run.dtype, env.device)
    params = [p for p in run.model.parameters() if p.requires_grad]
    mixer = build_mixer(cfg, run.num_classes) if cfg.task == "classification" else None

    def step_fn(batch: dict[str, Any], step: int) -> StepOutput:
        images = {m: x.to(env.device, non_blocking=True) for m, x in batch["images"].items()}
        if cfg.task == "detection":  # a list of per-image {"boxes", "labels", "difficult"}
            h, w = next(iter(images.values())).shape[-2:]
            for t in batch["target"]:
                check_boxes(t, run.num_classes, (int(h), int(w)), f"train batch of step {step}")
            target: Any = [{k: v.to(env.device) for k, v in t.items()} for t in batch["target"]]
        else:
            target = batch["target"].to(env.device, non_blocking=True)
            check_target(target, cfg.task, run.num_classes, f"train batch of step {step}", allow_empty=True)  # crops may miss all data
        if mixer is not None:
            images, target = mix_batch(mixer, images, target)
        with context():
            out = run.net(images)
        loss, terms = task_loss(out, target, cfg)
        lr, grad_norm = optimizer_step(run.state, loss, params, cfg.optim.grad_clip)
        scalars = {"loss": loss.detach(), **terms}
        if grad_norm is not None:
            scalars["grad_norm"] = grad_norm
        return StepOutput(scalars, {"lr": lr})

    return step_fn


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: nn.Module, images: dict[str, torch.Tensor], cfg: FinetuneConfig, num_outputs: int,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """``{m: (B, C_m, H, W)}`` → ``(B, num_outputs, H, W)`` logits or heights (float32), in one
    pass or by sliding windows (``data.eval_window``); classification: ``(B, K)`` logits."""
    device = next(model.parameters()).device
    context = autocast(dtype, device)

    def forward(x: dict[str, torch.Tensor]) -> torch.Tensor:
        with context():
            return model({m: v.to(device) for m, v in x.items()})["out"].float()

    window = cfg.data.eval_window
    h, w = next(iter(images.values())).shape[-2:]
    if cfg.task == "classification" or window is None or (h <= window and w <= window and h == w == window):
        return forward(images).cpu()
    overlap = int(round(cfg.data.eval_overlap * window))
    return sliding_window(forward, images, window, overlap, num_outputs, batch_size=cfg.eval_batch_size,
                          out_device=torch.device("cpu"))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, cfg: FinetuneConfig, num_classes: int, env: DistEnv | None = None,
             dtype: torch.dtype | None = None, class_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """Metrics of ``model`` over a whole split (this rank's share under DDP; states summed).

    Returns:
        segmentation: ``miou``, ``per_class_iou``, ``f1``, ``per_class_f1``,
        ``overall_accuracy``, ``confusion``; change: the same plus ``change_iou``,
        ``change_f1``, ``change_precision``, ``change_recall``; classification:
        ``overall_accuracy``, ``f1`` (macro), ``per_class_accuracy``, ``mean_class_accuracy``,
        ``per_class_f1``, ``confusion``; height: ``rmse_m``, ``mae_m``, ``rmse_norm``,
        ``mae_norm`` and their ``_no_ground`` variants (see :mod:`mssdf.downstream.metrics`).
    """
    was_training = model.training
    model.eval()
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    if cfg.task == "detection":
        return _evaluate_detection(model, dataset, cfg, num_classes, rank, world, dtype, class_names, was_training)
    metric = task_metric(cfg, num_classes, class_names)
    device = env.device if env is not None else torch.device("cpu")
    metric = metric.to(device)  # states on the process group's device (NCCL all-reduces CUDA tensors only)
    indices = list(range(rank, len(dataset), world))
    same_size = cfg.data.eval_window is None or cfg.task == "classification"
    step = cfg.eval_batch_size if same_size else 1
    for start in range(0, len(indices), step):
        items = [dataset[i] for i in indices[start : start + step]]
        batch = collate(items)
        out = predict(model, batch["images"], cfg, num_classes if cfg.task != "height" else 1, dtype)
        target = batch["target"].to(device)
        metric.update(out.to(device) if cfg.task != "height" else out[:, 0].to(device), target)
    result = metric.compute()
    model.train(was_training)
    return result


@torch.no_grad()
def detect(model: nn.Module, images: dict[str, torch.Tensor], cfg: FinetuneConfig, dtype: torch.dtype | None = None) -> list[dict[str, torch.Tensor]]:
    """Detections of a batch ``{m: (B, C_m, H, W)}``: per image ``{"boxes", "scores", "labels"}`` (CPU).

    Images larger than ``data.eval_window`` are cut into overlapping windows and the
    detections merged back (:func:`mssdf.downstream.detection.merge.detect_large`)."""
    from mssdf.downstream.detection.fcos import decode
    from mssdf.downstream.detection.merge import detect_large
    from mssdf.downstream.inference import overlap_pixels

    device = next(model.parameters()).device
    context = autocast(dtype, device)

    def run(x: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with context():
            out = model({m: v.to(device) for m, v in x.items()})
        return decode(out, out["strides"], obb=cfg.box_type == "obb", score_threshold=cfg.score_threshold,
                      pre_nms=cfg.pre_nms, iou_threshold=cfg.nms_iou, max_detections=cfg.max_detections)

    window = cfg.data.eval_window
    h, w = next(iter(images.values())).shape[-2:]
    if window is None or (h <= window and w <= window):
        return run(images)
    return detect_large(run, images, window, overlap_pixels(window, cfg.data.eval_overlap), cfg.nms_iou, cfg.max_detections,
                        batch_size=cfg.eval_batch_size)


def _evaluate_detection(model: nn.Module, dataset: Any, cfg: FinetuneConfig, num_classes: int, rank: int, world: int,
                        dtype: torch.dtype | None, class_names: tuple[str, ...], was_training: bool) -> dict[str, Any]:
    metric = task_metric(cfg, num_classes, class_names)
    indices = list(range(rank, len(dataset), world))
    step = cfg.eval_batch_size if cfg.data.eval_window is None else 1  # whole images of any size one at a time
    for start in range(0, len(indices), step):
        batch = collate([dataset[i] for i in indices[start : start + step]])
        metric.update(detect(model, batch["images"], cfg, dtype), batch["target"])
    result = metric.compute()
    model.train(was_training)
    return result


def task_metric(cfg: FinetuneConfig, num_classes: int, class_names: tuple[str, ...] = ()) -> Any:
    """The torchmetrics metric of ``cfg.task`` (:mod:`mssdf.downstream.metrics`)."""
    if cfg.task == "segmentation":
        return SegmentationMetrics(num_classes, class_names=class_names or None)
    if cfg.task == "change":
        return ChangeMetrics()
    if cfg.task == "classification":
        return ClassificationMetrics(num_classes, class_names=class_names or None)
    if cfg.task == "detection":
        from mssdf.downstream.detection.metrics import HBBMetrics, OBBMetrics

        names = class_names or tuple(str(k) for k in range(num_classes))
        return OBBMetrics(names) if cfg.box_type == "obb" else HBBMetrics(names)
    return HeightMetrics(scale_m=cfg.height_scale_m)


@torch.no_grad()
def predict_classes(model: nn.Module, dataset: Any, cfg: FinetuneConfig, dtype: torch.dtype | None = None) -> list[int]:
    """Predicted class of every item of a classification split, in order."""
    was_training = model.training
    model.eval()
    out: list[int] = []
    for start in range(0, len(dataset), cfg.eval_batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + cfg.eval_batch_size, len(dataset)))])
        out += predict(model, batch["images"], cfg, 0, dtype).argmax(1).tolist()
    model.train(was_training)
    return out


def _score(metrics: dict[str, Any], name: str) -> float:
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


# ----------------------------------------------------------------------------- the run
@dataclass
class FinetuneResult:
    """What :func:`finetune` returns (on every rank)."""

    val: dict[str, Any]  # validation metrics at the selected step
    test: dict[str, Any]  # test metrics of the selected weights
    best_step: int
    history: list[dict[str, float]]
    out_dir: Path
    model: nn.Module  # the selected weights, unwrapped, on the training device
    info: dict[str, Any] = field(default_factory=dict)


def finetune(cfg: FinetuneConfig, *, live: bool = False, progress: bool = False, log: Callable[[str], Any] | None = None,
             root: str | Path | None = None) -> FinetuneResult:
    """Run (or resume) one fine-tuning run; see the module docstring."""
    if cfg.task == "classification" and cfg.mode in ("knn", "linear"):  # frozen features: no training loop
        from mssdf.downstream.classification import probe_run

        return probe_run(cfg, root, log)
    env = init_distributed(cfg.device)
    try:
        run = setup(cfg, env, root)
        return _loop(run, live, progress, log)
    finally:
        cleanup(env)


def _loop(run: FinetuneRun, live: bool, progress: bool, log: Callable[[str], Any] | None) -> FinetuneResult:
    cfg, env, state, spec = run.cfg, run.env, run.state, run.spec
    sink = MetricSink(env.is_main, spec.end_step, state.step, (run.out_dir / "live") if live else None,
                      resume=run.resumed_from is not None, progress=progress, log=log, desc=f"{cfg.task}")
    metric, higher = cfg.selection
    sink.say(f"{cfg.task}: {run.data.description}; backbone {run.init} ({cfg.mode}), modalities "
             f"{list(cfg.backbone.modalities)}; {len(run.data.train)} train / {len(run.data.val)} val / "
             f"{len(run.data.test)} test samples; {env.world_size} process(es), global batch {spec.global_batch}, "
             f"steps {state.step}->{spec.end_step}")

    def after_step(step: int) -> dict[str, float] | None:
        if step % cfg.eval_every and step != spec.end_step:
            return None
        val = evaluate(run.model, run.data.val, cfg, run.num_classes, env, run.dtype, run.data.classes)
        score = _score(val, metric)
        best = run.best.get("score")
        better = best is None or not cfg.select_best or (
            math.isfinite(score) and (not math.isfinite(best) or (score > best if higher else score < best)))
        if better:
            run.best = {"step": step, "score": score, "val": _plain(val)}
            if env.is_main:
                _save_best(run.model, run.out_dir / "best", run.best)
        return {f"val_{metric}": score}

    try:
        run_loop(state, run.loader, run.sampler, finetune_step(run), env=env, spec=spec, sink=sink, out_dir=run.out_dir,
                 config=cfg.to_dict(), after_step=after_step)
        if env.distributed:
            torch.distributed.barrier()
        best_dir = run.out_dir / "best"
        if (best_dir / "model.safetensors").is_file():
            run.model.load_state_dict(load_file(str(best_dir / "model.safetensors"), device=str(env.device)))
            run.best = json.loads((best_dir / "best.json").read_text())
        test = evaluate(run.model, run.data.test, cfg, run.num_classes, env, run.dtype, run.data.classes)
        result = FinetuneResult(run.best.get("val", {}), _plain(test), int(run.best.get("step", state.step)), state.history,
                                run.out_dir, run.model,
                                {"init": run.init, "description": run.data.description, "label_kind": run.data.label_kind,
                                 "classes": list(run.data.classes), "num_classes": run.num_classes,
                                 "world_size": env.world_size, "steps": state.step})
        if env.is_main:
            summary = {"task": cfg.task, "init": cfg.backbone.init, "init_source": run.init, "mode": cfg.mode,
                       "seed": cfg.seed, "modalities": list(cfg.backbone.modalities), "data": run.data.description,
                       "label_kind": run.data.label_kind, "classes": list(run.data.classes), "selection": metric,
                       "best_step": result.best_step, "steps": state.step, "val": result.val, "test": result.test}
            atomic_write_text(run.out_dir / "metrics.json", json.dumps(summary, indent=1) + "\n")
            atomic_write_text(run.out_dir / "history.json", json.dumps(state.history, indent=1) + "\n")
            if cfg.task == "classification":
                atomic_write_text(run.out_dir / "predictions.json", json.dumps(
                    {"test": predict_classes(run.model, run.data.test, cfg, run.dtype),
                     "truth": [int(run.data.test.raw(i)[run.data.test.target]) for i in range(len(run.data.test))]}) + "\n")
            sink.say(f"{cfg.task}: best {metric} on val {run.best.get('score', float('nan')):.4f} at step "
                     f"{result.best_step}; test {metric} {_score(test, metric):.4f}")
    finally:
        sink.close()
    return result


def load_finished_run(cfg: FinetuneConfig, root: str | Path | None = None) -> tuple[nn.Module, TaskData, int]:
    """The selected weights of a finished run (``<out_dir>/best``), its data and class count (eval mode, CPU)."""
    from mssdf.data.io import DataError

    out_dir = resolve(cfg.out_dir, root)
    weights = out_dir / "best" / "model.safetensors"
    if not weights.is_file():
        raise DataError(f"{weights}: no selected weights (run the fine-tuning first)")
    torch.manual_seed(cfg.seed)
    probe = build_backbone(cfg.backbone, root)
    data = build_task_data(cfg, {m: probe.wants_normalized(m) for m in cfg.backbone.modalities}, root)
    num_classes = len(data.classes) if cfg.task != "height" else 1
    model = build_model(cfg, num_classes, root)
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), data, num_classes


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready metrics: tensors to lists, NaN to None."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, dict):
            v = _plain(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _save_best(model: nn.Module, folder: Path, best: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write_text(folder / "best.json", json.dumps(best, indent=1) + "\n")


__all__ = ["FinetuneRun", "FinetuneResult", "build_model", "load_finished_run", "setup", "task_loss", "finetune_step", "predict",
           "predict_classes", "detect", "task_metric", "evaluate",
           "finetune", "RESUMABLE_CHANGES"]
