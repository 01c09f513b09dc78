"""Lidar rasterisation on fake LAS/LAZ files: units, DSM/DTM/nDSM, holes, no data, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from data_fakes import AUTZEN_BUILDING, AUTZEN_ORIGIN, FT, make_autzen, make_ign, write_las

from mssdf.data.io import DataError
from mssdf.data.lidar import metric_crs, rasterise, read_las


@pytest.fixture(scope="module")
def autzen(tmp_path_factory):
    path = make_autzen(tmp_path_factory.mktemp("las") / "autzen.laz")
    return read_las(path), rasterise(read_las(path), res=1.0, max_hole_px=4)


def test_feet_crs_detected_and_converted_to_metres(autzen):
    pc, r = autzen
    assert pc.unit_factor == pytest.approx(FT) and pc.vertical_factor == pytest.approx(FT)
    assert not pc.native_units and pc.crs.linear_units_factor[1] == 1.0
    # coordinates back in metres (the file stores feet)
    assert pc.x.min() == pytest.approx(AUTZEN_ORIGIN[0] + 0.25, abs=0.01)
    assert pc.z.min() == pytest.approx(100.025, abs=0.01)
    assert r.grid.cell == 1.0 and r.grid.x0 == AUTZEN_ORIGIN[0]


def test_metric_crs_is_the_same_projection():
    from rasterio.crs import CRS
    from rasterio.warp import transform

    feet = CRS.from_epsg(2994)
    metric = metric_crs(feet, FT)
    lon_a, lat_a = transform(feet, "EPSG:4326", [1.3e6], [8.5e5])
    lon_b, lat_b = transform(metric, "EPSG:4326", [1.3e6 * FT], [8.5e5 * FT])
    assert lon_a[0] == pytest.approx(lon_b[0], abs=1e-9) and lat_a[0] == pytest.approx(lat_b[0], abs=1e-9)


def test_dsm_dtm_ndsm_values(autzen):
    _, r = autzen
    h, w = r.dsm.shape[1:]
    bx0, bx1, by0, by1 = AUTZEN_BUILDING
    rows = slice(h - int(by1) + 1, h - int(by0) - 1)  # inside the roof, away from its edge
    cols = slice(int(bx0) + 1, int(bx1) - 1)
    x_centres = np.arange(w) + 0.75  # highest point of each 1 m cell is the one at +0.75 m
    ground = 100.0 + 0.1 * x_centres
    np.testing.assert_allclose(r.ndsm[0, rows, cols], 10.0, atol=0.06)  # interpolated DTM under the roof
    np.testing.assert_allclose(r.dsm[0, rows, cols], np.broadcast_to(ground[cols] + 10.0, (4, 4)), atol=0.01)
    np.testing.assert_allclose(r.dtm[0, 2, :20], 100.0 + 0.1 * (np.arange(20) + 0.5), atol=0.01)  # mean of ground pts
    assert np.nanmin(r.ndsm) >= 0.0
    assert (r.cls[rows, cols] == 1).all() and (r.cls[2, :5] == 2).all()
    assert r.rgb.dtype == np.float32 and np.nanmax(r.rgb) <= 255


def test_small_hole_filled_large_gap_is_nodata(autzen):
    _, r = autzen
    assert r.info["holes_filled"] == 4  # the 2 x 2 m hole
    h = r.dsm.shape[1]
    gap = r.dsm[0, h - 25 : h - 19, 26:]  # inside the 8 x 24 m empty area
    assert np.isnan(gap).all() and np.isnan(r.ndsm[0, h - 25 : h - 19, 26:]).all()
    assert np.isnan(r.rgb[:, h - 25 : h - 19, 26:]).all()
    assert (r.cls[h - 25 : h - 19, 26:] == 0).all()


def test_ign_like_rgb16_and_nir(tmp_path):
    pc = read_las(make_ign(tmp_path / "ign.las"))
    assert pc.rgb_scale == 256.0 and pc.nir is not None
    r = rasterise(pc, res=0.5, min_density=1.0)
    assert r.nir.shape == r.dsm.shape and np.nanmax(r.nir) == pytest.approx(50000)
    assert set(np.unique(r.cls)) <= {0, 2, 5, 6}


def test_bad_lidar_files(tmp_path):
    good = make_autzen(tmp_path / "a.laz")
    truncated = tmp_path / "t.laz"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(DataError, match="t.laz"):
        read_las(truncated)
    with pytest.raises(DataError, match="not found"):
        read_las(tmp_path / "missing.laz")
    x = np.array([1.0, 2.0, 3.0])
    nocrs = write_las(tmp_path / "nocrs.las", x, x, x, [2, 2, 2], np.zeros((3, 3)))
    with pytest.raises(DataError, match="no coordinate reference system"):
        read_las(nocrs)
    noground = write_las(tmp_path / "ng.las", x * 100, x * 100, x, [1, 1, 1], np.zeros((3, 3)),
                         wkt=__import__("rasterio").crs.CRS.from_epsg(2154).to_wkt())
    with pytest.raises(DataError, match="no ground points"):
        rasterise(read_las(noground), 1.0)
