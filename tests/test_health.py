"""The frozen-feature health check covers every labelled task, seeds and encoders as documented."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import micro_config
from data_fakes import SMALL, make_raw

import mssdf.reports.health as health
from mssdf.config import ConfigError, from_dict
from mssdf.data.index import INDEX_COLUMNS, read_index, write_index
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sample import SampleTiles, load_stats
from mssdf.data.tasks import TASKS, TaskSpec
from mssdf.model import MSSDF, NormStats
from mssdf.reports.health import (
    HealthConfig,
    pool_cells,
    bootstrap_indices,
    encoder_fingerprint,
    eval_split,
    health_check,
    health_metrics,
    plan_tasks,
    probe_kind,
    probe_scores,
    summarise,
    task_targets,
    wants_normalized,
    with_random_init,
)

EXPECTED_METRICS = {
    "height": "rmse_m", "seg_asprs": "miou", "seg_buildings": "miou", "seg_roads": "miou", "detection": "iou_object",
    "detection_trees": "iou_object", "change": "iou_changed", "scene": "accuracy", "scene_asprs": "accuracy",
}  # fmt: skip
PAN_TASKS = {"seg_buildings", "seg_roads", "detection", "change", "scene"}
STABLE_KEYS = {"encoder", "task", "metric", "higher_is_better", "seed", "score", "eval_split", "n_train", "n_eval",
               "label_kind", "modality"}  # fmt: skip
FAST = dict(cell=None, probe_steps=25)  # fewer L-BFGS steps: the tests check plumbing, not probe quality
MODALITIES = {"rgb": 3, "pan": 1, "dsm": 1, "ms": 4}


def _encoder(seed: int, modalities=MODALITIES, normalization=None, patch_size: int = 8):
    """A micro encoder (patch 8 unless told) built with ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return MSSDF(micro_config(modalities=modalities, normalization=normalization or {}, patch_size=patch_size)).encoder.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny probes and encoders: one intra-op thread (on a busy 2-core machine, two threads
    make each small L-BFGS fit ~20x slower); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("health")
    raw = make_raw(base / "raw")
    prepare(from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(base / "out"), **SMALL}), log=None)
    return base / "out"


@pytest.fixture(scope="module")
def run(prepared):
    """Three seeds, three encoders: ``pre`` (the same weights every seed, a fresh copy each time),
    ``no_pan`` (rgb/ms/dsm adapters only, normalising itself) and ``random_init``; the
    feature computations are recorded by encoder fingerprint."""
    pre = _encoder(100)
    no_pan = _encoder(101, {"rgb": 3, "ms": 4, "dsm": 1}, micro_config().normalization)
    base = with_random_init({"pre": pre, "no_pan": no_pan})

    def make(seed):
        encoders = base(seed)
        return {**encoders, "pre": copy.deepcopy(pre)}  # a loaded copy: another object, same weights

    calls: list[str] = []
    real = health.patch_features

    def counting(encoder, images, batch_size=64):
        calls.append(encoder_fingerprint(encoder))
        return real(encoder, images, batch_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(health, "patch_features", counting)
        rows = health_check(make, prepared, HealthConfig(**FAST))
    return {"rows": rows, "calls": calls, "pre": encoder_fingerprint(pre),
            "random": [encoder_fingerprint(base(s)["random_init"]) for s in (0, 1, 2)]}


def _labelled_in_index(root):
    present = {r["task"] for r in read_index(root)}
    return {t for t, s in TASKS.items() if s.targets and t in present}


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ----------------------------------------------------------------------------- coverage and rows
def test_every_labelled_task_encoder_and_seed(run, prepared):
    rows = run["rows"]
    tasks = _labelled_in_index(prepared)
    assert tasks == set(EXPECTED_METRICS)  # the fake sample has every labelled task, and no pretrain_* is probed
    keys = [(r["task"], r["encoder"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(tasks) * 3 * 3
    for r in rows:
        assert STABLE_KEYS <= set(r), set(STABLE_KEYS) - set(r)
        assert r["metric"] == EXPECTED_METRICS[r["task"]]
        assert r["higher_is_better"] == (r["metric"] != "rmse_m")
        assert r["label_kind"] == {"change": "synthetic", "scene": "derived", "scene_asprs": "derived"}.get(r["task"], "real")
        assert r["modality"] == ("pan" if r["task"] in PAN_TASKS else "rgb")
        assert r["eval_split"] == "test"  # the fake sample has test tiles everywhere


def test_scores_finite_and_in_range_for_usable_encoders(run):
    for r in run["rows"]:
        if r["encoder"] == "no_pan" and r["task"] in PAN_TASKS:
            continue
        assert math.isfinite(r["score"]) and "note" not in r, r
        assert r["n_train"] > 0 and r["n_eval"] > 0
        if r["higher_is_better"]:
            assert 0.0 <= r["score"] <= 1.0
        else:
            assert r["score"] >= 0.0 and r["baseline"] > 0.0


def test_missing_adapter_gives_nan_and_note(run):
    rows = [r for r in run["rows"] if r["encoder"] == "no_pan"]
    for r in rows:
        if r["task"] in PAN_TASKS:
            assert math.isnan(r["score"]) and "pan adapter" in r["note"]
        else:
            assert math.isfinite(r["score"])  # its rgb adapter still serves the rgb tasks


def test_pretrained_features_cached_across_seeds(run):
    """A pre-trained encoder (a fresh copy per seed) is encoded once per task, split and date;
    a random init once per seed."""
    per_seed = sum(2 * (2 if t == "change" else 1) for t in EXPECTED_METRICS)  # train + eval split, two dates for change
    assert run["calls"].count(run["pre"]) == per_seed
    assert [run["calls"].count(fp) for fp in run["random"]] == [per_seed] * 3
    assert len(set(run["random"])) == 3  # redrawn with the seed


def test_bootstrap_moves_pretrained_scores(run):
    """The pre-trained weights are the same for every seed: only the bootstrap of the train tiles moves its scores."""
    by_task: dict[str, set] = {}
    for r in run["rows"]:
        if r["encoder"] == "pre":
            by_task.setdefault(r["task"], set()).add(round(r["score"], 9))
    assert any(len(s) > 1 for s in by_task.values())


# ----------------------------------------------------------------------------- seeds
def test_bootstrap_indices():
    a = bootstrap_indices(50, 0, "height")
    assert torch.equal(a, bootstrap_indices(50, 0, "height"))
    assert not torch.equal(a, bootstrap_indices(50, 1, "height"))
    assert not torch.equal(a, bootstrap_indices(50, 0, "seg_roads"))
    assert a.shape == (50,) and a.min() >= 0 and a.max() < 50
    assert len(a.unique()) < 50  # with replacement


def test_same_seed_same_rows(run, prepared):
    """Seed 1 alone, on a subset of tasks, reproduces the full run's seed-1 rows exactly."""
    pre = _encoder(100)
    no_pan = _encoder(101, {"rgb": 3, "ms": 4, "dsm": 1}, micro_config().normalization)
    tasks = ("height", "change")
    again = health_check(with_random_init({"pre": pre, "no_pan": no_pan}), prepared, HealthConfig(tasks=tasks, **FAST), seeds=(1,))
    before = [r for r in run["rows"] if r["seed"] == 1 and r["task"] in tasks]
    assert len(again) == len(before) == 6
    for a, b in zip(again, before):
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a), (a, b)


def test_without_bootstrap_only_random_init_varies(prepared):
    make = with_random_init({"pre": _encoder(100)})
    rows = health_check(make, prepared, HealthConfig(tasks=("height", "seg_buildings"), bootstrap=False, **FAST), seeds=(0, 1))
    score = {(r["task"], r["encoder"], r["seed"]): r["score"] for r in rows}
    for task in ("height", "seg_buildings"):
        assert score[(task, "pre", 0)] == score[(task, "pre", 1)]
    assert score[("height", "random_init", 0)] != score[("height", "random_init", 1)]


# ----------------------------------------------------------------------------- inputs
def test_self_normalising_encoder_fed_raw(prepared):
    """An encoder holding the source's rgb statistics, fed raw, sees what the same weights
    without statistics see on standardised inputs."""
    st = load_stats(prepared, "height")["rgb"]
    std = tuple(s if s > 1e-6 else 1.0 for s in st["std"])  # SampleTiles' guard (the fake rgb has constant bands)
    mixture = _encoder(7, normalization={})
    self_norm = _encoder(7, normalization={"rgb": NormStats(tuple(st["mean"]), std)})
    assert wants_normalized(mixture, "rgb") and not wants_normalized(self_norm, "rgb")
    rows = health_check(lambda seed: {"mixture": mixture, "self_norm": self_norm}, prepared,
                        HealthConfig(tasks=("height",), **FAST), seeds=(0,))  # fmt: skip
    a, b = (r["score"] for r in rows)
    assert a == pytest.approx(b, rel=1e-3)
    raw = SampleTiles(prepared, "height", "test", modalities=["rgb"])[0]["rgb"]
    assert raw.mean() > 10  # the raw values are far from standardised: the equality is not vacuous


def test_second_date_standardised_like_the_first(prepared):
    """``pan_t2`` goes through the ``pan`` adapter, so it is standardised with pan's statistics —
    exactly ``(raw_t2 − mean_pan) / std_pan`` — not its own. (The two dates differ everywhere by
    the synthetic acquisition shift, so equality of unchanged pixels is no longer the test.)"""
    tiles = health._Tiles(prepared)
    first = tiles.inputs("change", "train", "pan", True)
    second = tiles.inputs("change", "train", "pan_t2", True, stats_key="pan")
    raw = tiles.inputs("change", "train", "pan_t2", False)
    st = load_stats(prepared, "change")["pan"]
    mean = torch.tensor(st["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(st["std"], dtype=torch.float32).view(1, -1, 1, 1)
    assert torch.allclose(second, (raw - mean) / std, atol=1e-5)
    assert not torch.allclose(second, tiles.inputs("change", "train", "pan_t2", True), atol=1e-3)  # own statistics differ
    assert abs(float(first.mean())) < 0.5  # standardised
    stats = load_stats(prepared, "change")
    assert stats["pan_t2"]["mean"] != stats["pan"]["mean"]  # own statistics would shift the second date


def test_eval_split_falls_back_to_val(prepared, tmp_path):
    assert eval_split({"train": 3, "val": 2, "test": 1}) == "test"
    assert eval_split({"train": 3, "val": 2, "test": 0}) == "val"
    assert eval_split({"train": 3}) is None
    root = tmp_path / "sample"
    shutil.copytree(prepared, root)
    rows = [r for r in read_index(root) if not (r["source"] == "ign" and r["split"] == "test")]  # as the real IGN strip
    write_index(root, [{**{k: r[k] for k in INDEX_COLUMNS if k != "files"}, "files": json.dumps(r["files"])} for r in rows])
    plans = {p.task: p for p in plan_tasks(root, HealthConfig())}
    assert plans["seg_asprs"].eval_split == "val" and plans["height"].eval_split == "test"
    out = health_check(lambda seed: {"pre": _encoder(100)}, root, HealthConfig(tasks=("seg_asprs",), **FAST), seeds=(0,))
    n_val = sum(r["task"] == "seg_asprs" and r["split"] == "val" for r in rows)
    assert out[0]["eval_split"] == "val" and out[0]["n_eval_tiles"] == n_val and math.isfinite(out[0]["score"])


# ----------------------------------------------------------------------------- probes through the plumbing
def test_oracle_features_score_perfectly(prepared):
    """Features that encode the target give a perfect score on every task; the probe kinds
    come from the targets, not the task names."""
    patch = 8
    for plan in plan_tasks(prepared, HealthConfig()):
        samples = {s: [{k: x[k] for k in TASKS[plan.task].targets} for x in SampleTiles(prepared, plan.task, s)]
                   for s in ("train", plan.eval_split)}  # fmt: skip
        ytr, yev = (task_targets(plan, samples[s], patch) for s in ("train", plan.eval_split))
        if plan.kind == "height":
            ftr, fev = (torch.nan_to_num(y)[..., None] for y in (ytr, yev))  # (B, N, 1): the height itself
            out = probe_scores(plan, ftr, ytr, fev, yev, HealthConfig(ridge_l2=1e-6))
            assert out["score"] < 1e-3 < out["baseline"]
            continue
        onehot = [torch.nn.functional.one_hot(torch.where(y == 255, 0, y), plan.num_classes).float() for y in (ytr, yev)]
        present_train, present_eval = set(ytr.unique().tolist()) - {255}, set(yev.unique().tolist()) - {255}
        assert present_eval <= present_train, plan.task  # the fake sample allows a perfect score
        if plan.metric in ("iou_changed", "iou_object"):
            assert 1 in present_eval, plan.task  # the positive class is there to be found
        out = probe_scores(plan, onehot[0], ytr, onehot[1], yev, HealthConfig())
        assert out["score"] > 0.99, (plan.task, out)


def test_probe_kind_from_targets():
    assert {t: probe_kind(TASKS[t]) for t in EXPECTED_METRICS} == {
        "height": "height", "seg_asprs": "segmentation", "seg_buildings": "segmentation", "seg_roads": "segmentation",
        "detection": "objectness", "detection_trees": "objectness", "change": "change", "scene": "tile_class",
        "scene_asprs": "tile_class",
    }  # fmt: skip
    assert probe_kind(TaskSpec("ign", ("ms", "ms_t2"), ("label",), "synthetic", ("a", "b"))) == "change"
    assert probe_kind(TaskSpec("ign", ("ms",), ("label",), "derived", ("a", "b"), tile_class="dominant_class")) == "tile_class"


# ----------------------------------------------------------------------------- outputs
def test_summarise_matches_numpy(run):
    rows, frame = run["rows"], summarise(run["rows"])
    assert list(frame.index.names) == ["task", "metric", "encoder"]
    assert len(frame) == len(EXPECTED_METRICS) * 3
    for (task, metric, encoder), line in frame.iterrows():
        scores = np.array([r["score"] for r in rows if (r["task"], r["encoder"]) == (task, encoder)])
        assert metric == EXPECTED_METRICS[task]
        if np.isnan(scores).all():
            assert line["n_seeds"] == 0 and math.isnan(line["mean"]) and line["mean ± std"] == "n/a" and line["note"]
            continue
        assert line["n_seeds"] == 3
        assert line["mean"] == pytest.approx(np.mean(scores), abs=1e-12)
        assert line["std"] == pytest.approx(np.std(scores, ddof=1), abs=1e-12)
        assert line["mean ± std"] == f"{np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f}"
        assert line["label_kind"] == next(r["label_kind"] for r in rows if r["task"] == task)


def test_metrics_json(run):
    rows, metrics = run["rows"], health_metrics(run["rows"])
    assert set(metrics) == {f"{t}_{m}" for t, m in EXPECTED_METRICS.items()}
    text = json.dumps(metrics, allow_nan=False)  # NaN became None
    assert json.loads(text) == metrics
    for key, per_encoder in metrics.items():
        assert set(per_encoder) == {"pre", "no_pan", "random_init"}
        for name, entry in per_encoder.items():
            assert set(entry) == {"mean", "std", "seeds"}
            scores = [r["score"] for r in sorted(rows, key=lambda r: r["seed"])
                      if f"{r['task']}_{r['metric']}" == key and r["encoder"] == name]  # fmt: skip
            assert entry["seeds"] == [None if math.isnan(s) else round(s, 6) for s in scores]
    assert metrics["change_iou_changed"]["no_pan"] == {"mean": None, "std": None, "seeds": [None] * 3}


# ----------------------------------------------------------------------------- config and helpers
def test_config_validation():
    assert from_dict(HealthConfig, {"seeds": [3, 4], "tasks": ["height"]}) == HealthConfig(seeds=(3, 4), tasks=("height",))
    for bad in ({"seed": [1]}, {"tasks": ["pretrain_ign"]}, {"tasks": ["nope"]}, {"seeds": []},
                {"modalities": {"seg_asprs": ["pan"]}}, {"modalities": {"change": ["pan_t2"]}}, {"min_cover": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            from_dict(HealthConfig, bad)
    with pytest.raises(Exception):
        HealthConfig().seeds = (1,)  # frozen


def test_with_random_init_seeded_and_isolated():
    pre = _encoder(100)
    make = with_random_init({"pre": pre})
    state = torch.random.get_rng_state()
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left as it was
    assert a["pre"] is pre and encoder_fingerprint(a["random_init"]) == encoder_fingerprint(b["random_init"])
    assert encoder_fingerprint(a["random_init"]) != encoder_fingerprint(c["random_init"])


def test_cells_average_patch_tokens_and_compare_geometries(prepared):
    """A 2x2 block of patch-8 tokens becomes one 16 px cell (row-major mean); probing at cell 16
    gives an encoder with patch 8 and one with patch 16 the same targets and sample counts."""
    f = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)  # 4 x 4 grid of patches
    pooled = pool_cells(f, 2)
    assert pooled.shape == (2, 4, 3)
    grid = f.reshape(2, 4, 4, 3)
    assert torch.equal(pooled[:, 1], grid[:, 0:2, 2:4].mean(dim=(1, 2)))
    assert torch.equal(pool_cells(f, 1), f)
    enc8, enc16 = _encoder(0, patch_size=8), _encoder(1, patch_size=16)
    rows = health_check(lambda seed: {"p8": enc8, "p16": enc16}, prepared, HealthConfig(tasks=("height", "seg_buildings"), cell=16),
                        seeds=(0,))
    by = {(r["task"], r["encoder"]): r for r in rows}
    for task in ("height", "seg_buildings"):
        assert by[(task, "p8")]["n_train"] == by[(task, "p16")]["n_train"] > 0
        assert by[(task, "p8")]["baseline"] == by[(task, "p16")]["baseline"]
    odd = health_check(lambda seed: {"p16": enc16}, prepared, HealthConfig(tasks=("height",), cell=8), seeds=(0,))
    assert math.isnan(odd[0]["score"]) and "cell" in odd[0]["note"]
