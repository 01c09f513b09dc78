"""Atomic writes of GeoTIFFs and fetched files (mssdf.atomic), deterministic bytes."""

from __future__ import annotations

import numpy as np
import pytest

from mssdf.data import fetch
from mssdf.data.io import read_raster
from mssdf.data.write import write_geotiff


def test_write_geotiff_atomic_and_deterministic(tmp_path):
    arr = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    p = write_geotiff(tmp_path / "a" / "x.tif", arr, band_names=["u", "v"])
    first = p.read_bytes()
    assert write_geotiff(p, arr, band_names=["u", "v"]).read_bytes() == first
    np.testing.assert_array_equal(read_raster(p), arr)
    assert sorted(q.name for q in p.parent.iterdir()) == ["x.tif"]  # no temporary left behind
    with pytest.raises(ValueError):
        write_geotiff(p, np.zeros((1, 1, 2, 2), np.float32))
    bad = np.zeros((1, 4, 4), dtype=object)  # rasterio refuses the dtype mid-write
    with pytest.raises(Exception):
        write_geotiff(p, bad)
    assert p.read_bytes() == first and sorted(q.name for q in p.parent.iterdir()) == ["x.tif"]


def test_fetch_write_is_atomic(tmp_path, monkeypatch):
    p = fetch._write(tmp_path / "d" / "f.bin", b"one")
    assert p.read_bytes() == b"one"
    import pathlib

    def boom(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        fetch._write(p, b"two")
    monkeypatch.undo()
    assert p.read_bytes() == b"one" and sorted(q.name for q in p.parent.iterdir()) == ["f.bin"]
