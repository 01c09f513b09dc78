"""Our encoder → a timm ``VisionTransformer`` (state dict, model, or files on disk).

Any modality's encoder becomes a timm ``VisionTransformer`` state dict (``strict=True``)
with the normalisation folded into the patch embedding (so the timm model takes the
same raw values as ours), q/v biases as ``qkv.bias = cat(q, 0, v)``, the position
table in ``pos_embed[:, 1:]`` and zeros in the cls slot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

import mssdf  # noqa: F401  (timm import shim)
from timm.models.vision_transformer import VisionTransformer

from mssdf.atomic import atomic_write, atomic_write_text
from mssdf.model import MSSDF, Encoder
from mssdf.pos_embed import position_table


def timm_kwargs(encoder: Encoder, modality: str, img_size: int | None = None) -> dict[str, Any]:
    """Constructor arguments of the equivalent ``timm.models.vision_transformer.VisionTransformer``."""
    cfg = encoder.cfg
    return dict(
        img_size=img_size or cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.modalities[modality],
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
    )  # timm's default norm layer is LayerNorm(eps=1e-6), as ours


@torch.no_grad()
def to_timm_state_dict(
    encoder: Encoder, modality: str, img_size: int | None = None, fold_normalization: bool = True
) -> dict[str, Tensor]:
    """State dict for :func:`timm_kwargs`' ``VisionTransformer`` (loads with ``strict=True``).

    With ``fold_normalization`` the per-band normalisation is folded into the patch
    embedding, so the timm model takes the same raw values as our encoder; otherwise
    feed it ``(x − mean) / std``.
    """
    cfg = encoder.cfg
    if modality not in cfg.modalities:
        raise KeyError(f"modality {modality!r} is not one of the encoder's {list(cfg.modalities)}")
    size = img_size or cfg.img_size
    grid = size // cfg.patch_size
    pe = encoder.patch_embed
    w = pe.proj[modality].proj.weight.detach().clone()
    b = pe.proj[modality].proj.bias.detach().clone()
    if fold_normalization:
        mean, std = getattr(pe, f"mean_{modality}"), getattr(pe, f"std_{modality}")  # (1, C, 1, 1)
        b = b - (w * mean / std).sum(dim=(1, 2, 3))
        w = w / std
    table = position_table(cfg.pos_embed, grid, grid, cfg.embed_dim)
    out = {
        "cls_token": encoder.cls_token.detach().clone(),
        "pos_embed": torch.cat([torch.zeros(1, cfg.embed_dim), table], 0).unsqueeze(0),
        "patch_embed.proj.weight": w,
        "patch_embed.proj.bias": b,
        "norm.weight": encoder.norm.weight.detach().clone(),
        "norm.bias": encoder.norm.bias.detach().clone(),
    }
    for i, blk in enumerate(encoder.blocks):
        p = f"blocks.{i}."
        a = blk.attn
        out[p + "attn.qkv.weight"] = a.qkv.weight.detach().clone()
        out[p + "attn.qkv.bias"] = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias]).detach().clone()
        for name in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
            mod = blk.get_submodule(name)
            out[p + name + ".weight"] = mod.weight.detach().clone()
            out[p + name + ".bias"] = mod.bias.detach().clone()
    return out


def to_timm(encoder: Encoder, modality: str, img_size: int | None = None) -> VisionTransformer:
    """A timm ``VisionTransformer`` with our encoder's weights for ``modality`` (raw-value input)."""
    vit = VisionTransformer(**timm_kwargs(encoder, modality, img_size))
    vit.load_state_dict(to_timm_state_dict(encoder, modality, img_size), strict=True)
    return vit.eval()


def export_timm(model: MSSDF, folder: str | Path, modalities: list[str] | None = None) -> list[Path]:
    """Write the encoder as timm ``VisionTransformer`` weights for each modality.

    Load with ``VisionTransformer(**json.load(open("timm_rgb.json")))`` then
    ``load_state_dict(safetensors.torch.load_file("timm_rgb.safetensors"), strict=True)``;
    the model takes raw values (normalisation folded into the patch embedding).
    """
    folder = Path(folder)
    written = []
    for m in modalities or list(model.cfg.modalities):
        sd = {k: v.contiguous() for k, v in to_timm_state_dict(model.encoder, m).items()}
        target = folder / f"timm_{m}.safetensors"
        atomic_write(target, lambda tmp, sd=sd: save_file(sd, tmp, metadata={"format": "timm"}))
        atomic_write_text(folder / f"timm_{m}.json", json.dumps(timm_kwargs(model.encoder, m), indent=2) + "\n")
        written.append(target)
    return written
