"""Box geometry and NMS in pure torch against independent references: polygon IoU against
shapely within 1e-4, the minimum-area rectangle against shapely's, NMS (horizontal, rotated,
class-aware) equal to a brute-force greedy reference on random boxes with tied scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402

from mssdf.downstream.detection.boxes import (  # noqa: E402
    box_iou,
    normalize_obb,
    obb_to_poly,
    paired_giou,
    poly_area,
    poly_iou,
    poly_to_obb,
)
from mssdf.downstream.detection.nms import batched_nms, batched_rotated_nms, nms, reference_nms, rotated_nms  # noqa: E402


def random_obbs(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cxy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 4
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * math.pi
    return torch.cat([cxy, wh, t], 1)


def shapely_iou(p: np.ndarray, q: np.ndarray) -> float:
    a, b = Polygon(p), Polygon(q)
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0


def test_rotated_iou_equals_shapely():
    p, q = obb_to_poly(random_obbs(60, 0)), obb_to_poly(random_obbs(50, 1))
    got = poly_iou(p, q).numpy()
    want = np.array([[shapely_iou(a, b) for b in q.numpy()] for a in p.numpy()])
    assert (want > 0).sum() > 100  # many overlapping pairs
    assert np.abs(got - want).max() < 1e-4
    # identical, nested, touching and corner-sharing boxes
    box = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.3]], dtype=torch.float64)
    inner = torch.tensor([[10.0, 10.0, 4.0, 2.0, 0.3]], dtype=torch.float64)
    assert poly_iou(obb_to_poly(box), obb_to_poly(box)).item() == pytest.approx(1.0, abs=1e-6)
    assert poly_iou(obb_to_poly(box), obb_to_poly(inner)).item() == pytest.approx(0.25, abs=1e-6)
    square, side = torch.tensor([[[0.0, 0], [2, 0], [2, 2], [0, 2]]]), torch.tensor([[[2.0, 0], [4, 0], [4, 2], [2, 2]]])
    assert poly_iou(square, side).item() == pytest.approx(0.0, abs=1e-6)
    axis = torch.tensor([[0.0, 0, 4, 2], [1, 1, 3, 5]])
    polys = torch.stack([axis[:, [0, 1]], axis[:, [2, 1]], axis[:, [2, 3]], axis[:, [0, 3]]], 1)
    assert poly_iou(polys, polys).numpy() == pytest.approx(box_iou(axis, axis).numpy(), abs=1e-6)


def test_obb_round_trip_and_minimum_area_rectangle():
    obb = normalize_obb(random_obbs(40, 2))
    back = poly_to_obb(obb_to_poly(obb).float())
    assert torch.allclose(back[:, :4], obb[:, :4].float(), atol=1e-3)
    assert torch.allclose(torch.sin(2 * back[:, 4]), torch.sin(2 * obb[:, 4].float()), atol=1e-3)
    assert (obb[:, 4] >= -math.pi / 4).all() and (obb[:, 4] < math.pi / 4).all()
    rng = np.random.default_rng(3)
    quads = rng.random((30, 4, 2)) * 50
    rects = poly_to_obb(torch.as_tensor(quads, dtype=torch.float64))
    for quad, rect in zip(quads, rects):
        mrr = Polygon(quad).convex_hull.minimum_rotated_rectangle
        assert float(rect[2] * rect[3]) == pytest.approx(mrr.area, rel=1e-6)
        assert Polygon(obb_to_poly(rect[None])[0].numpy()).buffer(1e-6).contains(Polygon(quad).convex_hull)


def test_giou_and_areas():
    a = torch.tensor([[0.0, 0, 2, 2]])
    assert paired_giou(a, a).item() == 1.0
    assert paired_giou(a, torch.tensor([[4.0, 0, 6, 2]])).item() == pytest.approx(0 - (12 - 8) / 12)
    assert poly_area(obb_to_poly(torch.tensor([[0.0, 0, 3, 5, 0.7]]))).item() == pytest.approx(15.0, rel=1e-6)


def tied_scores(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 8).floor() / 8  # 8 distinct values: many ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_the_brute_force_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    boxes[10] = boxes[11]  # identical boxes with tied scores
    scores = tied_scores(300, seed)
    scores[10] = scores[11]
    iou = box_iou(boxes, boxes)
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == reference_nms(iou, scores, thr)
    exact = float(iou[0][iou[0] > 0][1]) if (iou[0] > 0).sum() > 1 else 0.5
    assert nms(boxes, scores, exact).tolist() == reference_nms(iou, scores, exact)  # IoU equal to the threshold is kept
    labels = torch.randint(0, 3, (300,), generator=g)
    same = labels[:, None] == labels[None, :]
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == reference_nms(torch.where(same, iou, 0), scores, 0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_nms_equals_the_brute_force_reference_with_ties(seed):
    polys = obb_to_poly(random_obbs(150, seed + 10).float())
    scores = tied_scores(150, seed)
    iou = torch.tensor([[shapely_iou(a, b) for b in polys.numpy()] for a in polys.numpy()])
    for thr in (0.1, 0.3, 0.5):
        assert rotated_nms(polys, scores, thr).tolist() == reference_nms(iou, scores, thr)
    labels = torch.randint(0, 3, (150,), generator=torch.Generator().manual_seed(seed))
    same = labels[:, None] == labels[None, :]
    assert batched_rotated_nms(polys, scores, labels, 0.3).tolist() == reference_nms(torch.where(same, iou, 0), scores, 0.3)


def test_empty_inputs():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    assert rotated_nms(torch.zeros(0, 4, 2), torch.zeros(0), 0.5).numel() == 0


def test_stopping_early_keeps_the_first_of_the_full_result():
    polys = obb_to_poly(random_obbs(200, 5).float())
    scores = tied_scores(200, 5)
    labels = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(5))
    full = batched_rotated_nms(polys, scores, labels, 0.3)
    assert batched_rotated_nms(polys, scores, labels, 0.3, max_keep=7).tolist() == full[:7].tolist()
    assert rotated_nms(polys, scores, 0.3, max_keep=5).tolist() == rotated_nms(polys, scores, 0.3)[:5].tolist()
