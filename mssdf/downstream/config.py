"""Typed configuration of one downstream run: semantic segmentation, height estimation,
scene classification or change detection.

A run is one :class:`FinetuneConfig`, built with :func:`build_finetune_config` from a plain
mapping (a params.yaml section, notebook parameters, ``--set`` overrides). The optional key
``profile`` selects a starting point that the remaining keys override (deep merge):

* ``smoke``: the tiny preset on the embedded sample, seconds per run on 2 CPU cores;
* ``paper``: the authors' protocol (method.md, issue 9): ViT-B/16 at 512 px crops, AdamW
  6e-5, weight decay 0.01, layer decay 0.65 (the mmseg BEiT/MAE recipe), 80k iterations,
  batch 8, warm-up 1500 iterations then poly, on Potsdam / Vaihingen (50 % of the training
  set, seeded), US3D or SECOND through :mod:`mssdf.data.readers`; for scene classification
  :data:`TASK_PROFILES` replaces the dense-task recipe by MAE's fine-tuning recipe at 224 px
  (AID, NWPU-RESISC45).

Per task, :data:`TASK_PROFILES` ``[profile][task]`` is merged after the profile and before
the remaining keys.

Every unknown key, wrong type or inconsistent value raises
:class:`~mssdf.config.ConfigError` naming the key, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from mssdf.config import ConfigError, deep_merge, from_dict, to_dict
from mssdf.downstream.backbone import BackboneConfig

Task = Literal["segmentation", "height", "classification", "change", "detection"]
#: Suffix of the second date's keys in a change model's input dict: ``{"rgb": t1, "rgb_t2": t2}``
#: (the sample's ``pan`` / ``pan_t2`` convention; the SECOND reader's ``t1`` / ``t2`` dicts are flattened to it).
SECOND_DATE = "_t2"
#: Tasks whose targets are per-pixel class ids (loss, checks and metrics of segmentation).
DENSE_CLASS_TASKS = ("segmentation", "change")
ROLES = ("train", "val", "test")


@dataclass(frozen=True)
class DataConfig:
    """Where the samples of each role (train / val / test) come from.

    ``kind: sample`` reads a prepared task of the embedded sample
    (:class:`mssdf.data.sample.SampleTiles`; ``splits[role]`` names the split, e.g. IGN's
    tasks have no test split: ``test: val``); ``kind: reader`` reads a paper dataset in its
    official layout (:func:`mssdf.data.readers.get_dataset`, ``reader_args`` for every role,
    ``role_args[role]`` on top, e.g. ``{train: {split: train, train_fraction: 0.5}}``).
    Inputs are standardised by per-band train statistics (the sample's ``stats.json``, or
    estimated from ``stats_samples`` train samples of a reader) unless the backbone holds
    statistics of its own.
    """

    kind: Literal["sample", "reader"] = "sample"
    root: str = "data/prepared"
    task: str = "seg_buildings"  # kind sample: a prepared task
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    reader: str = ""  # kind reader: registry name (potsdam, vaihingen, us3d)
    reader_args: dict[str, Any] = field(default_factory=dict)
    role_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    dsm_source: Literal["dsm", "ndsm"] = "ndsm"
    train_fraction: float = 1.0  # kind sample: a seeded fraction of the train tiles
    resize: int | None = None  # classification: inputs resized (bilinear, antialiased) to this side first (paper: 224)
    crop: int | None = None  # random training crop side (None: whole samples)
    flip: bool = True  # random horizontal/vertical flips and 90° rotations in training
    eval_window: int | None = None  # sliding-window side at evaluation (None: whole samples in one pass)
    eval_overlap: float = 0.25  # fraction of the window shared by neighbours
    stats_samples: int = 32  # kind reader: train samples the band statistics are estimated from

    def __post_init__(self) -> None:
        if self.kind == "sample":
            from mssdf.data.tasks import TASKS

            if self.task not in TASKS:
                raise ConfigError(f"data.task: unknown task {self.task!r}; choose from {sorted(TASKS)}")
        elif not self.reader:
            raise ConfigError("data.reader: a reader run must name its dataset (potsdam, vaihingen, us3d, ...)")
        missing = [r for r in ROLES if r not in self.splits]
        unknown = [r for r in self.splits if r not in ROLES]
        if missing or unknown:
            raise ConfigError(f"data.splits: needs exactly the roles {list(ROLES)} (missing {missing}, unknown {unknown})")
        bad_roles = [r for r in self.role_args if r not in ROLES]
        if bad_roles:
            raise ConfigError(f"data.role_args: unknown role(s) {bad_roles}; choose from {list(ROLES)}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"data.train_fraction: must be in (0, 1], got {self.train_fraction}")
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"data.resize: must be >= 1 or null, got {self.resize}")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"data.crop: must be >= 1 or null, got {self.crop}")
        if self.eval_window is not None and self.eval_window < 1:
            raise ConfigError(f"data.eval_window: must be >= 1 or null, got {self.eval_window}")
        if not 0.0 <= self.eval_overlap < 1.0:
            raise ConfigError(f"data.eval_overlap: must be in [0, 1), got {self.eval_overlap}")
        if self.stats_samples < 1:
            raise ConfigError(f"data.stats_samples: must be >= 1, got {self.stats_samples}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with layer-wise learning-rate decay, warm-up then poly or cosine decay."""

    lr: float = 1e-3
    layer_decay: float = 0.65  # lr of encoder layer i = lr · decay^(depth + 1 − i); 1.0: none
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["poly", "cosine"] = "poly"
    power: float = 1.0  # poly exponent
    min_lr: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optim.layer_decay: must be in (0, 1], got {self.layer_decay}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.min_lr < 0 or self.power <= 0:
            raise ConfigError("optim.weight_decay, warmup_steps, min_lr: must be >= 0; optim.power: > 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null, got {self.grad_clip}")


@dataclass(frozen=True)
class FinetuneConfig:
    """One downstream run: a backbone from an initialisation, a head, one dataset, one seed.

    ``mode``: ``finetune`` trains everything; ``linear`` freezes the encoder (dense tasks:
    the pyramid neck and the head train; classification: MAE's linear probe on cached frozen
    features, BatchNorm without affine parameters then a linear layer); ``knn``
    (classification): a weighted k-nearest-neighbour vote on frozen features, no training.
    """

    task: Task = "segmentation"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mode: Literal["finetune", "linear", "knn"] = "finetune"
    num_classes: int | None = None  # classes: None = the dataset's class count (given: must agree)
    head_channels: int = 64
    aux_weight: float = 0.4  # segmentation / change: weight of the auxiliary FCN head's loss (0: no aux head)
    height_loss: Literal["l1", "mse", "smooth_l1"] = "mse"  # mse: the loss the reported RMSE measures (L1 pulls toward the median: ground, 0 m)
    height_scale_m: float = 25.5  # metres at 255 in the normalised 8-bit height unit
    pool: Literal["cls", "mean"] = "cls"  # classification: the cls token, or the mean of the patch tokens (final norm applied)
    label_smoothing: float = 0.0  # classification fine-tuning
    mixup: float = 0.0  # classification fine-tuning: mixup alpha (0: off; timm.data.Mixup)
    cutmix: float = 0.0  # classification fine-tuning: cutmix alpha (0: off; both > 0: one of the two per batch)
    knn_k: int = 20  # knn: neighbours voting (cosine similarity, DINO's weighted vote)
    knn_temperature: float = 0.07  # knn: vote weight exp(similarity / T)
    change_fusion: Literal["absdiff", "concat"] = "absdiff"  # change: per-level |f1 - f2| (date-symmetric) or [f1, f2] + 1x1 conv
    box_type: Literal["hbb", "obb"] = "hbb"  # detection: horizontal boxes, or oriented boxes (cx, cy, w, h, angle)
    num_convs: int = 2  # detection: conv layers of each FCOS tower
    score_threshold: float = 0.05  # detection decoding: candidates below are dropped
    nms_iou: float = 0.6  # detection decoding: class-aware NMS threshold (IoU above suppresses)
    pre_nms: int = 1000  # detection decoding: candidates per level before NMS
    max_detections: int = 100  # detection decoding: per image
    steps: int = 100
    batch_size: int = 8  # per process
    eval_every: int = 50  # steps between validations (model selection); the last step always validates
    select_metric: str = ""  # "" = the task's default (SELECT_METRICS: the first entry)
    select_best: bool = True  # False: the last weights are tested (validation is still logged): protocols without a val split
    seed: int = 0
    out_dir: str = "scratch/finetune"
    resume: bool = False
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 1
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    eval_batch_size: int = 16
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "keep_checkpoints", "log_every", "eval_batch_size", "head_channels",
                     "knn_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes: must be >= 2 or null, got {self.num_classes}")
        if self.aux_weight < 0 or self.height_scale_m <= 0:
            raise ConfigError("aux_weight: must be >= 0; height_scale_m: > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0 or self.knn_temperature <= 0:
            raise ConfigError("mixup, cutmix: alphas must be >= 0; knn_temperature: > 0")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"batch_size: mixup/cutmix pair the images of a batch, it must be even (got {self.batch_size})")
        if self.task == "detection":
            if self.mode != "finetune" and self.mode != "linear":
                raise ConfigError(f"mode: {self.mode!r} is a classification protocol (task is 'detection')")
            if self.data.crop is not None:
                raise ConfigError("data.crop: detection trains on whole samples (paper datasets are cut by their readers: "
                                  "data.role_args.<role>.crop_size)")
            if not 0.0 < self.nms_iou <= 1.0 or not 0.0 <= self.score_threshold < 1.0 or self.pre_nms < 1 \
                    or self.max_detections < 1 or self.num_convs < 1:
                raise ConfigError("nms_iou: (0, 1]; score_threshold: [0, 1); pre_nms, max_detections, num_convs: >= 1")
        if self.task != "classification":
            if self.mode == "knn":
                raise ConfigError(f"mode: 'knn' is a classification protocol (task is {self.task!r})")
            if self.mixup or self.cutmix or self.label_smoothing:
                raise ConfigError(f"mixup, cutmix, label_smoothing: classification options (task is {self.task!r})")
            if self.data.resize is not None:
                raise ConfigError(f"data.resize: classification only (task {self.task!r} resizes no targets)")
        if self.data.kind == "sample":
            self._check_sample_task()
        if self.select_metric and self.select_metric not in SELECT_METRICS[self.task]:
            raise ConfigError(f"select_metric: {self.select_metric!r}; choose from {sorted(SELECT_METRICS[self.task])}")

    def _check_sample_task(self) -> None:
        from mssdf.data.tasks import TASKS

        name, spec = self.data.task, TASKS[self.data.task]
        if self.task == "height" and "height" not in spec.targets:
            raise ConfigError(f"data.task: {name!r} has no height target (task is 'height')")
        if self.task == "segmentation" and ("label" not in spec.targets or spec.tile_class or "pan_t2" in spec.inputs):
            raise ConfigError(f"data.task: {name!r} has no per-pixel class label (task is 'segmentation')")
        if self.task == "classification" and not spec.tile_class:
            raise ConfigError(f"data.task: {name!r} has no tile class (task is 'classification'; e.g. 'scene')")
        if self.task == "change" and not any(f"{m}_t2" in spec.inputs for m in spec.inputs):
            raise ConfigError(f"data.task: {name!r} has no second date (task is 'change'; e.g. 'change')")
        if self.task == "detection" and "boxes" not in spec.targets:
            raise ConfigError(f"data.task: {name!r} has no boxes (task is 'detection'; e.g. 'detection')")
        if self.task in ("segmentation", "classification", "change", "detection") and self.num_classes is not None \
                and self.num_classes != len(spec.classes):
            raise ConfigError(f"num_classes: {self.num_classes} disagrees with the {len(spec.classes)} classes "
                              f"of {name!r} {list(spec.classes)}")

    @property
    def selection(self) -> tuple[str, bool]:
        """``(validation metric, higher is better)`` that picks the weights evaluated on test."""
        name = self.select_metric or next(iter(SELECT_METRICS[self.task]))
        return name, SELECT_METRICS[self.task][name]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


#: Metrics a run may select its weights on: ``{task: {metric: higher_is_better}}``.
SELECT_METRICS: dict[str, dict[str, bool]] = {
    "segmentation": {"miou": True, "f1": True, "overall_accuracy": True},
    "height": {"rmse_m": False, "mae_m": False, "rmse_norm": False},
    "classification": {"overall_accuracy": True, "f1": True},
    "change": {"change_iou": True, "change_f1": True, "miou": True, "overall_accuracy": True},
    "detection": {"map_50": True, "map": True},
}

PROFILES: dict[str, dict[str, Any]] = {
    # seconds per run on 2 CPU cores: the tiny preset on the prepared sample's 64 px tiles
    "smoke": {
        "backbone": {"arch": {"preset": "tiny", "img_size": 64, "patch_size": 8}},
        "optim": {"lr": 1e-3, "layer_decay": 0.75, "weight_decay": 0.05, "warmup_steps": 10, "schedule": "poly"},
        "steps": 100, "batch_size": 8, "eval_every": 50, "log_every": 10, "head_channels": 32,
    },
    # the authors' protocol (ViT-B/16, mmseg UperNet recipe): 512 px crops, 80k iterations, batch 8
    "paper": {
        "backbone": {"arch": {"preset": "base", "img_size": 512, "patch_size": 16}, "drop_path": 0.1},
        "data": {"kind": "reader", "crop": 512, "eval_window": 512, "eval_overlap": 0.33},
        "optim": {"lr": 6e-5, "layer_decay": 0.65, "weight_decay": 0.01, "warmup_steps": 1500, "schedule": "poly",
                  "betas": [0.9, 0.999]},
        "steps": 80000, "batch_size": 8, "eval_every": 8000, "log_every": 50, "checkpoint_every": 2000,
        "keep_checkpoints": 2, "head_channels": 512, "precision": "auto",
    },
}


#: Per-task overrides of a profile (merged after ``PROFILES[profile]``, before the run's own keys).
TASK_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "classification": {"batch_size": 16, "optim": {"lr": 1e-3, "layer_decay": 0.75, "warmup_steps": 5}},
        # 64 px tiles hold a handful of objects: 100 candidates per level before NMS are plenty
        "detection": {"pre_nms": 100, "head_channels": 32},
    },
    # MAE's fine-tuning recipe (the authors' classification configs cannot be run: method.md)
    # at 224 px and batch 64: lr = 5e-4 · 64 / 256, layer decay 0.65, weight decay 0.05,
    # drop path 0.1, mixup 0.8 / cutmix 1.0 / label smoothing 0.1, warm-up 5 epochs then
    # cosine; the step counts (100 epochs) are the presets'. No validation split in these
    # protocols: the last weights are tested (validation on the test images is logged only).
    "paper": {
        "classification": {
            "backbone": {"arch": {"preset": "base", "img_size": 224, "patch_size": 16}, "drop_path": 0.1},
            "data": {"crop": None, "eval_window": None, "resize": 224},
            "optim": {"lr": 1.25e-4, "layer_decay": 0.65, "weight_decay": 0.05, "warmup_steps": 160,
                      "schedule": "cosine", "min_lr": 1e-6},
            "batch_size": 64, "eval_batch_size": 64, "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
            "select_best": False, "head_channels": 64,
        },
        # the issue's detection recipe: AdamW 1e-4, layer decay 0.75, 12 epochs (the presets' steps), batch 8;
        # FCOS head 256 wide with 4 convs per tower (the FCOS paper's)
        "detection": {
            "data": {"crop": None, "eval_window": None},
            "optim": {"lr": 1e-4, "layer_decay": 0.75, "weight_decay": 0.05, "warmup_steps": 500, "schedule": "cosine"},
            "batch_size": 8, "eval_batch_size": 8, "head_channels": 256, "num_convs": 4,
        },
    },
}


def _scene_preset(reader: str, ratio: float, train_images: int) -> dict[str, Any]:
    """AID / NWPU-RESISC45 at one training ratio: seeded stratified split, 100 epochs at batch 64."""
    steps = 100 * max(1, round(train_images / 64))
    return {"task": "classification", "backbone": {"modalities": ["rgb"]}, "steps": steps, "eval_every": max(1, steps // 10),
            "optim": {"warmup_steps": 5 * max(1, round(train_images / 64))},
            "data": {"kind": "reader", "reader": reader, "root": f"data/paper/{reader}",
                     "splits": {"train": "train", "val": "test", "test": "test"},
                     "reader_args": {"train_ratio": ratio, "seed": 0}}}


def _paper_datasets() -> dict[str, dict[str, Any]]:
    from mssdf.data.readers.potsdam import TRAIN_TILES as POTSDAM_TRAIN
    from mssdf.data.readers.vaihingen import TRAIN_AREAS as VAIHINGEN_TRAIN

    potsdam_val, vaihingen_val = ("6_12", "7_12"), (34, 37)  # held out of the train tiles for model selection
    return {
        # 6 classes with clutter (as the authors); RGB; 50 % of the train crops (seeded); whole test tiles by sliding windows
        "potsdam": {"task": "segmentation", "backbone": {"modalities": ["rgb"]}, "data": {
            "kind": "reader", "reader": "potsdam", "root": "data/paper/potsdam",
            "splits": {"train": "train", "val": "train", "test": "test"},
            "reader_args": {"modalities": ["rgb"], "labels": "full"},
            "role_args": {"train": {"tiles": [t for t in POTSDAM_TRAIN if t not in potsdam_val], "crop_size": 512,
                                    "stride": 512, "train_fraction": 0.5, "seed": 0},
                          "val": {"tiles": list(potsdam_val)}}}},
        # IRRG through the RGB adapter (the usual Vaihingen input); 50 % of the train crops
        "vaihingen": {"task": "segmentation", "backbone": {"modalities": ["rgb"]}, "data": {
            "kind": "reader", "reader": "vaihingen", "root": "data/paper/vaihingen",
            "splits": {"train": "train", "val": "train", "test": "test"},
            "reader_args": {"modalities": ["irrg"], "irrg_key": "rgb", "labels": "full"},
            "role_args": {"train": {"areas": [a for a in VAIHINGEN_TRAIN if a not in vaihingen_val], "crop_size": 512,
                                    "stride": 512, "train_fraction": 0.5, "seed": 0},
                          "val": {"areas": list(vaihingen_val)}}}},
        # US3D / DFC2019 track 1: RGB -> above-ground height (AGL, metres), seeded tile-grouped split
        "us3d": {"task": "height", "backbone": {"modalities": ["rgb"]}, "data": {
            "kind": "reader", "reader": "us3d", "root": "data/paper/us3d",
            "splits": {"train": "train", "val": "val", "test": "test"},
            "reader_args": {"modalities": ["rgb"], "targets": ["height"]}}},
        # scene classification: 20 % / 50 % of AID's 10,000 images, 10 % / 20 % of NWPU's 31,500 for training
        "aid_20": _scene_preset("aid", 0.2, 2000),
        "aid_50": _scene_preset("aid", 0.5, 5000),
        "nwpu_10": _scene_preset("nwpu_resisc45", 0.1, 3150),
        "nwpu_20": _scene_preset("nwpu_resisc45", 0.2, 6300),
        # DIOR (horizontal boxes, 20 classes, 800 px): 12 epochs of the train list (5,862 images) at batch 8,
        # selection on val, test on the official test list
        "dior": {"task": "detection", "box_type": "hbb", "backbone": {"modalities": ["rgb"]},
                 "steps": 8800, "eval_every": 2200,
                 "data": {"kind": "reader", "reader": "dior", "root": "data/paper/dior", "crop": None, "eval_window": None,
                          "splits": {"train": "train", "val": "val", "test": "test"}}},
        # DOTA v1.0 (oriented boxes, 15 classes): train on 1024 px crops every 824 px (gap 200; objects kept with
        # >= 70 % of their area inside), about 15,700 crops -> 12 epochs at batch 8 = 23,600 steps; the val images
        # (the test labels are not public) evaluated whole: 1024 px windows overlapping by 200 px, detections
        # merged by rotated NMS; no separate selection split: the last weights are tested
        "dota": {"task": "detection", "box_type": "obb", "backbone": {"modalities": ["rgb"]}, "max_detections": 2000,
                 "nms_iou": 0.1, "steps": 23600, "eval_every": 23600, "select_best": False,
                 "data": {"kind": "reader", "reader": "dota", "root": "data/paper/dota", "crop": None, "eval_window": 1024,
                          "eval_overlap": 200 / 1024, "splits": {"train": "train", "val": "val", "test": "val"},
                          "reader_args": {"version": "1.0"},
                          "role_args": {"train": {"crop_size": 1024, "gap": 200, "min_visible": 0.7}}}},
        # SECOND, binary change = label != unchanged; seeded 4:1 split of the public pairs (the paper's split is not
        # published), 10 % of the train pairs held out for selection (same seed); whole 512 px pairs
        "second": {"task": "change", "backbone": {"modalities": ["rgb"]}, "data": {
            "kind": "reader", "reader": "second", "root": "data/paper/second",
            "splits": {"train": "train", "val": "val", "test": "test"},
            "reader_args": {"seed": 0, "test_fraction": 0.2, "val_fraction": 0.1}}},
    }


#: The paper's datasets through their readers: a study's dataset entry ``{preset: potsdam,
#: data: {root: /data/potsdam}}`` starts from one of these (with ``profile: paper``: the
#: authors' protocol). ``backbone.modalities: [rgb, dsm]`` with ``data.reader_args.modalities:
#: [rgb, dsm]`` is the authors' unreleased "+DSM" setting.
PAPER_DATASETS: dict[str, dict[str, Any]] = _paper_datasets()


def build_finetune_config(data: Mapping[str, Any] | None = None, path: str = "") -> FinetuneConfig:
    """A validated :class:`FinetuneConfig` from a mapping with an optional ``profile`` key
    (defaults ← ``PROFILES[profile]`` ← the remaining keys)."""
    data = dict(data or {})
    prefix = f"{path}." if path else ""
    profile = data.pop("profile", None)
    merged: dict[str, Any] = {}
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"{prefix}profile: unknown profile {profile!r}; choose from {sorted(PROFILES)}")
        merged = deep_merge(merged, PROFILES[profile])
        merged = deep_merge(merged, TASK_PROFILES.get(profile, {}).get(str(data.get("task", "segmentation")), {}))
    return from_dict(FinetuneConfig, deep_merge(merged, data), path)


__all__ = ["DataConfig", "OptimConfig", "FinetuneConfig", "PROFILES", "TASK_PROFILES", "DENSE_CLASS_TASKS", "SECOND_DATE", "PAPER_DATASETS", "SELECT_METRICS", "ROLES", "build_finetune_config"]
