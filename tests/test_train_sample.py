"""A few pre-training steps on the real sample (Autzen RGB + height tiles) reduce the loss."""

from __future__ import annotations

import pytest
import torch

from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sources import SourceSettings
from mssdf.paths import repo_root
from mssdf.pretrain import build_config, pretrain

RAW = repo_root(__file__) / "data" / "raw"


@pytest.mark.skipif(not (RAW / "laspy" / "autzen_trim.laz").exists(), reason="data/raw not fetched (make setup fetches it)")
def test_a_few_steps_on_the_real_sample_reduce_the_loss(tmp_path):
    root = tmp_path / "prepared"
    prepare(PrepareConfig(raw_dir=str(RAW), out_dir=str(root), sources={"autzen": SourceSettings()}, build_cache=True), root=repo_root(__file__), log=None)
    torch.manual_seed(0)
    cfg = build_config({
        "profile": "smoke",
        "model": {"embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "data": {"root": str(root), "task": "pretrain_autzen", "dsm_source": "ndsm"},
        "epochs": 12, "batch_size": 8, "optim": {"lr": 1e-3, "warmup_epochs": 1.0},
        "checkpoint_every": 1000, "out_dir": str(tmp_path / "run"),
    }, "pretrain")  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = pretrain(cfg, live=False, progress=False, log=None)
    finally:
        torch.set_num_threads(before)
    losses = [h["loss"] for h in res.history]
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert res.history[-1]["substitution_p"] == pytest.approx(0.2)  # the schedule moved (epoch 11)
