"""Labels: rasterised vector footprints, mask/class mapping, boxes, and the DERIVED labels.

Real labels: building footprints (Atlanta polygons -> mask and instance ids -> boxes),
road masks (Las Vegas), ASPRS lidar classes (IGN). Derived labels, marked as such in the
tile index: synthetic changes (:func:`synthetic_change`) and scene classes
(:func:`fraction_class`, :func:`dominant_class`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

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
        ``after`` (C, H, W) (equal to ``image`` outside the mask, bit for bit), ``mask``
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
