"""Torch datasets over the prepared sample tiles (``data/prepared``, see :mod:`mssdf.data.prepare`).

Sample dict (keys as in :mod:`mssdf.data.readers.base`):
    * inputs: ``rgb`` (3, H, W) 0-255, ``ms`` (N, H, W) raw, ``dsm`` (1, H, W) metres,
      ``pan`` (1, H, W) raw, ``pan_t2`` (1, H, W) the SYNTHETIC "after" image of the change
      task; float32, raw (the model normalises with ``stats.json``). No-data input pixels
      are filled with the band's train mean (``fill_nodata=True``) and flagged in ``valid``.
    * ``valid`` (H, W) bool: every requested input has data there.
    * targets: ``label`` int64 (H, W) with 255 = ignore, or an int64 scalar for scene
      classes; ``height`` float32 (H, W) metres, NaN = no data; ``boxes`` float32 (K, 4)
      xyxy pixels and ``box_labels`` int64 (K,) (the class ids of the task's ``classes``);
      for tasks with ``obb`` among their targets (``detection``), ``obb`` float32 (K, 5)
      ``cx, cy, w, h, theta``: each object's minimum-area rectangle, ``theta`` the angle of the
      ``w`` side against the x axis (radians, x right / y down) in ``[-pi/4, pi/4)``. The three
      are row-aligned: row ``k`` of each is the same object.
    * ``meta``: task, source, tile, split, label_kind ("real" / "synthetic" / "derived").

Two back ends with identical output: ``"npy"`` reads the memory-mapped stacks in
``cache/`` (fast), ``"tif"`` reads the per-tile GeoTIFFs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mssdf.config import ConfigError
from mssdf.data.io import DataError, read_raster
from mssdf.data.index import cache_stem, read_index
from mssdf.data.readers.base import detection_collate
from mssdf.data.tasks import TASKS
from mssdf.data.tiling import SPLITS
from mssdf.modalities import CHANNELS, DSM_SOURCES, file_key

#: Sample keys a tile may hold as inputs: the modalities, and the change task's second date.
INPUT_KEYS = (*CHANNELS, "pan_t2")


class SampleArgumentError(ConfigError, DataError):
    """A bad :class:`SampleTiles` argument: a :class:`~mssdf.config.ConfigError` like the
    readers raise (also a DataError, which it was before, so older handlers still catch it)."""


def load_stats(root: str | Path, task: str) -> dict[str, dict[str, Any]]:
    """Train-only band statistics of a task's source: ``{key: {"bands", "mean", "std", "pixels"}}``."""
    path = Path(root) / "stats.json"
    if not path.is_file():
        raise DataError(f"{path}: no statistics; run the preparation first")
    return json.loads(path.read_text())[TASKS[task].source]


def crop_objects(objects: dict[str, np.ndarray], row: int, col: int, size: int) -> dict[str, np.ndarray]:
    """A tile's objects in its ``size`` crop at ``(row, col)`` (the :class:`SampleTiles` crop rule).

    Args:
        objects: row-aligned ``boxes`` (K, 4) xyxy tile pixels, ``box_labels`` (K,), and
            optionally ``obb`` (K, 5) ``cx, cy, w, h, theta``.

    Returns:
        the same keys, row-aligned, in crop pixels: ``boxes`` shifted and clipped to the crop,
        an object dropped when its clipped box has no area or - with ``obb`` - when its
        oriented box's centre leaves the crop (``0 <= cx < size`` and ``0 <= cy < size``); the
        oriented boxes kept are shifted, not clipped.
    """
    boxes = np.clip(objects["boxes"] - np.array([col, row, col, row], np.float32), 0, size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = {**objects, "boxes": boxes}
    if "obb" in objects:
        obb = objects["obb"] - np.array([col, row, 0, 0, 0], np.float32)
        keep &= (obb[:, 0] >= 0) & (obb[:, 0] < size) & (obb[:, 1] >= 0) & (obb[:, 1] < size)
        out["obb"] = obb
    return {k: v[keep] for k, v in out.items()}


class SampleTiles(Dataset):
    """Tiles of one task and split of the prepared sample.

    Args:
        root: the prepared folder (e.g. ``data/prepared``).
        task: one of :data:`mssdf.data.tasks.TASKS` (``pretrain_autzen``, ``seg_roads``, ...).
        split: ``train``, ``val`` or ``test``.
        modalities: input keys to return (default: the task's inputs). ``dsm`` for the
            lidar sources is the absolute DSM unless ``dsm_source="ndsm"``.
        crop: side of a crop to return (None = whole tile); random position when
            ``random_crop`` (pre-training windows), else centred. Objects of a crop: the
            horizontal boxes are shifted and clipped to it and dropped when no area is left;
            for tasks with ``obb``, an object is also dropped when its oriented box's centre
            leaves the crop (``0 <= cx < crop``, ``0 <= cy < crop``), and the oriented boxes
            kept are shifted, not clipped (they may reach past the crop); ``boxes``, ``obb``
            and ``box_labels`` stay row-aligned (:func:`crop_objects`). The random position of
            sample ``i`` at epoch ``e`` is a function of ``(seed, e, i)`` only
            (:meth:`crop_rng`): DataLoader workers draw different crops, and a resumed run
            (same seed, :meth:`set_epoch`) draws the same ones again.
        backend: ``"npy"`` (memory-mapped cache) or ``"tif"`` (GeoTIFF per tile).
        fill_nodata: replace NaN input pixels by the train mean of their band.
        normalize: standardise every input band with its source's *train* statistics
            (``(x - mean) / std`` from ``stats.json``; filled no-data pixels become 0).
            Each source is standardised by its own statistics: one modality differs
            between sources by up to two orders of magnitude (``docs/method.md`` §
            "Normalisation across sources").
        transform: optional callable applied to the sample dict.
        seed: seed of the random crops (``set_epoch`` selects the epoch).
    """

    def __init__(
        self,
        root: str | Path,
        task: str,
        split: str = "train",
        modalities: Sequence[str] | None = None,
        crop: int | None = None,
        random_crop: bool = False,
        backend: str = "npy",
        dsm_source: str = "dsm",
        fill_nodata: bool = True,
        normalize: bool = False,
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise SampleArgumentError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
        if split not in SPLITS:
            raise SampleArgumentError(f"unknown split {split!r}; choose from {list(SPLITS)}")
        if backend not in ("npy", "tif"):
            raise SampleArgumentError(f"unknown backend {backend!r}; choose 'npy' or 'tif'")
        if dsm_source not in DSM_SOURCES:
            raise SampleArgumentError(f"dsm_source={dsm_source!r}: expected one of {sorted(DSM_SOURCES)}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop <= 0):
            raise SampleArgumentError(f"crop={crop!r}: expected a positive integer or None")
        self.root, self.task, self.split = Path(root), task, split
        self.spec = TASKS[task]
        self.modalities = tuple(modalities or self.spec.inputs)
        bad = [m for m in self.modalities if m not in INPUT_KEYS]
        if bad:
            raise SampleArgumentError(f"unknown modality {bad}; choose from {INPUT_KEYS}")
        self.dsm_source = dsm_source
        self.rows = [r for r in read_index(self.root) if r["task"] == task and r["split"] == split]
        for m in self.modalities:
            if self.rows and self._file_of(m) not in self.rows[0]["files"]:
                raise SampleArgumentError(f"task {task!r} has no modality {m!r} (available: {sorted(self.rows[0]['files'])})")
        self.crop, self.random_crop, self.backend = crop, random_crop, backend
        self.fill_nodata, self.normalize, self.transform = fill_nodata, normalize, transform
        self.seed, self.epoch = int(seed), 0
        self.stats = load_stats(self.root, task) if fill_nodata or normalize else {}
        if normalize:
            for m in self.modalities:
                if self._file_of(m) not in self.stats:
                    raise DataError(f"{self.root / 'stats.json'}: no statistics for {self._file_of(m)!r} of source {self.spec.source!r}")
        if crop is not None and self.rows and crop > self.rows[0]["size"]:
            raise SampleArgumentError(f"crop {crop} is larger than the tiles ({self.rows[0]['size']} px) of task {task!r}")
        self._mm: dict[str, np.ndarray] = {}
        self._pos: list[int] = []
        self._objects: dict[str, np.ndarray] = {}
        if backend == "npy" and self.rows:
            cache = self.root / "cache" / self.spec.source / split
            if not (cache / "tiles.json").is_file():
                raise DataError(f"{cache}: no tile cache; prepare with build_cache=True or use backend='tif'")
            order = {name: i for i, name in enumerate(json.loads((cache / "tiles.json").read_text()))}
            self._pos = [order[r["tile"]] for r in self.rows]
            self._cache = cache

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the random crops (call before each epoch; workers see it when
        they are started after the call, i.e. without ``persistent_workers``)."""
        self.epoch = int(epoch)

    def crop_rng(self, index: int, epoch: int | None = None, draw: int = 0) -> np.random.Generator:
        """The generator of sample ``index``'s random crop: ``default_rng([seed, epoch, index])``
        (``[seed, epoch, index, draw]`` for a repeated draw ``draw > 0`` in one epoch)."""
        key = [self.seed, self.epoch if epoch is None else int(epoch), int(index)]
        return np.random.default_rng(key + [int(draw)] if draw else key)

    # ------------------------------------------------------------------ reading
    def _file_of(self, key: str) -> str:
        """The index ``files`` entry (and statistics key) of a sample key: the one place
        ``dsm_source`` applies (``dsm`` is read from the ``ndsm`` file when asked)."""
        return file_key(key, self.dsm_source)

    def _stem(self, key: str) -> str:
        """The file stem (cache ``.npy`` name) of a sample key, e.g. ``height`` -> ``ndsm``."""
        return cache_stem(self.rows[0], self._file_of(key))

    def _read(self, i: int, key: str) -> np.ndarray:
        stem = self._stem(key)
        if self.backend == "npy":
            if stem not in self._mm:
                path = self._cache / f"{stem}.npy"
                if not path.is_file():
                    raise DataError(f"{path}: missing cache file")
                self._mm[stem] = np.load(path, mmap_mode="r")
            return np.asarray(self._mm[stem][self._pos[i]])
        rel = self.rows[i]["files"][self._file_of(key)]
        return read_raster(self.root / rel, dtype=np.float32 if key not in ("label",) else np.uint8)

    def _objects_of(self, i: int) -> dict[str, np.ndarray]:
        """Tile ``i``'s objects: ``boxes`` (K, 4), ``box_labels`` (K,) and, for tasks with
        ``obb`` among their targets, ``obb`` (K, 5); from the cache or ``boxes.json``."""
        keys = {"boxes": ("boxes_xyxy", np.float32, (4,)), "box_labels": ("box_labels", np.int64, ())}
        if "obb" in self.spec.targets:
            keys["obb"] = ("obb_cxcywha", np.float32, (5,))
        if self.backend == "npy":
            p = self._pos[i]
            for key in ("boxes_offsets", *keys):
                if key not in self._objects:
                    path = self._cache / f"{key}.npy"
                    if not path.is_file():
                        raise DataError(f"{path}: missing cache file (prepared by an older version? run the preparation again)")
                    self._objects[key] = np.load(path)
            off = self._objects["boxes_offsets"]
            return {k: np.array(self._objects[k][off[p] : off[p + 1]], dtype) for k, (_, dtype, _) in keys.items()}
        path = self.root / self.rows[i]["files"]["boxes"]
        data = json.loads(path.read_text())
        missing = [name for name, _, _ in keys.values() if name not in data]
        if missing:
            raise DataError(f"{path}: no {', '.join(missing)} (prepared by an older version? run the preparation again)")
        return {k: np.asarray(data[name], dtype).reshape(-1, *shape) for k, (name, dtype, shape) in keys.items()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i)

    def get(self, i: int, epoch: int | None = None, draw: int = 0) -> dict[str, Any]:
        """Sample ``i``; its random crop (if any) is that of ``epoch`` (default: :meth:`set_epoch`'s)
        and of its ``draw`` in that epoch (a tile drawn twice in one epoch gets two crops)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} tiles")
        i %= len(self)
        row = self.rows[i]
        size = row["size"]
        c = self.crop or size
        if self.random_crop and c < size:
            rng = self.crop_rng(i, epoch, draw)
            r0, c0 = (int(v) for v in rng.integers(0, size - c + 1, size=2))
        else:
            r0 = c0 = (size - c) // 2
        win = (slice(None), slice(r0, r0 + c), slice(c0, c0 + c))
        sample: dict[str, Any] = {}
        valid = np.ones((c, c), bool)
        for key in self.modalities:
            arr = np.array(self._read(i, key)[win], dtype=np.float32)
            bad = ~np.isfinite(arr)
            if bad.any():
                valid &= ~bad.any(0)
                if self.fill_nodata:
                    mean = np.asarray(self.stats[self._file_of(key)]["mean"], np.float32)[:, None, None]
                    arr = np.where(bad, mean, arr)
            if self.normalize:
                st = self.stats[self._file_of(key)]
                mean = np.asarray(st["mean"], np.float32)[:, None, None]
                std = np.asarray([s if np.isfinite(s) and s > 1e-6 else 1.0 for s in st["std"]], np.float32)[:, None, None]
                arr = (arr - mean) / std
            sample[key] = torch.from_numpy(arr)
        sample["valid"] = torch.from_numpy(valid)
        targets = self.spec.targets
        if "label" in targets:
            if self.spec.tile_class:  # one class per tile, from the index
                sample["label"] = torch.tensor(row["scene_class"], dtype=torch.int64)
            else:
                sample["label"] = torch.from_numpy(np.asarray(self._read(i, "label")[0][win[1:]], dtype=np.int64))
        if "height" in targets:
            sample["height"] = torch.from_numpy(np.array(self._read(i, "height")[0][win[1:]], dtype=np.float32))
        if "boxes" in targets:
            objects = self._objects_of(i)
            if c < size:
                objects = crop_objects(objects, r0, c0, c)
            sample["boxes"] = torch.from_numpy(objects["boxes"].astype(np.float32))
            sample["box_labels"] = torch.from_numpy(objects["box_labels"].astype(np.int64))
            if "obb" in objects:
                sample["obb"] = torch.from_numpy(objects["obb"].astype(np.float32))
        sample["meta"] = {"task": self.task, "source": row["source"], "tile": row["tile"], "split": self.split,
                          "label_kind": row["label_kind"], "row": row["row"] + r0, "col": row["col"] + c0}
        return self.transform(sample) if self.transform is not None else sample

    def collate_fn(self) -> Callable[[list[dict]], dict]:
        """``detection_collate`` for the detection task, torch's default otherwise."""
        from torch.utils.data import default_collate

        return detection_collate if "boxes" in self.spec.targets else default_collate

    def __repr__(self) -> str:
        return f"SampleTiles(task={self.task!r}, split={self.split!r}, n={len(self)}, modalities={self.modalities}, backend={self.backend!r})"


__all__ = ["SampleTiles", "SampleArgumentError", "crop_objects", "load_stats", "INPUT_KEYS"]
