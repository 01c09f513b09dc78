"""The tile index of a prepared folder: ``index.csv``, one row per (task, tile).

Columns (:data:`INDEX_COLUMNS`): task, source, scene, tile, split, the window (row, col,
size), resolution, no-data fraction, ``label_kind`` (real / synthetic / derived / none),
per-tile values of some tasks (scene_class, n_boxes, change_fraction) and ``files`` (a
JSON object: key -> path relative to the prepared folder).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mssdf.data.io import DataError

INDEX_FILE = "index.csv"
INDEX_COLUMNS = ("task", "source", "scene", "tile", "split", "row", "col", "size", "res_m", "nodata_frac", "label_kind",
                 "scene_class", "n_boxes", "change_fraction", "files")
_INTS = ("row", "col", "size", "scene_class", "n_boxes")
_FLOATS = ("res_m", "nodata_frac", "change_fraction")


def write_index(root: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts with exactly :data:`INDEX_COLUMNS`; ``files`` already JSON text)
    to ``<root>/index.csv``; returns the path."""
    path = Path(root) / INDEX_FILE
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_index(root: str | Path) -> list[dict[str, Any]]:
    """Rows of ``<root>/index.csv`` with numeric columns converted and ``files`` parsed.

    ``synthetic`` / ``derived`` (0/1) are derived from ``label_kind`` (not stored).
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{path}: no tile index; run the preparation first")
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r = dict(r)
            for k in _INTS:
                r[k] = int(r[k])
            for k in _FLOATS:
                r[k] = float(r[k])
            r["files"] = json.loads(r["files"])
            r["synthetic"], r["derived"] = int(r["label_kind"] == "synthetic"), int(r["label_kind"] == "derived")
            out.append(r)
    return out


def cache_stem(row: dict[str, Any], key: str) -> str:
    """The cache array name (``cache/<source>/<split>/<stem>.npy``) of index file entry ``key``
    of ``row``: its file ``tiles/<source>/<tile>.<stem>.tif`` without the tile name and the
    extension (``height`` -> ``ndsm``); ``key`` itself when the row has no such file."""
    files = row["files"]
    if key not in files:
        return key
    name = Path(files[key]).name
    prefix = f"{row['tile']}."
    return (name[len(prefix):] if name.startswith(prefix) else name).rsplit(".", 1)[0]


__all__ = ["INDEX_COLUMNS", "INDEX_FILE", "cache_stem", "read_index", "write_index"]
