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
# # 03 · Health check of pre-training: frozen features on every labelled task
#
# Does pre-training give features a linear probe can use, and more than random weights do?
# Every pre-trained variant (`mssdf`, the `mae` baseline, any ablation in `pretrain_variants`)
# and the same encoder at random initialisation are frozen; a small probe is fitted on each
# labelled task of the sample and scored on its held-out tiles. This is a health check, not a
# benchmark: the sample is small and the probes are linear. The fine-tuned comparisons are the
# downstream notebooks'.
#
# * Run by DVC (stage `pretrain_probe`, after every `pretrain@<variant>`): papermill injects
#   `pretrain_variants` and the `pretrain_probe` section (`mssdf.reports.health.ProbeStageConfig`).
# * Run top to bottom as is: probes the smoke weights `02_pretrain` writes to
#   `scratch/pretrain/mssdf` (run that notebook first), on the sample prepared in `scratch/`.

# %% tags=["parameters"]
# Parameters (smoke defaults; `dvc repro` injects params.yaml's `pretrain_variants` and `pretrain_probe`)
pretrain_variants = ["mssdf"]
pretrain_probe = {
    "models_dir": "scratch/pretrain",
    "root": "scratch/prepare",
    "out_dir": "scratch/pretrain_probe",
    "health": {"seeds": [0, 1], "tasks": ["height", "seg_buildings", "change"], "probe_steps": 30},
}

# %%
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from mssdf.config import from_dict
from mssdf.paths import resolve
from mssdf.reports.health import (ProbeStageConfig, health_check, health_metrics, load_variant_encoders, summarise,
                                  with_random_init)

cfg = from_dict(ProbeStageConfig, pretrain_probe, "pretrain_probe")  # unknown keys fail here
variants = list(pretrain_variants)
out_dir = resolve(cfg.out_dir)
out_dir.mkdir(parents=True, exist_ok=True)
encoders = load_variant_encoders(cfg.models_dir, variants)  # fails naming the missing folder
first = next(iter(encoders.values())).cfg
print(f"variants {variants}; encoder {first.embed_dim}-d, depth {first.depth}, patch {first.patch_size}, "
      f"adapters {sorted(first.modalities)}; seeds {list(cfg.health.seeds)}; probe cells {cfg.health.cell} px")

# %% [markdown]
# ## The probes
#
# One probe per task, chosen by what the task predicts (`mssdf.reports.health.probe_kind`):
# dense labels → patch-majority linear classifier (mIoU); height → ridge regression on cell-mean
# nDSM (RMSE in metres, lower is better); tile classes → mean-pooled features, linear classifier
# (accuracy); change → `[|f₁ − f₂|, f₁ · f₂]` of the two dates through the same adapter
# (IoU of "changed"); detection → "is this cell at least half covered by building boxes"
# (IoU of "object"). Dense probes work on 16 px cells, so every geometry is scored on the same
# targets. `baseline` is a constant predictor fitted on the same train targets.
#
# **Seeds.** Per seed the probe's train tiles are resampled with replacement (the same resample
# for every encoder) and the random-init encoder is redrawn. The spread is the probe's
# sensitivity to its train sample (plus init variance for random init), **not** a spread over
# pre-training runs: one pre-training run per variant fits the CPU budget.
#
# Labels: `change` is SYNTHETIC (buildings removed, pasted or shifted in real tiles); `scene` and
# `scene_asprs` are DERIVED from the real masks/classes; the others are real.

# %%
rows = health_check(with_random_init(encoders), cfg.root, cfg.health, log=print)
table = summarise(rows)
display(table[["mean ± std", "baseline", "higher_is_better", "label_kind", "eval_split", "n_seeds"]])

# %% [markdown]
# ## Each variant against random initialisation
#
# Bars: mean over seeds; whiskers: ± one standard deviation; the dashed line is the constant
# baseline. For `rmse_m` lower is better; for every other metric higher is better.

# %%
tasks = list(dict.fromkeys(r["task"] for r in rows))
names = list(dict.fromkeys(r["encoder"] for r in rows))
fig, axes = plt.subplots(1, len(tasks), figsize=(2.6 * len(tasks), 3.4), squeeze=False)
for ax, task in zip(axes[0], tasks):
    part = table.xs(task, level="task")
    metric = part.index.get_level_values("metric")[0]
    part = part.droplevel("metric").reindex(names)
    ax.bar(range(len(names)), part["mean"], yerr=part["std"].fillna(0), color=[f"C{i}" for i in range(len(names))], capsize=3)
    ax.axhline(float(part["baseline"].mean()), ls="--", color="grey", lw=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    kind = part["label_kind"].iloc[0]
    ax.set_title(f"{task}{' (' + kind.upper() + ')' if kind in ('synthetic', 'derived') else ''}\n{metric}", fontsize=9)
fig.tight_layout(); plt.show()

# %% [markdown]
# ## Paired differences
#
# Per seed the variants and random init are probed on the same resampled train tiles, so the
# difference variant − random init per seed is the fairer comparison (sign-adjusted so that
# positive = the variant is better).

# %%
frame = pd.DataFrame(rows)
wide = frame.pivot_table(index=["task", "metric", "seed"], columns="encoder", values="score")
sign = frame.groupby(["task", "metric"])["higher_is_better"].first().map({True: 1.0, False: -1.0})
diff = pd.DataFrame({v: (wide[v] - wide["random_init"]) for v in variants if v in wide})
diff = diff.mul(sign.reindex(diff.index.droplevel("seed")).to_numpy(), axis=0)
paired = diff.groupby(["task", "metric"]).agg(["mean", "std"])
display(paired.round(4))

# %%
number = lambda x: round(float(x), 6) if math.isfinite(float(x)) else None  # noqa: E731 (JSON has no NaN)
metrics = {"variants": variants, "seeds": list(cfg.health.seeds), "cell": cfg.health.cell, "probe": health_metrics(rows),
           "better_than_random_init": {v: {f"{t}_{m}": number(paired.loc[(t, m), (v, "mean")])
                                           for t, m in paired.index} for v in variants if (v, "mean") in paired}}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
print(json.dumps(metrics["better_than_random_init"], indent=2))

# %% [markdown]
# ## Reading the results
#
# * A variant earns its pre-training where its paired difference is positive by more than its
#   spread. Tasks whose evaluation split holds one or two tiles (IGN's `seg_asprs` and
#   `scene_asprs`, on `val`) say little either way.
# * Random initialisation is a strong baseline for linear probes on tiny data: random
#   projections of patches already separate bright roofs from roads.
# * The numbers are reported whichever way they fall; the conclusions about the method belong
#   to the downstream notebooks, which fine-tune.
