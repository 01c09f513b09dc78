"""Pre-training on several sources at once: the mixture dataset and its batch groups.

A ``mixture`` run (``data.kind: mixture``) reads the *train* tiles of several prepared
tasks — Autzen and IGN (RGB + DSM, IGN also MS), Rotterdam (pan + MS), the Atlanta and
Las Vegas imagery (pan alone), NEON (RGB alone) — each sample with its own modality set.

Why batches are **grouped** by modality set (and crop side) rather than padded: the model
takes any subset of its modalities (:class:`mssdf.model.MSSDF`), so a batch of one
modality set costs exactly its own tokens; padding a pan-only sample with empty RGB, MS
and DSM images would spend the encoder, the fusion decoder and one reconstruction pass
on tokens that carry nothing, need a per-sample presence mask in every loss term, and
force one crop side on every source (IGN's tiles are 32 px, the others 64 px). A global
batch therefore holds one group; the groups alternate in a seeded order
(:class:`mssdf.engine.sampler.GroupedBatchSampler`), so every rank of a step sees the
same modality set and DDP reduces the same parameters.

Inputs are standardised with **each source's own** train statistics
(``SampleTiles(normalize=True)``): the same modality differs between sources by up to
two orders of magnitude (MS: IGN ≈ 32,000 ± 8,000 digital numbers, Rotterdam ≈ 140–330
± 170–320; pan: Rotterdam 199 ± 198, Atlanta 452 ± 257, Las Vegas 565 ± 210), so
statistics over the union of pixels would leave one source far outside the others'
range. The model's own normalisation is then the identity; downstream tasks standardise
their inputs the same way (their source's train statistics).

Shapes: a sample is ``{modality: (C_m, S, S)}`` float32, standardised; ``S`` is the
component's crop side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mssdf.data.io import DataError
from mssdf.data.sample import SampleTiles
from mssdf.engine.sampler import GroupedBatchSampler
from mssdf.pretrain.config import PretrainConfig


@dataclass(frozen=True)
class Group:
    """Samples that may share a batch: one modality set at one crop side."""

    modalities: tuple[str, ...]
    crop: int

    @property
    def name(self) -> str:
        """E.g. ``rgb+dsm@64``."""
        return f"{'+'.join(self.modalities)}@{self.crop}"


def config_groups(cfg: PretrainConfig) -> list[Group]:
    """The batch groups of a mixture run, in order of first appearance over its components
    (without reading any data; the ``group`` index of the run's history records)."""
    groups: list[Group] = []
    for comp in cfg.data.components.values():
        g = Group(comp.modality_names, comp.crop or cfg.crop)
        if g not in groups:
            groups.append(g)
    return groups


class MixtureDataset(Dataset):
    """The train tiles of every component, one index space (components in config order).

    ``get(index, epoch, draw)``: the sample's random crop is a function of
    ``(seed, epoch, index within its component, draw)`` only (see
    :meth:`mssdf.data.sample.SampleTiles.crop_rng`).
    """

    def __init__(self, cfg: PretrainConfig, root: Path) -> None:
        self.names: list[str] = []
        self.parts: list[SampleTiles] = []
        self.group_of: list[int] = []  # per component
        self.offsets: list[int] = [0]
        self.groups = config_groups(cfg)
        for name, comp in cfg.data.components.items():
            crop = comp.crop or cfg.crop
            tiles = SampleTiles(root, comp.task, "train", modalities=comp.modality_names, crop=crop, random_crop=True,
                                backend=cfg.data.backend, dsm_source=cfg.data.dsm_source, fill_nodata=True, normalize=True,
                                seed=cfg.seed)
            if len(tiles) == 0:
                raise DataError(f"data.components.{name}: {root / 'index.csv'} has no train tiles of task {comp.task!r}")
            group = Group(comp.modality_names, crop)
            self.names.append(name)
            self.parts.append(tiles)
            self.group_of.append(self.groups.index(group))
            self.offsets.append(self.offsets[-1] + len(tiles))
        self.weights = [cfg.data.components[n].weight for n in self.names]

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``index`` → ``(component, index within the component)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = next(k for k in range(len(self.parts)) if index < self.offsets[k + 1])
        return part, index - self.offsets[part]

    def get(self, index: int, epoch: int = 0, draw: int = 0) -> dict[str, torch.Tensor]:
        """``{modality: (C_m, S, S)}`` standardised values of sample ``index``."""
        part, local = self.locate(index)
        sample = self.parts[part].get(local, epoch, draw)
        return {m: sample[m] for m in self.parts[part].modalities}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.get(index)

    def pools(self) -> list[range]:
        """Dataset indices of each component."""
        return [range(self.offsets[k], self.offsets[k + 1]) for k in range(len(self.parts))]

    def draws_per_epoch(self) -> list[int]:
        """Samples each component contributes to an epoch: ``round(weight × tiles)``, at least 1."""
        return [max(1, round(w * len(p))) for w, p in zip(self.weights, self.parts)]

    def summary(self) -> list[dict[str, Any]]:
        """One row per component: source, task, modalities, crop, tiles, weight, draws per epoch, group."""
        draws = self.draws_per_epoch()
        return [{"component": n, "source": p.spec.source, "task": p.task, "modalities": "+".join(p.modalities),
                 "crop": p.crop, "tiles": len(p), "weight": w, "draws_per_epoch": d, "group": self.groups[g].name}
                for n, p, w, d, g in zip(self.names, self.parts, self.weights, draws, self.group_of)]


def mixture_sampler(dataset: MixtureDataset, batch_size: int, rank: int, world_size: int, seed: int) -> GroupedBatchSampler:
    """The grouped global-batch sampler of ``dataset`` (its components' pools, draws and groups)."""
    return GroupedBatchSampler(dataset.pools(), dataset.draws_per_epoch(), dataset.group_of, batch_size, rank, world_size,
                               seed, names=[g.name for g in dataset.groups])


__all__ = ["Group", "config_groups", "MixtureDataset", "mixture_sampler"]
