"""Scene classification: the three protocols (kNN, linear probe on cached features, fine-tuning)
on a fake prepared sample, their properties (the probes never touch the encoder; kNN equals a
brute-force vote; mixup mixes every modality alike), the metrics against a direct computation,
the paper protocols (AID, NWPU-RESISC45) on fake folders in the official layout, and every
bad-input case named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DOWNSTREAM_ARCH, MICRO_ARCH, with_overrides

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import make_scene_folders  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import get_dataset  # noqa: E402
from mssdf.data.readers.splits import stratified_split  # noqa: E402
from mssdf.downstream.backbone import build_backbone  # noqa: E402
from mssdf.downstream.classification import knn_scores, mix_batch, build_mixer  # noqa: E402
from mssdf.downstream.config import build_finetune_config  # noqa: E402
from mssdf.downstream.engine import finetune  # noqa: E402
from mssdf.downstream.metrics import ClassificationMetrics  # noqa: E402
from mssdf.downstream.study import StudyConfig, run_study  # noqa: E402

ARCH, MICRO = DOWNSTREAM_ARCH, MICRO_ARCH


@pytest.fixture(scope="module")
def root(fake_prepared):
    return fake_prepared


pytestmark = pytest.mark.usefixtures("one_thread")


def cls_run(root, out, **over):
    run = {"profile": "smoke", "task": "classification", "data": {"root": str(root), "task": "scene"},
           "backbone": {"modalities": ["pan"], "arch": dict(ARCH)}, "steps": 4, "eval_every": 2, "batch_size": 4,
           "out_dir": str(out), "device": "cpu", "eval_batch_size": 8}
    return with_overrides(run, over)


# ------------------------------------------------------------------------------ splits
def test_stratified_split_keeps_each_class_share_and_is_reproducible_per_seed():
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3] * 10
    for ratio in (0.1, 0.2, 0.5):
        train, test = stratified_split(labels, ratio, seed=3)
        assert sorted(train + test) == list(range(len(labels))) and not set(train) & set(test)
        counts = np.bincount(np.asarray(labels)[train], minlength=4)
        assert counts.tolist() == [round(ratio * n) for n in (50, 30, 20, 10)]  # each class's share, not the pool's
        assert stratified_split(labels, ratio, seed=3) == (train, test)
        assert stratified_split(labels, ratio, seed=4)[0] != train


def test_scene_reader_split_per_seed_and_ratio(tmp_path):
    make_scene_folders(tmp_path / "AID", [f"class{k:02d}" for k in range(30)], per_class=10, camel=True)
    a = get_dataset("aid", tmp_path, "train", train_ratio=0.2, seed=1)
    b = get_dataset("aid", tmp_path, "train", train_ratio=0.2, seed=1)
    c = get_dataset("aid", tmp_path, "train", train_ratio=0.2, seed=2)
    test = get_dataset("aid", tmp_path, "test", train_ratio=0.2, seed=1)
    assert a.files == b.files and a.files != c.files
    assert (a.class_counts() == 2).all() and (test.class_counts() == 8).all()
    assert not set(a.files) & set(test.files)


# ------------------------------------------------------------------------------ protocols
def test_knn_equals_a_brute_force_weighted_vote():
    g = torch.Generator().manual_seed(0)
    bank, labels, query = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g), torch.randn(7, 8, generator=g)
    got = knn_scores(bank, labels, query, 3, k=5, temperature=0.1, chunk=3)
    for q in range(7):
        sims = [(float(torch.dot(query[q], bank[i]) / (query[q].norm() * bank[i].norm())), int(labels[i])) for i in range(40)]
        top = sorted(sims, reverse=True)[:5]
        want = np.zeros(3)
        for s, c in top:
            want[c] += np.exp(s / 0.1)
        assert np.allclose(got[q].numpy(), want, rtol=1e-4)
    assert knn_scores(bank, labels, bank, 3, k=1).argmax(1).tolist() == labels.tolist()  # its own neighbour


@pytest.mark.parametrize("mode", ["knn", "linear"])
def test_knn_and_linear_probe_never_update_the_backbone(root, tmp_path, mode):
    cfg = build_finetune_config(cls_run(root, tmp_path / mode, mode=mode, steps=30, eval_every=10,
                                        optim={"lr": 0.5, "weight_decay": 0.0}))
    torch.manual_seed(cfg.seed)
    initial = build_backbone(cfg.backbone, neck=False).encoder.state_dict()
    res = finetune(cfg)
    final = res.model.backbone.encoder.state_dict()
    assert set(initial) == set(final) and all(torch.equal(initial[k], final[k]) for k in initial)
    m = json.loads((tmp_path / mode / "metrics.json").read_text())
    assert m["mode"] == mode and m["label_kind"] == "derived" and "DERIVED" in m["data"]
    assert set(m["test"]) >= {"overall_accuracy", "f1", "per_class_accuracy", "mean_class_accuracy", "confusion"}
    preds = json.loads((tmp_path / mode / "predictions.json").read_text())
    assert len(preds["test"]) == len(preds["truth"]) == int(np.sum(m["test"]["confusion"]))
    assert m["test"]["overall_accuracy"] == pytest.approx(np.mean(np.array(preds["test"]) == np.array(preds["truth"])))
    if mode == "linear":  # the head did learn: it separates its own training features better than chance
        assert (tmp_path / mode / "best" / "model.safetensors").is_file()
        assert res.model.head.norm.running_var.ne(1).any()  # BatchNorm without affine saw the features
        assert not hasattr(res.model.head.norm, "weight") or res.model.head.norm.weight is None


def test_finetune_with_mixup_cutmix_and_label_smoothing_trains_the_encoder(root, tmp_path):
    cfg = build_finetune_config(cls_run(root, tmp_path / "ft", mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                                        select_best=False))
    torch.manual_seed(cfg.seed)
    initial = build_backbone(cfg.backbone, neck=False).encoder.state_dict()
    res = finetune(cfg)
    assert any(not torch.equal(initial[k], v) for k, v in res.model.backbone.encoder.state_dict().items())
    assert res.best_step == cfg.steps  # select_best false: the last weights are tested
    assert (tmp_path / "ft" / "predictions.json").is_file()
    assert all(np.isfinite(h["loss"]) for h in res.history if "loss" in h)


def test_mixup_mixes_every_modality_with_the_same_pairs_and_weight():
    cfg = build_finetune_config({"task": "classification", "data": {"task": "scene"}, "mixup": 0.8, "cutmix": 1.0, "batch_size": 4})
    mixer = build_mixer(cfg, 3)
    x = torch.randn(4, 1, 8, 8)
    np.random.seed(0)
    for _ in range(6):  # mixup and cutmix batches
        images, soft = mix_batch(mixer, {"pan": x.clone(), "rgb": x.repeat(1, 3, 1, 1)}, torch.tensor([0, 1, 2, 0]))
        assert torch.equal(images["pan"].repeat(1, 3, 1, 1), images["rgb"])
        assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="even batch"):
        mix_batch(mixer, {"pan": torch.randn(3, 1, 8, 8)}, torch.tensor([0, 1, 2]))


def test_classification_metrics_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    pred[truth == 3] = 3  # class 3 perfectly recalled
    metric = ClassificationMetrics(5, class_names=list("abcde"))  # class 'e' absent: left out of the means
    for s in range(0, 200, 64):
        metric.update(torch.as_tensor(pred[s : s + 64]), torch.as_tensor(truth[s : s + 64]))
    got = metric.compute()
    assert got["overall_accuracy"] == pytest.approx(np.mean(truth == pred))
    f1s, recalls = [], []
    for k in range(4):
        tp, fp, fn = np.sum((pred == k) & (truth == k)), np.sum((pred == k) & (truth != k)), np.sum((pred != k) & (truth == k))
        f1s.append(2 * tp / (2 * tp + fp + fn))
        recalls.append(tp / (tp + fn))
        assert got["per_class_accuracy"]["abcd"[k]] == pytest.approx(recalls[-1])
    assert got["f1"] == pytest.approx(np.mean(f1s)) and got["mean_class_accuracy"] == pytest.approx(np.mean(recalls))
    assert np.isnan(got["per_class_accuracy"]["e"]) and got["per_class_accuracy"]["d"] == 1.0
    assert got["confusion"].sum() == 200
    perfect = ClassificationMetrics(3)
    perfect.update(torch.eye(3)[[0, 1, 2, 2]] * 5.0, torch.tensor([0, 1, 2, 2]))  # logits of a perfect predictor
    assert perfect.compute()["overall_accuracy"] == 1.0 and perfect.compute()["f1"] == 1.0


# ------------------------------------------------------------------------------ paper protocols
RATIOS = {"aid_20": 0.2, "aid_50": 0.5, "nwpu_10": 0.1, "nwpu_20": 0.2}
STEPS = {"aid_20": 3100, "aid_50": 7800, "nwpu_10": 4900, "nwpu_20": 9800}  # 100 epochs of batch 64


@pytest.mark.parametrize("preset,folder,classes", [("aid_20", "AID", 30), ("aid_50", "AID", 30), ("nwpu_10", "NWPU-RESISC45", 45),
                                                    ("nwpu_20", "NWPU-RESISC45", 45)])
def test_paper_protocol_runs_a_few_iterations_on_fake_folders(tmp_path, preset, folder, classes):
    make_scene_folders(tmp_path / folder, [f"c{k:02d}" for k in range(classes)], per_class=10, size=12, camel=folder == "AID")
    study = StudyConfig(inits=("random",), seeds=(0,), out_dir=str(tmp_path / "runs"),
                        run={"profile": "paper", "batch_size": 4, "eval_batch_size": 64, "device": "cpu", "precision": "fp32",
                             "backbone": {"arch": MICRO}},  # the preset's schedule (100 epochs) is shortened by the entry
                        datasets={preset: {"preset": preset, "steps": 2, "eval_every": 1, "optim": {"warmup_steps": 1},
                                           "data": {"root": str(tmp_path), "resize": 32, "stats_samples": 8}}})
    cfg = study.run_config(preset, "random", 0)
    full = StudyConfig(inits=("random",), seeds=(0,), run={"profile": "paper"}, datasets={preset: {"preset": preset}})
    assert full.run_config(preset, "random", 0).steps == STEPS[preset]
    assert cfg.mixup == 0.8 and cfg.cutmix == 1.0 and cfg.label_smoothing == 0.1 and cfg.optim.layer_decay == 0.65
    assert cfg.data.reader_args["train_ratio"] == RATIOS[preset] and not cfg.select_best
    rows = run_study(study, log=None)
    m = json.loads((tmp_path / "runs" / preset / "random" / "seed0" / "metrics.json").read_text())
    assert len(m["classes"]) == classes and m["best_step"] == 2
    n_test = 10 * classes - round(RATIOS[preset] * 10) * classes
    assert int(np.sum(m["test"]["confusion"])) == n_test  # every test image scored once, at 32 px
    assert {r["split"] for r in rows} == {"val", "test"}


# ------------------------------------------------------------------------------ bad input
def test_a_class_folder_without_an_image_in_a_split_is_named(tmp_path):
    make_scene_folders(tmp_path / "AID", [f"class{k:02d}" for k in range(29)], per_class=10, camel=True)
    make_scene_folders(tmp_path / "AID", ["lonely"], per_class=1, camel=True)
    with pytest.raises(DataError, match=r"AID/Lonely: class folder has no image in the 'train' split \(1 image"):
        get_dataset("aid", tmp_path, "train", train_ratio=0.2)


def test_a_class_folder_missing_from_the_dataset_is_named(tmp_path):
    make_scene_folders(tmp_path / "AID", [f"class{k:02d}" for k in range(29)], per_class=4, camel=True)
    with pytest.raises(DataError, match=r"AID: 29 class folder\(s\) found, expected 30"):
        get_dataset("aid", tmp_path, "train")


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_a_train_ratio_outside_0_1_names_the_key(tmp_path, ratio):
    make_scene_folders(tmp_path / "AID", [f"class{k:02d}" for k in range(30)], per_class=4, camel=True)
    cfg = build_finetune_config({"task": "classification", "device": "cpu", "out_dir": str(tmp_path / "o"),
                                 "backbone": {"modalities": ["rgb"], "arch": MICRO},
                                 "data": {"kind": "reader", "reader": "aid", "root": str(tmp_path), "resize": 32,
                                          "splits": {"train": "train", "val": "test", "test": "test"},
                                          "reader_args": {"train_ratio": ratio}}})
    with pytest.raises(ConfigError, match=r"data\.reader_args\.train_ratio: train_ratio=.*\(0, 1\]"):
        finetune(cfg)
    assert not (tmp_path / "o").exists()


def test_a_class_without_training_tiles_fails_before_training(root, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    index = (bad / "index.csv").read_text().splitlines()
    header = index[0].split(",")
    col, task, split = header.index("scene_class"), header.index("task"), header.index("split")
    kept = [index[0]] + [line for line in index[1:]
                         if not (line.split(",")[task] == "scene" and line.split(",")[split] == "train" and line.split(",")[col] == "2")]
    (bad / "index.csv").write_text("\n".join(kept) + "\n")
    with pytest.raises(DataError, match=r"data\.splits\.train: no training sample of class\(es\) \['dense buildings'\]"):
        finetune(build_finetune_config(cls_run(bad, tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_bad_classification_parameters_name_the_key(root, tmp_path):
    with pytest.raises(ConfigError, match="batch_size: mixup/cutmix"):
        build_finetune_config(cls_run(root, tmp_path, mixup=0.8, batch_size=3))
    with pytest.raises(ConfigError, match="mode: 'knn' is a classification protocol"):
        build_finetune_config({"task": "segmentation", "mode": "knn"})
    with pytest.raises(ConfigError, match="data.task: 'seg_buildings' has no tile class"):
        build_finetune_config({"task": "classification", "data": {"task": "seg_buildings"}})
    with pytest.raises(ConfigError, match="num_classes: 4 disagrees with the 3 classes"):
        build_finetune_config({"task": "classification", "data": {"task": "scene"}, "num_classes": 4})
    with pytest.raises(ConfigError, match="pool"):
        build_finetune_config({"task": "classification", "data": {"task": "scene"}, "pool": "max"})
