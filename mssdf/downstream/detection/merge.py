"""Detection on images larger than the model's window: crops, then the detections merged back.

DOTA's protocol: the image is cut into ``window`` × ``window`` crops every ``window − overlap``
pixels (the last row and column aligned to the border; an image smaller than a window is
padded with zeros at its bottom and right), each crop is detected, its boxes are moved to
image coordinates, and one class-aware NMS over all crops' detections removes the copies of
an object that several crops saw. An object straddling two crops is then reported once
(tested). Detections whose centre falls in the padding are dropped.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mssdf.downstream.detection.boxes import obb_to_poly
from mssdf.downstream.detection.nms import batched_nms, batched_rotated_nms
from mssdf.downstream.inference import window_grid


def shift_boxes(boxes: Tensor, dx: float, dy: float) -> Tensor:
    """``(N, 4)`` xyxy or ``(N, 5)`` OBB moved by ``(dx, dy)``."""
    if boxes.shape[-1] == 4:
        return boxes + boxes.new_tensor([dx, dy, dx, dy])
    return boxes + boxes.new_tensor([dx, dy, 0.0, 0.0, 0.0])


def merge_detections(parts: list[dict[str, Tensor]], offsets: list[tuple[int, int]], size: tuple[int, int], iou_threshold: float,
                     max_detections: int) -> dict[str, Tensor]:
    """Per-crop detections (crop coordinates) at ``offsets`` ``(row, col)`` → one image's detections.

    Boxes are shifted by their crop's offset, those whose centre lies outside the ``(h, w)``
    image (padding) are dropped, then class-aware NMS (rotated for ``(N, 5)`` boxes) and the
    ``max_detections`` best are kept, by decreasing score.
    """
    h, w = size
    boxes = [shift_boxes(p["boxes"].float(), c, r) for p, (r, c) in zip(parts, offsets)]
    width = boxes[0].shape[-1] if boxes else 4
    bx = torch.cat(boxes) if boxes else torch.zeros(0, width)
    sc = torch.cat([p["scores"] for p in parts]) if parts else torch.zeros(0)
    lb = torch.cat([p["labels"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if bx.shape[0] == 0:
        return {"boxes": bx, "scores": sc, "labels": lb}
    cx, cy = ((bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2) if width == 4 else (bx[:, 0], bx[:, 1])
    inside = (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h)
    bx, sc, lb = bx[inside], sc[inside], lb[inside]
    if width == 4:
        keep = batched_nms(bx, sc, lb, iou_threshold)[:max_detections]
    else:
        keep = batched_rotated_nms(obb_to_poly(bx), sc, lb, iou_threshold, max_keep=max_detections)
    return {"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]}


def detect_large(detect: Callable[[dict[str, Tensor]], list[dict[str, Tensor]]], images: Mapping[str, Tensor], window: int,
                 overlap: int, iou_threshold: float, max_detections: int, batch_size: int = 8) -> list[dict[str, Tensor]]:
    """Detections of ``{m: (B, C, H, W)}`` images through ``window`` crops overlapping by ``overlap`` px.

    Args:
        detect: ``{m: (b, C, window, window)}`` → per-crop detections (crop coordinates).
    """
    first = next(iter(images.values()))
    b, (h, w) = first.shape[0], first.shape[-2:]
    ph, pw = max(0, window - h), max(0, window - w)
    padded = {m: F.pad(x, (0, pw, 0, ph)) for m, x in images.items()} if ph or pw else dict(images)
    offsets = window_grid(h + ph, w + pw, window, window - overlap)
    out = []
    for i in range(b):
        parts: list[dict[str, Tensor]] = []
        for start in range(0, len(offsets), batch_size):
            chunk = offsets[start : start + batch_size]
            crops = {m: torch.stack([x[i, :, r : r + window, c : c + window] for r, c in chunk]) for m, x in padded.items()}
            parts += detect(crops)
        out.append(merge_detections(parts, offsets, (h, w), iou_threshold, max_detections))
    return out


__all__ = ["shift_boxes", "merge_detections", "detect_large"]
