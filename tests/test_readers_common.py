"""Shared reader machinery: colour decoding, splits, windows, image helpers, registry."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import rand_label, truncate, write_pil, write_tif  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import DATASETS, dataset_params, detection_collate, get_dataset  # noqa: E402
from mssdf.data.readers.base import image_header, read_grey, read_image  # noqa: E402
from mssdf.data.readers.colors import ISPRS, SECOND, read_color_label  # noqa: E402
from mssdf.data.readers.splits import fraction_subset, group_split, holdout_split, stratified_split  # noqa: E402
from mssdf.data.readers.windows import crop_windows, grid_windows, starts  # noqa: E402


def test_colour_decode_round_trip_and_known_colours():
    label = rand_label(np.random.default_rng(0), 9, 7)
    assert (ISPRS.decode(ISPRS.encode(label)) == label).all()
    rgb = np.array([[[0]], [[0]], [[255]]], np.uint8)  # (0,0,255) = building
    assert ISPRS.decode(rgb)[0, 0] == ISPRS.classes.index("building") == 1
    assert ISPRS.decode(np.zeros((3, 2, 2), np.uint8)).tolist() == [[255, 255], [255, 255]]  # black = ignore
    assert SECOND.decode(np.array([[[128]], [[0]], [[0]]]))[0, 0] == SECOND.classes.index("building")


def test_unknown_colour_names_file_and_colour(tmp_path):
    arr = ISPRS.encode(np.zeros((4, 4), np.int64))
    arr[:, 1, 2] = (12, 34, 56)
    path = write_tif(tmp_path / "lab.tif", arr, None)
    with pytest.raises(DataError, match=r"lab\.tif.*\(12,34,56\)x1"):
        read_color_label(path, ISPRS)
    out = read_color_label(path, ISPRS, unknown="ignore")
    assert out[1, 2] == 255 and out[0, 0] == 0


def test_palette_label_images(tmp_path):
    from PIL import Image

    idx = np.array([[0, 1], [1, 0]], np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.png")
    assert read_color_label(tmp_path / "p.png", ISPRS).tolist() == [[0, 1], [1, 0]]
    import rasterio
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "p.tif", "w", driver="GTiff", count=1, height=2, width=2, dtype="uint8") as dst:
            dst.write(idx[None])
            dst.write_colormap(1, {0: (255, 255, 255, 255), 1: (0, 0, 255, 255)})
    assert read_color_label(tmp_path / "p.tif", ISPRS).tolist() == [[0, 1], [1, 0]]


def test_grey_image_with_three_equal_channels(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) * 3
    write_pil(tmp_path / "g.png", np.repeat(grey, 3, 0))
    assert (read_grey(tmp_path / "g.png") == grey).all()
    bad = np.repeat(grey, 3, 0)
    bad[2] = 255 - bad[2]
    write_pil(tmp_path / "c.png", bad)
    with pytest.raises(DataError, match=r"c\.png.*grey"):
        read_grey(tmp_path / "c.png")


def test_truncated_and_wrong_band_images(tmp_path):
    write_pil(tmp_path / "a.jpg", np.full((3, 32, 32), 7, np.uint8))
    truncate(tmp_path / "a.jpg", 0.3)
    with pytest.raises(DataError, match=r"a\.jpg"):
        read_image(tmp_path / "a.jpg")
    write_tif(tmp_path / "b.tif", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"b\.tif: has 2 band"):
        read_image(tmp_path / "b.tif", 3)
    with pytest.raises(DataError, match=r"b\.tif: has 2 band"):
        image_header(tmp_path / "b.tif", 3)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"c\.png"):
        image_header(tmp_path / "c.png")


def test_fraction_subset_seeded():
    a = fraction_subset(40, 0.5, seed=3)
    assert a == fraction_subset(40, 0.5, seed=3) and len(a) == 20 and a == sorted(set(a))
    assert a != fraction_subset(40, 0.5, seed=4)
    assert fraction_subset(40, 1.0, seed=3) == list(range(40))
    with pytest.raises(ConfigError):
        fraction_subset(40, 0.0, seed=0)


def test_stratified_and_holdout_splits_disjoint_and_reproducible():
    labels = [c for c in range(5) for _ in range(10)]
    train, test = stratified_split(labels, 0.2, seed=1)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(50))
    assert np.bincount(np.asarray(labels)[train]).tolist() == [2] * 5
    assert (train, test) == stratified_split(labels, 0.2, seed=1)
    assert train != stratified_split(labels, 0.2, seed=2)[0]
    tr, te = holdout_split(10, 0.2, 0)
    assert len(te) == 2 and set(tr).isdisjoint(te) and (tr, te) == holdout_split(10, 0.2, 0)


def test_group_split_keeps_groups_together():
    groups = [i // 3 for i in range(30)]
    parts = group_split(groups, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert sorted(sum(parts.values(), [])) == list(range(30))
    owner = {groups[i]: name for name, idx in parts.items() for i in idx}
    assert all(owner[groups[i]] == name for name, idx in parts.items() for i in idx)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [24, 3, 3]


def test_windows_cover_edges_per_image():
    assert starts(16, 10, 10) == [0, 6]
    assert starts(20, 10, 10) == [0, 10]
    assert starts(5, 10, 10) == [0]
    wins = grid_windows(25, 12, 10)
    assert wins == [(r, c, 10, 10) for r in (0, 10, 15) for c in (0, 2)]
    assert grid_windows(5, 30, 10)[0] == (0, 0, 5, 10)
    assert [w[1] for w in crop_windows(30, 2500, 1024, 200)] == [0, 824, 1476]
    with pytest.raises(ConfigError):
        crop_windows(10, 10, 100, 100)


def test_registry_names_params_and_errors(tmp_path):
    assert list(DATASETS) == [
        "potsdam", "vaihingen", "us3d", "second", "aid", "nwpu_resisc45", "dior", "dota", "hr_pairs",
    ]  # fmt: skip
    assert dataset_params("NWPU")["train_ratio"] is None
    with pytest.raises(ConfigError, match="unknown dataset 'isaid'.*potsdam"):
        get_dataset("isaid", tmp_path, "train")
    with pytest.raises(ConfigError, match="unknown parameter.*crop_sise.*crop_size"):
        get_dataset("potsdam", tmp_path, "train", crop_sise=512)
    with pytest.raises(DataError, match=r"(?s)nowhere: folder not found.*2_Ortho_RGB"):
        get_dataset("potsdam", tmp_path / "nowhere", "train")
    for name in DATASETS:  # every reader: a missing root fails naming the path
        with pytest.raises(DataError, match="nowhere"):
            get_dataset(name, tmp_path / "nowhere", "train")


def test_detection_collate():
    import torch

    a = {"rgb": torch.zeros(3, 4, 4), "boxes": torch.zeros(2, 4), "box_labels": torch.zeros(2), "meta": {"id": "a"}}
    b = {"rgb": torch.ones(3, 4, 4), "boxes": torch.zeros(0, 4), "box_labels": torch.zeros(0), "meta": {"id": "b"}}
    out = detection_collate([a, b])
    assert out["rgb"].shape == (2, 3, 4, 4) and [x.shape[0] for x in out["boxes"]] == [2, 0]
