"""The paper protocols end to end: ``profile: paper`` + each ``PAPER_DATASETS`` preset, built by
:meth:`StudyConfig.run_config`, runs a few steps on fake files in the dataset's official layout.

Only the size is shrunk (a micro ViT, 32 px crops and windows, 3 steps, batch 2); the rest of
the protocol is the paper's (layer decay, warm-up + poly, drop path, sliding-window overlap,
the 50 % seeded train fraction, the held-out validation tiles, whole test tiles).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import make_potsdam, make_us3d, make_vaihingen  # noqa: E402

from mssdf.data.io import IGNORE_INDEX  # noqa: E402
from mssdf.data.readers import get_dataset  # noqa: E402
from mssdf.data.readers.potsdam import TEST_TILES, TRAIN_TILES  # noqa: E402
from mssdf.data.readers.vaihingen import TEST_AREAS, TRAIN_AREAS  # noqa: E402
from mssdf.downstream import engine  # noqa: E402
from mssdf.downstream.config import PROFILES  # noqa: E402
from mssdf.downstream.data import build_task_data  # noqa: E402
from mssdf.downstream.study import StudyConfig  # noqa: E402

MICRO = {"preset": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
WINDOW = 32  # training crop, reader crop and evaluation window
POTSDAM_SIZE = 48  # fake Potsdam tiles (Vaihingen areas: 40..42 x 40..42; US3D images 40)
VAIHINGEN_SIZE = 40
US3D_SIZE = 40
US3D_KEYS = [("JAX", t, 1) for t in range(1, 9)] + [("OMA", 100 + t, 2) for t in range(1, 3)] + [("JAX", 1, 2)]
RUN = {"profile": "paper", "steps": 3, "eval_every": 2, "batch_size": 2, "head_channels": 16, "precision": "fp32",
       "device": "cpu", "log_every": 1, "eval_batch_size": 4}  # fmt: skip


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Every tile / area the presets name (train, held-out val, test), larger than a window."""
    root = tmp_path_factory.mktemp("paper")
    written = {
        "potsdam": make_potsdam(root / "potsdam", TRAIN_TILES + TEST_TILES, size=POTSDAM_SIZE),
        # the participants' labels (train areas) and the COMPLETE ones (every area: the test labels)
        "vaihingen": make_vaihingen(root / "vaihingen", TRAIN_AREAS + TEST_AREAS, size=VAIHINGEN_SIZE,
                                    variants=("gts", "complete")),
        "us3d": make_us3d(root / "us3d", US3D_KEYS, size=US3D_SIZE),
    }  # fmt: skip
    return root, written


def study(root: Path, out: Path, dataset: str, seeds=(0,)) -> StudyConfig:
    """A study with one paper dataset entry, shrunk to seconds (the preset path is what is tested)."""
    data: dict = {"root": str(root / dataset), "crop": WINDOW, "eval_window": WINDOW, "stats_samples": 8}
    if dataset != "us3d":  # the ISPRS readers cut the train tiles into crops themselves
        data["role_args"] = {"train": {"crop_size": WINDOW, "stride": WINDOW}}
    return StudyConfig(inits=("random",), seeds=tuple(seeds), run={**RUN, "backbone": {"arch": MICRO}},
                       datasets={dataset: {"preset": dataset, "data": data}}, out_dir=str(out))


def test_preset_configs_keep_the_paper_protocol(fakes, tmp_path):
    root, _ = fakes
    paper = PROFILES["paper"]
    for dataset in ("potsdam", "vaihingen", "us3d"):
        cfg = study(root, tmp_path, dataset).run_config(dataset, "random", 0)
        assert cfg.data.kind == "reader" and cfg.data.reader == dataset
        assert cfg.optim.lr == paper["optim"]["lr"] and cfg.optim.layer_decay == 0.65 and cfg.optim.schedule == "poly"
        assert cfg.optim.warmup_steps == 1500 and cfg.optim.weight_decay == 0.01
        assert cfg.backbone.drop_path == 0.1 and cfg.data.eval_overlap == 0.33
        assert cfg.backbone.arch == {**paper["backbone"]["arch"], **MICRO}
        assert (cfg.steps, cfg.batch_size, cfg.data.crop, cfg.data.eval_window) == (3, 2, WINDOW, WINDOW)
        assert cfg.task == ("height" if dataset == "us3d" else "segmentation")
        assert cfg.out_dir == str(tmp_path / dataset / "random" / "seed0")
        if dataset != "us3d":
            train = cfg.data.role_args["train"]
            assert train["train_fraction"] == 0.5 and (train["crop_size"], train["stride"]) == (WINDOW, WINDOW)


def _tile_ids(ds) -> list[str]:
    return [ds.tiles[t].tile_id for t, _ in ds.samples]


def _samples(ds) -> list[tuple[str, tuple]]:
    return [(ds.tiles[t].tile_id, tuple(w)) for t, w in ds.samples]


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen"])
def test_half_of_the_train_crops_seeded_and_val_tiles_held_out(fakes, tmp_path, dataset):
    root, _ = fakes
    cfg = study(root, tmp_path, dataset, seeds=(0, 1)).run_config(dataset, "random", 0)
    data = build_task_data(cfg, {"rgb": True})
    train = data.train.base
    # every crop of the train tiles (all but the held-out ones), from the preset's own arguments
    args = {**cfg.data.reader_args, **cfg.data.role_args["train"], "train_fraction": 1.0}
    every = get_dataset(dataset, cfg.data.root, "train", **args)
    assert len(every) == 4 * (len(TRAIN_TILES if dataset == "potsdam" else TRAIN_AREAS) - 2)  # 2x2 crops per tile
    assert len(data.train) == len(train) == round(0.5 * len(every))
    assert set(_samples(train)) < set(_samples(every))
    assert all(tuple(w[2:]) == (WINDOW, WINDOW) for _, w in _samples(train))
    # seeded: the same subset on every build and for every seed of the study (the reader's
    # seed is the preset's, the run seeds vary the initialisation and the batch order)
    again = build_task_data(cfg, {"rgb": True}).train.base
    other_seed = build_task_data(study(root, tmp_path, dataset, seeds=(0, 1)).run_config(dataset, "random", 1),
                                 {"rgb": True}).train.base  # fmt: skip
    assert _samples(again) == _samples(train) == _samples(other_seed)
    reseeded = get_dataset(dataset, cfg.data.root, "train", **{**cfg.data.role_args["train"], **cfg.data.reader_args,
                                                                 "seed": 1})  # fmt: skip
    assert len(reseeded) == len(train) and _samples(reseeded) != _samples(train)
    # model selection on the held-out tiles, whole; never trained on
    held_out = {"potsdam": {"6_12", "7_12"}, "vaihingen": {"area34", "area37"}}[dataset]
    assert set(_tile_ids(data.val.base)) == held_out and len(data.val) == 2
    assert not held_out & set(_tile_ids(every))
    test_ids = TEST_TILES if dataset == "potsdam" else [f"area{a}" for a in TEST_AREAS]
    assert _tile_ids(data.test.base) == list(test_ids)
    assert data.classes[-1] == "clutter" and len(data.classes) == 6


def _expected_test_pixels(dataset: str, written: dict, root: Path) -> tuple[int, list[tuple[int, int]]]:
    """Non-ignored (finite) target pixels of the whole test tiles, and the tiles' sizes."""
    if dataset == "potsdam":
        labels = [written[t]["label"] for t in TEST_TILES]
    elif dataset == "vaihingen":
        labels = [written[a]["label"] for a in TEST_AREAS]
    else:
        ids = [s[0] for s in get_dataset("us3d", root, "test", modalities=["rgb"], targets=["height"]).samples]
        assert ids
        heights = [written[i]["agl"] for i in ids]
        return sum(int(np.isfinite(h).sum()) for h in heights), [h.shape for h in heights]
    return sum(int((lab != IGNORE_INDEX).sum()) for lab in labels), [lab.shape for lab in labels]


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen", "us3d"])
def test_paper_protocol_runs_end_to_end(fakes, tmp_path, monkeypatch, dataset):
    root, written = fakes
    cfg = study(root, tmp_path, dataset).run_config(dataset, "random", 0)
    windows: list[tuple[int, int, int]] = []  # (H, W, window) of every sliding-window inference
    real = engine.sliding_window

    def spy(forward, images, window, *args, **kwargs):
        windows.append((*next(iter(images.values())).shape[-2:], window))
        return real(forward, images, window, *args, **kwargs)

    monkeypatch.setattr(engine, "sliding_window", spy)
    res = engine.finetune(cfg)

    assert res.info["steps"] == 3 and res.best_step in (2, 3)
    out = Path(cfg.out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val", "test"} <= set(metrics) and metrics["steps"] == 3 and metrics["label_kind"] == "real"
    assert (out / "best" / "model.safetensors").is_file()
    # the paper's optimiser reached the run: lr 6e-5, warm-up over 1500 steps, layer decay 0.65
    # (the logged lr is the first group's: the embeddings, scaled by 0.65^(depth + 1))
    lrs = [h["lr"] for h in res.history if "lr" in h]
    scale = 6e-5 * 0.65 ** (MICRO["depth"] + 1)
    assert lrs == pytest.approx([scale * k / 1500 for k in range(3)], rel=1e-6, abs=1e-15)
    # the test split: whole tiles, larger than the window, through sliding windows
    n_test, shapes = _expected_test_pixels(dataset, written[dataset], root / dataset)
    assert all(h > WINDOW and w > WINDOW for h, w in shapes)
    assert [(h, w) for h, w, _ in windows[-len(shapes):]] == [tuple(s) for s in shapes]
    assert all(win == WINDOW for *_, win in windows)
    test = metrics["test"]
    if dataset == "us3d":
        assert metrics["classes"] == [] and metrics["selection"] == "rmse_m"
        assert test["n_pixels"] == n_test and 0 < test["n_pixels_no_ground"] <= n_test
        for key in ("rmse_m", "mae_m", "rmse_norm", "rmse_m_no_ground", "mae_m_no_ground"):
            assert test[key] is not None and math.isfinite(test[key]) and test[key] >= 0, key
        assert math.isfinite(metrics["val"]["rmse_m"])
    else:
        assert len(metrics["classes"]) == 6 and metrics["classes"][-1] == "clutter"
        confusion = np.array(test["confusion"])
        assert confusion.shape == (6, 6) and int(confusion.sum()) == n_test
        assert len(test["per_class_iou"]) == 6 and len(test["per_class_f1"]) == 6
        assert 0.0 <= test["miou"] <= 1.0 and 0.0 <= test["overall_accuracy"] <= 1.0
        held_out = ("6_12", "7_12") if dataset == "potsdam" else (34, 37)  # validation: these 2 tiles, whole
        n_val = sum(int((written[dataset][k]["label"] != IGNORE_INDEX).sum()) for k in held_out)
        assert int(np.array(metrics["val"]["confusion"]).sum()) == n_val
