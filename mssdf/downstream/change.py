"""The no-learning baseline of change detection: a thresholded image difference.

Per pixel, the difference of the two dates' standardised inputs (the same per-band
statistics for both dates) summarised over bands — ``d = sqrt(mean_c (x2_c − x1_c)²)`` —
is called changed when ``d > t``. The threshold ``t`` is fitted on the **train** split
only: exactly the value that maximises the change-class IoU over every train pixel
(:func:`best_threshold`, every candidate cut evaluated by cumulative sums, not a grid). The
fitted rule is then scored on val and test with the same metric
(:class:`~mssdf.downstream.metrics.ChangeMetrics`) as the learned models.

On pairs that differ only inside the change mask, this baseline is close to perfect; on
pairs that also differ by acquisition (radiometry, misregistration, noise) it is what a
model has to beat for its features to count.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from mssdf.data.io import IGNORE_INDEX
from mssdf.downstream.config import SECOND_DATE, FinetuneConfig


def difference_map(images: Mapping[str, Tensor], modalities: tuple[str, ...]) -> Tensor:
    """``{m: (B, C, H, W), m_t2: (B, C, H, W)}`` → ``(B, H, W)`` root-mean-square difference over
    the bands of every modality (modalities weighted by their band counts)."""
    sq, bands = None, 0
    for m in modalities:
        d = (images[m + SECOND_DATE].float() - images[m].float()) ** 2
        sq = d.sum(1) if sq is None else sq + d.sum(1)
        bands += d.shape[1]
    assert sq is not None
    return (sq / bands).sqrt()


def best_threshold(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """The threshold ``t`` maximising the IoU of ``scores > t`` against ``labels == 1``.

    Args:
        scores: ``(N,)`` float; labels: ``(N,)`` in {0, 1} (ignored pixels removed by the caller).
    Returns:
        ``(t, IoU at t)``; ``t`` is midway between the last score called changed and the next
        (above every score when calling nothing changed is best).
    """
    if scores.numel() == 0:
        raise ValueError("best_threshold: no pixels")
    order = torch.argsort(scores.double(), descending=True)
    s, y = scores.double()[order], labels[order].double()
    positives = y.sum()
    tp = torch.cumsum(y, 0)
    n = torch.arange(1, len(s) + 1, dtype=torch.float64)
    iou = tp / (n + positives - tp)
    # a cut is only possible between distinct scores: keep the last index of each run of ties
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    iou = torch.where(last_of_tie, iou, torch.tensor(-1.0, dtype=torch.float64))
    k = int(torch.argmax(iou))
    if float(iou[k]) <= 0.0:  # no cut finds any change: call nothing changed
        return float(s[0]) + 1.0, 0.0
    t = float((s[k] + s[k + 1]) / 2) if k + 1 < len(s) else float(s[k]) - 1.0
    return t, float(iou[k])


def _pixels(dataset: Any, modalities: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    from mssdf.downstream.data import collate

    plain = dataset.plain() if hasattr(dataset, "plain") else dataset
    scores, labels = [], []
    for start in range(0, len(plain), 32):
        batch = collate([plain[i] for i in range(start, min(start + 32, len(plain)))])
        d, y = difference_map(batch["images"], modalities), batch["target"]
        keep = y != IGNORE_INDEX
        scores.append(d[keep])
        labels.append(y[keep])
    return torch.cat(scores), torch.cat(labels)


def difference_baseline(cfg: FinetuneConfig, root: Any = None) -> dict[str, Any]:
    """Fit the threshold on ``cfg``'s train split and score val and test (no learning, no seed).

    Returns:
        ``{"threshold", "train_iou", "val": metrics, "test": metrics, "data", "label_kind"}``
        with the metrics of :class:`~mssdf.downstream.metrics.ChangeMetrics` (``confusion`` as a list).
    """
    from mssdf.downstream.data import build_task_data, check_targets
    from mssdf.downstream.metrics import ChangeMetrics

    if cfg.task != "change":
        raise ValueError(f"difference_baseline: a change run, got task {cfg.task!r}")
    mods = tuple(cfg.backbone.modalities)
    data = build_task_data(cfg, {m: True for m in mods}, root)
    check_targets(data, "change", 2, limit=None if cfg.data.kind == "sample" else 4)
    t, train_iou = best_threshold(*_pixels(data.train, mods))
    out: dict[str, Any] = {"threshold": t, "train_iou": train_iou, "data": data.description, "label_kind": data.label_kind}
    for role in ("val", "test"):
        scores, labels = _pixels(getattr(data, role), mods)
        metric = ChangeMetrics()
        metric.update((scores > t).long()[:, None, None], labels[:, None, None])
        result = metric.compute()
        result["confusion"] = result["confusion"].tolist()
        out[role] = result
    return out


__all__ = ["difference_map", "best_threshold", "difference_baseline"]
