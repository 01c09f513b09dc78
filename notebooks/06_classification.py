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
# # 06 · Scene classification: kNN, linear probe and fine-tuning from each initialisation
#
# Scene classification asks for one label per image. The paper evaluates it on AID and
# NWPU-RESISC45 but publishes no numbers; the authors' configurations cannot be run (missing
# base files, 30 instead of 45 NWPU classes, the "fine-tune" configuration freezes the backbone:
# `docs/method.md`). Here three protocols, each from **random** weights, the pipeline's **MAE**
# baseline and **MSSDF** pre-training, three seeds each:
#
# * **kNN** — frozen features (the cls token after the final norm), cosine similarity, the k
#   nearest training images vote with weight exp(similarity / 0.07) (DINO's protocol; k = 5 here,
#   DINO's 20 being sized for ImageNet). No training.
# * **linear** — MAE's linear probe: features computed once by the frozen encoder and cached,
#   then BatchNorm without affine parameters and a linear layer.
# * **finetune** — the whole encoder with a linear head: layer-wise learning-rate decay, label
#   smoothing, warm-up then decay; mixup and cutmix (timm) are options, on in the paper presets and
#   off on this sample (with them the classifier never left the majority class in 200 steps).
#
# **The labels of the sample are DERIVED**: each Atlanta tile's class is the bin of its real
# building-footprint fraction (*few* < 2 %, *some* < 15 %, *dense* ≥ 15 % of the tile). They test
# whether an encoder sees how built-up a tile is, not scene semantics. `profile: paper` with a
# dataset `{preset: aid_20, data: {root: ...}}` (also `aid_50`, `nwpu_10`, `nwpu_20`) runs the
# paper protocols on the real datasets (224 px, seeded stratified splits).
#
# Run by DVC (stage `classification`, params section `classification`), or top to bottom as is: a
# smoke study into `scratch/` from the smoke weights `02_pretrain` writes.

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `classification`)
classification = {
    "inits": ["random", "mssdf"],
    "seeds": [0],
    "out_dir": "scratch/classification",
    "report_dir": "scratch/classification_report",
    "run": {"profile": "smoke", "task": "classification", "backbone": {"models_dir": "scratch/pretrain", "modalities": ["pan"]},
            "data": {"root": "scratch/prepare", "task": "scene"}, "steps": 4, "eval_every": 2, "batch_size": 8},
    "datasets": {"knn": {"mode": "knn", "knn_k": 5}, "linear": {"mode": "linear", "optim": {"lr": 0.1, "weight_decay": 0.0}},
                 "finetune": {"mode": "finetune", "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}},
}

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from mssdf.config import from_dict
from mssdf.downstream.data import build_task_data
from mssdf.downstream.study import StudyConfig, run_study, study_metrics, study_table
from mssdf.paths import resolve
from mssdf.reports.classification import scene_example_figure, scene_examples
from mssdf.reports.downstream import confusion_figure, per_class_iou

study = from_dict(StudyConfig, classification, "classification")  # every combination validated before any run
report_dir = resolve(study.report_dir)
print(f"{len(study.datasets)} protocol(s) x {len(study.inits)} initialisation(s) x {len(study.seeds)} seed(s) "
      f"= {len(study.datasets) * len(study.inits) * len(study.seeds)} runs")
for name in study.datasets:
    cfg = study.run_config(name, study.inits[0], study.seeds[0])
    print(f"{name}: mode {cfg.mode}, pool {cfg.pool}" + ("" if cfg.mode == "knn" else
          f", {cfg.steps} steps of {cfg.batch_size}, lr {cfg.optim.lr:g}"
          + (f", layer decay {cfg.optim.layer_decay}, mixup {cfg.mixup}, cutmix {cfg.cutmix}, label smoothing {cfg.label_smoothing}"
             if cfg.mode == "finetune" else "")))

# %% [markdown]
# ## 0. The data: how many tiles of each class

# %%
first = study.run_config(next(iter(study.datasets)), study.inits[0], study.seeds[0])
data = build_task_data(first, {m: True for m in first.backbone.modalities})
print(data.description)
counts = pd.DataFrame({role: np.bincount([int(getattr(data, role).raw(i)["label"]) for i in range(len(getattr(data, role)))],
                                         minlength=len(data.classes)) for role in ("train", "val", "test")},
                      index=list(data.classes))
display(counts.rename_axis(f"class ({data.label_kind.upper()})"))
majority = counts["test"].max() / counts["test"].sum()
print(f"always predicting the most frequent class scores test accuracy {majority:.3f} and macro F1 "
      f"{2 * majority / (1 + majority) / len(data.classes):.3f}")

# %% [markdown]
# ## 1. Every protocol, initialisation and seed

# %%
rows = run_study(study)

# %% [markdown]
# ## 2. Test accuracy and macro F1, initialisation × protocol (mean ± std over seeds)
#
# kNN and the linear probe read the frozen encoder; fine-tuning changes it. The linear probe and
# fine-tuning keep the weights of the best validation macro F1. With a majority class this large,
# accuracy alone flatters (always answering *few buildings* scores 0.80 on test): macro F1 and the
# per-class accuracies show whether the minority classes are recognised at all.

# %%
display(study_table(rows, "overall_accuracy", "test").rename_axis(columns="test accuracy (DERIVED labels)"))
display(study_table(rows, "f1", "test").rename_axis(columns="test macro F1 (DERIVED labels)"))
display(study_table(rows, "mean_class_accuracy", "test").rename_axis(columns="test mean per-class accuracy"))

# %%
frame = pd.DataFrame([r for r in rows if r["split"] == "test"])
stats = frame.groupby(["dataset", "init"], sort=False)["f1"].agg(["mean", "std"]).unstack("init")
ax = stats["mean"][list(study.inits)].plot.bar(yerr=stats["std"][list(study.inits)], capsize=3, rot=0, figsize=(6.5, 3.2))
ax.axhline(2 * majority / (1 + majority) / len(data.classes), color="k", ls="--", lw=1, label="majority class")
ax.set_ylabel("test macro F1"); ax.set_xlabel("protocol"); ax.set_ylim(0, 1); ax.legend(fontsize=8)
ax.set_title("scene classification (DERIVED labels), mean ± std over seeds", fontsize=10)
plt.show()

# %% [markdown]
# ## 3. Example test tiles: true class and predictions (seed 0)

# %%
seed0 = study.seeds[0]
for protocol in study.datasets:
    examples = scene_examples({init: study.run_config(protocol, init, seed0) for init in study.inits}, per_class=2)
    fig = scene_example_figure(examples)
    fig.suptitle(f"{protocol}: test tiles, true class (DERIVED) and predictions", fontsize=10, y=1.02)
    plt.show()

# %% [markdown]
# ## 4. Per-class accuracy and confusion

# %%
for protocol in study.datasets:
    table = per_class_iou(rows, protocol, metric="per_class_accuracy")
    ax = table.plot.bar(figsize=(5.5, 2.8), rot=0)
    ax.set_ylabel("accuracy (test, mean over seeds)"); ax.set_title(f"{protocol}: per-class accuracy (DERIVED classes)")
    ax.set_ylim(0, 1)
    plt.show()
last_init = study.inits[-1]
for protocol in study.datasets:
    runs = [r for r in rows if r["dataset"] == protocol and r["init"] == last_init and r["split"] == "test"]
    conf = sum(np.array(json.loads((resolve(r["out_dir"]) / "metrics.json").read_text())["test"]["confusion"]) for r in runs)
    confusion_figure(conf, list(data.classes), f"{protocol}, {last_init} init, test (summed over seeds)")
    plt.show()

# %%
metrics = {"inits": list(study.inits), "seeds": list(study.seeds), "label_kind": data.label_kind,
           "protocols": study_metrics(rows, ("overall_accuracy", "f1", "mean_class_accuracy"))}
report_dir.mkdir(parents=True, exist_ok=True)
(report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
print(json.dumps({p: {i: v["f1"]["mean"] for i, v in per.items()} for p, per in metrics["protocols"].items()}, indent=1))

# %% [markdown]
# ## Reading the results
#
# * The classes are **DERIVED** from building footprints: a good score says the features encode
#   how much of a tile is built up; it says nothing about AID's or NWPU's 30–45 scene categories.
# * 130 training tiles, most of them *few buildings*: the minority classes have 16–17 training
#   tiles each and 3–5 test tiles, so one tile moves a per-class accuracy by 20–33 points.
# * The seeds vary the head (and the random encoder) and, for fine-tuning, the data order,
#   augmentation and mixing; kNN with a pre-trained encoder has nothing random, so its spread is 0.
# * A protocol whose every run answers the majority class scores exactly the dashed line: then the
#   budget (a few dozen steps) or the features did not separate the classes — the table says which
#   protocols got past it.
