"""No validation or test pixel reaches pre-training: tile footprints on the ground."""

from __future__ import annotations

import pytest

from data_fakes import SMALL, make_raw
from mssdf.config import from_dict
from mssdf.data.footprints import Footprint, leaks, overlapping_pairs, tile_footprints
from mssdf.data.index import read_index
from mssdf.data.io import DataError
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.tasks import TASKS


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("fp")
    raw = make_raw(base / "raw")
    prepare(from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(base / "out"), **SMALL}), log=None)
    return base / "out", read_index(base / "out")


def _fp(crs, bounds, scene="s", source="x", task="t", split="train"):
    return Footprint(task, split, source, scene, f"{scene}-{bounds}", crs, bounds)


def test_train_tiles_of_every_task_leak_nothing(prepared):
    root, index = prepared
    for task in TASKS:
        rows = [r for r in index if r["task"] == task and r["split"] == "train"]
        assert leaks(root, rows, index) == [], task


def test_reading_a_validation_area_is_found_whatever_the_task_is_called(prepared):
    root, index = prepared
    rows = [r for r in index if r["task"] == "pretrain_autzen" and r["split"] == "val"]  # a task without labels...
    found = leaks(root, rows, index)
    assert found and {e.task for _, e in found} >= {"height"}  # ...on the height task's validation ground
    assert all(p.scene == e.scene and e.split in ("val", "test") for p, e in found)


def test_footprints_are_the_windows_in_map_units(prepared):
    root, index = prepared
    row = next(r for r in index if r["task"] == "seg_buildings")
    (fp,) = tile_footprints(root, [row])
    west, south, east, north = fp.bounds
    assert fp.crs == "EPSG:32616" and east - west == pytest.approx(row["size"] * 0.5) and north - south == pytest.approx(row["size"] * 0.5)


def test_overlap_needs_positive_area_and_crosses_crs():
    a = _fp("EPSG:32616", (733600.0, 3725000.0, 733650.0, 3725050.0))
    touching = _fp("EPSG:32616", (733650.0, 3725000.0, 733700.0, 3725050.0))
    assert overlapping_pairs([a], [touching]) == []  # a shared edge is no shared pixel
    from rasterio.warp import transform_bounds

    same_in_degrees = _fp("EPSG:4326", tuple(transform_bounds("EPSG:32616", "EPSG:4326", *a.bounds)))
    assert overlapping_pairs([a], [same_in_degrees]) == [(a, same_in_degrees)]
    pixels = _fp(None, (0.0, -64.0, 64.0, 0.0), scene="p1")
    assert overlapping_pairs([pixels], [_fp(None, (10.0, -20.0, 30.0, -5.0), scene="p1")])  # same pixel grid
    assert overlapping_pairs([pixels], [_fp(None, (10.0, -20.0, 30.0, -5.0), scene="p2")]) == []  # another scene
    assert overlapping_pairs([pixels], [a]) == []


def test_pretraining_refuses_tiles_that_overlap_evaluation_areas(prepared):
    from mssdf.pretrain import build_config
    from mssdf.pretrain.data import check_data

    root, _ = prepared
    base = {"profile": "smoke", "data": {"root": str(root), "task": "pretrain_autzen", "crop": 16},
            "model": {"preset": "tiny", "img_size": 16, "patch_size": 8}, "batch_size": 2, "mask_group": 2}
    check_data(build_config(base))  # train tiles: fine
    with pytest.raises(DataError, match=r"data\.split: pre-training on the val tiles of 'pretrain_autzen' would read "
                                        r"validation/test areas.*overlaps height/val"):
        check_data(build_config({**base, "data": {**base["data"], "split": "val"}}))
