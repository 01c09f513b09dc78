"""Make ``import timm`` work where torchvision's compiled operators cannot load.

Why this exists (the one place it is explained)
-----------------------------------------------
``timm`` imports ``torchvision`` at ``import timm``. For torch 2.13 the package index
only carries a CUDA build of torchvision (0.28.0+cu130). With the CPU build of torch
(what a CPU-only machine installs) that torchvision's C++ extension does not load, and
the first ``@torch.library.register_fake("torchvision::nms")`` in
``torchvision/_meta_registrations.py`` raises::

    RuntimeError: operator torchvision::nms does not exist

The fix: when (and only when) that exact failure happens, declare the two operator
*schemas* torchvision's Python code refers to at import time (``torchvision::nms`` and
``torchvision::qnms``) in a ``torch.library.Library("torchvision", "DEF")`` and import
torchvision again. torchvision's compiled operators stay unavailable (mssdf does not
use them; calling ``torchvision.ops.nms`` then fails with a clear "no kernel" error),
and everything timm needs (pure Python modules) works.

Where torchvision imports fine (any matching CPU or CUDA install) nothing is done:
:func:`ensure_torchvision_importable` returns ``"native"`` and defines nothing.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_state: str | None = None
_library: torch.library.Library | None = None  # kept alive: dropping it undoes the defs


def _purge_torchvision_modules() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _is_missing_operator_error(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "torchvision::" in str(err) and "does not exist" in str(err)


def ensure_torchvision_importable() -> str:
    """Import torchvision, declaring its missing operator schemas only if needed.

    Returns:
        ``"native"`` if torchvision imported as is, ``"schemas-defined"`` if the
        missing-operator failure was repaired, ``"absent"`` if torchvision is not
        installed (timm then fails on its own with an ImportError naming it).
    """
    global _state, _library
    if _state is not None:
        return _state
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        _state = "absent"
        return _state
    except RuntimeError as err:
        if not _is_missing_operator_error(err):
            raise
        _purge_torchvision_modules()
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            try:
                _library.define(schema)
            except RuntimeError:  # already defined by someone else: fine
                pass
        import torchvision  # noqa: F401,F811
        _state = "schemas-defined"
        return _state
    _state = "native"
    return _state
