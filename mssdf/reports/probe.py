"""Frozen-feature probes: the quick health check of a pre-trained encoder.

The encoder is frozen; its patch tokens are the features. Targets are brought to the
patch grid (the majority label of a patch's valid pixels for segmentation, the mean of
its finite heights for height estimation), then

* segmentation: a linear (softmax) classifier trained with full-batch L-BFGS and a small
  L2 penalty, scored by pixel-free patch accuracy and mean IoU over classes present;
* height: ridge regression in closed form, scored by RMSE in metres;
* tile classes: the patch tokens mean-pooled per tile (:func:`tile_features`), then the
  same linear classifier, scored by tile accuracy and balanced accuracy;
* change: the two dates' patch tokens combined by :func:`change_features`, then the
  linear classifier on the patch-majority change label (IoU of the changed class);
* detection: patch objectness (:func:`objectness_labels`: a patch is an object patch when
  boxes cover at least half of its pixels), then the linear classifier (IoU of the
  object class).

Features are standardised with the *train* statistics. The same probe applied to the same
encoder at random initialisation is the baseline a pre-trained encoder must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mssdf.data.io import IGNORE_INDEX
from mssdf.model import Encoder


@torch.no_grad()
def patch_features(encoder: Encoder, images: Mapping[str, Tensor], batch_size: int = 64) -> Tensor:
    """Frozen patch tokens averaged over the given modalities.

    Args:
        images: ``{m: (B, C_m, H, W)}`` as the encoder takes them (raw, or standardised for an encoder
            without statistics of its own), moved batch by batch to the encoder's device.
    Returns:
        ``(B, N, D)`` float32 (cls dropped), on the device of ``images``.
    """
    encoder.eval()
    first = next(iter(images.values()))
    device = next(encoder.parameters()).device
    n = first.shape[0]
    out = []
    for start in range(0, n, batch_size):
        chunk = {m: x[start : start + batch_size].to(device) for m, x in images.items()}
        enc = encoder(chunk)  # {m: (b, 1+N, D)}
        out.append(torch.stack([t[:, 1:].float() for t in enc.values()]).mean(0).to(first.device))
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


def tile_features(features: Tensor) -> Tensor:
    """``(B, N, D)`` patch tokens → ``(B, D)``: their mean per tile (the tile-class probe's input)."""
    return features.mean(1)


def change_features(first: Tensor, second: Tensor) -> Tensor:
    """Symmetric pair features of two dates' co-located patch tokens.

    ``[|f1 - f2|, f1 * f2]`` per patch. A linear probe on the concatenation ``[f1, f2]``
    can only weigh the signed difference ``f1 - f2``, and "changed" is a change in either
    direction (a building removed or pasted), which is not linear in it; ``|f1 - f2|``
    makes it so, is exactly zero for identical dates and does not depend on the order of
    the dates. ``f1 * f2`` adds the per-dimension agreement (its sum is the tokens' dot
    product), which separates "same content" from "different content of similar
    magnitude".

    Args:
        first, second: ``(..., D)`` features of the first and second date.
    Returns:
        ``(..., 2D)``.
    """
    if first.shape != second.shape:
        raise ValueError(f"the two dates' features differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    return torch.cat([(first - second).abs(), first * second], dim=-1)


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Pixels covered by any of ``boxes``: the centre rule.

    Pixel ``(r, c)`` is covered by box ``(x0, y0, x1, y1)`` when its centre
    ``(c + 0.5, r + 0.5)`` satisfies ``x0 <= c + 0.5 < x1`` and ``y0 <= r + 0.5 < y1``;
    a box with integer corners covers exactly columns ``x0 .. x1 - 1`` and rows
    ``y0 .. y1 - 1``. Overlapping boxes count once.

    Args:
        boxes: ``(K, 4)`` xyxy in pixels (``K`` may be 0).
    Returns:
        ``(height, width)`` bool.
    """
    boxes = boxes.reshape(-1, 4).float()
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    in_c = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # (K, W)
    in_r = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # (K, H)
    return (in_r[:, :, None] & in_c[:, None, :]).any(0)


def objectness_labels(boxes: Sequence[Tensor], height: int, width: int, patch: int, min_cover: float = 0.5) -> Tensor:
    """Patch objectness of tiles with boxes: 1 where boxes cover at least ``min_cover`` of
    the patch's pixels (:func:`box_mask`), else 0.

    Args:
        boxes: one ``(K_i, 4)`` xyxy pixel tensor per tile.
    Returns:
        ``(B, N)`` int64 in {0, 1}, patches in row-major order (as the encoder's tokens).
    """
    if not 0 < min_cover <= 1:
        raise ValueError(f"min_cover must be in (0, 1], got {min_cover}")
    if not boxes:
        return torch.zeros(0, (height // patch) * (width // patch), dtype=torch.int64)
    masks = torch.stack([box_mask(b, height, width) for b in boxes]).float()  # (B, H, W)
    cover = patch_means(masks, patch)  # (B, N) covered fraction
    return (cover >= min_cover - 1e-9).long()


@dataclass(frozen=True)
class ClassScores:
    """Scores of class predictions (classes absent from the targets are left out of the means)."""

    accuracy: float
    mean_iou: float  # over the classes present in the targets
    per_class_iou: tuple[float, ...]  # NaN where a class is neither present nor predicted
    balanced_accuracy: float  # mean recall over the classes present in the targets


def classification_scores(pred: Tensor, target: Tensor, num_classes: int) -> ClassScores:
    """Accuracy, IoU and balanced accuracy of ``(n,)`` predictions against ``(n,)`` targets
    (both int in ``[0, num_classes)``; no ignore label here)."""
    pred, target = pred.long().flatten(), target.long().flatten()
    conf = torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    recall = inter / conf.sum(1).clamp_min(1)
    return ClassScores(
        accuracy=float((pred == target).double().mean()) if len(target) else float("nan"),
        mean_iou=float(iou[present].mean()) if present.any() else float("nan"),
        per_class_iou=tuple(float(v) for v in iou),
        balanced_accuracy=float(recall[present].mean()) if present.any() else float("nan"),
    )


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
    balanced_accuracy: float = float("nan")  # mean recall over the classes present in the test targets


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
    s = classification_scores(pred, yte, num_classes)
    return ClassificationProbe(
        accuracy=s.accuracy,
        mean_iou=s.mean_iou,
        per_class_iou=s.per_class_iou,
        n_train=int(len(ytr)),
        n_test=int(len(yte)),
        balanced_accuracy=s.balanced_accuracy,
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
