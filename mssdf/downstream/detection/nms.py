"""Non-maximum suppression in pure torch: horizontal and rotated boxes, batched and class-aware.

torchvision's compiled ``nms`` / ``batched_nms`` cannot load with the CPU torch this
project pins (``mssdf/_torchvision_compat.py``), so nothing here calls them. The rule is
the usual greedy one, and the same for every function:

* boxes are visited by decreasing score; **ties keep the input order** (a stable sort);
* a visited box is kept unless a kept box overlaps it with IoU **greater than** the
  threshold (torchvision's convention: IoU equal to the threshold is kept);
* the kept indices are returned in visiting order (decreasing score).

Class-aware (:func:`batched_nms`): boxes of different classes (or images) never suppress
each other: each class (or image) runs alone, and the kept boxes of all of them are ordered by
decreasing score (ties by index).

Implementation: horizontal boxes — the suppression pairs as a boolean ``IoU > threshold``
matrix over the sorted boxes in row blocks (``block`` rows at a time), then one greedy pass
over the sorted boxes OR-ing the rows of the kept ones; rotated boxes — one iteration per kept
box, its polygon IoU against the boxes still standing whose enclosing boxes touch it. Both equal a brute-force greedy
reference on random boxes with tied scores (tested) and are benchmarked against it
(``benchmarks/bench_nms.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mssdf.downstream.detection.boxes import box_iou, paired_poly_iou, poly_area, poly_bounds


def _greedy(over: Tensor) -> Tensor:
    """Greedy pass over a sorted ``(N, N)`` boolean suppression matrix → kept positions (sorted order)."""
    n = over.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    over = over.cpu()
    for i in range(n):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return torch.tensor(keep, dtype=torch.long)


def _sorted(scores: Tensor) -> Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, block: int = 2048) -> Tensor:
    """Greedy NMS of ``(N, 4)`` xyxy boxes with ``(N,)`` scores → kept indices, by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = _sorted(scores)
    b = boxes[order].float()
    n = b.shape[0]
    over = torch.zeros(n, n, dtype=torch.bool, device=b.device)
    for s in range(0, n, block):
        over[s : s + block] = box_iou(b[s : s + block], b) > iou_threshold
    return order[_greedy(over).to(order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware (or per-image) NMS: boxes with different ``groups`` ids never suppress each other.

    Each group runs alone (its IoU matrix is ``n_g²``, not ``N²``), then the kept indices are
    ordered by decreasing score, ties by index — the order one NMS over all boxes would give."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = [idx[nms(boxes[idx], scores[idx], iou_threshold)] for g in groups.unique()
            for idx in [torch.nonzero(groups == g, as_tuple=True)[0]]]
    kept = torch.cat(keep).sort().values
    return kept[_sorted(scores[kept])]


def rotated_nms(polys: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy NMS of ``(N, 4, 2)`` convex quadrilaterals (e.g. :func:`~mssdf.downstream.detection.boxes.obb_to_poly`).

    The loop runs once per *kept* box: its IoU with the boxes still standing removes the ones
    above the threshold — computed as polygons only where the bound ``area(enclosing boxes'
    intersection) / max(polygon areas)``, which no polygon IoU exceeds, is above the threshold. Crowded candidates are suppressed in few iterations. ``max_keep``: stop once that
    many are kept (the first ``max_keep`` of the full result, at a fraction of its cost)."""
    if polys.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=polys.device)
    order = _sorted(scores)
    p = polys[order].float()
    bounds = poly_bounds(p)
    area = poly_area(p)
    alive = torch.arange(p.shape[0], device=p.device)
    keep = []
    while alive.numel():
        i, rest = alive[0], alive[1:]
        keep.append(int(i))
        if rest.numel() == 0 or (max_keep is not None and len(keep) >= max_keep):
            break
        # upper bound of the polygon IoU: the enclosing boxes' intersection over the larger polygon area
        lt = torch.maximum(bounds[i, :2], bounds[rest, :2])
        rb = torch.minimum(bounds[i, 2:], bounds[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        touching = inter / torch.maximum(area[i], area[rest]).clamp(min=1e-12) > iou_threshold
        drop = torch.zeros_like(touching)
        if touching.any():
            cand = rest[touching]
            drop[touching] = paired_poly_iou(p[i].expand(len(cand), 4, 2), p[cand]) > iou_threshold
        alive = rest[~drop]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_rotated_nms(polys: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                        max_keep: int | None = None) -> Tensor:
    """Class-aware rotated NMS → kept indices, by decreasing score over all groups (the first
    ``max_keep`` of them: each group stops after ``max_keep``, which cannot change them)."""
    if polys.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=polys.device)
    keep = [idx[rotated_nms(polys[idx], scores[idx], iou_threshold, max_keep)] for g in groups.unique()
            for idx in [torch.nonzero(groups == g, as_tuple=True)[0]]]
    kept = torch.cat(keep).sort().values  # index order, so that the stable sort breaks score ties by index
    kept = kept[_sorted(scores[kept])]
    return kept if max_keep is None else kept[:max_keep]


def reference_nms(iou: Tensor, scores: Tensor, iou_threshold: float) -> list[int]:
    """Brute-force greedy NMS on a precomputed ``(N, N)`` IoU matrix (the tests' and the
    benchmark's reference): Python loops, the same tie and threshold rules."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    for i in order:
        if all(float(iou[i, k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep


__all__ = ["nms", "batched_nms", "rotated_nms", "batched_rotated_nms", "reference_nms"]
