"""Box geometry in pure torch: horizontal boxes (HBB), oriented boxes (OBB), polygons.

Conventions:

* HBB ``(N, 4)`` ``x1, y1, x2, y2`` in pixels (``x2 > x1``, ``y2 > y1`` for a box with area).
* OBB ``(N, 5)`` ``cx, cy, w, h, theta``: centre, side lengths, and the angle (radians) of
  the ``w`` side against the x axis (image axes: x right, y down, so a positive angle turns
  clockwise on screen). :func:`normalize_obb` maps every OBB to ``theta`` in
  ``[-pi/4, pi/4)`` by swapping the sides (the "le90"-like convention of one angle per
  rectangle up to the 180° symmetry).
* Polygons ``(N, 4, 2)`` corner coordinates (DOTA's ``x1 y1 … x4 y4`` reshaped).

:func:`poly_iou` is the IoU of convex quadrilaterals, computed as the area of the convex
intersection: the corners of each polygon inside the other and the crossings of their
edges, sorted by angle around their mean and integrated with the shoelace formula. It is
differentiable almost everywhere in the corners (the rotated-IoU loss uses it) and equals
an independent polygon library (shapely) within 1e-4 (tested). Nothing here needs a
compiled operator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# ----------------------------------------------------------------------------- horizontal boxes
def box_area(boxes: Tensor) -> Tensor:
    """``(N, 4)`` xyxy → ``(N,)`` areas (0 for degenerate boxes)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(N, 4)``, ``(M, 4)`` xyxy → ``(N, M)`` IoU (0 where the union is empty)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def paired_giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of matching rows: ``(N, 4)``, ``(N, 4)`` xyxy → ``(N,)``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp(min=1e-12)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)


# ----------------------------------------------------------------------------- oriented boxes
def obb_to_poly(obb: Tensor) -> Tensor:
    """``(N, 5)`` ``cx, cy, w, h, theta`` → ``(N, 4, 2)`` corners, counter-clockwise in image
    axes order ``(+w/2, +h/2), (−w/2, +h/2), (−w/2, −h/2), (+w/2, −h/2)`` rotated by ``theta``."""
    cx, cy, w, h, t = obb.unbind(-1)
    cos, sin = torch.cos(t), torch.sin(t)
    dx = torch.stack([w, -w, -w, w], -1) / 2
    dy = torch.stack([h, h, -h, -h], -1) / 2
    x = cx[:, None] + dx * cos[:, None] - dy * sin[:, None]
    y = cy[:, None] + dx * sin[:, None] + dy * cos[:, None]
    return torch.stack([x, y], -1)


def normalize_obb(obb: Tensor) -> Tensor:
    """The same rectangles with ``theta`` in ``[-pi/4, pi/4)`` (sides swapped where needed)."""
    cx, cy, w, h, t = obb.unbind(-1)
    t = torch.remainder(t + math.pi / 4, math.pi) - math.pi / 4  # [-pi/4, 3pi/4)
    swap = t >= math.pi / 4
    t = torch.where(swap, t - math.pi / 2, t)
    return torch.stack([cx, cy, torch.where(swap, h, w), torch.where(swap, w, h), t], -1)


def poly_to_obb(poly: Tensor) -> Tensor:
    """``(N, 4, 2)`` (or ``(N, 8)``) quadrilaterals → ``(N, 5)`` minimum-area enclosing rectangles
    (normalised, :func:`normalize_obb`). Candidate orientations are the directions of all six
    corner pairs, which include every edge of the convex hull: the minimum over them is the
    minimum-area rectangle (rotating calipers)."""
    p = poly.reshape(-1, 4, 2)
    p = p if p.is_floating_point() else p.float()
    i, j = torch.triu_indices(4, 4, offset=1)
    d = p[:, j] - p[:, i]  # (N, 6, 2)
    ang = torch.atan2(d[..., 1], d[..., 0])  # (N, 6)
    cos, sin = torch.cos(ang)[..., None], torch.sin(ang)[..., None]  # (N, 6, 1)
    u = p[:, None, :, 0] * cos + p[:, None, :, 1] * sin  # (N, 6, 4) along the direction
    v = -p[:, None, :, 0] * sin + p[:, None, :, 1] * cos  # across
    w, h = u.amax(-1) - u.amin(-1), v.amax(-1) - v.amin(-1)
    k = (w * h).argmin(-1)
    pick = lambda x: x.gather(1, k[:, None])[:, 0]  # noqa: E731
    a, c, s = pick(ang), pick(cos[..., 0]), pick(sin[..., 0])
    uc = (pick(u.amax(-1)) + pick(u.amin(-1))) / 2
    vc = (pick(v.amax(-1)) + pick(v.amin(-1))) / 2
    cx, cy = uc * c - vc * s, uc * s + vc * c
    return normalize_obb(torch.stack([cx, cy, pick(w), pick(h), a], -1))


def poly_bounds(poly: Tensor) -> Tensor:
    """``(N, 4, 2)`` → ``(N, 4)`` the enclosing horizontal boxes."""
    return torch.cat([poly.amin(1), poly.amax(1)], -1)


def poly_area(poly: Tensor) -> Tensor:
    """``(..., V, 2)`` → ``(...)`` absolute shoelace area."""
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1).abs()


def _ccw(poly: Tensor) -> Tensor:
    """Reorder ``(..., 4, 2)`` corners counter-clockwise (in the x-right, y-up sense of the shoelace sign)."""
    x, y = poly[..., 0], poly[..., 1]
    signed = (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1)
    return torch.where((signed < 0)[..., None, None], poly.flip(-2), poly)


def _inside(points: Tensor, poly: Tensor, eps: float) -> Tensor:
    """``(..., P, 2)`` points inside (or on) the convex, counter-clockwise ``(..., 4, 2)`` polygon → ``(..., P)``."""
    a, b = poly, poly.roll(-1, -2)  # edges a -> b
    e = (b - a)[..., None, :, :]  # (..., 1, 4, 2)
    r = points[..., :, None, :] - a[..., None, :, :]  # (..., P, 4, 2)
    cross = e[..., 0] * r[..., 1] - e[..., 1] * r[..., 0]
    return (cross >= -eps).all(-1)


def intersection_area(p: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Area of the intersection of matching convex quadrilaterals ``(..., 4, 2)`` → ``(...)``."""
    p, q = _ccw(p), _ccw(q)
    scale = torch.maximum(poly_area(p), poly_area(q)).clamp(min=1e-12).detach()[..., None, None].sqrt()
    ps, qs = p / scale, q / scale  # unit scale: one tolerance for every box size
    a1, b1 = ps, ps.roll(-1, -2)
    a2, b2 = qs, qs.roll(-1, -2)
    d1 = (b1 - a1)[..., :, None, :]  # (..., 4, 1, 2)
    d2 = (b2 - a2)[..., None, :, :]  # (..., 1, 4, 2)
    r = a2[..., None, :, :] - a1[..., :, None, :]  # (..., 4, 4, 2)
    den = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]
    ok = den.abs() > 1e-12
    den_safe = torch.where(ok, den, torch.ones_like(den))
    t = (r[..., 0] * d2[..., 1] - r[..., 1] * d2[..., 0]) / den_safe
    u = (r[..., 0] * d1[..., 1] - r[..., 1] * d1[..., 0]) / den_safe
    cross_ok = ok & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    crossings = (a1[..., :, None, :] + t[..., None] * d1).flatten(-3, -2)  # (..., 16, 2)
    pts = torch.cat([ps, qs, crossings], -2)  # (..., 24, 2)
    valid = torch.cat([_inside(ps, qs, eps), _inside(qs, ps, eps), cross_ok.flatten(-2)], -1)
    count = valid.sum(-1)
    w = valid.to(pts.dtype)[..., None]
    centre = (pts * w).sum(-2) / count.clamp(min=1)[..., None].to(pts.dtype)
    rel = pts - centre[..., None, :]
    ang = torch.atan2(rel[..., 1], rel[..., 0])
    ang = torch.where(valid, ang, torch.full_like(ang, 10.0))  # invalid points sort last
    order = ang.argsort(-1)
    sorted_pts = pts.gather(-2, order[..., None].expand_as(pts))
    sorted_valid = valid.gather(-1, order)
    first = sorted_pts[..., :1, :].expand_as(sorted_pts)
    sorted_pts = torch.where(sorted_valid[..., None], sorted_pts, first)  # padding repeats the first point: zero area
    x, y = sorted_pts[..., 0], sorted_pts[..., 1]
    area = 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1).abs()
    return torch.where(count >= 3, area, torch.zeros_like(area)) * scale[..., 0, 0] ** 2


def paired_poly_iou(p: Tensor, q: Tensor) -> Tensor:
    """IoU of matching convex quadrilaterals ``(N, 4, 2)``, ``(N, 4, 2)`` → ``(N,)``."""
    inter = intersection_area(p, q)
    union = poly_area(p) + poly_area(q) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def poly_iou(p: Tensor, q: Tensor, chunk: int = 4096) -> Tensor:
    """``(N, 4, 2)``, ``(M, 4, 2)`` convex quadrilaterals → ``(N, M)`` IoU (rows in chunks;
    pairs whose enclosing boxes do not overlap are 0 without the polygon computation)."""
    n, m = p.shape[0], q.shape[0]
    out = torch.zeros(n, m, dtype=torch.float32 if not p.is_floating_point() else p.dtype, device=p.device)
    if n == 0 or m == 0:
        return out
    bp, bq = poly_bounds(p), poly_bounds(q)
    rows = max(1, chunk // max(m, 1))
    for s in range(0, n, rows):
        hb = box_iou(bp[s : s + rows], bq) > 0
        i, j = hb.nonzero(as_tuple=True)
        if i.numel():
            out[s + i, j] = paired_poly_iou(p[s + i], q[j]).to(out.dtype)
    return out


# ----------------------------------------------------------------------------- augmentation
def rot90_flip_points(points: Tensor, k: int, flip: bool, h: int, w: int) -> Tensor:
    """Move ``(..., 2)`` pixel coordinates ``(x, y)`` as ``torch.rot90(image, k, dims=(-2, -1))``
    then (``flip``) ``torch.flip(·, dims=(-1,))`` move an ``h × w`` image's content.

    One quarter turn maps ``(x, y)`` to ``(y, w − x)`` and the image to ``w × h``."""
    x, y = points[..., 0], points[..., 1]
    for _ in range(k % 4):
        x, y = y, w - x
        h, w = w, h
    if flip:
        x = w - x
    return torch.stack([x, y], -1)


def rot90_flip_boxes(boxes: Tensor, k: int, flip: bool, h: int, w: int) -> Tensor:
    """``(N, 4)`` xyxy or ``(N, 5)`` OBB boxes moved with their ``h × w`` image (:func:`rot90_flip_points`)."""
    if boxes.shape[0] == 0:
        return boxes
    if boxes.shape[1] == 4:
        corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], 1)
        moved = rot90_flip_points(corners, k, flip, h, w)
        return torch.cat([moved.amin(1), moved.amax(1)], -1)
    return poly_to_obb(rot90_flip_points(obb_to_poly(boxes), k, flip, h, w)).to(boxes.dtype)


__all__ = ["rot90_flip_points", "rot90_flip_boxes", "box_area", "box_iou", "paired_giou", "obb_to_poly", "normalize_obb", "poly_to_obb", "poly_bounds", "poly_area",
           "intersection_area", "paired_poly_iou", "poly_iou"]
