"""The torchvision import shim: applied only where needed, and timm imports."""

import subprocess
import sys

import mssdf
from mssdf import _torchvision_compat as compat


def test_timm_imports_and_the_state_is_reported():
    import timm  # noqa: F401

    assert mssdf.TORCHVISION_STATE in {"native", "schemas-defined"}
    assert compat.ensure_torchvision_importable() == mssdf.TORCHVISION_STATE  # idempotent


def test_shim_is_applied_only_when_torchvision_fails_on_its_own():
    """In a fresh interpreter: if plain `import torchvision` works, the shim must do nothing."""
    code = (
        "import importlib, sys\n"
        "try:\n    import torchvision; plain = 'ok'\nexcept RuntimeError as e:\n    plain = 'missing-op' if 'torchvision::' in str(e) else 'other'\n"
        "for m in [m for m in sys.modules if m.startswith('torchvision')]: del sys.modules[m]\n"
        "import mssdf, timm\n"
        "print(plain, mssdf.TORCHVISION_STATE)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    plain, state = out[-2], out[-1]
    assert (plain, state) in {("ok", "native"), ("missing-op", "schemas-defined")}


def test_other_runtime_errors_are_not_swallowed():
    assert not compat._is_missing_operator_error(RuntimeError("CUDA driver too old"))
    assert compat._is_missing_operator_error(RuntimeError("operator torchvision::nms does not exist"))
