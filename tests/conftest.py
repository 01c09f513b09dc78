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


# ----------------------------------------------------------------------------- downstream tests
#: A micro encoder for the downstream engine tests (16 px positions, patch 4).
DOWNSTREAM_ARCH = {"preset": "tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2}
# a two-block encoder on 32 px images: the paper-preset tests, whose presets fix larger images
MICRO_ARCH = {"preset": "tiny", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="session")
def fake_prepared(tmp_path_factory):
    """The fake raw sample prepared once per session (read-only: tests that corrupt it copy it first)."""
    from data_fakes import SMALL, make_raw

    from mssdf.config import from_dict
    from mssdf.data.prepare import PrepareConfig, prepare

    base = tmp_path_factory.mktemp("prepared")
    raw = make_raw(base / "raw")
    prepare(from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(base / "out"), **SMALL}), log=None)
    return base / "out"


@pytest.fixture
def one_thread():
    """torch on one thread for the test (restored after): the engine tests stay fast and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def with_overrides(run: dict, over: dict) -> dict:
    """``run`` with ``over`` applied one level deep (a dict value updates a dict entry, anything else replaces)."""
    for k, v in over.items():
        run[k] = {**run[k], **v} if isinstance(v, dict) and isinstance(run.get(k), dict) else v
    return run
