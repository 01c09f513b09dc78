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
# # 02 · Pre-training on every source of the sample
#
# Self-supervised pre-training with `mssdf.pretrain` on the *train* tiles of every source the
# sample has, each tile with its own modality set — Autzen (RGB + nDSM), IGN (RGB + MS + nDSM),
# Rotterdam (pan + MS), Atlanta and Las Vegas (pan), NEON (RGB) — into one shared encoder with
# one patch embedding (adapter) per modality. One variant per run: `mssdf` (the method) or a
# baseline/ablation (`mae`: pixel targets, random masks, no cross-modal terms).
#
# * Run by DVC once per variant (stage `pretrain@<variant>`): papermill injects the `pretrain`
#   section of `params.yaml` (the run: `mssdf.pretrain.PretrainConfig`, with `variant` and
#   `out_dir` set by the stage) and `pretrain_report` (this notebook's options).
# * Run top to bottom as is: a few steps into `scratch/` (the sample is prepared there first
#   if needed).
# * `pretrain_report.nproc > 1` launches the same run with `torchrun`; `profile: paper` gives
#   the authors' hyperparameters for GPUs.
#
# The frozen-feature health check of all variants against random initialisation is the next
# notebook's (`03_pretrain_probe`).

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `pretrain` and `pretrain_report`)
pretrain = {
    "profile": "smoke",
    "variant": "mssdf",
    "model": {"preset": "tiny", "img_size": 64, "patch_size": 8},
    "data": {"kind": "mixture", "root": "scratch/prepare", "dsm_source": "ndsm", "components": {
        "autzen": {"task": "pretrain_autzen"}, "ign": {"task": "pretrain_ign", "crop": 32},
        "rotterdam": {"task": "pretrain_rotterdam"}, "atlanta": {"task": "seg_buildings"},
        "lasvegas": {"task": "seg_roads"}, "neon": {"task": "pretrain_neon"}}},
    "batch_size": 4,
    "mask_group": 4,
    "epochs": 1,
    "max_steps": 12,
    "log_every": 1,
    "out_dir": "scratch/pretrain/mssdf",
}
pretrain_report = {"prepare_if_missing": True, "out_dir": "scratch/pretrain_report"}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from mssdf.config import from_dict, to_dict
from mssdf.masking import mask_scores
from mssdf.paths import resolve
from mssdf.pretrain import build_config
from mssdf.pretrain.engine import TERMS, run_groups
from mssdf.pretrain.masks import step_masks
from mssdf.pretrain.mixture import MixtureDataset
from mssdf.reports.plots import mask_overlay, patch_grid, pca_rgb, to_display
from mssdf.reports.pretrain import (PretrainReportConfig, ensure_prepared, example_batches, group_losses, history_frame,
                                   masked_prediction_quality, report_metrics, run_pretraining, source_statistics)
from mssdf.weights.native import load_pretrained

report = from_dict(PretrainReportConfig, pretrain_report, "pretrain_report")
run = build_config(pretrain, "pretrain")  # every key checked before anything runs
variant = pretrain.get("variant", "mssdf")
report_dir = resolve(report.out_dir)
report_dir.mkdir(parents=True, exist_ok=True)
if report.prepare_if_missing:
    ensure_prepared(run.data.root, report.prepare_sources)
root = resolve(run.data.root)
dataset = MixtureDataset(run, root)  # also checks every component's tiles (and that none overlaps a val/test area)
groups = run_groups(run)
print(f"variant {variant}: {run.model.get('preset')} preset, {run.crop} px / patch {run.model_config().patch_size}, "
      f"{run.epochs} epochs, batch {run.batch_size} x {report.nproc} process(es), target {run.model_config().target}, "
      f"masking {run.masking.mode}, out {run.out_dir}")
pd.Series({k: json.dumps(v) for k, v in to_dict(run).items()}).to_frame("run configuration")

# %% [markdown]
# ## 1. What pre-training reads
#
# Each component is the **train split** of one prepared task (validation and test areas of every
# labelled task are checked on the ground not to overlap any of them). `weight` sets how many
# tiles a component contributes to an epoch (draws = weight × tiles; a tile drawn twice gets
# two random crops). Batches hold one modality set each (a *group*), so a pan-only batch costs
# pan tokens only and every rank of a step trains the same adapters.

# %%
mix = pd.DataFrame(dataset.summary())
display(mix.set_index("component"))
per_group = mix.groupby("group", sort=False)["draws_per_epoch"].sum()
print("global batches per epoch:", {g: n // (run.batch_size * report.nproc) for g, n in per_group.items()})

# %% [markdown]
# ### Standardisation: each source by its own train statistics
#
# The same modality differs between sources by up to two orders of magnitude — below, the
# train-pixel mean ± std per band that each component is standardised with (from the
# preparation's `stats.json`). Multi-spectral digital numbers of IGN (16-bit orthophoto) sit
# near 32,000, Rotterdam's (WorldView-2) near 200; pan means differ 3× between Rotterdam, Atlanta
# and Las Vegas. One set of statistics over the union of pixels would leave whole sources several
# standard deviations off centre, so every source is standardised with its own
# (`SampleTiles(normalize=True)`); downstream tasks do the same with their source's statistics.

# %%
stats = source_statistics(root, run)
stats["mean ± std"] = [f"{m:,.1f} ± {s:,.1f}" for m, s in zip(stats["mean"], stats["std"])]
display(stats.pivot_table(index=["modality", "band"], columns="component", values="mean ± std", aggfunc="first").fillna(""))

# %% [markdown]
# ## 2. Training
#
# One process in this kernel, or `torchrun` when `nproc > 1`. Checkpoints (atomic, resumable
# bit for bit) go to `<out_dir>/checkpoints`, final weights to `<out_dir>/final`
# (`model.safetensors` + `config.json`, timm exports), metrics to `<out_dir>/live` (dvclive).

# %%
history, final_dir = run_pretraining(run, report.nproc)
hist = history_frame(history)
hist["group"] = [groups[int(g)] for g in hist["group"]] if "group" in hist else groups[0]  # index -> name
print(f"{len(hist)} logged steps; final weights in {final_dir}")
hist.tail(3).round(4)

# %% [markdown]
# ### Loss of each term, for each modality set
#
# Rolling means over each group's own steps. Pair terms (contrast, HSIC) exist only for groups
# with two or more modalities; single-modality groups train by masked distillation (or pixel
# reconstruction for `mae`) alone.

# %%
terms = [t for t in ("loss", *TERMS) if t in hist]
long = group_losses(history, groups, TERMS)
fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.4), squeeze=False)
for ax, term in zip(axes[0], terms):
    part = long[long.term == term]
    for g, rows in part.groupby("group", sort=False):
        ax.plot(rows.step, rows.value.rolling(max(1, len(rows) // 10), min_periods=1).mean(), label=g, lw=1.4)
    ax.set_title(term); ax.set_xlabel("step")
axes[0][0].legend(fontsize=7, title="modality set", title_fontsize=7)
fig.tight_layout(); plt.show()
speed = hist.iloc[len(hist) // 10:].groupby("group", sort=False)["images_per_s"].median()
patch = run.model_config().patch_size
display(pd.DataFrame({"tokens per image (per modality)": {g: (int(g.rsplit("@", 1)[1]) // patch) ** 2 for g in groups},
                      "images/s (median)": speed.round(1), "steps": hist.groupby("group", sort=False).size()}))
print(f"memory {hist['memory_mb'].max():.0f} MB (max); lr and EMA momentum in {run.out_dir}/live")

# %% [markdown]
# ## 3. Masks on every source
#
# Two train crops per source, masked the way training masks them
# (`mssdf.pretrain.masks.step_masks` at the last epoch's substitution probability): the
# information score that information-aware masking ranks (first column after the image), then
# each modality's mask (greyed out = hidden). Cross-modal substitution hides and reveals different
# patches in each modality of a sample.

# %%
examples = example_batches(dataset, report.examples_per_source)
n_cols = 2 + max(len(b) for b in examples.values())
n_rows = sum(next(iter(b.values())).shape[0] for b in examples.values())
fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.3 * n_rows), squeeze=False)
row = 0
all_masks = {}
for name, images in examples.items():
    keys = list(images)
    size = images[keys[0]].shape[-1]
    grid = (size // patch, size // patch)
    masks = step_masks(images, patch, run.masking, epoch=run.epochs - 1, seed=run.seed, step=0, first_index=0,
                       group=images[keys[0]].shape[0])
    all_masks[name] = masks
    scores = mask_scores(images, patch, run.masking)
    for i in range(images[keys[0]].shape[0]):
        ax = axes[row]
        ax[0].imshow(to_display(images[keys[0]][i], keys[0]), cmap="gray"); ax[0].set_title(f"{name}: {keys[0]}", fontsize=8)
        ax[1].imshow(patch_grid(scores[i], grid), cmap="magma"); ax[1].set_title("information score", fontsize=8)
        for j, k in enumerate(keys):
            ax[2 + j].imshow(mask_overlay(to_display(images[k][i], k), masks[k][i], grid)); ax[2 + j].set_title(f"mask: {k}", fontsize=8)
        row += 1
for a in axes.flat:
    a.axis("off")
fig.tight_layout(); plt.show()

# %% [markdown]
# ## 4. Predictions against targets at masked patches
#
# The student predicts, at masked positions, the teacher's layer-normalised features of the
# full image (`mssdf`) or the per-patch-normalised pixels (`mae`). Mean cosine similarity per
# source and modality, on the crops above; then the first three principal components of target
# and prediction for one crop (one joint projection, so colours compare).

# %%
model = load_pretrained(final_dir).eval()
quality = {}
for name, images in examples.items():
    group = f"{'+'.join(images)}@{next(iter(images.values())).shape[-1]}"
    quality.setdefault(group, masked_prediction_quality(model, images, all_masks[name]))
display(pd.DataFrame(quality).T.round(3).rename_axis("modality set"))
name = next(n for n, b in examples.items() if len(b) > 1)
images, masks = examples[name], all_masks[name]
with torch.no_grad():
    out = model(images, masks)
k = list(images)[0]
size = images[k].shape[-1]
grid = (size // patch, size // patch)
t_rgb, p_rgb = pca_rgb(out.target[k][0], out.pred[k][0])
hidden = masks[k][0].reshape(grid).numpy()
fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
ax[0].imshow(to_display(images[k][0], k), cmap="gray"); ax[0].set_title(f"{name}: {k}")
ax[1].imshow(t_rgb.reshape(*grid, -1)); ax[1].set_title("target (PCA)")
p_img = p_rgb.reshape(*grid, -1).copy(); p_img[~hidden] = 1.0
ax[2].imshow(p_img); ax[2].set_title("prediction at masked patches")
for a in ax:
    a.axis("off")
plt.show()

# %%
metrics = report_metrics(history, groups, quality, patch)
metrics["variant"] = variant
(report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
print(json.dumps(metrics, indent=2))

# %% [markdown]
# ## Reading the results
#
# * The reconstruction target of `mssdf` moves with the teacher (an EMA of the student), so its
#   loss need not fall monotonically; the contrast term falls as co-located tokens of a pair of
#   modalities align; HSIC (linear CKA) measures how much the modality-specific halves still
#   share; the modality head separates modalities almost at once.
# * Whether any of this helps is the health check's question (`03_pretrain_probe`): the same
#   frozen-feature probes for every variant and for random initialisation, on every labelled
#   task of the sample.
# * Sample data, their origins and licences: `data/raw/LICENSE.md`.
