"""AID, NWPU-RESISC45, DIOR and DOTA readers on tiny fakes in the official layouts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import make_dior, make_dota, make_scene_folders  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import AID, DIOR, DOTA, NWPU_RESISC45, detection_collate, get_dataset  # noqa: E402
from mssdf.data.readers.dota import visible_fraction  # noqa: E402

AID_CLASSES = [f"class_{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(30)]
NWPU_CLASSES = [f"c{i:02d}" for i in range(45)]


def test_aid_classes_ratio_split(tmp_path):
    make_scene_folders(tmp_path / "AID", AID_CLASSES, per_class=10, camel=True)
    train = get_dataset("aid", tmp_path, "train")  # default protocol 20%
    test = AID(tmp_path, "test")
    assert train.classes == tuple(sorted(p.name for p in (tmp_path / "AID").iterdir()))
    assert len(train) == 60 and len(test) == 240 and (train.class_counts() == 2).all()
    assert not set(train.files) & set(test.files)
    half = AID(tmp_path / "AID", "train", train_ratio=0.5, seed=5)
    assert len(half) == 150 and half.files == AID(tmp_path, "train", train_ratio=0.5, seed=5).files
    assert half.files != AID(tmp_path, "train", train_ratio=0.5, seed=6).files
    s = train[0]
    assert s["rgb"].shape == (3, 8, 8) and s["label"].ndim == 0 and int(s["label"]) == train.labels[0]
    assert s["meta"]["file"].split("/")[0] == train.classes[int(s["label"])]


def test_nwpu_needs_45_classes(tmp_path):
    make_scene_folders(tmp_path / "NWPU-RESISC45", NWPU_CLASSES[:44], per_class=10)
    with pytest.raises(DataError, match=r"NWPU-RESISC45: 44 class folder\(s\) found, expected 45"):
        NWPU_RESISC45(tmp_path, "train")
    make_scene_folders(tmp_path / "NWPU-RESISC45", NWPU_CLASSES[44:], per_class=10)
    ds = get_dataset("nwpu", tmp_path, "train")
    assert len(ds.classes) == 45 and len(ds) == 45 and (ds.class_counts() == 1).all()  # 10%
    assert len(NWPU_RESISC45(tmp_path, "train", train_ratio=0.2)) == 90
    assert len(NWPU_RESISC45(tmp_path, "all")) == 450
    assert len(NWPU_RESISC45(tmp_path, "train", train_ratio=1.0)) == 450  # (0, 1]: everything in train
    assert len(NWPU_RESISC45(tmp_path, "test", train_ratio=1.0)) == 0
    for bad in (0.0, 1.5, -0.2, True):
        with pytest.raises(ConfigError, match=r"train_ratio=.*\(0, 1\]"):
            NWPU_RESISC45(tmp_path, "train", train_ratio=bad)
    (tmp_path / "NWPU-RESISC45" / "c07" / "c07_003.jpg").write_bytes(b"\xff\xd8\xff broken")
    ds = NWPU_RESISC45(tmp_path, "all")
    with pytest.raises(DataError, match=r"c07_003\.jpg"):
        ds[ds.files.index(tmp_path / "NWPU-RESISC45" / "c07" / "c07_003.jpg")]


DIOR_OBJECTS = {
    "00001": [("Expressway-Service-area", (1, 2, 10, 12)), ("golffield", (0, 0, 5, 5))],
    "00002": [("vehicle", (3, 4, 6, 8))],
    "00003": [],
    "11726": [("Expressway-toll-station", (2, 2, 4, 4)), ("airplane", (7, 1, 15, 9))],
}


@pytest.mark.parametrize("lists_dir", ["Main", "ImageSets/Main"])
def test_dior_splits_boxes_and_names(tmp_path, lists_dir):
    make_dior(tmp_path, {"train": ["00001", "00002"], "val": ["00003"], "test": ["11726"]}, DIOR_OBJECTS,
              lists_dir=lists_dir)  # fmt: skip
    assert len(DIOR(tmp_path, "train")) == 2 and len(get_dataset("dior", tmp_path, "trainval")) == 3
    test = DIOR(tmp_path, "test")
    s = test[0]
    assert s["meta"]["id"] == "11726" and s["rgb"].shape == (3, 16, 16)
    assert s["boxes"].tolist() == [[2, 2, 4, 4], [7, 1, 15, 9]]
    assert s["box_labels"].tolist() == [DIOR.CLASSES.index("expresswaytollstation"), 0]
    s = DIOR(tmp_path, "train")[0]
    assert s["box_labels"].tolist() == [DIOR.CLASSES.index("expresswayservicearea"), DIOR.CLASSES.index("golffield")]
    empty = DIOR(tmp_path, "val")[0]
    assert empty["boxes"].shape == (0, 4) and empty["box_labels"].shape == (0,)
    assert len(DIOR.CLASSES) == 20


def test_dior_bad_inputs(tmp_path):
    make_dior(tmp_path, {"train": ["00001", "00002"], "test": ["11726"]}, DIOR_OBJECTS)
    with pytest.raises(DataError, match=r"Main/val\.txt: split list not found"):
        DIOR(tmp_path, "val")
    (tmp_path / "JPEGImages-trainval" / "00002.jpg").unlink()
    with pytest.raises(DataError, match=r"JPEGImages-trainval/00002\.jpg: image of id 00002"):
        DIOR(tmp_path, "train")
    (tmp_path / "Annotations" / "Horizontal Bounding Boxes" / "11726.xml").unlink()
    with pytest.raises(DataError, match=r"11726\.xml: file not found \(partner of .*11726\.jpg\)"):
        DIOR(tmp_path, "test")
    xml = tmp_path / "Annotations" / "Horizontal Bounding Boxes" / "00001.xml"
    xml.write_text(xml.read_text().replace("golffield", "skatepark"))
    (tmp_path / "Main" / "train.txt").write_text("00001\n")
    with pytest.raises(DataError, match=r"00001\.xml: object 1 has unknown class 'skatepark'"):
        DIOR(tmp_path, "train")[0]


DOTA_LABEL = """imagesource:GoogleEarth
gsd:0.146343590398
2 2 12 2 12 8 2 8 plane 0
20 30 30 30 30 50 20 50 large-vehicle 1
28 0 38 0 38 10 28 10 small-vehicle 0
"""


def test_dota_parse_versions_and_crops(tmp_path):
    make_dota(tmp_path, "train", {"P0001": DOTA_LABEL, "P0002": "1 1 3 1 3 3 1 3 container-crane 0\n"},
              {"P0001": (60, 40), "P0002": (8, 8)})  # fmt: skip
    make_dota(tmp_path, "test", {}, {"P0009": (10, 10)})
    with pytest.raises(DataError, match=r"P0002\.txt:1: unknown class 'container-crane' \(use version='1\.5'\)"):
        DOTA(tmp_path, "train")[1]
    ds = get_dataset("dota", tmp_path, "train", version="1.5")
    s = ds[0]
    assert s["rgb"].shape == (3, 60, 40) and s["boxes"].shape == (3, 8)
    assert s["boxes"][1].tolist() == [20, 30, 30, 30, 30, 50, 20, 50]
    assert s["box_labels"].tolist() == [0, 9, 10] and s["difficult"].tolist() == [0, 1, 0]
    assert ds[1]["box_labels"].tolist() == [15]
    crops = DOTA(tmp_path, "train", version="1.5", crop_size=32, gap=8)
    # P0001 60x40: rows 0, 24, 28; cols 0, 8 -> 6 crops; P0002 8x8 -> 1 crop padded to 32
    assert len(crops) == 7 and crops[6]["rgb"].shape == (3, 32, 32) and (crops[6]["rgb"][:, 8:] == 0).all()
    first = crops[0]  # window rows 0..32, cols 0..32: plane inside; large vehicle 1/10 inside; small vehicle outside
    assert first["box_labels"].tolist() == [0] and first["truncated"].tolist() == [False]
    second = crops[1]  # rows 0..32, cols 8..40: plane (2..12 -> 40% inside) dropped; small vehicle shifted
    assert second["box_labels"].tolist() == [10] and second["boxes"][0].tolist()[:2] == [20, 0]
    low = DOTA(tmp_path, "train", version="1.5", crop_size=32, gap=8, min_visible=0.3)[1]
    assert low["box_labels"].tolist() == [0, 10] and low["truncated"].tolist() == [True, False]
    batch = detection_collate([crops[0], crops[1]])
    assert batch["rgb"].shape == (2, 3, 32, 32) and len(batch["boxes"]) == 2
    test = DOTA(tmp_path, "test")
    assert test[0]["boxes"].shape == (0, 8)
    assert np.allclose(visible_fraction(np.float32([[0, 0, 10, 0, 10, 10, 0, 10]]), (0, 5, 10, 10)), 0.5)


def test_dota_bad_inputs(tmp_path):
    make_dota(tmp_path, "train", {"P0001": DOTA_LABEL}, {"P0001": (20, 20), "P0003": (20, 20)})
    with pytest.raises(DataError, match=r"labelTxt/P0003\.txt: file not found \(partner of .*P0003\.png\)"):
        DOTA(tmp_path, "train")
    (tmp_path / "train" / "labelTxt" / "P0003.txt").write_text("1 2 3 4 5 6 7 plane\n")
    with pytest.raises(DataError, match=r"P0003\.txt:1: polygon with 7 coordinate values, 8 expected"):
        DOTA(tmp_path, "train")[1]
    with pytest.raises(DataError, match=r"(?s)val/images: folder not found; expected layout"):
        DOTA(tmp_path, "val")
    with pytest.raises(ConfigError, match="version"):
        DOTA(tmp_path, "train", version="2.0")


def test_dota_visible_fraction_vectorised_matches_reference():
    from mssdf.data.readers.dota import _area, clip_to_rect, visible_fraction

    def reference(polys, window):
        r, c, h, w = window
        out = []
        for poly in polys.astype(np.float64).reshape(-1, 4, 2):
            full = _area(poly)
            if full <= 1e-9:
                cx, cy = poly.mean(0)
                out.append(float(c <= cx <= c + w and r <= cy <= r + h))
            else:
                out.append(_area(clip_to_rect(poly, c, r, c + w, r + h)) / full)
        return np.array(out)

    rng = np.random.default_rng(0)
    polys = rng.uniform(-20, 120, (300, 8)).astype(np.float32)  # random quads: convex, concave, self-crossing
    centre, half = rng.uniform(0, 100, (200, 2)), rng.uniform(1, 30, (200, 1))
    ang = rng.uniform(0, np.pi, (200, 1)) + np.arange(4) * np.pi / 2
    rot = np.stack([centre[:, :1] + half * np.cos(ang), centre[:, 1:] + half * np.sin(ang)], -1).reshape(200, 8)
    degenerate = np.array([[5, 5, 5, 5, 5, 5, 5, 5], [0, 0, 10, 10, 20, 20, 30, 30], [200, 200] * 4], np.float32)
    allp = np.concatenate([polys, rot.astype(np.float32), degenerate])
    for window in [(0, 0, 50, 50), (30, 40, 64, 20), (-5, -5, 200, 200), (90, 90, 5, 5)]:
        np.testing.assert_allclose(visible_fraction(allp, window), reference(allp, window), atol=1e-9)
    assert visible_fraction(np.zeros((0, 8), np.float32), (0, 0, 8, 8)).shape == (0,)
