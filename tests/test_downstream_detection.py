"""Detection on the downstream engine: runs on the fake sample's boxes (horizontal and
oriented), boxes move with the image under the training flips/rotations, crops + merging
report an object seen by two crops once, the DIOR and DOTA protocols run a few iterations on
fake files in their official layouts, and bad boxes are named before training."""

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
from readers_fakes import make_dior, make_dota  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import get_dataset  # noqa: E402
from mssdf.downstream.config import build_finetune_config  # noqa: E402
from mssdf.downstream.data import TaskDataset  # noqa: E402
from mssdf.downstream.detection.boxes import obb_to_poly, poly_iou, rot90_flip_boxes  # noqa: E402
from mssdf.downstream.detection.merge import detect_large  # noqa: E402
from mssdf.downstream.engine import finetune  # noqa: E402
from mssdf.downstream.study import StudyConfig, run_study  # noqa: E402

ARCH, MICRO = DOWNSTREAM_ARCH, MICRO_ARCH


@pytest.fixture(scope="module")
def root(fake_prepared):
    return fake_prepared


pytestmark = pytest.mark.usefixtures("one_thread")


def det_run(root, out, **over):
    run = {"profile": "smoke", "task": "detection", "data": {"root": str(root), "task": "detection"},
           "backbone": {"modalities": ["pan"], "arch": dict(ARCH)}, "steps": 4, "eval_every": 2, "batch_size": 2,
           "head_channels": 16, "num_convs": 1, "out_dir": str(out), "device": "cpu", "eval_batch_size": 4}
    return with_overrides(run, over)


@pytest.mark.parametrize("box_type", ["hbb", "obb"])
def test_detection_runs_on_the_sample_boxes(root, tmp_path, box_type):
    res = finetune(build_finetune_config(det_run(root, tmp_path, box_type=box_type)))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["task"] == "detection" and m["selection"] == "map_50" and m["classes"] == ["building"]
    assert "map_50" in m["test"] and ("map" in m["test"]) == (box_type == "hbb")
    assert all(np.isfinite(h["loss"]) for h in res.history if "loss" in h)


# ------------------------------------------------------------------------------ augmentation
def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("k,flip", [(k, f) for k in range(4) for f in (False, True)])
def test_boxes_move_with_the_image(k, flip):
    h, w = 12, 20
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[2:7, 3:15] = True  # box (3, 2, 15, 7)
    moved = torch.rot90(mask, k, dims=(0, 1))
    moved = torch.flip(moved, dims=(1,)) if flip else moved
    got = rot90_flip_boxes(torch.tensor([[3.0, 2.0, 15.0, 7.0]]), k, flip, h, w)[0].tolist()
    assert got == pytest.approx(_mask_box(moved))
    obb = torch.tensor([[9.0, 4.5, 12.0, 5.0, 0.0]])
    turned = rot90_flip_boxes(obb, k, flip, h, w)
    want = torch.tensor([_mask_box(moved)])
    poly = torch.stack([want[:, [0, 1]], want[:, [2, 1]], want[:, [2, 3]], want[:, [0, 3]]], 1)
    assert poly_iou(obb_to_poly(turned), poly).item() == pytest.approx(1.0, abs=1e-5)


def test_training_items_carry_their_boxes_through_the_augmentation():
    img = torch.zeros(1, 16, 16)
    img[0, 4:8, 2:12] = 1.0
    sample = {"pan": img, "boxes": torch.tensor([[2.0, 4.0, 12.0, 8.0]]), "box_labels": torch.tensor([0])}
    ds = TaskDataset([sample], ("pan",), "boxes", {}, flip=True, train=True, seed=3)
    for epoch in range(6):
        item = ds[(epoch, 0)]
        assert item["target"]["boxes"][0].tolist() == pytest.approx(_mask_box(item["images"]["pan"][0] > 0.5))


# ------------------------------------------------------------------------------ crops and merging
def test_an_object_seen_by_two_crops_is_reported_once():
    image = torch.zeros(1, 1, 40, 72)
    image[0, 0, 10:20, 30:40] = 1.0  # inside the columns 24..48 that both crops (0..48, 24..72) cover

    def detect(crops):
        out = []
        for c in crops["pan"]:
            ys, xs = torch.nonzero(c[0] > 0.5, as_tuple=True)
            if len(xs) == 0:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)})
                continue
            box = torch.tensor([[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]])
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])})
        return out

    seen = sum(len(d["boxes"]) for d in detect({"pan": torch.stack([image[0, :, :40, c : c + 48] for c in (0, 24)])}))
    assert seen == 2  # each crop sees the whole object
    merged = detect_large(detect, {"pan": image}, window=48, overlap=24, iou_threshold=0.5, max_detections=10)[0]
    assert len(merged["boxes"]) == 1 and merged["boxes"][0].tolist() == [30.0, 10.0, 40.0, 20.0]


# ------------------------------------------------------------------------------ paper protocols
DIOR_OBJECTS = {f"{i:05d}": [("airplane", (2, 3, 14, 12)), ("vehicle", (18, 20, 26, 28))] for i in range(1, 9)}


def test_dior_protocol_runs_a_few_iterations_on_fake_files(tmp_path):
    make_dior(tmp_path / "dior", {"train": ["00001", "00002", "00003", "00004"], "val": ["00005", "00006"],
                                  "test": ["00007", "00008"]}, DIOR_OBJECTS, size=32)
    study = StudyConfig(inits=("random",), seeds=(0,), out_dir=str(tmp_path / "runs"),
                        run={"profile": "paper", "batch_size": 2, "device": "cpu", "precision": "fp32", "head_channels": 16,
                             "num_convs": 1, "backbone": {"arch": MICRO}},
                        datasets={"dior": {"preset": "dior", "steps": 2, "eval_every": 1, "optim": {"warmup_steps": 1},
                                           "data": {"root": str(tmp_path / "dior"), "stats_samples": 2}}})
    cfg = study.run_config("dior", "random", 0)
    full = StudyConfig(inits=("random",), seeds=(0,), run={"profile": "paper"}, datasets={"dior": {"preset": "dior"}})
    paper = full.run_config("dior", "random", 0)
    assert (paper.optim.lr, paper.optim.layer_decay, paper.steps, paper.box_type) == (1e-4, 0.75, 8800, "hbb")
    assert cfg.data.reader == "dior" and len(get_dataset("dior", tmp_path / "dior", "test").CLASSES) == 20
    run_study(study, log=None)
    m = json.loads((tmp_path / "runs" / "dior" / "random" / "seed0" / "metrics.json").read_text())
    assert len(m["classes"]) == 20 and "map" in m["test"] and m["best_step"] in (1, 2)


DOTA_LINE = "{x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1} {cls} 0\n"


def test_dota_protocol_trains_on_crops_and_evaluates_merged_whole_images(tmp_path):
    labels = {f"P{i:04d}": DOTA_LINE.format(x0=4, y0=4, x1=20, y1=14, cls="plane") + DOTA_LINE.format(
        x0=30, y0=30, x1=44, y1=40, cls="small-vehicle") for i in range(1, 4)}
    make_dota(tmp_path / "dota", "train", labels, {k: (48, 48) for k in labels})
    make_dota(tmp_path / "dota", "val", {"P0009": labels["P0001"]}, {"P0009": (48, 56)})
    study = StudyConfig(inits=("random",), seeds=(0,), out_dir=str(tmp_path / "runs"),
                        run={"profile": "paper", "batch_size": 2, "device": "cpu", "precision": "fp32", "head_channels": 16,
                             "num_convs": 1, "backbone": {"arch": MICRO}},
                        datasets={"dota": {"preset": "dota", "steps": 2, "eval_every": 2, "optim": {"warmup_steps": 1},
                                           "data": {"root": str(tmp_path / "dota"), "stats_samples": 2, "eval_window": 32,
                                                    "role_args": {"train": {"crop_size": 32, "gap": 8}}}}})
    cfg = study.run_config("dota", "random", 0)
    assert cfg.box_type == "obb" and cfg.data.role_args["train"]["crop_size"] == 32 and not cfg.select_best
    full = StudyConfig(inits=("random",), seeds=(0,), run={"profile": "paper"}, datasets={"dota": {"preset": "dota"}})
    paper = full.run_config("dota", "random", 0)
    assert paper.data.role_args["train"] == {"crop_size": 1024, "gap": 200, "min_visible": 0.7} and paper.data.eval_window == 1024
    train = get_dataset("dota", tmp_path / "dota", "train", crop_size=32, gap=8)
    assert len(train) == 3 * 4  # 48 px images: 2 x 2 crops of 32 every 24 px
    run_study(study, log=None)
    m = json.loads((tmp_path / "runs" / "dota" / "random" / "seed0" / "metrics.json").read_text())
    assert len(m["classes"]) == 15 and "map_50" in m["test"] and m["best_step"] == 2


# ------------------------------------------------------------------------------ bad input
def _corrupt_boxes(root, tmp_path, value):
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    path = bad / "cache" / "atlanta" / "train" / "boxes.npy"
    boxes = np.load(path)
    boxes[0] = value
    np.save(path, boxes)
    offsets = np.load(bad / "cache" / "atlanta" / "train" / "boxes_offsets.npy")
    tile = int(np.searchsorted(offsets, 0, side="right") - 1)
    return bad, json.loads((bad / "cache" / "atlanta" / "train" / "tiles.json").read_text())[tile]


@pytest.mark.parametrize("value,what", [((5.0, 5.0, 5.0, 9.0), "degenerate"), ((40.0, 40.0, 50.0, 50.0), "outside the 32x32 image")])
def test_bad_boxes_fail_before_training_naming_the_tile(root, tmp_path, value, what):
    bad, tile = _corrupt_boxes(root, tmp_path, value)
    with pytest.raises(DataError, match=rf"\({tile}\): box 0 .* {what}"):
        finetune(build_finetune_config(det_run(bad, tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_bad_annotations_of_the_paper_datasets_name_the_file(tmp_path):
    make_dota(tmp_path / "a", "train", {"P0001": "1 2 3 4 5 6 7 plane 0\n"}, {"P0001": (16, 16)})
    with pytest.raises(DataError, match=r"P0001\.txt:1: polygon with 7 coordinate values, 8 expected"):
        get_dataset("dota", tmp_path / "a", "train")[0]
    make_dota(tmp_path / "b", "train", {"P0001": DOTA_LINE.format(x0=1, y0=1, x1=5, y1=5, cls="spaceship")}, {"P0001": (16, 16)})
    with pytest.raises(DataError, match=r"P0001\.txt:1: unknown class 'spaceship'"):
        get_dataset("dota", tmp_path / "b", "train")[0]
    make_dota(tmp_path / "c", "train", {"P0001": DOTA_LINE.format(x0=1, y0=1, x1=5, y1=5, cls="plane")}, {"P0001": (16, 16)})
    (tmp_path / "c" / "train" / "labelTxt" / "P0002.txt").write_text(DOTA_LINE.format(x0=1, y0=1, x1=5, y1=5, cls="plane"))
    with pytest.raises(DataError, match=r"P0002\.txt: annotation without its image"):
        get_dataset("dota", tmp_path / "c", "train")
    make_dior(tmp_path / "d", {"train": ["00001"]}, {"00001": [("dragon", (1, 1, 5, 5))]})
    with pytest.raises(DataError, match=r"00001\.xml: object 0 has unknown class 'dragon'"):
        get_dataset("dior", tmp_path / "d", "train")[0]


def test_bad_detection_parameters_name_the_key(root, tmp_path):
    with pytest.raises(ConfigError, match="data.crop: detection trains on whole samples"):
        build_finetune_config(det_run(root, tmp_path, data={"crop": 16}))
    with pytest.raises(ConfigError, match="data.task: 'seg_buildings' has no boxes"):
        build_finetune_config(det_run(root, tmp_path, data={"task": "seg_buildings"}))
    with pytest.raises(ConfigError, match="box_type"):
        build_finetune_config(det_run(root, tmp_path, box_type="circle"))
    with pytest.raises(ConfigError, match="nms_iou"):
        build_finetune_config(det_run(root, tmp_path, nms_iou=1.5))
