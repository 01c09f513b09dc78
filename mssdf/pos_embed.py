"""Fixed sine-cosine position tables (not parameters, never stored in checkpoints)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def sincos_1d(num_positions: int, dim: int) -> Tensor:
    """The authors' 1-D table over the patch index (transformer style, interleaved).

    ``table[pos, 2i] = sin(pos / 10000^(2i/D))``, ``table[pos, 2i+1] = cos(same angle)``.

    Returns:
        ``(num_positions, dim)`` float32.
    """
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.remainder(2) == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def _sincos_axis(positions: Tensor, dim: int) -> Tensor:
    """``(L,)`` positions → ``(L, dim)``: ``[sin(pos·ω), cos(pos·ω)]``, ω = 10000^(-i/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.double().unsqueeze(1) * omega.unsqueeze(0)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """MAE-style 2-D table: the first half of the channels encodes the row, the second the column.

    Returns:
        ``(grid_h * grid_w, dim)`` float32 in row-major patch order.
    """
    if dim % 4:
        raise ValueError(f"2-D sine-cosine positions need a width divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.cat([_sincos_axis(rows, dim // 2), _sincos_axis(cols, dim // 2)], dim=1).float()


def position_table(kind: Literal["1d", "2d"], grid_h: int, grid_w: int, dim: int) -> Tensor:
    """``(grid_h * grid_w, dim)`` table of the given kind."""
    if kind == "1d":
        return sincos_1d(grid_h * grid_w, dim)
    if kind == "2d":
        return sincos_2d(grid_h, grid_w, dim)
    raise ValueError(f"unknown position table kind {kind!r} (use '1d' or '2d')")
