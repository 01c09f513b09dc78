"""End-to-end preparation on a fake data/raw, every bad-input case, and the sample datasets."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from data_fakes import SMALL, make_raw, small_sources, write_tif
from rasterio.transform import Affine

from mssdf.config import ConfigError, from_dict, replace, to_dict
from mssdf.data.io import DataError, read_raster
from mssdf.data.index import read_index
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sample import SampleTiles, load_stats
from mssdf.data.sources import SOURCES, SourceSettings
from mssdf.data.stats import band_stats
from mssdf.data.tasks import TASKS
from mssdf.data.tiling import split_overlaps


def _cfg(raw, out, **kw):
    return from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(out), **SMALL, **kw})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    raw = make_raw(base / "raw")
    summary = prepare(_cfg(raw, base / "out"), log=None)
    return base / "out", summary, raw


def test_outputs_and_index(prepared):
    out, summary, _ = prepared
    for name in ("index.csv", "stats.json", "tasks.json", "summary.json", "README.md", "LICENSE.md"):
        assert (out / name).is_file()
    rows = read_index(out)
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        for rel in r["files"].values():
            assert (out / rel).is_file()
    tif = out / rows[0]["files"][TASKS[rows[0]["task"]].inputs[0]]
    from mssdf.data.io import raster_info

    assert raster_info(tif).crs is not None  # georeferencing kept


def test_synthetic_and_derived_marked(prepared):
    out, summary, _ = prepared
    rows = read_index(out)
    kinds = {r["task"]: (r["label_kind"], r["synthetic"], r["derived"]) for r in rows}
    assert kinds["change"] == ("synthetic", 1, 0)
    assert kinds["scene"] == ("derived", 0, 1) and kinds["scene_asprs"] == ("derived", 0, 1)
    assert kinds["seg_roads"] == ("real", 0, 0)
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks["change"]["synthetic"] and tasks["scene"]["derived"]
    assert "SYNTHETIC" in (out / "README.md").read_text()


def _change_pairs(out):
    """(tile, before, after, mask) of every change row of a prepared folder, in index order."""
    rows = [r for r in read_index(out) if r["task"] == "change"]
    return [(r["tile"], read_raster(out / r["files"]["pan"])[0], read_raster(out / r["files"]["pan_t2"])[0],
             read_raster(out / r["files"]["label"], dtype=np.uint8)[0]) for r in rows]


def test_change_pairs_carry_acquisition_differences(prepared, tmp_path):
    out, summary, raw = prepared
    pairs = _change_pairs(out)
    assert pairs and sum(int((m == 1).sum()) for *_, m in pairs) > 0
    for tile, before, after, mask in pairs:
        keep = (mask == 0) & np.isfinite(before)
        assert (after[keep] != before[keep]).mean() > 0.99, tile  # the after-image differs everywhere
        np.testing.assert_array_equal(np.isnan(after), np.isnan(before))
        notes = json.loads((out / "tiles" / "atlanta" / f"{tile}.change.json").read_text())
        assert set(notes) == {"edits", "acquisition"} and "gain" in notes["acquisition"]
    assert summary["config"]["change_shift"]["enabled"] is True
    # the two streams of the tile's seed: the edit from ``seed`` (as before the shift existed),
    # the acquisition differences from ``[seed, 1]``
    from mssdf.data import labels as L
    from mssdf.data.sources import load_scenes
    from mssdf.data.tiling import crop_padded

    cfg = _cfg(raw, out)
    (sc,) = load_scenes({"atlanta": cfg.sources["atlanta"]}, raw, max_hole_px=cfg.max_hole_px)["atlanta"]
    size = cfg.sources["atlanta"].tile
    for r in (r for r in read_index(out) if r["task"] == "change"):
        pan = crop_padded(sc.arrays["pan"], r["row"], r["col"], size, np.nan)
        inst = crop_padded(sc.instances, r["row"], r["col"], size, 0)
        seed = cfg.seed * 1_000_003 + r["row"] * 10_007 + r["col"]
        t2, mask, recs = L.synthetic_change(np.nan_to_num(pan, nan=0.0), inst, np.random.default_rng(seed),
                                            n_changes=cfg.change_per_tile, max_shift=size // 3, min_pixels=cfg.min_box_pixels)
        t2, rec = L.acquisition_shift(np.where(np.isnan(pan), np.nan, t2), np.random.default_rng([seed, 1]), cfg.change_shift)
        label = read_raster(out / r["files"]["label"], dtype=np.uint8)[0]
        np.testing.assert_array_equal(label, np.where(np.isnan(pan[0]), 255, mask))
        np.testing.assert_array_equal(read_raster(out / r["files"]["pan_t2"]), t2)
        notes = json.loads((out / "tiles" / "atlanta" / f"{r['tile']}.change.json").read_text())
        assert notes == json.loads(json.dumps({"edits": recs, "acquisition": rec}))
    assert "acquisition" in (out / "README.md").read_text() and "acquisition" in TASKS["change"].description
    # the shift off: the same tiles, the same masks, and after == before outside the mask again
    off = tmp_path / "off"
    prepare(_cfg(raw, off, sources=small_sources("atlanta"), change_shift={"enabled": False}), log=None)
    pairs_off = _change_pairs(off)
    assert [t for t, *_ in pairs_off] == [t for t, *_ in pairs]
    for (tile, before, after, mask), (_, before0, after0, mask0) in zip(pairs, pairs_off):
        np.testing.assert_array_equal(mask0, mask)  # the edit draws did not move
        np.testing.assert_array_equal(before0, before)
        keep = (mask0 == 0) & np.isfinite(before0)
        np.testing.assert_array_equal(after0[keep], before0[keep])
        assert not np.array_equal(np.nan_to_num(after0), np.nan_to_num(after)), tile


def test_no_pixel_in_two_splits(prepared):
    out, _, _ = prepared
    rows = read_index(out)
    for scene in {r["scene"] for r in rows}:
        rs = [r for r in rows if r["scene"] == scene and r["task"] == rows[0]["task"]] or [r for r in rows if r["scene"] == scene]
        rs = {(r["row"], r["col"], r["split"], r["size"]) for r in rows if r["scene"] == scene}
        wins = np.array([[a, b] for a, b, _, _ in rs])
        splits = np.array([["train", "val", "test"].index(s) for _, _, s, _ in rs])
        size = next(iter(rs))[3]
        assert split_overlaps(wins, splits, size, (wins[:, 0].max() + size, wins[:, 1].max() + size)) == 0


def test_stats_from_train_tiles_only(prepared):
    out, _, _ = prepared
    stats = json.loads((out / "stats.json").read_text())
    rows = [r for r in read_index(out) if r["task"] == "pretrain_rotterdam"]
    train = [read_raster(out / r["files"]["ms"]) for r in rows if r["split"] == "train"]
    everything = [read_raster(out / r["files"]["ms"]) for r in rows]
    expect = band_stats(train)
    np.testing.assert_allclose(stats["rotterdam"]["ms"]["mean"], expect["mean"], rtol=1e-9)
    assert not np.allclose(stats["rotterdam"]["ms"]["mean"], band_stats(everything)["mean"], rtol=1e-9)
    assert stats["rotterdam"]["ms"]["bands"] == ["blue", "green", "red", "nir"]


def test_heights_in_metres_and_targets(prepared):
    out, _, _ = prepared
    ds = SampleTiles(out, "height", "train")
    s = ds[0]
    assert s["rgb"].shape[0] == 3 and s["height"].dtype == torch.float32
    h = torch.cat([ds[i]["height"].flatten() for i in range(len(ds))])
    assert 9.5 < float(h[torch.isfinite(h)].max()) < 10.5  # the 10 m building, not 32.8 "feet"
    stats = load_stats(out, "pretrain_autzen")
    assert 95 < stats["dsm"]["mean"][0] < 115


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sample_backends_agree(prepared, task):
    out, _, _ = prepared
    for split in ("train", "val", "test"):
        a, b = SampleTiles(out, task, split, backend="npy"), SampleTiles(out, task, split, backend="tif")
        assert len(a) == len(b)
        for i in range(min(len(a), 2)):
            sa, sb = a[i], b[i]
            assert sa.keys() == sb.keys()
            for k in sa:
                if k != "meta":
                    assert torch.equal(torch.nan_to_num(sa[k], nan=-1.0), torch.nan_to_num(sb[k], nan=-1.0)), (task, k)
            spec = TASKS[task]
            for m in spec.inputs:
                assert sa[m].dtype == torch.float32 and sa[m].ndim == 3 and torch.isfinite(sa[m]).all()
            if "label" in spec.targets:
                assert sa["label"].dtype == torch.int64
            if "boxes" in spec.targets:
                assert sa["boxes"].shape[-1] == 4
            assert sa["meta"]["label_kind"] == spec.label_kind


def test_random_crop_and_loader(prepared):
    out, _, _ = prepared
    ds = SampleTiles(out, "pretrain_rotterdam", "train", crop=8, random_crop=True, seed=1)
    s = ds[0]
    assert s["pan"].shape == (1, 8, 8) and s["ms"].shape == (4, 8, 8)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["pan"].shape == (4, 1, 8, 8)
    det = SampleTiles(out, "detection", "train")
    b = next(iter(torch.utils.data.DataLoader(det, batch_size=2, collate_fn=det.collate_fn())))
    assert isinstance(b["boxes"], list)
    with pytest.raises(DataError, match="unknown task"):
        SampleTiles(out, "nope", "train")


def test_nodata_inputs_filled_and_flagged(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(_cfg(raw, out, sources=small_sources("rotterdam", rotterdam={"stride": 4}), max_nodata=0.5, val_fraction=0.0, test_fraction=0.0), log=None)
    ds = SampleTiles(out, "pretrain_rotterdam", "train")
    flagged = [i for i in range(len(ds)) if not bool(ds[i]["valid"].all())]
    assert flagged, "the fake has a no-data border in scene 2"
    s = ds[flagged[0]]
    assert torch.isfinite(s["pan"]).all()
    raw = SampleTiles(out, "pretrain_rotterdam", "train", fill_nodata=False)[flagged[0]]
    assert torch.isnan(raw["pan"]).any()


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def raw(tmp_path):
    return make_raw(tmp_path / "raw")


def _fails(raw, tmp_path, match, **kw):
    with pytest.raises(DataError, match=match):
        prepare(_cfg(raw, tmp_path / "out", **kw), log=None)
    assert not (tmp_path / "out").exists()


def test_missing_partner_file(raw, tmp_path):
    (raw / "solaris/preproc_tutorial/ms2.tif").unlink()
    _fails(raw, tmp_path, r"ms2\.tif: file not found \(needed with .*pan2\.tif")


def test_truncated_raster(raw, tmp_path):
    p = raw / "solaris/road_mask_input.tif"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    _fails(raw, tmp_path, r"road_mask_input\.tif")


def test_wrong_band_count(raw, tmp_path):
    write_tif(raw / "solaris/preproc_tutorial/ms1.tif", np.ones((3, 32, 32)), "EPSG:32631",
              Affine(1.0, 0, 594000.0, 0, -1.0, 5747000.0))
    _fails(raw, tmp_path, r"ms1\.tif: has 3 band\(s\), expected 4")


def test_mismatched_size_crs_transform(raw, tmp_path):
    p = raw / "solaris/sample_road_raster_mask.tif"
    write_tif(p, np.zeros((90, 96), np.uint8), "EPSG:4326", Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423))
    _fails(raw, tmp_path, r"sample_road_raster_mask\.tif: size 90x96 differs")
    write_tif(p, np.zeros((96, 96), np.uint8), "EPSG:32611", Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423))
    _fails(raw, tmp_path, r"sample_road_raster_mask\.tif: CRS EPSG:32611 differs")
    write_tif(p, np.zeros((96, 96), np.uint8), "EPSG:4326", Affine(2.7e-6, 0, -115.2, 0, -2.7e-6, 36.1423))
    _fails(raw, tmp_path, r"sample_road_raster_mask\.tif: transform .* differs")


def test_unknown_label_value(raw, tmp_path):
    p = raw / "solaris/sample_road_raster_mask.tif"
    mask = read_raster(p, dtype=np.uint8)
    mask[0, 0, :5] = 128
    write_tif(p, mask, "EPSG:4326", Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423))
    _fails(raw, tmp_path, r"sample_road_raster_mask\.tif: unknown label value\(s\) \[128\]")


def test_all_nodata_scene(raw, tmp_path):
    p = raw / "solaris/sample_geotiff.tif"
    write_tif(p, np.zeros((96, 96), np.uint16), "EPSG:32616", Affine(0.5, 0, 733600.0, 0, -0.5, 3725100.0), nodata=0)
    _fails(raw, tmp_path, r"sample_geotiff\.tif: every pixel is no data", sources=small_sources("atlanta"))


def test_nodata_heavy_tiles_rejected_and_counted(raw, tmp_path):
    s = prepare(_cfg(raw, tmp_path / "out", sources=small_sources("autzen")), log=None)
    c = s["tiles_per_source"]["autzen"]
    assert c["rejected_nodata"] > 0  # tiles over the no-data gap (NaN heights) are skipped, and counted
    assert c["windows"] == c["rejected_nodata"] + c["dropped_block_border"] + c["train"] + c["val"] + c["test"]
    for r in read_index(tmp_path / "out"):
        assert r["nodata_frac"] <= 0.3


def test_failure_keeps_existing_output(raw, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(raw, out, sources=small_sources("lasvegas")), log=None)
    before = (out / "index.csv").read_bytes()
    (raw / "laspy/autzen_trim.laz").write_bytes(b"LASF broken")
    with pytest.raises(DataError, match="autzen_trim.laz"):
        prepare(_cfg(raw, out), log=None)
    assert (out / "index.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_unknown_config_key_fails():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PrepareConfig, {"tile_sise": 3})
    with pytest.raises(ConfigError, match=r"prepare\.sources: expected a mapping"):
        from_dict(PrepareConfig, {"sources": "autzen,ign"}, "prepare")  # the former comma-separated form
    with pytest.raises(ConfigError, match=r"unknown key\(s\) prepare\.sources\.ign\.tiles"):
        from_dict(PrepareConfig, {"sources": {"ign": {"tiles": 32}}}, "prepare")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) prepare\.change_shift\.gains "):
        from_dict(PrepareConfig, {"change_shift": {"gains": [0.9, 1.1]}}, "prepare")
    with pytest.raises(ConfigError, match=r"^prepare\.change_shift\.blur_sigma: "):
        from_dict(PrepareConfig, {"change_shift": {"blur_sigma": [0.8, 0.0]}}, "prepare")


# ----------------------------------------------------------------------------- per-source settings
def test_unknown_source_lists_the_valid_ones():
    valid = ", ".join(SOURCES)
    with pytest.raises(ConfigError, match=rf"prepare\.sources: unknown source\(s\) mars; valid sources: {valid}$"):
        from_dict(PrepareConfig, {"sources": {"autzen": {}, "mars": {"tile": 64}}}, "prepare")
    with pytest.raises(ConfigError, match=rf"prepare\.sources: no source selected; valid sources: {valid}$"):
        from_dict(PrepareConfig, {"sources": {}}, "prepare")


@pytest.mark.parametrize("source, key", [("atlanta", "res"), ("lasvegas", "res"), ("rotterdam", "min_density"),
                                         ("autzen", "min_density")])
def test_key_a_source_does_not_accept(source, key):
    accepts = ", ".join(SOURCES[source].accepts)
    with pytest.raises(ConfigError, match=rf"^prepare\.sources\.{source}\.{key}: not a setting of source '{source}' "
                                          rf"\(it accepts {accepts}\)$"):
        from_dict(PrepareConfig, {"sources": {"ign": {}, source: {"tile": 64, key: 1.0}}}, "prepare")


@pytest.mark.parametrize("block, match", [
    ({"autzen": {"tile": 4}}, r"prepare\.sources\.autzen\.tile=4, prepare\.sources\.autzen\.stride=16: need tile >= 8"),
    ({"ign": {"stride": 40}}, r"prepare\.sources\.ign\.tile=32, prepare\.sources\.ign\.stride=40: need"),
    ({"lasvegas": {"block": 32}}, r"prepare\.sources\.lasvegas\.block=32 must be at least prepare\.sources\.lasvegas\.tile=64"),
    ({"rotterdam": {"res": 0.0}}, r"prepare\.sources\.rotterdam\.res=0\.0 must be positive"),
    ({"atlanta": {"tile": "big"}}, r"prepare\.sources\.atlanta\.tile: expected an integer"),
])
def test_bad_source_settings_name_their_key(block, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(PrepareConfig, {"sources": block}, "prepare")


def test_source_defaults_filled_and_order_kept():
    cfg = from_dict(PrepareConfig, {"sources": {"lasvegas": {"tile": 128, "block": 256}, "ign": {"stride": 4}}}, "prepare")
    assert list(cfg.sources) == ["lasvegas", "ign"] == cfg.source_list
    assert cfg.sources["lasvegas"] == SourceSettings(tile=128, stride=64, block=256)
    assert cfg.sources["ign"] == SourceSettings(tile=32, stride=4, block=32, res=0.5, min_density=2.0)
    assert from_dict(PrepareConfig, to_dict(cfg), "prepare") == cfg  # the resolved form builds again, unchanged
    assert replace(cfg, seed=3).sources == cfg.sources
    default = PrepareConfig()  # every source, each with its defaults
    assert list(default.sources) == list(SOURCES)
    assert all(default.sources[n] == s.defaults for n, s in SOURCES.items())
    assert default.sources["autzen"] == SourceSettings(res=1.0, tile=64, stride=16, block=96)
    assert default.sources["atlanta"] == SourceSettings(tile=64, stride=64, block=128)  # native grid: no res


def test_summary_holds_resolved_source_settings(prepared):
    out, summary, raw = prepared
    on_disk = json.loads((out / "summary.json").read_text())["config"]["sources"]
    assert on_disk == summary["config"]["sources"]  # (summary.json sorts its keys)
    assert list(summary["config"]["sources"]) == list(SMALL["sources"])
    # the SMALL ign block sets no res: the source's default is filled in
    assert on_disk["ign"] == {"tile": 16, "stride": 8, "block": 16, "res": 0.5, "min_density": 1.0}
    # only the keys a source accepts: no null for a setting it does not take
    assert on_disk["autzen"] == {"tile": 16, "stride": 8, "block": 16, "res": 1.0}
    assert on_disk["atlanta"] == {"tile": 32, "stride": 16, "block": 32}
    for name, block in on_disk.items():
        assert set(block) == set(SOURCES[name].accepts), name
        assert None not in block.values(), name
    assert "null" not in json.dumps(on_disk)
    # the written config builds the same config again
    config = json.loads((out / "summary.json").read_text())["config"]
    assert from_dict(PrepareConfig, config, "prepare") == _cfg(raw, out)
    assert {r["res_m"] for r in read_index(out) if r["source"] == "ign"} == {0.5}


def test_register_refuses_bad_source_blocks():
    from mssdf.data import sources as S

    before = dict(S.SOURCES)
    with pytest.raises(ValueError, match="'autzen' is declared twice"):
        S._register(S.SOURCES["autzen"])
    no_window = S.Source("nowin", (), SourceSettings(tile=16), {}, S.SOURCES["lasvegas"].load)
    with pytest.raises(ValueError, match="'nowin'.*block, stride"):
        S._register(no_window)
    assert S.SOURCES == before


def test_sources_module_does_not_use_prepare():
    """Loaders get what they need (max_hole_px) as arguments, not the PrepareConfig."""
    import ast
    import inspect

    from mssdf.data import sources as S

    tree = ast.parse(inspect.getsource(S))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("mssdf.data.prepare")}
    assert "PrepareConfig" not in inspect.getsource(S)


def test_extra_files_follow_the_source_blocks():
    from mssdf.data import tasks as T

    assert T.EXTRA_FILES == {n: ("dsm", "ndsm") for n, s in SOURCES.items() if "ndsm" in s.bands}
    assert set(T.EXTRA_FILES) == {"autzen", "ign"}


# ----------------------------------------------------------------------------- random crops
def _offsets(samples):
    return [(int(s["meta"]["row"]), int(s["meta"]["col"])) for s in samples]


def test_random_crops_differ_between_workers_and_repeat(prepared):
    out, _, _ = prepared
    ds = SampleTiles(out, "pretrain_autzen", "train", crop=8, random_crop=True, seed=3)
    assert len(ds) >= 4
    n = min(len(ds), 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=None, num_workers=2)
    got = _offsets(loader)
    # worker 0 loads sample 0 and worker 1 sample 1 first: a copied generator gave both the same crop
    tiles = [(r["row"], r["col"]) for r in ds.rows[:n]]
    rel = [(a - r, b - c) for (a, b), (r, c) in zip(got, tiles)]
    assert rel[0] != rel[1]
    assert len(set(rel)) > n // 2
    # the crop of (seed, epoch, index) does not depend on the process, the order or the instance
    assert got == _offsets(ds[i] for i in range(n))
    again = SampleTiles(out, "pretrain_autzen", "train", crop=8, random_crop=True, seed=3)
    assert _offsets(again[i] for i in reversed(range(n)))[::-1] == got
    assert _offsets(again.get(i, epoch=0) for i in range(n)) == got
    # another epoch or seed: other crops; set_epoch(e) equals get(i, epoch=e)
    again.set_epoch(1)
    epoch1 = _offsets(again[i] for i in range(n))
    assert epoch1 != got and epoch1 == _offsets(ds.get(i, epoch=1) for i in range(n))
    other = SampleTiles(out, "pretrain_autzen", "train", crop=8, random_crop=True, seed=4)
    assert _offsets(other[i] for i in range(n)) != got
    assert got[0] == (ds.rows[0]["row"] + int(ds.crop_rng(0).integers(0, 9, size=2)[0]),
                      ds.rows[0]["col"] + int(ds.crop_rng(0).integers(0, 9, size=2)[1]))


# ----------------------------------------------------------------------------- train statistics
def test_stats_count_each_train_pixel_once(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(_cfg(raw, out, sources=small_sources("rotterdam", rotterdam={"stride": 4}), max_nodata=0.5, val_fraction=0.25, test_fraction=0.25), log=None)
    rows = [r for r in read_index(out) if r["task"] == "pretrain_rotterdam"]
    train = [r for r in rows if r["split"] == "train"]
    assert train and len({(r["scene"], r["row"], r["col"]) for r in train}) == len(train)
    stats = json.loads((out / "stats.json").read_text())["rotterdam"]
    per_band = {key: [] for key in ("pan", "ms")}
    for scene in sorted({r["scene"] for r in rows}):
        union = None
        for key in per_band:
            arr = read_raster(out / "scenes" / "rotterdam" / scene / f"{key}.tif")
            if union is None:
                union = np.zeros(arr.shape[1:], bool)
                for r in train:
                    if r["scene"] == scene:
                        union[r["row"] : r["row"] + r["size"], r["col"] : r["col"] + r["size"]] = True
            per_band[key].append(arr[:, union])
    size = train[0]["size"]
    tile_pixels = sum(int(np.isfinite(read_raster(out / r["files"]["pan"])).sum()) for r in train)
    for key, parts in per_band.items():
        vals = np.concatenate(parts, 1).astype(np.float64)
        n = int(np.isfinite(vals).sum(1).min())
        assert stats[key]["pixels"] == n  # the true count: each overlapping train pixel once
        np.testing.assert_allclose(stats[key]["mean"], np.nanmean(vals, 1), rtol=1e-9)
        np.testing.assert_allclose(stats[key]["std"], np.nanstd(vals, 1), rtol=1e-7)
    assert stats["pan"]["pixels"] < tile_pixels <= len(train) * size * size  # tiles overlap (stride 4 < 16)


def test_running_stats_union_of_overlapping_windows():
    from mssdf.data.stats import RunningStats
    from mssdf.data.tiling import union_mask, windows

    img = np.arange(40 * 30, dtype=np.float32).reshape(1, 40, 30)
    img[0, 0, 0] = np.nan
    wins = windows(40, 30, 16, 4)[:6]  # heavily overlapping
    acc = RunningStats()
    acc.update(img, union_mask(wins, 16, (40, 30)))
    cover = union_mask(wins, 16, (40, 30)) & np.isfinite(img[0])
    res = acc.result()
    assert res["pixels"] == int(cover.sum())
    np.testing.assert_allclose(res["mean"], [img[0][cover].mean(dtype=np.float64)])
    np.testing.assert_allclose(res["std"], [img[0][cover].std(dtype=np.float64)], rtol=1e-9)


# ----------------------------------------------------------------------------- rows from TaskSpec, padding
def test_index_rows_follow_taskspec(prepared, monkeypatch):
    from mssdf.data import tasks as T

    out, _, _ = prepared
    for r in read_index(out):
        spec = TASKS[r["task"]]
        expect = {*spec.inputs, *T.EXTRA_FILES.get(spec.source, ()), *(k for k, _ in spec.target_files)}
        assert set(r["files"]) == expect, r["task"]
        for key, fname in spec.target_files:
            assert r["files"][key] == f"tiles/{r['source']}/{r['tile']}.{fname}"
        assert (r["scene_class"] >= 0) == bool(spec.tile_class)
        assert (r["synthetic"], r["derived"]) == (int(spec.synthetic), int(spec.derived))
    header = (out / "index.csv").read_text().splitlines()[0].split(",")
    assert "label_kind" in header and "synthetic" not in header and "derived" not in header  # derived on reading
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks["height"]["target_files"] == {"height": "ndsm.tif"}

    # a new task declared only in TASKS gets its rows, files and label with no other change
    spec = T.TaskSpec("lasvegas", ("pan",), ("label",), "real", ("background", "road"), "copy",
                      target_files=(("label", "label.tif"),))
    monkeypatch.setitem(T.TASKS, "seg_roads_copy", spec)
    raw = prepared[2]
    out2 = out.parent / "out_copy"
    prepare(_cfg(raw, out2, sources=small_sources("lasvegas")), log=None)
    rows = read_index(out2)
    a = sorted((r["tile"], r["files"]["label"]) for r in rows if r["task"] == "seg_roads")
    b = sorted((r["tile"], r["files"]["label"]) for r in rows if r["task"] == "seg_roads_copy")
    assert a == b and a
    s = SampleTiles(out2, "seg_roads_copy", "train")[0]
    assert s["label"].shape == (32, 32) and s["meta"]["label_kind"] == "real"


def test_scene_smaller_than_tile_is_padded(tmp_path):
    raw = make_raw(tmp_path / "raw", lasvegas_px=28)
    out = tmp_path / "out"
    s = prepare(_cfg(raw, out, sources=small_sources("lasvegas"), val_fraction=0.0, test_fraction=0.0), log=None)
    assert s["tiles_per_source"]["lasvegas"]["windows"] == 1  # one padded window (the readers' rule too)
    (row,) = [r for r in read_index(out) if r["task"] == "seg_roads"]
    assert row["nodata_frac"] == round(1 - 28 * 28 / 32 / 32, 4)
    label = read_raster(out / row["files"]["label"], dtype=np.uint8)[0]
    pan = read_raster(out / row["files"]["pan"])[0]
    assert label.shape == (32, 32) and (label[28:] == 255).all() and (label[:, 28:] == 255).all()
    assert np.isnan(pan[28:]).all() and np.isfinite(pan[:28, :28]).all()
    sample = SampleTiles(out, "seg_roads", "train")[0]
    assert not sample["valid"][28:].any() and sample["valid"][:28, :28].all()


def test_sample_bad_arguments_raise_config_error(prepared):
    out, _, _ = prepared
    bad = [dict(task="nope"), dict(split="training"), dict(backend="zarr"), dict(dsm_source="dtm"),
           dict(modalities=("rgb", "sar")), dict(task="pretrain_rotterdam", modalities=("dsm",)),
           dict(crop=10_000), dict(crop=0), dict(crop=True)]
    for kw in bad:
        args = {"task": "pretrain_autzen", "split": "train", **kw}
        with pytest.raises(ConfigError):
            SampleTiles(out, **args)
        with pytest.raises(DataError):  # still what it was before
            SampleTiles(out, **args)


def test_dsm_source_ndsm_reads_ndsm_everywhere(prepared):
    out, _, _ = prepared
    for backend in ("npy", "tif"):
        a = SampleTiles(out, "pretrain_autzen", "train", backend=backend, dsm_source="ndsm", fill_nodata=False)
        b = SampleTiles(out, "pretrain_autzen", "train", backend=backend, modalities=("ndsm",), fill_nodata=False)
        assert torch.equal(torch.nan_to_num(a[0]["dsm"], nan=-1.0), torch.nan_to_num(b[0]["ndsm"], nan=-1.0))
    filled = SampleTiles(out, "pretrain_autzen", "train", dsm_source="ndsm")
    assert all(torch.isfinite(filled[i]["dsm"]).all() for i in range(len(filled)))


def test_cache_stem_strips_the_tile_name_and_extension():
    from mssdf.data.index import cache_stem

    row = {"tile": "atlanta_r0000_c0064", "files": {"pan": "tiles/atlanta/atlanta_r0000_c0064.pan.tif",
                                                     "height": "tiles/autzen/atlanta_r0000_c0064.ndsm.tif",
                                                     "boxes": "tiles/atlanta/atlanta_r0000_c0064.boxes.json"}}
    assert cache_stem(row, "pan") == "pan"
    assert cache_stem(row, "height") == "ndsm"  # a target read from an input's file
    assert cache_stem(row, "boxes") == "boxes"
    assert cache_stem(row, "ms") == "ms"  # no such file: the key itself


def test_manifest_hashes_every_file_and_changes_with_any(tmp_path):
    from mssdf.data.output import MANIFEST, write_manifest

    (tmp_path / "tiles" / "a").mkdir(parents=True)
    (tmp_path / "tiles" / "a" / "pan.tif").write_bytes(b"pixels")
    (tmp_path / "index.csv").write_text("task,split\n")
    manifest = write_manifest(tmp_path)
    assert manifest["count"] == 2 and set(manifest["files"]) == {"index.csv", "tiles/a/pan.tif"}
    assert manifest["files"]["tiles/a/pan.tif"] == hashlib.sha256(b"pixels").hexdigest()
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    before = (tmp_path / MANIFEST).read_bytes()
    assert write_manifest(tmp_path) == manifest and (tmp_path / MANIFEST).read_bytes() == before  # itself left out
    (tmp_path / "tiles" / "a" / "pan.tif").write_bytes(b"pixelz")
    assert (write_manifest(tmp_path))["files"]["tiles/a/pan.tif"] != manifest["files"]["tiles/a/pan.tif"]


def test_prepare_writes_the_manifest_of_every_file_last(prepared):
    from mssdf.data.output import MANIFEST

    out, _, _ = prepared
    manifest = json.loads((out / MANIFEST).read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk and manifest["count"] == len(on_disk)
    assert all(manifest["files"][f] == hashlib.sha256((out / f).read_bytes()).hexdigest() for f in sorted(on_disk)[:50])
    # tiles are flat per source: DVC walks a handful of folders, not one per tile
    assert {p.parent.relative_to(out).as_posix() for p in (out / "tiles").rglob("*.tif")} <= {
        f"tiles/{s}" for s in SOURCES}
