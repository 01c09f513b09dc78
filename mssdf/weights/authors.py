"""The authors' checkpoint layout (``vit_base_500.pth``) → our :class:`~mssdf.model.MSSDF`.

Authors' layout (method.md §2, "Checkpoint layout"): ``{"model": state_dict}`` with
``encoder.*``, ``ema_teacher.*``, ``encoder_to_decoder``, ``fusion_token``,
``mask{1,2}_token``, ``fusion_decoder.*``, ``decoder.*`` and ``cls_head.*``. Their
single 3-channel patch embedding serves both modalities (the DSM enters as a grey
colour map replicated over 3 channels, normalised with ImageNet statistics), their
1-D sine-cosine position table is not stored (we generate it: ``pos_embed="1d"``),
and their cls token is ``cls_token + cls_embed`` (folded into our ``cls_token``).

Mapping onto our model:

* ``rgb``: the patch embedding as is, with our normalisation set to the ImageNet
  statistics in 0–255 units (mean·255, std·255) — the authors' ``ToTensor`` +
  ``Normalize`` on 8-bit images;
* ``dsm``: a 1-channel embedding equivalent to feeding the grey value ``g`` (0–255)
  on all three channels: ``W' = Σ_c W_c / (255·s_c)``, ``b' = b − Σ_c m_c/s_c · ΣW_c``.
  Our ``dsm`` input for such a model is therefore the authors' 8-bit grey DSM (how they
  scaled heights to 8 bits is not published; map heights yourself, e.g. min-max per tile).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from mssdf.modalities import channels
from mssdf.model import MSSDF, ModelConfig, NormStats

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint does not have the expected layout."""


# ---------------------------------------------------------------------------------------
# authors' layout → our model


def read_authors_state_dict(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tensors of an authors' checkpoint (a path or an already loaded dict).

    Files are read with ``torch.load(weights_only=True)``: no code is unpickled. A file
    that needs more (e.g. a pickled ``argparse.Namespace``) fails with a message saying so.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CheckpointError(f"{path}: file not found")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise CheckpointError(
                f"{path}: cannot be read with weights_only=True ({type(err).__name__}: {err}). "
                "If you trust the file, re-save only its tensors: "
                "torch.save({'model': torch.load(p, weights_only=False)['model']}, new_path)"
            ) from err
    else:
        obj = dict(source)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or "encoder.cls_token" not in state:
        raise CheckpointError(f"{source!s:.200}: no 'encoder.cls_token' — not an MSSDF checkpoint in the authors' layout")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _block_count(state: Mapping[str, Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def authors_config(
    state: Mapping[str, Tensor], img_size: int = 320, num_heads: int | None = None, decoder_heads: int | None = None
) -> ModelConfig:
    """Our :class:`ModelConfig` for an authors' state dict (widths/depths read off the tensors).

    Head counts are not stored; the defaults are width/64 (12 for 768, 6 for 384).
    """
    d = state["encoder.cls_token"].shape[-1]
    patch = state["encoder.patch_embed.proj.weight"].shape[-1]
    dd = state["encoder_to_decoder.weight"].shape[0]
    mlp = state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / d
    return ModelConfig(
        modalities=channels(("rgb", "dsm")),  # their two inputs: colour and grey DSM
        img_size=img_size,
        patch_size=patch,
        embed_dim=d,
        depth=_block_count(state, "encoder."),
        num_heads=num_heads or d // 64,
        mlp_ratio=mlp,
        decoder_dim=dd,
        decoder_depth=_block_count(state, "decoder."),
        decoder_heads=decoder_heads or dd // 64,
        fusion_depth=_block_count(state, "fusion_decoder."),
        pos_embed="1d",
        target="teacher",
        normalization={
            "rgb": NormStats(tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD)),
        },
    )


def _grey_embedding(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """3-channel ImageNet-normalised embedding → 1-channel embedding of the 0–255 grey value."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=weight.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, 3, 1, 1)
    w1 = (weight / (255.0 * std)).sum(dim=1, keepdim=True)
    b1 = bias - (weight * mean / std).sum(dim=(1, 2, 3))
    return w1, b1


def _map_encoder(state: Mapping[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {f"{dst}cls_token": state[f"{src}cls_token"] + state[f"{src}cls_embed.weight"].view(1, 1, -1)}
    w, b = state[f"{src}patch_embed.proj.weight"], state[f"{src}patch_embed.proj.bias"]
    out[f"{dst}patch_embed.proj.rgb.proj.weight"], out[f"{dst}patch_embed.proj.rgb.proj.bias"] = w, b
    out[f"{dst}patch_embed.proj.dsm.proj.weight"], out[f"{dst}patch_embed.proj.dsm.proj.bias"] = _grey_embedding(w, b)
    for k, v in state.items():
        if k.startswith(f"{src}blocks.") or k.startswith(f"{src}norm."):
            out[dst + k[len(src) :]] = v
    return out


def convert_authors_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename/fold an authors' state dict into our :class:`MSSDF` key space."""
    out = _map_encoder(state, "encoder.", "encoder.")
    if any(k.startswith("ema_teacher.") for k in state):
        out.update(_map_encoder(state, "ema_teacher.", "teacher."))
    out["encoder_to_decoder.weight"] = state["encoder_to_decoder.weight"]
    out["fusion_token"] = state["fusion_token"].view(1, -1)
    out["mask_tokens.rgb"] = state["mask1_token"]
    out["mask_tokens.dsm"] = state["mask2_token"]
    renames = {"fusion_decoder.blocks.": "fusion_blocks.", "fusion_decoder.norm.": "fusion_norm.",
               "decoder.blocks.": "decoder_blocks.", "decoder.norm.": "decoder_norm.", "decoder.head.": "head.",
               "cls_head.": "modality_head."}  # fmt: skip
    for k, v in state.items():
        for old, new in renames.items():
            if k.startswith(old):
                out[new + k[len(old) :]] = v
    return out


def load_authors_checkpoint(
    source: str | Path | Mapping[str, Tensor], img_size: int = 320, strict: bool = True, **head_counts: int
) -> MSSDF:
    """Build our :class:`MSSDF` from a checkpoint in the authors' layout.

    Args:
        source: path to ``vit_base_500.pth``-like file, or its (loaded) dict.
        img_size: input size the model will be used at (positions are generated for it).
        strict: fail if any tensor of ours is not filled, or one of theirs is unused.
        head_counts: ``num_heads`` / ``decoder_heads`` if not width/64.
    """
    state = read_authors_state_dict(source)
    cfg = authors_config(state, img_size, **head_counts)
    model = MSSDF(cfg)
    if "ema_teacher.cls_token" not in state:  # teacher not saved: start it from the student
        state = {**state, **{k.replace("encoder.", "ema_teacher.", 1): v for k, v in state.items() if k.startswith("encoder.")}}
    converted = convert_authors_state_dict(state)
    ours = model.state_dict()
    unused = [k for k in state if not _is_consumed(k)]
    missing = [k for k in ours if k not in converted and not _is_buffer_default(k)]
    unexpected = [k for k in converted if k not in ours]
    if strict and (missing or unexpected or unused):
        raise CheckpointError(
            f"authors' checkpoint does not fit: ours not filled {missing[:8]}, "
            f"no place for {unexpected[:8]}, theirs unused {unused[:8]}"
        )
    mismatched = [k for k in converted if k in ours and converted[k].shape != ours[k].shape]
    if mismatched:
        raise CheckpointError(
            "shape mismatch: " + ", ".join(f"{k} {tuple(converted[k].shape)} vs {tuple(ours[k].shape)}" for k in mismatched[:8])
        )
    model.load_state_dict({**ours, **{k: v for k, v in converted.items() if k in ours}}, strict=True)
    return model


_CONSUMED = re.compile(
    r"^((encoder|ema_teacher)\.(cls_token|cls_embed\.weight|patch_embed\.proj\.(weight|bias)|blocks\.\d+\..+|norm\.(weight|bias))"
    r"|encoder_to_decoder\.weight|fusion_token|mask[12]_token|(fusion_decoder|decoder)\.(blocks\.\d+\..+|norm\..+)"
    r"|decoder\.head\..+|cls_head\.\d+\..+)$"
)


def _is_consumed(key: str) -> bool:
    """Whether :func:`convert_authors_state_dict` maps this authors' key somewhere."""
    return bool(_CONSUMED.match(key))


def _is_buffer_default(key: str) -> bool:
    """Our normalisation buffers are set from the config, not from their checkpoint."""
    return ".patch_embed.mean_" in key or ".patch_embed.std_" in key
