"""DOTA v1.0 / v1.5 object detection with oriented boxes.

Layout under ``root``::

    {train,val,test}/images/P####.png
    {train,val}/labelTxt/P####.txt     (``label_dir``; test has no labels)

A label file holds optional header lines ``imagesource:...`` and ``gsd:...``, then one
object per line: ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` (difficult may be absent -> 0).
v1.0 has 15 classes, v1.5 adds ``container-crane`` (:data:`CLASSES`).

Sample: ``rgb`` (3,H,W) float32 (grey images repeated to 3 bands, alpha dropped),
``boxes`` (K,8) float32 polygon corners in pixels, ``box_labels`` (K,) int64,
``difficult`` (K,) int64, ``truncated`` (K,) bool, ``meta``; batch with
:func:`~mssdf.data.readers.base.detection_collate`.

Crops (``crop_size``, e.g. 1024 with ``gap`` 200, the usual protocol): windows every
``crop_size - gap`` pixels plus border-aligned edge windows, per image; smaller images are
zero-padded to ``crop_size``. An object is kept in a crop when at least ``min_visible``
of its polygon's area lies inside (the DOTA devkit's 0.7); its corners are shifted to crop
coordinates but not clipped, and ``truncated`` marks objects not wholly inside. Without
crops every annotated object is returned as written (``truncated`` all False).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from mssdf.data.io import DataError
from mssdf.data.readers.base import (
    ReaderDataset,
    Sample,
    Window,
    check_choice,
    check_fraction,
    image_header,
    pad_to,
    read_image,
    require_dir,
    to_tensor,
)
from mssdf.data.readers.windows import crop_windows

LAYOUT = __doc__.split("Layout under ``root``::")[1].split("A label file")[0].rstrip()
CLASSES_V10: tuple[str, ...] = (
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
    "roundabout", "soccer-ball-field", "swimming-pool",
)  # fmt: skip
CLASSES = {"1.0": CLASSES_V10, "1.5": CLASSES_V10 + ("container-crane",)}


def parse_dota(path: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a DOTA label file into ``(polygons (K,8) float32, labels (K,) int64, difficult (K,) int64)``."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise DataError(f"{path}: label file not found") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text label file ({err})") from err
    polys, labels, difficult = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.lower().startswith(("imagesource:", "gsd:")):
            continue
        tokens = line.split()
        numeric = 0
        while numeric < len(tokens) and _is_number(tokens[numeric]):
            numeric += 1
        if numeric != 8 and numeric < len(tokens):  # the class name follows the coordinates
            raise DataError(f"{path}:{n}: polygon with {numeric} coordinate values, 8 expected (x1 y1 ... x4 y4) "
                            f"in {line!r}")
        if len(tokens) not in (9, 10):
            raise DataError(f"{path}:{n}: expected 'x1 y1 ... x4 y4 class [difficult]', got {line!r}")
        try:
            coords = [float(t) for t in tokens[:8]]
            diff = int(tokens[9]) if len(tokens) == 10 else 0
        except ValueError as err:
            raise DataError(f"{path}:{n}: non-numeric coordinates or difficult flag in {line!r}") from err
        if tokens[8] not in index:
            hint = " (use version='1.5')" if tokens[8] == "container-crane" else ""
            raise DataError(f"{path}:{n}: unknown class {tokens[8]!r}{hint}; known: {', '.join(classes)}")
        polys.append(coords)
        labels.append(index[tokens[8]])
        difficult.append(diff)
    return (
        np.asarray(polys, np.float32).reshape(-1, 8),
        np.asarray(labels, np.int64),
        np.asarray(difficult, np.int64),
    )


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _area(pts: np.ndarray) -> float:
    """Shoelace area of a polygon ``(n, 2)``."""
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_to_rect(pts: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon ``(n, 2)`` to the rectangle ``[x0, x1] x [y0, y1]``."""
    out = [tuple(p) for p in pts]
    for axis, bound, keep_less in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        src, out = out, []
        if not src:
            break
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in = cur[axis] <= bound if keep_less else cur[axis] >= bound
            prev_in = prev[axis] <= bound if keep_less else prev[axis] >= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(p + t * (c - p) for p, c in zip(prev, cur)))
            if cur_in:
                out.append(cur)
    return np.asarray(out, np.float64).reshape(-1, 2)


def _clip_half_plane(pts: np.ndarray, n: np.ndarray, axis: int, bound: float, keep_less: bool) -> tuple[np.ndarray, np.ndarray]:
    """One Sutherland-Hodgman step for K polygons at once.

    ``pts`` (K, M, 2) holds each polygon's first ``n[k]`` vertices (the rest is padding);
    returns the clipped polygons (K, 2M, 2) and their vertex counts, vertices in the same
    order as :func:`clip_to_rect` produces them.
    """
    k, m, _ = pts.shape
    idx = np.arange(m)
    valid = idx[None] < n[:, None]
    prev_idx = (idx[None] - 1) % np.maximum(n[:, None], 1)
    prev = np.take_along_axis(pts, np.repeat(prev_idx[..., None], 2, -1), 1)
    cur_v, prev_v = pts[..., axis], prev[..., axis]
    cur_in = cur_v <= bound if keep_less else cur_v >= bound
    prev_in = prev_v <= bound if keep_less else prev_v >= bound
    cross = (cur_in != prev_in) & valid
    denom = np.where(cross, cur_v - prev_v, 1.0)
    t = np.where(cross, (bound - prev_v) / denom, 0.0)
    inter = prev + t[..., None] * (pts - prev)
    out = np.stack([inter, pts], 2).reshape(k, 2 * m, 2)  # per input vertex: crossing point, then the vertex
    keep = np.stack([cross, cur_in & valid], 2).reshape(k, 2 * m)
    n_new = keep.sum(1)
    order = np.argsort(~keep, axis=1, kind="stable")[:, : max(int(n_new.max(initial=0)), 1)]  # kept outputs first
    return np.take_along_axis(out, np.repeat(order[..., None], 2, -1), 1), n_new


def _areas(pts: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(K,) shoelace areas of padded polygons (fewer than 3 vertices: 0)."""
    idx = np.arange(pts.shape[1])
    valid = idx[None] < n[:, None]
    nxt = np.take_along_axis(pts, np.repeat(((idx[None] + 1) % np.maximum(n[:, None], 1))[..., None], 2, -1), 1)
    cross = pts[..., 0] * nxt[..., 1] - pts[..., 1] * nxt[..., 0]
    return np.where(n >= 3, 0.5 * np.abs(np.where(valid, cross, 0.0).sum(1)), 0.0)


def visible_fraction(polys: np.ndarray, window: Window) -> np.ndarray:
    """Fraction of each polygon ``(K, 8)``'s area inside ``window`` (degenerate ones: centre inside -> 1).

    Vectorised over the polygons (the same Sutherland-Hodgman clip as :func:`clip_to_rect`).
    """
    r, c, h, w = window
    quads = polys.astype(np.float64).reshape(-1, 4, 2)
    if len(quads) == 0:
        return np.zeros(0)
    full = _areas(quads, np.full(len(quads), 4))
    lo, hi = quads.min(1), quads.max(1)
    inside = np.where((lo[:, 0] >= c) & (hi[:, 0] <= c + w) & (lo[:, 1] >= r) & (hi[:, 1] <= r + h), full, 0.0)
    straddle = (hi[:, 0] > c) & (lo[:, 0] < c + w) & (hi[:, 1] > r) & (lo[:, 1] < r + h) & (inside == 0)
    if straddle.any():  # only polygons crossing the window border are clipped
        pts, n = quads[straddle], np.full(int(straddle.sum()), 4)
        for axis, bound, keep_less in ((0, c, False), (0, c + w, True), (1, r, False), (1, r + h, True)):
            pts, n = _clip_half_plane(pts, n, axis, bound, keep_less)
        inside[straddle] = _areas(pts, n)
    cx, cy = quads[..., 0].mean(1), quads[..., 1].mean(1)
    centre_in = (c <= cx) & (cx <= c + w) & (r <= cy) & (cy <= r + h)
    return np.where(full <= 1e-9, centre_in.astype(np.float64), inside / np.where(full <= 1e-9, 1.0, full))


class DOTA(ReaderDataset):
    """DOTA v1.0/v1.5 oriented-box detection (layout and sample in the module docstring).

    Args:
        root: dataset folder holding ``train/``, ``val/`` (and ``test/``).
        split: ``train``, ``val`` or ``test`` (test: images only unless labels exist).
        version: ``1.0`` (15 classes) or ``1.5`` (16 classes).
        crop_size: crop windows (None: whole images); gap: crop overlap in pixels.
        min_visible: area fraction an object needs inside a crop to be kept.
        label_dir: label folder name inside the split folder.
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        version: str = "1.0",
        crop_size: int | None = None,
        gap: int = 200,
        min_visible: float = 0.7,
        label_dir: str = "labelTxt",
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(split, ("train", "val", "test"), "split")
        self.classes = CLASSES[check_choice(str(version), CLASSES, "version")]
        self.crop_size = crop_size
        self.min_visible = check_fraction(min_visible, "min_visible")
        image_dir = require_dir(self.root / split / "images", LAYOUT)
        label_path = self.root / split / label_dir
        self.has_labels = split != "test" or label_path.is_dir()
        if self.has_labels:
            require_dir(label_path, LAYOUT)
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif", ".bmp"))
        if not images:
            raise DataError(f"{image_dir}: no images found; expected layout:\n{LAYOUT}")
        if self.has_labels:  # an annotation without its image is an error, not a silently smaller dataset
            stems = {p.stem for p in images}
            lonely = sorted(p for p in label_path.glob("*.txt") if p.stem not in stems)
            if lonely:
                raise DataError(f"{lonely[0]}: annotation without its image (no {image_dir / lonely[0].stem}.png/.jpg/.tif/.bmp)"
                                + (f"; {len(lonely)} such files in {label_path}" if len(lonely) > 1 else ""))
        self.samples: list[tuple[Path, Path | None, Window]] = []
        for image in images:
            label = label_path / f"{image.stem}.txt" if self.has_labels else None
            if label is not None and not label.is_file():
                raise DataError(f"{label}: file not found (partner of {image})")
            _, h, w = image_header(image, (1, 3, 4))
            windows = crop_windows(h, w, crop_size, gap) if crop_size else [(0, 0, h, w)]
            self.samples += [(image, label, win) for win in windows]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        image, label, window = self.samples[index]
        arr = read_image(image, (1, 3, 4), window=window)
        arr = np.repeat(arr, 3, 0) if arr.shape[0] == 1 else arr[:3]
        if self.crop_size:
            arr = pad_to(arr, self.crop_size, self.crop_size, 0)
        if label is not None:
            polys, labels, difficult = parse_dota(label, self.classes)
        else:
            polys, labels, difficult = np.zeros((0, 8), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if self.crop_size and len(polys):
            vis = visible_fraction(polys, window)
            keep = vis >= self.min_visible - 1e-9
        else:  # whole image: every annotated object, as written
            vis, keep = np.ones(len(polys)), np.ones(len(polys), bool)
        r, c = window[:2]
        shifted = polys[keep] - np.tile(np.float32([c, r]), 4)
        return {
            "rgb": to_tensor(arr),
            "boxes": to_tensor(shifted.astype(np.float32)),
            "box_labels": to_tensor(labels[keep]),
            "difficult": to_tensor(difficult[keep]),
            "truncated": to_tensor(vis[keep] < 1 - 1e-6),
            "meta": {"id": image.stem, "window": list(window)},
        }
