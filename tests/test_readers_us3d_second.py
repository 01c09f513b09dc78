"""US3D (DFC2019) and SECOND readers on tiny fakes in the official layouts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import SECOND as SECOND_PALETTE  # noqa: E402
from readers_fakes import make_second, make_us3d, rand_u8, write_pil, write_tif  # noqa: E402

from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import SECOND, US3D, get_dataset  # noqa: E402

KEYS = [("JAX", 4, 6), ("JAX", 4, 7), ("JAX", 11, 1), ("OMA", 132, 2), ("OMA", 212, 3)] + [
    ("JAX", t, 1) for t in range(20, 25)
]


@pytest.fixture
def us3d(tmp_path):
    return tmp_path, make_us3d(tmp_path, KEYS)


def test_us3d_values_nan_heights_and_las_codes(us3d):
    root, data = us3d
    ds = get_dataset("us3d", root, "all", modalities=("rgb", "ms"), targets=("height", "label"))
    assert len(ds) == len(KEYS)
    s = ds[0]
    d = data["JAX_004_006"]
    assert s["meta"]["id"] == "JAX_004_006"
    assert (s["rgb"].numpy() == d["rgb"]).all() and (s["ms"].numpy() == d["msi"]).all() and s["ms"].shape[0] == 8
    h = s["height"].numpy()
    assert np.isnan(h[0, :3]).all() and s["meta"]["height_nan"] == 3
    assert np.allclose(h[np.isfinite(h)], d["agl"][np.isfinite(d["agl"])])
    lut = {2: 0, 5: 1, 6: 2, 9: 3, 17: 4, 65: 255}
    assert (s["label"].numpy() == np.vectorize(lut.get)(d["cls"])).all()
    assert len(US3D(root, "all", cities=("OMA",))) == 2


def test_us3d_tile_grouped_seeded_split(us3d):
    root, _ = us3d
    parts = {p: US3D(root, p, seed=3) for p in ("train", "val", "test")}
    ids = {p: [s[0] for s in ds.samples] for p, ds in parts.items()}
    assert sorted(sum(ids.values(), [])) == sorted(s[0] for s in US3D(root, "all").samples)
    tiles = {p: {i[:7] for i in v} for p, v in ids.items()}
    assert not (tiles["train"] & tiles["val"]) and not (tiles["train"] & tiles["test"])
    assert all(("JAX_004_006" in v) == ("JAX_004_007" in v) for v in ids.values())  # same tile, same part
    assert ids == {p: [s[0] for s in US3D(root, p, seed=3).samples] for p in parts}


def test_us3d_bad_inputs(us3d):
    root, _ = us3d
    (root / "Track1-MSI-1" / "JAX_004_007_MSI.tif").write_bytes(b"II*\x00garbage that GDAL cannot read")
    with pytest.raises(DataError, match=r"JAX_004_007_MSI\.tif: not a readable raster.*re-written"):
        US3D(root, "all", modalities=("rgb", "ms"))
    assert len(US3D(root, "all")) == len(KEYS)  # MSI not requested: not touched
    (root / "Track1-Truth" / "OMA_132_002_AGL.tif").unlink()
    with pytest.raises(DataError, match=r"OMA_132_002_AGL\.tif: not found anywhere under .*partner of .*OMA_132_002_RGB\.tif"):
        US3D(root, "all", targets=("height",))
    write_tif(root / "Track1-Truth" / "OMA_132_002_AGL.tif", np.zeros((1, 8, 8), np.float32), (400000.0, 3350000.0, 0.3))
    with pytest.raises(DataError, match=r"OMA_132_002_AGL\.tif: size 8x8 differs from its partner .*OMA_132_002_RGB"):
        US3D(root, "all")
    write_tif(root / "Track1-Truth" / "OMA_132_002_AGL.tif", np.zeros((2, 16, 16), np.float32), (400000.0, 3350000.0, 0.3))
    with pytest.raises(DataError, match=r"OMA_132_002_AGL\.tif: has 2 band"):
        US3D(root, "all")
    write_tif(root / "Track1-Truth" / "OMA_132_002_AGL.tif", np.zeros((1, 16, 16), np.float32), (400000.0, 3350000.0, 0.3))
    write_tif(root / "Track1-Truth" / "OMA_132_002_CLS.tif", np.full((1, 16, 16), 3, np.uint8), (400000.0, 3350000.0, 0.3))
    ds = US3D(root, "all", cities=("OMA",), targets=("label",))
    with pytest.raises(DataError, match=r"OMA_132_002_CLS\.tif: LAS class code\(s\) \[3\]"):
        ds[0]
    (root / "extra").mkdir()
    write_tif(root / "extra" / "OMA_212_003_RGB.tif", np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(DataError, match=r"OMA_212_003_RGB\.tif: duplicate of"):
        US3D(root, "all")


def test_us3d_coarse_msi_resampled(tmp_path):
    make_us3d(tmp_path, [("JAX", 1, 1)])
    write_tif(tmp_path / "Track1-MSI-1" / "JAX_001_001_MSI.tif", np.ones((8, 4, 4), np.uint16), (400000.0, 3350000.0, 1.2))
    with pytest.raises(DataError, match=r"JAX_001_001_MSI\.tif: size 4x4 differs"):
        US3D(tmp_path, "all", modalities=("rgb", "ms"))
    s = US3D(tmp_path, "all", modalities=("rgb", "ms"), resample_ms=True)[0]
    assert s["ms"].shape == (8, 16, 16) and np.allclose(s["ms"].numpy(), 1.0)


@pytest.fixture
def second(tmp_path):
    return tmp_path, make_second(tmp_path, n=10)


def test_second_pairs_labels_and_splits(second):
    root, data = second
    ds = get_dataset("second", root, "all")
    assert len(ds) == 10
    s = ds[3]
    d = data["00003"]
    assert s["meta"]["id"] == "00003"
    assert (s["t1"]["rgb"].numpy() == d["im1"]).all() and (s["t2"]["rgb"].numpy() == d["im2"]).all()
    assert (s["label_t1"].numpy() == d["s1"]).all() and (s["label_t2"].numpy() == d["s2"]).all()
    assert (s["label"].numpy() == d["change"]).all() and set(np.unique(s["label"].numpy())) <= {0, 1}
    train, test = SECOND(root, "train", seed=1), SECOND(root, "test", seed=1)
    assert len(train) == 8 and len(test) == 2 and not set(train.ids) & set(test.ids)
    assert train.ids == SECOND(root, "train", seed=1).ids
    import torch.utils.data

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["t1"]["rgb"].shape == (2, 3, 16, 16) and batch["label"].shape == (2, 16, 16)


def test_second_split_folders(tmp_path):
    make_second(tmp_path / "train", n=3)
    make_second(tmp_path / "test", n=2)
    assert len(SECOND(tmp_path, "train")) == 3 and len(SECOND(tmp_path, "test")) == 2


def test_second_bad_inputs(second):
    root, _ = second
    (root / "label2" / "00004.png").unlink()
    with pytest.raises(DataError, match=r"label2/00004\.png: file not found \(partner of .*im1/00004\.png\)"):
        SECOND(root)
    write_pil(root / "label2" / "00004.png", rand_u8(np.random.default_rng(0), 3, 8, 8))
    with pytest.raises(DataError, match=r"label2/00004\.png: size 8x8 differs from its partner .*im1/00004\.png"):
        SECOND(root)
    lab = SECOND_PALETTE.encode(np.zeros((16, 16), np.int64))
    lab[:, 0, 0] = (1, 2, 3)
    write_pil(root / "label2" / "00004.png", lab)
    ds = SECOND(root)
    with pytest.raises(DataError, match=r"label2/00004\.png: 1 pixel.*\(1,2,3\)"):
        ds[4]
    s = SECOND(root, unknown_colors="ignore")[4]
    assert s["label"][0, 0] == 255 and s["label_t2"][0, 0] == 255
    write_pil(root / "im2" / "00099.png", rand_u8(np.random.default_rng(0), 3, 16, 16))
    with pytest.raises(DataError, match=r"im2/00099\.png: no partner"):
        SECOND(root)
    (root / "im2").rename(root / "img2")
    with pytest.raises(DataError, match=r"(?s)im2: folder not found; expected layout.*label1/NNNNN\.png"):
        SECOND(root)


def test_us3d_resampled_msi_still_checked_against_rgb(tmp_path):
    make_us3d(tmp_path, [("JAX", 1, 1)])
    msi = tmp_path / "Track1-MSI-1" / "JAX_001_001_MSI.tif"
    write_tif(msi, np.ones((8, 4, 4), np.uint16), (400030.0, 3350000.0, 1.2))  # 30 m east of the RGB
    with pytest.raises(DataError, match=r"JAX_001_001_MSI\.tif: bounds .* differ from its partner .*JAX_001_001_RGB\.tif"):
        US3D(tmp_path, "all", modalities=("rgb", "ms"), resample_ms=True)
    write_tif(msi, np.ones((8, 4, 4), np.uint16), (400000.0, 3350000.0, 1.5))  # larger area
    with pytest.raises(DataError, match=r"JAX_001_001_MSI\.tif: bounds"):
        US3D(tmp_path, "all", modalities=("rgb", "ms"), resample_ms=True)
    import rasterio
    from affine import Affine

    with rasterio.open(msi, "w", driver="GTiff", count=8, height=4, width=4, dtype="uint16", crs="EPSG:32617",
                       transform=Affine(1.2, 0, 400000.0, 0, -1.2, 3350000.0)) as dst:
        dst.write(np.ones((8, 4, 4), np.uint16))
    with pytest.raises(DataError, match=r"JAX_001_001_MSI\.tif: CRS EPSG:32617 differs"):
        US3D(tmp_path, "all", modalities=("rgb", "ms"), resample_ms=True)
    write_tif(msi, np.ones((8, 4, 4), np.uint16), (400000.4, 3349999.6, 1.2))  # within half an MSI pixel
    assert US3D(tmp_path, "all", modalities=("rgb", "ms"), resample_ms=True)[0]["ms"].shape == (8, 16, 16)
