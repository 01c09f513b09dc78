"""Slow, obviously-correct reference of the authors' information-aware masking.

One sample at a time, one patch at a time, in NumPy — the algorithm as method.md §2
describes the authors' code (per 16×16 patch: mean Sobel gradient magnitude of the grey
patch with reflect-101 borders + the variance of all the patch's values across its bands,
``variance_of="bands"``; or, this project's earlier option ``variance_of="grey"``, + the
variance of the grey patch; scores of the modalities added;
per-sample 20/80 percentiles → weights 0.8/0.5/0.3; ``int(N*ratio)`` patches drawn
without replacement with ``numpy.random.Generator.choice``), but on raw values (the
authors' uint8 cast of normalised tensors is a defect we do not reproduce).

Used by the tests (our vectorised scores must equal these) and by
``benchmarks/bench_masking.py`` (speed comparison). Not used for training.
"""

from __future__ import annotations

import numpy as np

LUMA_601 = np.array([0.299, 0.587, 0.114])


def grey(image: np.ndarray, modality: str) -> np.ndarray:
    """``(C, H, W)`` → ``(H, W)``."""
    if modality == "rgb" and image.shape[0] == 3:
        return np.tensordot(LUMA_601, image, axes=(0, 0))
    return image.mean(axis=0)


def sobel_magnitude_mean(patch: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of one ``(p, p)`` patch, reflect-101 borders."""
    padded = np.pad(patch, 1, mode="reflect")
    gx = (
        (padded[:-2, 2:] - padded[:-2, :-2])
        + 2 * (padded[1:-1, 2:] - padded[1:-1, :-2])
        + (padded[2:, 2:] - padded[2:, :-2])
    )
    gy = (
        (padded[2:, :-2] - padded[:-2, :-2])
        + 2 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
        + (padded[2:, 2:] - padded[:-2, 2:])
    )
    return float(np.sqrt(gx * gx + gy * gy).mean())


def sample_scores(
    images: dict[str, np.ndarray], patch: int, normalize: bool = False, variance_of: str = "bands"
) -> np.ndarray:
    """Scores ``(N,)`` of one sample ``{modality: (C, H, W)}``, patch by patch.

    ``variance_of="bands"``: the variance term is ``np.var`` of the ``(C, p, p)`` block
    (all its values); ``"grey"``: ``np.var`` of the ``(p, p)`` grey block.
    """
    if variance_of not in ("bands", "grey"):
        raise ValueError(f"variance_of must be 'bands' or 'grey', got {variance_of!r}")
    total = None
    for modality, image in images.items():
        values = image.astype(np.float64)
        g = grey(values, modality)
        gh, gw = g.shape[0] // patch, g.shape[1] // patch
        scores = np.empty(gh * gw)
        for i in range(gh):
            for j in range(gw):
                rows, cols = slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch)
                block = g[rows, cols]
                var = values[:, rows, cols].var() if variance_of == "bands" else block.var()
                scores[i * gw + j] = sobel_magnitude_mean(block) + var
        if normalize:
            scores = scores / max(scores.mean(), 1e-12)
        total = scores if total is None else total + scores
    return total


def sample_mask(
    scores: np.ndarray,
    ratio: float,
    rng: np.random.Generator,
    weights: tuple[float, float, float] = (0.8, 0.5, 0.3),
    quantiles: tuple[float, float] = (0.2, 0.8),
) -> np.ndarray:
    """Boolean ``(N,)`` mask of one sample: ``int(N*ratio)`` weighted draws without replacement."""
    lo, hi = np.percentile(scores, [100 * quantiles[0], 100 * quantiles[1]])
    w = np.full(scores.shape, weights[1])
    w[scores < lo] = weights[0]
    w[scores > hi] = weights[2]
    k = int(len(scores) * ratio)
    chosen = rng.choice(len(scores), size=k, replace=False, p=w / w.sum())
    mask = np.zeros(len(scores), dtype=bool)
    mask[chosen] = True
    return mask


def batch_masks(
    images: dict[str, np.ndarray],
    patch: int,
    ratio: float,
    rng: np.random.Generator,
    normalize: bool = False,
    variance_of: str = "bands",
) -> np.ndarray:
    """``{modality: (B, C, H, W)}`` → ``(B, N)`` masks, one sample at a time."""
    batch = next(iter(images.values())).shape[0]
    return np.stack(
        [
            sample_mask(sample_scores({k: v[b] for k, v in images.items()}, patch, normalize, variance_of), ratio, rng)
            for b in range(batch)
        ]
    )
