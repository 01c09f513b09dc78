"""The deterministic global-batch sampler every training loop uses, and its loader.

The order of an epoch is ``randperm(n)`` from a generator seeded with ``(seed, epoch)``;
global batch ``k`` is positions ``[k·G, (k+1)·G)`` of it (``G = batch_size ·
world_size``, incomplete last batch dropped) and rank ``r`` takes the contiguous slice
``[r·b, (r+1)·b)`` — so the global batch, and each sample's position in it, do not
depend on the number of processes (``DistributedSampler`` strides ranks instead). It
yields ``(epoch, index)`` keys so datasets can seed per-sample randomness by them, and
resuming starts at a saved ``(epoch, batch)`` without loading the skipped batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mssdf.data.io import DataError

Key = tuple[int, int]  # (epoch, index)


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



def make_loader(dataset: Dataset, sampler: GlobalBatchSampler, collate_fn: Callable[[list], Any] | None = None,
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


__all__ = ["GlobalBatchSampler", "Key", "make_loader"]
