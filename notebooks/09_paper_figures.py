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
# # 09 · The paper's results: every task, every initialisation, beside the paper's numbers
#
# This last stage reads **only the metrics files** the other stages wrote (and the pre-training
# curves dvclive logged) and turns them into one table per task family — initialisation ×
# dataset or protocol, mean ± standard deviation over the seeds — with bar charts whose error
# bars are that standard deviation and whose dots are the individual seeds. Every number is
# recomputed here from the per-seed values in the files and checked against the mean the
# stage wrote.
#
# The paper (Wang et al., 2025) reports four headline numbers for MSSDF: **Potsdam 78.30 mIoU**
# and **Vaihingen 76.50 mIoU** (semantic segmentation, 50 % of the training set), **US3D RMSE
# 0.182** (height) and **SECOND 47.51 mIoU** (binary change). A row shows the paper's number only
# when that row's dataset *is* the paper's dataset (a study entry named `potsdam`, `vaihingen`,
# `us3d` or `second`, or mapped to one by `figures.paper_datasets`); every other row says
# **"not comparable: sample data"**. The default pipeline runs on the small embedded sample with
# CPU-sized budgets (tens of steps), so its numbers compare initialisations with each other under
# the same budget, not with the paper.
#
# Labels that are **SYNTHETIC** (the change pairs) or **DERIVED** (the scene classes) say so in
# every table and chart.
#
# Run by DVC (stage `figures`, params sections `pretrain_variants` and `figures`), or top to
# bottom as is: the defaults read the metrics files committed in `reports/` and write into `scratch/`.

# %% tags=["parameters"]
# Parameters (defaults write to scratch/; `dvc repro` injects params.yaml's sections)
pretrain_variants = ["mssdf", "mae"]
figures = {
    "out_dir": "scratch/figures",
    "results": "scratch/paper/results.json",
    "markdown": "scratch/paper/results.md",
}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from mssdf.atomic import atomic_write_text
from mssdf.config import from_dict
from mssdf.paths import resolve
from mssdf.reports import figures as F
from mssdf.reports import paper

cfg = from_dict(F.FiguresConfig, figures, "figures")  # unknown keys fail here
out_dir = resolve(cfg.out_dir)
written = []
pd.set_option("display.max_colwidth", 80)

metrics_files = {task: [resolve(p) for p in ([paths] if isinstance(paths, str) else paths)] for task, paths in cfg.metrics.items()}
results = paper.collect_results(metrics_files, cfg.paper_datasets, root=resolve("."))
atomic_write_text(resolve(cfg.results), json.dumps(results, indent=1) + "\n")
atomic_write_text(resolve(cfg.markdown), paper.results_markdown(results))
print(f"{len(results['rows'])} result rows from {len(results['generated_from'])} metrics files; "
      f"initialisations {results['inits']}")

# %% [markdown]
# ## The paper's headline numbers, and which of them this run can be compared with

# %%
compared = {cfg.paper_datasets.get(r["dataset"], r["dataset"]) for r in results["rows"] if r["comparable"]}
display(pd.DataFrame([
    {"task": p.task, "dataset": p.dataset, "protocol": p.protocol, "paper (MSSDF)": p.shown,
     "this run": "run: compared below" if key in compared else paper.NOT_COMPARABLE + " (dataset not run)",
     "note": p.note}
    for key, p in paper.PAPER_RESULTS.items()]))

# %% [markdown]
# ## Every task at a glance (headline metric; best mean in bold)
#
# The same table, generated, is the results table of the README (`python -m mssdf.reports.readme`).

# %%
display(Markdown(paper.results_markdown(results)))

# %% [markdown]
# ## Semantic segmentation
#
# Real labels: Atlanta building footprints and Las Vegas roads (panchromatic), IGN lidar classes
# (RGB + MS + nDSM; scored on val, the sample's four IGN tiles leave no test split).

# %%
display(paper.family_table(results, "segmentation"))
fig = F.family_bars(results, "segmentation")
written += F.save_figure(fig, out_dir, "segmentation", cfg.dpi)
plt.show()

# %% [markdown]
# ## Height estimation
#
# RGB → height above ground (Autzen lidar nDSM), the analogue of the paper's US3D task. RMSE in
# metres and in the paper's normalised 8-bit unit (lower is better).

# %%
display(paper.family_table(results, "height"))
fig = F.family_bars(results, "height")
written += F.save_figure(fig, out_dir, "height", cfg.dpi)
plt.show()

# %% [markdown]
# ## Scene classification (DERIVED classes)
#
# Three protocols on the Atlanta tiles' building-fraction classes: kNN and a linear probe on
# frozen features, and fine-tuning. One class holds most tiles, so macro F1 is the headline.

# %%
display(paper.family_table(results, "classification"))
fig = F.family_bars(results, "classification")
written += F.save_figure(fig, out_dir, "classification", cfg.dpi)
plt.show()

# %% [markdown]
# ## Change detection (SYNTHETIC pairs)
#
# The dashed line is the no-learning baseline: the pixel difference of the two dates,
# thresholded at the value that is best on the train pairs.

# %%
display(paper.family_table(results, "change"))
fig = F.family_bars(results, "change")
written += F.save_figure(fig, out_dir, "change", cfg.dpi)
plt.show()

# %% [markdown]
# ## Object detection
#
# Real boxes: Atlanta footprints as horizontal boxes (COCO mAP) and as oriented rectangles
# (DOTA's VOC AP@0.5, so no mAP@[.5:.95]), and NEON tree crowns (tree / dead tree).

# %%
display(paper.family_table(results, "detection"))
fig = F.family_bars(results, "detection")
written += F.save_figure(fig, out_dir, "detection", cfg.dpi)
plt.show()

# %% [markdown]
# ## Pre-training: the frozen-feature health check of every variant
#
# Linear probes on frozen features of each pre-training variant and of a random initialisation,
# on every labelled task of the sample (stage `pretrain_probe`; higher is better except RMSE).

# %%
probe = paper.probe_results(paper.read_metrics(resolve(cfg.probe)), cfg.probe)
display(pd.DataFrame([{"probe": r.metric, **{k: paper.format_value(v.as_dict()) for k, v in r.values.items()}}
                      for r in probe]))
fig = F.probe_bars(probe, pretrain_variants)
written += F.save_figure(fig, out_dir, "pretrain_probe", cfg.dpi)
plt.show()

# %% [markdown]
# ## Ablations
#
# The paper's ablations are pre-training variants (`random_masking`, `no_cross_modal`,
# `no_contrast`, `no_hsic`, `no_modality`); each is one more entry of `pretrain_variants`
# (e.g. `dvc exp run -S 'pretrain_variants=[mssdf,mae,no_hsic]'`) and appears here, against `mssdf`,
# once it has run.

# %%
ablation = paper.ablation_table(probe, pretrain_variants)
if ablation.empty:
    print(f"No ablation variant has run: pretrain_variants = {pretrain_variants}.")
else:
    display(ablation)

# %% [markdown]
# ## Pre-training curves
#
# The loss of each variant during pre-training on the sample (dvclive). Batches alternate between
# modality sets with different losses, hence the moving average.

# %%
live = {v: resolve(cfg.pretrain_live) / v / "live" / "plots" / "metrics" / "train" for v in pretrain_variants}
missing = [v for v, d in live.items() if not d.is_dir()]
if missing:
    print(f"no training curves for {missing} (run `dvc repro pretrain` first): {[str(live[v]) for v in missing]}")
live = {v: d for v, d in live.items() if d.is_dir()}
if live:
    fig = F.pretrain_curves(live)
    written += F.save_figure(fig, out_dir, "pretrain_curves", cfg.dpi)
    plt.show()
variants = {v: paper.read_metrics(resolve(cfg.pretrain_reports) / v / "metrics.json") for v in pretrain_variants}
display(pd.DataFrame([{"variant": v, "steps": m["steps"], "final loss": m["final_loss"],
                       **{f"images/s {g}": s for g, s in m["images_per_s"].items()}} for v, m in variants.items()]))

# %% [markdown]
# ## The method: masking and loss (method stage)
#
# Information-aware masking masks low-information patches more often than high-information ones
# (the vectorised code against the per-patch reference); cross-modal masking swaps the share of
# masked patches it is asked to; the loss terms of an untrained model on the real tile.

# %%
fig = F.method_figure(paper.read_metrics(resolve(cfg.method)))
written += F.save_figure(fig, out_dir, "method", cfg.dpi)
plt.show()

# %% [markdown]
# ## The data behind every number
#
# Tiles per task and split of the prepared sample and where each task's labels come from.

# %%
prepare_path = resolve(cfg.prepare)
if prepare_path.is_file():
    fig = F.prepare_figure(paper.read_metrics(prepare_path))
    written += F.save_figure(fig, out_dir, "prepare", cfg.dpi)
    plt.show()
else:
    print(f"{cfg.prepare} not found (run `dvc repro prepare`)")

# %% [markdown]
# ## Files written

# %%
for path in [resolve(cfg.results), resolve(cfg.markdown), *written]:
    print(path.relative_to(resolve(".")))
