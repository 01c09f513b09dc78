"""What the change-detection notebook shows: before / after / difference / truth / the
no-learning baseline / each initialisation's prediction, on the test pairs with the most change.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from mssdf.data.io import IGNORE_INDEX
from mssdf.downstream.change import difference_map
from mssdf.downstream.config import SECOND_DATE, FinetuneConfig
from mssdf.downstream.data import build_task_data


def most_changed(cfg: FinetuneConfig, count: int = 3, split: str = "test") -> list[int]:
    """Indices of the ``count`` pairs of ``split`` with the largest changed share (ties: first)."""
    data = build_task_data(cfg, {m: True for m in cfg.backbone.modalities})
    ds = getattr(data, split)
    share = [float((torch.as_tensor(ds.raw(i)["label"]) == 1).float().mean()) for i in range(len(ds))]
    return sorted(np.argsort(-np.asarray(share), kind="stable")[:count].tolist())


def baseline_predictions(cfg: FinetuneConfig, indices: Sequence[int], threshold: float, split: str = "test") -> torch.Tensor:
    """``(k, H, W)`` 0/1 change of the thresholded difference on the pairs ``indices``."""
    data = build_task_data(cfg, {m: True for m in cfg.backbone.modalities})
    ds = getattr(data, split).plain()
    items = [ds[i] for i in indices]
    images = {m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]}
    return (difference_map(images, tuple(cfg.backbone.modalities)) > threshold).long()


def change_panels(panels: dict[str, dict[str, Any]], baseline: torch.Tensor | None = None, max_rows: int = 3,
                  label_kind: str = "real") -> plt.Figure:
    """Rows of test pairs: before, after, truth, [the difference baseline], each initialisation's prediction.

    Args:
        panels: ``{init: run_predictions(...)}`` on the same pairs (images hold ``m`` and ``m_t2``).
        baseline: ``(k, H, W)`` predictions of the no-learning baseline on those pairs.
    """
    inits = list(panels)
    first = panels[inits[0]]
    m = next(k for k in first["images"] if not k.endswith(SECOND_DATE))
    rows = min(max_rows, first["target"].shape[0])
    cols = 3 + (baseline is not None) + len(inits)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    before, after = first["images"][m], first["images"][m + SECOND_DATE]
    lo, hi = np.percentile(torch.cat([before, after]).numpy(), [1, 99])  # one stretch for both dates

    def show_change(ax: Any, lab: torch.Tensor) -> None:
        img = np.ones((*lab.shape, 3))
        img[lab.numpy() == 1] = (0.85, 0.1, 0.1)
        img[lab.numpy() == IGNORE_INDEX] = (0.8, 0.8, 0.8)
        ax.imshow(img)

    flag = f" ({label_kind.upper()})" if label_kind in ("synthetic", "derived") else ""
    def joint(x: torch.Tensor) -> np.ndarray:  # both dates on one stretch: radiometric differences stay visible
        v = x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()
        return np.clip((v - lo) / max(hi - lo, 1e-6), 0, 1)

    for i in range(rows):
        for j, x in enumerate((before[i], after[i])):
            axes[i, j].imshow(joint(x), cmap="gray")
        show_change(axes[i, 2], first["target"][i])
        col = 3
        if baseline is not None:
            show_change(axes[i, col], baseline[i])
            col += 1
        for init in inits:
            show_change(axes[i, col], panels[init]["pred"][i])
            col += 1
    titles = ["before", "after", f"true change{flag}"] + (["pixel difference"] if baseline is not None else []) + inits
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=9)
    for a in axes.flat:
        a.axis("off")
    fig.tight_layout()
    return fig


__all__ = ["most_changed", "baseline_predictions", "change_panels"]
