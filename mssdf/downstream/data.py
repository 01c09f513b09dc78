"""Downstream data: the train / val / test samples of one task, standardised, augmented, checked.

:func:`build_task_data` reads a prepared task of the sample (``data.kind: sample``) or a
paper dataset through its reader (``data.kind: reader``) and returns :class:`TaskData`:
three datasets of ``{"images": {m: (C_m, H, W)}, "target": ...}`` items, the class names
and the statistics the inputs are standardised with.

* Targets: segmentation and change ``(H, W)`` int64 class ids, 255 = ignore
  (:data:`mssdf.data.io.IGNORE_INDEX`; change: 0 unchanged, 1 changed); classification an
  int64 scalar; height ``(H, W)`` float32 metres, NaN = no data (excluded from loss and
  metrics, as the readers and the sample mark it).
* Change inputs hold both dates under the keys ``m`` and ``m_t2`` (the sample's
  ``pan`` / ``pan_t2``; the SECOND reader's ``t1`` / ``t2`` dicts are flattened to them),
  both standardised with the modality's statistics (one normalisation for both dates: a
  per-date normalisation would remove the radiometric differences the task must ignore
  by construction, and treat the dates differently).
* ``data.resize`` (classification) resizes every input first (bilinear, antialiased).
* Inputs are standardised per band with *train* statistics: the sample's ``stats.json``
  (each source its own, as in pre-training) or, for a reader, estimated from
  ``data.stats_samples`` evenly spaced train samples — unless the backbone's encoder holds
  statistics of its own (it then takes raw values).
* Training items are keyed ``(epoch, index)`` (:class:`mssdf.engine.sampler.GlobalBatchSampler`):
  the random crop and the flips/rotations are functions of ``(seed, epoch, index)``, so a
  resumed run reads the same augmented batches.
* Checked before any training (:func:`check_targets`): every label in ``[0, K)`` or the
  ignore label, heights finite or NaN with at least one finite pixel per sample, inputs
  finite, the class count of the dataset equal to ``num_classes`` when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mssdf.config import ConfigError
from mssdf.data.io import IGNORE_INDEX, DataError
from mssdf.downstream.config import ROLES, SECOND_DATE, FinetuneConfig
from mssdf.paths import resolve

Stats = dict[str, tuple[Tensor, Tensor]]  # modality -> (mean (C,), std (C,))


@dataclass
class TaskData:
    """The three roles of a task, ready for the engine."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...]  # class names (empty for height)
    stats: Stats  # the standardisation applied to each modality (empty: raw values)
    description: str  # where the samples come from, and the label kind (SYNTHETIC/DERIVED flagged)
    label_kind: str  # real / synthetic / derived


def _std(values: Sequence[float]) -> list[float]:
    return [float(s) if math.isfinite(s) and s > 1e-6 else 1.0 for s in values]


class TaskDataset(Dataset):
    """One role: standardised inputs, the target, and (train) seeded augmentation.

    Args:
        base: a dataset of sample dicts (modality keys, ``label`` or ``height``).
        modalities: the input keys to return (change: ``m`` and ``m_t2`` per modality).
        target: ``label`` or ``height``.
        stats: ``{m: (mean, std)}`` per band; modalities absent are returned raw (``m_t2``
            uses the statistics of ``m``).
        resize: side every input is resized to first (classification) — None: as is.
        crop: random crop side (train) — None: whole samples.
        flip: random flips and 90° rotations (train).
        seed: seed of the augmentation.
        train: items are keyed ``(epoch, index)`` and augmented; else keyed by index, as is.
        indices: the subset of ``base`` to expose (a train fraction).
    """

    def __init__(self, base: Dataset, modalities: Sequence[str], target: str, stats: Stats, *, crop: int | None = None,
                 flip: bool = False, seed: int = 0, train: bool = False, indices: Sequence[int] | None = None,
                 resize: int | None = None, box_type: str = "hbb") -> None:
        self.base, self.modalities, self.target = base, tuple(modalities), target
        self.stats, self.crop, self.flip, self.seed, self.train = stats, crop, flip, seed, train
        self.resize, self.box_type = resize, box_type
        self.indices = list(range(len(base))) if indices is None else list(indices)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def plain(self) -> "TaskDataset":
        """The same items without augmentation (keyed by index): what frozen-feature probes read."""
        return TaskDataset(self.base, self.modalities, self.target, self.stats, seed=self.seed, indices=self.indices,
                           resize=self.resize, box_type=self.box_type)

    def raw(self, index: int) -> dict[str, Any]:
        """The base sample behind item ``index`` (no standardisation, no augmentation)."""
        return self.base[self.indices[index]]

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        epoch, index = (key[0], key[1]) if isinstance(key, tuple) else (0, key)
        sample = self.raw(index)
        images = {}
        for m in self.modalities:
            x = torch.as_tensor(input_of(sample, m), dtype=torch.float32)
            stats = self.stats.get(m, self.stats.get(m.removesuffix(SECOND_DATE)))
            if stats is not None:
                mean, std = stats
                x = (x - mean[:, None, None]) / std[:, None, None]
            if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
                x = F.interpolate(x[None], size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                                  antialias=True)[0]
            images[m] = x
        if self.target == "boxes":  # horizontal boxes partly outside the image are clipped to it (documented)
            target: Any = box_target(sample, self.box_type)
            if target["boxes"].shape[-1] == 4 and len(target["boxes"]):
                h, w = next(iter(images.values())).shape[-2:]
                b = target["boxes"]
                target["boxes"] = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1)
        else:
            target = torch.as_tensor(sample[self.target])
            target = target.long() if self.target == "label" else target.float()
        if self.train:
            images, target = self._augment(images, target, epoch, index)
        return {"images": images, "target": target}

    def _augment(self, images: dict[str, Tensor], target: Any, epoch: int, index: int) -> tuple[dict[str, Tensor], Any]:
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 0xF17E])
        boxes = isinstance(target, dict)  # detection: the boxes move with the image
        dense = not boxes and target.dim() >= 2  # a per-pixel target moves with the image; a class label does not
        h, w = next(iter(images.values())).shape[-2:]
        if self.crop is not None and (self.crop < h or self.crop < w) and not boxes:
            c = self.crop
            if c > h or c > w:
                raise DataError(f"data.crop: {c} is larger than a {h}x{w} sample")
            r0, c0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            images = {m: x[..., r0 : r0 + c, c0 : c0 + c] for m, x in images.items()}
            target = target[..., r0 : r0 + c, c0 : c0 + c] if dense else target
        if self.flip:
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            def op(x: Tensor) -> Tensor:
                x = torch.rot90(x, k, dims=(-2, -1))
                return torch.flip(x, dims=(-1,)) if flip else x
            if boxes:
                from mssdf.downstream.detection.boxes import rot90_flip_boxes

                target = {**target, "boxes": rot90_flip_boxes(target["boxes"], k, flip, h, w)}
            images, target = {m: op(x) for m, x in images.items()}, (op(target) if dense else target)
        return {m: x.contiguous() for m, x in images.items()}, (target if boxes else target.contiguous())


def input_of(sample: Mapping[str, Any], key: str) -> Any:
    """Input ``key`` of a sample dict: ``sample[key]``, or for a reader's date dicts
    ``sample["t1"][m]`` (key ``m``) / ``sample["t2"][m]`` (key ``m_t2``).

    Raises:
        KeyError: naming the key and the sample's keys.
    """
    if key in sample:
        return sample[key]
    date, m = ("t2", key.removesuffix(SECOND_DATE)) if key.endswith(SECOND_DATE) else ("t1", key)
    if isinstance(sample.get(date), Mapping) and m in sample[date]:
        return sample[date][m]
    raise KeyError(f"sample has no input {key!r} (keys: {sorted(k for k in sample if k != 'meta')})")


def input_keys(cfg: FinetuneConfig) -> tuple[str, ...]:
    """The input keys of a run: the backbone's modalities, and for change each one's second date."""
    mods = tuple(cfg.backbone.modalities)
    return mods + tuple(m + SECOND_DATE for m in mods) if cfg.task == "change" else mods


def box_target(sample: Mapping[str, Any], box_type: str) -> dict[str, Tensor]:
    """Detection target of a sample: ``{"boxes": (K, 4) xyxy | (K, 5) OBB, "labels": (K,), "difficult": (K,)}``.

    ``box_type: obb`` reads the sample's ``obb`` (K, 5) when it has one, converts DOTA-style
    polygons ``(K, 8)`` to their minimum-area rectangles, and horizontal boxes to rectangles
    at angle 0; ``hbb`` takes ``boxes`` (K, 4), or the enclosing boxes of polygons / OBBs.
    """
    from mssdf.downstream.detection.boxes import obb_to_poly, poly_bounds, poly_to_obb

    raw = torch.as_tensor(sample["obb"] if box_type == "obb" and "obb" in sample else sample["boxes"]).float()
    if raw.ndim == 1:
        raw = raw.reshape(0, 4) if raw.numel() == 0 else raw[None]
    if box_type == "obb":
        if raw.shape[-1] == 8:
            raw = poly_to_obb(raw.reshape(-1, 4, 2))
        elif raw.shape[-1] == 4:
            raw = torch.stack([(raw[:, 0] + raw[:, 2]) / 2, (raw[:, 1] + raw[:, 3]) / 2, raw[:, 2] - raw[:, 0],
                               raw[:, 3] - raw[:, 1], torch.zeros(len(raw))], -1)
    elif raw.shape[-1] == 8:
        raw = poly_bounds(raw.reshape(-1, 4, 2))
    elif raw.shape[-1] == 5:
        raw = poly_bounds(obb_to_poly(raw))
    labels = torch.as_tensor(sample["box_labels"]).long().reshape(-1)
    difficult = torch.as_tensor(sample.get("difficult", torch.zeros(len(labels)))).long().reshape(-1)
    return {"boxes": raw, "labels": labels, "difficult": difficult}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``[{"images": {m: (C,H,W)}, "target": T}]`` → ``{"images": {m: (B,C,H,W)}, "target": (B, ...)}``
    (detection: the list of per-image target dicts)."""
    first = items[0]["target"]
    return {"images": {m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]},
            "target": [it["target"] for it in items] if isinstance(first, dict) else torch.stack([it["target"] for it in items])}


# ----------------------------------------------------------------------------- building
def build_task_data(cfg: FinetuneConfig, wants_normalized: Mapping[str, bool], root: str | Path | None = None) -> TaskData:
    """The train / val / test datasets of ``cfg`` (see the module docstring).

    Args:
        wants_normalized: per input modality, whether the backbone needs standardised inputs
            (:meth:`mssdf.downstream.backbone.ViTBackbone.wants_normalized`).
    """
    target = {"height": "height", "detection": "boxes"}.get(cfg.task, "label")
    modalities = input_keys(cfg)
    if cfg.data.kind == "sample":
        bases, classes, stats, desc, kind = _sample_bases(cfg, root)
    else:
        bases, classes, stats, desc, kind = _reader_bases(cfg, root, target)
    stats = {m: s for m, s in stats.items() if wants_normalized.get(m, True)}
    if cfg.task == "change":
        classes = ("unchanged", "changed")  # binary change whatever semantic classes the dataset has
    if cfg.task != "height" and cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise ConfigError(f"num_classes: {cfg.num_classes} disagrees with the {len(classes)} classes of the dataset {list(classes)}")
    train_idx = list(range(len(bases["train"])))  # type: ignore[arg-type]
    if cfg.data.train_fraction < 1.0:
        g = torch.Generator().manual_seed(cfg.seed)
        keep = max(1, round(cfg.data.train_fraction * len(train_idx)))
        train_idx = sorted(torch.randperm(len(train_idx), generator=g)[:keep].tolist())
    data = TaskData(
        train=TaskDataset(bases["train"], modalities, target, stats, crop=cfg.data.crop, flip=cfg.data.flip, seed=cfg.seed,
                          train=True, indices=train_idx, resize=cfg.data.resize, box_type=cfg.box_type),
        val=TaskDataset(bases["val"], modalities, target, stats, resize=cfg.data.resize, box_type=cfg.box_type),
        test=TaskDataset(bases["test"], modalities, target, stats, resize=cfg.data.resize, box_type=cfg.box_type),
        classes=tuple(classes), stats=stats, description=desc, label_kind=kind,
    )
    for role in ROLES:
        if len(getattr(data, role)) == 0:
            raise DataError(f"data.splits.{role}: no samples ({desc})")
    return data


def _sample_bases(cfg: FinetuneConfig, root: str | Path | None) -> tuple[dict, tuple[str, ...], Stats, str, str]:
    from mssdf.data.sample import SampleTiles, load_stats
    from mssdf.data.tasks import TASKS
    from mssdf.modalities import file_key

    folder = resolve(cfg.data.root, root)
    if not (folder / "index.csv").is_file():
        raise DataError(f"data.root: {folder / 'index.csv'}: missing (run the preparation first: dvc repro prepare)")
    spec = TASKS[cfg.data.task]
    keys = input_keys(cfg)
    missing = [m for m in keys if m not in spec.inputs]
    if missing:
        raise ConfigError(f"backbone.modalities: task {cfg.data.task!r} has no {missing} (inputs: {list(spec.inputs)})")
    bases = {role: SampleTiles(folder, cfg.data.task, cfg.data.splits[role], modalities=keys,
                               dsm_source=cfg.data.dsm_source, fill_nodata=True) for role in ROLES}
    raw = load_stats(folder, cfg.data.task)
    stats = {}
    for m in cfg.backbone.modalities:
        st = raw[file_key(m, cfg.data.dsm_source)]
        stats[m] = (torch.tensor(st["mean"], dtype=torch.float32), torch.tensor(_std(st["std"]), dtype=torch.float32))
    kind = spec.label_kind
    flag = f" — {kind.upper()} labels" if kind in ("synthetic", "derived") else ""
    desc = f"sample task {cfg.data.task!r} ({spec.description}; source {spec.source}){flag}"
    return bases, tuple(spec.classes), stats, desc, kind


def _reader_bases(cfg: FinetuneConfig, root: str | Path | None, target: str) -> tuple[dict, tuple[str, ...], Stats, str, str]:
    from mssdf.data.readers import get_dataset

    folder = resolve(cfg.data.root, root)
    if not folder.is_dir():
        raise DataError(f"data.root: {folder}: no such folder (the {cfg.data.reader!r} dataset)")
    bases = {}
    for role in ROLES:
        role_args = cfg.data.role_args.get(role, {})
        args = {"split": cfg.data.splits[role], **cfg.data.reader_args, **role_args}
        split = args.pop("split")
        try:
            bases[role] = get_dataset(cfg.data.reader, folder, split, **args)
        except ConfigError as err:  # name the params key that holds the bad reader argument
            bad = [k for k in args if k in str(err)]
            where = (f"data.role_args.{role}.{bad[0]}" if bad[0] in role_args else f"data.reader_args.{bad[0]}") if bad \
                else f"data.reader_args / data.role_args.{role}"
            raise ConfigError(f"{where}: {err}") from None
    train = bases["train"]
    if len(train) == 0:
        raise DataError(f"data.root: {folder}: the {cfg.data.reader!r} reader found no train samples")
    classes = (tuple(getattr(train, "classes", None) or getattr(train, "CLASSES", ()) or ())) if target in ("label", "boxes") else ()
    picks = torch.linspace(0, len(train) - 1, min(cfg.data.stats_samples, len(train))).round().long().unique()
    samples = [train[int(i)] for i in picks]
    stats = {}
    for m in cfg.backbone.modalities:
        try:
            values = torch.cat([torch.as_tensor(input_of(s, m), dtype=torch.float32).flatten(1) for s in samples], dim=1)  # (C, n)
        except KeyError:
            raise ConfigError(f"backbone.modalities: the {cfg.data.reader!r} reader gives no {m!r} "
                              f"(keys: {sorted(k for k in samples[0] if k != 'meta')}); set data.reader_args.modalities") from None
        finite = torch.isfinite(values)
        count = finite.sum(1).clamp_min(1)
        mean = torch.where(finite, values, 0).sum(1) / count
        var = torch.where(finite, (values - mean[:, None]) ** 2, 0).sum(1) / count
        stats[m] = (mean, torch.tensor(_std(var.sqrt().tolist())))
    desc = f"{cfg.data.reader} ({folder}), {len(train)} train samples"
    return bases, classes, stats, desc, "real"


# ----------------------------------------------------------------------------- checks
def check_targets(data: TaskData, task: str, num_classes: int, limit: int | None = None) -> None:
    """Refuse bad samples before training: labels outside ``[0, K)`` that are not the ignore
    label (change: anything but 0 / 1 / ignore), heights that are infinite or all no-data,
    non-finite inputs, the two dates of a change pair of different sizes; classification:
    a class without any training sample.

    Args:
        limit: check at most this many samples per role (None: all — the sample's tiles;
            paper datasets check a prefix here and every batch during training).
    Raises:
        DataError: naming the role, the sample (its ``meta`` tile/file where known) and the values.
    """
    train_classes: set[int] = set()
    for role in ROLES:
        ds: TaskDataset = getattr(data, role)
        n = len(ds) if limit is None else min(limit, len(ds))
        for i in range(n):
            sample = ds.raw(i)
            where = _where(sample, role, i)
            for m in ds.modalities:
                x = torch.as_tensor(input_of(sample, m))
                if not torch.isfinite(x).all():
                    raise DataError(f"{where}: input {m!r} has {int((~torch.isfinite(x)).sum())} non-finite values")
                if m.endswith(SECOND_DATE):
                    first = torch.as_tensor(input_of(sample, m.removesuffix(SECOND_DATE)))
                    if first.shape != x.shape:
                        raise DataError(f"{where}: the two dates differ in size: {m.removesuffix(SECOND_DATE)!r} "
                                        f"{tuple(first.shape)} vs {m!r} {tuple(x.shape)}")
            if task == "detection":
                h, w = torch.as_tensor(input_of(sample, ds.modalities[0])).shape[-2:]
                check_boxes(box_target(sample, ds.box_type), num_classes, (int(h), int(w)), where)
                continue
            target = torch.as_tensor(sample[ds.target])
            check_target(target, task, num_classes, where)
            if role == "train" and task == "classification":
                train_classes.add(int(target))
    if task == "classification" and limit is None and len(train_classes) < num_classes:
        absent = [data.classes[k] if k < len(data.classes) else str(k) for k in range(num_classes) if k not in train_classes]
        raise DataError(f"data.splits.train: no training sample of class(es) {absent} ({data.description})")


def check_boxes(target: Mapping[str, Tensor], num_classes: int, size: tuple[int, int], where: str) -> None:
    """A detection target: finite coordinates, labels in ``[0, K)``, every box with area and at
    least partly inside the ``(h, w)`` image (a horizontal box's outside part is clipped; an
    oriented box may stick out: a rotated rectangle around an object at the border, or an
    object cut by a crop).

    Raises:
        DataError: naming ``where`` (the sample's tile or file), the box and its coordinates.
    """
    boxes, labels = target["boxes"], target["labels"]
    h, w = size
    if len(boxes) != len(labels):
        raise DataError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise DataError(f"{where}: box labels {sorted(set(bad.tolist()))} outside the {num_classes} classes [0, {num_classes - 1}]")
    if not torch.isfinite(boxes).all():
        raise DataError(f"{where}: non-finite box coordinates")
    if boxes.shape[-1] == 4:
        checks = (((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]), "is degenerate (zero area; x1 < x2 and y1 < y2 needed)"),
                  ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= w) | (boxes[:, 1] >= h), f"lies outside the {w}x{h} image"))
    else:
        from mssdf.downstream.detection.boxes import obb_to_poly, poly_bounds

        b = poly_bounds(obb_to_poly(boxes)) if len(boxes) else boxes.reshape(0, 4)
        checks = (((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0), "is degenerate (width and height > 0 needed)"),
                  ((b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= w) | (b[:, 1] >= h), f"lies outside the {w}x{h} image"))
    for bad_box, what in checks:
        if bad_box.any():
            k = int(bad_box.nonzero()[0])
            kind = "box" if boxes.shape[-1] == 4 else "oriented box"
            raise DataError(f"{where}: {kind} {k} {[round(float(v), 2) for v in boxes[k]]} {what}"
                            + (f" ({int(bad_box.sum())} such boxes)" if int(bad_box.sum()) > 1 else ""))


def check_target(target: Tensor, task: str, num_classes: int, where: str, allow_empty: bool = False) -> None:
    """One target (or a batch of them): see :func:`check_targets`. ``allow_empty``: a height
    target without any data passes (a training crop of a sample with large no-data areas)."""
    if task != "height":
        bad = target[(target != IGNORE_INDEX) & ((target < 0) | (target >= num_classes))]
        if bad.numel():
            raise DataError(f"{where}: labels {sorted(set(bad.unique().tolist()))} outside the {num_classes} classes "
                            f"[0, {num_classes - 1}] (ignore label {IGNORE_INDEX})")
    else:
        t = target.float()
        if torch.isinf(t).any():
            raise DataError(f"{where}: height target has {int(torch.isinf(t).sum())} infinite values")
        if allow_empty:
            return
        flat = t.reshape(-1, *t.shape[-2:]) if t.dim() >= 2 else t.reshape(1, -1)
        empty = [k for k in range(flat.shape[0]) if not torch.isfinite(flat[k]).any()]
        if empty:
            raise DataError(f"{where}: height target is entirely NaN (no data) in {len(empty)} sample(s)")


def _where(sample: Mapping[str, Any], role: str, index: int) -> str:
    meta = sample.get("meta") or {}
    name = meta.get("tile") or meta.get("file") or meta.get("id") or meta.get("name")
    return f"{role} sample {index}" + (f" ({name})" if name else "")


__all__ = ["TaskData", "TaskDataset", "collate", "input_of", "input_keys", "box_target", "check_boxes", "build_task_data", "check_targets", "check_target"]
