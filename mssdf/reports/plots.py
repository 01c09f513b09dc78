"""Plot helpers shared by the report notebooks (matplotlib only; no computation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_display(image: Tensor | np.ndarray, modality: str) -> np.ndarray:
    """``(C, H, W)`` raw values → ``(H, W, 3)`` or ``(H, W)`` array scaled to [0, 1] (2–98% stretch)."""
    x = torch.as_tensor(image).float()
    if modality in ("rgb",) and x.shape[0] == 3:
        x = x.permute(1, 2, 0)
    elif x.shape[0] >= 4:  # multispectral: false colour NIR-R-G (bands 4, 3, 2 of B, G, R, NIR)
        x = x[[3, 2, 1]].permute(1, 2, 0)
    else:
        x = x[0]
    finite = x[torch.isfinite(x)]
    lo, hi = (torch.quantile(finite, torch.tensor([0.02, 0.98])) if finite.numel() else torch.tensor([0.0, 1.0])).tolist()
    return ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1).nan_to_num(0.0).numpy()


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
