"""Frozen-feature health check: every labelled task of the prepared sample, every encoder, several seeds.

What it measures
    Each encoder is frozen; a small probe is fitted on its patch tokens of a task's
    *train* tiles and scored on the task's evaluation tiles (``test``, or ``val`` where a
    task has no test tile, e.g. IGN). The tasks are those of
    :data:`mssdf.data.tasks.TASKS` with targets (``pretrain_*`` tasks have none) that have
    tiles in the prepared index. The probe follows from the task's targets
    (:func:`probe_kind`), not from its name:

    ============  ===========================================  ==================  ==========
    kind          tasks (today)                                metric              better
    ============  ===========================================  ==================  ==========
    segmentation  seg_asprs, seg_buildings, seg_roads           ``miou``            higher
    height        height                                       ``rmse_m``          lower
    tile_class    scene, scene_asprs                           ``accuracy``        higher
    change        change (pan + pan_t2)                        ``iou_changed``     higher
    objectness    detection                                    ``iou_object``      higher
    ============  ===========================================  ==================  ==========

    * segmentation: patch-majority label, linear softmax probe
      (:func:`~mssdf.reports.probe.linear_classification_probe`), mean IoU over the classes
      present in the evaluation patches (also ``accuracy``);
    * height: patch-mean nDSM, ridge probe, RMSE in metres (``baseline``: predicting the
      train mean);
    * tile_class: patch tokens mean-pooled per tile, linear probe, tile ``accuracy``
      (also ``balanced_accuracy``: mean recall over the classes present in the evaluation
      tiles, and ``miou``);
    * change: the first date through the encoder's ``pan`` adapter, the second date
      (``pan_t2``, no adapter of its own) through the *same* adapter, the probe on
      :func:`~mssdf.reports.probe.change_features` ``[|f1 - f2|, f1 * f2]``; the target is the
      patch-majority change label (a tie goes to "unchanged"); IoU of the changed class;
    * objectness: a patch is an object patch when boxes cover at least ``min_cover`` (half)
      of its pixels (centre rule, :func:`~mssdf.reports.probe.objectness_labels`); IoU of
      the object class.

    Every row also has ``baseline``: the score of a constant prediction fitted on the same
    train targets (train mean for height, train-majority class otherwise), the level a
    probe must beat to show anything.

Cells
    Dense probes work on *cells* of ``cell`` px (16 by default): an encoder's patch tokens
    are averaged over each cell (:func:`pool_cells`) and the targets are brought to the
    same cells. Every encoder and every geometry (64 px with patch 16 or 8) is then probed
    on the same targets with the same number of samples, so the scores compare; ``cell:
    null`` probes at each encoder's own patch size.

Inputs
    The probe sees one modality per task: the task's first input (``rgb`` for Autzen and
    IGN, ``pan`` for Atlanta and Las Vegas; :attr:`HealthConfig.modalities` overrides it,
    several modalities are averaged token-wise as in
    :func:`~mssdf.reports.probe.patch_features`). An encoder whose ``cfg.normalization``
    holds a modality normalises it itself and is fed raw values; otherwise (encoders
    trained on the multi-source mixture: empty ``cfg.normalization``) the inputs are
    standardised by their source's train statistics (``SampleTiles(normalize=True)``). The
    change task's second date is standardised with the *first* date's statistics, as the
    shared adapter would do. An encoder without an adapter for the modality (or whose
    patch size does not divide the tiles) gets a row with a NaN score and a ``note``.

Seeds: what the spread means
    For each seed, ``make_encoders(seed)`` gives the encoders and every probe's train
    tiles are a bootstrap resample (with replacement, as many tiles as the split holds,
    :func:`bootstrap_indices` seeded by ``(seed, task)``: the same resample for every
    encoder, so the comparison is paired). The evaluation tiles are always the whole split.
    For a pre-trained encoder (the same weights for every seed) the standard deviation is
    therefore the probe's sensitivity to its train sample; for a random-init encoder
    (redrawn per seed) it is init variance plus that sample variance. It is NOT a spread
    over pre-training runs: the pre-training seed is fixed.

Caching
    Within one :func:`health_check` call, features are computed once per (encoder
    weights, task, split, input): the key is a hash of the encoder's configuration and
    state dict, so a pre-trained encoder returned again for another seed (the same object
    or a freshly loaded copy) is not re-encoded, and a redrawn random init is.

Outputs
    :func:`health_check` returns rows (one per seed, task and encoder), :func:`summarise`
    a table of mean ± std over seeds, :func:`health_metrics` the JSON-safe metrics.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mssdf.data.index import read_index
from mssdf.data.io import IGNORE_INDEX
from mssdf.data.sample import SampleTiles, load_stats
from mssdf.data.tasks import TASKS, TaskSpec
from mssdf.model import MSSDF, Encoder, ModelConfig
from mssdf.modalities import file_key
from mssdf.paths import resolve
from mssdf.reports.probe import (
    change_features,
    classification_scores,
    linear_classification_probe,
    objectness_labels,
    patch_features,
    patch_labels,
    patch_means,
    ridge_regression_probe,
    tile_features,
)

#: Suffix of a second-date input key (``pan_t2`` is the second date of ``pan``).
SECOND_DATE = "_t2"

#: ``kind: (metric, higher_is_better)``.
METRICS: dict[str, tuple[str, bool]] = {
    "segmentation": ("miou", True),
    "height": ("rmse_m", False),
    "tile_class": ("accuracy", True),
    "change": ("iou_changed", True),
    "objectness": ("iou_object", True),
}


@dataclass(frozen=True)
class HealthConfig:
    """Options of the health check (a ``params.yaml`` section; unknown keys fail in
    :func:`mssdf.config.from_dict`)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = ()  # empty: every labelled task with tiles in the index
    modalities: dict[str, tuple[str, ...]] = field(default_factory=dict)  # task -> probe inputs (default: its first input)
    bootstrap: bool = True  # False: every seed fits the probe on all train tiles
    probe_l2: float = 1e-3  # linear classifiers' L2 penalty
    probe_steps: int = 100  # L-BFGS iterations
    ridge_l2: float = 10.0  # height ridge penalty
    min_cover: float = 0.5  # objectness: box-covered fraction of a patch's pixels
    batch_size: int = 64  # tiles per encoder forward
    cell: int | None = 16  # px side of a probe cell (tokens averaged within it); None: the encoder's patch

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        labelled = labelled_tasks()
        bad = [t for t in self.tasks if t not in labelled]
        if bad:
            raise ValueError(f"tasks {bad} are not labelled tasks; choose from {labelled}")
        for task, mods in self.modalities.items():
            if task not in labelled:
                raise ValueError(f"modalities.{task}: not a labelled task; choose from {labelled}")
            inputs = [m for m in TASKS[task].inputs if not m.endswith(SECOND_DATE)]
            if not mods or any(m not in inputs for m in mods):
                raise ValueError(f"modalities.{task}: {list(mods)} must be a non-empty subset of {inputs}")
            if probe_kind(TASKS[task]) == "change" and len(mods) != 1:
                raise ValueError(f"modalities.{task}: the change probe takes one modality, got {list(mods)}")
        if self.probe_l2 < 0 or self.ridge_l2 < 0:
            raise ValueError("probe_l2 and ridge_l2 must be >= 0")
        if self.probe_steps < 1 or self.batch_size < 1:
            raise ValueError("probe_steps and batch_size must be >= 1")
        if not 0 < self.min_cover <= 1:
            raise ValueError(f"min_cover must be in (0, 1], got {self.min_cover}")
        if self.cell is not None and self.cell < 1:
            raise ValueError(f"cell must be >= 1 or null, got {self.cell}")


# ----------------------------------------------------------------------------- tasks
def labelled_tasks() -> list[str]:
    """Tasks of :data:`TASKS` with targets, in catalogue order."""
    return [t for t, spec in TASKS.items() if spec.targets and spec.label_kind != "none"]


def probe_kind(spec: TaskSpec) -> str:
    """The probe a task gets, from its targets and inputs (a key of :data:`METRICS`)."""
    if "height" in spec.targets:
        return "height"
    if "boxes" in spec.targets:
        return "objectness"
    if "label" in spec.targets:
        if spec.tile_class:
            return "tile_class"
        if any(m.endswith(SECOND_DATE) for m in spec.inputs):
            return "change"
        return "segmentation"
    raise ValueError(f"no probe for targets {spec.targets}")


@dataclass(frozen=True)
class TaskPlan:
    """How one task is probed (from the index and :data:`TASKS`)."""

    task: str
    kind: str
    metric: str
    higher_is_better: bool
    modalities: tuple[str, ...]  # probe inputs (the change task: its first date)
    label_kind: str  # real / synthetic / derived
    eval_split: str | None  # None: no test or val tile
    n_train_tiles: int
    n_eval_tiles: int
    num_classes: int  # 0 for height
    tile_size: int  # pixels (square tiles)

    @property
    def modality(self) -> str:
        return "+".join(self.modalities)

    @property
    def note(self) -> str | None:
        """Why the task cannot be probed at all (None if it can)."""
        if self.n_train_tiles == 0:
            return f"no train tiles of {self.task}"
        if self.eval_split is None:
            return f"no test or val tiles of {self.task}"
        return None


def eval_split(counts: Mapping[str, int]) -> str | None:
    """``test`` if there are test tiles, else ``val`` if there are val tiles, else None.

    Args:
        counts: tiles per split of one task.
    """
    return next((s for s in ("test", "val") if counts.get(s, 0) > 0), None)


def plan_tasks(root: str | Path, cfg: HealthConfig) -> list[TaskPlan]:
    """The tasks to probe: ``cfg.tasks`` (all labelled tasks with tiles in the index if
    empty), in :data:`TASKS` order."""
    index = read_index(resolve(root))
    present = {r["task"] for r in index}
    names = [t for t in labelled_tasks() if (t in cfg.tasks if cfg.tasks else t in present)]
    plans = []
    for task in names:
        spec = TASKS[task]
        rows = [r for r in index if r["task"] == task]
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
        split = eval_split(counts)
        kind = probe_kind(spec)
        metric, higher = METRICS[kind]
        default = tuple(m for m in spec.inputs if not m.endswith(SECOND_DATE))[:1]
        plans.append(TaskPlan(
            task, kind, metric, higher, tuple(cfg.modalities.get(task, default)),
            rows[0]["label_kind"] if rows else spec.label_kind, split, counts["train"], counts[split] if split else 0,
            0 if kind == "height" else (2 if kind == "objectness" else len(spec.classes)), rows[0]["size"] if rows else 0,
        ))  # fmt: skip
    return plans


def bootstrap_indices(n: int, seed: int, task: str) -> Tensor:
    """``(n,)`` int64 tile indices drawn with replacement from ``range(n)``; a function of
    ``(n, seed, task)`` only (``torch.Generator`` seeded by a hash of ``seed`` and ``task``)."""
    digest = hashlib.sha256(f"health-bootstrap/{int(seed)}/{task}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randint(0, n, (n,), generator=g)


# ----------------------------------------------------------------------------- data and features
def encoder_fingerprint(encoder: Encoder) -> str:
    """Hash of an encoder's configuration and state dict (parameters and buffers)."""
    h = hashlib.blake2b(repr(encoder.cfg).encode(), digest_size=16)
    for name, t in encoder.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def wants_normalized(encoder: Encoder, modality: str) -> bool:
    """Whether ``modality`` must be fed standardised (the encoder has no statistics of its own for it)."""
    return modality not in encoder.cfg.normalization


class _Tiles:
    """Inputs and targets of the sample's tiles, read once per (task, split, key, normalize)."""

    def __init__(self, root: Path):
        self.root = root
        self._inputs: dict[tuple, Tensor] = {}
        self._targets: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def inputs(self, task: str, split: str, key: str, normalize: bool, stats_key: str | None = None) -> Tensor:
        """``(B, C, H, W)`` float32 of input ``key``; standardised (if ``normalize``) with
        the statistics of ``stats_key`` (default: ``key``'s own)."""
        ck = (task, split, key, normalize, stats_key)
        if ck not in self._inputs:
            own = stats_key in (None, key)
            ds = SampleTiles(self.root, task, split, modalities=[key], normalize=normalize and own)
            x = torch.stack([ds[i][key] for i in range(len(ds))]).float()
            if normalize and not own:
                st = load_stats(self.root, task)[file_key(stats_key)]
                mean = torch.tensor(st["mean"], dtype=torch.float32).view(1, -1, 1, 1)
                std = torch.tensor([s if math.isfinite(s) and s > 1e-6 else 1.0 for s in st["std"]]).view(1, -1, 1, 1)
                x = (x - mean) / std
            self._inputs[ck] = x
        return self._inputs[ck]

    def targets(self, task: str, split: str) -> list[dict[str, Any]]:
        """The target entries (``label``, ``height``, ``boxes``) of every tile of a split."""
        if (task, split) not in self._targets:
            spec = TASKS[task]
            ds = SampleTiles(self.root, task, split, modalities=[spec.inputs[0]], normalize=False)
            self._targets[(task, split)] = [{k: ds[i][k] for k in spec.targets} for i in range(len(ds))]
        return self._targets[(task, split)]


def task_targets(plan: TaskPlan, samples: Sequence[Mapping[str, Any]], patch: int, min_cover: float = 0.5) -> Tensor:
    """A split's probe targets (``samples``: the tiles' target entries, as SampleTiles gives them).

    Returns:
        ``(B,)`` int64 tile classes (tile_class), ``(B, N)`` float32 patch-mean heights
        (height, NaN = no data) or ``(B, N)`` int64 patch labels (255 = ignore) otherwise.
    """
    if plan.kind == "tile_class":
        return torch.stack([torch.as_tensor(s["label"]) for s in samples]).long().reshape(-1)
    if plan.kind == "height":
        return patch_means(torch.stack([torch.as_tensor(s["height"]) for s in samples]).float(), patch)
    if plan.kind == "objectness":
        size = plan.tile_size
        return objectness_labels([torch.as_tensor(s["boxes"]) for s in samples], size, size, patch, min_cover)
    return patch_labels(torch.stack([torch.as_tensor(s["label"]) for s in samples]).long(), patch, plan.num_classes)


# ----------------------------------------------------------------------------- probes
def probe_scores(
    plan: TaskPlan, train_x: Tensor, train_y: Tensor, eval_x: Tensor, eval_y: Tensor, cfg: HealthConfig
) -> dict[str, Any]:
    """Fit the task's probe on train features and score it on the evaluation features.

    Args:
        train_x, eval_x: ``(B, N, D)`` patch features, or ``(B, D)`` tile features (tile_class).
        train_y, eval_y: targets as :func:`task_targets` returns them.
    Returns:
        ``score`` (the plan's metric), ``baseline`` (a constant predictor fitted on the
        train targets), ``n_train`` / ``n_eval`` (samples the probe used: patches, or tiles)
        and the kind's other figures.
    """
    ftr, fev = train_x.reshape(-1, train_x.shape[-1]), eval_x.reshape(-1, eval_x.shape[-1])
    ytr, yev = train_y.reshape(-1), eval_y.reshape(-1)
    valid = torch.isfinite if plan.kind == "height" else (lambda y: y != IGNORE_INDEX)
    n_tr, n_ev = int(valid(ytr).sum()), int(valid(yev).sum())
    if n_tr < 2 or n_ev < 1:
        return {"score": math.nan, "baseline": math.nan, "n_train": n_tr, "n_eval": n_ev,
                "note": f"too few labelled samples to probe ({n_tr} train, {n_ev} eval)"}  # fmt: skip
    if plan.kind == "height":
        r = ridge_regression_probe(ftr, ytr, fev, yev, cfg.ridge_l2)
        return {"score": r.rmse, "baseline": r.rmse_mean_baseline, "n_train": r.n_train, "n_eval": r.n_test}
    k = plan.num_classes
    c = linear_classification_probe(ftr, ytr, fev, yev, k, cfg.probe_l2, cfg.probe_steps)
    majority = int(torch.bincount(ytr[valid(ytr)].long(), minlength=k).argmax())
    y_eval = yev[valid(yev)]
    base = classification_scores(torch.full_like(y_eval, majority), y_eval, k)
    extra = {m: _class_metric(m, c) for m in ("miou", "accuracy", "balanced_accuracy") if m != plan.metric}
    return {"score": _class_metric(plan.metric, c), "baseline": _class_metric(plan.metric, base),
            "n_train": c.n_train, "n_eval": c.n_test, **extra}  # fmt: skip


def _class_metric(metric: str, s: Any) -> float:
    """``metric`` of a :class:`~mssdf.reports.probe.ClassificationProbe` or
    :class:`~mssdf.reports.probe.ClassScores`; ``iou_changed`` / ``iou_object`` are the IoU
    of class 1 (NaN when the evaluation patches hold none and none is predicted)."""
    if metric in ("iou_changed", "iou_object"):
        return s.per_class_iou[1]
    return {"miou": s.mean_iou, "accuracy": s.accuracy, "balanced_accuracy": s.balanced_accuracy}[metric]


class _Features:
    """Frozen features per (encoder weights, task, split, inputs), computed once per call."""

    def __init__(self, tiles: _Tiles, batch_size: int):
        self.tiles, self.batch_size = tiles, batch_size
        self._cache: dict[tuple, Tensor] = {}

    def keep_only(self, fingerprints: Iterable[str]) -> None:
        """Forget the features of encoders not among ``fingerprints``."""
        keep = set(fingerprints)
        self._cache = {k: v for k, v in self._cache.items() if k[0] in keep}

    def get(self, fp: str, encoder: Encoder, plan: TaskPlan, split: str) -> Tensor:
        """``(B, N, D)`` patch features (``(B, N, 2D)`` change features, ``(B, D)`` tile features)."""
        key = (fp, plan.task, split, plan.modalities)
        if key not in self._cache:
            self._cache[key] = self._compute(encoder, plan, split)
        return self._cache[key]

    def _compute(self, encoder: Encoder, plan: TaskPlan, split: str) -> Tensor:
        t = self.tiles
        if plan.kind == "change":
            m = plan.modalities[0]
            norm = wants_normalized(encoder, m)
            first = patch_features(encoder, {m: t.inputs(plan.task, split, m, norm)}, self.batch_size)
            second = t.inputs(plan.task, split, m + SECOND_DATE, norm, stats_key=m)
            return change_features(first, patch_features(encoder, {m: second}, self.batch_size))
        images = {m: t.inputs(plan.task, split, m, wants_normalized(encoder, m)) for m in plan.modalities}
        feats = patch_features(encoder, images, self.batch_size)
        return tile_features(feats) if plan.kind == "tile_class" else feats


def _unusable(encoder: Encoder, plan: TaskPlan, cell: int | None = None) -> str | None:
    """Why ``encoder`` cannot be probed on the task (None if it can)."""
    missing = [m for m in plan.modalities if m not in encoder.cfg.modalities]
    if missing:
        return f"encoder has no {'/'.join(missing)} adapter (has {sorted(encoder.cfg.modalities)})"
    p = encoder.cfg.patch_size
    if plan.tile_size % p:
        return f"tiles of {plan.tile_size} px are not a multiple of the patch size {p}"
    if cell is not None and (cell % p or plan.tile_size % cell):
        return f"probe cell {cell} px is not a multiple of the patch size {p} or does not divide the {plan.tile_size} px tiles"
    return None


def pool_cells(features: Tensor, factor: int) -> Tensor:
    """``(B, N, D)`` patch features on a square grid → ``(B, N / factor², D)``: the mean over
    each ``factor × factor`` block of patches (a probe cell), row-major like the patches."""
    if factor == 1:
        return features
    b, n, d = features.shape
    g = math.isqrt(n)
    x = features.reshape(b, g // factor, factor, g // factor, factor, d)
    return x.mean(dim=(2, 4)).reshape(b, -1, d)


# ----------------------------------------------------------------------------- the check
def health_check(
    make_encoders: Callable[[int], Mapping[str, Encoder]],
    root: str | Path,
    cfg: HealthConfig = HealthConfig(),
    seeds: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Probe every encoder on every labelled task, once per seed (see the module docstring).

    Args:
        make_encoders: ``seed -> {name: Encoder}``; pre-trained encoders the same for every
            seed, random init drawn with the seed (e.g. :func:`with_random_init`).
        root: the prepared sample (``data/prepared``).
        seeds: default ``cfg.seeds``.
        log: optional progress callback (one line per seed and task).
    Returns:
        one row per (seed, task, encoder) with keys ``encoder``, ``task``, ``metric``,
        ``higher_is_better``, ``seed``, ``score``, ``baseline``, ``eval_split``,
        ``n_train``, ``n_eval`` (probe samples: patches, or tiles for tile classes),
        ``n_train_tiles``, ``n_eval_tiles``, ``label_kind``, ``modality``, ``kind``, the
        kind's other figures (``accuracy``, ``miou``, ``balanced_accuracy``) and ``note``
        where the score is NaN.
    """
    root = resolve(root)
    seeds = tuple(cfg.seeds if seeds is None else seeds)
    plans = plan_tasks(root, cfg)
    tiles = _Tiles(root)
    features = _Features(tiles, cfg.batch_size)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        encoders = dict(make_encoders(seed))
        fps = {name: encoder_fingerprint(enc) for name, enc in encoders.items()}
        features.keep_only(fps.values())
        for plan in plans:
            if log is not None:
                log(f"seed {seed}: {plan.task} ({plan.kind}, {plan.metric} on {plan.eval_split})")
            rows += _task_rows(plan, seed, encoders, fps, tiles, features, cfg)
    return rows


def _task_rows(
    plan: TaskPlan, seed: int, encoders: Mapping[str, Encoder], fps: Mapping[str, str], tiles: _Tiles,
    features: _Features, cfg: HealthConfig,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of one task and seed (one per encoder)."""
    base = {"task": plan.task, "metric": plan.metric, "higher_is_better": plan.higher_is_better, "seed": int(seed),
            "eval_split": plan.eval_split, "label_kind": plan.label_kind, "modality": plan.modality, "kind": plan.kind,
            "n_train_tiles": plan.n_train_tiles, "n_eval_tiles": plan.n_eval_tiles}  # fmt: skip
    nan_row = {"score": math.nan, "baseline": math.nan, "n_train": 0, "n_eval": 0}
    if plan.note:
        return [{"encoder": name, **base, **nan_row, "note": plan.note} for name in encoders]
    targets = {s: tiles.targets(plan.task, s) for s in ("train", plan.eval_split)}
    boot = bootstrap_indices(plan.n_train_tiles, seed, plan.task) if cfg.bootstrap else torch.arange(plan.n_train_tiles)
    out = []
    for name, enc in encoders.items():
        note = _unusable(enc, plan, cfg.cell)
        if note:
            out.append({"encoder": name, **base, **nan_row, "note": note})
            continue
        p = cfg.cell or enc.cfg.patch_size  # the probe's unit: the same cells for every encoder and geometry
        ys = {s: task_targets(plan, targets[s], p, cfg.min_cover) for s in targets}
        fs = {s: features.get(fps[name], enc, plan, s) for s in targets}
        if plan.kind != "tile_class":
            fs = {s: pool_cells(f, p // enc.cfg.patch_size) for s, f in fs.items()}
        r = probe_scores(plan, fs["train"][boot], ys["train"][boot], fs[plan.eval_split], ys[plan.eval_split], cfg)
        out.append({"encoder": name, **base, **r})
    return out


# ----------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class ProbeStageConfig:
    """The ``pretrain_probe`` section: where the variants' weights are, the prepared sample,
    where the report writes, and the health check's options."""

    models_dir: str = "models/pretrain"  # <models_dir>/<variant>/final (stage pretrain@<variant>)
    root: str = "data/prepared"
    out_dir: str = "scratch/pretrain_probe"
    health: HealthConfig = field(default_factory=HealthConfig)


def load_variant_encoders(models_dir: str | Path, variants: Sequence[str]) -> dict[str, Encoder]:
    """``{variant: encoder}`` of ``<models_dir>/<variant>/final`` (our safetensors + config.json).

    Raises:
        DataError: naming the first missing folder and the stage that writes it.
    """
    from mssdf.data.io import DataError
    from mssdf.weights.native import load_pretrained

    folder = resolve(models_dir)
    out = {}
    for v in variants:
        final = folder / v / "final"
        if not (final / "model.safetensors").is_file():
            raise DataError(f"{final}: no pre-trained weights of variant {v!r} (run `dvc repro pretrain@{v}`, "
                            "or notebooks/02_pretrain with that variant and out_dir)")
        out[v] = load_pretrained(final).encoder.eval()
    return out



def with_random_init(
    pretrained: Mapping[str, Encoder], cfg: ModelConfig | None = None, name: str = "random_init"
) -> Callable[[int], dict[str, Encoder]]:
    """A ``make_encoders`` for :func:`health_check`: the given (pre-trained) encoders for
    every seed, plus ``name``: an :class:`~mssdf.model.MSSDF` encoder of ``cfg`` (default:
    the first pre-trained encoder's) initialised with ``torch.manual_seed(seed)`` (the
    global RNG state is restored afterwards), on the first encoder's device."""
    if not pretrained and cfg is None:
        raise ValueError("with_random_init needs a pre-trained encoder or a cfg")
    first = next(iter(pretrained.values()), None)
    model_cfg = cfg if cfg is not None else first.cfg
    device = next(first.parameters()).device if first is not None else torch.device("cpu")

    def make(seed: int) -> dict[str, Encoder]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random = MSSDF(model_cfg).encoder.eval().to(device)
        return {**pretrained, name: random}

    return make


# ----------------------------------------------------------------------------- outputs
def _finite(values: Iterable[Any]) -> np.ndarray:
    a = np.asarray([float(v) for v in values], dtype=float)
    return a[np.isfinite(a)]


def summarise(rows: Sequence[Mapping[str, Any]]) -> "Any":
    """Mean ± std over seeds, one line per (task, metric, encoder).

    ``mean`` and ``std`` (sample standard deviation, ``ddof=1``; NaN with one seed) are
    over the finite scores; ``n_seeds`` counts them (0: every seed NaN, see ``note``).

    Returns:
        a pandas DataFrame indexed by (task, metric, encoder), rows in the order of
        ``rows``, with columns ``mean``, ``std``, ``n_seeds``, ``mean ± std`` (formatted),
        ``baseline`` (mean over seeds), ``higher_is_better``, ``label_kind``,
        ``eval_split``, ``modality`` and ``note``.
    """
    import pandas as pd

    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["metric"], r["encoder"]), []).append(r)
    records = []
    for (task, metric, encoder), rs in groups.items():
        s, b = _finite(r["score"] for r in rs), _finite(r.get("baseline", math.nan) for r in rs)
        mean = float(s.mean()) if len(s) else math.nan
        std = float(s.std(ddof=1)) if len(s) > 1 else math.nan
        notes = sorted({r["note"] for r in rs if r.get("note")})
        records.append({"task": task, "metric": metric, "encoder": encoder, "mean": mean, "std": std, "n_seeds": len(s),
                        "mean ± std": _format(mean, std), "baseline": float(b.mean()) if len(b) else math.nan,
                        "higher_is_better": rs[0]["higher_is_better"], "label_kind": rs[0]["label_kind"],
                        "eval_split": rs[0]["eval_split"], "modality": rs[0]["modality"], "note": "; ".join(notes)})  # fmt: skip
    columns = ["task", "metric", "encoder", "mean", "std", "n_seeds", "mean ± std", "baseline", "higher_is_better",
               "label_kind", "eval_split", "modality", "note"]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns).set_index(["task", "metric", "encoder"])


def _format(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if not math.isfinite(std) else f"{mean:.3f} ± {std:.3f}"


def _json_float(value: Any) -> float | None:
    v = float(value)
    return round(v, 6) if math.isfinite(v) else None


def health_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The metrics file's health section (stable keys, JSON-safe).

    Returns:
        ``{"<task>_<metric>": {"<encoder>": {"mean", "std", "seeds"}}}``: ``mean`` / ``std``
        as in :func:`summarise`, ``seeds`` the per-seed scores in increasing seed order;
        numbers rounded to 6 digits, NaN as None.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    frame = summarise(rows)
    for (task, metric, encoder), line in frame.iterrows():
        scores = sorted((r["seed"], r["score"]) for r in rows
                        if (r["task"], r["metric"], r["encoder"]) == (task, metric, encoder))  # fmt: skip
        out.setdefault(f"{task}_{metric}", {})[encoder] = {
            "mean": _json_float(line["mean"]), "std": _json_float(line["std"]), "seeds": [_json_float(s) for _, s in scores],
        }  # fmt: skip
    return out


__all__ = [
    "HealthConfig", "METRICS", "TaskPlan", "bootstrap_indices", "encoder_fingerprint", "eval_split", "health_check",
    "health_metrics", "labelled_tasks", "plan_tasks", "probe_kind", "probe_scores", "summarise", "task_targets",
    "wants_normalized", "with_random_init",
]  # fmt: skip
