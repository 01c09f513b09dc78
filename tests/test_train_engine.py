"""The pre-training loop in process: learning, exact resume, variants, outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _train_common import final_weights, micro_run
from mssdf.weights.native import load_pretrained
from mssdf.pretrain import build_config, pretrain
from mssdf.engine.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint
from mssdf.pretrain.data import SyntheticPairs


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models gain nothing from 2 threads, and on a busy 2-core machine OpenMP
    threads that outnumber the free cores slow small kernels down many-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(out, **over):
    return pretrain(build_config(micro_run(out, **over)), live=False, progress=False, log=None)


def test_loss_decreases_on_a_fixed_small_dataset(tmp_path):
    res = _run(tmp_path / "a", epochs=8, optim={"lr": 2e-3, "warmup_epochs": 0.0})
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 32
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    rec = res.history[-1]
    for key in ("reconstruction", "contrast", "hsic", "modality", "lr", "momentum", "images_per_s", "memory_mb", "epoch"):
        assert key in rec and rec[key] == rec[key], key
    assert res.history[0]["momentum"] == 0.996 and rec["momentum"] > 0.9999


def test_resume_in_process_is_bit_identical_and_outputs_load(tmp_path):
    full = _run(tmp_path / "full", checkpoint_every=5)
    part = _run(tmp_path / "part", checkpoint_every=5, max_steps=7)
    assert part.global_step == 7 and latest_checkpoint(tmp_path / "part").name == "step_00000007.pt"
    resumed = _run(tmp_path / "part", checkpoint_every=5, resume=True)
    assert resumed.resumed_from is not None and resumed.global_step == full.global_step == 12
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    # checkpoint content (weights_only) and the final folder
    state = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    assert state["position"] == {"epoch": 3, "batch": 0, "global_step": 12}
    assert {"model", "optimizer", "scheduler", "rng", "config", "history"} <= set(state)
    assert any(k.startswith("teacher.") for k in state["model"])
    assert len(list_checkpoints(tmp_path / "full")) == 2  # keep_checkpoints
    model = load_pretrained(tmp_path / "full" / "final")
    assert torch.equal(model.state_dict()["encoder.cls_token"], a["encoder.cls_token"])
    assert len(json.loads((tmp_path / "full" / "history.json").read_text())) == 12
    # the teacher moved away from its initial copy and differs from the student
    assert not torch.equal(a["teacher.blocks.0.attn.qkv.weight"], a["encoder.blocks.0.attn.qkv.weight"])


def test_mae_variant_and_user_dataset_and_timm_export(tmp_path):
    data = SyntheticPairs(12, 32, {"rgb": 3}, seed=5)
    cfg = build_config(micro_run(tmp_path / "mae", variant="mae", epochs=2, export_timm=True, data={"modalities": ["rgb"]}))
    res = pretrain(cfg, dataset=data, live=False, progress=False, log=None)
    assert res.model.teacher is None and res.global_step == 6
    assert set(res.history[-1]) >= {"reconstruction"} and "contrast" not in res.history[-1]
    assert (tmp_path / "mae" / "final" / "timm_rgb.safetensors").is_file()
    assert "pos_embed" in load_file(tmp_path / "mae" / "final" / "timm_rgb.safetensors")


def test_dvclive_metrics_written(tmp_path):
    res = pretrain(build_config(micro_run(tmp_path / "live", epochs=1)), live=True, progress=True, log=None)
    plots = tmp_path / "live" / "live" / "plots" / "metrics" / "train"
    for term in ("loss", "reconstruction", "contrast", "hsic", "modality", "lr", "momentum"):
        assert (plots / f"{term}.tsv").is_file(), term
    assert len((plots / "loss.tsv").read_text().splitlines()) == 1 + res.global_step


def test_resume_under_a_changed_method_is_refused_naming_the_key(tmp_path):
    from mssdf.config import ConfigError

    _run(tmp_path, max_steps=2)
    with pytest.raises(ConfigError, match=r"step_00000002\.pt: cannot resume.*masking\.variance_of: 'bands' -> 'grey'"):
        _run(tmp_path, resume=True, masking={"variance_of": "grey"})
    res = _run(tmp_path, resume=True, max_steps=3, log_every=1)  # where it stops and how often it logs may change
    assert res.resumed_from is not None and res.global_step == 3
