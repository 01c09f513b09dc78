import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small models: 1 thread avoids oversubscription

import pytest
import torch

import mssdf  # noqa: F401  (timm import shim before any test imports timm)
from mssdf.model import MSSDF, NormStats, model_config

MODALITIES = {"rgb": 3, "ms": 4, "dsm": 1}


def micro_config(**overrides):
    """A very small model (fast on CPU) with non-trivial normalisation statistics."""
    base = dict(
        modalities=MODALITIES,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        fusion_depth=1,
        normalization={
            "rgb": NormStats((120.0, 110.0, 100.0), (50.0, 45.0, 40.0)),
            "ms": NormStats((300.0, 280.0, 260.0, 500.0), (90.0, 80.0, 70.0, 150.0)),
            "dsm": NormStats((10.0,), (6.0,)),
        },
    )
    base.update(overrides)
    return model_config("tiny", **base)


def batch(b=3, size=32, seed=0, modalities=MODALITIES):
    g = torch.Generator().manual_seed(seed)
    scale = {"rgb": 255.0, "ms": 600.0, "dsm": 25.0}
    return {m: torch.rand(b, c, size, size, generator=g) * scale[m] for m, c in modalities.items()}


@pytest.fixture
def micro_model():
    torch.manual_seed(0)
    return MSSDF(micro_config())
