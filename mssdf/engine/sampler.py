"""The deterministic global-batch samplers every training loop uses, and their loader.

The order of an epoch is ``randperm(n)`` from a generator seeded with ``(seed, epoch)``;
global batch ``k`` is positions ``[k·G, (k+1)·G)`` of it (``G = batch_size ·
world_size``, incomplete last batch dropped) and rank ``r`` takes the contiguous slice
``[r·b, (r+1)·b)`` — so the global batch, and each sample's position in it, do not
depend on the number of processes (``DistributedSampler`` strides ranks instead). It
yields ``(epoch, index)`` keys so datasets can seed per-sample randomness by them, and
resuming starts at a saved ``(epoch, batch)`` without loading the skipped batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mssdf.data.io import DataError

Key = tuple[int, ...]  # (epoch, index) or (epoch, index, draw): draw-th repeat of index in the epoch


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))


class GlobalBatchSampler(Sampler[list[Key]]):
    """This rank's slice of deterministic global batches (see the module docstring).

    Args:
        num_samples: dataset length ``n``.
        batch_size: per-process batch ``b``.
        rank, world_size: this process and the number of processes.
        seed: seed of the per-epoch permutation.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.n, self.b, self.rank, self.world, self.seed = num_samples, batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise DataError(f"the dataset has {num_samples} samples, fewer than one global batch ({self.global_batch})")
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` (earlier batches are skipped unread)."""
        self.epoch, self.start = epoch, start_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        """``(n,)`` sample order of ``epoch`` (a function of ``(seed, epoch)`` only)."""
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0]))
        return torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[list[Key]]:
        perm = self.permutation(self.epoch)
        for k in range(self.start, self.batches_per_epoch):
            lo = k * self.global_batch + self.rank * self.b
            yield [(self.epoch, int(i)) for i in perm[lo : lo + self.b]]



class GroupedBatchSampler(Sampler[list[Key]]):
    """Global batches that each hold samples of one *group* only (e.g. one modality set).

    The samples are *pools* (index ranges, e.g. one per data source), each belonging to
    a group. Epoch ``e``:

    1. pool ``p`` contributes ``draws[p]`` samples: its indices in an order seeded by
       ``(seed, e, p)``, cycled through fresh orders when ``draws[p]`` exceeds the pool
       (the ``r``-th repeat of an index is yielded as ``(e, index, r)``, so a dataset can
       draw a different random crop for it);
    2. each group's samples are shuffled (seeded by ``(seed, e, group)``) and cut into
       global batches of ``G = batch_size · world_size``; an incomplete last batch is dropped;
    3. the batches of all groups are interleaved in an order seeded by ``(seed, e)``.

    As with :class:`GlobalBatchSampler`, rank ``r`` takes positions ``[r·b, (r+1)·b)`` of
    each global batch, so batches do not depend on the number of processes, and
    :meth:`set_position` skips consumed batches unread. The number of batches per epoch is
    the same every epoch: ``Σ_g ⌊(Σ_{p∈g} draws[p]) / G⌋``.

    Args:
        pools: dataset indices of each pool.
        draws: samples each pool contributes per epoch (>= 1).
        group_of: the group of each pool (0-based, consecutive).
        batch_size, rank, world_size, seed: as for :class:`GlobalBatchSampler`.
        names: display names of the groups (error messages).
    """

    def __init__(self, pools: Sequence[Sequence[int]], draws: Sequence[int], group_of: Sequence[int], batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, names: Sequence[str] | None = None) -> None:
        if not (len(pools) == len(draws) == len(group_of)) or not pools:
            raise ValueError("pools, draws and group_of must have one entry per pool (at least one)")
        if any(len(p) == 0 for p in pools) or any(d < 1 for d in draws):
            raise ValueError("every pool needs samples and draws >= 1")
        self.pools = [torch.as_tensor(list(p), dtype=torch.long) for p in pools]
        self.draws, self.group_of = [int(d) for d in draws], [int(g) for g in group_of]
        self.num_groups = max(self.group_of) + 1
        self.names = list(names) if names is not None else [f"group {g}" for g in range(self.num_groups)]
        self.b, self.rank, self.world, self.seed = batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        per_group = [sum(d for d, g in zip(self.draws, self.group_of) if g == k) for k in range(self.num_groups)]
        self.batches_per_group = [n // self.global_batch for n in per_group]
        short = [f"{self.names[k]} ({n} samples)" for k, n in enumerate(per_group) if n < self.global_batch]
        if short:
            raise DataError(f"fewer samples per epoch than one global batch ({self.global_batch}) in {', '.join(short)}: "
                            "raise the weights of their sources or lower batch_size")
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return sum(self.batches_per_group)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` (earlier batches are skipped unread)."""
        self.epoch, self.start = epoch, start_batch

    def global_batches(self, epoch: int) -> list[tuple[int, list[Key]]]:
        """Every ``(group, global batch keys)`` of ``epoch``, in order (a function of ``(seed, epoch)``)."""
        members: list[list[Key]] = [[] for _ in range(self.num_groups)]
        for p, (pool, draws) in enumerate(zip(self.pools, self.draws)):
            g, keys, rep = _generator(self.seed, epoch, 1, p), [], 0
            while len(keys) < draws:
                order = pool[torch.randperm(len(pool), generator=g)].tolist()
                keys += [(epoch, i) if rep == 0 else (epoch, i, rep) for i in order]
                rep += 1
            members[self.group_of[p]] += keys[:draws]
        batches: list[list[tuple[int, list[Key]]]] = []
        for k, keys in enumerate(members):
            perm = torch.randperm(len(keys), generator=_generator(self.seed, epoch, 2, k)).tolist()
            shuffled = [keys[i] for i in perm]
            G = self.global_batch
            batches.append([(k, shuffled[j * G : (j + 1) * G]) for j in range(self.batches_per_group[k])])
        slots = torch.cat([torch.full((n,), k) for k, n in enumerate(self.batches_per_group)])
        slots = slots[torch.randperm(len(slots), generator=_generator(self.seed, epoch, 3))].tolist()
        taken = [0] * self.num_groups
        out = []
        for k in slots:
            out.append(batches[k][taken[k]])
            taken[k] += 1
        return out

    def __iter__(self) -> Iterator[list[Key]]:
        lo = self.rank * self.b
        for _, keys in self.global_batches(self.epoch)[self.start :]:
            yield keys[lo : lo + self.b]


def make_loader(dataset: Dataset, sampler: GlobalBatchSampler | GroupedBatchSampler, collate_fn: Callable[[list], Any] | None = None,
                num_workers: int = 0, pin_memory: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` over ``sampler``'s batches that never draws from the global RNG.

    A plain ``DataLoader`` draws its workers' base seed from the global torch generator
    each time it is iterated (every epoch, and once more on resume), which shifts
    dropout/drop-path streams so a resumed run would differ from an uninterrupted one. Its
    own generator, seeded by ``(seed, sampler.rank)``, keeps the global streams for the model.
    """
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, sampler.rank]).generate_state(1)[0]))
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator)


__all__ = ["GlobalBatchSampler", "GroupedBatchSampler", "Key", "make_loader"]
