"""Pre-training data: datasets keyed by ``(epoch, index)``, the data check, collation.

Batches come from :class:`mssdf.engine.sampler.GlobalBatchSampler` (its docstring holds
the determinism contract: data order a function of ``(seed, epoch)`` only, the same global
batches on any number of processes, consumed batches skipped on resume). Datasets here
take the ``(epoch, index)`` keys it yields, so random crops of the prepared tiles are
seeded by ``(seed, epoch, index)`` (``SampleTiles.get(index, epoch)``), not by how many
samples a worker has read.

Batches are ``{modality: (B, C_m, H, W)}`` float32 raw values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mssdf.data.index import cache_stem
from mssdf.data.io import DataError
from mssdf.engine.sampler import Key
from mssdf.model import NormStats
from mssdf.paths import resolve
from mssdf.modalities import channels as default_channels
from mssdf.modalities import TYPICAL_MAX, file_key
from mssdf.pretrain.config import PretrainConfig

class KeyedDataset(Dataset):
    """Adapter: ``(epoch, index)`` keys → ``{modality: (C, H, W)}`` float32 tensors.

    ``base[index]`` must be a mapping holding the modality keys (other keys are dropped).
    A base with a ``get(index, epoch[, draw])`` method (:class:`~mssdf.data.sample.SampleTiles`,
    :class:`~mssdf.pretrain.mixture.MixtureDataset`: random crops seeded by ``(seed, epoch,
    index[, draw])``) is asked through it instead. ``modalities`` empty: every modality the
    sample holds (a mixture's samples differ).
    """

    def __init__(self, base: Dataset, modalities: Sequence[str]) -> None:
        self.base, self.modalities = base, tuple(modalities)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        epoch, index, *draw = key
        get = getattr(self.base, "get", None)
        sample = get(index, epoch, *draw) if callable(get) else self.base[index]
        try:
            return {m: torch.as_tensor(sample[m], dtype=torch.float32) for m in (self.modalities or sample)}
        except KeyError as err:
            raise DataError(f"sample {index} has no modality {err} (keys: {sorted(sample)})") from None


class SyntheticPairs(Dataset):
    """Deterministic smooth random multi-modal images (tests and smoke runs).

    Sample ``i`` is a function of ``(seed, i)``: a low-resolution random field
    upsampled bilinearly (so neighbouring patches correlate), shared by all modalities
    up to a per-band affine map and noise, in plausible raw ranges
    (:data:`mssdf.modalities.TYPICAL_MAX`).

    Returns ``{modality: (C, size, size)}`` float32.
    """

    def __init__(self, num_samples: int, size: int, channels: Mapping[str, int], seed: int = 0) -> None:
        self.n, self.size, self.channels, self.seed = num_samples, size, dict(channels), seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        low = max(2, self.size // 8)
        field = torch.rand(1, 1, low, low, generator=g)
        field = F.interpolate(field, size=(self.size, self.size), mode="bilinear", align_corners=False)[0]  # (1, S, S)
        out = {}
        for m, c in self.channels.items():
            gain = 0.5 + torch.rand(c, 1, 1, generator=g)
            noise = 0.05 * torch.rand(c, self.size, self.size, generator=g)
            out[m] = ((field * gain + noise).clamp(0, 1) * TYPICAL_MAX[m]).float()
        return out


def check_data(cfg: PretrainConfig, root: str | Path | None = None) -> Path | None:
    """Check the prepared data a ``tiles`` run needs (index, statistics, cache) before training.

    Returns:
        the resolved data folder (None for synthetic data).
    Raises:
        DataError: naming the missing path, or the tiles of a validation or test area of a
            downstream task the run's tiles overlap on the ground
            (:func:`mssdf.data.footprints.leaks`).
    """
    if cfg.data.kind == "synthetic":
        return None
    if cfg.data.kind == "reader":  # the reader checks its own layout when it is built
        folder = resolve(cfg.data.root, root)
        if not folder.is_dir():
            raise DataError(f"data.root: {folder}: no such folder (the {cfg.data.reader!r} dataset)")
        return folder
    folder = resolve(cfg.data.root, root)
    if not folder.is_dir():
        raise DataError(f"data.root: {folder}: no such folder (run the preparation first)")
    for name in ("index.csv", "stats.json"):
        if not (folder / name).is_file():
            raise DataError(f"data.root: {folder / name}: missing (run the preparation first)")
    from mssdf.data.index import read_index

    index = read_index(folder)
    if cfg.data.kind == "mixture":
        for name, comp in cfg.data.components.items():
            _check_task(cfg, folder, index, f"data.components.{name}", comp.task, "train", comp.modality_names, comp.crop or cfg.crop)
    else:
        _check_task(cfg, folder, index, "data", cfg.data.task, cfg.data.split, cfg.data.modality_names, cfg.crop)
    return folder


def _check_task(cfg: PretrainConfig, folder: Path, index: list[dict], key: str, task: str, split: str,
                modalities: Sequence[str], crop: int) -> None:
    """Check the ``split`` tiles of ``task`` a run reads (``key``: where the config names them)."""
    from mssdf.data.footprints import describe, leaks
    from mssdf.data.tasks import TASKS

    source = TASKS[task].source
    rows = [r for r in index if r["task"] == task and r["split"] == split]
    if not rows:
        raise DataError(f"{key}.task: {folder / 'index.csv'} has no {split} tiles of task {task!r}")
    found = leaks(folder, rows, index)  # on the ground, not by split names
    if found:
        where = f"{key}.split" if key == "data" else key  # a mixture's components read train tiles: name the component
        raise DataError(f"{where}: pre-training on the {split} tiles of {task!r} would read validation/test "
                        f"areas of downstream tasks ({len(found)} overlapping tile pairs): {describe(found)}")
    if cfg.data.backend == "npy":
        cache = folder / "cache" / source / split
        if not (cache / "tiles.json").is_file():
            raise DataError(f"data.backend: {cache / 'tiles.json'}: missing tile cache (prepare with build_cache) or use backend 'tif'")
        for m in modalities:
            fkey = file_key(m, cfg.data.dsm_source)
            stem = cache_stem(rows[0], fkey)
            if not (cache / f"{stem}.npy").is_file():
                raise DataError(f"{key}.modalities: {cache / (stem + '.npy')}: missing cache file for {m!r}")
    if crop > rows[0]["size"]:
        raise DataError(f"{key}.crop: {crop} is larger than the {rows[0]['size']} px tiles of {task!r}")


def build_dataset(cfg: PretrainConfig, root: str | Path | None = None) -> tuple[Dataset, dict[str, int], dict[str, NormStats]]:
    """The run's dataset with the channel counts and normalisation statistics of its modalities."""
    names = cfg.data.modality_names
    if cfg.data.kind == "mixture":
        from mssdf.modalities import channels as channels_of
        from mssdf.pretrain.mixture import MixtureDataset

        return MixtureDataset(cfg, check_data(cfg, root)), channels_of(names), {}  # standardised per source: identity in the model
    if cfg.data.kind == "synthetic":
        channels = default_channels(names)
        return SyntheticPairs(cfg.data.synthetic_samples, cfg.crop, channels, cfg.seed), channels, {}
    if cfg.data.kind == "reader":
        return _reader_dataset(cfg, root)
    from mssdf.data.sample import SampleTiles, load_stats

    folder = check_data(cfg, root)
    tiles = SampleTiles(
        folder, cfg.data.task, cfg.data.split, modalities=names, crop=cfg.crop, random_crop=True,
        backend=cfg.data.backend, dsm_source=cfg.data.dsm_source, fill_nodata=True, seed=cfg.seed,
    )
    stats = load_stats(folder, cfg.data.task)
    channels, norm = {}, {}
    for m in names:
        key = file_key(m, cfg.data.dsm_source)
        if key not in stats:
            raise DataError(f"{folder / 'stats.json'}: no statistics for {key!r} of task {cfg.data.task!r}")
        mean, std = stats[key]["mean"], stats[key]["std"]
        channels[m] = len(mean)
        norm[m] = NormStats(tuple(float(v) for v in mean), tuple(max(float(s), 1e-6) if math.isfinite(s) else 1.0 for s in std))
    return tiles, channels, norm


def _reader_dataset(cfg: PretrainConfig, root: str | Path | None) -> tuple[Dataset, dict[str, int], dict[str, NormStats]]:
    """A paper-dataset reader, its channel counts, and band statistics estimated from it."""
    from mssdf.data.readers import get_dataset

    folder = check_data(cfg, root)
    dataset = get_dataset(cfg.data.reader, folder, cfg.data.split, **cfg.data.reader_args)
    if len(dataset) == 0:
        raise DataError(f"data.root: {folder}: the {cfg.data.reader!r} reader found no {cfg.data.split} samples")
    names = cfg.data.modality_names
    picks = torch.linspace(0, len(dataset) - 1, min(cfg.data.stats_samples, len(dataset))).round().long().unique()
    keyed = KeyedDataset(dataset, names)
    samples = [keyed[(0, int(i))] for i in picks]
    channels = {m: int(samples[0][m].shape[0]) for m in names}
    norm = {}
    for m in names:
        values = torch.stack([s[m] for s in samples]).transpose(0, 1).reshape(channels[m], -1)  # (C, n·H·W)
        finite = torch.isfinite(values)
        count = finite.sum(1).clamp_min(1)
        mean = torch.where(finite, values, 0).sum(1) / count
        var = torch.where(finite, (values - mean[:, None]) ** 2, 0).sum(1) / count
        norm[m] = NormStats(tuple(mean.tolist()), tuple(max(float(v) ** 0.5, 1e-6) for v in var))
    return dataset, channels, norm


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``{m: (C, H, W)}`` samples into ``{m: (B, C, H, W)}``."""
    return {m: torch.stack([s[m] for s in samples]) for m in samples[0]}


__all__ = ["KeyedDataset", "SyntheticPairs", "check_data", "build_dataset", "collate"]
