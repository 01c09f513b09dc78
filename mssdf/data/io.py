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


#: Label value that losses and metrics ignore (no data, unlabelled, padding), in every
#: label this package writes or returns (prepared tiles and all readers).
IGNORE_INDEX = 255


class DataError(ValueError):
    """A data file is missing, unreadable, or inconsistent with its partners."""


def check_band_count(path: str | Path, count: int, expected: int | Sequence[int] | None) -> None:
    """Raise :class:`DataError` ("<path>: has N band(s), expected M [or K]") unless ``count`` is allowed.

    The one place this check lives: :func:`raster_info`/:func:`read_raster` (``expected_bands``)
    and the readers' Pillow path call it.
    """
    if expected is None:
        return
    allowed = (expected,) if isinstance(expected, (int, np.integer)) else tuple(expected)
    if count not in allowed:
        raise DataError(f"{path}: has {count} band(s), expected {' or '.join(map(str, allowed))}")


def nodata_to_nan(arr: np.ndarray, nodata: float | None, fallback: float | None = None) -> np.ndarray:
    """Float32 copy of ``arr`` with every no-data pixel set to NaN.

    No data is: NaN (always), the header's ``nodata`` value when the header declares one
    (a NaN ``nodata`` adds nothing), else ``fallback`` (the value a source is known to use
    without declaring it, e.g. 0 outside the SpaceNet images). The single rule every
    source of :mod:`mssdf.data.prepare` and every reader applies.
    """
    out = arr.astype(np.float32, copy=True)
    value = nodata if nodata is not None else fallback
    if value is not None and not np.isnan(value):
        if np.issubdtype(arr.dtype, np.floating):
            value = np.asarray(value, dtype=np.float64).astype(arr.dtype)  # a float32 raster stores float32(nodata)
        out[arr == value] = np.nan
    return out


def read_nan(
    path: str | Path,
    expected_bands: int | Sequence[int] | None = None,
    fallback_nodata: float | None = None,
    window=None,
) -> np.ndarray:
    """:func:`read_raster` as float32 with no data as NaN (see :func:`nodata_to_nan`)."""
    info = raster_info(path)
    arr = read_raster(path, expected_bands=expected_bands, window=window, dtype=np.dtype(info.dtype))
    return nodata_to_nan(arr, info.nodata, fallback_nodata)


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


def raster_info(path: str | Path, expected_bands: int | Sequence[int] | None = None) -> RasterInfo:
    """Read only the header of ``path`` (and check its band count if ``expected_bands``)."""
    with _open(path) as src:
        check_band_count(path, src.count, expected_bands)
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
        check_band_count(path, src.count, expected_bands)
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


def bounds(info: RasterInfo) -> tuple[float, float, float, float] | None:
    """``(left, bottom, right, top)`` of a georeferenced raster (None without georeferencing)."""
    if info.transform is None:
        return None
    a, b, c, d, e, f = info.transform[:6]
    xs = (c, c + a * info.width, c + b * info.height, c + a * info.width + b * info.height)
    ys = (f, f + d * info.width, f + e * info.height, f + d * info.width + e * info.height)
    return min(xs), min(ys), max(xs), max(ys)


def check_same_extent(ref: RasterInfo, other: RasterInfo, tol_px: float = 0.5) -> None:
    """Raise :class:`DataError` naming ``other`` unless it covers ``ref``'s area in ``ref``'s
    CRS (bounds within ``tol_px`` of the coarser pixel); grids may differ (resampling).

    Rasters without georeferencing are not compared (as in :func:`check_aligned`).
    """
    if ref.crs is None or other.crs is None:
        return
    if other.crs != ref.crs:
        raise DataError(f"{other.path}: CRS {other.crs} differs from its partner {ref.path} ({ref.crs})")
    rb, ob = bounds(ref), bounds(other)
    tol = tol_px * max(abs(ref.transform[0]), abs(other.transform[0]), abs(ref.transform[4]), abs(other.transform[4]))
    if not np.allclose(rb, ob, rtol=0, atol=tol):
        raise DataError(f"{other.path}: bounds {tuple(round(v, 3) for v in ob)} differ from its partner {ref.path}'s "
                        f"{tuple(round(v, 3) for v in rb)} (tolerance {tol:g}); mismatched transform?")


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
