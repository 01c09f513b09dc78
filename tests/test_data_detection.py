"""Detection labels of the prepared sample: the oriented boxes of the Atlanta footprints and the
NEON tree crowns (deepforest VOC XML), their tile rules, the crop rule, and bad annotations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shapely
import torch
from data_fakes import NEON_BOXES, NEON_IMAGES, SMALL, make_raw, small_sources, voc_xml
from shapely.geometry import box as shapely_box

from mssdf.config import from_dict
from mssdf.data import labels as L
from mssdf.data.footprints import leaks
from mssdf.data.index import read_index
from mssdf.data.io import DataError
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sample import SampleTiles, crop_objects
from mssdf.data.tasks import TASKS

CLASS_OF = {"Tree": 0, "Alive": 0, "Dead": 1}


def _cfg(raw, out, **kw):
    return from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(out), **SMALL, **kw})


def _pixels(inst: np.ndarray, i: int):
    """The union of instance ``i``'s pixel squares (shapely)."""
    rr, cc = np.nonzero(inst == i)
    return shapely.union_all([shapely_box(c, r, c + 1, r + 1) for r, c in zip(rr, cc)])


def _rotated_rectangle(shape, cx, cy, w, h, theta):
    """(H, W) int32: 1 where a pixel centre lies in the rectangle (a rasterised rotated footprint)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    return ((np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)).astype(np.int32)


def _same_rectangle(a, b, tol=1e-6):
    """Two (5,) OBBs describe the same rectangle (the same corners, in any order)."""
    pa, pb = (L.obb_polygons(np.asarray(x, np.float64)[None])[0] for x in (a, b))
    d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    return bool((d.min(1) < tol).all() and (d.min(0) < tol).all())


# ----------------------------------------------------------------------------- oriented boxes
def test_axis_aligned_footprint_gets_its_horizontal_box_at_angle_zero():
    inst = np.zeros((20, 30), np.int32)
    inst[3:8, 10:22] = 1  # 12 wide, 5 high
    inst[12:18, 2:5] = 2  # 3 wide, 6 high: taller than wide
    obb, poly = L.oriented_boxes_from_instances(inst, min_pixels=4)
    np.testing.assert_allclose(obb, [[16, 5.5, 12, 5, 0], [3.5, 15, 3, 6, 0]], atol=1e-5)
    hbb = L.boxes_from_instances(inst, min_pixels=4)
    np.testing.assert_allclose(np.c_[poly.min(1), poly.max(1)], hbb, atol=1e-5)  # corners span the box
    assert obb.dtype == np.float32 and poly.shape == (2, 4, 2)


@pytest.mark.parametrize("theta_deg", [30.0, -20.0, 60.0, 100.0, 45.0])
def test_oriented_box_contains_every_pixel_and_has_minimum_area(theta_deg):
    theta = math.radians(theta_deg)
    inst = _rotated_rectangle((60, 60), 30.3, 29.6, 36.0, 12.0, theta)
    inst[2:5, 2:6] = 2  # a second instance, later in id order
    obb, poly = L.oriented_boxes_from_instances(inst, min_pixels=5)
    assert len(obb) == len(L.boxes_from_instances(inst, min_pixels=5)) == 2
    pixels = _pixels(inst, 1)
    rect = shapely.Polygon(poly[0])
    assert rect.buffer(1e-3).contains(pixels)  # every pixel square inside
    # the minimum area: no larger than shapely's minimum rotated rectangle of the same pixels, nor than
    # any rectangle over a fine sweep of angles, and at least the pixels' convex hull
    assert rect.area <= shapely.minimum_rotated_rectangle(pixels).area + 1e-3
    corners = np.asarray(pixels.convex_hull.exterior.coords)
    sweep = []
    for a in np.radians(np.arange(0.0, 90.0, 0.05)):
        u = corners @ [math.cos(a), math.sin(a)]
        v = corners @ [-math.sin(a), math.cos(a)]
        sweep.append(np.ptp(u) * np.ptp(v))
    assert rect.area <= min(sweep) + 1e-3 and rect.area >= pixels.convex_hull.area - 1e-3
    assert obb[0, 2] * obb[0, 3] == pytest.approx(rect.area, rel=1e-5)
    # the rectangle's orientation is the footprint's (modulo a quarter turn), theta normalised
    assert -math.pi / 4 <= obb[0, 4] < math.pi / 4
    expect = L.normalize_obb(np.array([[30.3, 29.6, 36.0, 12.0, theta]]))[0]
    assert abs(obb[0, 4] - expect[4]) < math.radians(3) or abs(abs(obb[0, 4] - expect[4]) - math.pi / 2) < math.radians(3)
    # the horizontal box is the bounds of the same pixels, inside the oriented box's bounds
    hbb = L.boxes_from_instances(inst, min_pixels=5)[0]
    np.testing.assert_allclose(hbb, pixels.bounds)
    assert (poly[0].min(0) <= hbb[:2] + 1e-4).all() and (poly[0].max(0) >= hbb[2:] - 1e-4).all()
    # the polygon and the cx, cy, w, h, theta are one rectangle
    np.testing.assert_allclose(L.obb_polygons(obb[:1].astype(np.float64))[0], poly[0], atol=1e-4)


def test_oriented_boxes_follow_the_min_pixels_rule_and_id_order():
    inst = np.zeros((30, 30), np.int32)
    inst[1:3, 1:3] = 5  # 4 px: below min_pixels
    inst[10:20, 5:9] = 2
    inst[22:28, 20:29] = 7
    obb, poly = L.oriented_boxes_from_instances(inst, min_pixels=8)
    hbb = L.boxes_from_instances(inst, min_pixels=8)
    assert len(obb) == len(poly) == len(hbb) == 2
    np.testing.assert_allclose(obb[:, :2], (hbb[:, :2] + hbb[:, 2:]) / 2, atol=1e-5)  # ids 2 then 7
    empty = L.oriented_boxes_from_instances(np.zeros((5, 5), np.int32))
    assert empty[0].shape == (0, 5) and empty[1].shape == (0, 4, 2)


def test_theta_normalisation_keeps_the_rectangle():
    rng = np.random.default_rng(0)
    obb = np.c_[rng.uniform(0, 50, (200, 2)), rng.uniform(1, 20, (200, 2)), rng.uniform(-10, 10, 200)]
    edge = np.array([[0, 0, 4, 2, math.pi / 4], [0, 0, 4, 2, -math.pi / 4], [0, 0, 4, 2, math.pi / 2],
                     [0, 0, 4, 2, -math.pi / 2], [0, 0, 4, 2, math.pi], [0, 0, 4, 2, np.nextafter(-math.pi / 4, -1)],
                     [0, 0, 4, 2, np.nextafter(math.pi / 4, -1)], [0, 0, 4, 2, 3 * math.pi / 4]])
    obb = np.r_[obb, edge]
    out = L.normalize_obb(obb)
    assert ((out[:, 4] >= -math.pi / 4) & (out[:, 4] < math.pi / 4)).all()
    assert all(_same_rectangle(a, b) for a, b in zip(obb, out))
    np.testing.assert_allclose(out[-8:-6], [[0, 0, 2, 4, -math.pi / 4], [0, 0, 4, 2, -math.pi / 4]])  # pi/4: sides swapped
    np.testing.assert_allclose(out[-6:-3, 2:], [[2, 4, 0], [2, 4, 0], [4, 2, 0]], atol=1e-12)
    np.testing.assert_allclose(L.normalize_obb(out[:200]), out[:200], atol=1e-12)  # idempotent (off the boundary)


def test_polygon_to_obb_inverts_obb_polygons():
    obb = L.normalize_obb(np.array([[10.0, 5.0, 8.0, 3.0, 0.3], [2.0, 3.0, 1.0, 6.0, -0.7]]))
    for o, p in zip(obb, L.obb_polygons(obb)):
        np.testing.assert_allclose(L.polygon_to_obb(p), o, atol=1e-9)


# ----------------------------------------------------------------------------- the crop rule
def test_crop_keeps_objects_whose_oriented_centre_stays_inside():
    objects = {
        "boxes": np.array([[2, 2, 10, 10], [14, 0, 30, 6], [40, 40, 50, 50], [8, 8, 20, 20]], np.float32),
        "box_labels": np.array([0, 1, 0, 1]),
        "obb": np.array([[6, 6, 8, 8, 0], [22, 3, 16, 6, 0], [45, 45, 10, 10, 0], [14, 14, 12, 6, 0.5]], np.float32),
    }
    out = crop_objects(objects, row=0, col=0, size=16)
    # object 1: its box reaches into the crop, its centre (22, 3) does not -> dropped; object 2: outside
    np.testing.assert_array_equal(out["boxes"], [[2, 2, 10, 10], [8, 8, 16, 16]])  # clipped
    np.testing.assert_array_equal(out["box_labels"], [0, 1])
    np.testing.assert_array_equal(out["obb"], objects["obb"][[0, 3]])  # shifted by (0, 0), not clipped
    moved = crop_objects(objects, row=4, col=8, size=16)  # crop x in [8, 24), y in [4, 20)
    # object 0: centre (-2, 2); object 1: box still reaches in, centre (14, -1): both dropped
    np.testing.assert_array_equal(moved["box_labels"], [1])
    np.testing.assert_allclose(moved["obb"], [[6, 10, 12, 6, 0.5]])
    np.testing.assert_allclose(moved["boxes"], [[0, 4, 12, 16]])
    edge = crop_objects(objects, row=3, col=8, size=16)  # object 1's centre (14, 0) on the crop's top edge: kept
    np.testing.assert_array_equal(edge["box_labels"], [1, 1])
    np.testing.assert_allclose(edge["obb"][:, :2], [[14, 0], [6, 11]])
    without = crop_objects({k: objects[k] for k in ("boxes", "box_labels")}, row=0, col=0, size=16)
    np.testing.assert_array_equal(without["box_labels"], [0, 1, 1])  # horizontal boxes only: any area left


# ----------------------------------------------------------------------------- tree boxes in tiles
def test_box_in_window_rule():
    boxes = np.array([[10, 20, 20, 28], [2, 2, 14, 14], [15.5, 0, 30, 3], [0, 0, 4, 4]], np.float64)
    labels = np.array([0, 1, 0, 1])
    left, ll = L.boxes_in_window(boxes, labels, row=16, col=0, size=16)  # 60 % of box 0 inside: kept, clipped
    np.testing.assert_array_equal(left, [[10, 4, 16, 12]])
    np.testing.assert_array_equal(ll, [0])
    right, _ = L.boxes_in_window(boxes, labels, row=16, col=16, size=16)  # the other 40 %: dropped
    assert len(right) == 0
    half, _ = L.boxes_in_window(np.array([[12, 0, 20, 4]]), [0], row=0, col=16, size=16)  # exactly one half: kept
    np.testing.assert_array_equal(half, [[0, 0, 4, 4]])
    thin, _ = L.boxes_in_window(np.array([[15.5, 0, 16.2, 3]]), [0], row=0, col=0, size=16)  # 71 % inside, 0.5 px wide
    assert len(thin) == 0
    top, tl = L.boxes_in_window(boxes, labels, row=0, col=0, size=16)
    np.testing.assert_array_equal(top, [[2, 2, 14, 14], [0, 0, 4, 4]])  # input order; box 2: 3 % inside
    np.testing.assert_array_equal(tl, [1, 1])
    # past the scene border (a padded window): clipped to the scene extent too
    past, _ = L.boxes_in_window(np.array([[20, 2, 30, 6]]), [0], row=0, col=16, size=16, extent=(32, 26))
    assert len(past) == 1 and past[0, 2] == 10  # 60 % inside the scene part of the window


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_raw(tmp_path_factory.mktemp("det") / "raw")


@pytest.fixture(scope="module")
def whole(raw, tmp_path_factory):
    """The NEON fakes with one 32 px tile per scene (res 0.2: the whole 64 px image)."""
    out = tmp_path_factory.mktemp("whole") / "out"
    prepare(_cfg(raw, out, sources=small_sources("neon", neon={"tile": 32, "stride": 32})), log=None)
    return out


@pytest.fixture(scope="module")
def small(raw, tmp_path_factory):
    """Every source of the fakes in small tiles (NEON: four 16 px tiles per scene)."""
    out = tmp_path_factory.mktemp("small") / "out"
    prepare(_cfg(raw, out), log=None)
    return out


def _scene_of(name: str) -> str:
    return "neon_" + name.rsplit(".", 1)[0].lower().replace("2019_", "").replace("_image", "")


def test_whole_scene_tiles_hold_every_xml_box_scaled(whole):
    rows = [r for r in read_index(whole) if r["task"] == "detection_trees"]
    assert len(rows) == 4 and {r["label_kind"] for r in rows} == {"real"}
    for name in NEON_IMAGES:
        (row,) = [r for r in rows if r["scene"] == _scene_of(name)]
        expect = np.array([b for _, b in NEON_BOXES[name]], np.float32) / 2  # res 0.2 m = 2 native pixels
        classes = [CLASS_OF[n] for n, _ in NEON_BOXES[name]]
        data = json.loads((whole / row["files"]["boxes"]).read_text())
        np.testing.assert_array_equal(data["boxes_xyxy"], expect)
        assert data["box_labels"] == classes and row["n_boxes"] == len(expect)
        for backend in ("npy", "tif"):
            ds = SampleTiles(whole, "detection_trees", row["split"], backend=backend)
            (s,) = [ds[i] for i in range(len(ds)) if ds.rows[i]["tile"] == row["tile"]]
            np.testing.assert_array_equal(s["boxes"].numpy(), expect)
            assert s["box_labels"].tolist() == classes and s["box_labels"].dtype == torch.int64 and "obb" not in s
    per_class = np.bincount(sum((json.loads((whole / r["files"]["boxes"]).read_text())["box_labels"] for r in rows), []),
                            minlength=2)
    xml = np.bincount([CLASS_OF[n] for objs in NEON_BOXES.values() for n, _ in objs], minlength=2)
    np.testing.assert_array_equal(per_class, xml)
    assert TASKS["detection_trees"].classes == ("tree", "dead tree")


def test_box_straddling_a_tile_border_goes_to_the_tile_holding_most_of_it(small):
    rows = {(r["scene"], r["row"], r["col"]): r for r in read_index(small) if r["task"] == "detection_trees"}
    assert len(rows) == 16
    for name in NEON_IMAGES:
        def boxes(r0, c0, name=name):
            row = rows[(_scene_of(name), r0, c0)]
            data = json.loads((small / row["files"]["boxes"]).read_text())
            assert row["n_boxes"] == len(data["boxes_xyxy"]) == len(data["box_labels"])
            return data["boxes_xyxy"]

        assert boxes(0, 0) == [[1.5, 2.5, 13.5, 14.5]]  # xml (3, 5, 27, 29) / 2
        assert boxes(16, 0) == [[10, 4, 16, 12]]  # 60 % of (10, 20, 20, 28): kept, clipped
        assert boxes(16, 16) == [[2, 2, 14, 14]]  # the other 40 % of it: dropped
        assert boxes(0, 16) == ([[4, 2, 14, 11]] if name == "SOAP_061.png" else [])
    soap = rows[(_scene_of("SOAP_061.png"), 16, 16)]
    assert json.loads((small / soap["files"]["boxes"]).read_text())["box_labels"] == [1]  # Dead -> dead tree


def test_sample_reads_labels_and_obb_on_both_backends(small):
    for task, has_obb in (("detection_trees", False), ("detection", True)):
        for split in ("train", "val", "test"):
            a, b = (SampleTiles(small, task, split, backend=k) for k in ("npy", "tif"))
            for i in range(len(a)):
                sa, sb = a[i], b[i]
                assert ("obb" in sa) == has_obb and sa.keys() == sb.keys()
                for k in ("boxes", "box_labels", *(("obb",) if has_obb else ())):
                    assert torch.equal(sa[k], sb[k]), (task, k)
                assert len(sa["boxes"]) == len(sa["box_labels"]) == a.rows[i]["n_boxes"]
                if has_obb:
                    assert sa["obb"].shape == (len(sa["boxes"]), 5) and sa["obb"].dtype == torch.float32
    # the Atlanta fakes are axis-aligned squares: each oriented box is its horizontal box at angle 0
    ds = SampleTiles(small, "detection", "train")
    n = 0
    for i in range(len(ds)):
        s = ds[i]
        boxes, obb = s["boxes"].numpy(), s["obb"].numpy()
        np.testing.assert_allclose(obb[:, :2], (boxes[:, :2] + boxes[:, 2:]) / 2, atol=1e-5)
        np.testing.assert_allclose(obb[:, 2:4], boxes[:, 2:] - boxes[:, :2], atol=1e-5)
        assert (obb[:, 4] == 0).all()
        data = json.loads((small / ds.rows[i]["files"]["boxes"]).read_text())
        np.testing.assert_allclose(np.asarray(data["obb_polygons"]).reshape(-1, 4, 2),
                                   L.obb_polygons(obb.astype(np.float64)), atol=1e-4)
        n += len(obb)
    assert n > 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn())))
    assert isinstance(batch["obb"], list) and isinstance(batch["box_labels"], list)


def test_sample_crop_applies_the_crop_rule(small):
    for task, size in (("detection", 12), ("detection_trees", 4)):  # tiles of 32 and 16 px
        full = SampleTiles(small, task, "train")
        crop = SampleTiles(small, task, "train", crop=size, random_crop=True, seed=5)
        seen = 0
        for i in range(len(full)):
            s, c = full[i], crop[i]
            r0, c0 = c["meta"]["row"] - full.rows[i]["row"], c["meta"]["col"] - full.rows[i]["col"]
            objects = {k: s[k].numpy() for k in ("boxes", "box_labels", "obb") if k in s}
            expect = crop_objects(objects, r0, c0, size)
            for k, v in expect.items():
                np.testing.assert_array_equal(c[k].numpy(), v)
            seen += len(s["boxes"]) - len(c["boxes"])
        assert seen > 0, task  # some objects left their crops


def test_detection_trees_validation_tiles_are_guarded_from_pretraining(small):
    index = read_index(small)
    train = [r for r in index if r["task"] == "pretrain_neon" and r["split"] == "train"]
    assert leaks(small, train, index) == []
    evaluation = [r for r in index if r["task"] == "pretrain_neon" and r["split"] != "train"]
    assert evaluation
    found = leaks(small, evaluation, index)
    assert {e.task for _, e in found} == {"detection_trees"}  # the only labelled task on NEON tiles


def test_tasks_json_and_readme_list_the_tree_task(small):
    tasks = json.loads((small / "tasks.json").read_text())
    assert tasks["detection_trees"]["source"] == "neon" and tasks["detection_trees"]["label_kind"] == "real"
    assert tasks["detection"]["targets"] == ["boxes", "box_labels", "obb"]
    assert "`detection_trees` (neon): **real** - deepforest NEON tree crowns" in (small / "README.md").read_text()
    summary = json.loads((small / "summary.json").read_text())
    assert summary["scene_notes"]["neon_soap_061"]["tree_boxes"] == {"tree": 2, "dead tree": 2}


def test_fetch_extracts_every_neon_image_with_its_annotation():
    from mssdf.data.fetch import ARCHIVES
    from mssdf.data.sources import NEON

    (archive,) = [a for a in ARCHIVES if a.source == "deepforest"]
    members = set(archive.members.values())
    for rel in NEON.raw_files:
        name = rel.split("/", 1)[1]
        assert name in members and name.rsplit(".", 1)[0] + ".xml" in members


# ----------------------------------------------------------------------------- bad annotations
def _soap(raw, objects=None, filename="SOAP_061.png", size=(64, 64), bndbox=None, text=None):
    path = raw / "deepforest/SOAP_061.xml"
    path.write_text(text if text is not None else voc_xml(filename, size, objects or NEON_BOXES["SOAP_061.png"], bndbox))
    return path


@pytest.mark.parametrize("case, match", [
    (dict(filename="SOAP_062.png"), r"SOAP_061\.xml: an annotation without its image: <filename> 'SOAP_062\.png'"),
    (dict(objects=[("Dead", (10, 10, 20, 20)), ("Alive", (50, 40, 70, 60))]),
     r"SOAP_061\.xml: object 2 \('Alive'\) box \(50, 40, 70, 60\) lies outside its image .*SOAP_061\.png \(64x64 px\)"),
    (dict(objects=[("Dead", (-1, 10, 20, 20))]), r"SOAP_061\.xml: object 1 \('Dead'\) box .* lies outside its image"),
    (dict(objects=[("Dead", (10, 10, 10, 20))]), r"SOAP_061\.xml: object 1 \('Dead'\): degenerate box .* zero area"),
    (dict(objects=[("Dead", (10, 10, 20, 20)), ("Stump", (1, 1, 5, 5))]),
     r"SOAP_061\.xml: object 2 has unknown class name 'Stump'"),
    (dict(bndbox="<bndbox><xmin>1</xmin><ymin>x</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"),
     r"SOAP_061\.xml: object 1 \('Alive'\): malformed bndbox \(<ymin> is 'x'"),
    (dict(bndbox="<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"),
     r"SOAP_061\.xml: object 1 \('Alive'\): malformed bndbox \(<ymax> is None"),
    (dict(bndbox=""), r"SOAP_061\.xml: object 1 \('Alive'\): malformed bndbox \(no <bndbox>\)"),
    (dict(size=(64, 65)), r"SOAP_061\.xml: <size> 64x65 differs from its image .*SOAP_061\.png \(64x64 px\)"),
    (dict(text="<annotation><filename>SOAP_061.png</filename>"), r"SOAP_061\.xml: not a readable Pascal-VOC XML"),
])
def test_bad_annotation_fails_before_any_work_naming_the_file(tmp_path, case, match):
    raw = make_raw(tmp_path / "raw")
    _soap(raw, **case)
    with pytest.raises(DataError, match=match):
        prepare(_cfg(raw, tmp_path / "out", sources=small_sources("neon")), log=None)
    assert not (tmp_path / "out").exists()


def test_annotation_of_an_image_outside_the_source_is_refused(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "deepforest/other.png").write_bytes((raw / "deepforest/SOAP_061.png").read_bytes())
    (raw / "deepforest/other.xml").write_text(voc_xml("other.png", (64, 64), [("Tree", (1, 1, 9, 9))]))
    with pytest.raises(DataError, match=r"other\.xml: annotates 'other\.png', which is not one of the neon source's images"):
        prepare(_cfg(raw, tmp_path / "out", sources=small_sources("neon")), log=None)


def test_image_without_annotation_gets_no_tree_rows(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "deepforest/SOAP_061.xml").unlink()
    out = tmp_path / "out"
    prepare(_cfg(raw, out, sources=small_sources("neon")), log=None)
    rows = read_index(out)
    soap = _scene_of("SOAP_061.png")
    assert any(r["scene"] == soap for r in rows if r["task"] == "pretrain_neon")
    assert not any(r["scene"] == soap for r in rows if r["task"] == "detection_trees")
    assert len([r for r in rows if r["task"] == "detection_trees"]) == 12
    for split in ("train", "val", "test"):  # the cache stays aligned with tiles.json
        ds = SampleTiles(out, "detection_trees", split)
        for i in range(len(ds)):
            assert len(ds[i]["boxes"]) == ds.rows[i]["n_boxes"]
