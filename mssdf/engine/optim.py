"""AdamW parameter groups and the per-step schedules (learning rate, EMA momentum).

* Weight decay applies to weight matrices/kernels only: every 1-D parameter (norm
  weights and biases, linear biases, q/v biases) and the learned tokens (``cls_token``,
  ``fusion_token``, ``mask_tokens.*``, ``cls_embed``, ``pos_embed``) are in a
  ``weight_decay=0`` group. The teacher is never optimised.
* Learning rate: linear warm-up from 0 over ``warmup_steps`` then half-cosine from the
  peak to ``min_lr`` at ``total_steps`` (MAE's per-iteration schedule).
* EMA momentum: ``end − (end − start)·(1 + cos(π·step/total))/2`` (BYOL), ``start`` at
  step 0 and ``end`` at ``total_steps``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

#: Names (suffix/prefix fragments) of learned tokens kept free of weight decay.
NO_DECAY_TOKENS: tuple[str, ...] = ("cls_token", "fusion_token", "mask_tokens.", "cls_embed", "pos_embed")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters that must not be decayed: 1-D tensors and named tokens."""
    if param.ndim <= 1:
        return True
    leaf = name.split(".")[-1]
    return any(tok in name if tok.endswith(".") else leaf == tok for tok in NO_DECAY_TOKENS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable, non-teacher parameters of ``model``.

    Returns:
        ``[{"params": decayed, "weight_decay": wd, "names": [...]}, {"params": rest, "weight_decay": 0.0, ...}]``
    """
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("teacher."):
            continue
        if no_weight_decay(name, p):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> AdamW:
    """AdamW over :func:`param_groups` (peak ``lr`` as each group's base lr)."""
    return AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimisation ``step`` (0-based): warm-up then cosine.

    ``lr(0) = 0`` with warm-up, ``lr(warmup) = peak``, ``lr(total) = min_lr``; constant
    ``min_lr`` after ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A per-step :class:`LambdaLR` following :func:`lr_at` (``scheduler.step()`` after each optimizer step)."""

    def factor(step: int) -> float:
        return lr_at(step, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=total_steps) / peak_lr

    for g in optimizer.param_groups:
        g["lr"] = peak_lr
        g.setdefault("initial_lr", peak_lr)
    return LambdaLR(optimizer, factor)


def layer_decay_groups(model: nn.Module, *, weight_decay: float, layer_decay: float, num_layers: int,
                       layer_id: Callable[[str], int]) -> list[dict]:
    """AdamW groups with layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe).

    A parameter of layer ``i`` (``layer_id(name)``: 0 = embeddings, ``num_layers`` = the
    head, anything after the encoder) gets ``lr_scale = layer_decay ** (num_layers − i)``;
    weight decay as :func:`no_weight_decay` decides. Frozen parameters are left out.

    Returns:
        one group per (layer, decayed or not): ``{"params", "weight_decay", "lr_scale",
        "layer", "names"}``, ordered by layer.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = int(layer_id(name))
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer_id({name!r}) = {layer} is outside [0, {num_layers}]")
        decay = not no_weight_decay(name, p)
        g = groups.setdefault((layer, decay), {"params": [], "names": [], "layer": layer,
                                               "weight_decay": weight_decay if decay else 0.0,
                                               "lr_scale": layer_decay ** (num_layers - layer)})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def schedule_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str = "cosine", power: float = 1.0,
                    min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up from 0, then
    ``poly`` (``(1 − t)^power``) or ``cosine`` decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "poly":
        decayed = (1.0 - t) ** power
    elif schedule == "cosine":
        decayed = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown schedule {schedule!r} (poly or cosine)")
    return min_ratio + (1.0 - min_ratio) * decayed


def build_scaled_scheduler(optimizer: torch.optim.Optimizer, *, peak_lr: float, **schedule: Any) -> LambdaLR:
    """A per-step :class:`LambdaLR`: group ``g`` follows ``peak_lr · g["lr_scale"] ·``
    :func:`schedule_factor` (``lr_scale`` 1 where absent)."""
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] = peak_lr * g.get("lr_scale", 1.0)
    return LambdaLR(optimizer, lambda step: schedule_factor(step, **schedule))


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """Cosine EMA momentum: ``start`` at step 0 rising to ``end`` at ``total_steps``."""
    t = min(1.0, step / max(1, total_steps))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * t))


def parameter_count(params: Iterable[torch.Tensor]) -> int:
    """Number of scalars in ``params``."""
    return sum(p.numel() for p in params)


__all__ = [
    "NO_DECAY_TOKENS", "no_weight_decay", "param_groups", "build_optimizer", "lr_at", "build_scheduler",
    "momentum_at", "parameter_count", "layer_decay_groups", "schedule_factor", "build_scaled_scheduler",
]
