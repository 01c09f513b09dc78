"""Sliding windows over an image, computed per image from its own size.

A window is ``(row, col, height, width)``. The start offsets follow the package's one
rule, :func:`mssdf.data.tiling.starts` (also used by the preparation): windows every
``stride`` pixels plus one flush with the right/bottom border, so every pixel is covered
and every window has the full size. An image smaller than ``size`` gets a single window
at 0 along that axis, of the image's own size here (the part that exists); readers PAD
it to ``size``.
"""

from __future__ import annotations

from mssdf.config import ConfigError
from mssdf.data import tiling
from mssdf.data.readers.base import Window


def starts(length: int, size: int, stride: int) -> list[int]:
    """Window start offsets along one axis (the package's one rule: :func:`mssdf.data.tiling.starts`)."""
    try:
        return tiling.starts(length, size, stride).tolist()
    except ValueError as err:
        raise ConfigError(str(err)) from err


def grid_windows(height: int, width: int, size: int, stride: int | None = None) -> list[Window]:
    """All windows of ``size`` (stride ``stride``, default ``size`` = non-overlapping) over an image."""
    stride = size if stride is None else stride
    h, w = min(size, height), min(size, width)
    return [(r, c, h, w) for r in starts(height, size, stride) for c in starts(width, size, stride)]


def crop_windows(height: int, width: int, size: int = 1024, gap: int = 200) -> list[Window]:
    """DOTA-style crops: ``size`` windows overlapping by ``gap`` pixels (stride ``size - gap``)."""
    if not 0 <= gap < size:
        raise ConfigError(f"crop gap {gap} must be in [0, crop size {size})")
    return grid_windows(height, width, size, size - gap)


__all__ = ["starts", "grid_windows", "crop_windows"]
