"""Preparation on the real fetched sample (data/raw), if it is there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mssdf.data.fetch import check_manifest
from mssdf.data.index import read_index
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sample import SampleTiles
from mssdf.data.sources import SourceSettings
from mssdf.data.tasks import TASKS
from mssdf.data.tiling import split_overlaps
from mssdf.paths import resolve

RAW = resolve("data/raw")


@pytest.mark.slow
@pytest.mark.skipif(not (RAW / "MANIFEST.json").is_file(), reason="data/raw not fetched: run `make setup` or `python -m mssdf.data.fetch --out data/raw`")
def test_prepare_real_sample(tmp_path):
    assert check_manifest(RAW) == [], "data/raw differs from its manifest: re-run the fetch"
    sources = {"autzen": SourceSettings(stride=32), "ign": SourceSettings(stride=16), "rotterdam": SourceSettings(),
               "atlanta": SourceSettings(), "lasvegas": SourceSettings(tile=128, stride=128, block=256),
               "neon": SourceSettings()}
    cfg = PrepareConfig(raw_dir=str(RAW), out_dir=str(tmp_path / "prepared"), sources=sources, build_cache=True)
    summary = prepare(cfg, log=None)
    out = tmp_path / "prepared"
    rows = read_index(out)
    assert {r["task"] for r in rows} == set(TASKS)
    for task in ("pretrain_rotterdam", "pretrain_neon", "seg_buildings", "seg_roads", "change", "detection", "detection_trees",
                 "scene"):
        assert all(summary["rows_per_task"][task][s] > 0 for s in ("train", "val", "test")), task
    # Autzen heights are metres (the file is in feet): roofs/trees of a few to ~30 m, DSM ~ 120-160 m
    stats = json.loads((out / "stats.json").read_text())
    assert 110 < stats["autzen"]["dsm"]["mean"][0] < 170
    h = SampleTiles(out, "height", "train")[0]["height"]
    assert float(np.nanmax(h.numpy())) < 40
    for scene in {r["scene"] for r in rows}:
        rs = {(r["row"], r["col"], r["split"], r["size"]) for r in rows if r["scene"] == scene}
        wins = np.array([[a, b] for a, b, _, _ in rs])
        sp = np.array([("train", "val", "test").index(s) for _, _, s, _ in rs])
        size = next(iter(rs))[3]
        assert split_overlaps(wins, sp, size, (int(wins[:, 0].max()) + size, int(wins[:, 1].max()) + size)) == 0
    assert summary["scene_notes"]["atlanta"]["footprints"] == 43
    crowns = [n["tree_boxes"] for name, n in summary["scene_notes"].items() if name.startswith("neon_")]
    assert len(crowns) == 4  # the 951 boxes of the four XMLs: Tree and Alive -> tree, Dead -> dead tree
    assert {c: sum(n[c] for n in crowns) for c in TASKS["detection_trees"].classes} == {"tree": 923, "dead tree": 28}
    from mssdf.data.footprints import leaks

    for task in (t for t in TASKS if t.startswith("pretrain_")):  # on the ground: no pre-training tile meets val/test
        assert leaks(out, [r for r in rows if r["task"] == task and r["split"] == "train"], rows) == [], task
