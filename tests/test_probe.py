"""Frozen-feature probes recover what the features hold, and nothing more."""

import torch

from conftest import batch, micro_config
from mssdf.model import MSSDF
from mssdf.data.io import IGNORE_INDEX
from mssdf.reports.probe import (
    linear_classification_probe,
    patch_features,
    patch_labels,
    patch_means,
    ridge_regression_probe,
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
    assert good.accuracy > 0.95 and good.mean_iou > 0.9
    assert noise.accuracy < 0.5  # chance is 1/3
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
