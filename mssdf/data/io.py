"""Raster reading and validation shared by the preparation code and every reader.

Every failure raises :class:`DataError` naming the file (and what was expected), so a
bad input is reported before any long computation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


class DataError(ValueError):
    """A data file is missing, unreadable, or inconsistent with its partners."""


@dataclass(frozen=True)
class RasterInfo:
    """Georeferencing and shape of a raster (what partner files must agree on)."""

    path: Path
    count: int
    height: int
    width: int
    crs: str | None
    transform: tuple[float, ...] | None
    dtype: str
    nodata: float | None


def _open(path: str | Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        raise DataError(f"{path}: not a readable raster ({err})") from err


def raster_info(path: str | Path) -> RasterInfo:
    """Read only the header of ``path``."""
    with _open(path) as src:
        has_geo = src.crs is not None
        return RasterInfo(
            path=Path(path),
            count=src.count,
            height=src.height,
            width=src.width,
            crs=src.crs.to_string() if has_geo else None,
            transform=tuple(src.transform)[:6] if has_geo else None,
            dtype=src.dtypes[0],
            nodata=src.nodata,
        )


def read_raster(
    path: str | Path,
    bands: int | Sequence[int] | None = None,
    expected_bands: int | Sequence[int] | None = None,
    window=None,
    dtype: str | np.dtype = np.float32,
) -> np.ndarray:
    """Read a raster as a ``(C, H, W)`` array.

    Args:
        path: the file.
        bands: 1-based band indices to read (default: all).
        expected_bands: allowed band count(s) of the file; anything else raises.
        window: optional ``rasterio.windows.Window``.
        dtype: output dtype.

    Raises:
        DataError: missing, unreadable or truncated file, or a wrong band count.
    """
    from rasterio.errors import RasterioIOError

    with _open(path) as src:
        if expected_bands is not None:
            allowed = (expected_bands,) if isinstance(expected_bands, int) else tuple(expected_bands)
            if src.count not in allowed:
                raise DataError(f"{path}: has {src.count} band(s), expected {' or '.join(map(str, allowed))}")
        if isinstance(bands, int):
            bands = [bands]
        try:
            arr = src.read(indexes=list(bands) if bands is not None else None, window=window)
        except (RasterioIOError, ValueError) as err:
            raise DataError(f"{path}: could not read pixel data (truncated or corrupt?): {err}") from err
    return arr.astype(dtype, copy=False)


def check_aligned(infos: Sequence[RasterInfo], tol: float = 1e-6) -> None:
    """Raise :class:`DataError` unless all rasters share size, CRS and transform.

    Rasters without georeferencing are compared on size only.
    """
    ref = infos[0]
    for info in infos[1:]:
        if (info.height, info.width) != (ref.height, ref.width):
            raise DataError(
                f"{info.path}: size {info.height}x{info.width} differs from its partner "
                f"{ref.path} ({ref.height}x{ref.width})"
            )
        if info.crs is None or ref.crs is None:
            continue
        if info.crs != ref.crs:
            raise DataError(f"{info.path}: CRS {info.crs} differs from its partner {ref.path} ({ref.crs})")
        if not np.allclose(info.transform, ref.transform, rtol=0, atol=tol):
            raise DataError(
                f"{info.path}: transform {info.transform} differs from its partner {ref.path} ({ref.transform})"
            )


def read_colormap(path: str | Path, band: int = 1) -> np.ndarray | None:
    """The colour table of a palette band as a ``(256, 3)`` uint8 lookup table, or None.

    Used to expand palette-indexed label images (PNG/TIFF) into RGB colours.
    """
    with _open(path) as src:
        try:
            cmap = src.colormap(band)
        except ValueError:  # no colour table on this band
            return None
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in cmap.items():
        if 0 <= index < 256:
            lut[index] = rgba[:3]
    return lut
