"""One no-data rule for every source (NaN, the header's value, else a declared fallback)."""

from __future__ import annotations

import numpy as np
import pytest
from data_fakes import SMALL, make_raw, small_sources, write_tif
from rasterio.transform import Affine

from mssdf.config import from_dict
from mssdf.data.align import align_pair
from mssdf.data.io import IGNORE_INDEX, nodata_to_nan, read_nan, read_raster
from mssdf.data.prepare import PrepareConfig, prepare

A_TF = Affine(0.5, 0, 733600.0, 0, -0.5, 3725100.0)
LV_TF = Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423)


def test_nodata_to_nan_rule():
    a = np.array([[0, 3, 7, 5]], np.uint16)
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(a, None)), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(a, 7.0)), [[0, 0, 1, 0]])
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(a, None, fallback=0)), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(a, 7.0, fallback=0)), [[0, 0, 1, 0]])  # the header wins
    f = np.array([np.nan, 0.1, 2.0], np.float32)
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(f, float("nan"))), [1, 0, 0])  # NaN is always no data
    np.testing.assert_array_equal(np.isnan(nodata_to_nan(f, 0.1)), [1, 1, 0])  # float32(0.1) matches 0.1
    assert nodata_to_nan(a, 7.0).dtype == np.float32 and a[0, 2] == 7  # a copy


def test_read_nan_uses_header(tmp_path):
    p = write_tif(tmp_path / "x.tif", np.array([[1.0, -9999.0], [np.nan, 4.0]], np.float32), "EPSG:32616", A_TF, nodata=-9999.0)
    np.testing.assert_array_equal(np.isnan(read_nan(p, expected_bands=1))[0], [[0, 1], [1, 0]])


def _prepare(raw, out, source):
    cfg = from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(out), **SMALL, "sources": small_sources(source), "max_nodata": 0.9})
    return prepare(cfg, log=None)


@pytest.fixture()
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


def test_atlanta_nan_nodata(raw, tmp_path):
    pan = np.random.default_rng(0).uniform(100, 3000, (96, 96)).astype(np.float32)
    pan[:, :20] = np.nan  # header nodata NaN: `pan != nodata` was always true here
    write_tif(raw / "solaris/sample_geotiff.tif", pan, "EPSG:32616", A_TF, nodata=float("nan"))
    out = tmp_path / "out"
    _prepare(raw, out, "atlanta")
    label = read_raster(out / "scenes/atlanta/atlanta/label.tif", dtype=np.uint8)[0]
    assert (label[:, :20] == IGNORE_INDEX).all() and (label[:, 20:] != IGNORE_INDEX).all()
    assert np.isnan(read_raster(out / "scenes/atlanta/atlanta/pan.tif")[0, :, :20]).all()


@pytest.mark.parametrize("nodata", [7, None])
def test_lasvegas_header_nodata_or_zero(raw, tmp_path, nodata):
    pan = np.random.default_rng(1).integers(10, 2047, (96, 96)).astype(np.uint16)
    pan[:30] = 7 if nodata is not None else 0  # declared value (was ignored: 0 hard-coded), or undeclared 0
    pan[60:, 60:] = 0 if nodata is not None else 5  # 0 is data when the header declares another value
    write_tif(raw / "solaris/road_mask_input.tif", pan, "EPSG:4326", LV_TF, nodata=nodata)
    out = tmp_path / "out"
    _prepare(raw, out, "lasvegas")
    label = read_raster(out / "scenes/lasvegas/lasvegas/label.tif", dtype=np.uint8)[0]
    assert (label[:30] == IGNORE_INDEX).all()
    assert (label[30:] != IGNORE_INDEX).all()


def test_align_pair_header_nodata(tmp_path):
    tf_p, tf_m = Affine(0.5, 0, 594000.0, 0, -0.5, 5747000.0), Affine(1.0, 0, 594000.0, 0, -1.0, 5747000.0)
    pan = np.full((32, 32), 500, np.uint16)
    pan[:, :8] = 9  # declared no data
    ms = np.full((4, 16, 16), 300.0, np.float32)
    ms[:, :, 12:] = np.nan
    p = write_tif(tmp_path / "pan.tif", pan, "EPSG:32631", tf_p, nodata=9)
    m = write_tif(tmp_path / "ms.tif", ms, "EPSG:32631", tf_m, nodata=float("nan"))
    fine, coarse, _ = align_pair(p, m, 0.5, 1, 4)
    assert np.isnan(fine[0, :, :8]).all() and np.isfinite(fine[0, :, 8:]).all()
    assert np.isnan(coarse[:, :, 26:]).all() and np.isfinite(coarse[:, :, :20]).all()
