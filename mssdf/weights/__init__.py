"""Weights in and out of our :class:`~mssdf.model.MSSDF`.

    native        our own format: ``model.safetensors`` + ``config.json`` (no unpickling)
    authors       the authors' checkpoint layout (``vit_base_500.pth``) → our model
    timm_export   any modality's encoder → a timm ``VisionTransformer`` (state dict or files)
"""

from mssdf.weights.authors import (
    AuthorsCheckpointWarning, AuthorsLoadReport, CheckpointError, load_authors_checkpoint,
    load_authors_checkpoint_with_report,
)
from mssdf.weights.native import load_config, load_pretrained, save_pretrained
from mssdf.weights.timm_export import export_timm, timm_kwargs, to_timm, to_timm_state_dict

__all__ = [
    "AuthorsCheckpointWarning", "AuthorsLoadReport", "CheckpointError", "load_authors_checkpoint",
    "load_authors_checkpoint_with_report", "load_config", "load_pretrained", "save_pretrained",
    "export_timm", "timm_kwargs", "to_timm", "to_timm_state_dict",
]
