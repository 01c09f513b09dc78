"""Windows, nodata fractions, spatial-block splits (no pixel in two splits), train-only stats."""

from __future__ import annotations

import numpy as np
import pytest

from mssdf.data.stats import band_stats
from mssdf.data.tiling import assign_blocks, block_split, split_overlaps, window_fraction, windows


def test_windows_cover_and_edge_window():
    w = windows(100, 70, 32, 32)
    assert w[:, 0].max() == 100 - 32 and w[:, 1].max() == 70 - 32  # flush with the border
    # smaller than a tile along rows: one window at row 0, padded by the reader (the one rule,
    # tiling.starts, shared with readers/windows.py; it used to give no window here)
    small = windows(20, 100, 32, 16)
    assert set(small[:, 0].tolist()) == {0} and small[:, 1].tolist() == [0, 16, 32, 48, 64, 68]


def test_window_fraction_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 60)) < 0.3
    w = windows(50, 60, 16, 7)
    brute = np.array([mask[r : r + 16, c : c + 16].mean() for r, c in w])
    np.testing.assert_allclose(window_fraction(mask, w, 16), brute)


@pytest.mark.parametrize("size,stride,block,seed", [(16, 8, 16, 0), (16, 4, 24, 1), (32, 32, 64, 2), (32, 8, 48, 3)])
def test_block_split_has_no_pixel_in_two_splits(size, stride, block, seed):
    shapes = [(120, 90), (64, 200)]
    wins = [windows(*s, size, stride) for s in shapes]
    splits = block_split(wins, size, block, (0.6, 0.2, 0.2), seed)
    for w, s, shape in zip(wins, splits, shapes):
        assert split_overlaps(w, s, size, shape) == 0
    flat = np.concatenate(splits)
    assert set(np.unique(flat[flat >= 0])) == {0, 1, 2}  # every split used on inputs this size


def test_split_overlaps_detects_leaks():
    w = np.array([[0, 0], [8, 8]])
    assert split_overlaps(w, np.array([0, 1]), 16, (32, 32)) == 64


def test_assign_blocks_follows_fractions_by_weight():
    ids = assign_blocks(np.ones(100), (0.6, 0.2, 0.2), np.random.default_rng(0))
    assert np.bincount(ids).tolist() == [60, 20, 20]
    with pytest.raises(ValueError):
        assign_blocks(np.ones(3), (1.0, -1.0, 0.0), np.random.default_rng(0))


def test_block_smaller_than_tile_rejected():
    with pytest.raises(ValueError, match="block size"):
        block_split([windows(64, 64, 32, 32)], 32, 16, (0.6, 0.2, 0.2), 0)


def test_band_stats_nan_aware_and_exact():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = a.copy()
    b[0, 0, 0] = np.nan
    st = band_stats([a, b])
    both = np.concatenate([a.reshape(2, -1), b.reshape(2, -1)], 1)
    np.testing.assert_allclose(st["mean"], np.nanmean(both, 1))
    np.testing.assert_allclose(st["std"], np.nanstd(both, 1), rtol=1e-6)


def test_one_window_rule_for_prepare_and_readers():
    from mssdf.config import ConfigError
    from mssdf.data.readers.windows import crop_windows, grid_windows
    from mssdf.data.readers.windows import starts as reader_starts
    from mssdf.data.tiling import crop_padded, starts

    for length, size, stride in [(100, 32, 32), (100, 32, 10), (32, 32, 8), (20, 32, 16), (1, 8, 8), (33, 32, 32)]:
        assert reader_starts(length, size, stride) == starts(length, size, stride).tolist()
    for h, w in [(100, 70), (20, 100), (10, 10)]:
        prep = windows(h, w, 32, 16)
        grid = grid_windows(h, w, 32, 16)
        assert [(r, c) for r, c, _, _ in grid] == [tuple(x) for x in prep.tolist()]
        assert all((hh, ww) == (min(32, h), min(32, w)) for _, _, hh, ww in grid)
    assert [(r, c) for r, c, _, _ in crop_windows(30, 30, 64, 8)] == [(0, 0)]
    with pytest.raises(ConfigError):
        grid_windows(10, 10, 0)
    with pytest.raises(ValueError):
        windows(10, 10, 8, 0)
    # a window past the border is padded (prepare: NaN / ignore label) and counts as no data
    arr = np.arange(20 * 10, dtype=np.float32).reshape(1, 20, 10)
    tile = crop_padded(arr, 0, 0, 32, np.nan)
    assert tile.shape == (1, 32, 32) and np.isnan(tile[:, 20:]).all() and np.isnan(tile[:, :, 10:]).all()
    np.testing.assert_array_equal(tile[:, :20, :10], arr)
    frac = window_fraction(np.ones((20, 10), bool), windows(20, 10, 32, 32), 32)
    np.testing.assert_allclose(frac, [200 / 1024])


def test_window_fraction_past_border_matches_padding():
    rng = np.random.default_rng(2)
    mask = rng.random((20, 45)) < 0.5
    w = windows(20, 45, 32, 8)
    padded = np.zeros((32, 45 + 32), bool)
    padded[:20, :45] = mask
    brute = np.array([padded[r : r + 32, c : c + 32].mean() for r, c in w])
    np.testing.assert_allclose(window_fraction(mask, w, 32), brute)
