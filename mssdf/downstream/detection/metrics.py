"""Detection metrics over a whole split.

* :class:`HBBMetrics` — COCO mAP (IoU 0.50:0.95), mAP@0.5 and mAP@0.75, per-class AP, through
  torchmetrics' ``MeanAveragePrecision`` with the ``faster_coco_eval`` backend (a maintained
  C++ COCOeval; pycocotools' results, several times faster). Boxes ``xyxy`` in pixels.
* :class:`OBBMetrics` — DOTA's protocol for oriented boxes: VOC-style AP at IoU 0.5 per
  class (IoU strictly above 0.5, as the devkit), IoU of the rotated rectangles as polygons (:func:`mssdf.downstream.detection.boxes.poly_iou`),
  detections matched greedily by decreasing score to the unmatched ground truth of highest
  IoU; ``difficult`` objects neither count as misses nor make a detection a false positive;
  AP by VOC2007's 11 recall points (the DOTA devkit's default) or the area under the
  precision envelope (``use_07_metric=False``); mAP over the classes with ground truth.

Both accumulate per image and compute once (``update`` per batch, ``compute`` at the end); under
``torch.distributed`` the states are gathered across ranks by torchmetrics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from mssdf.downstream.detection.boxes import obb_to_poly, poly_iou


class HBBMetrics:
    """COCO-style mAP of horizontal boxes (torchmetrics + faster_coco_eval)."""

    def __init__(self, class_names: Sequence[str]):
        from torchmetrics.detection import MeanAveragePrecision

        self.class_names = list(class_names)
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval")

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """``preds``: per image ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``; ``targets``:
        ``{"boxes" (K, 4), "labels" (K,)}`` (optional ``"difficult"`` (K,): COCO's iscrowd)."""
        p = [{"boxes": d["boxes"].float().cpu(), "scores": d["scores"].float().cpu(), "labels": d["labels"].long().cpu()} for d in preds]
        t = [{"boxes": g["boxes"].float().cpu(), "labels": g["labels"].long().cpu(),
              **({"iscrowd": g["difficult"].long().cpu()} if "difficult" in g else {})} for g in targets]
        self.metric.update(p, t)

    def compute(self) -> dict[str, Any]:
        """``map``, ``map_50``, ``map_75``, ``mar_100`` and ``per_class_ap`` ``{name: AP@[.5:.95]}`` (NaN: class absent)."""
        r = self.metric.compute()
        per_class = {name: float("nan") for name in self.class_names}
        classes = r.get("classes", torch.zeros(0)).reshape(-1).tolist()
        values = r.get("map_per_class", torch.zeros(0)).reshape(-1).tolist()
        for c, v in zip(classes, values):
            if 0 <= int(c) < len(self.class_names):
                per_class[self.class_names[int(c)]] = float(v) if v >= 0 else float("nan")
        fix = lambda v: float(v) if float(v) >= 0 else float("nan")  # noqa: E731 (-1: no ground truth)
        return {"map": fix(r["map"]), "map_50": fix(r["map_50"]), "map_75": fix(r["map_75"]), "mar_100": fix(r["mar_100"]),
                "per_class_ap": per_class}


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """VOC average precision of a precision/recall curve (recall increasing)."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class OBBMetrics(Metric):
    """DOTA-protocol mAP@0.5 of oriented boxes (module doc)."""

    full_state_update = False

    def __init__(self, class_names: Sequence[str], iou_threshold: float = 0.5, use_07_metric: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.class_names, self.iou_threshold, self.use_07_metric = list(class_names), iou_threshold, use_07_metric
        for name in ("gt_polys", "gt_labels", "gt_difficult", "gt_image", "det_polys", "det_scores", "det_labels", "det_image"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._images = 0

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """``preds``: ``{"boxes" (D, 5) OBB or (D, 4, 2)/(D, 8) polygons, "scores", "labels"}``;
        ``targets``: ``{"boxes" (K, 5) | (K, 4, 2) | (K, 8), "labels", optional "difficult"}``."""
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if rank or (torch.distributed.is_available() and torch.distributed.is_initialized()) else 1
        for d, g in zip(preds, targets):
            image = self._images * world + rank
            self._images += 1
            gp = _polys(g["boxes"])
            self.gt_polys.append(gp)
            self.gt_labels.append(g["labels"].long().reshape(-1))
            self.gt_difficult.append(g.get("difficult", torch.zeros(len(gp), dtype=torch.long)).long().reshape(-1))
            self.gt_image.append(torch.full((len(gp),), image, dtype=torch.long))
            dp = _polys(d["boxes"])
            self.det_polys.append(dp)
            self.det_scores.append(d["scores"].float().reshape(-1))
            self.det_labels.append(d["labels"].long().reshape(-1))
            self.det_image.append(torch.full((len(dp),), image, dtype=torch.long))

    def compute(self) -> dict[str, Any]:
        """``map_50`` (mean over classes with ground truth), ``per_class_ap``, and per class the
        ``curves`` ``{name: {"precision": [...], "recall": [...]}}``."""
        cat = lambda xs, shape: torch.cat(xs) if isinstance(xs, list) and xs else (xs if isinstance(xs, Tensor) else torch.zeros(shape))  # noqa: E731
        gp, gl, gd, gi = cat(self.gt_polys, (0, 4, 2)), cat(self.gt_labels, (0,)).long(), cat(self.gt_difficult, (0,)).long(), cat(self.gt_image, (0,)).long()
        dp, ds, dl, di = cat(self.det_polys, (0, 4, 2)), cat(self.det_scores, (0,)), cat(self.det_labels, (0,)).long(), cat(self.det_image, (0,)).long()
        per_class, curves = {}, {}
        for k, name in enumerate(self.class_names):
            g_mask, d_mask = gl == k, dl == k
            n_gt = int(((gd == 0) & g_mask).sum())
            if n_gt == 0:
                per_class[name] = float("nan")
                continue
            order = torch.sort(ds[d_mask], descending=True, stable=True).indices
            d_poly, d_img = dp[d_mask][order], di[d_mask][order]
            g_poly, g_img, g_diff = gp[g_mask], gi[g_mask], gd[g_mask]
            tp, fp = np.zeros(len(order)), np.zeros(len(order))
            taken = torch.zeros(len(g_poly), dtype=torch.bool)
            iou = poly_iou(d_poly.double(), g_poly.double()) if len(order) and len(g_poly) else torch.zeros(len(order), len(g_poly))
            same = d_img[:, None] == g_img[None, :]
            iou = torch.where(same, iou, torch.full_like(iou, -1.0))
            for i in range(len(order)):
                if iou.shape[1] == 0:
                    fp[i] = 1
                    continue
                j = int(iou[i].argmax())
                if float(iou[i, j]) > self.iou_threshold:  # the devkit: strictly above
                    if g_diff[j]:
                        continue  # a difficult object: neither true nor false positive
                    if not taken[j]:
                        tp[i], taken[j] = 1, True
                    else:
                        fp[i] = 1
                else:
                    fp[i] = 1
            ctp, cfp = np.cumsum(tp), np.cumsum(fp)
            recall = ctp / n_gt
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            per_class[name] = voc_ap(recall, precision, self.use_07_metric)
            curves[name] = {"precision": precision.tolist(), "recall": recall.tolist()}
        valid = [v for v in per_class.values() if np.isfinite(v)]
        return {"map_50": float(np.mean(valid)) if valid else float("nan"), "per_class_ap": per_class, "curves": curves}


def _polys(boxes: Tensor) -> Tensor:
    """``(K, 5)`` OBB, ``(K, 4)`` xyxy (axis-aligned rectangles: the VOC protocol for horizontal
    boxes, e.g. precision-recall curves of HBB runs), ``(K, 8)`` or ``(K, 4, 2)`` polygons → ``(K, 4, 2)``."""
    b = boxes.float()
    if b.ndim == 2 and b.shape[1] == 5:
        return obb_to_poly(b)
    if b.ndim == 2 and b.shape[1] == 4:
        return torch.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1)
    return b.reshape(-1, 4, 2)


__all__ = ["HBBMetrics", "OBBMetrics", "voc_ap"]
