"""What the downstream notebooks show: predictions over the images, per-class IoU, confusion
matrices, predicted against true heights — for the runs a study
(:func:`mssdf.downstream.study.run_study`) wrote.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mssdf.data.io import IGNORE_INDEX
from mssdf.downstream.config import FinetuneConfig
from mssdf.downstream.data import input_of
from mssdf.downstream.engine import load_finished_run, predict
from mssdf.reports.plots import to_display


def run_predictions(cfg: FinetuneConfig, count: int = 3, split: str = "test", indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Inputs (raw, for display), targets and predictions of the selected weights of a finished
    run, on the first ``count`` samples of ``split`` (or on ``indices``).

    Returns:
        ``{"images": {key: (k, C, H, W)} raw, "target": (k, H, W), "pred": (k, H, W), "classes",
        "indices"}`` — class ids (segmentation, change: keys ``m`` and ``m_t2``) or metres (height).
    """
    model, data, num_classes = load_finished_run(cfg)
    ds = getattr(data, split)
    indices = list(range(min(count, len(ds)))) if indices is None else list(indices)
    items = [ds[i] for i in indices]
    raw = [ds.raw(i) for i in indices]
    images = {m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]}
    out = predict(model, images, cfg, num_classes if cfg.task != "height" else 1)
    pred = out[:, 0] if cfg.task == "height" else out.argmax(1)
    return {"images": {m: torch.stack([torch.as_tensor(input_of(r, m)) for r in raw]).float() for m in images},
            "target": torch.stack([it["target"] for it in items]), "pred": pred, "classes": data.classes, "indices": indices}


def label_image(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(H, W)`` class ids → ``(H, W, 3)`` colours (tab10; the ignore label white)."""
    cmap = plt.get_cmap("tab10")
    lab = labels.numpy()
    out = np.ones((*lab.shape, 3))
    for k in range(num_classes):
        out[lab == k] = cmap(k % 10)[:3]
    return out


def segmentation_panels(panels: dict[str, dict[str, Any]], classes: Sequence[str], max_rows: int = 3) -> plt.Figure:
    """Rows of test tiles: the image, the truth, then one prediction per initialisation.

    Args:
        panels: ``{init: run_predictions(...)}`` for the same tiles.
    """
    inits = list(panels)
    first = panels[inits[0]]
    m = next(iter(first["images"]))
    rows = min(max_rows, first["target"].shape[0])
    fig, axes = plt.subplots(rows, 2 + len(inits), figsize=(2.4 * (2 + len(inits)), 2.4 * rows), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(to_display(first["images"][m][i], m), cmap="gray")
        axes[i, 1].imshow(label_image(first["target"][i], len(classes)))
        for j, init in enumerate(inits):
            axes[i, 2 + j].imshow(label_image(panels[init]["pred"][i], len(classes)))
            if i == 0:
                axes[i, 2 + j].set_title(f"{init}", fontsize=9)
    axes[0, 0].set_title(m, fontsize=9)
    axes[0, 1].set_title("truth", fontsize=9)
    for a in axes.flat:
        a.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap("tab10")(k % 10)) for k in range(len(classes))]
    fig.legend(handles, list(classes), loc="lower center", ncol=min(6, len(classes)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def per_class_iou(rows: list[dict[str, Any]], dataset: str, split: str = "test", metric: str = "per_class_iou") -> pd.DataFrame:
    """Class × initialisation: mean per-class IoU over seeds (from the study rows' ``per_class_iou/<class>``;
    ``metric``: another per-class metric, e.g. ``per_class_accuracy``)."""
    frame = pd.DataFrame([r for r in rows if r["dataset"] == dataset and r["split"] == split])
    cols = [c for c in frame.columns if c.startswith(f"{metric}/")]
    table = frame.groupby("init", sort=False)[cols].mean().T
    table.index = [c.split("/", 1)[1] for c in table.index]
    return table


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str) -> plt.Figure:
    """Row-normalised confusion matrix (rows: truth)."""
    conf = np.asarray(confusion, dtype=float)
    norm = conf / np.clip(conf.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(max(3.6, 1.0 + 0.6 * len(classes)), max(3.2, 0.8 + 0.6 * len(classes))))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color="black" if norm[i, j] < 0.6 else "white")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted"); ax.set_ylabel("truth"); ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def height_panels(panels: dict[str, dict[str, Any]], max_rows: int = 3, vmax: float | None = None) -> plt.Figure:
    """Rows of test tiles: the image, the true nDSM, then each initialisation's predicted height (m)."""
    inits = list(panels)
    first = panels[inits[0]]
    m = next(iter(first["images"]))
    rows = min(max_rows, first["target"].shape[0])
    top = vmax or float(np.nanpercentile(first["target"].numpy(), 99))
    fig, axes = plt.subplots(rows, 2 + len(inits), figsize=(2.5 * (2 + len(inits)), 2.4 * rows), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(to_display(first["images"][m][i], m), cmap="gray")
        im = axes[i, 1].imshow(first["target"][i].numpy(), vmin=0, vmax=top, cmap="viridis")
        for j, init in enumerate(inits):
            axes[i, 2 + j].imshow(panels[init]["pred"][i].numpy(), vmin=0, vmax=top, cmap="viridis")
            if i == 0:
                axes[i, 2 + j].set_title(init, fontsize=9)
    axes[0, 0].set_title(m, fontsize=9)
    axes[0, 1].set_title("true height (m)", fontsize=9)
    for a in axes.flat:
        a.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.02, label="m")
    return fig


def height_scatter_and_errors(panels: dict[str, dict[str, Any]], bins: int = 40) -> plt.Figure:
    """Predicted against true height (every test pixel with data) and the error histogram, per initialisation."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    top = 0.0
    for k, (init, p) in enumerate(panels.items()):
        t, y = p["target"].numpy().ravel(), p["pred"].numpy().ravel()
        keep = np.isfinite(t)
        t, y = t[keep], y[keep]
        top = max(top, float(np.percentile(t, 99.5)))
        axes[0].scatter(t, y, s=2, alpha=0.25, color=f"C{k}", label=init, rasterized=True)
        axes[1].hist(y - t, bins=bins, histtype="step", color=f"C{k}", label=init, density=True)
    axes[0].plot([0, top], [0, top], "k--", lw=1)
    axes[0].set_xlabel("true height (m)"); axes[0].set_ylabel("predicted (m)"); axes[0].legend(fontsize=8, markerscale=4)
    axes[1].set_xlabel("error: predicted − true (m)"); axes[1].set_ylabel("density"); axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ignore_mask(target: torch.Tensor) -> torch.Tensor:
    """Pixels scored by the metrics (not the ignore label)."""
    return target != IGNORE_INDEX


__all__ = ["run_predictions", "label_image", "segmentation_panels", "per_class_iou", "confusion_figure", "height_panels",
           "height_scatter_and_errors", "ignore_mask"]
