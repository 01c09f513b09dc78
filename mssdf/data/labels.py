"""Labels: rasterised vector footprints, mask/class mapping, boxes, and the DERIVED labels.

Real labels: building footprints (Atlanta polygons -> mask and instance ids -> horizontal
boxes, :func:`boxes_from_instances`, and minimum-area oriented boxes,
:func:`oriented_boxes_from_instances`), tree-crown boxes (NEON, Pascal-VOC XML:
:func:`read_voc`, cut into tiles by :func:`boxes_in_window`), road masks (Las Vegas), ASPRS
lidar classes (IGN). Derived labels, marked as such in the
tile index: synthetic changes (:func:`synthetic_change`, whose after-image then gets the
differences of a second acquisition from :func:`acquisition_shift`) and scene classes
(:func:`fraction_class`, :func:`dominant_class`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from mssdf.config import ConfigError
from mssdf.data.io import IGNORE_INDEX, DataError


# ASPRS / LAS 1.4 codes -> training ids (what the IGN sample's classes become).
ASPRS_CLASSES: dict[int, tuple[int, str]] = {
    2: (0, "ground"),
    3: (1, "low vegetation"),
    4: (2, "medium vegetation"),
    5: (3, "high vegetation"),
    6: (4, "building"),
    9: (5, "water"),
    17: (6, "bridge"),
}
# Codes that are known but carry no class: 0 = no point / never classified, 1 =
# unclassified, 64-67 = IGN-specific (perennial above-ground, artefacts, virtual, other built).
ASPRS_IGNORE: tuple[int, ...] = (0, 1, 64, 65, 66, 67)


# ----------------------------------------------------------------------------- vectors
def read_geojson(path: str | Path) -> tuple[list[dict], str]:
    """Features and CRS (``EPSG:xxxx``; CRS84 = ``EPSG:4326``) of a GeoJSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
        features = data["features"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a GeoJSON FeatureCollection ({err})") from err
    name = ((data.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326")
    if "CRS84" in name:
        crs = "EPSG:4326"
    elif "EPSG" in name:
        crs = "EPSG:" + name.rstrip(":").split(":")[-1]
    else:
        raise DataError(f"{path}: unsupported CRS name {name!r}")
    return features, crs


def rasterise_features(
    features: Sequence[dict], feature_crs: str, crs: str, transform, shape: tuple[int, int], line_width_px: int = 0
) -> np.ndarray:
    """(H, W) int32 instance ids (feature index + 1; 0 = none), later features on top.

    Geometries are reprojected from ``feature_crs`` to the raster ``crs``. Lines are
    burnt 1 pixel wide and dilated by ``line_width_px`` if positive.
    """
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    shapes = []
    for i, feat in enumerate(features):
        geom = feat.get("geometry")
        if not geom:
            continue
        if feature_crs != crs:
            geom = transform_geom(feature_crs, crs, geom)
        shapes.append((geom, i + 1))
    if not shapes:
        return np.zeros(shape, np.int32)
    inst = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32", all_touched=False)
    if line_width_px > 0:
        grown = ndimage.grey_dilation(inst, size=(2 * line_width_px + 1,) * 2)
        inst = np.where(inst > 0, inst, grown)
    return inst


def boxes_from_instances(inst: np.ndarray, min_pixels: int = 16) -> np.ndarray:
    """(K, 4) float32 ``x0, y0, x1, y1`` pixel boxes (x1/y1 exclusive) of the instances in
    ``inst`` (H, W) with at least ``min_pixels`` visible pixels, in id order."""
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    keep = ids[counts >= min_pixels]
    if len(keep) == 0:
        return np.zeros((0, 4), np.float32)
    slices = ndimage.find_objects(inst, max_label=int(keep.max()))
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in (slices[i - 1] for i in keep)], np.float32)


# ----------------------------------------------------------------------------- oriented boxes
def normalize_obb(obb: np.ndarray) -> np.ndarray:
    """``(K, 5)`` ``cx, cy, w, h, theta`` → the same rectangles with ``theta`` in ``[-pi/4, pi/4)``.

    ``theta`` is the angle (radians) of the ``w`` side against the x axis in image axes (x
    right, y down: a positive angle turns clockwise on screen); a rectangle is the same
    after a half turn, and after a quarter turn with ``w`` and ``h`` swapped, so one
    ``theta`` in ``[-pi/4, pi/4)`` names each rectangle (the downstream detection heads'
    convention).
    """
    obb = np.asarray(obb, np.float64).reshape(-1, 5)
    cx, cy, w, h, t = obb.T
    t = np.mod(t + math.pi / 4, math.pi) - math.pi / 4  # [-pi/4, 3pi/4)
    swap = t >= math.pi / 4
    t = np.where(swap, t - math.pi / 2, t)
    again = t >= math.pi / 4  # only by rounding (np.mod can return the modulus itself)
    t, swap = np.where(again, t - math.pi / 2, t), swap ^ again
    return np.stack([cx, cy, np.where(swap, h, w), np.where(swap, w, h), t], 1)


def obb_polygons(obb: np.ndarray) -> np.ndarray:
    """``(K, 5)`` ``cx, cy, w, h, theta`` → ``(K, 4, 2)`` corners ``(x, y)``: the offsets
    ``(+w/2, +h/2), (-w/2, +h/2), (-w/2, -h/2), (+w/2, -h/2)`` turned by ``theta`` about the
    centre (the order of ``mssdf.downstream.detection.boxes.obb_to_poly``)."""
    obb = np.asarray(obb, np.float64).reshape(-1, 5)
    cx, cy, w, h, t = (v[:, None] for v in obb.T)
    dx = np.concatenate([w, -w, -w, w], 1) / 2
    dy = np.concatenate([h, h, -h, -h], 1) / 2
    cos, sin = np.cos(t), np.sin(t)
    return np.stack([cx + dx * cos - dy * sin, cy + dx * sin + dy * cos], -1)


def polygon_to_obb(corners: np.ndarray) -> np.ndarray:
    """``(4, 2)`` corners of a rectangle in order around it → ``(5,)`` normalised
    ``cx, cy, w, h, theta`` (:func:`normalize_obb`)."""
    p = np.asarray(corners, np.float64).reshape(4, 2)
    e1, e2 = p[1] - p[0], p[2] - p[1]
    obb = [*p.mean(0), math.hypot(*e1), math.hypot(*e2), math.atan2(e1[1], e1[0])]
    return normalize_obb(np.array([obb]))[0]


def pixel_hull_points(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(M, 2)`` ``(x, y)`` points whose convex hull is that of the union of the pixel squares
    ``[col, col + 1] x [row, row + 1]``: per row, the outer corners of its leftmost and
    rightmost pixel (the other corners lie between them)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    uniq, inv = np.unique(rows, return_inverse=True)
    lo = np.full(len(uniq), np.iinfo(np.int64).max)
    hi = np.full(len(uniq), np.iinfo(np.int64).min)
    np.minimum.at(lo, inv, cols)
    np.maximum.at(hi, inv, cols)
    r = uniq.astype(np.float64)
    xs = np.concatenate([lo, lo, hi + 1, hi + 1]).astype(np.float64)
    ys = np.concatenate([r, r + 1, r, r + 1])
    return np.stack([xs, ys], 1)


def minimum_rectangle(points: np.ndarray) -> np.ndarray:
    """The minimum-area rectangle enclosing ``points`` (M, 2), as a normalised ``(5,)``
    ``cx, cy, w, h, theta`` (:func:`normalize_obb`).

    A minimum-area enclosing rectangle has a side on an edge of the convex hull (Freeman and
    Shapira, 1975): the hull (shapely) is computed and every edge's direction tried, the
    smallest bounding rectangle in that direction kept (the rotating-calipers result; shapely's
    own ``minimum_rotated_rectangle`` is only minimum-area with GEOS >= 3.12, so it is not
    relied on). Points on a line, or one point, give a rectangle of zero height.
    """
    import shapely

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    hull = shapely.convex_hull(shapely.MultiPoint(pts))
    if hull.geom_type == "Polygon":
        xy = np.asarray(hull.exterior.coords, np.float64)[:-1]
    else:  # a segment or a point
        xy = np.asarray(hull.coords, np.float64)
    edges = np.roll(xy, -1, 0) - xy
    edges = edges[np.hypot(edges[:, 0], edges[:, 1]) > 0]
    if len(edges) == 0:  # one point
        return np.array([xy[0, 0], xy[0, 1], 0.0, 0.0, 0.0])
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    u = xy[None, :, 0] * cos + xy[None, :, 1] * sin  # (E, V) coordinates along each edge direction
    v = -xy[None, :, 0] * sin + xy[None, :, 1] * cos  # ... and across it
    w, h = u.max(1) - u.min(1), v.max(1) - v.min(1)
    k = int(np.argmin(w * h))
    uc, vc = (u[k].max() + u[k].min()) / 2, (v[k].max() + v[k].min()) / 2
    c, s = float(cos[k, 0]), float(sin[k, 0])
    out = normalize_obb(np.array([[uc * c - vc * s, uc * s + vc * c, w[k], h[k], angles[k]]]))[0]
    if abs(out[4]) < 1e-9:  # an axis-aligned side: exactly 0, not a rounding residue of pi/2
        out[4] = 0.0
    return out


def oriented_boxes_from_instances(inst: np.ndarray, min_pixels: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-area rectangles of the instances in ``inst`` (H, W): the same instances, in the
    same order, as :func:`boxes_from_instances` (at least ``min_pixels`` visible pixels, id order).

    Each rectangle is the smallest one holding the union of the instance's visible pixel
    squares (pixel ``(r, c)`` is the square ``[c, c + 1] x [r, r + 1]`` in ``x, y`` pixel
    coordinates, as the horizontal boxes count them): an axis-aligned footprint gives its
    horizontal box at ``theta = 0``.

    Returns:
        ``(K, 5)`` float32 ``cx, cy, w, h, theta`` (``theta`` in ``[-pi/4, pi/4)``,
        :func:`normalize_obb`) and ``(K, 4, 2)`` float32 corners (:func:`obb_polygons`).
    """
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    keep = ids[counts >= min_pixels]
    if len(keep) == 0:
        return np.zeros((0, 5), np.float32), np.zeros((0, 4, 2), np.float32)
    slices = ndimage.find_objects(inst, max_label=int(keep.max()))
    obb = []
    for i in keep:
        sl = slices[i - 1]
        rr, cc = np.nonzero(inst[sl] == i)
        obb.append(minimum_rectangle(pixel_hull_points(rr + sl[0].start, cc + sl[1].start)))
    obb = np.array(obb, np.float64)
    return obb.astype(np.float32), obb_polygons(obb).astype(np.float32)


# ----------------------------------------------------------------------------- annotated boxes (VOC XML)
#: Classes of the NEON tree-crown task, and the deepforest XML names that map to them.
TREE_CLASSES: tuple[str, ...] = ("tree", "dead tree")
TREE_NAMES: dict[str, int] = {"Tree": 0, "Alive": 0, "Dead": 1}

#: A box cut by a tile border is kept in the tile when at least this fraction of its area lies inside.
MIN_BOX_INSIDE = 0.5
#: ... and when the part inside is at least this many tile pixels on each side.
MIN_BOX_SIDE_PX = 1.0


@dataclass(frozen=True)
class VocBoxes:
    """The objects of one Pascal-VOC XML file.

    Attributes:
        path: the XML file.
        filename: the image it annotates (``<filename>``, a name beside the XML).
        size: ``(width, height)`` from ``<size>`` (None when absent).
        boxes: ``(K, 4)`` float64 ``xmin, ymin, xmax, ymax`` as written.
        names: the ``K`` object names.
    """

    path: Path
    filename: str
    size: tuple[int, int] | None
    boxes: np.ndarray
    names: tuple[str, ...]

    def labels(self, classes: Mapping[str, int]) -> np.ndarray:
        """``(K,)`` int64 class ids of the objects; a name not in ``classes`` raises
        DataError naming the file and the object."""
        for k, name in enumerate(self.names, 1):
            if name not in classes:
                raise DataError(f"{self.path}: object {k} has unknown class name {name!r} (known: {', '.join(classes)})")
        return np.array([classes[n] for n in self.names], np.int64)

    def check_inside(self, width: int, height: int, image: str | Path) -> None:
        """Every box must lie inside the ``width`` x ``height`` image (DataError naming the
        file, the object and the image otherwise); a ``<size>`` that differs from the image's
        is refused too (the boxes would be on another grid)."""
        if self.size is not None and self.size != (width, height):
            raise DataError(f"{self.path}: <size> {self.size[0]}x{self.size[1]} differs from its image {image} "
                            f"({width}x{height} px)")
        for k, ((x0, y0, x1, y1), name) in enumerate(zip(self.boxes, self.names), 1):
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise DataError(f"{self.path}: object {k} ({name!r}) box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside "
                                f"its image {image} ({width}x{height} px)")


def _voc_int(node, tag: str) -> int | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def read_voc(path: str | Path) -> VocBoxes:
    """The objects of a Pascal-VOC XML file (``<annotation>``: ``<filename>``, optional
    ``<size>``, ``<object>`` with ``<name>`` and ``<bndbox>`` ``xmin ymin xmax ymax``).

    Coordinates are kept as written: for the deepforest files, pixel edges of the image the
    XML names, 0-based, ``xmax``/``ymax`` exclusive (as deepforest reads them).

    Raises:
        DataError: naming the file (and the object, numbered from 1): not XML, no
            ``<filename>``, an object without a name, a missing or malformed ``<bndbox>``
            (a tag missing, not a finite number), a degenerate box (``xmax <= xmin`` or
            ``ymax <= ymin``: zero area).
    """
    import xml.etree.ElementTree as ET

    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(f"{path}: not a readable Pascal-VOC XML file ({err})") from err
    filename = (root.findtext("filename") or "").strip()
    if root.tag != "annotation" or not filename:
        raise DataError(f"{path}: not a Pascal-VOC annotation (an <annotation> with a <filename> is needed)")
    size_node = root.find("size")
    w, h = _voc_int(size_node, "width"), _voc_int(size_node, "height")
    size = (w, h) if w is not None and h is not None else None
    boxes, names = [], []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {k} has no <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{path}: object {k} ({name!r}): malformed bndbox (no <bndbox>)")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bnd.findtext(tag)
            try:
                value = float(text) if text is not None else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(f"{path}: object {k} ({name!r}): malformed bndbox (<{tag}> is {text!r}, not a finite number)")
            coords.append(value)
        x0, y0, x1, y1 = coords
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"{path}: object {k} ({name!r}): degenerate box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) "
                            "with zero area (xmax <= xmin or ymax <= ymin)")
        boxes.append(coords)
        names.append(name)
    return VocBoxes(path, filename, size, np.array(boxes, np.float64).reshape(-1, 4), tuple(names))


def boxes_in_window(
    boxes: np.ndarray,
    labels: np.ndarray,
    row: int,
    col: int,
    size: int,
    extent: tuple[int, int] | None = None,
    min_inside: float = MIN_BOX_INSIDE,
    min_side: float = MIN_BOX_SIDE_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes of a ``size`` window at ``(row, col)`` of a scene, in window pixels.

    Each box (scene pixels, ``x0, y0, x1, y1``) is shifted into the window and clipped to it
    (and to the scene's ``extent`` ``(H, W)`` where the window passes the scene border); it is
    kept when at least ``min_inside`` of its area lies inside (a box straddling a border is
    kept in the tile that holds most of it, and in both at exactly one half) and the clipped
    box is at least ``min_side`` pixels on each side.

    Returns:
        ``(K', 4)`` float32 clipped boxes and their ``(K',)`` int64 labels, in input order.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    hi_x = hi_y = float(size)
    if extent is not None:
        hi_y, hi_x = min(hi_y, float(extent[0] - row)), min(hi_x, float(extent[1] - col))
    shifted = boxes - np.array([col, row, col, row], np.float64)
    clipped = np.stack([np.clip(shifted[:, 0], 0, hi_x), np.clip(shifted[:, 1], 0, hi_y),
                        np.clip(shifted[:, 2], 0, hi_x), np.clip(shifted[:, 3], 0, hi_y)], 1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    keep = (w >= min_side) & (h >= min_side) & (w * h >= min_inside * area - 1e-9)
    return clipped[keep].astype(np.float32), labels[keep]


# ----------------------------------------------------------------------------- masks and classes
def mask_to_label(mask: np.ndarray, path: str | Path, values: Mapping[int, int] | None = None) -> np.ndarray:
    """Map a single-band mask to int64 class ids; any value not in ``values`` raises.

    Default ``values``: 0 -> 0 (background), 255 -> 1, 1 -> 1 (binary masks stored
    either way). Raises DataError naming the file and the unknown values.
    """
    values = dict(values or {0: 0, 1: 1, 255: 1})
    mask = np.asarray(mask)
    uniq = np.unique(mask)
    unknown = [v for v in uniq.tolist() if v not in values]
    if unknown:
        raise DataError(f"{path}: unknown label value(s) {unknown[:10]} (known: {sorted(values)})")
    lut_keys = np.array(sorted(values), dtype=np.int64)
    lut_vals = np.array([values[k] for k in lut_keys], dtype=np.int64)
    return lut_vals[np.searchsorted(lut_keys, mask.astype(np.int64))]


def map_asprs(
    cls: np.ndarray,
    path: str | Path,
    classes: Mapping[int, tuple[int, str]] = ASPRS_CLASSES,
    ignore: Sequence[int] = ASPRS_IGNORE,
) -> np.ndarray:
    """(H, W) LAS class codes -> uint8 training ids (255 = ignore); unknown codes raise."""
    lut = np.full(256, -1, np.int16)
    for code in ignore:
        lut[code] = IGNORE_INDEX
    for code, (idx, _) in classes.items():
        lut[code] = idx
    out = lut[cls.astype(np.uint8)]
    if np.any(out < 0):
        bad = np.unique(cls[out < 0]).tolist()
        raise DataError(f"{path}: unknown ASPRS class code(s) {bad}; add them to the class map or the ignore list")
    return out.astype(np.uint8)


def fraction_class(fraction: np.ndarray | float, edges: Sequence[float]) -> np.ndarray:
    """DERIVED scene class: index of the bin of a (building) fraction, bins split at ``edges``."""
    return np.searchsorted(np.asarray(edges, float), np.asarray(fraction, float), side="right")


def dominant_class(label: np.ndarray, n_classes: int, min_valid: float = 0.1) -> int:
    """DERIVED scene class: the most frequent non-ignored class of ``label`` (H, W), or
    -1 if fewer than ``min_valid`` of the pixels are labelled."""
    valid = label[label != IGNORE_INDEX].astype(np.int64)
    if valid.size < min_valid * label.size or valid.size == 0:
        return -1
    return int(np.bincount(valid, minlength=n_classes).argmax())


# ----------------------------------------------------------------------------- synthetic change
def _free_offset(
    footprint: np.ndarray, blocked: np.ndarray, rng: np.random.Generator, max_shift: int, tries: int = 30
) -> tuple[int, int] | None:
    """A random non-zero (dy, dx) moving ``footprint`` fully inside the tile onto pixels that
    are not ``blocked``; None if none found in ``tries``."""
    rows, cols = np.nonzero(footprint)
    h, w = footprint.shape
    for _ in range(tries):
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        if dy == 0 and dx == 0:
            continue
        r, c = rows + dy, cols + dx
        if r.min() < 0 or c.min() < 0 or r.max() >= h or c.max() >= w:
            continue
        if not blocked[r, c].any():
            return dy, dx
    return None


def _move(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(H, W) bool: ``mask`` shifted by (dy, dx) (content leaving the tile is dropped)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] = src
    return out


def synthetic_change(
    image: np.ndarray,
    instances: np.ndarray,
    rng: np.random.Generator,
    n_changes: int = 2,
    max_shift: int = 24,
    margin_px: int = 1,
    min_pixels: int = 16,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """SYNTHETIC change: remove, paste or shift whole objects of a real tile.

    Args:
        image: (C, H, W) the "before" tile.
        instances: (H, W) int object ids (0 = background), e.g. rasterised footprints.
        rng: random generator (seed it per tile for reproducibility).
        n_changes: how many objects to change (fewer if the tile has fewer).
        max_shift: largest paste/shift offset in pixels.
        margin_px: footprints are grown by this many pixels so edges move with the object.
        min_pixels: objects with fewer visible pixels are left alone.

    Returns:
        ``after`` (C, H, W) (equal to ``image`` outside the mask, bit for bit: give it the
        differences of a real second acquisition with :func:`acquisition_shift`), ``mask``
        (H, W) uint8 1 = changed pixel (exactly the pixels that were rewritten), and one
        record per change (``op``, object id, offset).

    Removal fills the footprint with background copied from a building-free area at a
    random offset (nearest background pixel if none is found); paste copies the object's
    pixels to a building-free place; shift = removal + paste of the same object.
    """
    after = image.copy()
    changed = np.zeros(instances.shape, bool)
    grow = np.ones((2 * margin_px + 1,) * 2, bool) if margin_px > 0 else None
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    ids = ids[counts >= min_pixels]
    objects = instances > 0
    if grow is not None:
        objects = ndimage.binary_dilation(objects, grow)
    records: list[dict] = []
    for obj in rng.permutation(ids)[:n_changes]:
        fp = instances == obj
        if grow is not None:
            fp = ndimage.binary_dilation(fp, grow)
        if (fp & changed).any():
            continue
        op = ("remove", "paste", "shift")[int(rng.integers(3))]
        record = {"op": op, "object": int(obj)}
        source_pixels = after[:, fp].copy()
        if op in ("paste", "shift"):
            off = _free_offset(fp, objects | changed, rng, max_shift)
            if off is None:  # no room: fall back to removal
                op = record["op"] = "remove"
            else:
                record["offset"] = list(off)
        if op in ("remove", "shift"):
            bg_off = _free_offset(fp, objects | changed, rng, max_shift * 2)
            if bg_off is not None:
                after[:, fp] = after[:, _move(fp, *bg_off)]
            else:
                _, (ri, ci) = ndimage.distance_transform_edt(objects | changed, return_indices=True)
                after[:, fp] = after[:, ri[fp], ci[fp]]
            changed |= fp
        if op in ("paste", "shift"):
            target = _move(fp, *record["offset"])
            after[:, target] = source_pixels
            changed |= target
            objects |= target
        records.append(record)
    return after, changed.astype(np.uint8), records


# ----------------------------------------------------------------------------- second acquisition
def _check_range(name: str, value: tuple[float, float], low: float, high: float = math.inf, open_low: bool = False) -> None:
    """``value`` must be a (lo, hi) pair of numbers with ``low <= lo <= hi <= high`` (``low < lo``
    if ``open_low``); ConfigError naming ``name`` otherwise."""
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ConfigError(f"{name}: expected a [low, high] pair of numbers, got {list(value)!r}")
    lo, hi = value
    if not ((low < lo) if open_low else (low <= lo)) or not lo <= hi <= high:
        rule = f"{low} {'<' if open_low else '<='} low <= high" + (f" <= {high}" if high < math.inf else "")
        raise ConfigError(f"{name}: [{lo}, {hi}] must satisfy {rule}")


@dataclass(frozen=True)
class AcquisitionShift:
    """Ranges of the per-tile differences of a second acquisition (:func:`acquisition_shift`).

    Every value is drawn per tile, uniformly in its range (``±x``: in ``[-x, x]``).

    Attributes:
        enabled: apply the shift at all (false: the after-image is the edited before-image).
        gain: common multiplicative gain (contrast) of all bands.
        hue: per-band gain difference (colour balance): band ``b`` gets ``gain * (1 + d_b)``,
            ``d_b`` drawn in ``±hue`` and centred over the bands (a one-band image has
            ``d = 0``: there the hue shift reduces to the gain).
        offset: additive offset (brightness) per band, in units of the band's standard
            deviation in the tile.
        gamma: exponent of a monotone power curve on each band's value range in the tile.
        gradient: largest amplitude of a multiplicative illumination plane (``1 ± a`` at the
            far edges, random direction; ``a`` drawn in ``[0, gradient]``).
        shift_px: largest sub-pixel misregistration in each axis (pixels).
        blur_sigma: Gaussian blur sigma range in pixels (0 = no blur).
        noise: additive Gaussian noise std, in units of the band's standard deviation.

    Raises:
        ConfigError (a ValueError): a bad range, the message starting with the field's name
            (:func:`mssdf.config.from_dict` prefixes the key path, ``prepare.change_shift.gain``).
    """

    enabled: bool = True
    gain: tuple[float, float] = (0.85, 1.15)
    hue: float = 0.05
    offset: float = 0.2
    gamma: tuple[float, float] = (0.85, 1.15)
    gradient: float = 0.1
    shift_px: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 0.8)
    noise: float = 0.03

    def __post_init__(self) -> None:
        for name in ("gain", "gamma", "blur_sigma"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        _check_range("gain", self.gain, 0.0, open_low=True)
        _check_range("gamma", self.gamma, 0.0, open_low=True)
        _check_range("blur_sigma", self.blur_sigma, 0.0, 10.0)
        for name, high in (("hue", 0.5), ("offset", math.inf), ("gradient", 0.5), ("shift_px", 4.0), ("noise", math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ConfigError(f"{name}: {value!r} must be a number " + (f"in [0, {high}]" if high < math.inf else ">= 0"))


def _band_stats(band: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, std, min, max of the finite pixels of ``band`` (0, 0, 0, 0 if none)."""
    v = band[np.isfinite(band)].astype(np.float64)
    if v.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(v.mean()), float(v.std()), float(v.min()), float(v.max())


def acquisition_shift(image: np.ndarray, rng: np.random.Generator, cfg: AcquisitionShift) -> tuple[np.ndarray, dict[str, Any]]:
    """The differences of a second acquisition, applied to a whole (C, H, W) after-image.

    A synthetic after-image (:func:`synthetic_change`) equals its before-image outside the
    change mask, so a pixel difference would solve the task; a real second date differs
    everywhere. Drawn per tile from ``rng`` (ranges in ``cfg``), applied in this order:

    1. sub-pixel misregistration: a shift of up to ``shift_px`` in each axis
       (``scipy.ndimage.shift``, linear, ``mode="nearest"``);
    2. a slight Gaussian blur (``blur_sigma``, may be 0);
    3. a smooth illumination gradient: the image times a plane ``1 + a * ramp`` with ``ramp``
       in [-1, 1] across the tile in a random direction;
    4. a gamma curve on each band's value range in the tile (monotone, keeps min and max);
    5. per-band gain and offset: ``gain * (1 + d_b) * x + o_b * std_b``; ``d_b`` is the
       colour-balance ("hue") difference between bands - for the one-band ``pan`` it is 0
       and the hue shift reduces to the gain;
    6. additive Gaussian noise of std ``noise * std_b``.

    ``std_b`` is band ``b``'s standard deviation over the tile's finite pixels (a constant
    band gets no offset nor noise). No-data (NaN) pixels are filled with their band's mean
    for the filters and are NaN again, exactly where they were, in the output; no other
    pixel becomes NaN. An input whose finite values are all >= 0 gives an output >= 0
    (clipped at 0). The change mask is not touched: the shift applies to every pixel alike.

    Args:
        image: (C, H, W) float after-image (NaN = no data).
        rng: random generator (seed it per tile, apart from the edit's own stream).
        cfg: the ranges; ``cfg.enabled`` false returns a float32 copy and ``{}`` (no draw).

    Returns:
        the (C, H, W) float32 image and the record of the drawn values (JSON-ready:
        ``gain``, ``offset`` (in band stds) and ``offset_value`` per band, ``gamma``,
        ``gradient`` amplitude and ``gradient_angle_deg``, ``shift_px`` (dy, dx),
        ``blur_sigma``, ``noise`` (in band stds)).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"acquisition_shift: expected a (C, H, W) image, got shape {image.shape}")
    if not cfg.enabled:
        return image.astype(np.float32, copy=True), {}
    c, h, w = image.shape
    nodata = np.isnan(image)
    stats = [_band_stats(image[b]) for b in range(c)]
    mean = np.array([s[0] for s in stats])
    std = np.array([s[1] for s in stats])
    nonneg = all(s[2] >= 0 for s in stats)

    # the draws, in a fixed order
    shift = rng.uniform(-cfg.shift_px, cfg.shift_px, size=2)
    sigma = float(rng.uniform(*cfg.blur_sigma))
    amp, angle = float(rng.uniform(0.0, cfg.gradient)), float(rng.uniform(0.0, 2 * math.pi))
    gamma = float(rng.uniform(*cfg.gamma))
    gain = float(rng.uniform(*cfg.gain))
    hue = rng.uniform(-cfg.hue, cfg.hue, size=c)
    hue = hue - hue.mean()  # a colour-balance shift only: one band has none
    offset = rng.uniform(-cfg.offset, cfg.offset, size=c)
    gains = gain * (1.0 + hue)

    x = np.where(nodata, mean[:, None, None], image).astype(np.float64)
    for b in range(c):
        if shift.any():
            x[b] = ndimage.shift(x[b], shift, order=1, mode="nearest")
        if sigma > 0:
            x[b] = ndimage.gaussian_filter(x[b], sigma, mode="nearest")
    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    ramp = math.cos(angle) * xx + math.sin(angle) * yy
    ramp /= max(float(np.abs(ramp).max()), 1e-12)
    x *= 1.0 + amp * ramp
    for b in range(c):
        lo, hi = float(x[b].min()), float(x[b].max())
        if hi > lo:
            x[b] = lo + (hi - lo) * ((x[b] - lo) / (hi - lo)) ** gamma
    x = gains[:, None, None] * x + (offset * std)[:, None, None]
    if cfg.noise > 0:
        x += rng.normal(0.0, 1.0, size=x.shape) * (cfg.noise * std)[:, None, None]
    if nonneg:
        np.maximum(x, 0.0, out=x)
    out = np.where(nodata, np.nan, x).astype(np.float32)
    record = {
        "gain": [round(float(g), 6) for g in gains], "offset": [round(float(o), 6) for o in offset],
        "offset_value": [round(float(o * s), 6) for o, s in zip(offset, std)], "gamma": round(gamma, 6),
        "gradient": round(amp, 6), "gradient_angle_deg": round(math.degrees(angle), 3),
        "shift_px": [round(float(v), 6) for v in shift], "blur_sigma": round(sigma, 6), "noise": cfg.noise,
    }
    return out, record
