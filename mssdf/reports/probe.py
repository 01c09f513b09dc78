"""Frozen-feature probes: the quick health check of a pre-trained encoder.

The encoder is frozen; its patch tokens are the features. Targets are brought to the
patch grid (the majority label of a patch's valid pixels for segmentation, the mean of
its finite heights for height estimation), then

* segmentation: a linear (softmax) classifier trained with full-batch L-BFGS and a small
  L2 penalty, scored by pixel-free patch accuracy and mean IoU over classes present;
* height: ridge regression in closed form, scored by RMSE in metres.

Features are standardised with the *train* statistics. The same probe applied to the same
encoder at random initialisation is the baseline a pre-trained encoder must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mssdf.data.io import IGNORE_INDEX
from mssdf.model import Encoder



@torch.no_grad()
def patch_features(encoder: Encoder, images: Mapping[str, Tensor], batch_size: int = 64) -> Tensor:
    """Frozen patch tokens averaged over the given modalities.

    Args:
        images: ``{m: (B, C_m, H, W)}`` raw values.
    Returns:
        ``(B, N, D)`` float32 (cls dropped).
    """
    encoder.eval()
    n = next(iter(images.values())).shape[0]
    out = []
    for start in range(0, n, batch_size):
        chunk = {m: x[start : start + batch_size] for m, x in images.items()}
        enc = encoder(chunk)  # {m: (b, 1+N, D)}
        out.append(torch.stack([t[:, 1:].float() for t in enc.values()]).mean(0))
    return torch.cat(out)


def patch_labels(label: Tensor, patch: int, num_classes: int) -> Tensor:
    """``(B, H, W)`` int labels (255 = ignore) → ``(B, N)`` majority label per patch (255 if none valid)."""
    b, h, w = label.shape
    blocks = label.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(b, -1, patch * patch)
    valid = blocks != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, blocks, 0).long(), num_classes) * valid.unsqueeze(-1)  # (B, N, p², K)
    counts = onehot.sum(2)  # (B, N, K)
    majority = counts.argmax(-1)
    return torch.where(counts.sum(-1) > 0, majority, torch.full_like(majority, IGNORE_INDEX))


def patch_means(values: Tensor, patch: int) -> Tensor:
    """``(B, H, W)`` float (NaN = no data) → ``(B, N)`` mean of finite values per patch (NaN if none)."""
    b, h, w = values.shape
    blocks = values.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(b, -1, patch * patch)
    finite = torch.isfinite(blocks)
    total = torch.where(finite, blocks, torch.zeros_like(blocks)).sum(-1)
    count = finite.sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


@dataclass(frozen=True)
class ClassificationProbe:
    accuracy: float
    mean_iou: float
    per_class_iou: tuple[float, ...]
    n_train: int
    n_test: int


def linear_classification_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, l2: float = 1e-3, steps: int = 100
) -> ClassificationProbe:
    """Softmax regression on frozen features.

    Args:
        train_x, test_x: ``(n, D)`` features; train_y, test_y: ``(n,)`` labels (255 ignored).
    """
    keep_tr, keep_te = train_y != IGNORE_INDEX, test_y != IGNORE_INDEX
    xtr, xte = _standardise(train_x[keep_tr].float(), test_x[keep_te].float())
    ytr, yte = train_y[keep_tr].long(), test_y[keep_te].long()
    weight = torch.zeros(xtr.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, ytr) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xte @ weight + bias).argmax(1)
    conf = torch.bincount(yte * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    return ClassificationProbe(
        accuracy=float((pred == yte).double().mean()) if len(yte) else float("nan"),
        mean_iou=float(iou[present].mean()) if present.any() else float("nan"),
        per_class_iou=tuple(float(v) for v in iou),
        n_train=int(len(ytr)),
        n_test=int(len(yte)),
    )


@dataclass(frozen=True)
class RegressionProbe:
    rmse: float
    rmse_mean_baseline: float  # predicting the train mean everywhere
    n_train: int
    n_test: int


def ridge_regression_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1.0) -> RegressionProbe:
    """Closed-form ridge regression on frozen features; NaN targets are dropped.

    Args:
        train_x, test_x: ``(n, D)``; train_y, test_y: ``(n,)`` (metres).
    """
    keep_tr, keep_te = torch.isfinite(train_y), torch.isfinite(test_y)
    xtr, xte = _standardise(train_x[keep_tr].double(), test_x[keep_te].double())
    ytr, yte = train_y[keep_tr].double(), test_y[keep_te].double()
    mu = ytr.mean()
    a = xtr.T @ xtr + l2 * torch.eye(xtr.shape[1], dtype=xtr.dtype)
    w = torch.linalg.solve(a, xtr.T @ (ytr - mu))
    pred = xte @ w + mu
    return RegressionProbe(
        rmse=float((pred - yte).pow(2).mean().sqrt()),
        rmse_mean_baseline=float((mu - yte).pow(2).mean().sqrt()),
        n_train=int(len(ytr)),
        n_test=int(len(yte)),
    )
