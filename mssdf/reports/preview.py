"""Figures and tables a person checks by eye after preparation (used by notebook 01).

All functions read the prepared folder (``out_dir``) and return matplotlib figures or
plain rows; nothing here changes data.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mssdf.data.index import read_index
from mssdf.data.io import IGNORE_INDEX, read_raster
from mssdf.data.sources import SOURCES
from mssdf.data.tasks import TASKS
from mssdf.data.tiling import SPLITS
from mssdf.modalities import CHANNELS
from mssdf.reports.plots import stretch


@dataclass(frozen=True)
class PrepareReportConfig:
    """Where the prepare stage's report writes (the ``prepare_report`` section of params.yaml)."""

    metrics: str = "scratch/prepare/metrics.json"  # tiles per task/split/source and label kinds (DVC metrics)


def stage_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The prepare stage's metrics from the summary :func:`mssdf.data.prepare.prepare` returned:
    tiles per task and split, per source (kept and rejected), and each task's label kind."""
    return {key: summary[key] for key in ("rows_per_task", "tiles_per_source", "label_kinds")}

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def hillshade(dem: np.ndarray, res: float, azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """(H, W) shaded relief in [0, 1] of a DEM in metres with ``res`` m pixels (NaN stays NaN)."""
    dy, dx = np.gradient(dem, res)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(-dx, dy)
    az, alt = np.radians(360.0 - azimuth + 90.0), np.radians(altitude)
    return np.clip(np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect), 0, 1)


def _scene(out: Path, source: str, scene: str, key: str) -> np.ndarray:
    return read_raster(out / "scenes" / source / scene / f"{key}.tif")


def _scene_res(out: Path, source: str, scene: str) -> float:
    """Metres per pixel of a prepared scene: the index's ``res_m`` (the scene's grid; its
    transform may be in feet when a lidar CRS could not be rewritten in metres), else the
    source's default ``res``."""
    res = {r["res_m"] for r in read_index(out) if r["source"] == source and r["scene"] == scene}
    return float(res.pop()) if len(res) == 1 else float(SOURCES[source].defaults.res)


def scene_previews(out: str | Path, sources: list[str]):
    """One row per source: the inputs (RGB / pan, false-colour NIR, DSM hillshade, nDSM) and labels."""
    import matplotlib.pyplot as plt

    out = Path(out)
    panels: list[tuple[str, Any, dict]] = []
    if "autzen" in sources:
        dsm = _scene(out, "autzen", "autzen", "dsm")[0]
        res = _scene_res(out, "autzen", "autzen")
        panels += [(f"Autzen RGB (lidar colour, {res:g} m)", stretch(_scene(out, "autzen", "autzen", "rgb"), 0, 100), {}),
                   ("Autzen DSM hillshade (m)", hillshade(dsm, res), {"cmap": "gray"}),
                   ("Autzen nDSM = height target (m)", _scene(out, "autzen", "autzen", "ndsm")[0], {"cmap": "viridis", "bar": True})]
    if "ign" in sources:
        ms = _scene(out, "ign", "ign", "ms")  # B, G, R, NIR
        res = _scene_res(out, "ign", "ign")
        panels += [("IGN RGB", stretch(_scene(out, "ign", "ign", "rgb"), 0, 100), {}),
                   ("IGN false colour (NIR, R, G)", stretch(ms[[3, 2, 1]]), {}),
                   ("IGN DSM hillshade", hillshade(_scene(out, "ign", "ign", "dsm")[0], res), {"cmap": "gray"}),
                   (f"IGN ASPRS label ({IGNORE_INDEX} = ignore)", np.ma.masked_equal(_scene(out, "ign", "ign", "label")[0], IGNORE_INDEX), {"cmap": "tab10", "vmin": 0, "vmax": 9})]
    if "rotterdam" in sources:
        ms = _scene(out, "rotterdam", "rotterdam1", "ms")
        panels += [(f"Rotterdam 1 pan ({_scene_res(out, 'rotterdam', 'rotterdam1'):g} m)", stretch(_scene(out, "rotterdam", "rotterdam1", "pan"))[..., 0], {"cmap": "gray"}),
                   ("Rotterdam 1 MS true colour (R, G, B)", stretch(ms[[2, 1, 0]]), {}),
                   ("Rotterdam 1 MS false colour (NIR, R, G)", stretch(ms[[3, 2, 1]]), {})]
    if "atlanta" in sources:
        pan = stretch(_scene(out, "atlanta", "atlanta", "pan"))[..., 0]
        panels += [("Atlanta pan + building footprints", (pan, _scene(out, "atlanta", "atlanta", "label")[0]), {"overlay": True})]
    if "lasvegas" in sources:
        pan = stretch(_scene(out, "lasvegas", "lasvegas", "pan"))[..., 0]
        panels += [("Las Vegas pan + road mask", (pan, _scene(out, "lasvegas", "lasvegas", "label")[0]), {"overlay": True})]
    if "neon" in sources:
        for scene in ("neon_yell_2_541000_4977000_crop", "neon_soap_061"):
            if (out / "scenes" / "neon" / scene).is_dir():
                panels += [(f"NEON {scene[5:].upper()} RGB ({_scene_res(out, 'neon', scene):g} m)",
                            stretch(_scene(out, "neon", scene, "rgb"), 0, 100, per_band=False), {})]
    ncols = 4
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax, (title, img, kw) in zip(axes.flat, panels):
        kw = dict(kw)
        if kw.pop("overlay", False):
            base, lab = img
            ax.imshow(base, cmap="gray")
            ax.imshow(np.ma.masked_where(lab != 1, lab), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
        else:
            bar = kw.pop("bar", False)
            im = ax.imshow(img, **kw)
            if bar:
                fig.colorbar(im, ax=ax, fraction=0.03)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def tile_maps(out: str | Path):
    """Each scene with its kept tiles outlined in their split's colour (tiles of a source are shared by its tasks)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    out = Path(out)
    rows = read_index(out)
    first_task = {}
    for r in rows:
        first_task.setdefault(r["source"], r["task"])
    scenes = sorted({(r["source"], r["scene"]) for r in rows})
    ncols = min(6, len(scenes))
    nrows = -(-len(scenes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(scenes):]:
        ax.axis("off")
    for ax, (source, scene) in zip(axes.flat, scenes):
        key = next(k for k in ("dsm", "pan", "rgb") if k in SOURCES[source].bands)  # heights, else the image
        base = _scene(out, source, scene, key)
        ax.imshow(stretch(base)[..., 0], cmap="gray")
        for r in rows:
            if r["scene"] == scene and r["task"] == first_task[source]:
                ax.add_patch(Rectangle((r["col"], r["row"]), r["size"], r["size"], fill=True, alpha=0.25,
                                       facecolor=SPLIT_COLOURS[r["split"]], edgecolor=SPLIT_COLOURS[r["split"]], lw=0.8))
        ax.set_title(scene, fontsize=9)
        ax.axis("off")
    fig.legend(handles=[Patch(color=c, label=s) for s, c in SPLIT_COLOURS.items()], loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.08 / nrows, 1, 1))
    return fig


def band_histograms(out: str | Path, max_tiles: int = 64):
    """Per-band histograms of the TRAIN tiles' raw values, one panel per (source, modality)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = [r for r in read_index(out) if r["split"] == "train"]
    stats = json.loads((out / "stats.json").read_text())
    pairs = sorted({(r["source"], k) for r in rows for k in r["files"] if k in CHANNELS})
    ncols = 4
    nrows = -(-len(pairs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (source, key) in zip(axes.flat, pairs):
        files = sorted({r["files"][key] for r in rows if r["source"] == source and key in r["files"]})[:max_tiles]
        data = np.concatenate([a.reshape(a.shape[0], -1) for a in (read_raster(out / f) for f in files)], 1)
        names = stats[source][key]["bands"]
        for b in range(data.shape[0]):
            v = data[b][np.isfinite(data[b])]
            ax.hist(v, bins=60, histtype="step", label=names[b] if b < len(names) else str(b))
        ax.set_title(f"{source} {key} (train, {len(files)} tiles)", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def tiles_table(out: str | Path) -> list[dict[str, Any]]:
    """Rows ``{task, source, label_kind, train, val, test}`` from the index."""
    counts = Counter((r["task"], r["split"]) for r in read_index(Path(out)))
    return [{"task": t, "source": s.source, "label_kind": s.label_kind, **{sp: counts.get((t, sp), 0) for sp in SPLITS}}
            for t, s in TASKS.items() if any(counts.get((t, sp)) for sp in SPLITS)]


def change_examples(out: str | Path, n: int = 4):
    """SYNTHETIC change pairs: before, after, mask for the ``n`` tiles with the most change."""
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = sorted((r for r in read_index(out) if r["task"] == "change"), key=lambda r: -r["change_fraction"])[:n]
    fig, axes = plt.subplots(3, max(len(rows), 1), figsize=(2.6 * max(len(rows), 1), 7.8), squeeze=False)
    for j, r in enumerate(rows):
        before, after = read_raster(out / r["files"]["pan"]), read_raster(out / r["files"]["pan_t2"])
        lo, hi = np.nanpercentile(before, [2, 98])
        for i, (img, title) in enumerate([(before[0], "before (real)"), (after[0], "after (SYNTHETIC)"),
                                         (read_raster(out / r["files"]["label"])[0], "change mask")]):
            axes[i, j].imshow(img, cmap="gray", **({"vmin": lo, "vmax": hi} if i < 2 else {"vmin": 0, "vmax": 1}))
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].axis("off")
    fig.tight_layout()
    return fig


def detection_examples(out: str | Path, n: int = 4):
    """Atlanta tiles with their building boxes (real footprints, boxes derived from them)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    rows = sorted((r for r in read_index(out) if r["task"] == "detection"), key=lambda r: -r["n_boxes"])[:n]
    fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(2.8 * max(len(rows), 1), 3.0), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        ax.imshow(stretch(read_raster(out / r["files"]["pan"]))[..., 0], cmap="gray")
        for x0, y0, x1, y1 in json.loads((out / r["files"]["boxes"]).read_text())["boxes_xyxy"]:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", lw=1))
        ax.set_title(f"{r['tile']} ({r['n_boxes']} boxes)", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


PREVIEW_FILES = ("scenes", "tile_map", "histograms", "detection", "change_synthetic")


def write_previews(out: str | Path, sources: list[str], dpi: int = 70, folder: str = "previews") -> dict[str, Any]:
    """Save every preview figure as ``<out>/<folder>/<name>.png``; returns ``{name: figure}``.

    Meant as :func:`mssdf.data.prepare.prepare`'s ``before_swap`` hook: the previews are
    written into the temporary folder, so they are swapped in together with the data (a
    failure here leaves the previous prepared folder untouched). Figures the prepared data
    cannot fill (no detection or change task among ``sources``) are skipped.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    tasks = {r["task"] for r in read_index(out)}
    makers = {
        "scenes": lambda: scene_previews(out, sources),
        "tile_map": lambda: tile_maps(out),
        "histograms": lambda: band_histograms(out),
        "detection": (lambda: detection_examples(out)) if "detection" in tasks else None,
        "change_synthetic": (lambda: change_examples(out)) if "change" in tasks else None,
    }
    target = out / folder
    target.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    for name in PREVIEW_FILES:
        if makers[name] is None:
            continue
        fig = makers[name]()
        fig.savefig(target / f"{name}.png", dpi=dpi)
        plt.close(fig)
        figures[name] = fig
    return figures
