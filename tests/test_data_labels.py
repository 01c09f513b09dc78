"""Labels: polygon rasterisation, boxes, mask/class mapping, synthetic change, derived classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.transform import Affine

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
