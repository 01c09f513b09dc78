"""Prepare the embedded real sample (``data/raw``) into tiles, a tile index, and statistics.

Output layout (``out_dir``)::

    scenes/<source>/<scene>/<key>.tif   full aligned rasters (GeoTIFF, CRS + transform)
    tiles/<source>/<tile>.<key>.tif     one GeoTIFF per tile and key; <tile>.boxes.json for the detection
                                       tasks (``boxes_xyxy`` (K, 4) tile pixels, ``box_labels``
                                       (K,); Atlanta also ``obb_cxcywha`` (K, 5) and
                                       ``obb_polygons`` (K, 4, 2), row-aligned);
                                       <tile>.change.json for the synthetic change (the edits and the
                                       drawn acquisition differences of ``pan_t2``)
    cache/<source>/<split>/<key>.npy   stacked tiles (N, C, H, W) for memory-mapped loading
                                       (tiles.json: their order; the objects of all tiles in
                                       boxes.npy, box_labels.npy [, obb.npy, obb_polygons.npy],
                                       tile i's rows at boxes_offsets.npy[i]:[i + 1])
    index.csv       one row per (task, tile): split, window, nodata fraction, files, and the
                    ``label_kind`` column: real / synthetic / derived (:mod:`mssdf.data.index`;
                    ``read_index`` adds the 0/1 ``synthetic`` / ``derived`` flags from it);
                    rows come from :data:`mssdf.data.tasks.TASKS`
    tasks.json      per task: source, inputs, targets, target files, classes, label kind
    stats.json      per source and key: band names, mean/std and the pixel count over the
                    TRAIN pixels only, each pixel once (the union of overlapping train tiles;
                    the per-tile synthetic ``pan_t2`` over its train tiles)
    previews/       optional figures, written before the swap by a ``before_swap`` hook
    summary.json    counts (kept / rejected tiles per source and split), checks, config
    manifest.json   sha256 of every other file, written last (what the pipeline's stages
                    depend on, :func:`mssdf.data.output.write_manifest`)
    README.md, LICENSE.md   what this is; attribution and licences (CC BY-SA stays CC BY-SA)

Who owns what: the sources (raw files, settings, loaders) are :mod:`mssdf.data.sources`,
the tasks :mod:`mssdf.data.tasks`, the index format :mod:`mssdf.data.index`, the writing
of the folder :mod:`mssdf.data.output`; this module holds the config, the ``out_dir``
safety rules and the run.

Everything is written into a temporary sibling folder ``.<out name>.tmp-<host>-<pid>``
that replaces ``out_dir`` only at the end, so a failure never damages prepared data;
the temporary folders of runs that were killed (their process is gone) are removed by
the next run. All inputs are validated (presence, readability, band counts,
CRS/size/transform agreement, label values) before any tile is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mssdf.atomic import atomic_write_text
from mssdf.data.io import DataError
from mssdf.data.labels import AcquisitionShift
from mssdf.data.output import write_manifest, write_prepared
from mssdf.data.sources import SOURCES, SourceSettings, check_inputs, load_scenes, resolve_settings

SECTION = "prepare"  # the params.yaml section of PrepareConfig (error messages name keys from it)


@dataclass(frozen=True)
class PrepareConfig:
    """Parameters of :func:`prepare` (paths relative to the repository root).

    ``sources``: the selected sources (keys, in this order) and each one's settings
    (:class:`mssdf.data.sources.SourceSettings`: ``tile`` / ``stride`` / ``block`` window
    size, window step and spatial-split block size in pixels, ``res`` in metres per pixel,
    ``min_density`` for IGN); keys left out of a block take the source's defaults, which
    the built config holds filled in. A window with more than ``max_nodata`` of no-data
    pixels is rejected.

    ``change_shift``: ranges of the acquisition differences (radiometry, illumination
    gradient, sub-pixel misregistration, blur, noise) given to the synthetic change task's
    after-image ``pan_t2`` everywhere, drawn per tile
    (:class:`mssdf.data.labels.AcquisitionShift`, :func:`mssdf.data.labels.acquisition_shift`);
    ``enabled: false`` keeps the after-image equal to the before-image outside the mask.
    """

    raw_dir: str = "data/raw"
    out_dir: str = "scratch/prepare"
    sources: dict[str, SourceSettings] = field(default_factory=lambda: {name: SourceSettings() for name in SOURCES})
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_nodata: float = 0.3
    max_hole_px: int = 4
    scene_edges: tuple[float, ...] = (0.02, 0.15)
    change_per_tile: int = 2
    change_shift: AcquisitionShift = field(default_factory=AcquisitionShift)
    min_box_pixels: int = 16
    build_cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", resolve_settings(self.sources, f"{SECTION}.sources"))
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
        if not 0 <= self.max_nodata < 1:
            raise ValueError(f"max_nodata={self.max_nodata} must be in [0, 1)")

    @property
    def source_list(self) -> list[str]:
        """The selected source names, in order."""
        return list(self.sources)

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)


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

# ----------------------------------------------------------------------------- crash leftovers
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname()) or "localhost"


def work_dir(out: Path, kind: str, host: str | None = None, pid: int | None = None) -> Path:
    """The sibling ``.<out name>.<kind>-<host>-<pid>`` of ``out`` that a run writes into
    (``kind="tmp"``) or moves the previous output to during the swap (``"old"``)."""
    return out.parent / f".{out.name}.{kind}-{host or _host()}-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(out: Path, say: Callable[..., Any] = lambda *a, **k: None) -> list[Path]:
    """Remove the work folders (:func:`work_dir`) of ``out`` that killed runs left behind.

    Only folders named ``.<out name>.tmp-<host>-<pid>`` / ``.<out name>.old-<host>-<pid>``
    with this host's name and a pid that is no running process (or this process) are
    touched; other hosts' folders (a shared file system) and anything else are left alone.
    Names without a host (``.<out name>.tmp-<pid>`` / ``.old-<pid>``, written before work
    folders named their host) count as this host's, under the same pid rule.
    A run killed between its two renames left no ``out`` and the previous output in its
    ``.old-`` folder: that folder is put back as ``out`` instead of being removed.

    Returns:
        the folders removed (or put back).
    """
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(?:(.+)-)?([0-9]+)")  # no host: legacy name
    host, stale = _host(), []
    for p in sorted(out.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if m and (m[2] is None or m[2] == host) and p.is_dir() and not p.is_symlink():
            pid = int(m[3])
            if pid > 0 and (pid == os.getpid() or not _alive(pid)):
                stale.append((m[1], p))
    previous = [p for kind, p in stale if kind == "old" and (p / MARKER).is_file()]
    if previous and not out.exists() and not out.is_symlink():
        keep = max(previous, key=lambda p: p.stat().st_mtime)
        os.replace(keep, out)
        say(f"put back {out} from {keep.name}, left by a killed run")
    for _, p in stale:
        if p.exists():
            shutil.rmtree(p)
            say(f"removed {p}, left by a killed run")
    return [p for _, p in stale]


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
    remove_leftovers(out, say)
    check_inputs(cfg.sources, raw)
    scenes = load_scenes(cfg.sources, raw, max_hole_px=cfg.max_hole_px)
    say(f"loaded {sum(map(len, scenes.values()))} scenes in {time.perf_counter() - t0:.1f}s")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = work_dir(out, "tmp"), work_dir(out, "old")
    try:
        summary = write_prepared(cfg, scenes, tmp, raw, say)
        # no timings in the summary: the prepared folder must hash the same on every run (DVC)
        atomic_write_text(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if before_swap is not None:
            before_swap(tmp)
        write_manifest(tmp)  # last: the sha256 of every file (the downstream stages' DVC dependency)
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
