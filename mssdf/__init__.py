"""mssdf: Modality-Shared Self-supervised Distillation for multi-modal remote sensing.

Modules (one job each):
    config      typed config objects built from params.yaml sections (unknown keys fail)
    masking     random, information-aware and cross-modal masking
    pos_embed   fixed sine-cosine position tables
    model       per-modality patch embeddings, shared ViT encoder, decoders, EMA teacher
    losses      feature/pixel reconstruction, InfoNCE, HSIC, modality CE, the combiner
    interop     authors' checkpoint layout in, timm VisionTransformer out
    checkpoint  our own weights: safetensors + JSON config
"""

from mssdf._torchvision_compat import ensure_torchvision_importable

# timm (used by mssdf.model) imports torchvision; see _torchvision_compat for why.
TORCHVISION_STATE = ensure_torchvision_importable()

__version__ = "0.1.0"
