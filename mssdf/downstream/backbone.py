"""The downstream backbone: our encoder (any initialisation) + a simple feature pyramid.

``build_backbone(BackboneConfig(init=...))`` gives a :class:`ViTBackbone` whatever the
weights came from; every initialisation goes through the same module and forward, so the
same weights give the same outputs (tested):

    random              ``MSSDF(model_config(**arch, modalities=...)).encoder`` — the
                        pre-training initialisation (the caller seeds torch first)
    <variant name>      ``<models_dir>/<name>/final`` written by ``dvc repro pretrain@<name>``
    <folder>/           ours: ``config.json`` + ``model.safetensors`` (the student encoder)
    <file>.pth / .pt    the authors' checkpoint layout, or a timm ViT state dict (one modality)
    <file>.safetensors  a timm ViT state dict (ours: ``timm_<m>.safetensors`` of export_timm)

A name is a string without ``/`` and without a suffix; anything else is a path (write
``./final`` for a folder called ``final``). Relative paths (and ``models_dir``) are
repository-relative (:func:`mssdf.paths.resolve`). Building from a file leaves the global
torch RNG as it was (random init consumes it, as it must). The student encoder is used
(as the pre-training probes do). File inits read the head counts, which no checkpoint
stores, from ``arch["num_heads"]`` (and ``arch["decoder_heads"]`` for the authors'
layout) when given, else from the json beside a timm file, else ``width // 64``.

Forward (``images: {m: (B, C_m, H, W)}``, H and W multiples of the patch size, equal for
every modality): each requested modality is embedded by its own adapter (+ its
normalisation, + the fixed positions for that grid); the shared blocks run once on all
modalities stacked along the batch; the patch tokens (cls dropped) of the blocks
``out_indices`` are taken, and **fused by the mean over modalities** at each level.
Pre-training aligns the modalities in one token space (co-located tokens are pulled
together by the cross-modal terms), so averaging keeps that space, works for any subset
of modalities with no new weights, and is the identity for one modality (a
single-modality backbone is exactly the encoder). The encoder's final ``norm`` is applied
where ``Encoder.forward`` applies it: to the output of the **last** block (the level whose
block is ``depth - 1``, the last one by default), never to intermediate blocks, whose
outputs the norm was not trained on (mmseg's MAE/BEiT ``final_norm``); the decoders
normalise every level themselves (a LayerNorm per level).

The four maps come from a **simple feature pyramid** (ViTDet; the mmseg BEiT/MAE UPerNet
neck) on the ``(B, D, H/p, W/p)`` token maps: level 0 ×4 (2×2 transposed conv, LayerNorm,
GELU, 2×2 transposed conv), level 1 ×2 (2×2 transposed conv), level 2 as is, level 3 ×½
(2×2 max-pool, ceil mode: an odd grid keeps its last row). All levels keep the encoder
width ``D``. Strides (pixels per map cell): ``p/4, p/2, p, 2p`` (4/8/16/32 for patch 16,
2/4/8/16 for patch 8); the patch size must be a multiple of 4. LayerNorm rather than the
recipe's (Sync)BatchNorm: independent of the batch size and of the process count.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import mssdf  # noqa: F401  (timm import shim)
from timm.layers import DropPath

from mssdf.config import ConfigError
from mssdf.modalities import CHANNELS
from mssdf.model import MSSDF, Encoder, model_config
from mssdf.paths import resolve
from mssdf.weights.authors import CheckpointError, load_authors_checkpoint
from mssdf.weights.native import CONFIG, WEIGHTS, load_pretrained
from mssdf.weights.timm_import import exported_modality, is_timm_vit_state, load_timm_file, state_keys

_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def _default_arch() -> dict[str, Any]:
    return {"preset": "tiny", "img_size": 64, "patch_size": 8}


@dataclass(frozen=True)
class BackboneConfig:
    """Where the encoder comes from and which of its blocks feed the pyramid (module doc)."""

    init: str = "random"  # random | a pre-training variant name (<models_dir>/<name>/final) | a path
    modalities: tuple[str, ...] = ("rgb",)
    models_dir: str = "models/pretrain"
    arch: dict[str, Any] = field(default_factory=_default_arch)  # random init: model_config kwargs; files: head counts
    out_indices: tuple[int, ...] = ()  # () = 4 evenly spaced blocks ending with the last (default_out_indices)
    drop_path: float = 0.0  # stochastic depth, rising linearly to this over the blocks (any init)

    def __post_init__(self) -> None:
        if not self.init:
            raise ConfigError("init: empty; use 'random', a pre-training variant name or a path")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities: must name at least one modality, each once, got {list(self.modalities)}")
        if self.out_indices and (len(self.out_indices) != 4 or min(self.out_indices) < 0
                                 or list(self.out_indices) != sorted(self.out_indices)):
            raise ConfigError(f"out_indices: 4 non-decreasing block indices or [] (default), got {list(self.out_indices)}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"drop_path: must be in [0, 1), got {self.drop_path}")
        clash = sorted({"modalities", "drop_path", "normalization"} & set(self.arch))
        if clash:
            raise ConfigError(f"arch: {clash} are not architecture keys here (use backbone.modalities / backbone.drop_path; "
                              "inputs are standardised by source)")


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending with the last: ``ceil(depth·k/4) − 1``, k = 1..4.

    (2, 5, 8, 11) for depth 12, (5, 11, 17, 23) for 24 — equal to ``depth//4·k − 1`` when
    4 divides the depth — and (1, 2, 4, 5) for the tiny preset's 6, where ``depth//4·k − 1``
    would give (0, 1, 2, 3) and leave the last two blocks unused.
    """
    return tuple(math.ceil(depth * k / 4) - 1 for k in range(1, 5))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """``(B, D, h, w)`` maps of four blocks → maps at ×4, ×2, ×1, ×½ with ``D/4, D/2, D, D``
    channels (ViTDet's simple feature pyramid: the upsampled levels are narrower, which keeps
    the high-resolution maps — and the decoder convolutions on them — cheap)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2, eps=1e-6), nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.down2 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class ViTBackbone(nn.Module):
    """Our :class:`Encoder` → four feature maps (see the module doc).

    Attributes:
        encoder: the encoder (adapters of the requested modalities only).
        modalities: the modalities ``forward`` reads, in order.
        out_indices: the blocks feeding pyramid levels 0..3.
        out_channels: channels of the four maps (``D/4, D/2, D, D`` for encoder width ``D``).
        strides: pixels per cell of the four maps: ``p/4, p/2, p, 2p``.
        init_description: where the weights came from (:func:`describe_init`).
    """

    def __init__(self, encoder: Encoder, modalities: Sequence[str], out_indices: Sequence[int] = (), init_description: str = "",
                 neck: bool = True):
        super().__init__()
        cfg = encoder.cfg
        self.modalities = tuple(modalities)
        absent = [m for m in self.modalities if m not in cfg.modalities]
        if absent:
            raise ConfigError(f"modalities: the encoder has adapters {list(cfg.modalities)}; requested {list(self.modalities)}")
        self.out_indices = tuple(out_indices) or default_out_indices(cfg.depth)
        if len(self.out_indices) != 4 or not all(0 <= i < cfg.depth for i in self.out_indices):
            raise ConfigError(f"out_indices: 4 block indices in [0, {cfg.depth - 1}] for a {cfg.depth}-block encoder, "
                              f"got {list(self.out_indices)}")
        if cfg.patch_size % 4:
            raise ConfigError(f"the simple feature pyramid needs a patch size divisible by 4, got {cfg.patch_size}")
        self.encoder = _keep_adapters(encoder, self.modalities)
        self.neck = SimpleFeaturePyramid(cfg.embed_dim) if neck else None  # classification: no pyramid, no unused weights
        self.out_channels = [cfg.embed_dim // 4, cfg.embed_dim // 2, cfg.embed_dim, cfg.embed_dim]
        p = cfg.patch_size
        self.strides = [p // 4, p // 2, p, 2 * p]
        self.init_description = init_description

    @property
    def depth(self) -> int:
        return self.encoder.cfg.depth

    @property
    def num_layers(self) -> int:
        """The highest layer id, ``depth + 1`` (ids run over ``0 .. depth + 1``, :meth:`layer_id`):
        the ``num_layers`` of :func:`mssdf.engine.optim.layer_decay_groups`."""
        return self.depth + 1

    def wants_normalized(self, modality: str) -> bool:
        """True when the encoder holds no statistics for ``modality``: its inputs must come
        standardised by their source's statistics (``SampleTiles(normalize=True)``); False:
        raw values (the encoder normalises them itself)."""
        if modality not in self.modalities:
            raise KeyError(f"modality {modality!r} is not one of the backbone's {list(self.modalities)}")
        return modality not in self.encoder.cfg.normalization

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay (lr · decay^(depth + 1 − id)).

        ``name`` is a parameter name of the backbone (``encoder.blocks.3.mlp.fc1.weight``) or
        of a model holding it as ``backbone`` (``backbone.encoder...``). 0: patch
        embeddings (adapters), cls token (positions are fixed, not parameters); ``i + 1``:
        block ``i``; ``depth + 1``: everything after the blocks — the encoder's final norm,
        the neck, and any head (new weights at the full learning rate).
        """
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith("encoder."):
            rest = name[len("encoder.") :]
            if rest.startswith(("patch_embed.", "cls_token", "pos")):
                return 0
            if rest.startswith("blocks."):
                return int(rest.split(".")[1]) + 1
        return self.depth + 1

    @property
    def embed_dim(self) -> int:
        return self.encoder.cfg.embed_dim

    def _embed(self, images: Mapping[str, Tensor]) -> tuple[Tensor, int, tuple[int, int]]:
        """``(M·B, 1 + N, D)`` tokens of every modality stacked along the batch (cls first), B, grid."""
        missing = [m for m in self.modalities if m not in images]
        if missing:
            raise KeyError(f"images lack the backbone's modalities {missing} (has {sorted(images)})")
        sizes = {tuple(images[m].shape[-2:]) for m in self.modalities}
        if len(sizes) > 1:
            raise ValueError(f"all modalities must have the same size, got {[tuple(images[m].shape) for m in self.modalities]}")
        enc = self.encoder
        tokens = enc.embed({m: images[m] for m in self.modalities})  # checks channels and patch multiples
        first = images[self.modalities[0]]
        b, grid = first.shape[0], enc.grid(first)
        x = torch.cat([tokens[m] for m in self.modalities], dim=0)  # (M·B, N, D)
        return torch.cat([enc.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1), b, grid

    def features(self, images: Mapping[str, Tensor]) -> list[Tensor]:
        """The four fused token maps ``(B, D, H/p, W/p)`` of blocks ``out_indices`` (before the neck)."""
        enc = self.encoder
        x, b, (gh, gw) = self._embed(images)
        wanted, taken = set(self.out_indices), {}
        for i, blk in enumerate(enc.blocks[: max(self.out_indices) + 1]):
            x = blk(x)
            if i in wanted:
                taken[i] = x[:, 1:]
        out = []
        for i in self.out_indices:
            t = enc.norm(taken[i]) if i == self.depth - 1 else taken[i]
            t = t.reshape(len(self.modalities), b, gh * gw, -1).mean(dim=0)  # fusion: mean over modalities
            out.append(t.transpose(1, 2).reshape(b, -1, gh, gw))
        return out

    def pooled(self, images: Mapping[str, Tensor], pool: str = "cls") -> Tensor:
        """``{m: (B, C_m, H, W)}`` → ``(B, D)``: every block, the final norm, then the cls token
        (``pool="cls"``) or the mean of the patch tokens (``"mean"``), fused by the mean over
        modalities — the image embedding of scene classification and its probes."""
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        enc = self.encoder
        x, b, _ = self._embed(images)
        for blk in enc.blocks:
            x = blk(x)
        x = enc.norm(x)
        z = x[:, 0] if pool == "cls" else x[:, 1:].mean(dim=1)  # (M·B, D)
        return z.reshape(len(self.modalities), b, -1).mean(dim=0)

    def forward(self, images: Mapping[str, Tensor]) -> list[Tensor]:
        """``{m: (B, C_m, H, W)}`` → four maps ``(B, D, H/s_i, W/s_i)``, ``s = strides``
        (level 3: ``ceil``). Keys other than the backbone's modalities are ignored."""
        if self.neck is None:
            raise RuntimeError("this backbone was built without its feature pyramid (neck=False): use pooled()")
        return self.neck(self.features(images))


def _keep_adapters(encoder: Encoder, modalities: Sequence[str]) -> Encoder:
    """Drop the adapters (and statistics) of modalities not requested: no unused parameters."""
    cfg, pe = encoder.cfg, encoder.patch_embed
    for m in list(cfg.modalities):
        if m not in modalities:
            del pe.proj[m]
            del pe._buffers[f"mean_{m}"], pe._buffers[f"std_{m}"]
            del pe.channels[m]
    encoder.cfg = dataclasses.replace(
        cfg,
        modalities={m: c for m, c in cfg.modalities.items() if m in modalities},
        normalization={m: s for m, s in cfg.normalization.items() if m in modalities},
    )
    return encoder


def _set_drop_path(encoder: Encoder, rate: float) -> Encoder:
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks (as pre-training builds it)."""
    rates = torch.linspace(0, rate, len(encoder.blocks)).tolist()
    for blk, r in zip(encoder.blocks, rates):
        blk.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        blk.drop_path2 = DropPath(r) if r > 0 else nn.Identity()
    encoder.cfg = dataclasses.replace(encoder.cfg, drop_path=rate)
    return encoder


# ---------------------------------------------------------------------------------------
# initialisations


def _is_name(init: str) -> bool:
    return "/" not in init and "\\" not in init and not Path(init).suffix


def _resolve(cfg: BackboneConfig, root: str | Path | None) -> tuple[str, Path | None]:
    """``(kind, path)``: kind in random, variant, folder, file."""
    if cfg.init == "random":
        return "random", None
    if _is_name(cfg.init):
        folder = resolve(cfg.models_dir, root) / cfg.init / "final"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"backbone.init {cfg.init!r}: no pre-trained weights at {folder} (written by the pipeline stage "
                f"`dvc repro pretrain@{cfg.init}`; or give a path: a folder of ours, a .pth or .safetensors file)"
            )
        return "variant", folder
    path = resolve(cfg.init, root)
    if path.is_dir():
        return "folder", path
    if path.suffix not in _FILE_SUFFIXES:
        raise CheckpointError(f"{path}: backbone.init must be a folder of ours or a {'/'.join(_FILE_SUFFIXES)} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (backbone.init {cfg.init!r})")
    return "file", path


def _file_kind(path: Path) -> str:
    """``authors`` or ``timm`` for a checkpoint file (keys read memory-mapped)."""
    keys = state_keys(path)
    if "encoder.cls_token" in keys:
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: an authors'-layout checkpoint is read from .pth files only")
        return "authors"
    if is_timm_vit_state(keys):
        return "timm"
    raise CheckpointError(
        f"{path}: neither the authors' checkpoint layout (encoder.cls_token) nor a timm VisionTransformer state dict "
        "(patch_embed.proj.weight, blocks.0.attn.qkv.weight)"
    )


def describe_init(cfg: BackboneConfig, root: str | Path | None = None) -> str:
    """One line: where the backbone's weights come from (resolves paths, reads no weights)."""
    kind, path = _resolve(cfg, root)
    mods = "+".join(cfg.modalities)
    if kind == "random":
        arch = ", ".join(f"{k}={v}" for k, v in cfg.arch.items())
        return f"random init ({arch}; seeded by the caller), modalities {mods}"
    if kind == "variant":
        return f"pre-training variant {cfg.init!r}: {path} (student encoder), modalities {mods}"
    if kind == "folder":
        return f"pre-trained folder {path} (student encoder), modalities {mods}"
    what = {"authors": "authors' checkpoint (student encoder)", "timm": "timm ViT state dict"}[_file_kind(path)]
    return f"{what} {path}, modalities {mods}"


def _load_folder(folder: Path) -> Encoder:
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: no {name} (a folder of pre-trained weights holds config.json + model.safetensors)")
    try:
        return load_pretrained(folder).encoder
    except Exception as err:  # noqa: BLE001 - unreadable or other-architecture weights: name the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{folder / WEIGHTS}: does not fit {folder / CONFIG} ({type(err).__name__}: {first})") from err


def _load_file(path: Path, cfg: BackboneConfig) -> Encoder:
    heads = {k: cfg.arch[k] for k in ("num_heads", "decoder_heads") if k in cfg.arch}
    if _file_kind(path) == "authors":
        return load_authors_checkpoint(path, img_size=cfg.arch.get("img_size", 320), **heads).encoder
    if len(cfg.modalities) != 1:
        raise ConfigError(f"modalities: {path} is a timm ViT state dict, it holds one adapter (its patch embedding); "
                          f"requested {list(cfg.modalities)}")
    m = cfg.modalities[0]
    exported = exported_modality(path)
    if exported in CHANNELS and exported != m:
        raise ConfigError(f"modalities: {path} is the export of modality {exported!r}; requested {list(cfg.modalities)}")
    kwargs = {"num_heads": heads["num_heads"]} if "num_heads" in heads else None
    return load_timm_file(path, m, kwargs=kwargs)


def build_backbone(cfg: BackboneConfig, root: str | Path | None = None, neck: bool = True) -> ViTBackbone:
    """A :class:`ViTBackbone` from ``cfg.init`` (module doc); ``root`` anchors relative paths;
    ``neck=False``: without the feature pyramid (classification reads :meth:`ViTBackbone.pooled`).

    Raises (before any training, naming the file or key):
        FileNotFoundError: a variant name whose ``<models_dir>/<name>/final`` is missing.
        ConfigError: the init lacks a requested modality; a timm state dict with several
            modalities; bad ``out_indices``.
        CheckpointError: an unreadable file, or weights of another architecture / layout.
    """
    kind, path = _resolve(cfg, root)
    if kind == "random":
        mc = model_config(**cfg.arch, modalities={m: _channels(m) for m in cfg.modalities}, drop_path=cfg.drop_path)
        encoder = MSSDF(mc).encoder  # the pre-training initialisation; consumes the caller's RNG
    else:
        with torch.random.fork_rng(devices=[]):  # loading leaves the caller's RNG as it was
            encoder = _load_folder(path) if kind in ("variant", "folder") else _load_file(path, cfg)
        absent = [m for m in cfg.modalities if m not in encoder.cfg.modalities]
        if absent:
            raise ConfigError(f"modalities: init {cfg.init!r} has adapters {list(encoder.cfg.modalities)}; "
                              f"requested {list(cfg.modalities)}")
        _set_drop_path(encoder, cfg.drop_path)
    return ViTBackbone(encoder, cfg.modalities, cfg.out_indices, init_description=describe_init(cfg, root), neck=neck)


def _channels(m: str) -> int:
    if m not in CHANNELS:
        raise ConfigError(f"modalities: unknown modality {m!r}; choose from {sorted(CHANNELS)}")
    return CHANNELS[m]


__all__ = ["BackboneConfig", "ViTBackbone", "SimpleFeaturePyramid", "LayerNorm2d", "build_backbone", "describe_init",
           "default_out_indices"]
