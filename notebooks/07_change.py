# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Change detection: a siamese encoder from each initialisation, against a pixel difference
#
# The paper's second headline number is binary change detection on SECOND (47.51 "mIoU", three
# points above the runner-up); the authors released no change-detection code. Here the
# pre-trained encoder runs on both dates with shared weights (one module on the two images
# stacked along the batch); at each of the four tapped blocks the two dates' token maps are
# fused by their **absolute difference** (symmetric: swapping the dates changes nothing), then the
# segmentation model's feature pyramid and UPerNet decoder predict changed / unchanged per pixel.
# Every number a binary change paper may quote is reported — change-class IoU and F1, precision,
# recall, two-class mIoU, overall accuracy — since the paper does not say which its 47.51 is.
#
# **The sample's change task is SYNTHETIC.** The pairs are real Atlanta panchromatic tiles in
# which whole buildings were removed, pasted or shifted; the change mask is exactly the edited
# pixels. The "after" image also differs everywhere by what two real acquisitions differ by —
# gain and offset, a tone curve, an illumination gradient, sub-pixel misregistration, blur and
# noise (seeded per tile, `params.yaml` `prepare.change_shift`) — so a pixel difference no longer
# solves the task. The **no-learning baseline** thresholds that difference, with the threshold
# fitted on the train pairs only.
#
# `profile: paper` with a dataset `{preset: second, data: {root: ...}}` runs SECOND through its
# reader (binary change = label ≠ unchanged, seeded 4:1 split with 10 % of train held out for
# selection, whole 512 px pairs).
#
# Run by DVC (stage `change`, params section `change`), or top to bottom as is: a smoke study
# into `scratch/` from the smoke weights `02_pretrain` writes.

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `change`)
change = {
    "inits": ["random", "mssdf"],
    "seeds": [0],
    "out_dir": "scratch/change",
    "report_dir": "scratch/change_report",
    "run": {"profile": "smoke", "task": "change", "backbone": {"models_dir": "scratch/pretrain"},
            "data": {"root": "scratch/prepare"}, "steps": 4, "eval_every": 2, "batch_size": 4},
    "datasets": {"atlanta": {"data": {"task": "change"}, "backbone": {"modalities": ["pan"]}}},
}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from mssdf.config import from_dict
from mssdf.downstream.change import difference_baseline
from mssdf.downstream.study import StudyConfig, run_study, study_metrics, study_table
from mssdf.paths import resolve
from mssdf.reports.change import baseline_predictions, change_panels, most_changed
from mssdf.reports.downstream import run_predictions

study = from_dict(StudyConfig, change, "change")  # every combination validated before any run
report_dir = resolve(study.report_dir)
first = study.run_config(next(iter(study.datasets)), study.inits[0], study.seeds[0])
print(f"{len(study.datasets) * len(study.inits) * len(study.seeds)} runs of {first.steps} steps of {first.batch_size}, "
      f"fusion {first.change_fusion}, selection on validation {first.selection[0]}")

# %% [markdown]
# ## 1. The no-learning baseline: thresholded pixel difference
#
# The root-mean-square difference of the two standardised dates, per pixel; the threshold that
# maximises the change IoU over every train pixel (exact, not a grid) is applied to val and test.

# %%
KEYS = ("change_iou", "change_f1", "change_precision", "change_recall", "miou", "overall_accuracy")
baselines = {name: difference_baseline(study.run_config(name, study.inits[0], study.seeds[0])) for name in study.datasets}
for name, b in baselines.items():
    print(f"{name}: {b['data']}")
    print(f"  threshold {b['threshold']:.4f} (standardised units), train change IoU {b['train_iou']:.4f}")
display(pd.DataFrame({name: {k: b["test"][k] for k in KEYS} for name, b in baselines.items()}).T
        .rename_axis("pixel difference, test"))

# %% [markdown]
# ## 2. Fine-tuning every combination

# %%
rows = run_study(study)

# %% [markdown]
# ## 3. Test scores, initialisation × dataset (mean ± std over seeds), with the baseline
#
# The baseline has no seed (one value). Numbers are reported whichever way they fall.

# %%
tables = {}
for metric in ("change_iou", "change_f1", "miou", "overall_accuracy"):
    table = study_table(rows, metric, "test")
    table["pixel difference (no learning)"] = [f"{baselines[d]['test'][metric]:.4f}" for d in table.index]
    tables[metric] = table
    display(table.rename_axis(columns=f"test {metric} (SYNTHETIC change)"))

# %%
frame = pd.DataFrame([r for r in rows if r["split"] == "test"])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, metric in zip(axes, ("change_iou", "change_f1")):
    stats = frame.groupby(["dataset", "init"], sort=False)[metric].agg(["mean", "std"]).unstack("init")
    stats["mean"][list(study.inits)].plot.bar(yerr=stats["std"][list(study.inits)], capsize=3, rot=0, ax=ax)
    for k, d in enumerate(stats.index):
        ax.hlines(baselines[d]["test"][metric], k - 0.4, k + 0.4, color="k", ls="--", lw=1,
                  label="pixel difference" if k == 0 else None)
    ax.set_ylim(0, 1); ax.set_ylabel(f"test {metric}"); ax.set_xlabel(""); ax.legend(fontsize=7)
fig.suptitle("change detection (SYNTHETIC pairs), mean ± std over seeds", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Before, after, truth and predictions (seed 0, the test pairs with the most change)

# %%
seed0 = study.seeds[0]
for dataset in study.datasets:
    cfg0 = study.run_config(dataset, study.inits[0], seed0)
    idx = most_changed(cfg0, 3)
    panels = {init: run_predictions(study.run_config(dataset, init, seed0), indices=idx) for init in study.inits}
    base = baseline_predictions(cfg0, idx, baselines[dataset]["threshold"])
    fig = change_panels(panels, base, label_kind=baselines[dataset]["label_kind"])
    fig.suptitle(f"{dataset}: test pairs (one grey stretch for both dates)", fontsize=10, y=1.02)
    plt.show()

# %%
metrics = {"inits": list(study.inits), "seeds": list(study.seeds), "label_kind": baselines[next(iter(baselines))]["label_kind"],
           "datasets": study_metrics(rows, KEYS),
           "baseline": {d: {"threshold": round(b["threshold"], 6), **{k: round(float(b["test"][k]), 6) for k in KEYS}}
                        for d, b in baselines.items()}}
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
print(json.dumps({d: {i: v["change_iou"]["mean"] for i, v in per.items()} for d, per in metrics["datasets"].items()}, indent=1))

# %% [markdown]
# ## What the synthetic task can and cannot show
#
# * **Can**: whether the features separate an edited building (appeared, vanished, moved) from
#   the radiometric and geometric differences every real pair of acquisitions has, pixel by
#   pixel, against a baseline that only sees those differences as intensity.
# * **Cannot**: anything about real change — construction over months, seasonal vegetation,
#   different sensors or view angles, shadows that move with the sun; the edits are copies of
#   real pixels from the same tile, so texture and radiometry inside the mask are plausible by
#   construction, which real changes are not obliged to be. No number here compares with the
#   paper's SECOND 47.51; that needs `profile: paper` on SECOND.
# * Few pairs hold any change (about a third), so the change class is a few percent of the pixels:
#   overall accuracy is high for any model that predicts little change; change IoU and F1 are
#   the numbers to read.
