"""Pre-training config: profiles, variants, and bad parameters failing before training, naming the key/path."""

from __future__ import annotations

import pytest

from _train_common import micro_run, run_training, write_yaml
from mssdf.config import ConfigError
from mssdf.data.io import DataError
from mssdf.pretrain.cli import main
from mssdf.pretrain.config import PROFILES, VARIANTS, build_config, load_config, parse_sets
from mssdf.pretrain.data import check_data


def test_paper_profile_holds_the_authors_hyperparameters():
    cfg = build_config({"profile": "paper"})
    assert cfg.epochs == 500 and cfg.batch_size == 32 and cfg.crop == 320
    assert cfg.optim.warmup_epochs == 40 and cfg.optim.weight_decay == 0.05 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.min_lr == 1e-5 and cfg.optim.grad_clip is None and cfg.masking.ratio == 0.75
    assert cfg.optim.peak_lr(32 * 16) == pytest.approx(1.5e-4 * 512 / 256)
    m = cfg.model_config()
    assert (m.embed_dim, m.depth, m.num_heads, m.decoder_dim, m.decoder_depth, m.fusion_depth) == (768, 12, 12, 384, 4, 3)
    assert m.target == "teacher" and cfg.ema_schedule.momentum_start == 0.996


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_on_both_profiles(variant):
    for profile in PROFILES:
        cfg = build_config({"profile": profile, "variant": variant})
        assert cfg.model_config().modalities


def test_mae_variant_is_pixels_random_no_pair_terms_on_the_same_data():
    cfg = build_config({"profile": "smoke", "variant": "mae"})
    assert cfg.model_config().target == "pixels" and cfg.data.modality_names == build_config({"profile": "smoke"}).data.modality_names
    assert build_config({"profile": "smoke", "variant": "mae", "data": {"modalities": ["rgb"]}}).data.modality_names == ("rgb",)
    assert cfg.masking.mode == "random" and not cfg.masking.cross_modal
    assert (cfg.losses.contrast, cfg.losses.hsic, cfg.losses.modality) == (0, 0, 0)
    assert cfg.ema_schedule is None


@pytest.mark.parametrize(
    "data, named",
    [
        ({"epochs": 3, "optimm": {}}, "optimm"),
        ({"optim": {"lr_base": 1.0}}, "optim.lr_base"),
        ({"batch_size": "8"}, "batch_size"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"model": {"preset": "tiny", "embed_dimm": 8}}, "model.embed_dimm"),
        ({"model": {"preset": "huge"}}, "model.preset"),
        ({"masking": {"mode": "smart"}}, "masking.mode"),
        ({"model": {"target": "pixels"}, "ema": {"momentum_start": 0.99}}, "ema"),
        ({"data": {"modalities": ["rgb"]}}, "losses.contrast"),
        ({"data": {"modalities": ["rgb"]}, "losses": {"contrast": 0.0, "hsic": 0.0}}, "losses.modality"),
        ({"losses": {"reconstruction": 0, "contrast": 0, "hsic": 0, "modality": 0}}, "losses"),
        ({"data": {"task": "pretrain_rotterdam", "modalities": ["rgb"]}}, "data.modalities"),
        ({"masking": {"reference": "ms"}}, "masking.reference"),
        ({"mask_group": 3, "batch_size": 4}, "mask_group"),
        ({"data": {"crop": 60}, "model": {"preset": "tiny"}}, "data.crop"),
        ({"profile": "fast"}, "profile"),
        ({"variant": "mea"}, "variant"),
    ],
)
def test_bad_parameters_fail_naming_the_key(data, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_config(data)


def test_set_overrides_and_sections(tmp_path):
    assert parse_sets(["optim.lr=1e-3", "data.modalities=[rgb, dsm]", "resume=true"]) == {
        "optim": {"lr": 1e-3}, "data": {"modalities": ["rgb", "dsm"]}, "resume": True}
    params = write_yaml(tmp_path / "params.yaml", {"other": {"x": 1}, "pretrain": micro_run(tmp_path / "o")})
    cfg = load_config(params, "pretrain", ["epochs=7", "variant=no_hsic"])
    assert cfg.epochs == 7 and cfg.losses.hsic == 0.0
    with pytest.raises(ConfigError, match="no section 'pretrainn'"):
        load_config(params, "pretrainn")


def test_missing_data_folder_is_named(tmp_path):
    cfg = build_config({"profile": "smoke", "data": {"root": str(tmp_path / "nowhere")}})
    with pytest.raises(DataError, match="nowhere"):
        check_data(cfg)
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "index.csv").write_text("task\n")
    cfg = build_config({"profile": "smoke", "data": {"root": str(tmp_path / "prep")}})
    with pytest.raises(DataError, match="stats.json"):
        check_data(cfg)


def test_cli_rejects_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_yaml(tmp_path / "run.yaml", micro_run(out, optim={"warmup": 1}))
    assert main(["--config", str(cfg), "--no-live"]) == 2
    assert "optim.warmup" in capsys.readouterr().err
    cfg = write_yaml(tmp_path / "run2.yaml", {"profile": "smoke", "data": {"root": str(tmp_path / "missing")}, "out_dir": str(out)})
    assert main(["--config", str(cfg), "--no-live"]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert not out.exists()  # nothing was started


def test_cli_subprocess_reports_bad_key(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", micro_run(tmp_path / "o"))
    res = run_training(cfg, "--set", "optim.bogus=1")
    assert res.returncode == 2 and "optim.bogus" in res.stderr and "Traceback" not in res.stderr
