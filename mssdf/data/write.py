"""Deterministic GeoTIFF writing (the counterpart of :mod:`mssdf.data.io`'s readers).

Files are written with DEFLATE compression, no timestamps and a fixed tiling, so the
same array gives the same bytes (DVC outputs stay stable).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mssdf.atomic import atomic_write


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs=None,
    transform=None,
    nodata: float | None = None,
    band_names: list[str] | None = None,
) -> Path:
    """Write ``array`` ((C, H, W) or (H, W)) as a GeoTIFF; CRS/transform kept if given.

    Float arrays get ``nodata=NaN`` unless another value is passed. The file is written
    atomically (:func:`mssdf.atomic.atomic_write`: a unique temporary file next to it, then
    renamed), so a reader never sees a half-written file and concurrent writers never
    share a temporary name.
    """
    import rasterio

    path = Path(path)
    arr = array[None] if array.ndim == 2 else array
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a (C, H, W) or (H, W) array, got shape {array.shape}")
    if nodata is None and np.issubdtype(arr.dtype, np.floating):
        nodata = float("nan")
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "compress": "deflate",
        "predictor": 3 if np.issubdtype(arr.dtype, np.floating) else 2,
        "interleave": "pixel" if arr.shape[0] > 1 else "band",
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    from rasterio.errors import NotGeoreferencedWarning

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr)
                if band_names:
                    for i, name in enumerate(band_names, 1):
                        dst.set_band_description(i, name)

    return atomic_write(path, write)
