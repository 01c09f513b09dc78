"""Change detection: the siamese model's properties (one set of weights for both dates; the
absolute difference makes the output invariant to swapping the dates), the change metrics and
the baseline's threshold against direct computations, a run on the fake sample's SYNTHETIC
pairs, SECOND's paper protocol on fake files in the official layout, and bad input named."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DOWNSTREAM_ARCH, MICRO_ARCH, with_overrides

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import make_second, write_pil  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import IGNORE_INDEX, DataError  # noqa: E402
from mssdf.downstream.backbone import BackboneConfig, build_backbone  # noqa: E402
from mssdf.downstream.change import best_threshold, difference_baseline, difference_map  # noqa: E402
from mssdf.downstream.config import build_finetune_config  # noqa: E402
from mssdf.downstream.data import TaskData, TaskDataset, check_targets  # noqa: E402
from mssdf.downstream.engine import finetune  # noqa: E402
from mssdf.downstream.heads import ChangeModel  # noqa: E402
from mssdf.downstream.metrics import ChangeMetrics  # noqa: E402
from mssdf.downstream.study import StudyConfig, run_study  # noqa: E402

ARCH, MICRO = DOWNSTREAM_ARCH, MICRO_ARCH


@pytest.fixture(scope="module")
def root(fake_prepared):
    return fake_prepared


pytestmark = pytest.mark.usefixtures("one_thread")


def change_run(root, out, **over):
    run = {"profile": "smoke", "task": "change", "data": {"root": str(root), "task": "change"},
           "backbone": {"modalities": ["pan"], "arch": dict(ARCH)}, "steps": 4, "eval_every": 2, "batch_size": 2,
           "head_channels": 8, "out_dir": str(out), "device": "cpu"}
    return with_overrides(run, over)


def model(fusion="absdiff", modalities=("rgb",)):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(modalities=modalities, arch=dict(ARCH)))
    return ChangeModel(backbone, fusion=fusion, channels=8).eval()


# ------------------------------------------------------------------------------ the siamese model
def test_both_dates_go_through_one_set_of_weights():
    m = model()
    n_backbone = sum(p.numel() for p in m.backbone.parameters())
    assert sum(p.numel() for n, p in m.named_parameters() if "encoder" in n) == sum(p.numel() for p in m.backbone.encoder.parameters())
    assert n_backbone < sum(p.numel() for p in m.parameters())  # one encoder, not two
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():  # shared weights: identical dates give |f1 - f2| = 0 at every level, whatever the image
        same_x, same_y = m({"rgb": x, "rgb_t2": x})["out"], m({"rgb": y, "rgb_t2": y})["out"]
        assert torch.allclose(same_x, same_y, atol=1e-6)
        assert not torch.allclose(m({"rgb": x, "rgb_t2": y})["out"], same_x, atol=1e-4)


def test_swapping_the_dates_leaves_the_absdiff_output_unchanged():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        m = model()
        a, b = m({"rgb": x, "rgb_t2": y}), m({"rgb": y, "rgb_t2": x})
        assert torch.allclose(a["out"], b["out"], atol=1e-6) and torch.allclose(a["aux"], b["aux"], atol=1e-6)
        c = model("concat")
        assert not torch.allclose(c({"rgb": x, "rgb_t2": y})["out"], c({"rgb": y, "rgb_t2": x})["out"], atol=1e-4)


def test_the_dates_must_match():
    m = model()
    with pytest.raises(ValueError, match="differ in shape"):
        m({"rgb": torch.zeros(1, 3, 16, 16), "rgb_t2": torch.zeros(1, 3, 24, 24)})
    with pytest.raises(KeyError, match="rgb_t2"):
        m({"rgb": torch.zeros(1, 3, 16, 16)})


# ------------------------------------------------------------------------------ metrics and baseline
def test_change_metrics_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    truth = (rng.random((6, 20, 20)) < 0.2).astype(np.int64)
    truth[rng.random(truth.shape) < 0.05] = IGNORE_INDEX
    pred = np.where(rng.random(truth.shape) < 0.8, truth, 1 - np.clip(truth, 0, 1)).clip(0, 1)
    metric = ChangeMetrics()
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 2).permute(0, 3, 1, 2).float()
    metric.update(logits[:3], torch.as_tensor(truth[:3]))
    metric.update(torch.as_tensor(pred[3:]), torch.as_tensor(truth[3:]))
    got = metric.compute()
    keep = truth != IGNORE_INDEX
    t, p = truth[keep], pred[keep]
    tp, fp, fn, tn = [np.sum((p == a) & (t == b)) for a, b in ((1, 1), (1, 0), (0, 1), (0, 0))]
    assert got["change_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert got["change_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["change_precision"] == pytest.approx(tp / (tp + fp)) and got["change_recall"] == pytest.approx(tp / (tp + fn))
    assert got["miou"] == pytest.approx((tp / (tp + fp + fn) + tn / (tn + fn + fp)) / 2)
    assert got["overall_accuracy"] == pytest.approx((tp + tn) / keep.sum())
    perfect = ChangeMetrics()
    perfect.update(torch.as_tensor(np.clip(truth, 0, 1)), torch.as_tensor(truth))
    assert perfect.compute()["change_iou"] == 1.0 and perfect.compute()["miou"] == 1.0


def test_the_fitted_threshold_is_the_best_cut_by_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = (rng.random(300) < 0.3).astype(np.int64)
        scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # many ties
        t, iou = best_threshold(torch.as_tensor(scores), torch.as_tensor(labels))
        cuts = np.unique(scores)
        brute = max(np.sum((scores >= c) & (labels == 1)) / np.sum((scores >= c) | (labels == 1)) for c in cuts)
        assert iou == pytest.approx(brute)
        pred = scores > t
        assert np.sum(pred & (labels == 1)) / np.sum(pred | (labels == 1)) == pytest.approx(iou)


def test_difference_map_is_the_rms_over_bands():
    a, b = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    b[0, 0, 1, 1], b[0, 1, 1, 1] = 3.0, 4.0
    d = difference_map({"ms": a, "ms_t2": b}, ("ms",))
    assert d[0, 1, 1] == pytest.approx(np.sqrt(12.5)) and d.sum() == d[0, 1, 1]


def test_baseline_and_a_run_on_the_synthetic_pairs(root, tmp_path):
    cfg = build_finetune_config(change_run(root, tmp_path / "run"))
    base = difference_baseline(cfg)
    assert base["label_kind"] == "synthetic" and "SYNTHETIC" in base["data"]
    assert 0.0 <= base["test"]["change_iou"] <= 1.0 and np.isfinite(base["threshold"])
    res = finetune(cfg)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["classes"] == ["unchanged", "changed"] and m["selection"] == "change_iou"
    assert set(m["test"]) >= {"change_iou", "change_f1", "change_precision", "change_recall", "miou", "overall_accuracy"}
    assert res.best_step in (2, 4)


# ------------------------------------------------------------------------------ paper protocol
def test_second_protocol_runs_a_few_iterations_on_fake_files(tmp_path):
    make_second(tmp_path / "second", n=20, size=32)
    study = StudyConfig(inits=("random",), seeds=(0,), out_dir=str(tmp_path / "runs"),
                        run={"profile": "paper", "steps": 2, "eval_every": 1, "batch_size": 2, "head_channels": 8,
                             "device": "cpu", "precision": "fp32", "backbone": {"arch": MICRO}},
                        datasets={"second": {"preset": "second", "data": {"root": str(tmp_path / "second"), "crop": 32,
                                                                          "eval_window": 32, "stats_samples": 4}}})
    cfg = study.run_config("second", "random", 0)
    assert cfg.task == "change" and cfg.data.reader == "second" and cfg.optim.layer_decay == 0.65
    run_study(study, log=None)
    m = json.loads((tmp_path / "runs" / "second" / "random" / "seed0" / "metrics.json").read_text())
    # 20 pairs: 4 test (4:1), 16 train of which 2 (10 %) held out for selection
    assert int(np.sum(m["test"]["confusion"])) == 4 * 32 * 32 and int(np.sum(m["val"]["confusion"])) == 2 * 32 * 32
    from mssdf.data.readers import get_dataset

    ids = {s: set(get_dataset("second", tmp_path / "second", s, seed=0, val_fraction=0.1).ids) for s in ("train", "val", "test")}
    assert len(ids["train"]) == 14 and not (ids["train"] & ids["val"]) and not (ids["train"] | ids["val"]) & ids["test"]


# ------------------------------------------------------------------------------ bad input
def test_a_change_label_outside_the_two_classes_is_named(root, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    path = bad / "cache" / "atlanta" / "train" / "change.npy"
    arr = np.load(path)
    arr[1, 0, 0, :2] = 2
    np.save(path, arr)
    tile = json.loads((bad / "cache" / "atlanta" / "train" / "tiles.json").read_text())[1]
    with pytest.raises(DataError, match=rf"train sample 1 \({tile}\): labels \[2\] outside the 2 classes"):
        finetune(build_finetune_config(change_run(bad, tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_a_pair_of_different_sizes_is_named(tmp_path):
    pairs = [{"pan": torch.zeros(1, 8, 8), "pan_t2": torch.zeros(1, 8, 8), "label": torch.zeros(8, 8, dtype=torch.long),
              "meta": {"tile": "fine"}},
             {"pan": torch.zeros(1, 8, 8), "pan_t2": torch.zeros(1, 8, 6), "label": torch.zeros(8, 8, dtype=torch.long),
              "meta": {"tile": "atlanta_r0064_c0128"}}]
    ds = TaskDataset(pairs, ("pan", "pan_t2"), "label", {})
    data = TaskData(ds, ds, ds, ("unchanged", "changed"), {}, "fake pairs", "synthetic")
    with pytest.raises(DataError, match=r"train sample 1 \(atlanta_r0064_c0128\): the two dates differ in size"):
        check_targets(data, "change", 2)
    second = tmp_path / "second"
    make_second(second, n=3, size=16)
    write_pil(second / "im2" / "00001.png", np.zeros((3, 16, 12), np.uint8))
    from mssdf.data.readers import get_dataset

    with pytest.raises(DataError, match=r"im2/00001\.png: size 16x12 differs from its partner .*im1/00001\.png"):
        get_dataset("second", second, "all")


def test_bad_change_parameters_name_the_key(root, tmp_path):
    with pytest.raises(ConfigError, match="change_fusion"):
        build_finetune_config(change_run(root, tmp_path, change_fusion="sum"))
    with pytest.raises(ConfigError, match="data.task: 'seg_buildings' has no second date"):
        build_finetune_config(change_run(root, tmp_path, data={"task": "seg_buildings"}))
    with pytest.raises(ConfigError, match="mixup, cutmix, label_smoothing: classification options"):
        build_finetune_config(change_run(root, tmp_path, mixup=0.5))
    with pytest.raises(ConfigError, match="val_fraction"):
        from mssdf.data.readers import get_dataset

        make_second(tmp_path / "s", n=3, size=16)
        get_dataset("second", tmp_path / "s", "train", val_fraction=1.5)
