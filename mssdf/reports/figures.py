"""The figures of the paper-figures stage (``notebooks/09_paper_figures``), drawn from metrics files.

Every chart here reads what :mod:`mssdf.reports.paper` collected (or a stage's own metrics
file) and nothing else: bars are the mean over seeds, error bars the sample standard
deviation, dots the individual seeds. :func:`save_figure` writes each figure as PNG and SVG
with fixed metadata (no date, a fixed SVG id salt), so an unchanged input gives unchanged files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from mssdf.reports.paper import FAMILIES, ProbeRow

INIT_COLORS = {"random": "#9e9e9e", "mae": "#4c72b0", "mssdf": "#dd8452", "random_init": "#9e9e9e"}
_EXTRA_COLORS = ["#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


@dataclass(frozen=True)
class FiguresConfig:
    """Parameters of the figures stage (the ``figures`` section of params.yaml)."""

    # task -> its stage's metrics file, or a list of them (e.g. the sample's and a paper protocol's study)
    metrics: dict[str, str | list[str]] = field(
        default_factory=lambda: {s.task: f"reports/{s.task}/metrics.json" for s in FAMILIES})
    probe: str = "reports/pretrain_probe/metrics.json"  # frozen-feature health check of every variant
    method: str = "reports/method/metrics.json"  # masking and loss statistics of the method stage
    prepare: str = "reports/prepare/metrics.json"  # tiles per task and split
    pretrain_reports: str = "reports/pretrain"  # <dir>/<variant>/metrics.json
    pretrain_live: str = "models/pretrain"  # <dir>/<variant>/live/plots/metrics/train/<term>.tsv
    out_dir: str = "reports/figures"  # PNG + SVG of every figure
    results: str = "reports/paper/results.json"  # the collected rows (read by the HTML index)
    markdown: str = "reports/paper/results.md"  # the headline table (pasted into README by mssdf.reports.readme)
    paper_datasets: dict[str, str] = field(default_factory=dict)  # study dataset name -> paper preset, if they differ
    dpi: int = 110


def color_of(name: str, order: Sequence[str]) -> str:
    """A stable colour per initialisation / variant name."""
    if name in INIT_COLORS:
        return INIT_COLORS[name]
    extras = [n for n in order if n not in INIT_COLORS]
    return _EXTRA_COLORS[extras.index(name) % len(_EXTRA_COLORS)] if name in extras else "#333333"


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str, dpi: int = 110) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.svg`` (reproducible bytes); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    with plt.rc_context({"svg.hashsalt": "mssdf", "svg.fonttype": "none"}):
        fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return paths


def grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str],
                 values: Mapping[str, Mapping[str, Mapping[str, Any]]], order: Sequence[str] | None = None) -> None:
    """Bars ``values[group][series] = {mean, std, seeds}`` grouped by ``groups``: mean bar, std error bar, seed dots."""
    order = list(order or series)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for j, s in enumerate(series):
        pos = x - 0.4 + width * (j + 0.5)
        for i, g in enumerate(groups):
            v = values.get(g, {}).get(s)
            if not v or v.get("mean") is None:
                continue
            ax.bar(pos[i], v["mean"], width * 0.9, yerr=v.get("std") or 0.0, capsize=3,
                   color=color_of(s, order), edgecolor="black", linewidth=0.4, label=s if i == 0 else None)
            seeds = v.get("seeds") or []
            if len(seeds) > 1:
                ax.scatter(np.full(len(seeds), pos[i]), seeds, s=9, color="black", zorder=3, linewidths=0)
    ax.set_xticks(x, groups)


def family_bars(results: Mapping[str, Any], task: str) -> plt.Figure | None:
    """One panel per metric of the task family (datasets × initialisations), with the no-learning
    baseline as a dashed line and the paper's number as a star where the dataset is the paper's."""
    rows = [r for r in results["rows"] if r["task"] == task]
    if not rows:
        return None
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    inits = [i for i in results["inits"] if any(i in r["values"] for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.4), squeeze=False)
    sources = list(dict.fromkeys(r.get("source") for r in rows))
    for ax, metric in zip(axes[0], metrics):
        mrows = [r for r in rows if r["metric"] == metric]
        # one group per row (a dataset may appear in several metrics files of the task)
        groups = [r["dataset"] if len(sources) < 2 else f"{r['dataset']}\n({Path(str(r.get('source'))).parent.name})"
                  for r in mrows]
        keys = [str(i) for i in range(len(mrows))]
        grouped_bars(ax, keys, inits, {k: r["values"] for k, r in zip(keys, mrows)})
        ax.set_xticks(range(len(groups)), groups)
        for i, r in enumerate(mrows):
            if r["baseline"] is not None:
                ax.hlines(r["baseline"], i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2,
                          label=r["baseline_label"] if i == 0 else None)
            if r["comparable"] and r["paper"] is not None:
                ax.scatter([i], [r["paper"]], marker="*", s=120, color="red", zorder=4, label="paper (MSSDF)")
        first = mrows[0]
        ax.set_title(f"{first['metric_label']} ({'higher' if first['higher_is_better'] else 'lower'} is better)", fontsize=10)
        labels = sorted({r["labels"] for r in mrows})
        if labels != ["real"]:
            ax.text(0.01, 0.98, "labels: " + ", ".join(labels), transform=ax.transAxes, va="top", fontsize=8,
                    color="#b00020", fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes[0]:  # every panel's entries (an init or the paper star may be missing from the first)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               fontsize=9)
    fig.suptitle(f"{rows[0]['family']} (test; mean ± std over seeds, dots = seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def probe_bars(rows: Sequence[ProbeRow], variants: Sequence[str]) -> plt.Figure:
    """The frozen-feature health check: one panel per probe metric, a bar per variant and random init."""
    if not rows:
        raise ValueError("probe_bars: no probe rows (the health check wrote no 'probe' metric)")
    order = list(variants) + ["random_init"]
    n = len(rows)
    cols = min(5, n)
    seeds = sorted({s.n for row in rows for s in row.values.values() if s.n})
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(2.6 * cols, 2.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        names = [v for v in order if v in row.values]
        grouped_bars(ax, [""], names, {"": {k: row.values[k].as_dict() for k in names}}, order)
        ax.set_title(row.metric, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(order), frameon=False, fontsize=8)
    over = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    fig.suptitle(f"frozen-feature probes of each pre-training variant (mean ± std over {over})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def method_figure(method: Mapping[str, Any]) -> plt.Figure:
    """The method stage's masking and loss statistics: masking frequency by information band
    (ours vs the per-patch reference), cross-modal substitution rate against its target, and
    the loss terms of an untrained model on the real tile."""
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.4))
    m = method["masking"]
    bands = ["low", "mid", "high"]
    ours = [m.get(f"frequency_{b}") for b in bands]
    ref = [m.get(f"reference_{b}") for b in bands]
    x = np.arange(3)
    axes[0].bar(x - 0.2, [v or 0 for v in ours], 0.4, label="vectorised masking", color="#dd8452")
    axes[0].bar(x + 0.2, [v if v is not None else np.nan for v in ref], 0.4, label="per-patch reference", color="#4c72b0")
    axes[0].axhline(m["ratio"], color="black", ls="--", lw=1, label=f"mask ratio {m['ratio']}")
    axes[0].set_xticks(x, [f"{b} information" for b in bands], fontsize=8)
    axes[0].set_ylabel("P(patch masked)")
    axes[0].set_title("information-aware masking", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower left")
    cm = method["cross_modal"]
    p = sorted(float(k[1:]) for k in cm)
    axes[1].plot(p, [cm[f"p{v}"] for v in p], "o-", color="#dd8452", label="realised")
    axes[1].plot([0, 1], [0, 1], "--", color="black", lw=1, label="target")
    axes[1].set_xlabel("substitution probability p")
    axes[1].set_ylabel("share of masked patches swapped")
    axes[1].set_title("cross-modal masking", fontsize=10)
    axes[1].legend(fontsize=7)
    loss = method["initial_loss"]
    axes[2].bar(list(loss), list(loss.values()), color="#55a868")
    axes[2].set_title("loss terms of an untrained model (real tile)", fontsize=10)
    axes[2].tick_params(axis="x", labelsize=8)
    fig.suptitle("the method on a real Autzen tile (method stage)", fontsize=11)
    fig.tight_layout()
    return fig


def read_tsv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A dvclive ``step<TAB>value`` series as two arrays."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    arr = np.asarray([[float(a), float(b)] for a, b in rows], dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists)."""
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def pretrain_curves(live_dirs: Mapping[str, str | Path], terms: Sequence[str] = ("loss", "reconstruction", "contrast", "hsic"),
                    window: int = 15) -> plt.Figure:
    """Training curves of every pre-training variant (dvclive TSVs), one panel per loss term."""
    fig, axes = plt.subplots(1, len(terms), figsize=(3.4 * len(terms), 3.0), squeeze=False)
    order = list(live_dirs)
    for ax, term in zip(axes[0], terms):
        for variant, d in live_dirs.items():
            f = Path(d) / f"{term}.tsv"
            if not f.is_file():
                continue
            step, val = read_tsv(f)
            ax.plot(step, smooth(val, window), color=color_of(variant, order), label=variant, lw=1.3)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"pre-training loss on the sample (moving average of {window} steps; batches alternate modality sets)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def prepare_figure(prepare: Mapping[str, Any]) -> plt.Figure:
    """Tiles per task and split of the prepared sample, with each task's label provenance."""
    counts = prepare["rows_per_task"]
    kinds = prepare.get("label_kinds", {})
    tasks = sorted(counts)
    fig, ax = plt.subplots(figsize=(8.5, 0.32 * len(tasks) + 1.2))
    left = np.zeros(len(tasks))
    for split, color in (("train", "#4c72b0"), ("val", "#dd8452"), ("test", "#55a868")):
        vals = np.asarray([counts[t].get(split, 0) for t in tasks], dtype=float)
        ax.barh(tasks, vals, left=left, color=color, label=split)
        left += vals
    for i, t in enumerate(tasks):
        kind = kinds.get(t, "")
        label = kind.upper() if kind in ("synthetic", "derived") else kind
        ax.text(left[i] + 3, i, label, va="center", fontsize=7,
                color="#b00020" if kind in ("synthetic", "derived") else "#333333")
    ax.invert_yaxis()
    ax.set_xlabel("tiles")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("the prepared sample: tiles per task and split (labels: real / SYNTHETIC / DERIVED / none)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["FiguresConfig", "color_of", "save_figure", "grouped_bars", "family_bars", "probe_bars",
           "method_figure", "read_tsv", "smooth", "pretrain_curves", "prepare_figure"]
