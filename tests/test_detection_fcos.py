"""The FCOS detector's parts: assignment properties (centre sampling, level ranges, smallest
box wins, OBB at angle 0 = HBB), decoding a perfect prediction back to the ground truth,
the metrics (ground truth as predictions scores 1; VOC AP against a hand computation), and
a tiny detector overfitting one image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mssdf.downstream.detection.assign import assign, level_points, level_ranges
from mssdf.downstream.detection.boxes import obb_to_poly
from mssdf.downstream.detection.fcos import FCOSHead, decode, fcos_loss
from mssdf.downstream.detection.metrics import HBBMetrics, OBBMetrics, voc_ap

STRIDES = [2, 4, 8, 16]
SIZES = [(32, 32), (16, 16), (8, 8), (4, 4)]  # a 64 px image


def test_level_ranges_tile_the_half_line():
    r = level_ranges(STRIDES)
    assert r[0][0] == 0 and math.isinf(r[-1][1])
    assert all(r[i][1] == r[i + 1][0] for i in range(3))


def test_assignment_properties():
    pts = level_points(SIZES, STRIDES)
    boxes = torch.tensor([[10.0, 10, 22, 20], [30, 30, 62, 62]])  # a small and a large box
    t = assign(pts, STRIDES, boxes, torch.tensor([0, 1]), 2)
    allp = torch.cat(pts)
    for k in (0, 1):
        pos = t.matched == k
        assert pos.any()
        p = allp[pos]
        assert ((p[:, 0] > boxes[k, 0]) & (p[:, 0] < boxes[k, 2]) & (p[:, 1] > boxes[k, 1]) & (p[:, 1] < boxes[k, 3])).all()
        reach = t.distances[pos].max(-1).values
        level = torch.cat([torch.full((len(x),), i) for i, x in enumerate(pts)])[pos]
        for lv, d in zip(level.tolist(), reach.tolist()):  # every positive on the level whose range holds its reach
            lo, hi = level_ranges(STRIDES)[lv]
            assert lo < d <= hi
        d = t.distances[pos]
        assert torch.allclose(d[:, 0] + d[:, 2], (boxes[k, 2] - boxes[k, 0]).expand(len(d)))
    assert (t.labels[t.matched == 1] == 1).all() and (t.labels[t.matched < 0] == 2).all()
    assert t.centerness[t.positive].gt(0).all() and t.centerness[t.positive].le(1).all()
    # overlapping boxes: the smaller claims the shared points
    nested = torch.tensor([[0.0, 0, 40, 40], [10, 10, 30, 30]])
    tn = assign(pts, STRIDES, nested, torch.tensor([0, 0]), 1, radius=100.0)
    x, y = allp[:, 0], allp[:, 1]
    inner = (x > 10) & (x < 30) & (y > 10) & (y < 30)
    reach = torch.stack([x - 10, y - 10, 30 - x, 30 - y], -1).max(-1).values
    ranges = torch.cat([torch.tensor([r]).expand(len(p), 2) for p, r in zip(pts, level_ranges(STRIDES))])
    claims = inner & (reach > ranges[:, 0]) & (reach <= ranges[:, 1])  # points where the small box is a candidate
    assert claims.any() and (tn.matched[claims] == 1).all()


def test_oriented_assignment_at_angle_zero_equals_horizontal():
    pts = level_points(SIZES, STRIDES)
    hbb = torch.tensor([[10.0, 12, 30, 20], [33, 5, 60, 50]])
    obb = torch.stack([(hbb[:, 0] + hbb[:, 2]) / 2, (hbb[:, 1] + hbb[:, 3]) / 2, hbb[:, 2] - hbb[:, 0], hbb[:, 3] - hbb[:, 1],
                       torch.zeros(2)], 1)
    a, b = assign(pts, STRIDES, hbb, torch.tensor([0, 1]), 2), assign(pts, STRIDES, obb, torch.tensor([0, 1]), 2, obb=True)
    assert torch.equal(a.matched, b.matched) and torch.allclose(a.distances, b.distances, atol=1e-5)
    turned = obb.clone()
    turned[:, 2], turned[:, 3], turned[:, 4] = obb[:, 3], obb[:, 2], math.pi / 2  # the same rectangles
    c = assign(pts, STRIDES, turned, torch.tensor([0, 1]), 2, obb=True)
    assert torch.equal(a.matched, c.matched)


def perfect_output(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, obb: bool) -> dict:
    """Head outputs that are exactly the targets (logits ±10)."""
    pts = level_points(SIZES, STRIDES)
    t = assign(pts, STRIDES, boxes, labels, num_classes, obb=obb)
    out: dict = {"cls": [], "reg": [], "ctr": [], "angle": []}
    start = 0
    for (h, w) in SIZES:
        n = h * w
        sl = slice(start, start + n)
        cls = torch.full((n, num_classes), -10.0)
        pos = t.matched[sl] >= 0
        cls[pos, t.labels[sl][pos]] = 10.0
        out["cls"].append(cls.T.reshape(1, num_classes, h, w))
        out["reg"].append(t.distances[sl].clamp(min=1e-3).T.reshape(1, 4, h, w))
        out["ctr"].append(torch.where(pos, 10.0, -10.0).reshape(1, 1, h, w))
        out["angle"].append(t.angles[sl].reshape(1, 1, h, w))
        start += n
    return out


@pytest.mark.parametrize("obb", [False, True])
def test_decoding_a_perfect_prediction_gives_back_the_boxes_and_map_1(obb):
    if obb:
        boxes = torch.tensor([[20.0, 20, 16, 8, 0.3], [45, 40, 20, 10, -0.5]])
    else:
        boxes = torch.tensor([[10.0, 10, 26, 20], [36, 30, 56, 50]])
    labels = torch.tensor([0, 1])
    dets = decode(perfect_output(boxes, labels, 2, obb), STRIDES, obb=obb)[0]
    assert len(dets["boxes"]) == 2 and sorted(dets["labels"].tolist()) == [0, 1]
    for k in range(2):
        got = dets["boxes"][dets["labels"] == k][0]
        if obb:
            assert torch.allclose(obb_to_poly(got[None]), obb_to_poly(boxes[k : k + 1]), atol=1e-3)
        else:
            assert torch.allclose(got, boxes[k], atol=1e-3)
    metric = OBBMetrics(["a", "b"]) if obb else HBBMetrics(["a", "b"])
    metric.update([dets], [{"boxes": boxes, "labels": labels}])
    result = metric.compute()
    assert result["map_50"] == pytest.approx(1.0)


def test_ground_truth_as_predictions_scores_1_over_many_images():
    rng = np.random.default_rng(0)
    hbb, obb = HBBMetrics(["a", "b", "c"]), OBBMetrics(["a", "b", "c"])
    for _ in range(5):
        xy = torch.as_tensor(rng.random((6, 2)) * 50, dtype=torch.float32)
        boxes = torch.cat([xy, xy + 4 + torch.as_tensor(rng.random((6, 2)) * 20, dtype=torch.float32)], 1)
        labels = torch.as_tensor(rng.integers(0, 3, 6))
        hbb.update([{"boxes": boxes, "scores": torch.ones(6), "labels": labels}], [{"boxes": boxes, "labels": labels}])
        o = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2], torch.as_tensor(rng.random((6, 1)))], 1)
        obb.update([{"boxes": o, "scores": torch.ones(6), "labels": labels}], [{"boxes": o, "labels": labels}])
    assert hbb.compute()["map"] == pytest.approx(1.0) and obb.compute()["map_50"] == pytest.approx(1.0)


def test_dota_ap_against_a_hand_computation():
    square = lambda x: torch.tensor([[x + 5.0, 5.0, 10.0, 10.0, 0.0]])  # noqa: E731
    truth = [{"boxes": torch.cat([square(0), square(20), square(40)]), "labels": torch.zeros(3, dtype=torch.long),
              "difficult": torch.tensor([0, 0, 1])}]
    # scores: a hit (0.9), a miss (0.8), a duplicate of the first (0.7), a hit on the difficult one (0.6, ignored), a hit (0.5)
    preds = [{"boxes": torch.cat([square(0), square(70), square(0.5), square(40), square(20)]),
              "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), "labels": torch.zeros(5, dtype=torch.long)}]
    metric = OBBMetrics(["x"], use_07_metric=False)
    metric.update(preds, truth)
    r = metric.compute()
    # ranked TP, FP, FP, (ignored), TP over 2 objects: recall 0.5, 0.5, 0.5, 1.0; precision 1, 1/2, 1/3, 2/4
    assert r["curves"]["x"]["recall"] == pytest.approx([0.5, 0.5, 0.5, 0.5, 1.0])
    assert r["map_50"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)


@pytest.mark.parametrize("obb", [False, True])
def test_a_tiny_detector_overfits_one_image(obb):
    torch.manual_seed(0)
    maps = [torch.randn(1, c, h, w) for c, (h, w) in zip([8, 16, 32, 32], SIZES)]
    head = FCOSHead([8, 16, 32, 32], STRIDES, 2, channels=16, num_convs=1, obb=obb)
    boxes = torch.tensor([[20.0, 20, 16, 8, 0.3], [45, 40, 20, 10, -0.5]]) if obb else torch.tensor([[10.0, 10, 26, 20], [36, 30, 56, 50]])
    target = [{"boxes": boxes, "labels": torch.tensor([0, 1])}]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, terms = fcos_loss(head(maps), STRIDES, target, 2, obb=obb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert terms["positives"] > 0
