"""A timm ``VisionTransformer`` state dict → our :class:`~mssdf.model.Encoder` (one modality).

The inverse of :func:`mssdf.weights.timm_export.to_timm_state_dict`, for our exports and
for any timm ViT with the same block layout (pre-norm blocks, fused ``qkv``, GELU MLP,
a cls token, a final ``norm``):

* ``patch_embed.proj`` → the modality's adapter, with **identity** normalisation buffers.
  An export of ours has the statistics folded into the patch embedding, so the imported
  encoder gives the same features for the same raw input. Whether the state expects raw
  values or standardised ones cannot be read off the tensors: ``raw_input=True`` records
  identity statistics for the modality in ``cfg.normalization`` (the encoder "holds
  statistics", they are folded in), ``raw_input=False`` records none (inputs must come
  standardised, as for a mixture-trained encoder). :func:`load_timm_file` decides it from a
  ``config.json`` beside the file (what :func:`~mssdf.weights.timm_export.export_timm`
  writes next to :func:`~mssdf.weights.native.save_pretrained`'s folder), else ``False``.
* ``attn.qkv.bias`` → our ``q_bias`` / ``v_bias``. The k bias is **dropped, exactly**: it
  adds ``q·b_k`` to every logit of a query, the same for all keys, so the softmax (and the
  block's output) does not depend on it. No warning is needed; a ViT without qkv bias gets
  zero q/v biases. (``ls1.gamma`` / ``ls2.gamma`` layer scales are folded into
  ``attn.proj`` / ``mlp.fc2``, also exact.)
* ``pos_embed``: our encoder has *fixed* sine-cosine positions (any grid). The state's
  patch positions must equal one of our tables (2-D or the authors' 1-D, within
  :data:`POS_ATOL`); that table kind is then used. A learned table (most timm ImageNet
  checkpoints) raises :class:`CheckpointError`: this encoder architecture cannot hold it,
  and dropping it silently would change the features. A non-zero cls slot of the table is
  folded into the cls token (timm adds it to the cls token before the blocks; exact).
* The architecture (width, depth, patch size, channels, MLP width, grid) is read off the
  tensors' shapes. The head count is *not* stored in any tensor: it comes from ``kwargs``
  (the json :func:`~mssdf.weights.timm_export.export_timm` writes, read by
  :func:`load_timm_file`) or defaults to ``embed_dim // 64`` (timm's ViT convention). A
  wrong head count gives different features without any error, so pass it when in doubt.
* ``head.*`` and ``fc_norm.*`` (classifier and pooling norm, not part of the features) are
  ignored; any other key (register tokens, ``norm_pre``, q/k norms, ...) is an error, as
  is a missing one, naming the key and the source.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from mssdf.model import Encoder, ModelConfig, NormStats
from mssdf.pos_embed import position_table
from mssdf.weights.authors import SAFE_CHECKPOINT_GLOBALS, CheckpointError, _safe_load

#: Largest absolute difference between a state's position table and ours that still
#: counts as "the same fixed table" (float32 tables computed another way differ ~1e-6).
POS_ATOL = 1e-4

_BLOCK_REQUIRED = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip
_BLOCK_OPTIONAL = ("attn.qkv.bias", "ls1.gamma", "ls2.gamma")
_TOP_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "norm.bias")
_TOP_OPTIONAL = ("patch_embed.proj.bias",)
_IGNORED_PREFIXES = ("head.", "fc_norm.")  # classifier / pooling norm: not part of the features
_SHOWN = 10


def is_timm_vit_state(keys) -> bool:
    """Whether a state dict's keys look like a timm ``VisionTransformer``'s."""
    keys = set(keys)
    return "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _grid_from(tokens: int, patch: int, kwargs: Mapping[str, Any], source: str) -> tuple[tuple[int, int], bool]:
    """``((grid_h, grid_w), has_cls_slot)`` for a ``pos_embed`` of ``tokens`` rows."""
    size = kwargs.get("img_size")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        grid = (h // patch, w // patch)
        n = grid[0] * grid[1]
        if tokens == n + 1:
            return grid, True
        if tokens == n:
            return grid, False
        raise CheckpointError(f"{source}: pos_embed has {tokens} rows; img_size {size} with patch {patch} needs {n} (+1 cls)")
    for has_cls in (True, False):
        n = tokens - int(has_cls)
        side = math.isqrt(max(n, 0))
        if n > 0 and side * side == n:
            return (side, side), has_cls
    raise CheckpointError(f"{source}: pos_embed has {tokens} rows, not a square grid (+1 cls); pass kwargs img_size=(h, w)")


def _position_kind(table: Tensor, grid: tuple[int, int], dim: int, source: str) -> str:
    """The kind of our fixed table ``table`` equals, or a :class:`CheckpointError`."""
    worst = {}
    for kind in ("2d", "1d"):
        if kind == "2d" and dim % 4:
            continue
        ours = position_table(kind, grid[0], grid[1], dim)
        worst[kind] = float((table.float() - ours).abs().max())
        if worst[kind] <= POS_ATOL:
            return kind
    diffs = ", ".join(f"{k} table: max |difference| {v:.3g}" for k, v in worst.items())
    raise CheckpointError(
        f"{source}: pos_embed is not a fixed sine-cosine table of this encoder ({diffs}; tolerance {POS_ATOL}). "
        "This encoder architecture has fixed positions (any grid), it cannot hold a learned position table; "
        "use a ViT pre-trained with our fixed 2-D table (first half of the channels: row, second: column) "
        "or the authors' 1-D sine-cosine table"
    )


def from_timm_state_dict(
    state: Mapping[str, Tensor],
    modality: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    raw_input: bool = False,
    source: str = "<timm state dict>",
) -> Encoder:
    """Our :class:`Encoder` with one adapter, ``modality``, from a timm ViT state dict.

    Args:
        state: a ``VisionTransformer`` state dict (e.g. from ``to_timm_state_dict``).
        modality: the adapter's name in the returned encoder.
        kwargs: the ViT's constructor arguments, if known (``num_heads``, ``img_size``;
            ``embed_dim``, ``depth``, ``patch_size``, ``in_chans``, ``mlp_ratio``,
            ``class_token``, ``reg_tokens``, ``no_embed_class`` are checked against the tensors).
        raw_input: the state's patch embedding takes raw values (normalisation folded in):
            record identity statistics so that ``modality in encoder.cfg.normalization``.
        source: how errors name the state (a file path).

    Raises:
        CheckpointError: naming ``source`` and the key: a missing or unexpected tensor, a
            shape that disagrees with the architecture read off the others, a ``kwargs``
            value that disagrees with the tensors, a learned position table.
    """
    kwargs = dict(kwargs or {})
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    missing = [k for k in _TOP_REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a timm ViT state dict of this layout: missing tensor(s) {_listing(missing)}")
    w_patch = state["patch_embed.proj.weight"]
    if w_patch.dim() != 4 or w_patch.shape[-1] != w_patch.shape[-2]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(w_patch.shape)}, expected (D, C, p, p)")
    dim, chans, patch = w_patch.shape[0], w_patch.shape[1], w_patch.shape[-1]
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    depth = blocks[-1] + 1 if blocks else 0
    if depth == 0:
        raise CheckpointError(f"{source}: no blocks.<i>.* tensors")
    expected_top = {"embed_dim": dim, "depth": depth, "patch_size": patch, "in_chans": chans}
    for name, value in expected_top.items():
        if name in kwargs and kwargs[name] != value:
            read = f"{depth} blocks (blocks.0 .. blocks.{depth - 1})" if name == "depth" else f"{value}"
            raise CheckpointError(f"{source}: kwargs {name}={kwargs[name]} but the tensors hold {read}")
    if kwargs.get("class_token", True) is False or kwargs.get("reg_tokens", 0):
        raise CheckpointError(f"{source}: kwargs class_token/reg_tokens: this encoder needs exactly one cls token and no register tokens")
    fc1_key = next((f"blocks.{i}.mlp.fc1.weight" for i in blocks if f"blocks.{i}.mlp.fc1.weight" in state), None)
    if fc1_key is None:
        raise CheckpointError(f"{source}: missing tensor(s) blocks.0.mlp.fc1.weight (no block holds an MLP)")
    fc1 = state[fc1_key]
    mlp_ratio = fc1.shape[0] / dim
    if "mlp_ratio" in kwargs and abs(float(kwargs["mlp_ratio"]) - mlp_ratio) > 1e-6:
        raise CheckpointError(f"{source}: kwargs mlp_ratio={kwargs['mlp_ratio']} but {fc1_key} is {tuple(fc1.shape)}")
    heads = int(kwargs.get("num_heads") or max(1, dim // 64))
    if dim % heads:
        raise CheckpointError(f"{source}: embed_dim {dim} is not divisible by num_heads {heads}")

    pos = state["pos_embed"]
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != dim:
        raise CheckpointError(f"{source}: pos_embed has shape {tuple(pos.shape)}, expected (1, N(+1), {dim})")
    grid, has_cls_slot = _grid_from(pos.shape[1], patch, kwargs, source)
    if "no_embed_class" in kwargs and bool(kwargs["no_embed_class"]) == has_cls_slot:
        raise CheckpointError(f"{source}: kwargs no_embed_class={kwargs['no_embed_class']} but pos_embed has {pos.shape[1]} rows for a {grid} grid")
    kind = _position_kind(pos[0, int(has_cls_slot):], grid, dim, source)

    stats = {modality: NormStats((0.0,) * chans, (1.0,) * chans)} if raw_input else {}
    cfg = ModelConfig(
        modalities={modality: chans}, img_size=grid[0] * patch,  # positions are generated for any grid
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, pos_embed=kind,
        normalization=stats,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the initial values are all overwritten: leave the RNG alone
        encoder = Encoder(cfg)
    ours = encoder.state_dict()

    used: set[str] = set()
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key → the state's key it comes from (for messages)

    def take(key: str) -> Tensor:
        used.add(key)
        return state[key].detach().float()

    cls = take("cls_token")
    if has_cls_slot:
        cls = cls + pos[:, :1].float()  # timm adds the cls slot's position to the cls token
    converted["cls_token"], origin["cls_token"] = cls, "cls_token"
    used.add("pos_embed")
    pe = f"patch_embed.proj.{modality}.proj."
    converted[pe + "weight"], origin[pe + "weight"] = take("patch_embed.proj.weight"), "patch_embed.proj.weight"
    bias = take("patch_embed.proj.bias") if "patch_embed.proj.bias" in state else torch.zeros(dim)
    converted[pe + "bias"], origin[pe + "bias"] = bias, "patch_embed.proj.bias"
    for name in ("norm.weight", "norm.bias"):
        converted[name], origin[name] = take(name), name

    missing = []
    for i in range(depth):
        p = f"blocks.{i}."
        absent = [p + k for k in _BLOCK_REQUIRED if p + k not in state]
        if absent:
            missing += absent
            continue
        for k in _BLOCK_REQUIRED:
            if k != "attn.qkv.weight" and not k.startswith(("attn.proj.", "mlp.fc2.")):
                converted[p + k], origin[p + k] = take(p + k), p + k
        converted[p + "attn.qkv.weight"], origin[p + "attn.qkv.weight"] = take(p + "attn.qkv.weight"), p + "attn.qkv.weight"
        if p + "attn.qkv.bias" in state:
            qkv_bias = take(p + "attn.qkv.bias")
            if qkv_bias.shape != (3 * dim,):
                raise CheckpointError(f"{source}: {p}attn.qkv.bias has shape {tuple(qkv_bias.shape)}, expected ({3 * dim},)")
            q_bias, v_bias = qkv_bias[:dim], qkv_bias[2 * dim :]  # the k bias cannot change the output (see module doc)
        else:
            q_bias = v_bias = torch.zeros(dim)
        for ours_key, value in ((p + "attn.q_bias", q_bias), (p + "attn.v_bias", v_bias)):
            converted[ours_key], origin[ours_key] = value, p + "attn.qkv.bias"
        for gamma, layer in (("ls1.gamma", "attn.proj."), ("ls2.gamma", "mlp.fc2.")):
            w, b = take(p + layer + "weight"), take(p + layer + "bias")
            if p + gamma in state:  # γ·(Wx + b) = (γW)x + γb
                g = take(p + gamma)
                if g.shape != b.shape:
                    raise CheckpointError(f"{source}: {p}{gamma} has shape {tuple(g.shape)}, expected {tuple(b.shape)}")
                w, b = w * g[:, None], b * g
            converted[p + layer + "weight"], origin[p + layer + "weight"] = w, p + layer + "weight"
            converted[p + layer + "bias"], origin[p + layer + "bias"] = b, p + layer + "bias"
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {_listing(missing)} (the state holds blocks up to blocks.{depth - 1})")
    unexpected = sorted(k for k in state if k not in used)
    if unexpected:
        raise CheckpointError(
            f"{source}: tensor(s) with no place in this encoder: {_listing(unexpected)} "
            "(a ViT of another block layout: register tokens, layer norms before the blocks, q/k norms, ...)"
        )
    bad = [f"{origin[k]} {tuple(v.shape)} (expected {tuple(ours[k].shape)})" for k, v in converted.items() if v.shape != ours[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for a {depth}-block ViT of width {dim}: {_listing(bad)}")
    for k in ours:  # normalisation buffers: identity (the state's patch embedding holds any folding)
        if k not in converted:
            converted[k] = ours[k]
    encoder.load_state_dict(converted, strict=True)
    return encoder


# ---------------------------------------------------------------------------------------
# files


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin`` file (read with
    ``torch.load(weights_only=True)``, memory-mapped; ``{"model": ...}`` / ``{"state_dict": ...}``
    wrappers are unwrapped). Errors are :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error type
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be memory-mapped; other errors get the safe loader's message
        obj = _safe_load(path)
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def state_keys(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint file, without reading a ``.safetensors`` file's
    tensors (a ``.pth`` is memory-mapped). Errors as :func:`read_state_dict`."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # safetensors raises its own error type
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    return list(read_state_dict(path))


def sibling_kwargs(path: str | Path) -> dict[str, Any] | None:
    """The constructor arguments in ``<file stem>.json`` beside ``path`` (what export_timm writes), if any."""
    js = Path(path).with_suffix(".json")
    if not js.is_file():
        return None
    try:
        data = json.loads(js.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{js}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{js}: expected a JSON object of VisionTransformer arguments")
    return data


def exported_raw_input(path: str | Path, modality: str) -> bool | None:
    """For a file beside a ``config.json`` of ours: whether its ``modality`` was folded with
    statistics (the export takes raw values). ``None`` without such a config."""
    from mssdf.weights.native import CONFIG, load_config

    folder = Path(path).parent
    if not (folder / CONFIG).is_file():
        return None
    try:
        return modality in load_config(folder).normalization
    except Exception as err:  # noqa: BLE001 - reported with the file
        raise CheckpointError(f"{folder / CONFIG}: unreadable config beside {Path(path).name} ({err})") from err


def load_timm_file(
    path: str | Path,
    modality: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    raw_input: bool | None = None,
) -> Encoder:
    """:func:`from_timm_state_dict` of a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file.

    ``kwargs`` default to ``<stem>.json`` beside the file (export_timm's), updated by those
    given. ``raw_input`` defaults to what a ``config.json`` beside the file says (our
    export of a model holding statistics for ``modality`` takes raw values), else False.
    Errors name the file.
    """
    path = Path(path)
    state = read_state_dict(path)
    if not is_timm_vit_state(state):
        raise CheckpointError(f"{path}: not a timm VisionTransformer state dict (no patch_embed.proj.weight / blocks.0.attn.qkv.weight)")
    merged = {**(sibling_kwargs(path) or {}), **(kwargs or {})}
    if raw_input is None:
        raw_input = bool(exported_raw_input(path, exported_modality(path) or modality))
    return from_timm_state_dict(state, modality, kwargs=merged, raw_input=raw_input, source=str(path))


def exported_modality(path: str | Path) -> str | None:
    """``rgb`` for ``timm_rgb.safetensors`` (export_timm's naming), else None."""
    m = re.fullmatch(r"timm_(\w+)", Path(path).stem)
    return m.group(1) if m else None


__all__ = [
    "POS_ATOL", "from_timm_state_dict", "is_timm_vit_state", "load_timm_file", "read_state_dict", "sibling_kwargs",
    "exported_raw_input", "exported_modality", "state_keys",
]
