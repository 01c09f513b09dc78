"""Sliding-window inference: grid coverage, exactness for per-pixel models, memory bound."""

import math
import time

import numpy as np
import pytest
import torch

from mssdf.downstream.inference import _pad_bottom_right, overlap_pixels, sliding_window, window_grid, window_weights


def per_pixel(batch):
    """A per-pixel (hence translation-equivariant) two-modality model: 2 outputs."""
    rgb, dsm = batch["rgb"], batch["dsm"]
    return torch.cat([rgb.sum(1, keepdim=True) * 2 + 1, dsm - rgb[:, :1]], dim=1)


def int_images(b, h, w, seed=0):
    """Small integer values: sums and means of the outputs are exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randint(0, 50, (b, 3, h, w), generator=g).float(),
        "dsm": torch.randint(0, 50, (1, 1, h, w), generator=g).float(),  # batch 1, shared
    }


@pytest.mark.parametrize(
    "h,w,window,stride",
    [(100, 37, 16, 16), (100, 37, 16, 5), (16, 16, 16, 3), (7, 40, 16, 10), (3, 2, 8, 8), (33, 33, 32, 1)],
)
def test_window_grid_covers_flush_inside(h, w, window, stride):
    grid = window_grid(h, w, window, stride)
    hp, wp = max(h, window), max(w, window)
    cover = torch.zeros(hp, wp, dtype=torch.int32)
    for top, left in grid:
        assert 0 <= top and top + window <= hp and 0 <= left and left + window <= wp
        cover[top : top + window, left : left + window] += 1
    assert bool((cover > 0).all())
    tops, lefts = sorted({t for t, _ in grid}), sorted({c for _, c in grid})
    assert tops[-1] + window == hp and lefts[-1] + window == wp  # last flush
    assert tops[0] == lefts[0] == 0
    assert all(b - a <= stride for a, b in zip(tops, tops[1:]))  # regular steps, last one shorter
    assert len(grid) == len(tops) * len(lefts) == len(set(grid))
    assert len(tops) == max(1, math.ceil((hp - window) / stride) + 1)


def test_window_grid_and_overlap_validation():
    with pytest.raises(ValueError, match="stride"):
        window_grid(10, 10, 4, 5)
    assert overlap_pixels(16, 0.25) == 4 and overlap_pixels(16, 4) == 4 and overlap_pixels(16, 0.0) == 0
    for bad in (16, -1, 1.0, True):
        with pytest.raises(ValueError, match="overlap"):
            overlap_pixels(16, bad)


def test_single_window_equals_one_pass():
    images = int_images(2, 24, 24)
    expected = per_pixel({"rgb": images["rgb"], "dsm": images["dsm"].expand(2, -1, -1, -1)})
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)  # not per-pixel: still one pass when one window covers the tile
    with torch.no_grad():
        conv_ref = conv(torch.cat([images["rgb"], images["dsm"].expand(2, -1, -1, -1)], 1))
    assert torch.equal(sliding_window(per_pixel, images, window=24, overlap=0.5, num_outputs=2), expected)
    for weight in ("uniform", "gaussian"):  # gaussian: v * w / w, equal up to float rounding
        out = sliding_window(per_pixel, images, window=24, overlap=0.5, num_outputs=2, weight=weight)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
        out = sliding_window(lambda b: conv(torch.cat([b["rgb"], b["dsm"]], 1)), images, 24, 8, 3, weight=weight)
        torch.testing.assert_close(out, conv_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "h,w,window,overlap",
    [(40, 29, 16, 0), (40, 29, 16, 5), (50, 50, 16, 0.5), (9, 13, 16, 4), (1, 5, 8, 0.25), (16, 70, 16, 15)],
)
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_per_pixel_model_equals_full_image_exactly(h, w, window, overlap, pad_mode):
    images = int_images(2, h, w, seed=h * w)
    full = per_pixel({"rgb": images["rgb"], "dsm": images["dsm"].expand(2, -1, -1, -1)})
    out = sliding_window(per_pixel, images, window, overlap, num_outputs=2, batch_size=3, pad_mode=pad_mode)
    assert out.shape == (2, 2, h, w) and out.dtype == torch.float32
    assert torch.equal(out, full)


@pytest.mark.parametrize("h,w,ph,pw", [(3, 5, 13, 11), (1, 2, 7, 6), (2, 1, 30, 31)])
def test_reflect_padding_matches_numpy_and_reaches_the_model(h, w, ph, pw):
    x = torch.arange(2 * h * w, dtype=torch.float32).view(1, 2, h, w)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")  # repeated mirror, no edge repeat
    np.testing.assert_array_equal(_pad_bottom_right(x, ph, pw, "reflect").numpy(), ref)
    seen = []
    sliding_window(lambda b: seen.append(b["x"]) or b["x"][:, :1], {"x": x}, h + ph, 0, 1)
    np.testing.assert_array_equal(seen[0].numpy(), ref)
    sliding_window(lambda b: seen.append(b["x"]) or b["x"][:, :1], {"x": x}, h + ph, 0, 1, pad_mode="constant")
    assert torch.equal(seen[1][..., :h, :w], x) and seen[1].sum() == x.sum()


def test_gaussian_equals_uniform_for_per_pixel_model():
    g = torch.Generator().manual_seed(5)
    images = {"rgb": torch.randn(1, 3, 45, 38, generator=g), "dsm": torch.randn(1, 1, 45, 38, generator=g)}
    uni = sliding_window(per_pixel, images, 16, 6, 2, weight="uniform")
    gau = sliding_window(per_pixel, images, 16, 6, 2, weight="gaussian")
    torch.testing.assert_close(gau, uni, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uni, per_pixel(images), rtol=1e-5, atol=1e-5)
    w = window_weights(16, "gaussian")
    assert bool((w > 0).all()) and w.max() == 1.0 and w[0, 0] < w[8, 8]
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.T)


def test_overlaps_are_averaged():
    """A model that outputs a different constant per call: overlapping pixels get the mean."""
    calls = []

    def constant_per_window(batch):
        b = batch["x"].shape[0]
        vals = torch.arange(len(calls) * 10, len(calls) * 10 + b, dtype=torch.float32)
        calls.append(vals)
        return vals.view(b, 1, 1, 1).expand(b, 1, 8, 8)

    out = sliding_window(constant_per_window, {"x": torch.zeros(1, 1, 8, 12)}, 8, 4, 1, batch_size=1)
    a, b = float(calls[0][0]), float(calls[1][0])  # windows at left 0 and 4
    assert torch.equal(out[0, 0, :, :4], torch.full((8, 4), a))
    assert torch.equal(out[0, 0, :, 4:8], torch.full((8, 4), (a + b) / 2))
    assert torch.equal(out[0, 0, :, 8:], torch.full((8, 4), b))


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])
def test_memory_bound_and_call_count(batch_size):
    sizes = []

    def counting(batch):
        sizes.append(batch["rgb"].shape[0])
        assert batch["rgb"].shape[-2:] == (16, 16)
        return per_pixel(batch)

    images = int_images(2, 50, 37)
    out = sliding_window(counting, images, 16, 3, 2, batch_size=batch_size)
    n_windows = 2 * len(window_grid(50, 37, 16, 13))
    assert max(sizes) <= batch_size and sum(sizes) == n_windows
    assert len(sizes) == math.ceil(n_windows / batch_size)
    assert torch.equal(out, per_pixel({"rgb": images["rgb"], "dsm": images["dsm"].expand(2, -1, -1, -1)}))


def test_bad_inputs_raise():
    x = {"rgb": torch.zeros(1, 3, 20, 20)}
    with pytest.raises(ValueError, match="differ in size"):
        sliding_window(per_pixel, {"rgb": torch.zeros(1, 3, 20, 20), "dsm": torch.zeros(1, 1, 20, 21)}, 8, 0, 2)
    with pytest.raises(ValueError, match="batch"):
        sliding_window(per_pixel, {"rgb": torch.zeros(2, 3, 20, 20), "dsm": torch.zeros(3, 1, 20, 20)}, 8, 0, 2)
    with pytest.raises(ValueError, match=r"expected \(1, 2, 8, 8\)"):
        sliding_window(lambda b: b["rgb"], x, 8, 0, 2, batch_size=1)
    with pytest.raises(ValueError, match="weight"):
        sliding_window(lambda b: b["rgb"], x, 8, 0, 3, weight="cosine")
    with pytest.raises(ValueError, match="empty"):
        sliding_window(per_pixel, {}, 8, 0, 2)


def test_large_tile_1x1_conv_is_fast_and_exact():
    """2048 x 2048 single-channel tile, 25 windows of 512 through a 1x1 conv (1 -> 2 channels).

    The 1x1 conv is written as the broadcast affine map it is (checked against
    ``F.conv2d`` on a patch): torch's CPU conv2d kernel for one input channel would
    otherwise take most of the time, and this test times the sliding-window machinery.
    """
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(2, 1, 1, 1, generator=g), torch.randn(2, generator=g)

    def conv1x1(x):
        return x * weight.view(1, 2, 1, 1) + bias.view(1, 2, 1, 1)

    tile = {"dsm": torch.rand(1, 1, 2048, 2048, generator=g) * 30}
    patch = tile["dsm"][:, :, :64, :64]
    torch.testing.assert_close(conv1x1(patch), torch.nn.functional.conv2d(patch, weight, bias))

    def model_fn(batch):
        assert not torch.is_grad_enabled()
        return conv1x1(batch["dsm"])

    start = time.perf_counter()
    out = sliding_window(model_fn, tile, window=512, overlap=0.25, num_outputs=2, batch_size=4, out_device="cpu")
    elapsed = time.perf_counter() - start
    torch.testing.assert_close(out, conv1x1(tile["dsm"]), rtol=1e-6, atol=1e-5)
    assert elapsed < 3.0, f"2048x2048 tile took {elapsed:.2f} s"
