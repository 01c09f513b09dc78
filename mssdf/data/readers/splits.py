"""Seeded, reproducible splits: fractions of a list, stratified ratios, grouped holdouts.

All functions are pure: the same inputs and seed give the same indices on every machine
(``numpy.random.default_rng``), and returned index lists are sorted.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from mssdf.data.readers.base import check_fraction


def fraction_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of a seeded random ``fraction`` of ``range(n)`` (at least one if n > 0).

    ``fraction == 1`` returns everything (no shuffling involved).
    """
    fraction = check_fraction(fraction, "fraction")
    if fraction == 1.0 or n == 0:
        return list(range(n))
    k = max(1, int(round(fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[:k].tolist())


def stratified_split(labels: Sequence[int], train_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Per-class seeded split: ``round(train_ratio * n_c)`` of each class go to train.

    Classes are processed in sorted order with one generator, so the split depends only
    on ``labels``, ``train_ratio`` and ``seed``. Each class with at least two items keeps
    at least one item on each side. Returns sorted ``(train, test)`` index lists (disjoint,
    covering everything).
    """
    train_ratio = check_fraction(train_ratio, "train_ratio", allow_one=False)
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    for cls in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == cls)
        k = int(round(train_ratio * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        train.extend(rng.permutation(idx)[:k].tolist())
    train_set = set(train)
    test = [i for i in range(len(labels_arr)) if i not in train_set]
    return sorted(train), test


def holdout_split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random ``(train, test)`` split of ``range(n)``; ``round(test_fraction * n)`` go to test."""
    test_fraction = check_fraction(test_fraction, "test_fraction", allow_one=False)
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(test_fraction * n))
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


def group_split(
    groups: Sequence[Hashable], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Split items by group (e.g. geographic tile) so that no group spans two parts.

    Args:
        groups: one group key per item.
        fractions: part name -> fraction of the *groups* (must sum to 1; the last part
            takes the rounding remainder).
        seed: shuffling seed (groups are sorted first, so the input order does not matter).

    Returns:
        part name -> sorted item indices.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions {fractions} must be non-negative and sum to 1")
    keys = sorted(set(groups), key=repr)
    perm = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[i] for i in perm]
    parts: dict[str, list[int]] = {}
    start = 0
    names = list(fractions)
    assigned: dict[Hashable, str] = {}
    for j, name in enumerate(names):
        stop = len(shuffled) if j == len(names) - 1 else start + int(round(fractions[name] * len(shuffled)))
        for key in shuffled[start:stop]:
            assigned[key] = name
        parts[name] = []
        start = stop
    for i, g in enumerate(groups):
        parts[assigned[g]].append(i)
    return parts


__all__ = ["fraction_subset", "stratified_split", "holdout_split", "group_split"]
