"""Tiling: sliding windows, nodata rejection, and spatial-block train/val/test splits.

Split rule: each scene is cut into square blocks of ``block`` pixels; the blocks that
any kept window touches are shuffled (seeded) and assigned to splits by the requested
fractions; a window is kept only if every block it touches has the same split. Hence no
pixel belongs to windows of two splits (windows of one split may overlap each other).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def starts(length: int, size: int, stride: int) -> np.ndarray:
    """Window start offsets along one axis of ``length`` pixels: THE sliding-window rule.

    Windows start every ``stride`` pixels; when the last one does not reach the end, one
    more window flush with the end is added (it overlaps its neighbour), so every pixel is
    covered and every window lies inside the image. An axis shorter than ``size`` gets one
    window at 0 that extends past the end: the caller PADS it to ``size`` (prepare pads
    with no data, the readers with 0 / the ignore label). Used by :func:`windows` (prepare)
    and :mod:`mssdf.data.readers.windows` (every reader).

    Raises:
        ValueError: ``size`` or ``stride`` not positive (the readers re-raise ConfigError).
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"window size {size} and stride {stride} must be positive")
    if length <= size:
        return np.zeros(1, np.int64)
    s = np.arange(0, length - size + 1, stride, dtype=np.int64)
    return s if s[-1] == length - size else np.r_[s, length - size]


def windows(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """(K, 2) int64 top-left ``(row, col)`` of ``size`` windows every ``stride`` pixels (rule: :func:`starts`).

    A window of an image smaller than ``size`` extends past its border: read it with
    :func:`crop_padded`.
    """
    rr, cc = np.meshgrid(starts(height, size, stride), starts(width, size, stride), indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], 1)


def crop_padded(arr: np.ndarray, row: int, col: int, size: int, fill) -> np.ndarray:
    """The ``size`` x ``size`` window at ``(row, col)`` of the last two axes of ``arr``,
    padded at the bottom/right with ``fill`` where it extends past the array."""
    out = arr[..., row : row + size, col : col + size]
    ph, pw = size - out.shape[-2], size - out.shape[-1]
    if ph or pw:
        out = np.pad(out, [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)], constant_values=fill)
    return out


def window_fraction(mask: np.ndarray, wins: np.ndarray, size: int) -> np.ndarray:
    """(K,) fraction of True pixels of ``mask`` (H, W) inside each window (summed-area table);
    pixels of a window outside the mask (padding) count as False."""
    h = max(mask.shape[0], int(wins[:, 0].max()) + size if len(wins) else 0)
    w = max(mask.shape[1], int(wins[:, 1].max()) + size if len(wins) else 0)
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1 : mask.shape[0] + 1, 1 : mask.shape[1] + 1] = np.cumsum(np.cumsum(mask, 0, dtype=np.int64), 1)
    sat[mask.shape[0] + 1 :, :] = sat[mask.shape[0] : mask.shape[0] + 1, :]
    sat[:, mask.shape[1] + 1 :] = sat[:, mask.shape[1] : mask.shape[1] + 1]
    r, c = wins[:, 0], wins[:, 1]
    total = sat[r + size, c + size] - sat[r, c + size] - sat[r + size, c] + sat[r, c]
    return total / float(size * size)


def union_mask(wins: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels of ``shape`` covered by at least one of the ``size`` windows."""
    out = np.zeros(shape, bool)
    for r, c in wins:
        out[r : r + size, c : c + size] = True
    return out


def assign_blocks(weights: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """(n_blocks,) split ids (0 train, 1 val, 2 test) for blocks of the given ``weights``.

    Blocks are visited in a seeded random order and each goes to the split furthest
    below its target share of the total weight (weight = how many windows a block
    carries), so splits get about ``fractions`` of the *tiles*, not just of the blocks.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions}")
    fr = fr / fr.sum()
    weights = np.asarray(weights, dtype=float)
    total = weights.sum()
    got = np.zeros(3)
    out = np.zeros(len(weights), np.int64)
    for b in rng.permutation(len(weights)):
        deficit = np.where(fr > 0, fr * total - got, -np.inf)
        split = int(np.argmax(deficit))
        out[b] = split
        got[split] += weights[b]
    return out


def block_split(
    wins_per_scene: Sequence[np.ndarray],
    size: int,
    block: int,
    fractions: Sequence[float],
    seed: int,
) -> list[np.ndarray]:
    """Split ids per window (0/1/2, or -1 = dropped: it straddles blocks of two splits).

    Args:
        wins_per_scene: for each scene, its (K, 2) candidate windows (already filtered).
        size: window size in pixels; block: block size in pixels (>= size, so a window
            touches at most 2 x 2 blocks).
        fractions: (train, val, test) target shares of the windows.
        seed: shuffling seed.

    Returns:
        For each scene a (K,) int64 array of split ids.
    """
    if block < size:
        raise ValueError(f"block size {block} must be at least the tile size {size}")
    corners_all, dup_all = [], []
    for s, wins in enumerate(wins_per_scene):
        r0, c0 = wins[:, 0] // block, wins[:, 1] // block
        r1, c1 = (wins[:, 0] + size - 1) // block, (wins[:, 1] + size - 1) // block
        sid = np.full_like(r0, s)
        # (K, 4, 3): the blocks at the window's four corners, as (scene, block row, block col)
        corners_all.append(np.stack([np.stack([sid, r, c], 1) for r, c in ((r0, c0), (r0, c1), (r1, c0), (r1, c1))], 1))
        same_r, same_c = r0 == r1, c0 == c1
        dup_all.append(np.stack([np.zeros_like(same_r), same_c, same_r, same_r | same_c], 1))  # repeats of earlier corners
    n_total = sum(len(c) for c in corners_all)
    if n_total == 0:
        return [np.zeros(0, np.int64) for _ in wins_per_scene]
    corners = np.concatenate(corners_all).reshape(-1, 3)
    dup = np.concatenate(dup_all).reshape(-1)
    uniq, inverse = np.unique(corners, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n_distinct = np.repeat(4 - dup.reshape(-1, 4).sum(1), 4)
    weights = np.zeros(len(uniq))
    np.add.at(weights, inverse[~dup], 1.0 / n_distinct[~dup])  # each window spreads weight 1 over its blocks
    split_of_block = assign_blocks(weights, fractions, np.random.default_rng(seed))
    ids = split_of_block[inverse].reshape(-1, 4)
    flat = np.where(np.all(ids == ids[:, :1], 1), ids[:, 0], -1).astype(np.int64)
    return list(np.split(flat, np.cumsum([len(c) for c in corners_all])[:-1]))


def split_overlaps(wins: np.ndarray, splits: np.ndarray, size: int, shape: tuple[int, int]) -> int:
    """Number of pixels covered by windows of more than one split (0 when the split is clean)."""
    seen = np.zeros((3, *shape), bool)
    for (r, c), s in zip(wins, splits):
        if s >= 0:
            seen[s, r : r + size, c : c + size] = True
    return int((seen.sum(0) > 1).sum())
