"""Labels: polygon rasterisation, boxes, mask/class mapping, synthetic change and the acquisition
differences of its after-image, derived classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.transform import Affine
from scipy import ndimage

from mssdf.config import ConfigError, from_dict
from mssdf.data import labels as L
from mssdf.data.io import DataError


def _square(x0, y0, s):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + s, y0], [x0 + s, y0 - s], [x0, y0 - s], [x0, y0]]]}


def test_rasterise_and_boxes(tmp_path):
    tf = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
    feats = [{"geometry": _square(1002.0, 1998.0, 5.0)}, {"geometry": _square(1010.0, 1990.0, 2.0)}]
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats,
                                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}}}))
    features, crs = L.read_geojson(path)
    assert crs == "EPSG:32616"
    inst = L.rasterise_features(features, crs, crs, tf, (40, 40))
    assert (inst == 1).sum() == 100 and (inst == 2).sum() == 16
    boxes = L.boxes_from_instances(inst, min_pixels=8)
    np.testing.assert_array_equal(boxes, [[4, 4, 14, 14], [20, 20, 24, 24]])
    assert L.boxes_from_instances(inst, min_pixels=50).shape == (1, 4)


def test_reprojected_lines_from_crs84():
    tf = Affine(1e-5, 0, -115.0, 0, -1e-5, 36.0)
    feats = [{"geometry": {"type": "LineString", "coordinates": [[-115.0, 35.9998], [-114.9996, 35.9998]]}}]
    inst = L.rasterise_features(feats, "EPSG:4326", "EPSG:4326", tf, (40, 50), line_width_px=1)
    assert (inst[19:22, 1:39] > 0).all() and inst[:17].sum() == 0


def test_mask_to_label_and_unknown_value():
    m = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(L.mask_to_label(m, "m.tif"), [[0, 1], [1, 0]])
    with pytest.raises(DataError, match=r"roads\.tif: unknown label value\(s\) \[128\]"):
        L.mask_to_label(np.array([[0, 128]], np.uint8), "roads.tif")


def test_map_asprs_known_ignored_unknown():
    cls = np.array([[2, 5, 65], [6, 1, 0]], np.uint8)
    np.testing.assert_array_equal(L.map_asprs(cls, "x.laz"), [[0, 3, 255], [4, 255, 255]])
    with pytest.raises(DataError, match=r"x\.laz: unknown ASPRS class code\(s\) \[13\]"):
        L.map_asprs(np.array([[13]], np.uint8), "x.laz")


def test_derived_scene_classes():
    np.testing.assert_array_equal(L.fraction_class([0.0, 0.02, 0.1, 0.5], (0.02, 0.15)), [0, 1, 1, 2])
    lab = np.full((10, 10), 255, np.uint8)
    assert L.dominant_class(lab, 7) == -1
    lab[:6] = 3
    lab[6:] = 1
    assert L.dominant_class(lab, 7) == 3


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_change_mask_is_exact(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 1000, (2, 64, 64)).astype(np.float32)
    inst = np.zeros((64, 64), np.int32)
    inst[5:15, 5:15] = 1
    inst[40:50, 30:42] = 2
    inst[20:26, 50:58] = 3
    after, mask, recs = L.synthetic_change(img, inst, np.random.default_rng(seed), n_changes=3, max_shift=16)
    changed = np.any(after != img, 0)
    assert not changed[mask == 0].any()  # identical outside the mask, bit for bit
    assert changed[mask == 1].mean() > 0.9  # and (nearly) every masked pixel really changed
    assert len(recs) >= 1 and mask.sum() > 0
    # each op's footprint is in the mask
    for rec in recs:
        fp = inst == rec["object"]
        if rec["op"] in ("remove", "shift"):
            assert mask[fp].all()
        if rec["op"] in ("paste", "shift"):
            dy, dx = rec["offset"]
            r, c = np.nonzero(fp)
            assert mask[r + dy, c + dx].all()
            np.testing.assert_array_equal(after[:, r + dy, c + dx], img[:, r, c])  # object copied exactly


def test_synthetic_change_without_objects_is_no_change():
    img = np.ones((1, 16, 16), np.float32)
    after, mask, recs = L.synthetic_change(img, np.zeros((16, 16), np.int32), np.random.default_rng(0))
    assert mask.sum() == 0 and recs == [] and np.array_equal(after, img)


# ----------------------------------------------------------------------------- acquisition shift
def _change_pair(seed: int, bands: int = 1, shift: L.AcquisitionShift | None = L.AcquisitionShift()):
    """A textured (C, 64, 64) before-image, the edited after-image, the after-image with the
    acquisition differences, the mask and the record; as prepare draws them: the edit from
    ``seed``, the acquisition differences from their own stream ``[seed, 1]``."""
    rng = np.random.default_rng(1000 + seed)
    img = np.stack([ndimage.gaussian_filter(b, 1.0) for b in rng.uniform(100, 1000, (bands, 64, 64))]).astype(np.float32)
    inst = np.zeros((64, 64), np.int32)
    inst[5:15, 5:15] = 1
    inst[40:50, 30:42] = 2
    inst[20:26, 50:58] = 3
    after, mask, recs = L.synthetic_change(img, inst, np.random.default_rng(seed), n_changes=3, max_shift=16)
    t2, rec = L.acquisition_shift(after, np.random.default_rng([seed, 1]), shift)
    return img, after, t2, mask, rec


@pytest.mark.parametrize("seed", range(4))
def test_acquisition_shift_changes_every_pixel_but_not_the_mask(seed):
    img, after, t2, mask, rec = _change_pair(seed)
    assert mask.sum() > 0
    outside = mask == 0
    assert t2.dtype == np.float32 and t2.shape == img.shape
    # the key property: the after-image differs from the before-image outside the mask too
    diff = np.abs(t2 - img)[0]
    assert (diff[outside] > 0).mean() > 0.99
    assert diff[outside].mean() > 0.02 * img.std()
    # ... so a thresholded pixel difference no longer gives the mask exactly
    raw = np.abs(after - img)[0]
    assert ((raw > 0) == (mask == 1)).all()  # before the shift it did
    best = max(((diff > q) == (mask == 1)).mean() for q in np.quantile(diff, np.linspace(0.5, 0.99, 50)))
    assert best < 0.999
    # the mask is the edit's, whatever the shift does: same edit stream with the shift off
    _, _, t2_off, mask_off, _ = _change_pair(seed, shift=L.AcquisitionShift(enabled=False))
    np.testing.assert_array_equal(mask, mask_off)
    np.testing.assert_array_equal(t2_off, after.astype(np.float32))
    assert set(rec) >= {"gain", "offset", "gamma", "gradient", "shift_px", "blur_sigma", "noise"}


def test_acquisition_shift_disabled_is_the_old_pair():
    img, after, t2, mask, rec = _change_pair(0, shift=L.AcquisitionShift(enabled=False))
    assert rec == {}
    assert not np.any(t2 != img, 0)[mask == 0].any()  # identical outside the mask, bit for bit
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    out, _ = L.acquisition_shift(after, rng, L.AcquisitionShift(enabled=False))
    assert rng.bit_generator.state == state and out is not after  # no draw, a copy


def test_acquisition_shift_is_seeded():
    img = np.random.default_rng(0).uniform(0, 500, (2, 32, 32)).astype(np.float32)
    cfg = L.AcquisitionShift()
    a, ra = L.acquisition_shift(img, np.random.default_rng([7, 1]), cfg)
    b, rb = L.acquisition_shift(img, np.random.default_rng([7, 1]), cfg)
    c, rc = L.acquisition_shift(img, np.random.default_rng([8, 1]), cfg)
    np.testing.assert_array_equal(a, b)
    assert ra == rb and json.loads(json.dumps(ra)) == ra  # JSON-ready
    assert not np.array_equal(a, c) and ra != rc


def test_acquisition_shift_keeps_nodata_and_sign():
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 50, (2, 40, 40)).astype(np.float32)
    img[:, :3] = 0.0  # dark pixels: a negative offset would push them below 0
    img[:, 30:, 25:] = np.nan  # a padded corner
    img[1, 10, 10] = np.nan  # one no-data pixel in one band only
    cfg = L.AcquisitionShift(offset=1.0, noise=0.2)
    for seed in range(5):
        out, _ = L.acquisition_shift(img, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(img))  # NaN exactly where they were
        assert out.dtype == np.float32 and np.nanmin(out) >= 0.0
    signed = img - 25.0  # a signed input is not clipped
    mins = [np.nanmin(L.acquisition_shift(signed, np.random.default_rng(s), cfg)[0]) for s in range(5)]
    assert min(mins) < -25.0 * 0.9


def test_acquisition_shift_components():
    h = w = 32
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = (10.0 + 2.0 * xx + 3.0 * yy)[None].astype(np.float32)
    off = dict(gain=(1.0, 1.0), hue=0.0, offset=0.0, gamma=(1.0, 1.0), gradient=0.0, shift_px=0.0,
               blur_sigma=(0.0, 0.0), noise=0.0)
    same, rec = L.acquisition_shift(ramp, np.random.default_rng(0), L.AcquisitionShift(**off))
    np.testing.assert_allclose(same, ramp, rtol=1e-6)  # every nuisance at zero: the identity
    # misregistration: a linear image moves by the recorded sub-pixel shift (interior pixels)
    moved, rec = L.acquisition_shift(ramp, np.random.default_rng(1), L.AcquisitionShift(**{**off, "shift_px": 0.5}))
    dy, dx = rec["shift_px"]
    assert 0 < max(abs(dy), abs(dx)) <= 0.5
    np.testing.assert_allclose(moved[0, 2:-2, 2:-2], ramp[0, 2:-2, 2:-2] - 2.0 * dx - 3.0 * dy, atol=1e-3)
    # gain + offset: linear per band; hue: per-band gains differ on a multi-band image only
    img = np.random.default_rng(2).uniform(10, 100, (3, h, w)).astype(np.float32)
    cfg = L.AcquisitionShift(**{**off, "gain": (0.8, 1.2), "hue": 0.1, "offset": 0.3})
    out, rec = L.acquisition_shift(img, np.random.default_rng(3), cfg)
    for b in range(3):
        np.testing.assert_allclose(out[b], rec["gain"][b] * img[b] + rec["offset"][b] * img[b].std(dtype=np.float64),
                                   rtol=1e-4)
    assert len(set(rec["gain"])) == 3 and abs(np.mean(rec["gain"]) - rec["gain"][0]) > 0
    pan, rec1 = L.acquisition_shift(img[:1], np.random.default_rng(3), cfg)
    assert len(rec1["gain"]) == 1 and 0.8 <= rec1["gain"][0] <= 1.2  # one band: the hue is the gain
    # illumination gradient: a smooth multiplicative plane of amplitude <= gradient
    flat = np.full((1, h, w), 100.0, np.float32)
    lit, rec = L.acquisition_shift(flat, np.random.default_rng(4), L.AcquisitionShift(**{**off, "gradient": 0.1}))
    factor = lit[0] / 100.0
    assert 0 < np.abs(factor - 1).max() <= 0.1 + 1e-6 and np.isclose(np.abs(factor - 1).max(), rec["gradient"], atol=1e-5)
    assert np.abs(np.diff(factor, 2, axis=1)).max() < 1e-5  # a plane: no curvature
    # gamma: monotone, keeps the tile's value range
    g, rec = L.acquisition_shift(ramp, np.random.default_rng(5), L.AcquisitionShift(**{**off, "gamma": (0.7, 0.8)}))
    assert rec["gamma"] < 1 and np.all(np.diff(g[0], axis=1) > 0)
    np.testing.assert_allclose([g.min(), g.max()], [ramp.min(), ramp.max()], rtol=1e-5)


@pytest.mark.parametrize("field, value", [("gain", (1.2, 0.9)), ("gain", (0.0, 1.0)), ("gamma", (-1.0, 1.0)),
                                          ("blur_sigma", (-0.1, 0.5)), ("offset", -0.2), ("noise", -1.0),
                                          ("gradient", 1.5), ("shift_px", -0.5), ("hue", 0.9)])
def test_acquisition_shift_bad_range_names_its_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        L.AcquisitionShift(**{field: value})
    from mssdf.data.prepare import PrepareConfig

    data = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match=rf"^prepare\.change_shift\.{field}: "):
        from_dict(PrepareConfig, {"change_shift": {field: data}}, "prepare")


def test_change_shift_unknown_key_fails():
    from mssdf.data.prepare import PrepareConfig

    with pytest.raises(ConfigError, match=r"unknown key\(s\) prepare\.change_shift\.sigma "):
        from_dict(PrepareConfig, {"change_shift": {"sigma": 0.5}}, "prepare")
    cfg = from_dict(PrepareConfig, {"change_shift": {"enabled": False, "gain": [0.9, 1.1]}}, "prepare")
    assert cfg.change_shift == L.AcquisitionShift(enabled=False, gain=(0.9, 1.1))
    assert PrepareConfig().change_shift == L.AcquisitionShift()


def test_one_ignore_index():
    # one owner: only mssdf.data.io defines the ignore label; every other module imports it
    import ast
    from pathlib import Path

    from mssdf.data import io
    from mssdf.data.readers import IGNORE_INDEX as readers_ignore
    from mssdf.data.readers import colors

    assert io.IGNORE_INDEX == 255 and readers_ignore is io.IGNORE_INDEX
    package = Path(io.__file__).resolve().parents[1]
    owners = []
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            for t in targets:
                # a module-level IGNORE* name bound to a literal or an alias of another name
                if isinstance(t, ast.Name) and t.id.startswith("IGNORE") and isinstance(value, (ast.Constant, ast.Name)):
                    owners.append(f"{path.relative_to(package)}:{t.id}")
    assert owners == ["data/io.py:IGNORE_INDEX"], owners
    assert colors.ColorPalette.__dataclass_fields__["ignore_index"].default == io.IGNORE_INDEX
    from mssdf.data.readers import hrpairs, tiles, us3d

    assert hrpairs.nodata_to_nan is tiles.nodata_to_nan is us3d.nodata_to_nan is io.nodata_to_nan  # one no-data rule


def test_one_band_count_check(tmp_path):
    import numpy as np
    import pytest
    from data_fakes import write_tif
    from PIL import Image

    from mssdf.data.align import align_pair
    from mssdf.data.io import DataError, raster_info, read_raster
    from mssdf.data.readers.base import header, image_header, read_image

    p = write_tif(tmp_path / "x.tif", np.zeros((2, 4, 4), np.uint8), None, None)
    q = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(q)
    msg = r"x\.(tif|png): has (2|3) band\(s\), expected 1 or 4"
    for call in (lambda: raster_info(p, expected_bands=(1, 4)), lambda: read_raster(p, expected_bands=(1, 4)),
                 lambda: header(p, (1, 4)), lambda: image_header(q, (1, 4)), lambda: read_image(q, (1, 4)),
                 lambda: read_image(p, (1, 4))):
        with pytest.raises(DataError, match=msg):
            call()
    with pytest.raises(DataError, match=r"x\.tif: has 2 band\(s\), expected 1"):
        align_pair(p, p, 1.0, 1, 4)
