"""Where prepared tiles lie on the ground, and which pre-training tiles would leak.

A tile's footprint is its window's bounds in its scene's map coordinates (the scene
GeoTIFF's CRS and transform). Scenes without a CRS (the NEON PNG crops) have pixel-grid
footprints that can only meet tiles of the same scene. Footprints in different CRSs are
compared in geographic coordinates (EPSG:4326, :func:`rasterio.warp.transform_bounds`).

Pre-training must never read a pixel of a downstream task's validation or test area:
:func:`leaks` lists every (pre-training tile, evaluation tile) pair whose footprints
overlap with positive area, whatever the task, source or scene names say.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mssdf.data.io import DataError, raster_info

#: Splits no pre-training may touch.
EVALUATION_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Footprint:
    """One tile of one task on the ground.

    ``bounds`` is ``(west, south, east, north)`` in ``crs`` units; with ``crs`` None, pixel
    units of the scene ``(source, scene)`` (``(col0, -row1, col1, -row0)``).
    """

    task: str
    split: str
    source: str
    scene: str
    tile: str
    crs: str | None
    bounds: tuple[float, float, float, float]

    @property
    def frame(self) -> tuple[str, ...]:
        """Footprints are comparable within a frame: a CRS, or one scene's pixel grid."""
        return (self.crs,) if self.crs is not None else ("pixels", self.source, self.scene)


def _scene_grids(root: Path, rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], tuple[str | None, tuple | None]]:
    """``(source, scene) -> (crs, transform)`` read from one scene GeoTIFF header each."""
    grids = {}
    for r in rows:
        key = (r["source"], r["scene"])
        if key in grids:
            continue
        folder = root / "scenes" / r["source"] / r["scene"]
        files = sorted(folder.glob("*.tif"))
        if not files:
            raise DataError(f"{folder}: no scene raster to place the tiles of {r['source']}/{r['scene']} on the ground")
        info = raster_info(files[0])
        grids[key] = (info.crs, info.transform)
    return grids


def tile_footprints(root: str | Path, rows: Sequence[dict[str, Any]]) -> list[Footprint]:
    """The footprints of index ``rows`` (:func:`mssdf.data.index.read_index`) of the prepared folder ``root``."""
    root = Path(root)
    grids = _scene_grids(root, rows)
    out = []
    for r in rows:
        crs, tf = grids[(r["source"], r["scene"])]
        r0, c0, n = r["row"], r["col"], r["size"]
        if crs is None or tf is None:
            bounds = (float(c0), float(-(r0 + n)), float(c0 + n), float(-r0))
            crs = None
        else:
            a, b, x0, d, e, y0 = tf
            xs = [x0 + a * c + b * rr for c in (c0, c0 + n) for rr in (r0, r0 + n)]
            ys = [y0 + d * c + e * rr for c in (c0, c0 + n) for rr in (r0, r0 + n)]
            bounds = (min(xs), min(ys), max(xs), max(ys))
        out.append(Footprint(r["task"], r["split"], r["source"], r["scene"], r["tile"], crs, bounds))
    return out


def _in_frame(fp: Footprint, frame: tuple[str, ...]) -> tuple[float, float, float, float]:
    """``fp.bounds`` in ``frame`` (its own, or EPSG:4326 for a CRS-to-CRS comparison)."""
    if fp.frame == frame:
        return fp.bounds
    from rasterio.warp import transform_bounds

    return tuple(transform_bounds(fp.crs, frame[0], *fp.bounds, densify_pts=21))


def overlapping_pairs(a: Sequence[Footprint], b: Sequence[Footprint]) -> list[tuple[Footprint, Footprint]]:
    """Every ``(x, y)`` with ``x`` in ``a``, ``y`` in ``b`` whose footprints share positive area."""
    found = []
    groups_a, groups_b = defaultdict(list), defaultdict(list)
    for fp in a:
        groups_a[fp.frame].append(fp)
    for fp in b:
        groups_b[fp.frame].append(fp)
    for fa, xs in groups_a.items():
        for fb, ys in groups_b.items():
            if fa != fb and (fa[0] == "pixels" or fb[0] == "pixels"):
                continue  # a pixel grid meets nothing outside its own scene
            frame = fa if fa == fb else ("EPSG:4326",)
            bx = np.array([_in_frame(x, frame) for x in xs])  # (n, 4)
            by = np.array([_in_frame(y, frame) for y in ys])  # (m, 4)
            w = np.minimum(bx[:, None, 2], by[None, :, 2]) - np.maximum(bx[:, None, 0], by[None, :, 0])
            h = np.minimum(bx[:, None, 3], by[None, :, 3]) - np.maximum(bx[:, None, 1], by[None, :, 1])
            tol = 1e-9 * max(1.0, float(np.abs(np.concatenate([bx, by])).max()))
            for i, j in zip(*np.nonzero((w > tol) & (h > tol))):
                found.append((xs[i], ys[j]))
    return found


def leaks(root: str | Path, pretraining_rows: Sequence[dict[str, Any]],
          index_rows: Sequence[dict[str, Any]]) -> list[tuple[Footprint, Footprint]]:
    """Pre-training tiles that overlap a validation or test tile of a labelled task.

    Args:
        root: the prepared folder.
        pretraining_rows: the index rows a pre-training run reads.
        index_rows: the whole index (every task's rows).

    Returns:
        ``(pre-training footprint, evaluation footprint)`` pairs; empty when nothing leaks.
    """
    evaluation = [r for r in index_rows if r["split"] in EVALUATION_SPLITS and r["label_kind"] != "none"]
    return overlapping_pairs(tile_footprints(root, pretraining_rows), tile_footprints(root, evaluation))


def describe(pairs: Sequence[tuple[Footprint, Footprint]], limit: int = 5) -> str:
    """One line per leaking pair (the first ``limit``)."""
    lines = [f"{p.task}/{p.split} tile {p.tile} overlaps {e.task}/{e.split} tile {e.tile}" for p, e in pairs[:limit]]
    more = f" (+{len(pairs) - limit} more)" if len(pairs) > limit else ""
    return "; ".join(lines) + more


__all__ = ["EVALUATION_SPLITS", "Footprint", "tile_footprints", "overlapping_pairs", "leaks", "describe"]
