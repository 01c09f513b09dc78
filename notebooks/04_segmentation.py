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
# # 04 · Semantic segmentation: fine-tuning from each initialisation
#
# The paper's headline segmentation numbers (Potsdam 78.30, Vaihingen 76.50 mIoU with half of
# the training set) come from fine-tuning a pre-trained ViT with a UPerNet head. Here the same
# engine (`mssdf.downstream`) fine-tunes the encoder from **random** weights, from the pipeline's
# **MAE** baseline and from **MSSDF** pre-training, three seeds each, on the sample's segmentation
# tasks:
#
# * **buildings** — Atlanta, panchromatic 0.5 m, real building footprints (SpaceNet sample);
# * **roads** — Las Vegas, panchromatic, the real road mask (SpaceNet sample);
# * **asprs** — IGN lidar HD strip, RGB + MS + nDSM through their three adapters, the real
#   ASPRS classes of the top lidar point. It has no test split: the last weights are scored on
#   its single validation tile (val = test there, and says little).
#
# A run: backbone (encoder + simple feature pyramid), UPerNet decoder with an auxiliary FCN head,
# AdamW with layer-wise learning-rate decay, warm-up then poly decay; validation every
# `eval_every` steps selects the weights scored on test. `profile: paper` with a dataset
# `{preset: potsdam, data: {root: ...}}` runs the authors' protocol on the real dataset.
#
# Run by DVC (stage `segmentation`, params section `segmentation`), or top to bottom as is: a
# smoke study into `scratch/` from the smoke weights `02_pretrain` writes.

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `segmentation`)
segmentation = {
    "inits": ["random", "mssdf"],
    "seeds": [0],
    "out_dir": "scratch/segmentation",
    "report_dir": "scratch/segmentation_report",
    "run": {"profile": "smoke", "task": "segmentation", "backbone": {"models_dir": "scratch/pretrain"},
            "data": {"root": "scratch/prepare"}, "steps": 6, "eval_every": 3, "batch_size": 4},
    "datasets": {"buildings": {"data": {"task": "seg_buildings"}, "backbone": {"modalities": ["pan"]}}},
}

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from mssdf.config import from_dict
from mssdf.downstream.study import StudyConfig, run_study, study_metrics, study_table
from mssdf.paths import resolve
from mssdf.reports.downstream import confusion_figure, per_class_iou, run_predictions, segmentation_panels

study = from_dict(StudyConfig, segmentation, "segmentation")  # every combination validated before any run
report_dir = resolve(study.report_dir)
print(f"{len(study.datasets)} dataset(s) x {len(study.inits)} initialisation(s) x {len(study.seeds)} seed(s) "
      f"= {len(study.datasets) * len(study.inits) * len(study.seeds)} runs")
first = study.run_config(next(iter(study.datasets)), study.inits[0], study.seeds[0])
print(f"each: {first.steps} steps of {first.batch_size}, mode {first.mode}, lr {first.optim.lr:g}, "
      f"layer decay {first.optim.layer_decay}, {first.optim.schedule} schedule")

# %% [markdown]
# ## 1. Fine-tuning every combination

# %%
rows = run_study(study)
frame = pd.DataFrame(rows)

# %% [markdown]
# ## 2. Test mIoU, initialisation × dataset (mean ± std over seeds)
#
# mIoU over the classes present in the test truth or predictions; the weights are those of the
# best validation mIoU. Numbers are reported whichever way they fall.

# %%
display(study_table(rows, "miou", "test"))
display(study_table(rows, "overall_accuracy", "test").rename_axis(columns="overall accuracy"))

# %% [markdown]
# ## 3. Predictions over the images (seed 0)

# %%
seed0 = study.seeds[0]
for dataset in study.datasets:
    panels = {init: run_predictions(study.run_config(dataset, init, seed0), 3) for init in study.inits}
    classes = panels[study.inits[0]]["classes"]
    fig = segmentation_panels(panels, classes)
    fig.suptitle(f"{dataset}: test tiles, truth and predictions", fontsize=10, y=1.02)
    plt.show()

# %% [markdown]
# ## 4. Per-class IoU and confusion

# %%
for dataset in study.datasets:
    table = per_class_iou(rows, dataset)
    ax = table.plot.bar(figsize=(max(4.5, 1.2 + 0.9 * len(table)), 3.2), rot=30)
    plt.setp(ax.get_xticklabels(), ha="right")
    ax.legend(title="init", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylabel("IoU (test, mean over seeds)"); ax.set_title(dataset); ax.set_ylim(0, 1)
    plt.show()
    best_init = study.inits[-1]
    runs = [r for r in rows if r["dataset"] == dataset and r["init"] == best_init and r["split"] == "test"]
    conf = sum(np.array(json.loads((resolve(r["out_dir"]) / "metrics.json").read_text())["test"]["confusion"]) for r in runs)
    classes = json.loads((resolve(runs[0]["out_dir"]) / "metrics.json").read_text())["classes"]
    confusion_figure(conf, classes, f"{dataset}, {best_init} init, test (summed over seeds)")
    plt.show()

# %%
metrics = {"inits": list(study.inits), "seeds": list(study.seeds),
           "datasets": study_metrics(rows, ("miou", "f1", "overall_accuracy"))}
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
print(json.dumps({d: {i: v["miou"]["mean"] for i, v in per.items()} for d, per in metrics["datasets"].items()}, indent=1))

# %% [markdown]
# ## Reading the results
#
# * On tiles this small, a few dozen steps from random weights can match a pre-trained start;
#   the comparison the paper makes (half of Potsdam's training set, 80k iterations, ViT-B) is
#   `profile: paper` on the real datasets.
# * The spread is over fine-tuning seeds (head initialisation, data order, augmentation; and the
#   encoder's weights for `random`), one pre-training run per variant.
