"""The NEON source (deepforest 2.1.0 airborne RGB) on fake files: area resampling, grids,
tiles of the RGB-only pre-training task, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from data_fakes import make_raw, small_sources
from mssdf.config import ConfigError, from_dict
from mssdf.data.index import read_index
from mssdf.data.io import DataError, raster_info, read_raster
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sources import NEON, block_mean


@pytest.fixture(scope="module")
def neon(tmp_path_factory):
    base = tmp_path_factory.mktemp("neon")
    raw = make_raw(base / "raw")
    cfg = from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(base / "out"), "sources": small_sources("neon")})
    return base / "out", prepare(cfg, log=None), raw


def test_block_mean_is_the_mean_of_each_block():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    out = block_mean(x, 2)
    assert out.shape == (2, 2, 3)
    assert out[1, 1, 2] == x[1, 2:4, 4:6].mean()


def test_scenes_are_the_raw_pixels_averaged_over_res_blocks(neon):
    out, _, raw = neon
    native = read_raster(raw / "deepforest/SOAP_061.png", expected_bands=3)  # 64 px at 0.1 m
    scene = read_raster(out / "scenes/neon/neon_soap_061/rgb.tif")  # res 0.2: 2x2 means
    assert scene.shape == (3, 32, 32)
    np.testing.assert_allclose(scene, native.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_georeferenced_scene_keeps_its_map_grid_and_pngs_have_none(neon):
    out, _, raw = neon
    src = raster_info(raw / "deepforest/OSBS_029.tif")
    osbs = raster_info(out / "scenes/neon/neon_osbs_029/rgb.tif")
    assert osbs.crs == src.crs and osbs.transform[0] == pytest.approx(0.2) and osbs.transform[2] == src.transform[2]
    assert raster_info(out / "scenes/neon/neon_soap_061/rgb.tif").crs is None


def test_rgb_only_pretraining_tiles_in_every_split(neon):
    out, summary, _ = neon
    rows = [r for r in read_index(out) if r["task"] == "pretrain_neon"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(set(r["files"]) == {"rgb"} and r["label_kind"] == "none" and r["res_m"] == 0.2 for r in rows)
    assert summary["config"]["sources"]["neon"] == {"res": 0.2, "tile": 16, "stride": 16, "block": 32}


def test_res_must_be_a_whole_multiple_of_the_native_pixels(neon, tmp_path):
    _, _, raw = neon  # refused when the config is built, before any file is read
    with pytest.raises(ConfigError, match=r"prepare\.sources\.neon\.res=0\.25: must be a whole multiple of the 0\.1 m"):
        from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(tmp_path / "o"),
                                  "sources": small_sources("neon", neon={"res": 0.25})}, "prepare")
    assert from_dict(PrepareConfig, {"sources": small_sources("neon", neon={"res": 0.3})}).sources["neon"].res == 0.3


def test_truncated_png_fails_before_any_work_naming_it(tmp_path):
    raw = make_raw(tmp_path / "raw")
    png = raw / "deepforest/SOAP_061.png"
    png.write_bytes(png.read_bytes()[:200])
    cfg = from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(tmp_path / "o"), "sources": small_sources("neon")})
    with pytest.raises(DataError, match="SOAP_061.png"):
        prepare(cfg, log=None)
    assert not (tmp_path / "o").exists()


def test_source_reads_the_four_images_the_fetch_extracts():
    from mssdf.data.fetch import ARCHIVES

    (archive,) = [a for a in ARCHIVES if a.source == "deepforest"]
    images = {f"deepforest/{rel}" for rel in archive.members.values() if rel.endswith((".tif", ".png"))}
    assert set(NEON.raw_files) == images and len(images) == 4
