"""What the detection notebook shows: true and predicted boxes drawn on test images, and
precision-recall curves (VOC style at IoU 0.5, one curve per class and initialisation).
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Polygon as PolygonPatch

from mssdf.downstream.config import FinetuneConfig
from mssdf.downstream.data import collate, input_of
from mssdf.downstream.detection.boxes import obb_to_poly
from mssdf.downstream.detection.metrics import OBBMetrics
from mssdf.downstream.engine import detect, load_finished_run
from mssdf.reports.plots import to_display


def run_detections(cfg: FinetuneConfig, split: str = "test", indices: Sequence[int] | None = None) -> dict[str, Any]:
    """The selected weights of a finished detection run on ``split`` (every sample, or ``indices``).

    Returns:
        ``{"images": {m: [raw (C, H, W)]}, "truth": [target dicts], "pred": [detection dicts], "classes", "indices"}``.
    """
    model, data, _ = load_finished_run(cfg)
    ds = getattr(data, split)
    indices = list(range(len(ds))) if indices is None else list(indices)
    truth, pred = [], []
    for start in range(0, len(indices), cfg.eval_batch_size):
        batch = collate([ds[i] for i in indices[start : start + cfg.eval_batch_size]])
        pred += detect(model, batch["images"], cfg)
        truth += batch["target"]
    m = cfg.backbone.modalities[0]
    return {"images": {m: [torch.as_tensor(input_of(ds.raw(i), m)).float() for i in indices]}, "truth": truth, "pred": pred,
            "classes": data.classes, "indices": indices, "label_kind": data.label_kind}


def _polygons(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.float()
    if b.shape[-1] == 4:
        return torch.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], 1).numpy()
    return obb_to_poly(b).numpy()


def draw_boxes(ax: Any, boxes: torch.Tensor, labels: torch.Tensor, color_of: Any, scores: torch.Tensor | None = None,
               style: str = "-") -> None:
    """Outline ``(N, 4)`` xyxy or ``(N, 5)`` OBB boxes on ``ax`` (one colour per class)."""
    for k, poly in enumerate(_polygons(boxes)):
        ax.add_patch(PolygonPatch(poly, closed=True, fill=False, lw=1.2, ls=style, edgecolor=color_of(int(labels[k]))))
        if scores is not None:
            ax.text(poly[:, 0].min(), poly[:, 1].min(), f"{float(scores[k]):.2f}", fontsize=5, color=color_of(int(labels[k])))


def detection_panels(panels: dict[str, dict[str, Any]], rows: Sequence[int], min_score: float = 0.3) -> plt.Figure:
    """Rows of test images: the truth, then each initialisation's detections with score ≥ ``min_score``.

    Args:
        panels: ``{init: run_detections(...)}`` on the same samples; rows: positions in them.
    """
    inits = list(panels)
    first = panels[inits[0]]
    m = next(iter(first["images"]))
    cmap = plt.get_cmap("tab10")
    color_of = lambda k: cmap(k % 10)  # noqa: E731
    fig, axes = plt.subplots(len(rows), 1 + len(inits), figsize=(2.6 * (1 + len(inits)), 2.6 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        img = to_display(first["images"][m][i], m)
        for j in range(1 + len(inits)):
            ax = axes[r, j]
            ax.imshow(img, cmap="gray")
            ax.axis("off")
            if j == 0:
                t = first["truth"][i]
                draw_boxes(ax, t["boxes"], t["labels"], color_of)
                ax.set_title(f"truth ({len(t['boxes'])})" if r == 0 else f"{len(t['boxes'])}", fontsize=8)
            else:
                p = panels[inits[j - 1]]["pred"][i]
                keep = p["scores"] >= min_score
                draw_boxes(ax, p["boxes"][keep], p["labels"][keep], color_of, p["scores"][keep])
                ax.set_title(f"{inits[j - 1]} ({int(keep.sum())})" if r == 0 else f"{int(keep.sum())}", fontsize=8)
    classes = first["classes"]
    handles = [plt.Line2D([], [], color=color_of(k), lw=2) for k in range(len(classes))]
    fig.legend(handles, list(classes), loc="lower center", ncol=min(6, len(classes)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def pr_curves(panels: dict[str, dict[str, Any]]) -> tuple[plt.Figure, dict[str, dict[str, float]]]:
    """Precision-recall at IoU 0.5 (VOC all-point AP) per class and initialisation, over every
    sample the panels hold. Returns the figure and ``{init: {class: AP}}``."""
    classes = next(iter(panels.values()))["classes"]
    fig, axes = plt.subplots(1, len(classes), figsize=(4.0 * len(classes), 3.2), squeeze=False)
    aps: dict[str, dict[str, float]] = {}
    for n, (init, p) in enumerate(panels.items()):
        metric = OBBMetrics(list(classes), use_07_metric=False)
        metric.update(p["pred"], p["truth"])
        r = metric.compute()
        aps[init] = r["per_class_ap"]
        for k, name in enumerate(classes):
            curve = r["curves"].get(name)
            if curve and curve["recall"]:
                axes[0, k].plot(curve["recall"], curve["precision"], color=f"C{n}", label=f"{init} (AP {r['per_class_ap'][name]:.2f})")
    for k, name in enumerate(classes):
        ax = axes[0, k]
        ax.set_xlim(0, 1); ax.set_ylim(0, 1.02); ax.set_xlabel("recall"); ax.set_ylabel("precision")
        ax.set_title(f"{name}, IoU 0.5", fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, aps


__all__ = ["run_detections", "draw_boxes", "detection_panels", "pr_curves"]
