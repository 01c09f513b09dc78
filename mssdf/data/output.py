"""Writing a prepared folder from loaded scenes (the layout is in :mod:`mssdf.data.prepare`).

Scenes, tiles (one GeoTIFF per tile and key; ``boxes.json`` for the detection tasks, objects
from :func:`_tile_objects`), the tile
index (:mod:`mssdf.data.index`, rows from :data:`mssdf.data.tasks.TASKS`), train-only
band statistics, ``tasks.json``, the memory-mapped cache, README/LICENSE, and the
summary returned to :func:`mssdf.data.prepare.prepare` (which writes it last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mssdf.atomic import atomic_write_text
from mssdf.config import to_dict
from mssdf.data import labels as L
from mssdf.data.index import write_index
from mssdf.data.io import IGNORE_INDEX, DataError
from mssdf.data.sources import SOURCES, Scene, split_seed
from mssdf.data.stats import RunningStats
from mssdf.data.tasks import EXTRA_FILES, TASKS, source_tasks, tile_needs
from mssdf.data.tiling import SPLITS, block_split, crop_padded, union_mask, window_fraction, windows
from mssdf.data.write import write_geotiff

if TYPE_CHECKING:
    from mssdf.data.prepare import PrepareConfig

# Scene arrays that get no band statistics (labels; the DTM is not tiled).
NO_STATS = ("label", "change", "dtm")
# Per-object cache stacks (row-aligned; one set of offsets for all: ``boxes_offsets.npy``).
OBJECT_KEYS = ("boxes", "box_labels", "obb", "obb_polygons")


def write_prepared(cfg: PrepareConfig, scenes: dict[str, list[Scene]], out: Path, raw: Path,
                   say: Callable[..., Any]) -> dict[str, Any]:
    """Write everything but ``summary.json`` into ``out``; returns the summary.

    Raises:
        DataError: a source none of whose tiles passes ``max_nodata``.
    """
    rows: list[dict[str, Any]] = []
    stats: dict[tuple[str, str], RunningStats] = {}
    cache: dict[tuple[str, str, str], list[Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    notes: dict[str, Any] = {}
    for source, src_scenes in scenes.items():
        settings = cfg.sources[source]
        size = settings.tile
        cand, fracs = [], []
        n_windows = 0
        for sc in src_scenes:
            h, w = sc.valid.shape
            wins = windows(h, w, size, settings.stride)  # a scene smaller than a tile: one padded window
            n_windows += len(wins)
            frac = 1.0 - window_fraction(sc.valid, wins, size) if len(wins) else np.zeros(0)
            keep = frac <= cfg.max_nodata
            cand.append(wins[keep])
            fracs.append(frac[keep])
            for key, arr in sc.arrays.items():
                write_geotiff(out / "scenes" / source / sc.name / f"{key}.tif", arr, sc.crs, sc.transform,
                              band_names=SOURCES[source].bands.get(key))
            notes[sc.name] = sc.notes
        splits = block_split(cand, size, settings.block, cfg.fractions, split_seed(cfg.seed, source))
        c = counts.setdefault(source, {"windows": n_windows, "rejected_nodata": n_windows - sum(map(len, cand)),
                                       "dropped_block_border": 0, **{s: 0 for s in SPLITS}})
        for si, sc in enumerate(src_scenes):
            _scene_stats(sc, cand[si][splits[si] == SPLITS.index("train")], size, stats)
            for (r, col), split_id, frac in zip(cand[si], splits[si], fracs[si]):
                if split_id < 0:
                    c["dropped_block_border"] += 1
                    continue
                split = SPLITS[split_id]
                c[split] += 1
                rows += _write_tile(cfg, sc, int(r), int(col), size, split, float(frac), out, stats, cache)
        say(f"{source}: {c}")
        if sum(c[s] for s in SPLITS) == 0:
            raise DataError(f"{', '.join(str(p) for p in src_scenes[0].files)}: no tile of source {source!r} passes "
                            f"max_nodata={cfg.max_nodata} (all tiles no data?)")

    rows.sort(key=lambda r: (r["task"], r["source"], r["split"], r["scene"], r["row"], r["col"]))
    write_index(out, rows)
    stats_json = {src: {key: {"bands": SOURCES[src].bands.get(key, []), **acc.result()}
                        for (s2, key), acc in sorted(stats.items()) if s2 == src} for src in scenes}
    (out / "stats.json").write_text(json.dumps(stats_json, indent=2, sort_keys=True) + "\n")
    tasks = {t: spec.to_json() for t, spec in TASKS.items() if spec.source in scenes}
    (out / "tasks.json").write_text(json.dumps(tasks, indent=2, sort_keys=True) + "\n")
    if cfg.build_cache:
        _write_cache(out, cache)
    _write_docs(out, raw)
    per_task: dict[str, dict[str, int]] = {}
    for r in rows:
        per_task.setdefault(r["task"], {s: 0 for s in SPLITS})[r["split"]] += 1
    # each source's block with only the keys it accepts (to_dict would list the others as null)
    config = {**to_dict(cfg), "sources": {name: SOURCES[name].block(s) for name, s in cfg.sources.items()}}
    return {"config": config, "tiles_per_source": counts, "rows_per_task": per_task, "scene_notes": notes,
            "label_kinds": {t: spec.label_kind for t, spec in TASKS.items() if spec.source in scenes}}


def _scene_stats(sc: Scene, train_wins: np.ndarray, size: int, stats: dict) -> None:
    """Add the scene's TRAIN pixels to the band statistics: each pixel once, however many
    overlapping train tiles hold it (the union of the train windows), NaN skipped."""
    train = union_mask(train_wins, size, sc.valid.shape)
    if not train.any():
        return
    for key, arr in sc.arrays.items():
        if key not in NO_STATS:
            stats.setdefault((sc.source, key), RunningStats()).update(arr, train)
    for task in source_tasks(sc.source):  # continuous targets stored in an input's file (height = nDSM)
        for key, fname in TASKS[task].target_files:
            stem = fname.rsplit(".", 1)[0]
            if key not in NO_STATS and key not in sc.arrays and stem in sc.arrays and fname.endswith(".tif"):
                stats.setdefault((sc.source, key), RunningStats()).update(sc.arrays[stem], train)


def _tile_transform(transform, row: int, col: int):
    return transform @ transform.translation(col, row)


def _write_tile(cfg: PrepareConfig, sc: Scene, r: int, c: int, size: int, split: str, frac: float, out: Path,
                stats: dict, cache: dict) -> list[dict]:
    """Write one tile's files; return its index rows (one per task of the source, from :data:`TASKS`)."""
    source = sc.source
    name = f"{sc.name}_r{r:04d}_c{c:04d}"
    # flat per source (tiles/<source>/<tile>.<key>.tif): one folder per tile would make DVC walk
    # ~1,000 folders whenever it checks the prepared folder (1 s of every `dvc repro` with nothing to do)
    folder = out / "tiles" / source
    rel = f"tiles/{source}/{name}"
    tf = _tile_transform(sc.transform, r, c)
    # windows past the scene border (scenes smaller than a tile) are padded with no data
    tile = {k: crop_padded(v, r, c, size, np.nan if np.issubdtype(v.dtype, np.floating) else IGNORE_INDEX)
            for k, v in sc.arrays.items() if k != "dtm"}
    inst = crop_padded(sc.instances, r, c, size, 0) if sc.instances is not None else None
    needs = tile_needs(source)
    extra: dict[str, Any] = {}
    if needs.boxes:
        objects = _tile_objects(cfg, sc, inst, r, c, size, needs.obb)
        if objects is not None:  # boxes.json: boxes_xyxy, box_labels (and obb_cxcywha, obb_polygons)
            folder.mkdir(parents=True, exist_ok=True)
            record = {"boxes_xyxy": objects["boxes"].tolist(), "box_labels": objects["box_labels"].tolist()}
            if needs.obb:
                record.update(obb_cxcywha=objects["obb"].tolist(), obb_polygons=objects["obb_polygons"].tolist())
            atomic_write_text(folder / f"{name}.boxes.json", json.dumps(record) + "\n")
            extra["n_boxes"] = len(objects["boxes"])
        else:  # a scene without objects (an image without annotation): no rows of box tasks, empty cache entries
            objects = _no_objects(needs.obb)
        extra["objects"] = objects
    if needs.change:
        seed = cfg.seed * 1_000_003 + r * 10_007 + c
        filled = np.nan_to_num(tile["pan"], nan=0.0)
        t2, change, recs = L.synthetic_change(filled, inst, np.random.default_rng(seed), n_changes=cfg.change_per_tile,
                                              max_shift=size // 3, min_pixels=cfg.min_box_pixels)
        t2 = np.where(np.isnan(tile["pan"]), np.nan, t2)
        # the differences of a second acquisition, everywhere: their own stream of the tile's seed
        # (the edit's draws above stay what they were)
        t2, shift = L.acquisition_shift(t2, np.random.default_rng([seed, 1]), cfg.change_shift)
        tile["pan_t2"] = t2
        tile["change"] = np.where(np.isnan(tile["pan"][0]), IGNORE_INDEX, change)[None].astype(np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{name}.change.json", json.dumps({"edits": recs, "acquisition": shift}, sort_keys=True) + "\n")
        extra.update(change_fraction=float(change.mean()), change_ops=";".join(x["op"] for x in recs))
    if "building_fraction" in needs.tile_classes:
        fraction = float((inst > 0).mean())
        extra.update(building_fraction=fraction, scene_class=int(L.fraction_class(fraction, cfg.scene_edges)))
    if "dominant_class" in needs.tile_classes:
        extra["scene_class"] = L.dominant_class(tile["label"][0], len(L.ASPRS_CLASSES))
    for key, arr in tile.items():
        write_geotiff(folder / f"{name}.{key}.tif", arr, sc.crs, tf, band_names=SOURCES[source].bands.get(key))
    if split == "train":  # per-tile arrays (the synthetic after-image): one independent image per tile
        for key, arr in tile.items():
            if key not in sc.arrays and key not in NO_STATS:
                stats.setdefault((source, key), RunningStats()).update(arr)

    rows = []
    for task in source_tasks(source):
        spec = TASKS[task]
        files = {k: f"{rel}.{k}.tif" for k in (*spec.inputs, *EXTRA_FILES.get(source, ()))}
        files.update({k: f"{rel}.{fname}" for k, fname in spec.target_files})
        scene_class = extra.get("scene_class", -1) if spec.tile_class else -1
        if spec.tile_class and scene_class < 0:
            continue  # too few labelled pixels to name a tile class (counted in rows_per_task)
        if "boxes" in spec.targets and "n_boxes" not in extra:
            continue  # the scene has no objects to box (an image without annotation)
        rows.append({
            "task": task, "source": source, "scene": sc.name, "tile": name, "split": split, "row": r, "col": c,
            "size": size, "res_m": round(sc.res_m, 4), "nodata_frac": round(frac, 4),
            "label_kind": spec.label_kind, "scene_class": scene_class,
            "n_boxes": extra.get("n_boxes", 0) if "boxes" in spec.targets else 0,
            "change_fraction": round(extra.get("change_fraction", 0.0), 4) if "pan_t2" in spec.inputs else 0.0,
            "files": json.dumps(files, sort_keys=True),
        })
    # memory-map cache: one stack per (source, split, file key), shared by the source's tasks
    cache.setdefault((source, split, "tiles"), []).append(name)
    for key, arr in tile.items():
        cache.setdefault((source, split, key), []).append(arr)
    for key, arr in extra.get("objects", {}).items():  # ragged: every tile of the source, offsets in boxes_offsets.npy
        cache.setdefault((source, split, key), []).append(arr)
    return rows


def _no_objects(obb: bool) -> dict[str, np.ndarray]:
    """The empty object arrays of a tile (:func:`_tile_objects`)."""
    out = {"boxes": np.zeros((0, 4), np.float32), "box_labels": np.zeros(0, np.int64)}
    if obb:
        out.update(obb=np.zeros((0, 5), np.float32), obb_polygons=np.zeros((0, 4, 2), np.float32))
    return out


def _tile_objects(cfg: PrepareConfig, sc: Scene, inst: np.ndarray | None, r: int, c: int, size: int,
                  obb: bool) -> dict[str, np.ndarray] | None:
    """The tile's objects, row-aligned: ``boxes`` (K, 4) float32 xyxy tile pixels, ``box_labels``
    (K,) int64 and, with ``obb``, ``obb`` (K, 5) ``cx, cy, w, h, theta`` and ``obb_polygons``
    (K, 4, 2); None when the scene has neither annotated boxes nor instances.

    * annotated boxes (``sc.boxes``, the NEON crowns): clipped to the tile, kept when at least
      half their area lies inside and the clipped box is at least 1 px on each side
      (:func:`mssdf.data.labels.boxes_in_window`);
    * instances (the Atlanta footprints): one box per instance with at least
      ``cfg.min_box_pixels`` pixels in the tile, class 0
      (:func:`mssdf.data.labels.boxes_from_instances`), and its minimum-area rectangle
      (:func:`mssdf.data.labels.oriented_boxes_from_instances`, same instances, same order).
    """
    if sc.boxes is not None:
        if obb:
            raise DataError(f"{', '.join(map(str, sc.files))}: a task of source {sc.source!r} asks for oriented boxes, "
                            "but the scene has only annotated horizontal boxes")
        boxes, labels = L.boxes_in_window(sc.boxes, sc.box_labels, r, c, size, extent=sc.valid.shape)
        return {"boxes": boxes, "box_labels": labels}
    if inst is None:
        return None
    boxes = L.boxes_from_instances(inst, cfg.min_box_pixels)
    out = {"boxes": boxes, "box_labels": np.zeros(len(boxes), np.int64)}
    if obb:
        out["obb"], out["obb_polygons"] = L.oriented_boxes_from_instances(inst, cfg.min_box_pixels)
    return out


def _write_cache(out: Path, cache: dict) -> None:
    """Stack each (source, split, key) into ``cache/<source>/<split>/<key>.npy`` (order in tiles.json)."""
    for (source, split, key), arrays in sorted(cache.items(), key=lambda kv: kv[0]):
        folder = out / "cache" / source / split
        folder.mkdir(parents=True, exist_ok=True)
        if key == "tiles":
            (folder / "tiles.json").write_text(json.dumps(arrays) + "\n")
        elif key in OBJECT_KEYS:  # one row per object, tile i's rows at boxes_offsets[i]:boxes_offsets[i + 1]
            np.save(folder / f"{key}.npy", np.concatenate(arrays))
            if key == "boxes":
                np.save(folder / "boxes_offsets.npy", np.cumsum([0] + [len(b) for b in arrays]).astype(np.int64))
        else:
            np.save(folder / f"{key}.npy", np.stack(arrays))


def _write_docs(out: Path, raw: Path) -> None:
    lic = raw / "LICENSE.md"
    text = lic.read_text() if lic.exists() else ""
    (out / "LICENSE.md").write_text(
        "# Licences of the prepared tiles\n\nDerived from the raw sample below; every tile keeps its source's "
        "licence (SpaceNet-derived tiles stay CC BY-SA 4.0 when redistributed).\n\n" + text
    )
    (out / "README.md").write_text(
        "# data/prepared\n\nWritten by `mssdf.data.prepare` (DVC stage `prepare`, notebook "
        "01_prepare_data). See `index.csv` (one row per task and tile), `tasks.json`, `stats.json` "
        "(train-only band statistics), `summary.json`.\n\n"
        "**Label provenance** (`label_kind` column of index.csv):\n\n"
        + "".join(f"- `{t}` ({s.source}): **{s.label_kind}** - {s.description}\n" for t, s in TASKS.items())
        + "\nThe change-detection labels are SYNTHETIC (objects edited into real tiles) and the scene "
        "classes are DERIVED from real labels; no real change or scene labels exist in this sample. "
        "The after-image `pan_t2` also carries the differences of a second acquisition everywhere, "
        "inside and outside the mask (radiometric gain/offset/gamma shifts, an illumination gradient, "
        "sub-pixel misregistration, blur, noise; drawn per tile, `prepare.change_shift` in params.yaml, "
        "the draws in the tile's `<tile>.change.json`), while the change mask is exactly the edited pixels.\n"
    )


MANIFEST = "manifest.json"  # written after everything else (previews included) by mssdf.data.prepare


def write_manifest(folder: str | Path) -> dict[str, Any]:
    """Write ``<folder>/manifest.json``: the sha256 of every other file of the prepared folder.

    The pipeline's stages that read ``data/prepared`` depend on this one file instead of the
    whole folder, so DVC checks 1 file per stage rather than walking ~3,000 (the folder itself
    stays the ``prepare`` stage's output, checked once per ``dvc repro``). Any change to any
    file changes the manifest.

    Returns:
        ``{"count": N, "bytes": total size, "files": {relative path: sha256}}`` (sorted paths).
    """
    import hashlib

    root = Path(folder)
    files = {}
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        files[path.relative_to(root).as_posix()] = digest.hexdigest()
        total += path.stat().st_size
    manifest = {"count": len(files), "bytes": total, "files": files}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
