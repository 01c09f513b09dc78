"""Shared pieces of the pre-training tests: a micro run config and subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

MICRO_MODEL: dict[str, Any] = {
    "preset": "tiny",
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_dim": 16,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "fusion_depth": 1,
    "normalization": {
        "rgb": {"mean": [120.0, 110.0, 100.0], "std": [50.0, 45.0, 40.0]},
        "dsm": {"mean": [10.0], "std": [6.0]},
    },
}


def micro_run(out_dir: Path | str, **overrides: Any) -> dict[str, Any]:
    """A plain run config: micro model, synthetic rgb+dsm data, fast and frequent logging."""
    base: dict[str, Any] = {
        "model": dict(MICRO_MODEL),
        "data": {"kind": "synthetic", "synthetic_samples": 16, "crop": 32},
        "optim": {"lr": 1e-3, "warmup_epochs": 0.5, "min_lr": 1e-5},
        "epochs": 3,
        "batch_size": 4,
        "checkpoint_every": 0,
        "log_every": 1,
        "out_dir": str(out_dir),
        "export_timm": False,
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def subprocess_env() -> dict[str, str]:
    """One thread per process (bit-reproducible CPU kernels), the repository importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mssdf.pretrain", "--config", str(config), "--no-live", "--no-progress", *extra]


def run_training(config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, *extra), env=subprocess_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def final_weights(out_dir: Path | str):
    return load_file(str(Path(out_dir) / "final" / "model.safetensors"))
