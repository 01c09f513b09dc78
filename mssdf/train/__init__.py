"""Pre-training engine: typed run config, data order, masks per step, optimiser and
schedules, DDP set-up, resumable checkpoints and the training loop.

Notebook (one process in the kernel)::

    from mssdf.train import build_config, pretrain
    cfg = build_config({"profile": "smoke", "data": {"kind": "synthetic"}, "out_dir": "scratch/pt"})
    result = pretrain(cfg, live=False)       # result.history, result.model, result.final_dir

Command line (also under ``torchrun --standalone --nproc_per_node=2 -m mssdf.train ...``)::

    python -m mssdf.train --config params.yaml --section pretrain --set epochs=2
"""

from mssdf.train.config import PROFILES, VARIANTS, PretrainConfig, build_config, load_config
from mssdf.train.engine import PretrainResult, pretrain

__all__ = ["PROFILES", "VARIANTS", "PretrainConfig", "PretrainResult", "build_config", "load_config", "pretrain"]
