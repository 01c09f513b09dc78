"""The fine-tuning engine on a fake prepared sample: layer-decay learning rates, linear mode,
selection on validation, exact resume after SIGKILL, a perfect predictor's scores, the
study table, and every bad-input case failing before training with the file or key named."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import with_overrides
from safetensors.torch import load_file
from torch import nn

from _train_common import REPO, subprocess_env, write_yaml
from mssdf.config import ConfigError, from_dict
from mssdf.data.io import DataError
from mssdf.downstream.backbone import build_backbone
from mssdf.downstream.config import build_finetune_config
from mssdf.downstream.engine import evaluate, finetune, setup
from mssdf.downstream.study import StudyConfig, run_study, study_metrics, study_table
from mssdf.engine.checkpointing import list_checkpoints
from mssdf.engine.distributed import init_distributed
from mssdf.engine.optim import no_weight_decay, schedule_factor

ARCH = {"preset": "tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2}


@pytest.fixture(scope="module")
def root(fake_prepared):
    return fake_prepared


pytestmark = pytest.mark.usefixtures("one_thread")


def seg_run(root, out, **over):
    run = {"profile": "smoke", "task": "segmentation", "data": {"root": str(root), "task": "seg_buildings"},
           "backbone": {"modalities": ["pan"], "arch": dict(ARCH)}, "steps": 6, "eval_every": 3, "batch_size": 2,
           "head_channels": 8, "out_dir": str(out), "device": "cpu", "optim": {"lr": 1e-3, "warmup_steps": 2}}
    return with_overrides(run, over)


def height_run(root, out, **over):
    return seg_run(root, out, task="height", data={"task": "height"}, backbone={"modalities": ["rgb"]}, **over)


# ------------------------------------------------------------------------------ optimiser
def test_layer_decay_groups_get_the_expected_learning_rates(root, tmp_path):
    cfg = build_finetune_config(seg_run(root, tmp_path, optim={"layer_decay": 0.5, "lr": 1e-3, "warmup_steps": 2}))
    run = setup(cfg, init_distributed("cpu"))
    depth = run.model.backbone.encoder.cfg.depth
    seen = set()
    for g in run.state.optimizer.param_groups:
        layer = g["layer"]
        assert g["initial_lr"] == pytest.approx(1e-3 * 0.5 ** (depth + 1 - layer))
        for name in g["names"]:
            expect = depth + 1 if not name.startswith("backbone.") else min(run.model.backbone.layer_id(name[9:]), depth + 1)
            assert layer == expect, name
            if name.startswith("backbone.encoder.blocks."):
                assert layer == int(name.split(".")[3]) + 1
        seen.add(layer)
        # weight matrices decay; norms, biases and learned tokens do not
        assert all(no_weight_decay(n, p) == (g["weight_decay"] == 0.0) for n, p in zip(g["names"], g["params"]))
    assert seen == set(range(depth + 2))  # embeddings, every block, the head
    # lr of every group after one scheduler step: its scale times the warm-up factor
    step_fn_lr = [g["lr"] for g in run.state.optimizer.param_groups]
    assert step_fn_lr == [pytest.approx(g["initial_lr"] * schedule_factor(0, warmup_steps=2, total_steps=6, schedule="poly"))
                          for g in run.state.optimizer.param_groups]


def test_linear_mode_changes_no_encoder_weight(root, tmp_path):
    cfg = build_finetune_config(seg_run(root, tmp_path / "lin", mode="linear"))
    torch.manual_seed(cfg.seed)
    initial = build_backbone(cfg.backbone).encoder.state_dict()
    res = finetune(cfg)
    final = res.model.backbone.encoder.state_dict()
    assert all(torch.equal(initial[k], final[k]) for k in initial)
    head = load_file(str(tmp_path / "lin" / "best" / "model.safetensors"))
    full = build_finetune_config(seg_run(root, tmp_path / "full"))
    res_full = finetune(full)
    moved = [k for k, v in res_full.model.backbone.encoder.state_dict().items() if not torch.equal(initial[k], v)]
    assert moved, "finetune mode must train the encoder"
    assert any(k.startswith("decode") or k.startswith("head") or "decoder" in k for k in head)


# ------------------------------------------------------------------------------ selection and outputs
def test_selection_on_validation_and_metrics_file(root, tmp_path):
    res = finetune(build_finetune_config(seg_run(root, tmp_path)))
    vals = [h["val_miou"] for h in res.history if "val_miou" in h]
    assert len(vals) == 2  # steps 3 and 6
    assert res.val["miou"] == pytest.approx(max(vals)) and res.best_step in (3, 6)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) >= {"task", "init", "seed", "val", "test", "best_step", "label_kind", "classes"}
    assert m["classes"] == ["background", "building"] and m["label_kind"] == "real"
    assert 0.0 <= m["test"]["miou"] <= 1.0 and np.array(m["test"]["confusion"]).sum() > 0


class _Oracle(nn.Module):
    """Reads the truth from the input channel: a perfect predictor."""

    def __init__(self, task: str, num_classes: int):
        super().__init__()
        self.task, self.k = task, num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        x = images["pan"][:, 0]
        if self.task == "height":
            return {"out": x[:, None]}
        return {"out": torch.nn.functional.one_hot(x.long().clamp(0, self.k - 1), self.k).permute(0, 3, 1, 2).float() * 10}


class _TruthAsInput(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        t = self.targets[i]
        return {"images": {"pan": torch.nan_to_num(t.float(), nan=0.0)[None]}, "target": t}


def test_a_perfect_predictor_scores_one_and_zero(root, tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 2, (16, 16), generator=g) for _ in range(5)]
    labels[0][:2] = 255  # ignored pixels
    cfg = build_finetune_config(seg_run(root, tmp_path))
    seg = evaluate(_Oracle("segmentation", 2), _TruthAsInput(labels), cfg, 2)
    assert seg["miou"] == 1.0 and seg["overall_accuracy"] == 1.0 and seg["f1"] == 1.0
    heights = [torch.rand(16, 16, generator=g) * 20 for _ in range(3)]
    heights[1][0, 0] = float("nan")
    hcfg = build_finetune_config(height_run(root, tmp_path))
    h = evaluate(_Oracle("height", 1), _TruthAsInput(heights), hcfg, 1)
    assert h["rmse_m"] == 0.0 and h["mae_m"] == 0.0 and h["rmse_norm"] == 0.0 and h["rmse_m_no_ground"] == 0.0
    # sliding windows over the same samples give the same scores
    win = build_finetune_config(seg_run(root, tmp_path, data={"eval_window": 8, "eval_overlap": 0.25}))
    assert evaluate(_Oracle("segmentation", 2), _TruthAsInput(labels), win, 2)["miou"] == 1.0


# ------------------------------------------------------------------------------ resume
def test_sigkill_then_resume_is_bit_identical(root, tmp_path):
    run = seg_run(root, tmp_path / "x", steps=40, eval_every=10, checkpoint_every=5, keep_checkpoints=2)
    ref_cfg = write_yaml(tmp_path / "ref.yaml", {"finetune": {**run, "out_dir": str(tmp_path / "ref")}})
    cut_cfg = write_yaml(tmp_path / "cut.yaml", {"finetune": {**run, "out_dir": str(tmp_path / "cut")}})
    cmd = [sys.executable, "-m", "mssdf.downstream", "--section", "finetune", "--no-progress", "--config"]
    ref = subprocess.Popen(cmd + [str(ref_cfg)], env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(cmd + [str(cut_cfg)], env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None and not any(s >= 15 for s, _ in list_checkpoints(tmp_path / "cut")):
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    res = subprocess.run(cmd + [str(cut_cfg), "--set", "resume=true"], env=subprocess_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert ref.wait(timeout=180) == 0, ref.stderr.read()[-3000:]
    a = load_file(str(tmp_path / "ref" / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "best" / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ref", "cut"))
    assert ma["test"] == mb["test"] and ma["best_step"] == mb["best_step"]


# ------------------------------------------------------------------------------ the study
def test_study_rows_table_and_metrics(root, tmp_path):
    study = from_dict(StudyConfig, {"inits": ["random", str(tmp_path / "weights")], "seeds": [0, 1], "out_dir": str(tmp_path / "s"),
                                    "run": {k: v for k, v in seg_run(root, tmp_path).items() if k != "out_dir"} | {"steps": 2, "eval_every": 2},
                                    "datasets": {"buildings": {}}}, "segmentation")
    # a path initialisation: our own weights folder
    from mssdf.model import MSSDF, model_config
    from mssdf.weights.native import save_pretrained

    torch.manual_seed(3)
    save_pretrained(MSSDF(model_config(**{**ARCH, "modalities": {"pan": 1, "rgb": 3}})), tmp_path / "weights")
    rows = run_study(study, log=None)
    assert len(rows) == 2 * 2 * 2 and {r["split"] for r in rows} == {"val", "test"}
    table = study_table(rows, "miou")
    assert table.shape == (1, 2) and all("±" in v for v in table.iloc[0])
    m = study_metrics(rows, ("miou",))
    assert len(m["buildings"]["random"]["miou"]["seeds"]) == 2
    json.dumps(m, allow_nan=False)


# ------------------------------------------------------------------------------ bad input
def test_bad_parameters_name_the_key(root, tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        build_finetune_config({**seg_run(root, tmp_path), "stepz": 3})
    with pytest.raises(ConfigError, match="num_classes"):
        build_finetune_config(seg_run(root, tmp_path, num_classes=3))  # seg_buildings has 2
    with pytest.raises(ConfigError, match="data.task"):
        build_finetune_config(seg_run(root, tmp_path, task="height"))  # seg_buildings has no height
    with pytest.raises(ConfigError, match=r"datasets\.x\.optim\.lrr"):
        from_dict(StudyConfig, {"run": seg_run(root, tmp_path), "datasets": {"x": {"optim": {"lrr": 1}}}})
    with pytest.raises(ConfigError, match=r"datasets\.x\.preset"):
        from_dict(StudyConfig, {"run": seg_run(root, tmp_path), "datasets": {"x": {"preset": "potsdamm"}}})


def test_an_init_lacking_a_requested_modality_is_refused(root, tmp_path):
    from mssdf.model import MSSDF, model_config
    from mssdf.weights.native import save_pretrained

    save_pretrained(MSSDF(model_config(**{**ARCH, "modalities": {"rgb": 3, "dsm": 1}})), tmp_path / "models" / "mssdf" / "final")
    cfg = build_finetune_config(seg_run(root, tmp_path / "o", backbone={"init": "mssdf", "models_dir": str(tmp_path / "models")}))
    with pytest.raises(ConfigError, match=r"'pan'|\['pan'\]"):
        finetune(cfg)
    assert not (tmp_path / "o").exists()


def _corrupt(root, tmp_path, source, split, stem, value, tile_index=0):
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    path = bad / "cache" / source / split / f"{stem}.npy"
    arr = np.load(path)
    arr[tile_index] = value if np.isscalar(value) else value(arr[tile_index])
    np.save(path, arr)
    return bad


def test_labels_out_of_range_fail_before_training_naming_the_tile(root, tmp_path):
    def poke(tile):
        tile = tile.copy()
        tile[0, 0, :3] = 7
        return tile
    bad = _corrupt(root, tmp_path, "atlanta", "train", "label", poke)
    tile = json.loads((bad / "cache" / "atlanta" / "train" / "tiles.json").read_text())[0]
    with pytest.raises(DataError, match=rf"train sample \d+ \({tile}\).*labels \[7\]"):
        finetune(build_finetune_config(seg_run(bad, tmp_path / "o")))
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_a_height_target_without_any_data_fails_naming_the_tile(root, tmp_path):
    bad = _corrupt(root, tmp_path, "autzen", "val", "ndsm", np.nan)
    with pytest.raises(DataError, match=r"val sample \d+ \(.*\).*entirely NaN"):
        finetune(build_finetune_config(height_run(bad, tmp_path / "o")))


def test_height_runs_and_scores_in_metres_and_normalised_units(root, tmp_path):
    res = finetune(build_finetune_config(height_run(root, tmp_path)))
    for key in ("rmse_m", "mae_m", "rmse_norm", "mae_norm", "rmse_m_no_ground", "rmse_norm_no_ground"):
        assert key in res.test
    assert res.test["rmse_m"] >= res.test["mae_m"] >= 0


def test_two_processes_under_torchrun_fine_tune_and_evaluate_the_whole_splits(root, tmp_path):
    """DDP (gloo): a global batch of 4 from 2 x 2; the evaluation shards the splits over the
    ranks and sums the metric states, so the test confusion counts every test pixel once."""
    cfg = write_yaml(tmp_path / "ddp.yaml", {"finetune": seg_run(root, tmp_path / "ddp", steps=4, eval_every=2)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mssdf.downstream",
           "--config", str(cfg), "--section", "finetune", "--no-progress"]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 process(es), global batch 4" in proc.stdout
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    from mssdf.data.io import IGNORE_INDEX
    from mssdf.data.sample import SampleTiles

    test = SampleTiles(root, "seg_buildings", "test", modalities=["pan"])
    pixels = sum(int((test[i]["label"] != IGNORE_INDEX).sum()) for i in range(len(test)))
    assert int(np.array(m["test"]["confusion"]).sum()) == pixels


def test_a_study_checks_every_dataset_before_the_first_run(root, tmp_path):
    run = {k: v for k, v in seg_run(root, tmp_path).items() if k != "out_dir"}
    study = from_dict(StudyConfig, {"inits": ["random"], "seeds": [0], "out_dir": str(tmp_path / "s"), "run": run,
                                    "datasets": {"ok": {}, "small": {"data": {"task": "seg_asprs"}, "backbone": {"modalities": ["rgb"]},
                                                                     "batch_size": 64}}})
    with pytest.raises(DataError, match=r"datasets\.small: \d+ train samples, fewer than one global batch"):
        run_study(study, log=None)
    assert not (tmp_path / "s").exists()  # nothing ran
