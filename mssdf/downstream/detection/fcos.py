"""An anchor-free detector (FCOS) on the ViT feature pyramid, horizontal or oriented boxes.

:class:`FCOSHead` reads the backbone's four maps (:class:`~mssdf.downstream.backbone.ViTBackbone`,
strides ``p/4 … 2p``), brings each to ``channels`` with a 1×1 convolution, and runs two
towers shared across levels (``num_convs`` × conv3×3-GroupNorm-ReLU): classification logits
(one sigmoid per class), and regression — four distances ``l, t, r, b`` (``exp`` of a
per-level learnt scale × the raw output, × the stride), centre-ness, and for oriented boxes
the angle ``theta = (sigmoid(a) − ½)·π/2`` in ``(−π/4, π/4)``.

Losses (:func:`fcos_loss`): sigmoid focal loss (α 0.25, γ 2) over every point, normalised
by the positive count; box loss on the positives weighted by their centre-ness target —
GIoU loss for horizontal boxes, ``1 − IoU`` of the rotated rectangles (the exact polygon IoU
of :mod:`mssdf.downstream.detection.boxes`, differentiable in the corners) for oriented ones; BCE on
centre-ness. Decoding (:func:`decode`): score ``sqrt(sigmoid(cls)·sigmoid(ctr))``, the top
``pre_nms`` points per level above ``score_threshold``, class-aware NMS in pure torch,
``max_detections`` per image.

Why anchor-free: the paper's peers report two-stage detectors (Faster R-CNN for DIOR,
Oriented R-CNN for DOTA) whose RPN, RoI Align and rotated RoI Align are compiled operators
(torchvision / mmcv) that this project cannot load on its CPU torch; FCOS needs only
convolutions and the pure-torch NMS, and the same head serves both box kinds. Numbers from
it compare initialisations with each other, not with the peers' two-stage tables
(``docs/method.md``).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mssdf.downstream.detection.assign import Targets, assign, level_points
from mssdf.downstream.detection.boxes import obb_to_poly, paired_giou, paired_poly_iou
from mssdf.downstream.detection.nms import batched_nms, batched_rotated_nms


def _groups(c: int) -> int:
    return math.gcd(c, 32) or 1


class Scale(nn.Module):
    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared FCOS towers over pyramid levels (module doc)."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 64, num_convs: int = 2,
                 obb: bool = False, prior: float = 0.01):
        super().__init__()
        self.strides, self.num_classes, self.obb = list(strides), num_classes, obb
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(_groups(channels), channels),
                           nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr = nn.Conv2d(channels, 1, 3, padding=1)
        self.angle = nn.Conv2d(channels, 1, 3, padding=1) if obb else None
        self.scales = nn.ModuleList(Scale() for _ in strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))  # focal-loss prior: few positives at start

    def forward(self, maps: list[Tensor]) -> dict[str, list[Tensor]]:
        """Four ``(B, C_l, h_l, w_l)`` maps → ``{"cls": [(B, K, h, w)], "reg": [(B, 4, h, w)] pixels,
        "ctr": [(B, 1, h, w)], "angle": [(B, 1, h, w)] radians (OBB)}``."""
        out: dict[str, list[Tensor]] = {"cls": [], "reg": [], "ctr": [], "angle": []}
        for x, lat, scale, s in zip(maps, self.lateral, self.scales, self.strides):
            x = lat(x)
            c, r = self.cls_tower(x), self.reg_tower(x)
            out["cls"].append(self.cls(c))
            out["reg"].append(torch.exp(scale(self.reg(r)).float().clamp(max=10.0)) * s)
            out["ctr"].append(self.ctr(r))
            if self.angle is not None:
                out["angle"].append((torch.sigmoid(self.angle(r).float()) - 0.5) * (math.pi / 2))
        return out


class DetectionModel(nn.Module):
    """Backbone (its pyramid) + :class:`FCOSHead`."""

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int = 64, num_convs: int = 2, obb: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = FCOSHead(list(backbone.out_channels), list(backbone.strides), num_classes, channels, num_convs, obb)

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, list]:
        """``{m: (B, C_m, H, W)}`` → the head's outputs (:meth:`FCOSHead.forward`) and ``"strides"``."""
        return {**self.head(self.backbone(images)), "strides": list(self.head.strides)}


# ----------------------------------------------------------------------------- training
def _flat(maps: list[Tensor]) -> Tensor:
    """``[(B, C, h, w)]`` → ``(B, Σ h·w, C)`` (row-major per level, levels concatenated)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss of ``(N, K)`` logits against ``(N, K)`` 0/1 targets (RetinaNet)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * (1 - p_t) ** gamma
    return (weight * ce).sum()


def _boxes_from(points: Tensor, dist: Tensor, angle: Tensor | None) -> Tensor:
    """``(P, 2)`` points, ``(P, 4)`` l, t, r, b → ``(P, 4)`` xyxy, or ``(P, 5)`` OBB with ``angle``."""
    if angle is None:
        return torch.cat([points - dist[:, :2], points + dist[:, 2:]], -1)
    u, v = (dist[:, 0] - dist[:, 2]) / 2, (dist[:, 1] - dist[:, 3]) / 2  # the point's offset from the centre, box frame
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = points[:, 0] - (u * cos - v * sin), points[:, 1] - (u * sin + v * cos)
    return torch.stack([cx, cy, dist[:, 0] + dist[:, 2], dist[:, 1] + dist[:, 3], angle], -1)


def compute_targets(out: dict[str, list[Tensor]], strides: list[int], targets: list[dict[str, Tensor]], num_classes: int,
                    obb: bool) -> tuple[Tensor, list[Targets]]:
    """Points of every level and the per-image :class:`~mssdf.downstream.detection.assign.Targets`."""
    sizes = [tuple(m.shape[-2:]) for m in out["cls"]]
    points = level_points(sizes, strides, out["cls"][0].device)
    return torch.cat(points), [assign(points, strides, t["boxes"], t["labels"], num_classes, obb) for t in targets]


def fcos_loss(out: dict[str, list[Tensor]], strides: list[int], targets: list[dict[str, Tensor]], num_classes: int,
              obb: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Focal + (G)IoU + centre-ness losses of a batch (module doc).

    Args:
        targets: per image ``{"boxes": (K, 4) xyxy | (K, 5) OBB, "labels": (K,)}``.
    Returns:
        ``(loss, {"cls", "box", "ctr": detached terms, "positives"})``.
    """
    points, assigned = compute_targets(out, strides, targets, num_classes, obb)
    cls, reg, ctr = _flat(out["cls"]).float(), _flat(out["reg"]).float(), _flat(out["ctr"]).float()[..., 0]
    labels = torch.stack([a.labels for a in assigned])  # (B, P)
    onehot = F.one_hot(labels, num_classes + 1)[..., :num_classes].float()
    pos = labels < num_classes
    n_pos = max(float(pos.sum()), 1.0)
    loss_cls = sigmoid_focal_loss(cls.reshape(-1, num_classes), onehot.reshape(-1, num_classes)) / n_pos
    if pos.any():
        ctr_t = torch.stack([a.centerness for a in assigned])[pos]
        pts = points[None].expand(len(assigned), -1, -1)[pos]
        dist_t = torch.stack([a.distances for a in assigned])[pos]
        if obb:
            ang = _flat(out["angle"]).float()[..., 0][pos]
            ang_t = torch.stack([a.angles for a in assigned])[pos]
            pred = obb_to_poly(_boxes_from(pts, reg[pos], ang))
            truth = obb_to_poly(_boxes_from(pts, dist_t, ang_t))
            overlap = paired_poly_iou(pred, truth)
        else:
            overlap = paired_giou(_boxes_from(pts, reg[pos], None), _boxes_from(pts, dist_t, None))
        loss_box = ((1 - overlap) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t)
    else:
        loss_box = reg.sum() * 0.0
        loss_ctr = ctr.sum() * 0.0
    loss = loss_cls + loss_box + loss_ctr
    return loss, {"cls": loss_cls.detach(), "box": loss_box.detach(), "ctr": loss_ctr.detach(),
                  "positives": torch.tensor(float(pos.sum()))}


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def decode(out: dict[str, list[Tensor]], strides: list[int], obb: bool = False, score_threshold: float = 0.05,
           pre_nms: int = 1000, iou_threshold: float = 0.6, max_detections: int = 100) -> list[dict[str, Tensor]]:
    """Detections per image: ``{"boxes": (D, 4) xyxy | (D, 5) OBB, "scores": (D,), "labels": (D,)}``, by decreasing score."""
    sizes = [tuple(m.shape[-2:]) for m in out["cls"]]
    points = level_points(sizes, strides, out["cls"][0].device)
    batch = out["cls"][0].shape[0]
    results = []
    for b in range(batch):
        boxes, scores, labels = [], [], []
        for lvl, pts in enumerate(points):
            k = out["cls"][lvl].shape[1]
            cls = torch.sigmoid(out["cls"][lvl][b].float()).reshape(k, -1).T  # (P, K)
            ctr = torch.sigmoid(out["ctr"][lvl][b].float()).reshape(-1)
            score = torch.sqrt(cls * ctr[:, None])
            cand = (score > score_threshold).nonzero()
            if cand.numel() == 0:
                continue
            s = score[cand[:, 0], cand[:, 1]]
            top = s.topk(min(pre_nms, s.numel())).indices
            p_idx, c_idx = cand[top, 0], cand[top, 1]
            dist = out["reg"][lvl][b].float().reshape(4, -1).T[p_idx]
            ang = out["angle"][lvl][b].float().reshape(-1)[p_idx] if obb else None
            boxes.append(_boxes_from(pts[p_idx], dist, ang))
            scores.append(s[top])
            labels.append(c_idx)
        if not boxes:
            width = 5 if obb else 4
            results.append({"boxes": torch.zeros(0, width), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)})
            continue
        bx, sc, lb = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = (batched_rotated_nms(obb_to_poly(bx), sc, lb, iou_threshold, max_keep=max_detections) if obb
                else batched_nms(bx, sc, lb, iou_threshold))
        keep = keep[:max_detections]
        results.append({"boxes": bx[keep].cpu(), "scores": sc[keep].cpu(), "labels": lb[keep].cpu()})
    return results


__all__ = ["FCOSHead", "DetectionModel", "fcos_loss", "decode", "sigmoid_focal_loss", "compute_targets"]
