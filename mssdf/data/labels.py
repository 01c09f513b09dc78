"""Labels: rasterised vector footprints, mask/class mapping, boxes, and the DERIVED labels.

Real labels: building footprints (Atlanta polygons -> mask and instance ids -> boxes),
road masks (Las Vegas), ASPRS lidar classes (IGN). Derived labels, marked as such in the
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
