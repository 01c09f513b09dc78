"""Losses of MSSDF and of the MAE baseline, and the weighted combiner.

The feature sets each term acts on (method.md §4 leaves this open; the authors' code
transposes 3-D tensors and so computes something else than it describes):

* **reconstruction** (weight 1.0): MSE between predictions ``(B, N, Dt)`` and targets
  ``(B, N, Dt)`` at the *masked* positions of each modality only, averaged over masked
  tokens and then over modalities. Targets are the teacher's layer-normalised patch
  features of the full image (MSSDF) or per-patch-normalised pixels (MAE baseline).
* **contrast** (weight 0.5): symmetric InfoNCE (τ = 0.07) between two modalities'
  *student encoder* tokens ``(B, n, D)`` at their visible patches, restricted to the
  first ``shared_fraction`` of the channels (the *shared* part). Within each image, a
  token of modality a and the token of modality b **at the same patch position** are a
  positive pair (only positions visible in both modalities have one); every other
  visible token of b in that image is a negative (and symmetrically). Averaged over an
  image's pairs, then over images (a per-sample mean, so DDP's gradient averaging
  matches one process), then over all modality pairs. The encoder is shared, so this aligns
  what co-located patches of different modalities have in common.
* **hsic** (weight 0.2): linear HSIC between the remaining channels (the
  *modality-specific* part) of the same co-located token pairs, over all pairs in the
  batch (a batch statistic: under DDP each rank uses its own pairs), normalised by the two self-HSICs (linear CKA, in [0, 1]) so it cannot be
  lowered by merely shrinking features. Minimising it keeps the specific parts of
  different modalities from duplicating each other: alignment of what modalities
  share, independence of what is unique to each (the abstract's goal).
* **modality** (weight 0.1): cross-entropy of the modality head on each modality's
  encoder cls token, over the model's modality count.

A term with weight 0 is switched off (not computed); every computed term is reported.
Under bf16 autocast the terms are computed in float32 (autocast is disabled inside).
Pair terms need at least two modalities and are skipped with one (and contribute 0 in
a batch where no position is visible in both); the modality term needs a model with at
least two modalities. Why encoder tokens and not decoder outputs: the reconstruction
decoder sees the same fused tokens for every modality (only the mask token differs),
so its outputs agree by construction (CKA ≈ 1 at initialisation) and aligning them
would teach the encoder nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


def colocated(pos_a: Tensor, pos_b: Tensor) -> Tensor:
    """``(B, n)``, ``(B, m)`` patch indices → ``(B, n, m)`` bool, True where the positions are equal."""
    return pos_a.unsqueeze(2) == pos_b.unsqueeze(1)


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.07, match: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE within each image.

    Args:
        a: ``(B, n, D)``, b: ``(B, m, D)`` (a 2-D ``(n, D)`` input is one image).
        match: ``(B, n, m)`` bool, the positive pairs (at most one per row and column);
            default: the identity (``a[i, j]`` with ``b[i, j]``, needs ``n == m``). Rows and
            columns without a positive are not scored; all of image i's tokens of the
            other modality are the candidates.
    Returns:
        scalar, ``0.5·(CE(a→b) + CE(b→a))``, each averaged over an image's positive pairs,
        then over images (0 if there is no pair at all).
    """
    if a.dim() == 2:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
        match = None if match is None else match.unsqueeze(0)
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = torch.einsum("bnd,bmd->bnm", a, b) / temperature  # (B, n, m)
    if match is None:
        match = torch.eye(a.shape[1], dtype=torch.bool, device=a.device).expand(a.shape[0], -1, -1)
    rows, cols = match.any(-1), match.any(-2)  # (B, n), (B, m)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    loss_ab = F.cross_entropy(logits[rows], match.float().argmax(-1)[rows], reduction="none")
    loss_ba = F.cross_entropy(logits.transpose(1, 2)[cols], match.float().argmax(-2)[cols], reduction="none")
    return 0.5 * (_per_image_mean(loss_ab, rows) + _per_image_mean(loss_ba, cols))


def _per_image_mean(values: Tensor, selected: Tensor) -> Tensor:
    """Mean over images (that have any ``selected`` entry) of the mean of their ``values``.

    Each image weighs the same whatever its number of pairs, so the loss of a batch is a
    mean of per-image values: under DDP the mean over ranks equals the global mean.
    """
    image = selected.nonzero()[:, 0]  # image index of each value
    count = torch.bincount(image, minlength=selected.shape[0]).to(values.dtype)
    total = torch.zeros(selected.shape[0], dtype=values.dtype, device=values.device).index_add_(0, image, values)
    has = count > 0
    return (total[has] / count[has]).mean()


def matched_pairs(a: Tensor, b: Tensor, match: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of ``a`` that have a positive in ``b``, and those positives.

    Args:
        a: ``(B, n, D)``, b: ``(B, m, D')``, match: ``(B, n, m)`` bool.
    Returns:
        ``(P, D)`` and ``(P, D')``: the P co-located pairs of the batch.
    """
    rows = match.any(-1)
    partner = match.float().argmax(-1)  # (B, n)
    b_aligned = torch.gather(b, 1, partner.unsqueeze(-1).expand(-1, -1, b.shape[-1]))
    return a[rows], b_aligned[rows]


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


def mssdf_loss(out: MSSDFOutput, cfg: LossConfig = LossConfig()) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the enabled terms.

    Returns:
        ``(total, terms)``: the scalar to back-propagate and ``{term: unweighted value}``
        (detached) for every computed term.
    """
    device_type = next(iter(out.pred.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False):  # losses in fp32 under bf16 autocast
        return _mssdf_loss(out, cfg)


def _mssdf_loss(out: MSSDFOutput, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    terms: dict[str, Tensor] = {}
    keys = list(out.pred)
    pairs = list(itertools.combinations(keys, 2))
    if cfg.reconstruction > 0:
        terms["reconstruction"] = torch.stack(
            [masked_mse(out.pred[m], out.target[m], out.masks[m]) for m in keys]
        ).mean()
    split = {m: _split(out.tokens[m], cfg.shared_fraction) for m in keys}  # (shared, specific)
    match = {(a, b): colocated(out.positions[a], out.positions[b]) for a, b in pairs}
    if cfg.contrast > 0 and pairs:
        terms["contrast"] = torch.stack(
            [info_nce(split[a][0], split[b][0], cfg.temperature, match[a, b]) for a, b in pairs]
        ).mean()
    if cfg.hsic > 0 and pairs:
        values = []
        for a, b in pairs:
            xa, xb = matched_pairs(split[a][1], split[b][1], match[a, b])
            values.append(linear_cka(xa, xb) if xa.shape[0] > 1 else split[a][1].sum() * 0.0)
        terms["hsic"] = torch.stack(values).mean()
    if cfg.modality > 0 and out.modality_logits.shape[1] > 1:
        terms["modality"] = modality_cross_entropy(out.modality_logits, out.modality_labels)
    if not terms:
        raise ValueError("every loss term is switched off (all weights 0, or pair terms with one modality)")
    total = sum(getattr(cfg, name) * value for name, value in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
