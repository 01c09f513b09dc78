"""Plot helpers shared by the report notebooks (matplotlib only; no computation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def stretch(image: Tensor | np.ndarray, lo: float = 2.0, hi: float = 98.0, per_band: bool = True) -> np.ndarray:
    """``(C, H, W)`` raw values → ``(H, W, C)`` in [0, 1] by a ``lo``–``hi`` percentile stretch.

    ``per_band`` stretches each band by its own percentiles (previews of single sources);
    otherwise one stretch over all bands keeps their colour balance. NaN → 0.
    """
    x = np.asarray(torch.as_tensor(image).float())
    bands = [x[b] for b in range(x.shape[0])] if per_band else [x]
    out = []
    for band in bands:
        finite = band[np.isfinite(band)]
        p0, p1 = np.percentile(finite, [lo, hi]) if finite.size else (0.0, 1.0)
        out.append(np.clip((band - p0) / max(p1 - p0, 1e-6), 0, 1))
    stacked = np.concatenate([o.reshape(-1, *x.shape[1:]) for o in out])
    return np.nan_to_num(np.moveaxis(stacked, 0, -1)).astype(np.float32)


def to_display(image: Tensor | np.ndarray, modality: str) -> np.ndarray:
    """``(C, H, W)`` raw values → ``(H, W, 3)`` or ``(H, W)`` in [0, 1] (joint 2–98% :func:`stretch`).

    RGB as is; four or more bands as false colour NIR-R-G (bands 4, 3, 2 of B, G, R, NIR);
    anything else shows its first band.
    """
    x = torch.as_tensor(image).float()
    if modality == "rgb" and x.shape[0] == 3:
        shown = x
    elif x.shape[0] >= 4:
        shown = x[[3, 2, 1]]
    else:
        shown = x[:1]
    out = stretch(shown, per_band=False)
    return out[..., 0] if out.shape[-1] == 1 else out


def patch_grid(values: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """``(N,)`` per-patch values → ``(gh, gw)`` array."""
    return values.detach().float().reshape(grid).cpu().numpy()


def mask_overlay(image: np.ndarray, mask: Tensor, grid: tuple[int, int], alpha: float = 0.75) -> np.ndarray:
    """Grey out masked patches of a display image ``(H, W[, 3])``."""
    h, w = image.shape[:2]
    m = mask.reshape(grid).float().repeat_interleave(h // grid[0], 0).repeat_interleave(w // grid[1], 1).numpy()
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return img * (1 - alpha * m[..., None]) + 0.5 * alpha * m[..., None]


def pca_rgb(*features: Tensor) -> list[np.ndarray]:
    """Project several ``(N, D)`` feature sets on their joint first 3 principal components.

    Returns:
        one ``(N, 3)`` array in [0, 1] per input (shared projection and scaling, so
        colours are comparable across the inputs, e.g. teacher targets vs predictions).
    """
    joint = torch.cat([f.detach().float().reshape(-1, f.shape[-1]) for f in features])
    centred = joint - joint.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=3, center=False)
    proj = centred @ v[:, :3]
    lo, hi = proj.quantile(0.02, dim=0), proj.quantile(0.98, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return [p.numpy() for p in proj.split([f.reshape(-1, f.shape[-1]).shape[0] for f in features])]
