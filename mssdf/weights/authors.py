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

Reading is safe: ``torch.load(weights_only=True)`` with exactly one class allowed besides
tensors and plain containers, ``argparse.Namespace`` (the ``args`` their training script
saves next to ``model``, ``optimizer`` and ``epoch``), and only for that load. Every
tensor of ours is built from named tensors of theirs (:func:`authors_sources`); a missing
one is reported under the key *the file* would hold it, e.g. ``ema_teacher.blocks.3.attn.qkv.weight``.
If the file has no ``ema_teacher.*`` tensor at all, the teacher starts as a copy of the student.
"""

from __future__ import annotations

import argparse
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from mssdf.modalities import channels
from mssdf.model import MSSDF, ModelConfig, NormStats

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the one non-tensor class an authors' checkpoint may hold (their argparse options)
SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace,)

_SHOWN = 20  # keys listed in an error message before "... and N more"


class CheckpointError(ValueError):
    """A checkpoint does not have the expected layout."""


class AuthorsCheckpointWarning(UserWarning):
    """A non-strict load left some of our tensors at their initial values."""


@dataclass(frozen=True)
class AuthorsLoadReport:
    """What a load of an authors' checkpoint filled and what it did not.

    Attributes:
        source: the file path (or ``<checkpoint dict>``).
        kept_init: our tensors (our names) left at their initial values, because a tensor
            they are built from is missing from the file.
        missing: those missing tensors, as the file spells them.
        unused: tensors of the file no tensor of ours is built from.
        teacher_from_student: the file has no ``ema_teacher.*``; the teacher is the student's copy.
    """

    source: str
    kept_init: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    teacher_from_student: bool = False

    @property
    def complete(self) -> bool:
        return not (self.kept_init or self.missing or self.unused)


def _listing(keys: list[str] | tuple[str, ...]) -> str:
    keys = list(keys)
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


# ---------------------------------------------------------------------------------------
# reading the file


def _safe_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` for this load only."""
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):  # torch >= 2.5
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            what = f"it holds the Python object {found.group(1)}"
        else:
            what = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        raise CheckpointError(
            f"{path}: refused by the safe loader (torch.load weights_only=True; allowed: tensors, plain "
            f"containers and argparse.Namespace): {what}. If you trust the file, re-save only its tensors: "
            "torch.save({'model': torch.load(p, weights_only=False)['model']}, new_path)"
        ) from err


def read_authors_state_dict(source: str | Path | Mapping[str, object]) -> dict[str, Tensor]:
    """Tensors of an authors' checkpoint (a path or an already loaded dict).

    A file is read with ``torch.load(weights_only=True)``: no code is unpickled; the only
    class allowed besides tensors and plain containers is ``argparse.Namespace``, scoped to
    this load. The tensors are those of ``checkpoint["model"]`` (or of the checkpoint itself
    when it has no ``"model"``); ``args``, ``optimizer`` and ``epoch`` are ignored.
    """
    name = _source_name(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CheckpointError(f"{path}: file not found")
        obj = _safe_load(path)
    else:
        obj = dict(source)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or "encoder.cls_token" not in state:
        raise CheckpointError(f"{name:.200}: no 'encoder.cls_token' — not an MSSDF checkpoint in the authors' layout")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _source_name(source: object) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<checkpoint dict>"


# ---------------------------------------------------------------------------------------
# the model's shape, read off the tensors


def _block_count(state: Mapping[str, Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _shape_of(state: Mapping[str, Tensor], key: str, source: str) -> torch.Size:
    """Shape of ``key`` (or of its ``ema_teacher`` twin); the file must hold one of them."""
    for k in (key, key.replace("encoder.", "ema_teacher.", 1) if key.startswith("encoder.") else key):
        if k in state:
            return state[k].shape
    raise CheckpointError(f"{source}: missing tensor {key} (needed to infer the model's shape)")


def authors_config(
    state: Mapping[str, Tensor],
    img_size: int = 320,
    num_heads: int | None = None,
    decoder_heads: int | None = None,
    source: str = "<checkpoint dict>",
) -> ModelConfig:
    """Our :class:`ModelConfig` for an authors' state dict (widths/depths read off the tensors).

    Head counts are not stored; the defaults are width/64 (12 for 768, 6 for 384). The
    encoder depth is the larger of the student's and the teacher's block counts, so a block
    missing from one of them is reported as missing rather than shrinking the model.
    """
    d = _shape_of(state, "encoder.cls_token", source)[-1]
    patch = _shape_of(state, "encoder.patch_embed.proj.weight", source)[-1]
    dd = _shape_of(state, "encoder_to_decoder.weight", source)[0]
    mlp = _shape_of(state, "encoder.blocks.0.mlp.fc1.weight", source)[0] / d
    return ModelConfig(
        modalities=channels(("rgb", "dsm")),  # their two inputs: colour and grey DSM
        img_size=img_size,
        patch_size=patch,
        embed_dim=d,
        depth=max(_block_count(state, "encoder."), _block_count(state, "ema_teacher.")),
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


# ---------------------------------------------------------------------------------------
# our tensor ← their tensors

_RENAMES = (  # our prefix → their prefix, for tensors taken as they are
    ("fusion_blocks.", "fusion_decoder.blocks."), ("fusion_norm.", "fusion_decoder.norm."),
    ("decoder_blocks.", "decoder.blocks."), ("decoder_norm.", "decoder.norm."), ("head.", "decoder.head."),
    ("modality_head.", "cls_head."),
)  # fmt: skip
_ENCODERS = (("encoder.", "encoder."), ("teacher.", "ema_teacher."))
_SINGLE = {"encoder_to_decoder.weight": "encoder_to_decoder.weight", "fusion_token": "fusion_token",
           "mask_tokens.rgb": "mask1_token", "mask_tokens.dsm": "mask2_token"}  # fmt: skip


def authors_sources(our_key: str) -> tuple[str, ...] | None:
    """The authors' keys our tensor ``our_key`` is built from.

    ``()`` for a tensor with no counterpart in their layout; ``None`` for our
    normalisation buffers, which are set from the config, not from their file.
    """
    if ".patch_embed.mean_" in our_key or ".patch_embed.std_" in our_key:
        return None
    if our_key in _SINGLE:
        return (_SINGLE[our_key],)
    for ours, theirs in _ENCODERS:
        if our_key.startswith(ours):
            rest = our_key[len(ours) :]
            if rest == "cls_token":
                return (theirs + "cls_token", theirs + "cls_embed.weight")
            if rest in ("patch_embed.proj.rgb.proj.weight", "patch_embed.proj.rgb.proj.bias", "patch_embed.proj.dsm.proj.weight"):
                return (theirs + "patch_embed.proj." + rest.rsplit(".", 1)[1],)
            if rest == "patch_embed.proj.dsm.proj.bias":  # the grey fold uses both
                return (theirs + "patch_embed.proj.weight", theirs + "patch_embed.proj.bias")
            if rest.startswith("blocks.") or rest.startswith("norm."):
                return (theirs + rest,)
            return ()
    for ours, theirs in _RENAMES:
        if our_key.startswith(ours):
            return (theirs + our_key[len(ours) :],)
    return ()


def _grey_embedding(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """3-channel ImageNet-normalised embedding → 1-channel embedding of the 0–255 grey value."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=weight.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, 3, 1, 1)
    w1 = (weight / (255.0 * std)).sum(dim=1, keepdim=True)
    b1 = bias - (weight * mean / std).sum(dim=(1, 2, 3))
    return w1, b1


def _build(our_key: str, sources: tuple[str, ...], state: Mapping[str, Tensor]) -> Tensor:
    """Our tensor from its (present) sources."""
    t = [state[k] for k in sources]
    if our_key.endswith("cls_token"):
        return t[0] + t[1].view(1, 1, -1)  # cls_token + cls_embed
    if our_key.endswith("patch_embed.proj.dsm.proj.weight"):
        return _grey_embedding(t[0], torch.zeros(t[0].shape[0], dtype=t[0].dtype))[0]
    if our_key.endswith("patch_embed.proj.dsm.proj.bias"):
        return _grey_embedding(t[0], t[1])[1]
    if our_key == "fusion_token":
        return t[0].view(1, -1)
    return t[0]


def convert_authors_state_dict(
    state: Mapping[str, Tensor], our_keys: list[str] | tuple[str, ...], source: str = "<checkpoint dict>"
) -> tuple[dict[str, Tensor], dict[str, tuple[str, ...]]]:
    """Build each of ``our_keys`` (our :class:`MSSDF` key space) from an authors' state dict.

    Returns:
        ``(converted, missing)``: the tensors that could be built, and for each of ours
        that could not, the authors' keys (their spelling) absent from ``state``. Our
        normalisation buffers are in neither (they come from the config).
    Raises:
        CheckpointError: one of ``our_keys`` has no counterpart in the authors' layout.
    """
    converted, missing = {}, {}
    for key in our_keys:
        sources = authors_sources(key)
        if sources is None:
            continue
        if not sources:
            raise CheckpointError(f"{source}: our tensor {key} has no counterpart in the authors' layout")
        absent = tuple(k for k in sources if k not in state)
        if absent:
            missing[key] = absent
        else:
            converted[key] = _build(key, sources, state)
    return converted, missing


# ---------------------------------------------------------------------------------------
# the loader


def load_authors_checkpoint_with_report(
    source: str | Path | Mapping[str, object], img_size: int = 320, strict: bool = True, **head_counts: int
) -> tuple[MSSDF, AuthorsLoadReport]:
    """Build our :class:`MSSDF` from a checkpoint in the authors' layout, and say what was filled.

    Args:
        source: path to a ``vit_base_500.pth``-like file, or its (loaded) dict.
        img_size: input size the model will be used at (positions are generated for it).
        strict: raise :class:`CheckpointError` if a tensor is missing from the file or one
            of the file's is unused. With ``strict=False`` the model is returned with the
            unfilled tensors at their initial values, listed in the report.
        head_counts: ``num_heads`` / ``decoder_heads`` if not width/64.

    Raises:
        CheckpointError: (always, naming the file) not readable safely, not the authors'
            layout, a tensor needed to infer the model's shape is missing, a shape
            mismatch; (strict only) missing tensors, named as the file spells them, or
            unused ones.
    """
    name = _source_name(source)
    state = read_authors_state_dict(source)
    file_keys = list(state)
    cfg = authors_config(state, img_size, source=name, **head_counts)
    model = MSSDF(cfg)
    teacher_from_student = not any(k.startswith("ema_teacher.") for k in state)
    if teacher_from_student:  # teacher not saved: start it from the student
        state = {**state, **{"ema_teacher." + k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}}
    ours = model.state_dict()
    converted, missing = convert_authors_state_dict(state, list(ours), name)
    consumed = {k for key in ours for k in (authors_sources(key) or ())}
    unused = [k for k in file_keys if k not in consumed]
    missing_theirs = sorted({k for ks in missing.values() for k in ks})
    if teacher_from_student:  # a student tensor absent is absent once, under its file name
        missing_theirs = [k for k in missing_theirs if not k.startswith("ema_teacher.")]
    if strict and (missing_theirs or unused):
        parts = []
        if missing_theirs:
            parts.append(f"missing tensors (as the file names them): {_listing(missing_theirs)}")
        if unused:
            parts.append(f"theirs unused (no place in our model): {_listing(unused)}")
        raise CheckpointError(f"{name}: authors' checkpoint does not fit: " + "; ".join(parts))
    mismatched = [k for k in converted if converted[k].shape != ours[k].shape]
    if mismatched:
        shapes = [f"{k} (from {authors_sources(k)[0]}) {tuple(converted[k].shape)} vs ours {tuple(ours[k].shape)}"
                  for k in mismatched]
        raise CheckpointError(f"{name}: shape mismatch: {_listing(shapes)}")
    model.load_state_dict({**ours, **converted}, strict=True)
    report = AuthorsLoadReport(
        source=name,
        kept_init=tuple(sorted(missing)),
        missing=tuple(missing_theirs),
        unused=tuple(unused),
        teacher_from_student=teacher_from_student,
    )
    return model, report


def load_authors_checkpoint(
    source: str | Path | Mapping[str, object], img_size: int = 320, strict: bool = True, **head_counts: int
) -> MSSDF:
    """Our :class:`MSSDF` from a checkpoint in the authors' layout.

    As :func:`load_authors_checkpoint_with_report`, returning the model only. With
    ``strict=False`` an :class:`AuthorsCheckpointWarning` lists our tensors that kept their
    initial values (and the file's tensors left unused); use
    :func:`load_authors_checkpoint_with_report` to get them as data.
    """
    model, report = load_authors_checkpoint_with_report(source, img_size, strict, **head_counts)
    if not report.complete:
        parts = []
        if report.kept_init:
            parts.append(
                f"kept their initial values (ours): {_listing(report.kept_init)} "
                f"(missing from the file: {_listing(report.missing)})"
            )
        if report.unused:
            parts.append(f"unused tensors of the file: {_listing(report.unused)}")
        warnings.warn(f"{report.source}: non-strict load; " + "; ".join(parts), AuthorsCheckpointWarning, stacklevel=2)
    return model
