"""Our own pretrained weights: ``model.safetensors`` + ``config.json`` in a folder.

Loading never unpickles code: safetensors holds only tensors, the JSON only the
:class:`~mssdf.model.ModelConfig`. (:func:`mssdf.weights.timm_export.export_timm` adds a
timm ``VisionTransformer`` state dict per modality beside them.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mssdf.atomic import atomic_write, atomic_write_text
from mssdf.config import from_dict, to_dict
from mssdf.model import MSSDF, ModelConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_pretrained(model: MSSDF, folder: str | Path) -> Path:
    """Write ``model.safetensors`` (student, teacher, heads) and ``config.json``."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "mssdf"}))
    atomic_write_text(folder / CONFIG, json.dumps({"model": to_dict(model.cfg)}, indent=2) + "\n")
    return folder


def load_config(folder: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in ``folder/config.json``."""
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json (is {folder} a folder written by save_pretrained?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return from_dict(ModelConfig, data.get("model", {}), "model")


def load_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> MSSDF:
    """Rebuild the :class:`MSSDF` saved by :func:`save_pretrained` (strict)."""
    cfg = load_config(folder)
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file not found")
    model = MSSDF(cfg)
    model.load_state_dict(load_file(path, device=str(map_location)), strict=True)
    return model
