"""What the scene-classification notebook shows: example tiles with their true class and each
initialisation's prediction, read from the runs' ``predictions.json`` (every protocol writes
one, kNN included), and the tiles themselves from the run's data.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from mssdf.downstream.config import FinetuneConfig
from mssdf.downstream.data import build_task_data, input_of
from mssdf.paths import resolve
from mssdf.reports.plots import to_display


def pick_per_class(truth: Sequence[int], per_class: int, num_classes: int) -> list[int]:
    """The first ``per_class`` indices of every class in ``truth`` (class order, then index order)."""
    out: list[int] = []
    for k in range(num_classes):
        out += [i for i, t in enumerate(truth) if t == k][:per_class]
    return out


def scene_examples(runs: dict[str, FinetuneConfig], per_class: int = 2) -> dict[str, Any]:
    """Test tiles of every class with each run's predicted class.

    Args:
        runs: ``{label: finished run config}`` on the same test split (e.g. one per initialisation).
    Returns:
        ``{"images": {m: (k, C, H, W)} raw, "truth": [k], "pred": {label: [k]}, "classes", "label_kind", "modality"}``.
    """
    first = next(iter(runs.values()))
    data = build_task_data(first, {m: True for m in first.backbone.modalities})
    preds = {label: json.loads((resolve(cfg.out_dir) / "predictions.json").read_text()) for label, cfg in runs.items()}
    truth = next(iter(preds.values()))["truth"]
    idx = pick_per_class(truth, per_class, len(data.classes))
    m = first.backbone.modalities[0]
    raw = [data.test.raw(i) for i in idx]
    return {"images": {m: torch.stack([torch.as_tensor(input_of(r, m)) for r in raw]).float()},
            "truth": [truth[i] for i in idx], "pred": {label: [p["test"][i] for i in idx] for label, p in preds.items()},
            "classes": data.classes, "label_kind": data.label_kind, "modality": m}


def scene_example_figure(examples: dict[str, Any], cols: int = 6) -> plt.Figure:
    """A grid of tiles titled with the true class and each run's prediction (✓ / ✗)."""
    m = examples["modality"]
    n = len(examples["truth"])
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.7 * rows), squeeze=False)
    classes = examples["classes"]
    flag = f" ({examples['label_kind'].upper()})" if examples["label_kind"] in ("derived", "synthetic") else ""
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(to_display(examples["images"][m][k], m), cmap="gray")
        t = examples["truth"][k]
        lines = [f"true: {classes[t]}"] + [f"{label}: {classes[p[k]]} {'✓' if p[k] == t else '✗'}"
                                           for label, p in examples["pred"].items()]
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
    fig.suptitle(f"test tiles, true class{flag} and predictions", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["pick_per_class", "scene_examples", "scene_example_figure"]
