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
# # 01 · Preparing the embedded real sample
#
# This notebook turns the real sample fetched by `make setup` (`data/raw`, see `data/raw/README.md`)
# into tiles, a tile index, train-only band statistics and a memory-mapped cache, by calling
# `mssdf.data.prepare.prepare`. Everything computed here lives in `mssdf/data/`; the notebook only
# sets parameters, calls the library and shows what came out so a person can check it by eye.
#
# Run by DVC (stage `prepare`, parameters from the `prepare:` section of `params.yaml`, output
# `data/prepared`), or top to bottom with the cheap defaults below (output in `scratch/prepare`;
# keys left out take the defaults of `mssdf.data.prepare.PrepareConfig`).

# %% tags=["parameters"]
# Parameters: DVC (`python -m mssdf.reports.execute ... --sections prepare`) replaces this
# dict with the `prepare:` section of params.yaml. The defaults are a cheap smoke run into
# scratch/: every source, with sparser windows on the two lidar strips.
prepare = {
    "raw_dir": "data/raw",
    "out_dir": "scratch/prepare",
    "sources": {"autzen": {"stride": 32}, "ign": {"stride": 16}, "rotterdam": {}, "atlanta": {}, "lasvegas": {}, "neon": {}},
}
prepare_report = {"metrics": "scratch/prepare/metrics.json"}  # the `prepare_report:` section

# %%
import json
from IPython.display import display

from mssdf.atomic import atomic_write_text
from mssdf.config import from_dict, to_dict
from mssdf.reports import preview
from mssdf.data.prepare import PrepareConfig
from mssdf.data.prepare import prepare as run_prepare
from mssdf.data.tasks import TASKS
from mssdf.paths import resolve

# The parameters above become a typed config: an unknown or mistyped key fails here.
cfg = from_dict(PrepareConfig, prepare, "prepare")
report = from_dict(preview.PrepareReportConfig, prepare_report, "prepare_report")
OUT = resolve(cfg.out_dir)
print(json.dumps(to_dict(cfg), indent=1))

# %% [markdown]
# ## Run the preparation
#
# Inputs are validated first (presence, readability, band counts, CRS/size/transform agreement,
# label values); the output is written to a temporary folder that replaces `out_dir` only when
# everything succeeded. The preview figures shown below are drawn from that temporary folder and
# saved into its `previews/` before the swap, so `out_dir` is never left half-updated. `out_dir`
# must not overlap `raw_dir` or the repository root, and an existing `out_dir` is replaced only if
# it holds the `summary.json` that a previous preparation wrote.

# %%
figures = {}  # name -> figure, drawn by the hook from the complete temporary folder
summary = run_prepare(cfg, before_swap=lambda folder: figures.update(preview.write_previews(folder, cfg.source_list)))
atomic_write_text(resolve(report.metrics), json.dumps(preview.stage_metrics(summary), indent=1, sort_keys=True) + "\n")
print(json.dumps(summary["tiles_per_source"], indent=1))

# %% [markdown]
# ## Tiles per task and split
#
# `label_kind` says where the labels come from: **real** (SpaceNet footprints and road mask, IGN
# lidar classes, Autzen heights), **synthetic** (the change task: objects removed, pasted or shifted
# in real tiles, with the exact change mask) or **derived** (scene classes computed from real labels).
# There are no real change-detection or scene-classification labels in this sample.

# %%
table = preview.tiles_table(OUT)
print(f"{'task':20s} {'source':10s} {'labels':10s} {'train':>6s} {'val':>5s} {'test':>5s}")
for r in table:
    print(f"{r['task']:20s} {r['source']:10s} {r['label_kind']:10s} {r['train']:6d} {r['val']:5d} {r['test']:5d}")
synthetic = [t for t, s in TASKS.items() if s.label_kind == "synthetic"]
derived = [t for t, s in TASKS.items() if s.label_kind == "derived"]
print("\nSYNTHETIC labels:", synthetic, "| DERIVED labels:", derived)

# %% [markdown]
# ## Scenes: RGB / pan, false-colour NIR, DSM hillshade, heights, labels
#
# Check: colours look natural; vegetation is bright in the NIR false colour; the hillshade shows
# buildings and trees (Autzen is a rotated strip, white = no lidar points); nDSM is a few metres on
# roofs and trees and ~0 on the ground (heights were converted from feet); footprints and roads lie
# on the buildings and roads of the image.

# %%
display(figures["scenes"])

# %% [markdown]
# ## Tile map coloured by split
#
# Splits are made of spatial blocks: no pixel belongs to tiles of two splits. Tiles missing from
# the map were rejected (too much no data) or straddled blocks of different splits.

# %%
display(figures["tile_map"])

# %% [markdown]
# ## Per-band histograms (train tiles, raw values)
#
# The model normalises with the train-only mean/std in `stats.json`.

# %%
display(figures["histograms"])
stats = json.loads((OUT / "stats.json").read_text())
for source, keys in stats.items():
    for key, st in keys.items():
        print(f"{source:10s} {key:7s} mean={[round(v, 1) for v in st['mean']]} std={[round(v, 1) for v in st['std']]}")

# %% [markdown]
# ## Detection boxes and SYNTHETIC change pairs
#
# Boxes are the extents of the real Atlanta footprints inside each tile. The change pairs are
# **synthetic**: the "after" image is the real tile with buildings removed, pasted or shifted (the
# mask is exactly the edited pixels), then given the differences of a second acquisition everywhere
# (gain, offset, colour balance, tone curve, illumination plane, sub-pixel misregistration, blur and
# noise: `prepare.change_shift`), so unchanged pixels are not equal across the dates.

# %%
for name in ("detection", "change_synthetic"):
    if name in figures:  # only when the Atlanta source was prepared
        display(figures[name])

# %% [markdown]
# ## Checks recorded during preparation

# %%
print(json.dumps(summary["scene_notes"], indent=1))

# %% [markdown]
# ## Licences and attribution
#
# Prepared tiles keep their sources' licences: SpaceNet tiles (Rotterdam, Atlanta, Las Vegas) are
# CC BY-SA 4.0 (footprint attributes from OpenStreetMap, ODbL), the Autzen lidar comes with laspy/PDAL
# (BSD-2-Clause), the Lambert-93 lidar is most likely IGN LiDAR HD (Etalab Open Licence 2.0), and
# the NEON airborne RGB is public domain (CC0 1.0; attribution: National Ecological Observatory
# Network), with tree-crown boxes by the DeepForest authors (MIT).

# %%
print((OUT / "LICENSE.md").read_text())
