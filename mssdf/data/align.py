"""Putting rasters of different resolutions on one common grid (Rotterdam pan <-> MS).

The common grid is the finer raster's grid coarsened by an integer factor
``k = round(res / fine_res)`` (k = 1 keeps the pan grid): same origin, cell ``k`` times
the fine cell, size ``floor(fine_size / k)``. The fine raster is block-averaged onto it
(exact for integer k), the coarse one is resampled (bilinear by default). The partners
must share the CRS and overlap by at least ``min_overlap`` of the grid's area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mssdf.data.io import DataError, RasterInfo, nodata_to_nan, raster_info, read_raster


@dataclass(frozen=True)
class TargetGrid:
    """A north-up grid in ``crs``: ``transform`` (affine), ``height`` x ``width``."""

    crs: str
    transform: tuple[float, ...]
    height: int
    width: int

    @property
    def affine(self):
        from rasterio.transform import Affine

        return Affine(*self.transform[:6])


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = info.transform
    return c, f + e * info.height, c + a * info.width, f  # left, bottom, right, top


def common_grid(fine: RasterInfo, coarse: RasterInfo, res: float, min_overlap: float = 0.9) -> tuple[TargetGrid, int]:
    """The common grid (see module docstring) and the integer factor ``k``.

    Raises:
        DataError: missing CRS, different CRSs, rotated transforms, ``res`` finer than the
            fine raster, or partners that do not overlap enough.
    """
    for info in (fine, coarse):
        if info.crs is None or info.transform is None:
            raise DataError(f"{info.path}: not georeferenced; cannot align it with its partner")
        if info.transform[1] != 0 or info.transform[3] != 0:
            raise DataError(f"{info.path}: rotated transform {info.transform} is not supported")
    if fine.crs != coarse.crs:
        raise DataError(f"{coarse.path}: CRS {coarse.crs} differs from its partner {fine.path} ({fine.crs})")
    fine_res = abs(fine.transform[0])
    k = max(1, int(round(res / fine_res)))
    if res < fine_res * 0.99:
        raise DataError(f"{fine.path}: requested {res} m is finer than the data ({fine_res:.4f} m)")
    a, _, c, _, e, f = fine.transform
    grid = TargetGrid(fine.crs, (a * k, 0.0, c, 0.0, e * k, f), fine.height // k, fine.width // k)
    gl, gb, gr, gt = c, f + e * k * grid.height, c + a * k * grid.width, f
    cl, cb, cr, ct = _bounds(coarse)
    inter = max(0.0, min(gr, cr) - max(gl, cl)) * max(0.0, min(gt, ct) - max(gb, cb))
    if inter < min_overlap * (gr - gl) * (gt - gb):
        raise DataError(
            f"{coarse.path}: covers only {inter / ((gr - gl) * (gt - gb)):.0%} of its partner {fine.path}'s "
            f"grid (need {min_overlap:.0%}); mismatched transform?"
        )
    return grid, k


def block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """(C, H//k, W//k) mean over k x k blocks of a (C, H, W) array (NaN propagates)."""
    if k == 1:
        return arr
    c, h, w = arr.shape
    h2, w2 = h // k, w // k
    return arr[:, : h2 * k, : w2 * k].reshape(c, h2, k, w2, k).mean(axis=(2, 4))


def resample_to(path: Path, grid: TargetGrid, resampling: str = "bilinear", expected_bands=None, nodata: float | None = None) -> np.ndarray:
    """Read ``path`` and resample it onto ``grid``: (C, grid.height, grid.width) float32, NaN outside/nodata.

    No data (:func:`mssdf.data.io.nodata_to_nan`): NaN, the header's nodata value, else ``nodata``.
    """
    from rasterio.warp import Resampling, reproject

    info = raster_info(path, expected_bands=expected_bands)
    src = nodata_to_nan(read_raster(path, dtype=np.dtype(info.dtype)), info.nodata, nodata).astype(np.float64)
    dst = np.full((src.shape[0], grid.height, grid.width), np.nan, np.float64)
    from rasterio.transform import Affine

    reproject(
        source=src,
        destination=dst,
        src_transform=Affine(*info.transform[:6]),
        src_crs=info.crs,
        src_nodata=np.nan,
        dst_transform=grid.affine,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=getattr(Resampling, resampling),
    )
    return dst.astype(np.float32)


def align_pair(
    fine_path: Path, coarse_path: Path, res: float, fine_bands: int, coarse_bands: int, zero_is_nodata: bool = True
) -> tuple[np.ndarray, np.ndarray, TargetGrid]:
    """Read a fine (e.g. pan) and a coarse (e.g. MS) raster onto their common grid.

    Returns:
        ``fine`` (Cf, H, W), ``coarse`` (Cc, H, W) float32 raw values with NaN where no
        data (:func:`mssdf.data.io.nodata_to_nan`: NaN, the header's nodata value, or, for
        files declaring none, 0 when ``zero_is_nodata``), and the grid.
    """
    fi, ci = raster_info(fine_path, expected_bands=fine_bands), raster_info(coarse_path, expected_bands=coarse_bands)
    grid, k = common_grid(fi, ci, res)
    fallback = 0.0 if zero_is_nodata else None
    fine = nodata_to_nan(read_raster(fine_path, dtype=np.dtype(fi.dtype)), fi.nodata, fallback)
    fine = block_mean(fine, k).astype(np.float32)
    coarse = resample_to(coarse_path, grid, "bilinear" if abs(ci.transform[0]) > abs(grid.transform[0]) * 1.01 else "average",
                         nodata=fallback)
    return fine, coarse, grid
