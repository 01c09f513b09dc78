"""Pre-training on a mixture of sources: config, grouped batches, per-source
standardisation, the leak check per component, adapters trained only by the batches that
hold their modality, resume and 2-process equality with mixed modality sets."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch
from data_fakes import SMALL, make_raw

from _train_common import REPO, final_weights, subprocess_env, write_yaml
from mssdf.config import ConfigError, from_dict
from mssdf.data.io import DataError
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sample import SampleTiles, load_stats
from mssdf.engine.distributed import init_distributed
from mssdf.engine.sampler import GroupedBatchSampler
from mssdf.pretrain import build_config, pretrain
from mssdf.pretrain.data import check_data
from mssdf.pretrain.engine import pretrain_step, setup
from mssdf.pretrain.mixture import MixtureDataset

MICRO = {"preset": "tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, "fusion_depth": 1}
COMPONENTS = {
    "autzen": {"task": "pretrain_autzen"},  # rgb + dsm
    "ign": {"task": "pretrain_ign"},  # rgb + ms + dsm
    "rotterdam": {"task": "pretrain_rotterdam", "weight": 0.5},  # pan + ms
    "atlanta": {"task": "seg_buildings", "crop": 16},  # pan (train tiles of a labelled task)
    "lasvegas": {"task": "seg_roads", "crop": 32, "weight": 2.0},  # pan at its own crop
    "neon": {"task": "pretrain_neon"},  # rgb
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    raw = make_raw(base / "raw")
    prepare(from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(base / "out"), **SMALL}), log=None)
    return base / "out"


def mix_run(root, out, **overrides):
    run = {"model": dict(MICRO), "data": {"kind": "mixture", "root": str(root), "dsm_source": "ndsm",
                                          "components": COMPONENTS},
           "optim": {"lr": 1e-3, "warmup_epochs": 0.5}, "epochs": 2, "batch_size": 4, "checkpoint_every": 0,
           "log_every": 1, "out_dir": str(out), "export_timm": False}
    run.update(overrides)
    return run


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("change, key", [
    ({"components": {}}, "data.components"),
    ({"modalities": ["rgb"]}, "data.modalities"),
    ({"split": "val"}, "data.split"),
    ({"components": {"x": {"task": "nope"}}}, "data.components.x.task"),
    ({"components": {"x": {"task": "seg_buildings", "modalities": ["rgb"]}}}, "data.components.x.modalities"),
    ({"components": {"x": {"task": "seg_buildings", "modalities": ["pan_t2"]}}}, "data.components.x.modalities"),
    ({"components": {"x": {"task": "seg_buildings", "weight": 0}}}, "data.components.x.weight"),
    ({"components": {"x": {"task": "seg_buildings", "bogus": 1}}}, "data.components.x.bogus"),
])
def test_bad_mixture_configs_name_the_key(tmp_path, change, key):
    run = mix_run(tmp_path, tmp_path)
    run["data"] = {**run["data"], **change}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(run)


def test_mixture_modalities_sets_and_rules(tmp_path):
    cfg = build_config(mix_run(tmp_path, tmp_path))
    # components in name order whatever the mapping's order; the union of modalities in order of appearance
    assert list(cfg.data.components) == sorted(COMPONENTS)
    assert build_config(mix_run(tmp_path, tmp_path, data={**mix_run(tmp_path, tmp_path)["data"], "components": dict(
        reversed(COMPONENTS.items()))})) == cfg
    assert cfg.data.modality_names == ("pan", "rgb", "dsm", "ms")
    assert cfg.modality_sets == [("pan",), ("rgb", "dsm"), ("rgb", "ms", "dsm"), ("rgb",), ("pan", "ms")]
    assert cfg.model_config({"rgb": 3, "dsm": 1, "ms": 4, "pan": 1}).normalization == {}
    with pytest.raises(ConfigError, match="masking.reference"):  # pan-only samples have no rgb to mask by
        build_config(mix_run(tmp_path, tmp_path, masking={"reference": "rgb"}))
    with pytest.raises(ConfigError, match="model.normalization"):
        build_config(mix_run(tmp_path, tmp_path, model={**MICRO, "normalization": {"rgb": {"mean": [0, 0, 0], "std": [1, 1, 1]}}}))
    single = mix_run(tmp_path, tmp_path)
    single["data"] = {**single["data"], "components": {"a": {"task": "seg_buildings"}, "b": {"task": "pretrain_neon"}}}
    with pytest.raises(ConfigError, match="losses.contrast"):  # no sample has a pair
        build_config(single)
    single["losses"] = {"contrast": 0.0, "hsic": 0.0}
    assert build_config(single).modality_sets == [("pan",), ("rgb",)]


# ------------------------------------------------------------------------------ sampler
def test_grouped_sampler_properties():
    pools = [range(0, 5), range(5, 8), range(8, 20)]
    draws, groups, G = [5, 7, 6], [0, 0, 1], 4
    one = GroupedBatchSampler(pools, draws, groups, G, seed=3)
    assert one.batches_per_epoch == 12 // G + 6 // G
    for epoch in range(3):
        batches = one.global_batches(epoch)
        assert len(batches) == one.batches_per_epoch
        for g, keys in batches:
            assert len(keys) == G
            assert {groups[next(p for p, r in enumerate(pools) if k[1] in r)] for k in keys} == {g}  # one group per batch
        # pool 1 (3 samples, 7 draws): its samples are repeated with draw numbers, never the same (index, draw) twice
        keys = [k for _, ks in batches for k in ks]
        assert len(set(keys)) == len(keys)
        assert all(k[0] == epoch for k in keys)
    assert one.global_batches(1) == GroupedBatchSampler(pools, draws, groups, G, seed=3).global_batches(1)
    assert one.global_batches(1) != one.global_batches(2)
    # over all draws of an epoch (before the drop of incomplete batches) each pool gives exactly its draws
    full = GroupedBatchSampler(pools, [4, 4, 8], groups, G, seed=0)
    counts = Counter(next(p for p, r in enumerate(pools) if k[1] in r) for _, ks in full.global_batches(0) for k in ks)
    assert counts == {0: 4, 1: 4, 2: 8}
    # two ranks: their slices, concatenated, are the one-process global batches
    r0, r1 = (GroupedBatchSampler(pools, draws, groups, 2, rank=r, world_size=2, seed=3) for r in (0, 1))
    for r in (r0, r1):
        r.set_position(1, 1)
    assert [a + b for a, b in zip(r0, r1)] == [ks for _, ks in one.global_batches(1)[1:]]
    with pytest.raises(DataError, match="pan"):
        GroupedBatchSampler([range(3)], [3], [0], 4, names=["pan@64"])


# ------------------------------------------------------------------------------ data
def test_components_are_standardised_with_their_own_sources_statistics(root, tmp_path):
    cfg = build_config(mix_run(root, tmp_path))
    ds = MixtureDataset(cfg, root)
    assert [g.name for g in ds.groups] == ["pan@16", "rgb+dsm@16", "rgb+ms+dsm@16", "pan@32", "rgb@16", "pan+ms@16"]
    assert len(ds) == sum(r["tiles"] for r in ds.summary())
    for part in ds.parts:
        raw = SampleTiles(root, part.task, "train", modalities=part.modalities, dsm_source="ndsm")
        stats = load_stats(root, part.task)
        for m in part.modalities:
            key = "ndsm" if m == "dsm" else m
            x = torch.stack([raw[i][m] for i in range(len(raw))]).double()
            z = torch.stack([SampleTiles(root, part.task, "train", modalities=part.modalities, dsm_source="ndsm",
                                         normalize=True)[i][m] for i in range(len(raw))]).double()
            mean = torch.tensor(stats[key]["mean"]).double()[None, :, None, None]
            std = torch.tensor(stats[key]["std"]).double()[None, :, None, None]
            std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant bands (the fakes have some) stay as is
            assert torch.allclose(z, (x - mean) / std, atol=1e-4)
    # a repeated draw of a tile in one epoch is another random crop; the same key, the same crop
    lv = ds.names.index("lasvegas")
    i = ds.offsets[lv]
    assert torch.equal(ds.get(i, 0, 0)["pan"], ds.get(i, 0, 0)["pan"])


def test_repeated_draws_get_their_own_crops(root):
    tiles = SampleTiles(root, "seg_roads", "train", modalities=["pan"], crop=16, random_crop=True, seed=0)
    crops = {tuple(tiles.get(0, 0, d)["meta"][k] for k in ("row", "col")) for d in range(8)}
    assert len(crops) > 1


def test_leak_check_names_the_component(root, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(root, leaky)
    rows = list(csv.DictReader(open(leaky / "index.csv")))
    tile = next(r["tile"] for r in rows if r["task"] == "pretrain_autzen" and r["split"] == "train")
    for r in rows:  # the height task now evaluates on a tile pre-training reads
        if r["task"] == "height" and r["tile"] == tile:
            r["split"] = "test"
    with open(leaky / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"data\.components\.autzen.*height"):
        check_data(build_config(mix_run(leaky, tmp_path)))
    assert check_data(build_config(mix_run(root, tmp_path))) == root


# ------------------------------------------------------------------------------ training
def _adapters(model):
    return {m: torch.cat([p.detach().flatten().clone() for p in model.encoder.patch_embed.proj[m].parameters()])
            for m in model.encoder.patch_embed.proj}


def test_a_batch_trains_the_adapters_it_holds_and_no_other(root, tmp_path):
    cfg = build_config(mix_run(root, tmp_path / "run", optim={"lr": 1e-3, "warmup_epochs": 0.0}))  # lr > 0 from step 0
    run = setup(cfg, init_distributed("cpu"), tmp_path / "run")
    step = pretrain_step(run)
    seen = set()
    for k, batch in enumerate(run.loader):
        before = _adapters(run.state.model)
        out = step(batch, k)
        after = _adapters(run.state.model)
        changed = {m for m in before if not torch.equal(before[m], after[m])}
        assert changed == set(batch), (k, sorted(batch), sorted(changed))
        n_pairs = len(batch) * (len(batch) - 1) // 2
        assert ("contrast" in out.scalars) == (n_pairs > 0) and ("hsic" in out.scalars) == (n_pairs > 0)
        assert all(torch.isfinite(v) for v in out.scalars.values())
        seen.add(frozenset(batch))
    assert len(seen) >= 4  # single- and multi-modality batches both occurred


def test_mixture_resume_is_bit_identical(root, tmp_path):
    whole = pretrain(build_config(mix_run(root, tmp_path / "whole")), live=False, progress=False, log=None)
    cut = mix_run(root, tmp_path / "cut", max_steps=whole.global_step // 2 + 1, checkpoint_every=3)
    pretrain(build_config(cut), live=False, progress=False, log=None)
    resumed = pretrain(build_config({**cut, "max_steps": None, "resume": True}), live=False, progress=False, log=None)
    assert resumed.resumed_from is not None and resumed.global_step == whole.global_step
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    groups = {h["group"] for h in whole.history}
    assert len(groups) > 1 and whole.info["groups"][1] == "rgb+dsm@16"
    assert [h["group"] for h in resumed.history] == [h["group"] for h in whole.history]


def test_two_processes_equal_one_process_with_mixed_modality_sets(root, tmp_path):
    common = dict(mask_group=2, epochs=2)
    cfg = write_yaml(tmp_path / "ddp.yaml", mix_run(root, tmp_path / "ddp", batch_size=2, **common))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mssdf.pretrain",
           "--config", str(cfg), "--no-live", "--no-progress"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = pretrain(build_config(mix_run(root, tmp_path / "one", batch_size=4, **common)), live=False, progress=False, log=None)
    finally:
        torch.set_num_threads(before)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "2 process(es)" in out and "global batch 4" in out
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "ddp")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    assert len({h["group"] for h in single.history}) >= 4
