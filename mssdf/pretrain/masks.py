"""Masks for a training step, independent of how the global batch is split over ranks.

The global batch is cut into *mask groups* of ``group`` consecutive samples; group ``j``
draws its masks with :func:`mssdf.masking.generate_masks` from a generator (on the
batch's device) seeded by ``(seed, step, j)``. A rank holding positions
``[first, first + b)`` of the global batch masks its groups ``first/group …`` — so, for
the same ``group``, one process and ``W`` processes mask every sample identically, and a
resumed run regenerates exactly the masks of the uninterrupted one (the generator state
is a function of the step; nothing needs to be saved). With ``group`` = the
per-process batch (the default) each step makes one vectorised call.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from mssdf.masking import MaskingConfig, generate_masks


def mask_seed(seed: int, step: int, group_index: int) -> int:
    """64-bit seed of mask group ``group_index`` at global ``step``."""
    return int(np.random.SeedSequence([seed, step, group_index, 0x6D61736B]).generate_state(1, np.uint64)[0] >> 1)


def step_masks(
    images: Mapping[str, Tensor],
    patch: int,
    config: MaskingConfig,
    epoch: float,
    *,
    seed: int,
    step: int,
    first_index: int = 0,
    group: int | None = None,
) -> dict[str, Tensor]:
    """Masks of this rank's slice of the global batch.

    Args:
        images: ``{m: (b, C_m, H, W)}`` raw values on the training device.
        patch: patch size.
        config: masking parameters.
        epoch: fractional epoch (substitution schedule).
        seed: run seed; step: global step (0-based).
        first_index: position of ``images[...][0]`` in the global batch (``rank · b``).
        group: samples per mask generator (must divide ``b`` and ``first_index``);
            None: the whole slice.

    Returns:
        ``{m: (b, N) bool}``, True = masked.
    """
    b = next(iter(images.values())).shape[0]
    group = group or b
    if b % group or first_index % group:
        raise ValueError(f"mask group {group} must divide the batch {b} and its offset {first_index}")
    device = next(iter(images.values())).device
    parts: list[dict[str, Tensor]] = []
    for start in range(0, b, group):  # one iteration unless groups are smaller than the batch
        gen = torch.Generator(device=device).manual_seed(mask_seed(seed, step, (first_index + start) // group))
        chunk = {m: x[start : start + group] for m, x in images.items()}
        parts.append(generate_masks(chunk, patch, config, epoch=epoch, generator=gen))
    if len(parts) == 1:
        return parts[0]
    return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}


__all__ = ["mask_seed", "step_masks"]
