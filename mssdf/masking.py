"""Masking for MSSDF: random (MAE), information-aware, and cross-modal.

Conventions
-----------
* ``B`` samples, ``N = (H/p)·(W/p)`` patches per image in row-major order, patch size ``p``.
* A mask is a boolean tensor ``(B, N)``; ``True`` = masked (hidden from the encoder),
  ``False`` = visible. Every mask produced here hides exactly ``int(N * ratio)``
  patches in every sample and every modality, so visible tokens batch without padding.
* Masks for several modalities are a ``dict[str, Tensor]`` keyed like the images.
* Everything is batched, vectorised and runs on the images' device. Randomness comes
  from an explicit ``torch.Generator`` (same seed → same masks).

Information-aware masking (method.md §2 and §4)
-----------------------------------------------
For each patch: ``score = mean Sobel gradient magnitude + variance``, on the *raw*
(pre-normalisation) values. Sobel uses 3×3 kernels applied to the grey-scale patch on its
own with reflect-101 borders (what the authors' per-patch OpenCV code does); the grey
value is ITU-R 601 luma for ``rgb`` and the band mean otherwise. The variance is the
population variance of *all* the patch's values across its bands (``C·p·p`` values,
``variance_of="bands"``, the authors' rule and the default) or of the grey patch
(``variance_of="grey"``, this project's earlier rule; a flat pure-red patch scores 14450
under the first and 0 under the second). The two agree on one-band modalities (DSM).
Per-modality scores are
optionally divided by their per-sample mean (``normalize_scores``: heights in metres
and 0–255 colours then contribute comparably; the authors summed raw 0–255 scores,
which is ``normalize_scores=False``), multiplied by ``modality_weights`` and summed.
Per sample, patches below the ``quantiles[0]`` quantile of the score get weight
``weights[0]`` (0.8), above ``quantiles[1]`` get ``weights[2]`` (0.3), the rest
``weights[1]`` (0.5); ``int(N*ratio)`` patches are drawn without replacement with
probability proportional to the weights (Gumbel top-k, which has exactly the law of
successive weighted draws). Flat patches are therefore masked more often.

Cross-modal masking (our decision, method.md §4)
------------------------------------------------
One *reference* modality (the first key unless configured) receives the random or
information-aware mask. Every other modality starts from the reference mask; each
position visible in the reference is, with substitution probability ``p``, hidden in
that modality, and the same number of reference-masked positions (a uniform random
choice) are revealed instead. Counts stay fixed, and a fraction ≈ ``p`` of what each
modality shows is what the reference hides. ``p = 0`` gives identical masks (the "no
cross-modal masking" ablation). The schedule ``p(epoch) = min(start + step ·
floor(epoch / every), max)`` defaults to the authors' 0.1 → 0.7 over 60 epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA_601 = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SubstitutionSchedule:
    """Cross-modal substitution probability as a function of the epoch."""

    start: float = 0.1
    step: float = 0.1
    every: int = 10
    max: float = 0.7

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        for name in ("start", "max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def __call__(self, epoch: float) -> float:
        return float(min(self.start + self.step * math.floor(epoch / self.every), self.max))


@dataclass(frozen=True)
class MaskingConfig:
    """Parameters of mask generation (the ``masking`` part of the pretrain params)."""

    mode: Literal["random", "information"] = "information"
    ratio: float = 0.75
    weights: tuple[float, float, float] = (0.8, 0.5, 0.3)  # low / middle / high score
    # variance term of the score: of all C·p·p band values ("bands", the authors') or of the grey patch ("grey")
    variance_of: Literal["bands", "grey"] = "bands"
    quantiles: tuple[float, float] = (0.2, 0.8)
    modality_weights: dict[str, float] = field(default_factory=dict)  # default 1.0 each
    normalize_scores: bool = True
    cross_modal: bool = True
    reference: str | None = None  # None: the first modality key
    substitution: SubstitutionSchedule = field(default_factory=SubstitutionSchedule)
    chunk_size: int = 2  # samples scored at once (bounds temporary memory; benchmarks/bench_masking.py sweep)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if any(w <= 0 for w in self.weights):
            raise ValueError(f"weights must be > 0, got {self.weights}")
        lo, hi = self.quantiles
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"quantiles must satisfy 0 <= low <= high <= 1, got {self.quantiles}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        _check_variance_of(self.variance_of)


def num_masked(num_patches: int, ratio: float) -> int:
    """Masked patches per sample: ``int(N * ratio)`` (the authors' rounding)."""
    return int(num_patches * ratio)


def grid_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """Patch grid ``(H/p, W/p)``; raises unless the image tiles exactly."""
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
    return height // patch, width // patch


# ---------------------------------------------------------------------------------------
# information scores


def to_grey(image: Tensor, modality: str = "") -> Tensor:
    """``(B, C, H, W)`` → ``(B, H, W)`` grey values (luma for ``rgb``, band mean otherwise)."""
    if modality == "rgb" and image.shape[1] == 3:
        r, g, b = image.unbind(1)
        return (r * LUMA_601[0]).add_(g, alpha=LUMA_601[1]).add_(b, alpha=LUMA_601[2])
    if image.shape[1] == 1:
        return image[:, 0]
    return image.mean(dim=1)


VARIANCE_RULES = ("bands", "grey")


def _check_variance_of(variance_of: str) -> None:
    if variance_of not in VARIANCE_RULES:
        raise ValueError(f"variance_of must be one of {VARIANCE_RULES}, got {variance_of!r}")


def _sobel_mean(patches: Tensor) -> Tensor:
    """``(n, p, p)`` grey patches → ``(n,)`` mean Sobel gradient magnitude.

    Each patch is treated on its own with reflect-101 borders. The 3×3 Sobel kernels are
    applied separably with slices and in-place updates, and the per-patch mean is a
    matrix-vector product: few passes over small chunks (the work is memory-bound).
    """
    n, p, _ = patches.shape
    mean_op = torch.full((p * p,), 1.0 / (p * p), dtype=patches.dtype, device=patches.device)
    padded = F.pad(patches.unsqueeze(1), (1, 1, 1, 1), mode="reflect").squeeze(1)  # (n, p+2, p+2)
    dx = padded[:, :, 2:] - padded[:, :, :-2]  # (n, p+2, p) horizontal central difference
    gx = torch.add(dx[:, :-2], dx[:, 2:]).add_(dx[:, 1:-1], alpha=2.0)  # (n, p, p) [1 2 1] smoothing
    dy = padded[:, 2:, :] - padded[:, :-2, :]  # (n, p, p+2)
    gy = torch.add(dy[:, :, :-2], dy[:, :, 2:]).add_(dy[:, :, 1:-1], alpha=2.0)  # (n, p, p)
    return gx.mul_(gx).addcmul_(gy, gy).sqrt_().view(n, p * p) @ mean_op


def _grey_variance(patches: Tensor) -> Tensor:
    """``(n, p, p)`` grey patches → ``(n,)`` population variance.

    Two passes (mean, then mean squared deviation): heights of hundreds of metres make the
    one-pass ``E[x²] − E[x]²`` lose more than a small score in float32.
    """
    n, p, _ = patches.shape
    mean_op = torch.full((p * p,), 1.0 / (p * p), dtype=patches.dtype, device=patches.device)
    flat = patches.reshape(n, p * p)
    dev = flat - (flat @ mean_op).unsqueeze(1)
    return dev.mul_(dev) @ mean_op


def _band_variance(image: Tensor, patch: int) -> Tensor:
    """``(b, C, H, W)`` → ``(b, N)`` population variance of each patch's ``C·p·p`` values.

    Two passes (mean, then mean squared deviation): colour values up to 255 make the
    one-pass ``E[x²] − E[x]²`` lose ~1e-2 in float32.
    """
    b, c, h, w = image.shape
    gh, gw = h // patch, w // patch
    blocks = image.reshape(b, c, gh, patch, gw, patch)
    mean = blocks.mean(dim=(1, 3, 5), keepdim=True)  # (b, 1, gh, 1, gw, 1)
    dev = blocks - mean
    return dev.mul_(dev).mean(dim=(1, 3, 5)).reshape(b, gh * gw)


def patch_scores(
    image: Tensor, patch: int, modality: str = "", chunk_size: int = 2, variance_of: Literal["bands", "grey"] = "bands"
) -> Tensor:
    """Information score of every patch of a batch of raw images.

    Args:
        image: ``(B, C, H, W)`` raw values (float or integer).
        patch: patch size ``p``.
        modality: modality key (``rgb`` uses luma for the grey conversion).
        chunk_size: samples processed at once (bounds temporary memory).
        variance_of: ``"bands"``: variance of all ``C·p·p`` values of the patch (the
            authors'); ``"grey"``: variance of the grey patch. Same for ``C = 1``.

    Returns:
        ``(B, N)`` float32 scores, ``N = (H/p)(W/p)`` in row-major patch order.
    """
    _check_variance_of(variance_of)
    b, c, h, w = image.shape
    gh, gw = grid_size(h, w, patch)
    out = torch.empty(b, gh * gw, dtype=torch.float32, device=image.device)
    for start in range(0, b, chunk_size):
        chunk = image[start : start + chunk_size].float()
        grey = to_grey(chunk, modality)  # (b', H, W)
        n = grey.shape[0]
        patches = grey.reshape(n, gh, patch, gw, patch).transpose(2, 3).reshape(n * gh * gw, patch, patch)
        score = _sobel_mean(patches).view(n, gh * gw)
        if variance_of == "bands" and c > 1:
            score += _band_variance(chunk, patch)
        else:
            score += _grey_variance(patches).view(n, gh * gw)
        out[start : start + n] = score
    return out


def information_scores(
    images: Mapping[str, Tensor],
    patch: int,
    modality_weights: Mapping[str, float] | None = None,
    normalize: bool = True,
    chunk_size: int = 2,
    variance_of: Literal["bands", "grey"] = "bands",
) -> Tensor:
    """Combined per-patch information score over all modalities.

    Args:
        images: ``{modality: (B, C_m, H, W)}`` raw values, all of the same ``B, H, W``.
        patch: patch size.
        modality_weights: multiplier of each modality's score (default 1.0).
        normalize: divide each modality's scores by their per-sample mean first.
        chunk_size: samples scored at once.
        variance_of: variance term over all band values (``"bands"``) or of the grey
            patch (``"grey"``); see :func:`patch_scores`.

    Returns:
        ``(B, N)`` scores.
    """
    _check_same_grid(images)
    weights = dict(modality_weights or {})
    unknown = set(weights) - set(images)
    if unknown:
        raise KeyError(f"modality_weights name modalities not in the batch: {sorted(unknown)}")
    total = None
    for name, image in images.items():
        s = patch_scores(image, patch, name, chunk_size, variance_of)
        if normalize:
            s = s / s.mean(dim=1, keepdim=True).clamp_min(1e-12)
        s = s * float(weights.get(name, 1.0))
        total = s if total is None else total + s
    return total


# ---------------------------------------------------------------------------------------
# sampling


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, device=device, generator=generator)


def topk_mask(keys: Tensor, k: int) -> Tensor:
    """``(B, N)`` keys → boolean ``(B, N)`` mask of the ``k`` largest keys per row."""
    mask = torch.zeros_like(keys, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, keys.topk(k, dim=1).indices, True)
    return mask


def random_mask(
    batch: int, num_patches: int, ratio: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Uniform random mask (MAE): ``(B, N)`` bool with ``int(N*ratio)`` True per row."""
    keys = _uniform((batch, num_patches), torch.device(device), generator)
    return topk_mask(keys, num_masked(num_patches, ratio))


def score_weights(
    scores: Tensor, weights: tuple[float, float, float] = (0.8, 0.5, 0.3), quantiles: tuple[float, float] = (0.2, 0.8)
) -> Tensor:
    """Sampling weight of each patch from its score's per-sample quantile band.

    Args:
        scores: ``(B, N)``.
    Returns:
        ``(B, N)`` weights: ``weights[0]`` below the low quantile, ``weights[2]`` above
        the high quantile, ``weights[1]`` otherwise (quantiles interpolate linearly, as
        ``numpy.percentile``).
    """
    q = torch.quantile(scores.float(), torch.tensor(quantiles, device=scores.device), dim=1)  # (2, B)
    lo, hi = q[0].unsqueeze(1), q[1].unsqueeze(1)
    w_lo, w_mid, w_hi = weights
    out = torch.full_like(scores, w_mid, dtype=torch.float32)
    out = torch.where(scores < lo, torch.full_like(out, w_lo), out)
    return torch.where(scores > hi, torch.full_like(out, w_hi), out)


def weighted_mask(weights: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``k`` positions per row without replacement, probability ∝ ``weights``.

    Gumbel top-k: ``argtopk(log w + G)`` with i.i.d. Gumbel ``G`` has the same law as
    ``k`` successive weighted draws without replacement.

    Args:
        weights: ``(B, N)`` positive weights.
    Returns:
        ``(B, N)`` bool, exactly ``k`` True per row.
    """
    u = _uniform(tuple(weights.shape), weights.device, generator).clamp_(min=1e-20, max=1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    return topk_mask(torch.log(weights) + gumbel, k)


def information_aware_mask(
    scores: Tensor,
    ratio: float,
    weights: tuple[float, float, float] = (0.8, 0.5, 0.3),
    quantiles: tuple[float, float] = (0.2, 0.8),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Information-aware mask from ``(B, N)`` scores: ``(B, N)`` bool, ``int(N*ratio)`` True per row."""
    return weighted_mask(score_weights(scores, weights, quantiles), num_masked(scores.shape[1], ratio), generator)


def random_subset(candidates: Tensor, k: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per row, a uniform random subset of ``k[b]`` of the ``True`` entries of ``candidates``.

    Args:
        candidates: ``(B, N)`` bool.
        k: ``(B,)`` integer sizes, each ``<= candidates[b].sum()``.
    Returns:
        ``(B, N)`` bool subset of ``candidates``.
    """
    keys = _uniform(tuple(candidates.shape), candidates.device, generator)
    keys = torch.where(candidates, keys, torch.full_like(keys, 2.0))  # non-candidates rank last
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return candidates & (rank < k.unsqueeze(1))


def cross_modal_masks(
    reference: Tensor, modalities: list[str], reference_key: str, p: float, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Derive every modality's mask from the reference mask by count-preserving swaps.

    Args:
        reference: ``(B, N)`` bool mask of the reference modality.
        modalities: all modality keys (the reference among them).
        reference_key: which key gets ``reference`` unchanged.
        p: substitution probability in ``[0, 1]``.
    Returns:
        ``{modality: (B, N) bool}``, all with the reference's masked count per sample.
    """
    if reference_key not in modalities:
        raise KeyError(f"reference modality {reference_key!r} not in {modalities}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"substitution probability must be in [0, 1], got {p}")
    masks = {}
    visible = ~reference
    n_vis = visible.sum(dim=1)
    n_masked = reference.shape[1] - n_vis
    for key in modalities:
        if key == reference_key or p == 0.0:
            masks[key] = reference.clone()
            continue
        k = torch.binomial(n_vis.float(), torch.full_like(n_vis, p, dtype=torch.float32), generator=generator)
        k = torch.minimum(k.long(), n_masked)
        hide = random_subset(visible, k, generator)
        reveal = random_subset(reference, k, generator)
        masks[key] = (reference | hide) & ~reveal
    return masks


# ---------------------------------------------------------------------------------------
# the entry point


def generate_masks(
    images: Mapping[str, Tensor],
    patch: int,
    config: MaskingConfig = MaskingConfig(),
    epoch: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Masks for a batch of any set of modalities.

    Args:
        images: ``{modality: (B, C_m, H, W)}`` raw (pre-normalisation) values.
        patch: patch size.
        config: masking parameters.
        epoch: current (possibly fractional) epoch, for the substitution schedule.
        generator: random source on the images' device.

    Returns:
        ``{modality: (B, N) bool}``, ``True`` = masked, ``int(N*ratio)`` per sample.
    """
    _check_same_grid(images)
    keys = list(images)
    first = images[keys[0]]
    b, _, h, w = first.shape
    gh, gw = grid_size(h, w, patch)
    ref_key = config.reference or keys[0]
    if ref_key not in images:
        raise KeyError(f"masking.reference {ref_key!r} is not a modality of the batch {keys}")
    if config.mode == "random":
        ref = random_mask(b, gh * gw, config.ratio, first.device, generator)
    else:
        scores = mask_scores(images, patch, config)
        ref = information_aware_mask(scores, config.ratio, config.weights, config.quantiles, generator)
    p = config.substitution(epoch) if config.cross_modal else 0.0
    return cross_modal_masks(ref, keys, ref_key, p, generator)


def mask_scores(images: Mapping[str, Tensor], patch: int, config: MaskingConfig) -> Tensor:
    """``(B, N)`` the information scores :func:`generate_masks` ranks under ``config``."""
    return information_scores(images, patch, config.modality_weights, config.normalize_scores, config.chunk_size,
                              config.variance_of)


def visible_indices(mask: Tensor) -> Tensor:
    """``(B, N)`` bool mask → ``(B, N_vis)`` indices of visible patches, ascending.

    Requires the same visible count in every row (what every mask here guarantees).
    """
    counts = (~mask).sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"visible counts differ across the batch: {counts.tolist()}")
    n_vis = int(counts[0]) if counts.numel() else 0
    return mask.to(torch.uint8).argsort(dim=1, stable=True)[:, :n_vis]


def _check_same_grid(images: Mapping[str, Tensor]) -> None:
    if not images:
        raise ValueError("no modality in the batch")
    for k, v in images.items():
        if v.dim() != 4:
            raise ValueError(f"modality {k!r}: expected (B, C, H, W), got shape {tuple(v.shape)}")
    shapes = {k: (v.shape[0], *v.shape[2:]) for k, v in images.items()}
    ref_key, ref = next(iter(shapes.items()))
    for k, s in shapes.items():
        if s != ref:
            raise ValueError(f"modality {k!r} has batch/size {s}, but {ref_key!r} has {ref}")
