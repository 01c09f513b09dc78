"""ISPRS Potsdam and Vaihingen readers on tiny fakes in the official layouts."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import ISPRS, make_potsdam, make_vaihingen, rand_u8, truncate, write_tif  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import Potsdam, Vaihingen, get_dataset  # noqa: E402
from mssdf.data.readers.potsdam import TEST_TILES, TRAIN_TILES  # noqa: E402
from mssdf.data.readers.vaihingen import TEST_AREAS, TRAIN_AREAS  # noqa: E402

S = 16


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam")
    return root, make_potsdam(root, TRAIN_TILES + TEST_TILES, size=S)


def test_potsdam_official_split_and_values(potsdam):
    root, data = potsdam
    train = get_dataset("potsdam", root, "train", modalities=("rgb", "ms", "dsm"))
    test = Potsdam(root, "test", modalities=("rgb",))
    assert [t.tile_id for t in train.tiles] == list(TRAIN_TILES) and len(train) == 24
    assert [t.tile_id for t in test.tiles] == list(TEST_TILES) and len(test) == 14
    assert not {t.tile_id for t in train.tiles} & {t.tile_id for t in test.tiles}
    s = train[0]
    d = data["2_10"]
    assert s["rgb"].shape == (3, S, S) and s["rgb"].dtype.is_floating_point
    assert (s["rgb"].numpy() == d["rgb"]).all()
    assert (s["ms"].numpy() == np.concatenate([d["rgb"], d["ir"]])).all()  # R, G, B, IR
    assert np.allclose(s["dsm"].numpy(), d["dsm"])  # heights in metres, zero-padded file name
    assert s["meta"]["dsm_file"] == "dsm_potsdam_02_10.tif"
    assert s["label"].dtype == torch.int64 and s["dsm"].dtype == torch.float32
    assert (s["label"].numpy() == d["label"]).all()


def test_potsdam_irrg_ndsm_noboundary_and_5999_tile(potsdam):
    root, data = potsdam
    ds = Potsdam(root, "test", modalities=("ms", "dsm"), ms_source="IRRG", dsm_source="ndsm", labels="noBoundary")
    s = ds[[t.tile_id for t in ds.tiles].index("3_13")]
    d = data["3_13"]
    assert (s["ms"].numpy() == np.concatenate([d["ir"], d["rgb"][:2]])).all()  # IR, R, G
    dsm = s["dsm"].numpy()[0]
    assert dsm.shape == (S, S)  # 5999-wide nDSM padded by one column
    assert np.abs(dsm[:, : S - 1] - d["ndsm"]).max() <= 2  # JPEG with 3 equal channels -> 1 band
    assert (dsm[:, S - 1] == dsm[:, S - 2]).all()
    assert s["meta"]["dsm_padded_columns"] == 1  # the padding is recorded ...
    assert all(ds[i]["meta"]["dsm_padded_columns"] == 0 for i, t in enumerate(ds.tiles) if t.tile_id != "3_13")  # ... 0 elsewhere
    lab = s["label"].numpy()
    assert (lab == d["label_nob"]).all() and (lab[::5] == 255).all()
    float_dsm = Potsdam(root, "test", modalities=("rgb", "dsm"), tiles=["3_13"])[0]["dsm"].numpy()[0]
    assert np.allclose(float_dsm[:, : S - 1], d["dsm"][0]) and np.allclose(float_dsm[:, -1], d["dsm"][0, :, -1])


def test_potsdam_padding_is_recorded_per_window_on_3_13_only(potsdam):
    root, _ = potsdam
    crops = Potsdam(root, "test", tiles=["3_13", "2_13"], modalities=("rgb", "dsm"), crop_size=10)
    for i, (t, (_, c, _, w)) in enumerate(crops.samples):
        s = crops[i]
        on_edge = crops.tiles[t].tile_id == "3_13" and c + w == S
        assert s["meta"]["dsm_padded_columns"] == (1 if on_edge else 0), (crops.tiles[t].tile_id, c)
        assert s["dsm"].shape == (1, 10, 10)
    assert "dsm_padded_columns" not in Potsdam(root, "test", tiles=["3_13"], modalities=("rgb",))[0]["meta"]


def names_both(err, a: str, size_a: str, b: str, size_b: str) -> bool:
    """The error names both files (``<path>/a``) and both sizes, next to their files."""
    msg = str(err.value)
    return all(re.search(re.escape(f"/{f}") + r"(: size |\s\()" + s, msg) for f, s in ((a, size_a), (b, size_b)))


@pytest.mark.parametrize("dsm_source", ["dsm", "ndsm"])
def test_potsdam_short_dsm_on_any_other_tile_is_an_error_at_construction(tmp_path, dsm_source):
    """Only the documented quirk (3_13) is padded: the same one-column gap elsewhere is refused."""
    make_potsdam(tmp_path, ["2_10", "3_13"], size=S, short_tiles=("3_13", "2_10"))
    dsm = "dsm_potsdam_02_10.tif" if dsm_source == "dsm" else "dsm_potsdam_02_10_normalized_lastools.jpg"
    with pytest.raises(DataError) as err:
        Potsdam(tmp_path, "train", tiles=["2_10"], dsm_source=dsm_source)
    assert names_both(err, dsm, "16x15", "top_potsdam_2_10_RGB.tif", "16x16"), err.value
    with pytest.raises(DataError) as err:  # without an image, the label is the partner
        Potsdam(tmp_path, "train", tiles=["2_10"], modalities=("dsm",), dsm_source=dsm_source)
    assert names_both(err, dsm, "16x15", "top_potsdam_2_10_label.tif", "16x16"), err.value
    ok = Potsdam(tmp_path, "test", tiles=["3_13"], dsm_source=dsm_source)  # the quirk tile still loads
    assert ok[0]["meta"]["dsm_padded_columns"] == 1


def test_potsdam_label_size_mismatch_is_an_error_naming_both_files(small):
    write_tif(small / "5_Labels_all" / "top_potsdam_2_10_label.tif", ISPRS.encode(np.zeros((S, S - 1), np.int64)))
    with pytest.raises(DataError, match=r"top_potsdam_2_10_label\.tif: size 16x15 differs from its partner .*2_10_RGB\.tif \(16x16\)"):
        Potsdam(small, "train", tiles=["2_10"])
    write_tif(small / "5_Labels_all" / "top_potsdam_3_13_label.tif", ISPRS.encode(np.zeros((S, S - 1), np.int64)))
    with pytest.raises(DataError, match=r"top_potsdam_3_13_label\.tif: size 16x15 differs"):  # the quirk is the DSM's only
        Potsdam(small, "test", tiles=["3_13"])


def test_potsdam_crops_and_seeded_fraction(potsdam):
    root, _ = potsdam
    crops = Potsdam(root, "train", crop_size=10, modalities=("rgb",), labels=None)
    assert len(crops) == 24 * 4  # starts 0 and 6 (edge window) on each axis
    assert [s for s in crops.samples[:4]] == [(0, (r, c, 10, 10)) for r in (0, 6) for c in (0, 6)]
    assert crops[3]["rgb"].shape == (3, 10, 10) and "label" not in crops[3]
    half = Potsdam(root, "train", crop_size=10, stride=10, train_fraction=0.5, seed=7, modalities=("rgb",))
    again = Potsdam(root, "train", crop_size=10, train_fraction=0.5, seed=7, modalities=("rgb",))
    other = Potsdam(root, "train", crop_size=10, train_fraction=0.5, seed=8, modalities=("rgb",))
    assert len(half) == 48 and half.samples == again.samples and half.samples != other.samples
    assert set(half.samples) <= set(crops.samples)
    tiles = Potsdam(root, "train", train_fraction=0.5, fraction_of="tiles", seed=7, modalities=("rgb",))
    assert len(tiles) == 12 and len({t.tile_id for t in tiles.tiles}) == 12
    big = Potsdam(root, "train", tiles=["2_10"], crop_size=20, modalities=("rgb",))[0]
    assert big["rgb"].shape == (3, 20, 20) and big["label"].shape == (20, 20)
    assert (big["label"][S:] == 255).all() and (big["rgb"][:, S:] == 0).all()  # tile smaller than crop: padded
    with pytest.raises(ConfigError, match="split='val'"):
        Potsdam(root, "val")
    with pytest.raises(ConfigError, match="modalities"):
        Potsdam(root, "train", modalities=("rgb", "sar"))
    with pytest.raises(ConfigError, match="stride"):
        Potsdam(root, "train", stride=4)


def test_potsdam_batches_through_worker_processes(potsdam):
    root, _ = potsdam
    ds = Potsdam(root, "test", modalities=("rgb", "dsm"), crop_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["rgb"].shape == (4, 3, 8, 8) and batch["label"].shape == (4, 8, 8)
    assert batch["meta"]["id"] == ["2_13"] * 4


@pytest.fixture
def small(tmp_path):
    make_potsdam(tmp_path, ["2_10", "2_11", "3_13"], size=S)
    return tmp_path


def test_potsdam_missing_partner_folder_and_tiles(small):
    with pytest.raises(DataError, match=r"top_potsdam_2_12_RGB\.tif: not found; 22 tile.*2_12, 3_10.*allow_missing_tiles"):
        Potsdam(small, "train")
    ds = Potsdam(small, "train", allow_missing_tiles=True)
    assert [t.tile_id for t in ds.tiles] == ["2_10", "2_11"]
    (small / "1_DSM" / "dsm_potsdam_02_11.tif").unlink()
    with pytest.raises(DataError, match=r"dsm_potsdam_02_11\.tif: file not found \(partner of .*top_potsdam_2_11_RGB\.tif\)"):
        Potsdam(small, "train", tiles=["2_10", "2_11"])
    shutil.rmtree(small / "5_Labels_all_noBoundary")
    with pytest.raises(DataError, match=r"(?s)5_Labels_all_noBoundary: folder not found; expected layout"):
        Potsdam(small, "train", labels="noBoundary", tiles=["2_10"])


def test_potsdam_size_band_truncation_colour_nan(small):
    rng = np.random.default_rng(1)
    write_tif(small / "1_DSM" / "dsm_potsdam_02_10.tif", np.zeros((1, S, S - 2), np.float32))
    with pytest.raises(DataError, match=r"dsm_potsdam_02_10\.tif: size 16x14 differs from its partner .*2_10_RGB"):
        Potsdam(small, "train", tiles=["2_10"])
    write_tif(small / "1_DSM" / "dsm_potsdam_02_10.tif", np.zeros((1, S, S), np.float32), geo=(5.0, 100.0, 0.05))
    with pytest.raises(DataError, match=r"dsm_potsdam_02_10\.tif: transform.*check_georef=False"):
        Potsdam(small, "train", tiles=["2_10"])
    assert len(Potsdam(small, "train", tiles=["2_10"], check_georef=False)) == 1
    dsm = np.full((1, S, S), 40.0, np.float32)
    dsm[0, 0, :4] = np.nan
    dsm[0, 1, :3] = -9999
    write_tif(small / "1_DSM" / "dsm_potsdam_02_10.tif", dsm, nodata=-9999)
    s = Potsdam(small, "train", tiles=["2_10"])[0]
    assert s["meta"]["dsm_filled"] == 7 and np.isfinite(s["dsm"].numpy()).all()
    write_tif(small / "2_Ortho_RGB" / "top_potsdam_2_11_RGB.tif", rand_u8(rng, 1, S, S))
    with pytest.raises(DataError, match=r"top_potsdam_2_11_RGB\.tif: has 1 band\(s\), expected 3 or 4"):
        Potsdam(small, "train", tiles=["2_11"])
    write_tif(small / "2_Ortho_RGB" / "top_potsdam_2_11_RGB.tif", rng.integers(0, 255, (3, 256, 256), np.uint8))
    write_tif(small / "5_Labels_all" / "top_potsdam_2_11_label.tif", np.full((3, 256, 256), 255, np.uint8))
    truncate(small / "2_Ortho_RGB" / "top_potsdam_2_11_RGB.tif", 0.5)
    with pytest.raises(DataError, match=r"top_potsdam_2_11_RGB\.tif"):
        Potsdam(small, "train", tiles=["2_11"], modalities=("rgb",))[0]
    lab = ISPRS.encode(np.zeros((S, S), np.int64))
    lab[:, 3, 3] = (10, 20, 30)
    write_tif(small / "5_Labels_all" / "top_potsdam_3_13_label.tif", lab)
    ds = Potsdam(small, "test", tiles=["3_13"])  # 3_13's short DSM is accepted
    with pytest.raises(DataError, match=r"top_potsdam_3_13_label\.tif: 1 pixel.*\(10,20,30\)"):
        ds[0]


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen")
    data = make_vaihingen(root, TRAIN_AREAS, variants=("gts", "complete", "eroded"), size=12)
    data.update(make_vaihingen(root, TEST_AREAS, variants=("complete", "eroded"), size=12, seed=1))
    return root, data


def test_vaihingen_splits_label_variants_and_values(vaihingen):
    root, data = vaihingen
    train = get_dataset("vaihingen", root, "train")
    assert train.labels_dir.name == "gts_for_participants" and len(train) == 16
    test = Vaihingen(root, "test")
    assert test.labels_dir.name == "ground_truth_COMPLETE" and len(test) == 17
    assert [t.tile_id for t in test.tiles] == [f"area{a}" for a in TEST_AREAS]
    s = train[1]  # area 3
    d = data[3]
    assert "rgb" not in s and (s["ms"].numpy() == d["top"]).all()  # IR, R, G under "ms"
    assert s["ms"].shape == (3,) + d["label"].shape  # areas have their own sizes
    assert np.allclose(s["dsm"].numpy(), d["dsm"]) and (s["label"].numpy() == d["label"]).all()
    nob = Vaihingen(root, "test", labels="noBoundary", dsm_source="ndsm", irrg_key="rgb")
    assert nob.labels_dir.name == "ground_truth_eroded_COMPLETE"
    s = nob[0]  # area 2
    assert (s["rgb"].numpy() == data[2]["top"]).all() and (s["dsm"].numpy() == data[2]["ndsm"]).all()
    assert (s["label"].numpy() == data[2]["label_nob"]).all() and (s["label"][:, ::4] == 255).all()
    complete = Vaihingen(root, "train", labels_dir="ground_truth_COMPLETE", crop_size=8, train_fraction=0.5, seed=0)
    assert complete.labels_dir.name == "ground_truth_COMPLETE" and complete[0]["label"].shape == (8, 8)


def test_vaihingen_bad_inputs(tmp_path):
    make_vaihingen(tmp_path, [1, 3], variants=("gts",), size=12, ndsm=False)
    with pytest.raises(DataError, match=r"(?s)no label folder.*area2.*gts_for_participants.*ground_truth_COMPLETE"):
        Vaihingen(tmp_path, "test", modalities=("irrg",))
    with pytest.raises(DataError, match=r"(?s)ndsm: folder not found; expected layout"):
        Vaihingen(tmp_path, "train", areas=[1, 3], dsm_source="ndsm")
    (tmp_path / "dsm" / "dsm_09cm_matching_area3.tif").unlink()
    with pytest.raises(DataError, match=r"dsm_09cm_matching_area3\.tif: file not found \(partner of .*top_mosaic_09cm_area3\.tif\)"):
        Vaihingen(tmp_path, "train", areas=[1, 3])
    write_tif(tmp_path / "dsm" / "dsm_09cm_matching_area3.tif", np.zeros((1, 5, 5), np.float32), (500000.0, 5400000.0, 0.09))
    with pytest.raises(DataError, match=r"dsm_09cm_matching_area3\.tif: size 5x5 differs"):
        Vaihingen(tmp_path, "train", areas=[1, 3])


@pytest.mark.parametrize("dsm_source", ["dsm", "ndsm"])
def test_vaihingen_one_column_short_dsm_is_an_error_naming_both_files(tmp_path, dsm_source):
    """Vaihingen has no padding quirk: a DSM/nDSM one column short is refused at construction."""
    make_vaihingen(tmp_path, [1, 3], variants=("gts",), size=12, short_dsm=(3,))  # area 3: 12x14 image
    dsm = "dsm_09cm_matching_area3.tif" if dsm_source == "dsm" else "ndsm_09cm_matching_area3.bmp"
    with pytest.raises(DataError) as err:
        Vaihingen(tmp_path, "train", areas=[1, 3], dsm_source=dsm_source)
    assert names_both(err, dsm, "12x13", "top_mosaic_09cm_area3.tif", "12x14"), err.value
    assert len(Vaihingen(tmp_path, "train", areas=[1], dsm_source=dsm_source)) == 1
