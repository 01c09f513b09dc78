"""Pan (0.5 m) <-> MS (1 m) alignment on a common grid and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from data_fakes import write_tif
from rasterio.transform import Affine

from mssdf.data.align import align_pair, block_mean
from mssdf.data.io import DataError


def _pair(tmp_path, ms_crs="EPSG:32631", ms_x0=500000.0, ms_bands=4):
    pan = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 1
    ms = np.stack([np.full((32, 32), 10.0 * (b + 1)) for b in range(ms_bands)])
    p = write_tif(tmp_path / "pan.tif", pan, "EPSG:32631", Affine(0.5, 0, 500000.0, 0, -0.5, 5700000.0))
    m = write_tif(tmp_path / "ms.tif", ms, ms_crs, Affine(1.0, 0, ms_x0, 0, -1.0, 5700000.0))
    return p, m, pan


def test_pan_grid_and_coarser_grid(tmp_path):
    p, m, pan = _pair(tmp_path)
    fine, coarse, grid = align_pair(p, m, 0.5, 1, 4)
    assert fine.shape == (1, 64, 64) and coarse.shape == (4, 64, 64)
    np.testing.assert_array_equal(fine[0], pan)
    np.testing.assert_allclose(coarse[:, 10, 10], [10, 20, 30, 40])
    fine1, coarse1, grid1 = align_pair(p, m, 1.0, 1, 4)
    assert fine1.shape == (1, 32, 32) and grid1.transform[0] == 1.0
    np.testing.assert_allclose(fine1, block_mean(pan[None].astype(np.float32), 2))


def test_mismatched_crs_transform_bands(tmp_path):
    p, m, _ = _pair(tmp_path, ms_crs="EPSG:32632")
    with pytest.raises(DataError, match="ms.tif: CRS EPSG:32632 differs"):
        align_pair(p, m, 0.5, 1, 4)
    p, m, _ = _pair(tmp_path, ms_x0=500100.0)
    with pytest.raises(DataError, match="ms.tif: covers only"):
        align_pair(p, m, 0.5, 1, 4)
    p, m, _ = _pair(tmp_path, ms_bands=3)
    with pytest.raises(DataError, match="ms.tif: has 3 band"):
        align_pair(p, m, 0.5, 1, 4)
