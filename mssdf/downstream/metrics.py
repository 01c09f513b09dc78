"""Metrics over a whole split (segmentation, change, classification, height), accumulated with torchmetrics.

Both classes are :class:`torchmetrics.Metric` subclasses whose states are sums
(``dist_reduce_fx="sum"``): call :meth:`update` on every batch of every rank, then
:meth:`compute` once. Under ``torch.distributed`` (when a process group is initialised)
torchmetrics all-reduces the states inside :meth:`compute`, so every rank gets the
metrics of the whole split; nothing else is needed for DDP. Move a metric to the
device of its inputs with ``.to(device)`` (it is an ``nn.Module``); :meth:`reset` clears
it for the next split.

* :class:`SegmentationMetrics`: one K x K confusion matrix (rows = truth, columns =
  prediction, torchmetrics' convention); mIoU, F1, overall accuracy and the per-class
  values are all derived from it, so they agree exactly.
* :class:`ChangeMetrics`: binary change (classes unchanged / changed) as two-class
  segmentation, plus the change class's IoU, F1, precision and recall — every number a
  binary change-detection paper may quote (the MSSDF paper's SECOND "mIoU" is not defined).
* :class:`ClassificationMetrics`: one label per image; overall accuracy, macro F1,
  per-class accuracy (recall) and the confusion matrix, from the same confusion matrix.
* :class:`HeightMetrics`: RMSE and MAE in metres and in the normalised 8-bit unit of the
  MSSDF paper, over all pixels with a finite target and over the "no ground" subset.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from mssdf.data.io import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "ChangeMetrics", "ClassificationMetrics", "HeightMetrics", "height_to_8bit",
           "scores_from_confusion"]


def _bad_values(values: Tensor, limit: int = 10) -> str:
    """Sorted distinct values of ``values`` as text (at most ``limit`` shown)."""
    uniq = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in uniq[:limit])
    return f"[{shown}{', ...' if len(uniq) > limit else ''}] ({len(uniq)} distinct)"


def scores_from_confusion(confusion: Tensor) -> dict[str, Tensor]:
    """Per-class IoU and F1, their means and the overall accuracy of a confusion matrix.

    Args:
        confusion: ``(K, K)`` integer counts, rows = truth, columns = prediction.

    Returns:
        ``iou`` and ``f1`` ``(K,)`` float64 (NaN where a class has union 0, i.e. it is
        neither in the truth nor predicted), ``precision`` and ``recall`` ``(K,)`` (NaN
        where the class is never predicted / absent from the truth), ``miou`` and ``f1_mean`` (means over the
        classes with union > 0; NaN when there is none) and ``overall_accuracy``
        (trace / total; NaN when the matrix is empty), all float64 tensors.
    """
    cm = confusion.to(torch.float64)
    tp = cm.diagonal()
    truth = cm.sum(dim=1)
    pred = cm.sum(dim=0)
    union = truth + pred - tp
    present = union > 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=cm.device)
    iou = torch.where(present, tp / union.clamp(min=1), nan)
    f1 = torch.where(present, 2 * tp / (truth + pred).clamp(min=1), nan)
    total = cm.sum()
    return {
        "iou": iou,
        "f1": f1,
        "precision": torch.where(pred > 0, tp / pred.clamp(min=1), nan),
        "recall": torch.where(truth > 0, tp / truth.clamp(min=1), nan),
        "miou": iou[present].mean() if present.any() else nan,
        "f1_mean": f1[present].mean() if present.any() else nan,
        "overall_accuracy": tp.sum() / total if total > 0 else nan,
    }


class SegmentationMetrics(Metric):
    """mIoU, F1 (Dice), overall accuracy and the confusion matrix over a whole split.

    Class convention (mmseg's): the means ``miou`` and ``f1`` are over the classes whose
    union is non-empty, i.e. present in the (non-ignored) truth *or* predicted on a
    non-ignored pixel, anywhere in the split. A class that is neither has per-class IoU
    and F1 NaN and does not enter the means. Pixels whose target is ``ignore_index`` are
    left out of everything.

    ``compute()`` returns (stable keys): ``miou``, ``per_class_iou`` ``{name: value}``,
    ``f1``, ``per_class_f1``, ``overall_accuracy`` (Python floats) and ``confusion``
    (``(K, K)`` int64 CPU tensor, rows = truth, columns = prediction).

    Args:
        num_classes: K; valid labels are ``0 .. K-1``.
        ignore_index: target value left out (default :data:`mssdf.data.io.IGNORE_INDEX`);
            None: every target value must be a class.
        class_names: K distinct names for the per-class dicts (default ``"0" .. "K-1"``).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``process_group``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        num_classes = int(num_classes)
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class id for num_classes={num_classes}")
        names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names, expected num_classes={num_classes}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names are not distinct: {names}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: ``(B, H, W)`` integer class ids in ``[0, K)``, or ``(B, K, H, W)`` float
                logits/scores (argmax over dim 1).
            target: ``(B, H, W)`` integer labels in ``[0, K)`` or ``ignore_index``.

        Raises:
            ValueError: shapes disagree, a float ``pred`` without the class dimension,
                a target value outside ``[0, K)`` that is not the ignore label, or a
                predicted class id outside ``[0, K)``; the message names the values.
        """
        K = self.num_classes
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must be an integer tensor of class ids, got dtype {target.dtype}")
        if pred.ndim == target.ndim + 1:
            if not pred.is_floating_point():
                raise ValueError(f"pred with a class dimension must be float logits, got dtype {pred.dtype}")
            if pred.shape[1] != K:
                raise ValueError(f"pred logits have {pred.shape[1]} channels, expected num_classes={K}")
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point():
            raise ValueError(
                f"float pred must be (B, K, H, W) logits; got shape {tuple(pred.shape)} for target {tuple(target.shape)}"
            )
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        target = target.long()
        pred = pred.long()
        bad = (target < 0) | (target >= K)
        if self.ignore_index is not None:
            bad &= target != self.ignore_index
        if bad.any():
            ignore = f" or the ignore label {self.ignore_index}" if self.ignore_index is not None else ""
            raise ValueError(
                f"target has values {_bad_values(target[bad])} outside [0, {K}) for num_classes={K}{ignore}"
            )
        bad_pred = (pred < 0) | (pred >= K)
        if bad_pred.any():
            raise ValueError(f"pred has class ids {_bad_values(pred[bad_pred])} outside [0, {K}) for num_classes={K}")
        self.confmat += multiclass_confusion_matrix(
            pred, target, K, ignore_index=self.ignore_index, validate_args=False
        ).to(self.confmat.dtype)

    def compute(self) -> dict[str, Any]:
        """The metrics of everything added since the last reset (synchronised under DDP)."""
        scores = scores_from_confusion(self.confmat)
        return {
            "miou": float(scores["miou"]),
            "per_class_iou": dict(zip(self.class_names, scores["iou"].tolist())),
            "f1": float(scores["f1_mean"]),
            "per_class_f1": dict(zip(self.class_names, scores["f1"].tolist())),
            "overall_accuracy": float(scores["overall_accuracy"]),
            "confusion": self.confmat.detach().to("cpu", torch.int64).clone(),
        }


class ChangeMetrics(SegmentationMetrics):
    """Binary change over a whole split: :class:`SegmentationMetrics` with the classes
    ``unchanged`` (0) and ``changed`` (1), plus ``change_iou``, ``change_f1``,
    ``change_precision``, ``change_recall`` of the changed class (NaN when it is neither
    true nor predicted anywhere). ``miou`` is the two-class mean, ``overall_accuracy`` the
    pixel accuracy."""

    def __init__(self, ignore_index: int | None = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(2, ignore_index=ignore_index, class_names=("unchanged", "changed"), **kwargs)

    def compute(self) -> dict[str, Any]:
        out = super().compute()
        scores = scores_from_confusion(self.confmat)
        for key, name in (("iou", "change_iou"), ("f1", "change_f1"), ("precision", "change_precision"),
                          ("recall", "change_recall")):
            out[name] = float(scores[key][1])
        return out


class ClassificationMetrics(SegmentationMetrics):
    """Scene classification over a whole split: one ``K × K`` confusion matrix (torchmetrics),
    and from it ``overall_accuracy``, ``f1`` (macro over the classes true or predicted
    somewhere), ``per_class_f1``, ``per_class_accuracy`` (recall: the share of each class's
    images classified correctly; NaN for a class absent from the split), ``mean_class_accuracy``
    and ``confusion``.

    ``update(pred, target)``: ``pred`` ``(B, K)`` float logits or ``(B,)`` class ids,
    ``target`` ``(B,)`` class ids (no ignore label unless given)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, class_names=class_names, **kwargs)

    def update(self, pred: Tensor, target: Tensor) -> None:
        if target.ndim != 1:
            raise ValueError(f"target must be (B,) class ids, got shape {tuple(target.shape)}")
        super().update(pred[..., None, None], target[:, None, None])

    def compute(self) -> dict[str, Any]:
        scores = scores_from_confusion(self.confmat)
        recall = scores["recall"]
        present = torch.isfinite(recall)
        return {
            "overall_accuracy": float(scores["overall_accuracy"]),
            "f1": float(scores["f1_mean"]),
            "per_class_f1": dict(zip(self.class_names, scores["f1"].tolist())),
            "per_class_accuracy": dict(zip(self.class_names, recall.tolist())),
            "mean_class_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
            "confusion": self.confmat.detach().to("cpu", torch.int64).clone(),
        }


def height_to_8bit(height: Tensor, scale_m: float) -> Tensor:
    """Heights in metres to the 8-bit depth unit: ``clip(round(h / scale_m * 255), 0, 255)``.

    ``round`` is torch's (half to even). Shape is kept; the result is float64 (values
    0..255; NaN stays NaN). Divide by 255 for the normalised ``[0, 1]`` unit.
    """
    return torch.clamp(torch.round(height.to(torch.float64) / scale_m * 255.0), 0.0, 255.0)


_HEIGHT_PARTS = ("all", "no_ground")


class HeightMetrics(Metric):
    """RMSE and MAE of a height (nDSM / AGL) regression over a whole split.

    Pixels with a non-finite target (NaN = no data) are left out. Errors are reported
    in metres and in the MSSDF paper's normalised unit: both prediction and target are
    mapped to 8 bits by :func:`height_to_8bit` (``v8 = clip(round(h / scale_m * 255),
    0, 255)``) and divided by 255, so the unit is ``[0, 1]``. The paper's US3D depth
    RMSE is in that unit and its evaluation ignores pixels whose 8-bit *target* is 0 or
    255 ("ground pixels excluded"); the ``*_no_ground`` keys are over that subset. How
    the authors scaled heights to 8 bits is not published, hence ``scale_m`` (metres
    that map to 255) is a required parameter, with no default.

    ``compute()`` keys: ``rmse_m``, ``mae_m``, ``rmse_norm``, ``mae_norm`` (all pixels
    with a finite target), ``rmse_m_no_ground``, ``mae_m_no_ground``,
    ``rmse_norm_no_ground``, ``mae_norm_no_ground`` (finite target whose 8-bit value is
    neither 0 nor 255), ``n_pixels``, ``n_pixels_no_ground`` (ints). A metric over no
    pixel is NaN. Sums are kept in float64.

    Args:
        scale_m: metres mapped to the 8-bit value 255 (> 0).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``process_group``).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, scale_m: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(scale_m, bool) or not isinstance(scale_m, (int, float, np.integer, np.floating)) or not math.isfinite(scale_m) or scale_m <= 0:
            raise ValueError(f"scale_m must be a finite number > 0 (metres at 8-bit 255), got {scale_m!r}")
        self.scale_m = float(scale_m)
        for part in _HEIGHT_PARTS:
            for name in ("sq_m", "abs_m", "sq_norm", "abs_norm"):
                self.add_state(f"{name}_{part}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{part}", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: ``(B, H, W)`` or ``(B, 1, H, W)`` predicted heights in metres, all finite.
            target: same shape (a size-1 channel dim may be on either side only),
                metres; non-finite = no data.

        Raises:
            ValueError: shapes disagree, an input is not floating point, or ``pred``
                has a non-finite value (the message gives the count).
        """
        if not pred.is_floating_point() or not target.is_floating_point():
            raise ValueError(f"pred and target must be float heights, got {pred.dtype} and {target.dtype}")
        if pred.ndim == target.ndim + 1 and pred.shape[1] == 1:
            pred = pred.squeeze(1)
        elif target.ndim == pred.ndim + 1 and target.shape[1] == 1:
            target = target.squeeze(1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        n_bad = int((~torch.isfinite(pred)).sum())
        if n_bad:
            raise ValueError(f"pred has {n_bad} non-finite value(s) (NaN/inf) out of {pred.numel()}")
        valid = torch.isfinite(target)
        p = pred[valid].to(torch.float64)
        t = target[valid].to(torch.float64)
        p8, t8 = height_to_8bit(p, self.scale_m), height_to_8bit(t, self.scale_m)
        err_m = p - t
        err_norm = (p8 - t8) / 255.0
        no_ground = (t8 != 0) & (t8 != 255)
        for part, sel in (("all", None), ("no_ground", no_ground)):
            em = err_m if sel is None else err_m[sel]
            en = err_norm if sel is None else err_norm[sel]
            setattr(self, f"sq_m_{part}", getattr(self, f"sq_m_{part}") + (em * em).sum())
            setattr(self, f"abs_m_{part}", getattr(self, f"abs_m_{part}") + em.abs().sum())
            setattr(self, f"sq_norm_{part}", getattr(self, f"sq_norm_{part}") + (en * en).sum())
            setattr(self, f"abs_norm_{part}", getattr(self, f"abs_norm_{part}") + en.abs().sum())
            setattr(self, f"n_{part}", getattr(self, f"n_{part}") + em.numel())

    def compute(self) -> dict[str, float | int]:
        """The metrics of everything added since the last reset (synchronised under DDP)."""
        out: dict[str, float | int] = {}
        for part in _HEIGHT_PARTS:
            suffix = "" if part == "all" else "_no_ground"
            n = int(getattr(self, f"n_{part}"))
            for unit in ("m", "norm"):
                sq, ab = float(getattr(self, f"sq_{unit}_{part}")), float(getattr(self, f"abs_{unit}_{part}"))
                out[f"rmse_{unit}{suffix}"] = math.sqrt(sq / n) if n else float("nan")
                out[f"mae_{unit}{suffix}"] = ab / n if n else float("nan")
            out[f"n_pixels{suffix}"] = n
        return out
