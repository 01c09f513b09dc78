"""Typed configuration of a pre-training run (the ``pretrain`` params section).

A run is one :class:`PretrainConfig`, built with :func:`build_config` from a plain
mapping (a ``params.yaml`` section, notebook parameters, ``--set`` overrides). Two
optional keys select starting points that the remaining keys override (deep merge):

* ``profile``: :data:`PROFILES` — ``paper`` (the authors' hyperparameters, method.md §2
  "Optimisation") or ``smoke`` (tiny preset, 64 px, minutes on 2 CPU cores);
* ``variant``: :data:`VARIANTS` — ``mssdf`` (default), the ``mae`` baseline (pixel
  targets, RGB only, random masking, pair terms off) and the ablations. Variants are
  parameter sets, never code forks.

Every unknown key, wrong type or inconsistent combination raises
:class:`~mssdf.config.ConfigError` naming the key, before any data is read.

Model section: ``model`` is ``{preset: <name>, <ModelConfig field>: value, ...}``; the
modalities (channel counts) and normalisation statistics come from the data unless
given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping


from mssdf.config import ConfigError, deep_merge, from_dict, load_mapping, parse_sets, to_dict
from mssdf.losses import LossConfig
from mssdf.masking import MaskingConfig
from mssdf.modalities import CHANNELS, DsmSource
from mssdf.modalities import channels as channels_of
from mssdf.model import ModelConfig, model_config


@dataclass(frozen=True)
class ComponentConfig:
    """One source of a ``mixture`` run: the train tiles of one prepared task.

    ``modalities`` empty: the task's inputs (``pan_t2``, the change task's SYNTHETIC second
    date, is never one). ``weight``: samples drawn per epoch = round(weight × tiles): 1
    reads every tile once an epoch, 0.5 a random half, 2 every tile twice (two random
    crops). ``crop``: side of the crops (None: the run's ``crop``; a source with smaller
    tiles, such as IGN's 32 px, needs its own).
    """

    task: str
    modalities: tuple[str, ...] = ()
    weight: float = 1.0
    crop: int | None = None

    def __post_init__(self) -> None:
        from mssdf.data.tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r}; choose from {sorted(TASKS)}")
        inputs = [m for m in TASKS[self.task].inputs if m in CHANNELS]
        bad = [m for m in self.modalities if m not in inputs]
        if bad:
            raise ConfigError(f"modalities: task {self.task!r} has no {bad} (modalities: {inputs})")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities: duplicates in {list(self.modalities)}")
        if not self.weight > 0:
            raise ConfigError(f"weight: must be > 0, got {self.weight}")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"crop: must be >= 1, got {self.crop}")

    @property
    def modality_names(self) -> tuple[str, ...]:
        """This component's modalities, in order (the first is its masking reference)."""
        from mssdf.data.tasks import TASKS

        return self.modalities or tuple(m for m in TASKS[self.task].inputs if m in CHANNELS)


@dataclass(frozen=True)
class DataConfig:
    """Where pre-training batches come from.

    ``kind: mixture`` reads the train tiles of several prepared tasks at once
    (``components``: ``{name: ComponentConfig}``), each sample with its own modality set;
    batches are grouped by modality set and crop (:mod:`mssdf.pretrain.mixture`), inputs
    are standardised with each source's own train statistics.
    ``kind: tiles`` reads the prepared sample (:class:`mssdf.data.sample.SampleTiles`,
    one pre-training task = one pairing: ``pretrain_autzen`` rgb↔dsm,
    ``pretrain_ign`` rgb+ms↔dsm, ``pretrain_rotterdam`` pan↔ms). ``kind: synthetic``
    builds deterministic smooth random images in memory (tests, smoke runs).
    ``kind: reader`` reads a paper dataset in its official layout through
    :func:`mssdf.data.readers.get_dataset` (``reader``: its name, e.g. ``hr_pairs``;
    ``reader_args``: its keyword arguments; ``root``: the dataset folder); the
    ``modalities`` must be given, and per-band normalisation statistics are estimated
    from ``stats_samples`` evenly spaced samples unless ``model.normalization`` sets them.
    """

    kind: Literal["tiles", "mixture", "synthetic", "reader"] = "tiles"
    root: str = "data/prepared"  # repository-relative or absolute
    task: str = "pretrain_autzen"
    split: Literal["train", "val", "test"] = "train"
    modalities: tuple[str, ...] = ()  # empty: the task's inputs (synthetic: rgb, dsm)
    crop: int | None = None  # random crop side; None: model.img_size
    backend: Literal["npy", "tif"] = "npy"
    dsm_source: DsmSource = "dsm"
    synthetic_samples: int = 64
    reader: str = ""  # kind reader: registry name (mssdf.data.readers.get_dataset)
    reader_args: dict[str, Any] = field(default_factory=dict)
    stats_samples: int = 64  # kind reader: samples used to estimate band statistics
    components: dict[str, ComponentConfig] = field(default_factory=dict)  # kind mixture

    def __post_init__(self) -> None:
        from mssdf.data.tasks import TASKS

        if self.kind == "mixture":
            # components in name order: the run (pools, groups, the model's modality order) does not
            # depend on how a YAML writer ordered the mapping (yaml.safe_dump sorts, params.yaml need not)
            object.__setattr__(self, "components", dict(sorted(self.components.items())))
            if not self.components:
                raise ConfigError("data.components: a mixture needs at least one component {name: {task: ...}}")
            if self.modalities:
                raise ConfigError("data.modalities: a mixture takes its modalities from its components; "
                                  "set data.components.<name>.modalities instead")
            if self.split != "train":
                raise ConfigError(f"data.split: a mixture reads train tiles only, got {self.split!r}")
        elif self.components:
            raise ConfigError(f"data.components: only for kind 'mixture' (kind is {self.kind!r})")
        if self.kind == "tiles" and self.task not in TASKS:
            raise ConfigError(f"data.task: unknown task {self.task!r}; choose from {sorted(TASKS)}")
        bad = [m for m in self.modalities if m not in CHANNELS]
        if bad:
            raise ConfigError(f"data.modalities: unknown modality {bad}; choose from {sorted(CHANNELS)}")
        if self.kind == "tiles" and self.modalities:
            inputs = TASKS[self.task].inputs
            missing = [m for m in self.modalities if m not in inputs]
            if missing:
                raise ConfigError(f"data.modalities: task {self.task!r} has no {missing} (inputs: {list(inputs)})")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities: duplicates in {list(self.modalities)}")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"data.crop: must be >= 1, got {self.crop}")
        if self.kind == "reader":
            from mssdf.data.readers import dataset_params

            if not self.modalities:
                raise ConfigError("data.modalities: a reader run must name its modalities (e.g. [rgb, dsm])")
            try:
                params = dataset_params(self.reader)
            except ConfigError as err:
                raise ConfigError(f"data.reader: {err}") from None
            unknown = sorted(set(self.reader_args) - set(params) - {"split", "root"})
            if unknown:
                raise ConfigError(f"data.reader_args: unknown argument(s) {unknown} for reader {self.reader!r}; valid: {sorted(params)}")
            if self.stats_samples < 1:
                raise ConfigError(f"data.stats_samples: must be >= 1, got {self.stats_samples}")
        if self.synthetic_samples < 1:
            raise ConfigError(f"data.synthetic_samples: must be >= 1, got {self.synthetic_samples}")

    @property
    def modality_names(self) -> tuple[str, ...]:
        """The modalities of every batch, in order (the first is the masking reference)."""
        if self.kind == "mixture":
            names: list[str] = []
            for c in self.components.values():
                names += [m for m in c.modality_names if m not in names]
            return tuple(names)
        if self.modalities:
            return self.modalities
        if self.kind == "synthetic":
            return ("rgb", "dsm")
        from mssdf.data.tasks import TASKS

        return TASKS[self.task].inputs


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its per-step schedule (lr = base_lr · global batch / 256 unless ``lr``)."""

    base_lr: float = 1.5e-4
    lr: float | None = None  # absolute peak lr (overrides the batch scaling)
    min_lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_epochs: float = 40.0
    grad_clip: float | None = None  # max global grad norm; None: no clipping

    def __post_init__(self) -> None:
        if self.base_lr <= 0 or (self.lr is not None and self.lr <= 0):
            raise ConfigError("optim.base_lr / optim.lr: must be > 0")
        if self.min_lr < 0:
            raise ConfigError(f"optim.min_lr: must be >= 0, got {self.min_lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: each must be in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null, got {self.grad_clip}")

    def peak_lr(self, global_batch: int) -> float:
        """The peak learning rate for a global batch size."""
        return self.lr if self.lr is not None else self.base_lr * global_batch / 256.0


@dataclass(frozen=True)
class EmaConfig:
    """Teacher EMA momentum, cosine from ``momentum_start`` to ``momentum_end`` over the run."""

    momentum_start: float = 0.996
    momentum_end: float = 1.0

    def __post_init__(self) -> None:
        for name in ("momentum_start", "momentum_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ema.{name}: must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class PretrainConfig:
    """One pre-training run (see the module docstring)."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "base"})
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig | None = None  # None: default schedule for teacher targets; must stay None for pixels
    epochs: int = 500
    batch_size: int = 32  # per process; global batch = batch_size · world size
    mask_group: int | None = None  # samples per mask generator (None: the per-process batch)
    max_steps: int | None = None  # stop after this global step (schedules still span `epochs`)
    seed: int = 0
    checkpoint_every: int = 1000  # steps; 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    out_dir: str = "scratch/pretrain"
    resume: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    export_timm: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1 or self.log_every < 1:
            raise ConfigError("keep_checkpoints and log_every: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1 or null, got {self.max_steps}")
        if self.mask_group is not None and (self.mask_group < 1 or self.batch_size % self.mask_group):
            raise ConfigError(f"mask_group: {self.mask_group} must be >= 1 and divide batch_size {self.batch_size}")
        cfg = self.model_config()  # validates the model section, naming model.<key>
        self._check_consistency(cfg)

    # ------------------------------------------------------------------ model
    def model_config(
        self, channels: Mapping[str, int] | None = None, normalization: Mapping[str, Any] | None = None
    ) -> ModelConfig:
        """The :class:`ModelConfig` of this run.

        Args:
            channels: ``{modality: bands}`` of the data (default: :data:`mssdf.modalities.CHANNELS` of
                ``data.modalities``); ignored where ``model.modalities`` is given.
            normalization: ``{modality: NormStats}`` from the data's statistics; ignored
                where ``model.normalization`` is given.
        """
        spec = dict(self.model)
        preset = spec.pop("preset", "base")
        if not isinstance(preset, str):
            raise ConfigError(f"model.preset: expected a string, got {preset!r}")
        if "modalities" not in spec:
            names = self.data.modality_names
            chans = dict(channels) if channels is not None else channels_of(names)
            spec["modalities"] = {m: chans[m] for m in names}
            if isinstance(spec.get("normalization"), Mapping):  # statistics of unused modalities are dropped
                spec["normalization"] = {m: s for m, s in spec["normalization"].items() if m in names}
        if not spec.get("normalization") and normalization:  # empty or absent: the data's statistics
            spec["normalization"] = {m: s for m, s in normalization.items() if m in spec["modalities"]}
        return model_config(preset, **spec)

    def _check_consistency(self, cfg: ModelConfig) -> None:
        names = self.data.modality_names
        sets = self.modality_sets
        missing = [m for m in names if m not in cfg.modalities]
        if missing:
            raise ConfigError(f"model.modalities: lacks the data modalities {missing} (data.modalities: {list(names)})")
        if self.data.kind == "mixture" and cfg.normalization:
            raise ConfigError("model.normalization: a mixture standardises its inputs with each source's train statistics; "
                              "leave model.normalization out")
        if cfg.target == "pixels" and self.ema is not None:
            raise ConfigError("ema: set, but model.target is 'pixels' (no teacher to update); remove ema")
        if max(len(s) for s in sets) < 2:
            for term in ("contrast", "hsic"):
                if getattr(self.losses, term) > 0:
                    raise ConfigError(
                        f"losses.{term}: weight {getattr(self.losses, term)} needs two modalities in a sample, "
                        f"but the samples have only {[list(s) for s in sets]}; set it to 0"
                    )
        if len(names) < 2 and self.losses.modality > 0:
            raise ConfigError(f"losses.modality: needs two modalities, data.modalities is {list(names)}; set it to 0")
        if self.losses.reconstruction == 0 and self.losses.contrast == 0 and self.losses.hsic == 0 and self.losses.modality == 0:
            raise ConfigError("losses: every weight is 0")
        if self.masking.reference is not None and any(self.masking.reference not in s for s in sets):
            raise ConfigError(f"masking.reference: {self.masking.reference!r} is not in every sample's modalities "
                              f"{[list(s) for s in sets]} (null: each sample's first modality)")
        unknown = [m for m in self.masking.modality_weights if m not in names]
        if unknown:
            raise ConfigError(f"masking.modality_weights: {unknown} not in data.modalities {list(names)}")
        crop = self.crop
        if crop % cfg.patch_size:
            raise ConfigError(f"data.crop: {crop} is not a multiple of the patch size {cfg.patch_size}")
        for name, comp in self.data.components.items():
            if comp.crop is not None and comp.crop % cfg.patch_size:
                raise ConfigError(f"data.components.{name}.crop: {comp.crop} is not a multiple of the patch size {cfg.patch_size}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError("precision: fp16 needs CUDA (use fp32 or bf16 on CPU)")

    @property
    def modality_sets(self) -> list[tuple[str, ...]]:
        """The modality sets the run's samples carry (one for every kind but ``mixture``)."""
        if self.data.kind == "mixture":
            sets: list[tuple[str, ...]] = []
            for c in self.data.components.values():
                if c.modality_names not in sets:
                    sets.append(c.modality_names)
            return sets
        return [self.data.modality_names]

    @property
    def crop(self) -> int:
        """Side of the training images."""
        if self.data.crop is not None:
            return self.data.crop
        return int(self.model_config().img_size)

    @property
    def ema_schedule(self) -> EmaConfig | None:
        """The EMA schedule in force (None for pixel targets)."""
        if self.model_config().target == "pixels":
            return None
        return self.ema or EmaConfig()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------- profiles

PROFILES: dict[str, dict[str, Any]] = {
    # The authors' launch script (method.md §2 "Optimisation"): ViT-B/16, 320 px, ratio
    # 0.75, 500 epochs with 40 warm-up, batch 32 per GPU on 16 GPUs (lr = 1.5e-4 · 512 / 256),
    # AdamW (0.9, 0.95), wd 0.05, min lr 1e-5, mixed precision, no clipping.
    "paper": {
        "model": {"preset": "base", "img_size": 320},
        "data": {"crop": 320},
        "masking": {"ratio": 0.75},
        "optim": {"base_lr": 1.5e-4, "min_lr": 1e-5, "betas": [0.9, 0.95], "weight_decay": 0.05, "warmup_epochs": 40.0, "grad_clip": None},
        "epochs": 500,
        "batch_size": 32,
        "precision": "auto",
        "checkpoint_every": 1000,
        "log_every": 20,
    },
    # Minutes on 2 CPU cores: tiny preset at 64 px, short warm-up, frequent checkpoints.
    "smoke": {
        "model": {"preset": "tiny", "img_size": 64},
        "data": {"crop": 64},
        "optim": {"lr": 5.0e-4, "warmup_epochs": 1.0},
        "epochs": 4,
        "batch_size": 16,
        "checkpoint_every": 20,
        "log_every": 1,
        "out_dir": "scratch/pretrain_smoke",
    },
}

VARIANTS: dict[str, dict[str, Any]] = {
    "mssdf": {},
    # MAE with pixel targets (method.md §4 baselines) on the same data: random masks shared
    # by a sample's modalities, per-modality pixel heads, no cross-modal terms (on
    # single-modality samples it is plain MAE; set data.modalities: [rgb] for RGB only)
    "mae": {
        "model": {"target": "pixels"},
        "masking": {"mode": "random", "cross_modal": False},
        "losses": {"reconstruction": 1.0, "contrast": 0.0, "hsic": 0.0, "modality": 0.0},
    },
    "random_masking": {"masking": {"mode": "random"}},
    "no_cross_modal": {"masking": {"cross_modal": False}},
    "no_contrast": {"losses": {"contrast": 0.0}},
    "no_hsic": {"losses": {"hsic": 0.0}},
    "no_modality": {"losses": {"modality": 0.0}},
}


def build_config(data: Mapping[str, Any] | None = None, path: str = "") -> PretrainConfig:
    """A validated :class:`PretrainConfig` from a mapping with optional ``profile``/``variant`` keys.

    Resolution order: defaults ← ``PROFILES[profile]`` ← ``VARIANTS[variant]`` ← the
    remaining keys.
    """
    data = dict(data or {})
    prefix = f"{path}." if path else ""
    profile, variant = data.pop("profile", None), data.pop("variant", "mssdf")
    merged: dict[str, Any] = {}
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"{prefix}profile: unknown profile {profile!r}; choose from {sorted(PROFILES)}")
        merged = deep_merge(merged, PROFILES[profile])
    if variant not in VARIANTS:
        raise ConfigError(f"{prefix}variant: unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    merged = deep_merge(merged, VARIANTS[variant])
    merged = deep_merge(merged, data)
    return from_dict(PretrainConfig, merged, path)


def load_config(path: str | Path | None = None, section: str | None = None, sets: list[str] | None = None) -> PretrainConfig:
    """Read a YAML file (optionally one ``section`` of it, e.g. ``pretrain`` of ``params.yaml``),
    apply ``key=value`` overrides and validate."""
    data = load_mapping(path, section, sets)
    return build_config(data, section or "")


__all__ = [
    "ComponentConfig", "DataConfig", "OptimConfig", "EmaConfig", "PretrainConfig", "PROFILES", "VARIANTS",
    "build_config", "load_config", "parse_sets", "deep_merge",
]
