"""Per-band statistics (mean/std) computed from training tiles only.

The model normalises raw inputs with these numbers; computing them on val/test tiles
would leak, so :func:`band_stats` is always fed the train split by the caller
(:mod:`mssdf.data.prepare`), and the tests check that changing val/test pixels does not
change the result.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class RunningStats:
    """NaN-aware per-band accumulator over (C, H, W) arrays (float64 sums)."""

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None

    def update(self, arr: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one (C, H, W) array (only the pixels where the (H, W) ``mask`` is True, if
        given); NaN pixels are skipped per band."""
        flat = (arr[:, mask] if mask is not None else arr.reshape(arr.shape[0], -1)).astype(np.float64)
        ok = np.isfinite(flat)
        vals = np.where(ok, flat, 0.0)
        if self.count is None:
            self.count = np.zeros(arr.shape[0], np.int64)
            self.total = np.zeros(arr.shape[0])
            self.total_sq = np.zeros(arr.shape[0])
        if len(self.count) != arr.shape[0]:
            raise ValueError(f"band count changed from {len(self.count)} to {arr.shape[0]}")
        self.count += ok.sum(1)
        self.total += vals.sum(1)
        self.total_sq += (vals**2).sum(1)

    def result(self) -> dict[str, list[float] | int]:
        """``{"mean": [...], "std": [...], "pixels": n}`` (population std; ``pixels``: the
        number of finite pixels counted, of the band with the fewest)."""
        if self.count is None or np.any(self.count == 0):
            raise ValueError("no valid pixels to compute statistics from")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        return {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "pixels": int(self.count.min())}


def band_stats(arrays: Iterable[np.ndarray]) -> dict[str, list[float] | int]:
    """Mean/std per band over all (C, H, W) ``arrays`` (NaN ignored)."""
    acc = RunningStats()
    for arr in arrays:
        acc.update(arr)
    return acc.result()
