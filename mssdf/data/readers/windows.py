"""Sliding windows over an image, computed per image from its own size.

A window is ``(row, col, height, width)``. Windows start every ``stride`` pixels; when
the last one does not reach the right/bottom border, one more window aligned to that
border is added (it overlaps its neighbour), so every pixel is covered and every window
has the full size. An image smaller than ``size`` gets a single window of its own size
along that axis (readers pad it).
"""

from __future__ import annotations

from mssdf.config import ConfigError
from mssdf.data.readers.base import Window


def starts(length: int, size: int, stride: int) -> list[int]:
    """Window start offsets along one axis of ``length`` pixels (see module docstring)."""
    if size <= 0 or stride <= 0:
        raise ConfigError(f"window size {size} and stride {stride} must be positive")
    if length <= size:
        return [0]
    out = list(range(0, length - size + 1, stride))
    if out[-1] + size < length:
        out.append(length - size)
    return out


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
