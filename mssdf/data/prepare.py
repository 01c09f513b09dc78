"""Prepare the embedded real sample (``data/raw``) into tiles, a tile index, and statistics.

Output layout (``out_dir``)::

    scenes/<source>/<scene>/<key>.tif   full aligned rasters (GeoTIFF, CRS + transform)
    tiles/<source>/<tile>/<key>.tif     one GeoTIFF per tile and key; boxes.json for detection
    cache/<source>/<split>/<key>.npy   stacked tiles (N, C, H, W) for memory-mapped loading
                                       (tiles.json: their order; boxes.npy + boxes_offsets.npy)
    index.csv       one row per (task, tile): split, window, nodata fraction, files, and the
                    ``label_kind`` column: real / synthetic / derived (``read_index`` adds
                    the 0/1 ``synthetic`` / ``derived`` flags from it); rows come from TASKS
    tasks.json      per task: source, inputs, targets, target files, classes, label kind
    stats.json      per source and key: band names, mean/std and the pixel count over the
                    TRAIN pixels only, each pixel once (the union of overlapping train tiles;
                    the per-tile synthetic ``pan_t2`` over its train tiles)
    previews/       optional figures, written before the swap by a ``before_swap`` hook
    summary.json    counts (kept / rejected tiles per source and split), checks, config
    README.md, LICENSE.md   what this is; attribution and licences (CC BY-SA stays CC BY-SA)

Everything is written into a temporary sibling folder that replaces ``out_dir`` only at
the end, so a failure never damages prepared data. All inputs are validated (presence,
readability, band counts, CRS/size/transform agreement, label values) before any tile
is written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mssdf.atomic import atomic_write_text
from mssdf.config import to_dict
from mssdf.data import labels as L
from mssdf.data.align import align_pair
from mssdf.data.io import DataError, check_aligned, raster_info, read_nan, read_raster
from mssdf.data.lidar import read_las, rasterise
from mssdf.data.stats import RunningStats
from mssdf.data.tiling import SPLITS, block_split, crop_padded, union_mask, window_fraction, windows
from mssdf.data.write import write_geotiff

SOURCES = ("autzen", "ign", "rotterdam", "atlanta", "lasvegas")

# Raw files each source needs (relative to raw_dir).
RAW_FILES: dict[str, tuple[str, ...]] = {
    "autzen": ("laspy/autzen_trim.laz",),
    "ign": ("laspy/append-bug.laz",),
    "rotterdam": tuple(f"solaris/preproc_tutorial/{k}{i}.tif" for i in (1, 2, 3) for k in ("pan", "ms")),
    "atlanta": ("solaris/sample_geotiff.tif", "solaris/geotiff_labels.geojson"),
    "lasvegas": ("solaris/road_mask_input.tif", "solaris/sample_road_raster_mask.tif", "solaris/sample_roads.geojson"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What a task's samples hold; drives the index rows :func:`prepare` writes.

    Attributes:
        source: the source whose tiles the task uses.
        inputs: input keys; each is the tile file ``<key>.tif``.
        targets: sample target keys.
        label_kind: ``real``, ``synthetic``, ``derived`` (or ``none``: no labels).
        classes, description: class names; what the task is.
        target_files: ``(target key, file in the tile folder)`` pairs, e.g. ``("height",
            "ndsm.tif")``; a task with ``pan_t2`` among its inputs gets the synthetic change
            pair, a task with ``boxes`` among its targets the ``n_boxes`` index column.
        tile_class: rule of a per-tile class label (index column ``scene_class``, no file):
            ``building_fraction`` (bins of the footprint fraction) or ``dominant_class``
            (most frequent label class); tiles without a class get no row.
    """

    source: str
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    label_kind: str
    classes: tuple[str, ...] = ()
    description: str = ""
    target_files: tuple[tuple[str, str], ...] = ()
    tile_class: str | None = None

    @property
    def synthetic(self) -> bool:
        """Labels made by editing real data (derived from ``label_kind``)."""
        return self.label_kind == "synthetic"

    @property
    def derived(self) -> bool:
        """Labels computed from other real labels (derived from ``label_kind``)."""
        return self.label_kind == "derived"


def _asprs_names() -> tuple[str, ...]:
    return tuple(name for _, (_, name) in sorted(L.ASPRS_CLASSES.items(), key=lambda kv: kv[1][0]))


TASKS: dict[str, TaskSpec] = {
    "pretrain_autzen": TaskSpec("autzen", ("rgb", "dsm"), (), "none", description="RGB <-> DSM pairs (Autzen lidar, 1 m)"),
    "pretrain_ign": TaskSpec("ign", ("rgb", "ms", "dsm"), (), "none", description="RGB + MS(B,G,R,NIR) <-> DSM (IGN lidar)"),
    "pretrain_rotterdam": TaskSpec("rotterdam", ("pan", "ms"), (), "none", description="pan <-> MS pairs (SpaceNet 6 Rotterdam)"),
    "height": TaskSpec("autzen", ("rgb",), ("height",), "real", description="RGB -> nDSM height (m), the US3D analogue",
                       target_files=(("height", "ndsm.tif"),)),
    "seg_asprs": TaskSpec("ign", ("rgb", "ms", "dsm"), ("label",), "real", _asprs_names(), "ASPRS classes of the top point",
                          target_files=(("label", "label.tif"),)),
    "seg_buildings": TaskSpec("atlanta", ("pan",), ("label",), "real", ("background", "building"), "SpaceNet 4 footprints",
                              target_files=(("label", "label.tif"),)),
    "seg_roads": TaskSpec("lasvegas", ("pan",), ("label",), "real", ("background", "road"), "SpaceNet 3 road mask",
                          target_files=(("label", "label.tif"),)),
    "detection": TaskSpec("atlanta", ("pan",), ("boxes", "box_labels"), "real", ("building",), "building boxes",
                          target_files=(("boxes", "boxes.json"),)),
    "change": TaskSpec(
        "atlanta", ("pan", "pan_t2"), ("label",), "synthetic", ("unchanged", "changed"),
        "SYNTHETIC: buildings removed/pasted/shifted in real tiles; exact change mask", target_files=(("label", "change.tif"),),
    ),
    "scene": TaskSpec(
        "atlanta", ("pan",), ("label",), "derived", ("few buildings", "some buildings", "dense buildings"),
        "DERIVED: tile class = bin of the real building fraction", tile_class="building_fraction",
    ),
    "scene_asprs": TaskSpec(
        "ign", ("rgb", "ms", "dsm"), ("label",), "derived", _asprs_names(), "DERIVED: dominant ASPRS class of the tile",
        tile_class="dominant_class",
    ),
}

# Files every index row of a source lists besides its task's own (SampleTiles can then
# return the nDSM in place of the DSM: ``dsm_source="ndsm"``).
EXTRA_FILES: dict[str, tuple[str, ...]] = {"autzen": ("dsm", "ndsm"), "ign": ("dsm", "ndsm")}
# Scene arrays that get no band statistics (labels; the DTM is not tiled).
NO_STATS = ("label", "change", "dtm")

BAND_NAMES: dict[str, dict[str, list[str]]] = {
    "autzen": {"rgb": ["red", "green", "blue"], "dsm": ["dsm_m"], "ndsm": ["ndsm_m"], "height": ["ndsm_m"]},
    "ign": {"rgb": ["red", "green", "blue"], "ms": ["blue", "green", "red", "nir"], "dsm": ["dsm_m"], "ndsm": ["ndsm_m"]},
    "rotterdam": {"pan": ["pan"], "ms": ["blue", "green", "red", "nir"]},
    "atlanta": {"pan": ["pan"], "pan_t2": ["pan"]},
    "lasvegas": {"pan": ["pan"]},
}


@dataclass(frozen=True)
class PrepareConfig:
    """Parameters of :func:`prepare` (paths relative to the repository root).

    ``<source>_tile`` / ``<source>_stride`` / ``<source>_block``: window size, window
    step and spatial-split block size in pixels (block >= tile); a window with more than
    ``max_nodata`` of no-data pixels is rejected; ``*_res`` in metres per pixel.
    """

    raw_dir: str = "data/raw"
    out_dir: str = "scratch/prepare"
    sources: str = ",".join(SOURCES)  # comma-separated subset of SOURCES
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_nodata: float = 0.3
    autzen_res: float = 1.0
    autzen_tile: int = 64
    autzen_stride: int = 16
    autzen_block: int = 96
    ign_res: float = 0.5
    ign_min_density: float = 2.0
    ign_tile: int = 32
    ign_stride: int = 8
    ign_block: int = 32
    rotterdam_res: float = 0.5
    rotterdam_tile: int = 64
    rotterdam_stride: int = 64
    rotterdam_block: int = 128
    atlanta_tile: int = 64
    atlanta_stride: int = 64
    atlanta_block: int = 128
    lasvegas_tile: int = 64
    lasvegas_stride: int = 64
    lasvegas_block: int = 128
    max_hole_px: int = 4
    scene_edges: tuple[float, ...] = (0.02, 0.15)
    change_per_tile: int = 2
    min_box_pixels: int = 16
    build_cache: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.source_list if s not in SOURCES]
        if bad or not self.source_list:
            raise ValueError(f"sources={self.sources!r}: unknown {bad}; choose from {list(SOURCES)}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
        if not 0 <= self.max_nodata < 1:
            raise ValueError(f"max_nodata={self.max_nodata} must be in [0, 1)")
        for s in SOURCES:
            tile, stride = getattr(self, f"{s}_tile"), getattr(self, f"{s}_stride")
            if tile < 8 or stride < 1 or stride > tile:
                raise ValueError(f"{s}_tile={tile}, {s}_stride={stride}: need tile >= 8 and 1 <= stride <= tile")
            if getattr(self, f"{s}_block") < tile:
                raise ValueError(f"{s}_block={getattr(self, f'{s}_block')} must be at least {s}_tile={tile}")

    @property
    def source_list(self) -> list[str]:
        return [s.strip() for s in self.sources.split(",") if s.strip()]

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)


@dataclass
class Scene:
    """One aligned scene: ``arrays[key]`` (C, H, W) float32 (labels (1, H, W)); ``valid`` (H, W)."""

    source: str
    name: str
    crs: Any
    transform: Any
    arrays: dict[str, np.ndarray]
    valid: np.ndarray
    instances: np.ndarray | None = None  # (H, W) int32 object ids (Atlanta buildings)
    files: tuple[Path, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- input checks
def check_inputs(cfg: PrepareConfig, raw: Path) -> None:
    """Validate every raw input the selected sources need, cheaply, before any work.

    Raises:
        DataError: missing file (naming its partner), unreadable or truncated raster,
            wrong band count, CRS/size/transform mismatch, unreadable LAS header.
    """
    import laspy

    for source in cfg.source_list:
        paths = [raw / rel for rel in RAW_FILES[source]]
        for p in paths:
            if not p.is_file():
                partners = ", ".join(q.name for q in paths if q != p)
                raise DataError(f"{p}: file not found (needed with {partners} for source {source!r}; run `python -m mssdf.data.fetch`)")
        for p in paths:
            if p.suffix == ".laz":
                try:
                    with laspy.open(p) as f:
                        _ = f.header.point_count
                except Exception as err:  # noqa: BLE001 - any laspy failure
                    raise DataError(f"{p}: not a readable LAS/LAZ file ({err})") from err
            elif p.suffix == ".tif":
                read_raster(p)  # full read: truncated pixel data fails here, not mid-run
        if source == "rotterdam":
            for i in (1, 2, 3):
                raster_info(raw / f"solaris/preproc_tutorial/pan{i}.tif", expected_bands=1)
                raster_info(raw / f"solaris/preproc_tutorial/ms{i}.tif", expected_bands=4)
        if source == "atlanta":
            raster_info(paths[0], expected_bands=1)
            L.read_geojson(paths[1])
        if source == "lasvegas":
            check_aligned([raster_info(paths[0], expected_bands=1), raster_info(paths[1], expected_bands=1)])


# ----------------------------------------------------------------------------- scene loaders
# No data in the raster sources, one rule for all (mssdf.data.io.nodata_to_nan): NaN, the
# header's nodata value, or - for files that declare none - this fallback value. The SpaceNet
# images use 0 outside the imaged area (Rotterdam pan2/ms2 have such a border, undeclared).
NODATA_FALLBACK: dict[str, float | None] = {"rotterdam": 0.0, "atlanta": 0.0, "lasvegas": 0.0}

def load_autzen(cfg: PrepareConfig, raw: Path) -> list[Scene]:
    """Autzen lidar -> rgb, dsm, ndsm (and dtm) at ``autzen_res`` m; heights in metres."""
    path = raw / RAW_FILES["autzen"][0]
    r = rasterise(read_las(path), res=cfg.autzen_res, max_hole_px=cfg.max_hole_px)
    if r.rgb is None:
        raise DataError(f"{path}: points carry no RGB")
    valid = np.isfinite(r.dsm[0]) & np.isfinite(r.ndsm[0]) & np.all(np.isfinite(r.rgb), 0)
    arrays = {"rgb": r.rgb, "dsm": r.dsm, "ndsm": r.ndsm, "dtm": r.dtm}
    return [Scene("autzen", "autzen", r.crs, r.grid.transform, arrays, valid, files=(path,), notes=r.info)]


def load_ign(cfg: PrepareConfig, raw: Path) -> list[Scene]:
    """IGN lidar -> rgb, ms (B, G, R, NIR raw), dsm, ndsm, ASPRS label at ``ign_res`` m."""
    path = raw / RAW_FILES["ign"][0]
    pc = read_las(path)
    r = rasterise(pc, res=cfg.ign_res, max_hole_px=cfg.max_hole_px, min_density=cfg.ign_min_density)
    if r.rgb is None or r.nir is None:
        raise DataError(f"{path}: points carry no RGB and NIR")
    label = L.map_asprs(r.cls, path)
    raw_rgb = r.rgb * np.float32(pc.rgb_scale)
    ms = np.concatenate([raw_rgb[::-1], r.nir]).astype(np.float32)
    valid = np.isfinite(r.dsm[0]) & np.isfinite(r.ndsm[0]) & np.all(np.isfinite(ms), 0)
    label = np.where(valid, label, L.IGNORE).astype(np.uint8)
    arrays = {"rgb": r.rgb, "ms": ms, "dsm": r.dsm, "ndsm": r.ndsm, "dtm": r.dtm, "label": label[None]}
    return [Scene("ign", "ign", r.crs, r.grid.transform, arrays, valid, files=(path,), notes=r.info)]


def load_rotterdam(cfg: PrepareConfig, raw: Path) -> list[Scene]:
    """Three SpaceNet 6 pan (0.5 m) / MS (1 m) pairs on a common grid at ``rotterdam_res`` m."""
    scenes = []
    for i in (1, 2, 3):
        pan_p, ms_p = raw / f"solaris/preproc_tutorial/pan{i}.tif", raw / f"solaris/preproc_tutorial/ms{i}.tif"
        pan, ms, grid = align_pair(pan_p, ms_p, cfg.rotterdam_res, 1, 4, zero_is_nodata=NODATA_FALLBACK["rotterdam"] == 0)
        valid = np.isfinite(pan[0]) & np.all(np.isfinite(ms), 0)
        if not valid.any():
            raise DataError(f"{pan_p}: no valid pixel shared with its partner {ms_p} (all no data)")
        scenes.append(Scene("rotterdam", f"rotterdam{i}", grid.crs, grid.affine, {"pan": pan, "ms": ms}, valid, files=(pan_p, ms_p)))
    return scenes


def load_atlanta(cfg: PrepareConfig, raw: Path) -> list[Scene]:
    """SpaceNet 4 Atlanta pan + rasterised footprints (label, instance ids)."""
    img_p, gj_p = (raw / rel for rel in RAW_FILES["atlanta"])
    mask_p = raw / "solaris/sample_fp_mask.tif"  # optional, only compared with (see notes)
    info = raster_info(img_p)
    pan = read_nan(img_p, expected_bands=1, fallback_nodata=NODATA_FALLBACK["atlanta"])
    valid = np.isfinite(pan[0])
    if not valid.any():
        raise DataError(f"{img_p}: every pixel is no data")
    features, fcrs = L.read_geojson(gj_p)
    from rasterio.transform import Affine

    transform = Affine(*info.transform)
    inst = L.rasterise_features(features, fcrs, info.crs, transform, (info.height, info.width))
    label = np.where(valid, inst > 0, L.IGNORE).astype(np.uint8)
    notes = {"footprints": len(features), "building_fraction": float((inst > 0).mean())}
    if mask_p.is_file():  # the solaris fixture mask: it does NOT match this image (IoU ~0.04), so it is not used
        ref = L.mask_to_label(read_raster(mask_p, expected_bands=1, dtype=np.uint8)[0], mask_p)
        inter, union = np.logical_and(ref == 1, inst > 0).sum(), np.logical_or(ref == 1, inst > 0).sum()
        notes["iou_with_sample_fp_mask"] = float(inter / max(union, 1))
    return [Scene("atlanta", "atlanta", info.crs, transform, {"pan": pan, "label": label[None]}, valid, inst, (img_p, gj_p), notes)]


def load_lasvegas(cfg: PrepareConfig, raw: Path) -> list[Scene]:
    """SpaceNet 3 Las Vegas pan + road mask (kept on its native EPSG:4326 grid)."""
    img_p, mask_p, lines_p = (raw / rel for rel in RAW_FILES["lasvegas"])
    info = raster_info(img_p)
    check_aligned([info, raster_info(mask_p)])
    pan = read_nan(img_p, expected_bands=1, fallback_nodata=NODATA_FALLBACK["lasvegas"])
    valid = np.isfinite(pan[0])
    if not valid.any():
        raise DataError(f"{img_p}: every pixel is no data")
    label = L.mask_to_label(read_raster(mask_p, expected_bands=1, dtype=np.uint8)[0], mask_p)
    label = np.where(valid, label, L.IGNORE).astype(np.uint8)
    from rasterio.transform import Affine, array_bounds

    features, fcrs = L.read_geojson(lines_p)
    xs = [pt[0] for f in features for pt in f["geometry"]["coordinates"]]
    ys = [pt[1] for f in features for pt in f["geometry"]["coordinates"]]
    transform = Affine(*info.transform)
    west, south, east, north = array_bounds(info.height, info.width, transform)
    overlaps = bool(xs) and not (max(xs) < west or min(xs) > east or max(ys) < south or min(ys) > north)
    notes = {"road_fraction": float((label == 1).mean()), "road_lines_overlap_image": overlaps,
             "note": "the road label is the raster mask; sample_roads.geojson lies outside the image" if not overlaps else ""}
    return [Scene("lasvegas", "lasvegas", info.crs, transform, {"pan": pan, "label": label[None]}, valid, files=(img_p, mask_p), notes=notes)]


LOADERS = {"autzen": load_autzen, "ign": load_ign, "rotterdam": load_rotterdam, "atlanta": load_atlanta, "lasvegas": load_lasvegas}
SOURCE_TASKS = {s: [t for t, spec in TASKS.items() if spec.source == s] for s in SOURCES}


# ----------------------------------------------------------------------------- tiling and writing
def _tile_transform(transform, row: int, col: int):
    return transform @ transform.translation(col, row)


def _res_m(cfg: PrepareConfig, source: str, scene: Scene) -> float:
    if source in ("autzen", "ign", "rotterdam"):
        return float(getattr(cfg, f"{source}_res"))
    if source == "lasvegas":  # degrees -> metres (north-south), for information only
        return float(abs(scene.transform.e) * 111_320.0)
    return float(abs(scene.transform.a))


MARKER = "summary.json"  # written last into every prepared folder: only such a folder is ever replaced


def _inside(a: Path, b: Path) -> bool:
    """True if ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def check_out_dir(out: Path, raw: Path, root: str | Path | None = None) -> None:
    """Refuse an output folder whose replacement could destroy data that prepare did not write.

    ``prepare`` deletes the previous ``out_dir`` after the new one is in place, so ``out``
    must not be, contain or lie inside the raw folder, must not be or contain the
    repository root (nor the checkout holding this package), and, if it exists, must be
    an empty folder or a folder holding :data:`MARKER` (i.e. written by prepare).

    Raises:
        DataError: naming both paths (or the folder lacking the marker).
    """
    from mssdf.paths import repo_root

    out, raw = Path(out).resolve(), Path(raw).resolve()
    if _inside(out, raw) or _inside(raw, out):
        rel = "is" if out == raw else ("is inside" if _inside(out, raw) else "contains")
        raise DataError(f"out_dir {out} {rel} the raw folder {raw}; replacing it would delete raw data - choose another out_dir")
    roots = {Path(__file__).resolve().parents[2]}
    try:
        roots.add(repo_root(root))
    except FileNotFoundError:
        pass
    for repo in sorted(roots):
        if _inside(repo, out):
            raise DataError(f"out_dir {out} is or contains the repository root {repo}; replacing it would delete "
                            "the checkout - choose a sub-folder such as data/prepared")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise DataError(f"out_dir {out} exists and is not a folder; refusing to replace it")
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise DataError(f"out_dir {out} exists but holds no {MARKER} (it was not written by prepare); "
                            "refusing to replace it - remove it yourself or choose another out_dir")


def prepare(
    cfg: PrepareConfig,
    root: str | Path | None = None,
    log=print,
    before_swap: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Run the whole preparation (see the module docstring); returns the summary dict.

    Args:
        cfg: parameters; ``raw_dir``/``out_dir`` are repository-relative (or absolute).
        root: repository root for relative paths (default: found from the cwd).
        log: progress printer (``None`` for silence).
        before_swap: optional ``f(folder)`` called on the complete temporary folder (all
            files, ``summary.json`` included) before it replaces ``out_dir``, e.g. to write
            ``previews/`` (:func:`mssdf.reports.preview.write_previews`); if it raises,
            ``out_dir`` is left untouched.

    Raises:
        DataError: bad inputs, or an unsafe ``out_dir`` (see :func:`check_out_dir`).
    """
    from mssdf.paths import resolve

    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    raw, out = resolve(cfg.raw_dir, root), resolve(cfg.out_dir, root)
    check_out_dir(out, raw, root)
    check_inputs(cfg, raw)
    scenes: dict[str, list[Scene]] = {s: LOADERS[s](cfg, raw) for s in cfg.source_list}
    say(f"loaded {sum(map(len, scenes.values()))} scenes in {time.perf_counter() - t0:.1f}s")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _write_all(cfg, scenes, tmp, raw, say)
        # no timings in the summary: the prepared folder must hash the same on every run (DVC)
        atomic_write_text(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if before_swap is not None:
            before_swap(tmp)
        check_out_dir(out, raw, root)  # again: out_dir may have changed during the run
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.replace(old, out)  # put the previous output back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"prepared {out} in {time.perf_counter() - t0:.1f}s")
    return summary


def _write_all(cfg: PrepareConfig, scenes: dict[str, list[Scene]], out: Path, raw: Path, say) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    stats: dict[tuple[str, str], RunningStats] = {}
    cache: dict[tuple[str, str, str, str], list[np.ndarray]] = {}
    counts: dict[str, dict[str, int]] = {}
    notes: dict[str, Any] = {}
    for source, src_scenes in scenes.items():
        size, stride = getattr(cfg, f"{source}_tile"), getattr(cfg, f"{source}_stride")
        block = getattr(cfg, f"{source}_block")
        cand, fracs = [], []
        n_windows = 0
        for sc in src_scenes:
            h, w = sc.valid.shape
            wins = windows(h, w, size, stride)  # a scene smaller than a tile: one padded window
            n_windows += len(wins)
            frac = 1.0 - window_fraction(sc.valid, wins, size) if len(wins) else np.zeros(0)
            keep = frac <= cfg.max_nodata
            cand.append(wins[keep])
            fracs.append(frac[keep])
            for key, arr in sc.arrays.items():
                write_geotiff(out / "scenes" / source / sc.name / f"{key}.tif", arr, sc.crs, sc.transform,
                              band_names=BAND_NAMES[source].get(key))
            notes[sc.name] = sc.notes
        splits = block_split(cand, size, block, cfg.fractions, cfg.seed + SOURCES.index(source))
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
    _write_index(out / "index.csv", rows)
    stats_json = {src: {key: {"bands": BAND_NAMES[src].get(key, []), **acc.result()} for (s2, key), acc in sorted(stats.items()) if s2 == src}
                  for src in scenes}
    (out / "stats.json").write_text(json.dumps(stats_json, indent=2, sort_keys=True) + "\n")
    tasks = {t: {**to_dict(spec), "target_files": dict(spec.target_files), "synthetic": spec.synthetic, "derived": spec.derived}
             for t, spec in TASKS.items() if spec.source in scenes}
    (out / "tasks.json").write_text(json.dumps(tasks, indent=2, sort_keys=True) + "\n")
    if cfg.build_cache:
        _write_cache(out, rows, cache)
    _write_docs(out, raw)
    per_task: dict[str, dict[str, int]] = {}
    for r in rows:
        per_task.setdefault(r["task"], {s: 0 for s in SPLITS})[r["split"]] += 1
    return {"config": to_dict(cfg), "tiles_per_source": counts, "rows_per_task": per_task, "scene_notes": notes,
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
    for task in SOURCE_TASKS[sc.source]:  # continuous targets stored in an input's file (height = nDSM)
        for key, fname in TASKS[task].target_files:
            stem = fname.rsplit(".", 1)[0]
            if key not in NO_STATS and key not in sc.arrays and stem in sc.arrays and fname.endswith(".tif"):
                stats.setdefault((sc.source, key), RunningStats()).update(sc.arrays[stem], train)


def _source_needs(source: str) -> tuple[bool, bool, set[str]]:
    """What the source's tasks need per tile: boxes, the synthetic change pair, tile-class rules."""
    specs = [TASKS[t] for t in SOURCE_TASKS[source]]
    return (any("boxes" in s.targets for s in specs), any("pan_t2" in s.inputs for s in specs),
            {s.tile_class for s in specs if s.tile_class})


def _write_tile(cfg, sc: Scene, r: int, c: int, size: int, split: str, frac: float, out: Path, stats, cache) -> list[dict]:
    """Write one tile's files; return its index rows (one per task of the source, from :data:`TASKS`)."""
    source = sc.source
    name = f"{sc.name}_r{r:04d}_c{c:04d}"
    folder = out / "tiles" / source / name
    rel = f"tiles/{source}/{name}"
    tf = _tile_transform(sc.transform, r, c)
    # windows past the scene border (scenes smaller than a tile) are padded with no data
    tile = {k: crop_padded(v, r, c, size, np.nan if np.issubdtype(v.dtype, np.floating) else L.IGNORE)
            for k, v in sc.arrays.items() if k != "dtm"}
    inst = crop_padded(sc.instances, r, c, size, 0) if sc.instances is not None else None
    need_boxes, need_change, class_rules = _source_needs(source)
    extra: dict[str, Any] = {}
    if need_boxes:
        boxes = L.boxes_from_instances(inst, cfg.min_box_pixels)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "boxes.json", json.dumps({"boxes_xyxy": boxes.tolist(), "box_labels": [0] * len(boxes)}) + "\n")
        extra.update(boxes=boxes, n_boxes=len(boxes))
    if need_change:
        seed = cfg.seed * 1_000_003 + r * 10_007 + c
        filled = np.nan_to_num(tile["pan"], nan=0.0)
        t2, change, recs = L.synthetic_change(filled, inst, np.random.default_rng(seed), n_changes=cfg.change_per_tile,
                                              max_shift=size // 3, min_pixels=cfg.min_box_pixels)
        t2 = np.where(np.isnan(tile["pan"]), np.nan, t2).astype(np.float32)
        tile["pan_t2"] = t2
        tile["change"] = np.where(np.isnan(tile["pan"][0]), L.IGNORE, change)[None].astype(np.uint8)
        extra.update(change_fraction=float(change.mean()), change_ops=";".join(x["op"] for x in recs))
    if "building_fraction" in class_rules:
        fraction = float((inst > 0).mean())
        extra.update(building_fraction=fraction, scene_class=int(L.fraction_class(fraction, cfg.scene_edges)))
    if "dominant_class" in class_rules:
        extra["scene_class"] = L.dominant_class(tile["label"][0], len(L.ASPRS_CLASSES))
    for key, arr in tile.items():
        write_geotiff(folder / f"{key}.tif", arr, sc.crs, tf, band_names=BAND_NAMES[source].get(key))
    if split == "train":  # per-tile arrays (the synthetic after-image): one independent image per tile
        for key, arr in tile.items():
            if key not in sc.arrays and key not in NO_STATS:
                stats.setdefault((source, key), RunningStats()).update(arr)

    rows = []
    for task in SOURCE_TASKS[source]:
        spec = TASKS[task]
        files = {k: f"{rel}/{k}.tif" for k in (*spec.inputs, *EXTRA_FILES.get(source, ()))}
        files.update({k: f"{rel}/{fname}" for k, fname in spec.target_files})
        scene_class = extra.get("scene_class", -1) if spec.tile_class else -1
        if spec.tile_class and scene_class < 0:
            continue  # too few labelled pixels to name a tile class (counted in rows_per_task)
        rows.append({
            "task": task, "source": source, "scene": sc.name, "tile": name, "split": split, "row": r, "col": c,
            "size": size, "res_m": round(_res_m(cfg, source, sc), 4), "nodata_frac": round(frac, 4),
            "label_kind": spec.label_kind, "scene_class": scene_class,
            "n_boxes": extra.get("n_boxes", 0) if "boxes" in spec.targets else 0,
            "change_fraction": round(extra.get("change_fraction", 0.0), 4) if "pan_t2" in spec.inputs else 0.0,
            "files": json.dumps(files, sort_keys=True),
        })
    # memory-map cache: one stack per (source, split, file key), shared by the source's tasks
    cache.setdefault((source, split, "tiles"), []).append(name)
    for key, arr in tile.items():
        cache.setdefault((source, split, key), []).append(arr)
    if "boxes" in extra:
        cache.setdefault((source, split, "boxes"), []).append(extra["boxes"])
    return rows


INDEX_COLUMNS = ("task", "source", "scene", "tile", "split", "row", "col", "size", "res_m", "nodata_frac", "label_kind",
                 "scene_class", "n_boxes", "change_fraction", "files")


def _write_index(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_cache(out: Path, rows: list[dict], cache: dict) -> None:
    """Stack each (source, split, key) into ``cache/<source>/<split>/<key>.npy`` (order in tiles.json)."""
    for (source, split, key), arrays in sorted(cache.items(), key=lambda kv: kv[0]):
        folder = out / "cache" / source / split
        folder.mkdir(parents=True, exist_ok=True)
        if key == "tiles":
            (folder / "tiles.json").write_text(json.dumps(arrays) + "\n")
        elif key == "boxes":
            offsets = np.cumsum([0] + [len(b) for b in arrays]).astype(np.int64)
            np.save(folder / "boxes.npy", np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, 4), np.float32))
            np.save(folder / "boxes_offsets.npy", offsets)
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
        "classes are DERIVED from real labels; no real change or scene labels exist in this sample.\n"
    )


def read_index(root: str | Path) -> list[dict[str, Any]]:
    """Rows of ``<root>/index.csv`` with numeric columns converted and ``files`` parsed.

    ``synthetic`` / ``derived`` (0/1) are derived from ``label_kind`` (not stored).
    """
    path = Path(root) / "index.csv"
    if not path.is_file():
        raise DataError(f"{path}: no tile index; run the preparation first")
    ints = {"row", "col", "size", "scene_class", "n_boxes"}
    floats = {"res_m", "nodata_frac", "change_fraction"}
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r = dict(r)
            for k in ints:
                r[k] = int(r[k])
            for k in floats:
                r[k] = float(r[k])
            r["files"] = json.loads(r["files"])
            r["synthetic"], r["derived"] = int(r["label_kind"] == "synthetic"), int(r["label_kind"] == "derived")
            out.append(r)
    return out
