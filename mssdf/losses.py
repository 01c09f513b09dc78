"""Losses of MSSDF and of the MAE baseline, and the weighted combiner.

The feature sets each term acts on (method.md §4 leaves this open; the authors' code
transposes 3-D tensors and so computes something else than it describes):

* **reconstruction** (weight 1.0): MSE between predictions ``(B, N, Dt)`` and targets
  ``(B, N, Dt)`` at the *masked* positions of each modality only, averaged over masked
  tokens and then over modalities. Targets are the teacher's layer-normalised patch
  features of the full image (MSSDF) or per-patch-normalised pixels (MAE baseline).
* **contrast** (weight 0.5): symmetric InfoNCE (τ = 0.07) between two modalities'
  *student encoder* tokens at their visible patches, restricted to the first
  ``shared_fraction`` of the channels (the *shared* part). For every patch position
  visible in both modalities of an image, the token of modality a and the token of
  modality b **of the same image at the same position** are the positive pair; the
  tokens of modality b **at that same position in the other images** of the (global)
  batch are the negatives (and symmetrically). All candidates share the position
  embedding, so the term can only be solved by content — comparing positions within one
  image instead would be solved by the position embedding alone (seen: loss ≈ 0.002
  after a few hundred steps). Averaged over an image's positions, then over the images
  of the batch (one with no co-visible position counts 0).
* **hsic** (weight 0.2): linear HSIC between the remaining channels (the
  *modality-specific* part) of the same co-located token pairs, over all pairs of the
  (global) batch, normalised by the two self-HSICs (linear CKA, in [0, 1]) so it cannot
  be lowered by merely shrinking features. Minimising it keeps the specific parts of
  different modalities from duplicating each other: alignment of what modalities
  share, independence of what is unique to each (the abstract's goal).
* **modality** (weight 0.1): cross-entropy of the modality head on each modality's
  encoder cls token, over the model's modality count.

A term with weight 0 is switched off (not computed); every computed term is reported.
Under bf16 autocast the terms are computed in float32 (autocast is disabled inside).
Pair terms need at least two modalities and are skipped with one; the modality term
needs a model with at least two modalities. Why encoder tokens and not decoder outputs:
the reconstruction decoder sees the same fused tokens for every modality (only the mask
token differs), so its outputs agree by construction (CKA ≈ 1 at initialisation).

Under DDP pass ``gather`` (:func:`mssdf.engine.distributed.loss_gather` gives it: a differentiable all-gather): the pair
terms then use the tokens of every rank (negatives and HSIC pairs from the global
batch, with gradients flowing back through the gather), so a run on W processes
computes the same loss and gradient as one process with the global batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mssdf.model import MSSDFOutput


@dataclass(frozen=True)
class LossConfig:
    """Weights and settings of the loss terms (weight 0 switches a term off)."""

    reconstruction: float = 1.0
    contrast: float = 0.5
    hsic: float = 0.2
    modality: float = 0.1
    temperature: float = 0.07
    shared_fraction: float = 0.5  # channels of the encoder tokens used by InfoNCE; the rest by HSIC

    def __post_init__(self) -> None:
        for name in ("reconstruction", "contrast", "hsic", "modality"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.shared_fraction < 1.0:
            raise ValueError(f"shared_fraction must be in (0, 1), got {self.shared_fraction}")


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error at masked positions.

    Args:
        pred, target: ``(B, N, D)``.
        mask: ``(B, N)`` bool, True = include.
    Returns:
        scalar: mean over included tokens of the per-token mean over ``D``.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    weight = mask.float()
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


Gather = Callable[[Tensor], Tensor]  # (B, ...) on each rank -> (W·B, ...), this rank's rows at rank·B


def dense_tokens(tokens: Tensor, positions: Tensor, num_patches: int) -> tuple[Tensor, Tensor]:
    """Scatter visible tokens onto the full patch grid.

    Args:
        tokens: ``(B, n, D)``; positions: ``(B, n)`` patch indices.
    Returns:
        ``(B, N, D)`` tokens (zeros where not visible) and ``(B, N)`` bool visibility.
    """
    b, _, d = tokens.shape
    dense = tokens.new_zeros(b, num_patches, d).scatter(1, positions.unsqueeze(-1).expand(-1, -1, d), tokens)
    visible = torch.zeros(b, num_patches, dtype=torch.bool, device=tokens.device).scatter_(1, positions, True)
    return dense, visible


def _gathered(x: Tensor, gather: Gather | None, rank: int) -> tuple[Tensor, int]:
    return (x, 0) if gather is None else (gather(x), rank * x.shape[0])


def info_nce(
    a: Tensor,
    b: Tensor,
    visible_a: Tensor | None = None,
    visible_b: Tensor | None = None,
    temperature: float = 0.07,
    gather: Gather | None = None,
    rank: int = 0,
) -> Tensor:
    """Symmetric InfoNCE across images at co-located positions.

    Args:
        a, b: ``(B, N, D)`` features of two modalities on the patch grid.
        visible_a, visible_b: ``(B, N)`` bool (default: all visible).
        temperature: τ.
        gather: optional all-gather over processes (``(B, ...) → (W·B, ...)``); ``rank``
            locates this process's rows in the gathered batch.
    Returns:
        scalar: for each image i and position n visible in both, the cross-entropy of
        picking ``b[i, n]`` among ``{b[j, n]}`` (j over the batch, where visible) for
        ``a[i, n]`` — and the reverse — averaged over n, then over the B images (an image
        with no position visible in both contributes 0).
    """
    bsz, n, _ = a.shape
    va = torch.ones(bsz, n, dtype=torch.bool, device=a.device) if visible_a is None else visible_a
    vb = torch.ones(bsz, n, dtype=torch.bool, device=a.device) if visible_b is None else visible_b
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    pos = va & vb  # (B, N) rows that have a positive
    if gather is None and not bool(pos.any()):
        return (a.sum() + b.sum()) * 0.0
    losses = []  # under a gather every rank runs the same collectives and keeps them in the graph
    for x, y, vy in ((a, b, vb), (b, a, va)):
        y_all, offset = _gathered(y, gather, rank)
        vy_all, _ = _gathered(vy, gather, rank)
        logits = torch.einsum("ind,jnd->inj", x, y_all) / temperature  # (B, N, B_all)
        logits = logits.masked_fill(~vy_all.T.unsqueeze(0), float("-inf"))
        target = (torch.arange(bsz, device=a.device) + offset).unsqueeze(1).expand(bsz, n)
        ce = F.cross_entropy(logits[pos], target[pos], reduction="none")
        losses.append(_per_image_mean(ce, pos) + 0.0 * y_all.sum())
    return 0.5 * (losses[0] + losses[1])


def _per_image_mean(values: Tensor, selected: Tensor) -> Tensor:
    """Mean over all B images of the mean of their ``values`` (0 for an image with none).

    Each image weighs 1/B whatever its number of pairs, so the loss of a batch is a mean
    of per-image values: under DDP the mean over ranks equals the global mean.
    """
    image = selected.nonzero()[:, 0]  # image index of each value
    count = torch.bincount(image, minlength=selected.shape[0]).to(values.dtype)
    total = torch.zeros(selected.shape[0], dtype=values.dtype, device=values.device).index_add_(0, image, values)
    return (total / count.clamp_min(1)).mean()


def colocated_cka(
    a: Tensor, b: Tensor, visible_a: Tensor, visible_b: Tensor, gather: Gather | None = None
) -> Tensor:
    """Linear CKA between two modalities' features over the positions visible in both.

    Args:
        a, b: ``(B, N, D)``; visible_a, visible_b: ``(B, N)`` bool.
        gather: optional all-gather: the pairs of every process enter one statistic.
    """
    both = visible_a & visible_b
    if gather is not None:
        a, b, both = gather(a), gather(b), gather(both)
    if int(both.sum()) < 2:
        return (a.sum() + b.sum()) * 0.0
    return linear_cka(a[both], b[both])


def linear_hsic(x: Tensor, y: Tensor) -> Tensor:
    """Linear-kernel HSIC ``‖X̃ᵀỸ‖²_F / (n−1)²`` with column-centred ``X̃, Ỹ``.

    Args:
        x: ``(n, d1)``, y: ``(n, d2)`` (leading dims beyond 2 are flattened into ``n``).
    """
    x = x.reshape(-1, x.shape[-1]).float()
    y = y.reshape(-1, y.shape[-1]).float()
    n = x.shape[0]
    xc = x - x.mean(dim=0, keepdim=True)
    yc = y - y.mean(dim=0, keepdim=True)
    return (xc.T @ yc).pow(2).sum() / (n - 1) ** 2


def linear_cka(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """Normalised linear HSIC ``HSIC(X,Y)/sqrt(HSIC(X,X)·HSIC(Y,Y))`` in [0, 1]."""
    return linear_hsic(x, y) / (linear_hsic(x, x) * linear_hsic(y, y)).clamp_min(eps).sqrt()


def modality_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy ``(M·B, K)`` logits vs ``(M·B,)`` modality indices."""
    return F.cross_entropy(logits.float(), labels)


def _split(features: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    k = max(1, int(round(features.shape[-1] * fraction)))
    return features[..., :k], features[..., k:]


def mssdf_loss(
    out: MSSDFOutput, cfg: LossConfig = LossConfig(), gather: Gather | None = None, rank: int = 0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the enabled terms.

    ``gather``/``rank``: under DDP, the all-gather of the pair terms (module docstring).

    Returns:
        ``(total, terms)``: the scalar to back-propagate and ``{term: unweighted value}``
        (detached) for every computed term.
    """
    device_type = next(iter(out.pred.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False):  # losses in fp32 under bf16 autocast
        return _mssdf_loss(out, cfg, gather, rank)


def _mssdf_loss(out: MSSDFOutput, cfg: LossConfig, gather: Gather | None, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
    terms: dict[str, Tensor] = {}
    keys = list(out.pred)
    pairs = list(itertools.combinations(keys, 2))
    if cfg.reconstruction > 0:
        terms["reconstruction"] = torch.stack(
            [masked_mse(out.pred[m], out.target[m], out.masks[m]) for m in keys]
        ).mean()
    if pairs and (cfg.contrast > 0 or cfg.hsic > 0):
        n = out.masks[keys[0]].shape[1]
        dense = {m: dense_tokens(out.tokens[m], out.positions[m], n) for m in keys}  # ((B, N, D), (B, N))
        split = {m: _split(dense[m][0], cfg.shared_fraction) for m in keys}  # (shared, specific)
        if cfg.contrast > 0:
            terms["contrast"] = torch.stack(
                [info_nce(split[a][0], split[b][0], dense[a][1], dense[b][1], cfg.temperature, gather, rank)
                 for a, b in pairs]  # fmt: skip
            ).mean()
        if cfg.hsic > 0:
            terms["hsic"] = torch.stack(
                [colocated_cka(split[a][1], split[b][1], dense[a][1], dense[b][1], gather) for a, b in pairs]
            ).mean()
    if cfg.modality > 0 and out.modality_logits.shape[1] > 1:
        terms["modality"] = modality_cross_entropy(out.modality_logits, out.modality_labels)
    if not terms:
        raise ValueError("every loss term is switched off (all weights 0, or pair terms with one modality)")
    total = sum(getattr(cfg, name) * value for name, value in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
