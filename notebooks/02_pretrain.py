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
# # 02 · Pre-training MSSDF on the real sample
#
# Self-supervised pre-training with `mssdf.pretrain` on RGB ↔ height pairs of the Autzen
# airborne-lidar sample (prepared by stage `prepare`), then the quick health check of
# pre-training: **frozen-feature probes** of the encoder on the sample's height and
# segmentation tasks, against the same encoder at random initialisation.
#
# * Run by DVC (stage `pretrain`): papermill injects the `pretrain` section of `params.yaml`
#   (the run: `mssdf.pretrain.PretrainConfig`, with `profile` / `variant` shortcuts) and the
#   `pretrain_report` section (this notebook's options: `mssdf.reports.pretrain.PretrainReportConfig`).
# * Run top to bottom as is: a cheap smoke run into `scratch/` (the sample is prepared there
#   first if needed).
# * `pretrain_report.nproc > 1` launches the same run with `torchrun` (gloo on CPU, nccl on
#   GPUs); for GPUs and the paper's hyperparameters use `profile: paper`.

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `pretrain` and `pretrain_report`)
pretrain = {
    "profile": "smoke",
    "data": {"root": "scratch/prepare", "task": "pretrain_autzen", "dsm_source": "ndsm"},
    "epochs": 6,
    "batch_size": 8,
    "out_dir": "scratch/pretrain",
}
pretrain_report = {"prepare_if_missing": True, "out_dir": "scratch/pretrain_report"}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from mssdf.config import from_dict, to_dict
from mssdf.data.sample import SampleTiles
from mssdf.masking import mask_scores
from mssdf.paths import resolve
from mssdf.reports.plots import mask_overlay, patch_grid, pca_rgb, to_display
from mssdf.weights.native import load_pretrained
from mssdf.reports.pretrain import (ENCODER_LABELS, PretrainReportConfig, ensure_prepared, history_frame, load_encoders,
                                   masked_prediction_quality, probe_encoders, report_metrics, run_pretraining)
from mssdf.pretrain import build_config
from mssdf.pretrain.engine import TERMS
from mssdf.pretrain.masks import step_masks

report = from_dict(PretrainReportConfig, pretrain_report, "pretrain_report")
run = build_config(pretrain, "pretrain")  # every key checked before anything runs
report_dir = resolve(report.out_dir)
report_dir.mkdir(parents=True, exist_ok=True)
if report.prepare_if_missing:
    ensure_prepared(run.data.root, report.prepare_sources)
print(f"{run.model.get('preset')} preset, {run.epochs} epochs, batch {run.batch_size} x {report.nproc} process(es), "
      f"task {run.data.task}, modalities {run.data.modality_names}, out {run.out_dir}")
pd.Series({k: json.dumps(v) for k, v in to_dict(run).items()}).to_frame("run configuration")

# %% [markdown]
# ## 1. Training
#
# One process in this kernel, or `torchrun` when `nproc > 1`. Checkpoints (atomic, resumable
# bit for bit) go to `<out_dir>/checkpoints`, final weights to `<out_dir>/final`
# (`model.safetensors` + `config.json`, and timm `VisionTransformer` exports), metrics and
# plots to `<out_dir>/live` (dvclive).

# %%
history, final_dir = run_pretraining(run, report.nproc)
hist = history_frame(history)
print(f"{len(hist)} logged steps; final weights in {final_dir}")
hist.tail(3).round(4)

# %%
terms = [c for c in ("loss", *TERMS) if c in hist]
fig, axes = plt.subplots(1, len(terms) + 1, figsize=(4 * (len(terms) + 1), 3.2))
for ax, term in zip(axes, terms):
    ax.plot(hist.index, hist[term], lw=0.8, alpha=0.4)
    ax.plot(hist.index, hist[term].rolling(max(1, len(hist) // 20), min_periods=1).mean(), lw=1.5)
    ax.set_title(term); ax.set_xlabel("step")
axes[-1].plot(hist.index, hist["lr"], label="lr"); axes[-1].set_title("learning rate"); axes[-1].set_xlabel("step")
ax2 = axes[-1].twinx(); ax2.plot(hist.index, hist["momentum"], color="C1", label="EMA momentum"); ax2.set_ylabel("EMA momentum")
fig.tight_layout(); plt.show()
speed = hist["images_per_s"].iloc[len(hist) // 5:]
print(f"throughput: median {speed.median():.1f} images/s per process; memory {hist['memory_mb'].max():.0f} MB (max)")

# %% [markdown]
# ## 2. Masks and information scores on real validation tiles
#
# Masks are drawn the way training draws them (`mssdf.pretrain.masks.step_masks`, at the last
# epoch's substitution probability); the score map is what information-aware masking ranks.

# %%
model = load_pretrained(final_dir).eval()
val = SampleTiles(resolve(run.data.root), run.data.task, "val", modalities=list(run.data.modality_names),
                  dsm_source=run.data.dsm_source)
tiles = [val[i] for i in range(min(report.preview_tiles, len(val)))]
images = {m: torch.stack([torch.as_tensor(t[m]) for t in tiles]).float() for m in run.data.modality_names}
patch = model.cfg.patch_size
grid = (images[run.data.modality_names[0]].shape[-2] // patch, images[run.data.modality_names[0]].shape[-1] // patch)
masks = step_masks(images, patch, run.masking, epoch=run.epochs - 1, seed=run.seed, step=0, first_index=0, group=len(tiles))
scores = mask_scores(images, patch, run.masking)
keys = list(images)
fig, ax = plt.subplots(len(tiles), 2 + len(keys), figsize=(3.2 * (2 + len(keys)), 3.2 * len(tiles)), squeeze=False)
for i in range(len(tiles)):
    ax[i, 0].imshow(to_display(images[keys[0]][i], keys[0])); ax[i, 0].set_title(f"{keys[0]} ({tiles[i]['meta']['tile']})")
    ax[i, 1].imshow(patch_grid(scores[i], grid), cmap="magma"); ax[i, 1].set_title("information score")
    for j, k in enumerate(keys):
        ax[i, 2 + j].imshow(mask_overlay(to_display(images[k][i], k), masks[k][i], grid)); ax[i, 2 + j].set_title(f"mask: {k}")
for a in ax.flat: a.axis("off")
fig.tight_layout(); plt.show()

# %% [markdown]
# ## 3. Teacher targets against the student's predictions
#
# At masked positions the student predicts the teacher's (layer-normalised) features of the
# full image. Below: the first three principal components of targets and predictions (one
# joint projection, so colours compare), masked positions only, and their mean cosine
# similarity per modality — for the pre-trained model and, as a reference, at random init.

# %%
quality = masked_prediction_quality(model, images, masks)
encoders = load_encoders(final_dir, seed=run.seed)  # pre-trained and random init, for the probes below
with torch.no_grad():
    out = model(images, masks)
k = keys[0]
target, pred = out.target[k][0], out.pred[k][0]
t_rgb, p_rgb = pca_rgb(target, pred)
hidden = masks[k][0].reshape(grid).numpy()
fig, ax = plt.subplots(1, 3, figsize=(10, 3.4))
ax[0].imshow(to_display(images[k][0], k)); ax[0].set_title(f"{k} tile")
ax[1].imshow(t_rgb.reshape(*grid, 3)); ax[1].set_title("teacher target (PCA)")
p_img = p_rgb.reshape(*grid, 3).copy(); p_img[~hidden] = 1.0
ax[2].imshow(p_img); ax[2].set_title("prediction at masked patches")
for a in ax: a.axis("off")
plt.show()
pd.Series(quality).to_frame("mean cosine(prediction, target) at masked patches").round(3)

# %% [markdown]
# ## 4. Frozen-feature probes: pre-trained against random initialisation
#
# The encoder is frozen; the probes see **RGB only**, at patch level (16 × 16 px = 16 × 16 m):
# * **height** (Autzen, RGB → nDSM in metres, real lidar heights): ridge regression, RMSE on
#   the test split; "baseline" predicts the train mean everywhere;
# * **segmentation** (IGN lidar, RGB → ASPRS class of the top point, real provider labels):
#   linear softmax probe, mIoU over classes present, on the validation split — the IGN strip
#   is tiny (a few tiles), so this number rests on very few patches (see `n_eval`).
#
# Numbers are reported whichever way they fall.

# %%
rows = probe_encoders(encoders, run.data.root, report)
probe = pd.DataFrame(rows).assign(encoder=lambda d: d["encoder"].map(ENCODER_LABELS))
display(probe.set_index(["task", "metric", "encoder"]).round(4))  # rmse_m: lower is better; miou: higher is better
metrics = report_metrics(rows, quality, history)
(report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
print(json.dumps(metrics, indent=2))

# %% [markdown]
# ## Reading the results
#
# * Loss curves: the reconstruction term should fall while the teacher (EMA of the student)
#   moves; contrast falls as co-located RGB and height tokens align; HSIC measures how much the
#   modality-specific halves still share; the modality head separates modalities almost at once
#   (their patch embeddings differ).
# * The probes are a health check, not a benchmark: a few hundred patches of one small lidar
#   strip. The comparison that matters is pre-trained vs random init on identical probes.
# * Sample data: Autzen lidar (PDAL sample, BSD-2, via laspy 2.7.0); IGN LiDAR HD sample
#   (Etalab 2.0). See `data/raw/LICENSE.md`.
