"""FCOS target assignment on the pyramid's points, for horizontal and oriented boxes.

Every cell of every pyramid level is a point at the cell centre ``((j + ½)·s, (i + ½)·s)``.
A point is a positive of a ground-truth box when (FCOS with centre sampling):

1. it lies inside the box (HBB: all four distances to the sides > 0; OBB: the same in the
   box's own frame);
2. it lies within ``radius · s`` of the box centre along both of the box's axes (centre
   sampling; the box itself bounds the region);
3. the largest of its four distances falls in the level's range ``(lo, hi]``:
   ``lo = 4·s`` (0 on the finest level), ``hi = 8·s`` (∞ on the coarsest) — for strides
   doubling per level the ranges tile ``(0, ∞)`` — FCOS's 64/128/256/512 for strides 8…128.

A point claimed by several boxes takes the one of smallest area. Targets per point: the class
(``num_classes`` = background), the four distances ``l, t, r, b`` (in the box frame for OBB),
the centre-ness ``sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b))`` and, for OBB, the angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def level_points(sizes: list[tuple[int, int]], strides: list[int], device: torch.device | None = None) -> list[Tensor]:
    """``[(h_l, w_l)]``, ``[s_l]`` → per level ``(h_l·w_l, 2)`` point coordinates ``(x, y)``, row-major."""
    out = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        out.append(torch.stack([(xs.reshape(-1) + 0.5) * s, (ys.reshape(-1) + 0.5) * s], -1).float())
    return out


def level_ranges(strides: list[int]) -> list[tuple[float, float]]:
    """The regression range ``(lo, hi]`` of each level (module doc)."""
    n = len(strides)
    return [(0.0 if i == 0 else 4.0 * s, math.inf if i == n - 1 else 8.0 * s) for i, s in enumerate(strides)]


@dataclass
class Targets:
    """Per-point targets of one image over all levels (points concatenated level by level)."""

    labels: Tensor  # (P,) int64, num_classes = background
    distances: Tensor  # (P, 4) l, t, r, b (pixels; box frame for OBB)
    centerness: Tensor  # (P,)
    angles: Tensor  # (P,) OBB angle (0 for HBB)
    matched: Tensor  # (P,) index of the matched box, -1 = none

    @property
    def positive(self) -> Tensor:
        return self.matched >= 0


def _distances(points: Tensor, boxes: Tensor, obb: bool) -> tuple[Tensor, Tensor]:
    """``(P, 2)`` points, ``(K, 4|5)`` boxes → ``(P, K, 4)`` distances l, t, r, b and ``(P, K, 2)``
    the offsets from the box centre along the box axes."""
    if obb:
        cx, cy, w, h, t = boxes.unbind(-1)
        dx, dy = points[:, None, 0] - cx[None], points[:, None, 1] - cy[None]
        cos, sin = torch.cos(t)[None], torch.sin(t)[None]
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        return torch.stack([w / 2 + u, h / 2 + v, w / 2 - u, h / 2 - v], -1), torch.stack([u, v], -1)
    x, y = points[:, None, 0], points[:, None, 1]
    d = torch.stack([x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y], -1)
    centre = torch.stack([x - (boxes[None, :, 0] + boxes[None, :, 2]) / 2, y - (boxes[None, :, 1] + boxes[None, :, 3]) / 2], -1)
    return d, centre


def assign(points: list[Tensor], strides: list[int], boxes: Tensor, labels: Tensor, num_classes: int, obb: bool = False,
           radius: float = 1.5) -> Targets:
    """FCOS targets of one image (module doc).

    Args:
        points: per level ``(P_l, 2)`` (:func:`level_points`).
        boxes: ``(K, 4)`` xyxy or ``(K, 5)`` OBB ``cx, cy, w, h, theta``; labels: ``(K,)`` in ``[0, num_classes)``.
    """
    device = points[0].device
    allp = torch.cat(points)
    p = allp.shape[0]
    if boxes.numel() == 0:
        zeros = torch.zeros(p, device=device)
        return Targets(torch.full((p,), num_classes, dtype=torch.long, device=device), torch.zeros(p, 4, device=device),
                       zeros, zeros.clone(), torch.full((p,), -1, dtype=torch.long, device=device))
    boxes = boxes.to(device).float()
    stride = torch.cat([torch.full((len(pt),), float(s), device=device) for pt, s in zip(points, strides)])
    bounds = torch.cat([torch.tensor([r], device=device).expand(len(pt), 2) for pt, r in zip(points, level_ranges(strides))])
    d, centre = _distances(allp, boxes, obb)  # (P, K, 4), (P, K, 2)
    inside = d.min(-1).values > 0
    near = (centre.abs() < radius * stride[:, None, None]).all(-1)
    reach = d.max(-1).values
    in_range = (reach > bounds[:, None, 0]) & (reach <= bounds[:, None, 1])
    area = boxes[:, 2] * boxes[:, 3] if obb else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(inside & near & in_range, area[None].expand(p, -1), torch.full_like(reach, math.inf))
    best, matched = cost.min(-1)
    matched = torch.where(torch.isfinite(best), matched, torch.full_like(matched, -1))
    pos = matched >= 0
    idx = matched.clamp(min=0)
    dist = d[torch.arange(p, device=device), idx]  # (P, 4)
    lr, tb = dist[:, [0, 2]], dist[:, [1, 3]]
    ctr = torch.sqrt((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)).clamp(min=0)
                     * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)).clamp(min=0))
    return Targets(
        labels=torch.where(pos, labels.to(device)[idx], torch.full_like(idx, num_classes)),
        distances=torch.where(pos[:, None], dist, torch.zeros_like(dist)),
        centerness=torch.where(pos, ctr, torch.zeros_like(ctr)),
        angles=torch.where(pos, boxes[idx, 4], torch.zeros_like(ctr)) if obb else torch.zeros_like(ctr),
        matched=matched,
    )


__all__ = ["Targets", "assign", "level_points", "level_ranges"]
