"""Pre-training straight from a paper dataset in its official layout (HR-Pairs, fake files)."""

from __future__ import annotations

import pytest
import torch

from _train_common import micro_run
from mssdf.config import ConfigError
from mssdf.data.io import DataError
from mssdf.pretrain import build_config, pretrain
from readers_fakes import make_hrpairs


def reader_run(tmp_path, **data):
    return micro_run(tmp_path / "run", model={"normalization": {}}, data={"kind": "reader", "reader": "hr_pairs", "root": str(tmp_path / "hr"),
                                              "split": "train", "modalities": ["rgb", "dsm"],
                                              "reader_args": {"window_size": 32}, **data})  # fmt: skip


def test_hr_pairs_reader_run_trains_with_estimated_statistics(tmp_path):
    files = make_hrpairs(tmp_path / "hr", {"a": (64, 64), "b": (64, 96)})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = pretrain(build_config(reader_run(tmp_path)), live=False, progress=False, log=None)
    finally:
        torch.set_num_threads(before)
    assert res.global_step > 0 and all(h["loss"] == h["loss"] for h in res.history)
    stats = res.model.cfg.normalization
    assert set(stats) == {"rgb", "dsm"} and len(stats["rgb"].mean) == 3
    expected_dsm = torch.cat([torch.from_numpy(f["dsm"]).flatten() for f in files.values()]).mean().item()
    assert abs(stats["dsm"].mean[0] - expected_dsm) < 2.5  # windows of uniform 0–50 m heights: mean ≈ 25
    assert 90 < stats["rgb"].mean[0] < 165  # DOM values uniform in 1–255


def test_reader_run_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.reader"):
        build_config(reader_run(tmp_path, reader="hr_pears"))
    with pytest.raises(ConfigError, match="data.reader_args.*window"):
        build_config(reader_run(tmp_path, reader_args={"windowsize": 32}))
    with pytest.raises(ConfigError, match="data.modalities"):
        build_config(reader_run(tmp_path, modalities=[]))
    with pytest.raises(DataError, match="no such folder"):
        pretrain(build_config(reader_run(tmp_path)), live=False, progress=False, log=None)
