"""MSSDF pre-training on :mod:`mssdf.engine`: the typed run config (profiles, variants),
the data, the masks of each step, and the step itself (set-up, EMA teacher, final
weights); DDP, the sampler, optimiser groups, checkpoints and the loop are the engine's.

Notebook (one process in the kernel)::

    from mssdf.pretrain import build_config, pretrain
    cfg = build_config({"profile": "smoke", "data": {"kind": "synthetic"}, "out_dir": "scratch/pt"})
    result = pretrain(cfg, live=False)       # result.history, result.model, result.final_dir

Command line (also under ``torchrun --standalone --nproc_per_node=2 -m mssdf.pretrain ...``)::

    python -m mssdf.pretrain --config params.yaml --section pretrain --set epochs=2
"""

from mssdf.pretrain.config import PROFILES, VARIANTS, PretrainConfig, build_config, load_config
from mssdf.pretrain.engine import PretrainResult, pretrain

__all__ = ["PROFILES", "VARIANTS", "PretrainConfig", "PretrainResult", "build_config", "load_config", "pretrain"]
