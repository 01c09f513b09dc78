"""Configuration and measurements behind the method notebook (``notebooks/00_method.ipynb``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mssdf import reference
from mssdf.config import replace
from mssdf.masking import MaskingConfig, cross_modal_masks, information_aware_mask, mask_scores, score_weights


@dataclass(frozen=True)
class MethodReportConfig:
    """Parameters of the method notebook (the ``method`` section of params.yaml)."""

    out_dir: str = "scratch/method"  # repo-relative folder for figures and metrics
    laz: str = "data/raw/laspy/autzen_trim.laz"  # real RGB + height sample
    resolution: float = 1.0  # metres per pixel of the rasterised lidar
    tile: int = 128  # tile size in pixels (multiple of patch)
    patch: int = 16
    draws: int = 300  # masks drawn per statistic
    preset: str = "tiny"  # model preset for the forward/backward demonstration
    seed: int = 0
    masking: MaskingConfig = field(default_factory=MaskingConfig)


def band_of(scores: Tensor, quantiles: tuple[float, float]) -> Tensor:
    """``(B, N)`` scores → ``(B, N)`` band index: 0 low, 1 middle, 2 high (as the weights use them)."""
    w = score_weights(scores, (0.0, 1.0, 2.0), quantiles)  # weights double as band labels
    return w.round().long()


def variance_rule_band_changes(images: dict[str, Tensor], patch: int, cfg: MaskingConfig) -> dict[str, float]:
    """Share of patches whose score band (low / middle / high) differs between the two
    variance rules (``variance_of: bands`` — the authors' — and ``grey``), per modality's
    own score and for the combined score masking ranks; ``(B, C, H, W)`` images."""
    rules = {rule: replace(cfg, variance_of=rule) for rule in ("bands", "grey")}
    out = {}
    for name, subset in [*((k, {k: v}) for k, v in images.items()), ("combined", images)]:
        bands = [band_of(mask_scores(subset, patch, c), cfg.quantiles) for c in rules.values()]
        out[name] = float((bands[0] != bands[1]).float().mean())
    return out


def masking_frequency_by_band(scores: Tensor, cfg: MaskingConfig, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Empirical masked frequency per score band: our Gumbel top-k vs the NumPy reference.

    Args:
        scores: ``(N,)`` scores of one image.
    Returns:
        ``{"ours": (3,), "reference": (3,), "share": (3,)}`` — masked frequency of the low,
        middle and high bands, and the share of patches in each band.
    """
    s = scores.unsqueeze(0).repeat(draws, 1)
    ours = information_aware_mask(s, cfg.ratio, cfg.weights, cfg.quantiles, torch.Generator().manual_seed(seed)).float()
    rng = np.random.default_rng(seed)
    ref = np.stack([reference.sample_mask(scores.double().numpy(), cfg.ratio, rng, cfg.weights, cfg.quantiles) for _ in range(draws)])
    band = band_of(scores.unsqueeze(0), cfg.quantiles)[0].numpy()
    freq = lambda m: np.array([m[:, band == b].mean() if (band == b).any() else np.nan for b in range(3)])  # noqa: E731
    return {"ours": freq(ours.numpy()), "reference": freq(ref), "share": np.bincount(band, minlength=3) / band.size}


def cross_modal_statistics(reference_mask: Tensor, probabilities: list[float], draws: int, seed: int = 0) -> list[dict]:
    """For each substitution probability: masked counts and the share of swapped visible patches."""
    rows = []
    g = torch.Generator().manual_seed(seed)
    ref = reference_mask.unsqueeze(0).repeat(draws, 1)
    n_vis = int((~reference_mask).sum())
    for p in probabilities:
        other = cross_modal_masks(ref, ["a", "b"], "a", p, g)["b"]
        swapped = (other & ~ref).sum(1).float()
        rows.append(
            {
                "p": p,
                "masked_count_min": int(other.sum(1).min()),
                "masked_count_max": int(other.sum(1).max()),
                "swapped_share_mean": float(swapped.mean() / max(n_vis, 1)),
                "visible_overlap_mean": float(((~other) & (~ref)).sum(1).float().mean() / max(n_vis, 1)),
            }
        )
    return rows


def densest_window(valid: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size × size`` window with the most valid pixels.

    Args:
        valid: ``(H, W)`` bool.
    """
    c = np.pad(np.cumsum(np.cumsum(valid.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]  # (H-size+1, W-size+1)
    r, col = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(r), int(col)
