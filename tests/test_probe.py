"""Frozen-feature probes recover what the features hold, and nothing more."""

import torch

from conftest import batch, micro_config
from mssdf.model import MSSDF
from mssdf.data.io import IGNORE_INDEX
from mssdf.reports.probe import (
    box_mask,
    change_features,
    classification_scores,
    linear_classification_probe,
    objectness_labels,
    patch_features,
    patch_labels,
    patch_means,
    ridge_regression_probe,
    tile_features,
)


def test_patch_labels_majority_and_ignore():
    label = torch.full((1, 4, 4), IGNORE_INDEX)
    label[0, :2, :2] = torch.tensor([[1, 1], [2, IGNORE_INDEX]])  # patch 0: majority 1
    label[0, 2:, 2:] = 0  # patch 3: all 0
    out = patch_labels(label, 2, num_classes=3)
    assert out.tolist() == [[1, IGNORE_INDEX, IGNORE_INDEX, 0]]


def test_patch_means_skip_nan():
    v = torch.tensor([[[1.0, 3.0], [float("nan"), 5.0]]])
    assert patch_means(v, 2).tolist() == [[3.0]]
    assert torch.isnan(patch_means(torch.full((1, 2, 2), float("nan")), 2)).all()


def test_classification_probe_separable_vs_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    y = torch.randint(0, 3, (900,), generator=g)
    x = centers[y] + torch.randn(900, 16, generator=g)
    good = linear_classification_probe(x[:600], y[:600], x[600:], y[600:], 3)
    noise = linear_classification_probe(torch.randn(600, 16, generator=g), y[:600], torch.randn(300, 16, generator=g), y[600:], 3)
    assert good.accuracy > 0.95 and good.mean_iou > 0.9 and good.balanced_accuracy > 0.95
    assert noise.accuracy < 0.5 and noise.balanced_accuracy < 0.5  # chance is 1/3
    assert good.n_train == 600 and good.n_test == 300


def test_regression_probe_linear_vs_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 10 + 0.1 * torch.randn(1000, generator=g)
    y[::10] = float("nan")
    good = ridge_regression_probe(x[:700], y[:700], x[700:], y[700:], l2=1e-3)
    noise = ridge_regression_probe(torch.randn(700, 8, generator=g), y[:700], torch.randn(300, 8, generator=g), y[700:])
    assert good.rmse < 0.15 < good.rmse_mean_baseline
    assert noise.rmse > 0.9 * noise.rmse_mean_baseline
    assert good.n_train == 630


def test_patch_features_shape_and_no_grad():
    torch.manual_seed(0)
    model = MSSDF(micro_config())
    x = batch(b=5, modalities={"rgb": 3, "dsm": 1})
    f = patch_features(model.encoder, x, batch_size=2)
    assert f.shape == (5, 16, 32) and not f.requires_grad
    single = patch_features(model.encoder, {"rgb": x["rgb"]})
    assert not torch.allclose(f, single)  # the modalities are averaged


def test_classification_scores_by_hand():
    s = classification_scores(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), num_classes=3)
    assert s.accuracy == 0.75
    assert s.per_class_iou[0] == 0.5 and abs(s.per_class_iou[1] - 2 / 3) < 1e-12
    assert s.per_class_iou[2] != s.per_class_iou[2]  # class 2 neither present nor predicted: NaN, left out
    assert abs(s.mean_iou - 7 / 12) < 1e-12
    assert abs(s.balanced_accuracy - (1 + 2 / 3) / 2) < 1e-12  # recalls 1/1 and 2/3


def test_box_mask_centre_rule():
    assert box_mask(torch.tensor([[1.0, 2.0, 4.0, 5.0]]), 8, 8).nonzero().tolist() == [
        [r, c] for r in (2, 3, 4) for c in (1, 2, 3)
    ]  # integer corners: columns x0..x1-1, rows y0..y1-1
    assert box_mask(torch.tensor([[0.4, 0.4, 1.6, 1.6]]), 4, 4).sum() == 4  # both centres 0.5 and 1.5 inside
    assert box_mask(torch.tensor([[0.6, 0.6, 1.4, 1.4]]), 4, 4).sum() == 0  # no pixel centre inside
    overlap = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    assert box_mask(overlap, 4, 4).sum() == 7  # 4 + 4 - 1: the shared pixel counts once
    assert box_mask(torch.zeros(0, 4), 4, 4).sum() == 0


def test_objectness_labels_exact_counts():
    # 8 x 8 tile, 4 px patches: patches 0 1 / 2 3 (row-major)
    boxes = torch.tensor([
        [0.0, 0.0, 4.0, 2.0],  # patch 0: 4 x 2 = 8 of 16 px (exactly half) -> object
        [4.0, 0.0, 7.0, 2.0],  # patch 1: 3 x 2 = 6 px -> background
        [0.0, 4.0, 3.0, 6.0],  # patch 2: two overlapping 3 x 2 boxes, union 4 x 2 = 8 px -> object
        [1.0, 4.0, 4.0, 6.0],  #          (their areas sum to 12: the union counts, not the sum)
    ])
    out = objectness_labels([boxes, torch.zeros(0, 4)], 8, 8, patch=4)
    assert out.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    assert out.dtype == torch.int64
    assert objectness_labels([boxes], 8, 8, patch=4, min_cover=0.75).tolist() == [[0, 0, 0, 0]]
    assert objectness_labels([torch.tensor([[4.0, 4.0, 8.0, 8.0]])], 8, 8, 4, min_cover=1.0).tolist() == [[0, 0, 0, 1]]


def test_change_features_symmetric_and_zero_difference():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    both = change_features(f1, f2)
    assert both.shape == (2, 5, 16)
    assert torch.equal(both, change_features(f2, f1))  # the order of the dates does not matter
    same = change_features(f1, f1)
    assert torch.equal(same[..., :8], torch.zeros(2, 5, 8)) and torch.equal(same[..., 8:], f1 * f1)


def _change_pairs(n: int, changed: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 8)`` first-date features and second-date ones: equal where unchanged, redrawn where changed."""
    f1 = torch.randn(n, 8, generator=g)
    f2 = torch.where(changed[:, None], torch.randn(n, 8, generator=g), f1)
    return f1, f2


def test_change_probe_oracle_identical_dates_and_noise():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(1200, generator=g) < 0.3).long()
    f1, f2 = _change_pairs(1200, y.bool(), g)
    x = change_features(f1, f2)
    good = linear_classification_probe(x[:800], y[:800], x[800:], y[800:], 2)
    assert good.per_class_iou[1] > 0.95  # the features carry the change: IoU of "changed" near 1
    # the same probe on two identical dates predicts no change anywhere
    same = change_features(f1[800:], f1[800:])
    none = linear_classification_probe(x[:800], y[:800], same, torch.zeros(400, dtype=torch.long), 2)
    assert none.accuracy == 1.0 and none.per_class_iou[1] != none.per_class_iou[1]  # nothing predicted changed: NaN
    # features unrelated to the label: the changed class is found at chance level
    noise = linear_classification_probe(torch.randn(800, 16, generator=g), y[:800], torch.randn(400, 16, generator=g), y[800:], 2)
    assert noise.balanced_accuracy < 0.6 and noise.per_class_iou[1] < 0.35


def test_tile_probe_pools_patches():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    patches = centers[y][:, None, :] + 2.0 * torch.randn(300, 25, 16, generator=g)  # (B, N, D): noisy patches
    pooled = tile_features(patches)
    assert pooled.shape == (300, 16) and torch.allclose(pooled, patches.mean(1))
    good = linear_classification_probe(pooled[:200], y[:200], pooled[200:], y[200:], 3)
    noise = linear_classification_probe(tile_features(torch.randn(200, 25, 16, generator=g)), y[:200],
                                        tile_features(torch.randn(100, 25, 16, generator=g)), y[200:], 3)  # fmt: skip
    assert good.accuracy > 0.95
    assert noise.accuracy < 0.5 and noise.balanced_accuracy < 0.5  # chance is 1/3
