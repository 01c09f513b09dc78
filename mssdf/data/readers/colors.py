"""Colour-coded label images to class indices (vectorised), and back.

Each colour ``(r, g, b)`` is packed into one integer ``r << 16 | g << 8 | b``; a sorted
table and ``np.searchsorted`` map a whole image at once. A colour outside the palette
raises a DataError naming the file and the offending colours (with pixel counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mssdf.data.io import IGNORE_INDEX, DataError, read_colormap
from mssdf.data.readers.base import Window, read_image

RGB = tuple[int, int, int]


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) integer colours -> (H, W) int32 codes."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


@dataclass(frozen=True)
class ColorPalette:
    """Class names with their colours; extra colours that mean "ignore".

    Attributes:
        name: palette name (used in error messages).
        classes: class names; class ``i`` is drawn in ``colors[i]``.
        colors: one RGB triple per class.
        ignore_colors: colours decoded to ``ignore_index`` (e.g. black boundaries).
        ignore_index: the index written for ignored pixels.
    """

    name: str
    classes: tuple[str, ...]
    colors: tuple[RGB, ...]
    ignore_colors: tuple[RGB, ...] = ()
    ignore_index: int = IGNORE_INDEX
    _keys: np.ndarray = field(init=False, repr=False, compare=False)
    _values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colors):
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.colors)} colours")
        all_colors = list(self.colors) + list(self.ignore_colors)
        codes = _pack(np.array(all_colors, dtype=np.int32).T[:, :, None])[:, 0]
        if len(set(codes.tolist())) != len(codes):
            raise ValueError(f"{self.name}: duplicate colours")
        values = np.array(list(range(len(self.colors))) + [self.ignore_index] * len(self.ignore_colors), np.int64)
        order = np.argsort(codes)
        object.__setattr__(self, "_keys", codes[order])
        object.__setattr__(self, "_values", values[order])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def decode(
        self, rgb: np.ndarray, path: str | Path = "<array>", unknown: Literal["error", "ignore"] = "error"
    ) -> np.ndarray:
        """Map a ``(3, H, W)`` colour image to ``(H, W)`` int64 class indices.

        Args:
            rgb: colour image (any integer or integral-float dtype).
            path: the source file, named in errors.
            unknown: ``"error"`` raises DataError on a colour outside the palette;
                ``"ignore"`` writes ``ignore_index`` there instead.
        """
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise DataError(f"{path}: colour label must have 3 bands, got shape {rgb.shape}")
        codes = _pack(rgb)
        pos = np.searchsorted(self._keys, codes).clip(max=len(self._keys) - 1)
        found = self._keys[pos] == codes
        out = self._values[pos]
        if not found.all():
            if unknown == "error":
                bad, counts = np.unique(codes[~found], return_counts=True)
                listed = ", ".join(
                    f"({c >> 16 & 255},{c >> 8 & 255},{c & 255})x{n}" for c, n in zip(bad[:8].tolist(), counts[:8])
                )
                more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
                raise DataError(
                    f"{path}: {int((~found).sum())} pixel(s) with colour(s) not in the {self.name} palette: "
                    f"{listed}{more} (colour x pixel count); known colours: "
                    + ", ".join(f"{n}={c}" for n, c in zip(self.classes, self.colors))
                )
            out = np.where(found, out, self.ignore_index)
        return out

    def encode(self, label: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`decode` for valid indices: ``(H, W)`` -> ``(3, H, W)`` uint8
        (ignored pixels get the first ignore colour, black if none)."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.array(self.colors, np.uint8)
        lut[self.ignore_index] = self.ignore_colors[0] if self.ignore_colors else (0, 0, 0)
        return np.moveaxis(lut[label.astype(np.int64)], -1, 0)


def read_color_label(
    path: Path,
    palette: ColorPalette,
    window: Window | None = None,
    unknown: Literal["error", "ignore"] = "error",
) -> np.ndarray:
    """Read a colour label file (RGB, RGBA or palette-indexed) and decode it to ``(H, W)`` int64."""
    arr = read_image(path, expected_bands=(1, 3, 4), window=window, dtype=np.uint8)
    if arr.shape[0] == 1:
        lut = read_colormap(path)  # palette TIFF read by GDAL (palette PNGs are expanded by Pillow)
        if lut is None:
            raise DataError(f"{path}: single-band label without a colour table; expected an RGB colour label")
        arr = np.moveaxis(lut[arr[0]], -1, 0)
    return palette.decode(arr[:3], path, unknown)


# ----------------------------------------------------------------------------- palettes
ISPRS = ColorPalette(
    name="ISPRS",
    classes=("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
    colors=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
    ignore_colors=((0, 0, 0),),  # boundaries of the eroded (noBoundary) labels
)

SECOND = ColorPalette(
    name="SECOND",
    classes=("unchanged", "water", "ground", "low_vegetation", "tree", "building", "playground"),
    colors=((255, 255, 255), (0, 0, 255), (128, 128, 128), (0, 128, 0), (0, 255, 0), (128, 0, 0), (255, 0, 0)),
)

__all__ = ["ColorPalette", "ISPRS", "SECOND", "read_color_label"]
