"""The MSSDF model: per-modality patch embeddings, one shared ViT encoder, a fusion
decoder, a reconstruction decoder, a modality head and an EMA teacher.

Shapes: ``B`` batch, ``M`` modalities in the batch, ``N`` patches, ``n`` visible patches
per modality (the same for all, see :mod:`mssdf.masking`), ``L`` fusion queries
(positions visible in at least one modality, padded to the batch maximum), ``D``
encoder width, ``Dd`` decoder width, ``Dt`` target width (``D`` for teacher targets,
``p²·C_m`` for pixel targets).

Forward pass (``MSSDF.forward(images, masks)``):

1. every modality is normalised with its own statistics (raw values in, as masking
   needs them) and embedded by its own patch embedding into ``(B, N, D)`` tokens, plus
   the fixed sine-cosine position table;
2. the *shared* encoder (timm BEiT-style blocks: q and v biases, no k bias — a k bias
   cannot receive a gradient) runs on ``[cls ; visible tokens]`` of all modalities at
   once (stacked along the batch);
3. the fusion decoder runs on ``[cls_m ; visible tokens_m (all m) ; fusion queries]``
   (decoder width, decoder positions), where a learned fusion token sits at each
   position visible in any modality; only the query outputs are kept;
4. the reconstruction decoder runs once per modality on ``[fused ; mask_token_m at all N
   positions]`` and a linear head predicts every position: teacher features (MSSDF) or
   per-patch-normalised pixels (MAE baseline);
5. the teacher (an EMA copy of the encoder, no gradients) encodes each *full* image;
   its patch tokens (cls dropped), layer-normalised, are the targets;
6. the modality head predicts, from each modality's encoder cls token, which modality
   it came from;
7. the encoder's visible patch tokens and their positions are returned for the
   cross-modal terms (InfoNCE and HSIC between co-located tokens, see mssdf.losses).

Where the authors differ (method.md §2-3): the cls flag/teacher-token misalignments are
avoided by construction; the cls token is not added to the patch tokens but given to
the fusion decoder as a token; all modalities enter as float channels with their own
patch embedding; the position table is 2-D by default (``pos_embed="1d"`` reproduces
the authors' table).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from typing import Iterable, Literal, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import mssdf  # noqa: F401  (makes `import timm` work on CPU-only torch; see _torchvision_compat)
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.beit import Block

from mssdf.config import ConfigError, from_dict
from mssdf.masking import visible_indices
from mssdf.modalities import channels
from mssdf.pos_embed import position_table

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class NormStats:
    """Per-band statistics of a modality in raw units (model input = (x - mean) / std)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} bands but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the student/teacher (see :data:`PRESETS`)."""

    modalities: dict[str, int] = field(default_factory=lambda: channels(("rgb", "dsm")))  # key → channels
    img_size: int = 320
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    fusion_depth: int = 3
    pos_embed: Literal["1d", "2d"] = "2d"
    target: Literal["teacher", "pixels"] = "teacher"
    norm_pix: bool = True  # pixel targets: normalise each patch by its mean/std (MAE)
    drop_path: float = 0.0
    normalization: dict[str, NormStats] = field(default_factory=dict)  # missing: identity

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("modalities must name at least one modality")
        for key, ch in self.modalities.items():
            if ch < 1:
                raise ValueError(f"modalities.{key}: channel count must be >= 1, got {ch}")
        for key, stats in self.normalization.items():
            if key not in self.modalities:
                raise ValueError(f"normalization.{key}: not one of the modalities {list(self.modalities)}")
            if len(stats.mean) != self.modalities[key]:
                raise ValueError(
                    f"normalization.{key}: {len(stats.mean)} bands of statistics for a "
                    f"{self.modalities[key]}-channel modality"
                )
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("embed_dim/decoder_dim must be divisible by num_heads/decoder_heads")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.depth < 1 or self.decoder_depth < 1 or self.fusion_depth < 0:
            raise ValueError("depth and decoder_depth must be >= 1 and fusion_depth >= 0")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


_ARCH = ("embed_dim", "depth", "num_heads", "decoder_dim", "decoder_depth", "decoder_heads", "fusion_depth")
PRESETS: dict[str, dict] = {
    # CPU smoke runs and tests
    "tiny": dict(zip(_ARCH, (192, 6, 3, 128, 2, 4, 1)), img_size=64, patch_size=16),
    "small": dict(zip(_ARCH, (384, 12, 6, 256, 4, 8, 2)), img_size=128, patch_size=16),
    # the authors' launch script: ViT-B/16, decoder 384x4, fusion depth 3, 320 px
    "base": dict(zip(_ARCH, (768, 12, 12, 384, 4, 6, 3)), img_size=320, patch_size=16),
    # the authors' "large": width 768, depth 24 (not a true ViT-L)
    "large": dict(zip(_ARCH, (768, 24, 12, 384, 4, 6, 3)), img_size=320, patch_size=16),
}


def model_config(preset: str = "base", **overrides) -> ModelConfig:
    """A :class:`ModelConfig` from a preset name plus validated overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return from_dict(ModelConfig, {**PRESETS[preset], **overrides}, "model")


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> nn.ModuleList:
    """``depth`` pre-norm ViT blocks (timm BEiT blocks: q/v biases, SDPA, no layer scale)."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=LayerNorm, init_values=None)
        for r in rates
    )


def run_blocks(blocks: nn.ModuleList, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
    """Apply ``blocks`` to ``(B, T, D)`` tokens; ``key_padding`` ``(B, T)`` True = ignore as key."""
    bias = None
    if key_padding is not None:
        bias = torch.zeros(key_padding.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(key_padding, float("-inf"))[:, None, None, :]  # (B, 1, 1, T)
    for blk in blocks:
        x = blk(x, shared_rel_pos_bias=bias)
    return x


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``(B, N, D)`` tokens, ``(B, K)`` indices → ``(B, K, D)``."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class PositionTable(nn.Module):
    """Cache of fixed position tables per grid size (non-persistent)."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind, self.dim = kind, dim
        self._cache: dict[tuple, Tensor] = {}

    def forward(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(N, dim)`` table for ``grid = (H/p, W/p)``."""
        key = (grid, device, dtype)
        if key not in self._cache:
            self._cache[key] = position_table(self.kind, grid[0], grid[1], self.dim).to(device, dtype)
        return self._cache[key]


class ModalityPatchEmbed(nn.Module):
    """One normalisation + patch embedding per modality.

    ``forward({m: (B, C_m, H, W)})`` → ``{m: (B, N, D)}``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.channels = dict(cfg.modalities)
        self.proj = nn.ModuleDict(
            {
                m: PatchEmbed(cfg.img_size, cfg.patch_size, c, cfg.embed_dim, strict_img_size=False)
                for m, c in cfg.modalities.items()
            }
        )
        for m, c in cfg.modalities.items():
            stats = cfg.normalization.get(m, NormStats((0.0,) * c, (1.0,) * c))
            self.register_buffer(f"mean_{m}", torch.tensor(stats.mean).view(1, c, 1, 1))
            self.register_buffer(f"std_{m}", torch.tensor(stats.std).view(1, c, 1, 1))

    def check(self, images: Mapping[str, Tensor]) -> None:
        """Raise a clear error for unknown modalities or wrong channel counts/sizes."""
        for m, x in images.items():
            if m not in self.channels:
                raise KeyError(f"modality {m!r} is not one of the model's modalities {list(self.channels)}")
            if x.dim() != 4 or x.shape[1] != self.channels[m]:
                raise ValueError(
                    f"modality {m!r}: expected (B, {self.channels[m]}, H, W), got shape {tuple(x.shape)}"
                )
            if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
                raise ValueError(f"modality {m!r}: size {tuple(x.shape[-2:])} is not a multiple of {self.patch_size}")

    def normalize(self, m: str, x: Tensor) -> Tensor:
        return (x - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.check(images)
        return {m: self.proj[m](self.normalize(m, x.float())) for m, x in images.items()}


class Encoder(nn.Module):
    """Per-modality patch embeddings feeding one shared ViT encoder with a cls token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = ModalityPatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos = PositionTable(cfg.pos_embed, cfg.embed_dim)
        self.blocks = transformer_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
        self.norm = LayerNorm(cfg.embed_dim)

    def grid(self, image: Tensor) -> tuple[int, int]:
        p = self.cfg.patch_size
        return image.shape[-2] // p, image.shape[-1] // p

    def embed(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: (B, C_m, H, W)}`` → ``{m: (B, N, D)}`` patch tokens plus positions."""
        tokens = self.patch_embed(images)
        first = next(iter(images.values()))
        pos = self.pos(self.grid(first), first.device, tokens[next(iter(tokens))].dtype)
        return {m: t + pos for m, t in tokens.items()}

    def encode_tokens(self, x: Tensor) -> Tensor:
        """``(B, n, D)`` tokens → ``(B, 1+n, D)``: prepend cls, run the blocks, norm."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.norm(run_blocks(self.blocks, x))

    def forward(self, images: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Encode every modality (only its visible patches if ``masks`` is given).

        Returns:
            ``{m: (B, 1+n, D)}``, cls first; ``n = N`` without masks.
        """
        tokens = self.embed(images)
        if masks is not None:
            tokens = {m: gather_tokens(t, visible_indices(masks[m])) for m, t in tokens.items()}
        keys = list(tokens)
        lengths = {t.shape[1] for t in tokens.values()}
        if len(lengths) == 1:  # one pass for all modalities, stacked along the batch
            out = self.encode_tokens(torch.cat([tokens[m] for m in keys], dim=0))
            return dict(zip(keys, out.chunk(len(keys), dim=0)))
        return {m: self.encode_tokens(t) for m, t in tokens.items()}

    def forward_features(self, image: Tensor, modality: str) -> Tensor:
        """Full image of one modality → ``(B, 1+N, D)`` (what a timm ViT's ``forward_features`` gives)."""
        return self.forward({modality: image})[modality]


@dataclass
class MSSDFOutput:
    """What :class:`MSSDF` returns (all dicts keyed by modality).

    pred:     ``{m: (B, N, Dt)}`` predictions at every position.
    target:   ``{m: (B, N, Dt)}`` regression targets (teacher features or pixels), no grad.
    masks:    ``{m: (B, N)}`` bool, True = masked (the loss positions).
    tokens:   ``{m: (B, n, D)}`` the student encoder's outputs at the visible patches
              (cls dropped): the feature sets of the contrastive and HSIC terms.
    positions: ``{m: (B, n)}`` the patch index of each of those tokens (ascending).
    modality_logits: ``(M·B, K)`` over the model's K modalities; modality_labels ``(M·B,)``.
    """

    pred: dict[str, Tensor]
    target: dict[str, Tensor]
    masks: dict[str, Tensor]
    tokens: dict[str, Tensor]
    positions: dict[str, Tensor]
    modality_logits: Tensor
    modality_labels: Tensor


class MSSDF(nn.Module):
    """Student encoder + decoders + heads, and (for teacher targets) the EMA teacher."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dd, d = cfg.decoder_dim, cfg.embed_dim
        self.modality_index = {m: i for i, m in enumerate(cfg.modalities)}
        self.encoder = Encoder(cfg)
        self.encoder_to_decoder = nn.Linear(d, dd, bias=False)
        self.decoder_pos = PositionTable(cfg.pos_embed, dd)
        self.fusion_token = nn.Parameter(torch.zeros(1, dd))
        self.fusion_blocks = transformer_blocks(dd, cfg.fusion_depth, cfg.decoder_heads, cfg.mlp_ratio)
        self.fusion_norm = LayerNorm(dd)
        self.mask_tokens = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dd)) for m in cfg.modalities})
        self.decoder_blocks = transformer_blocks(dd, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        self.decoder_norm = LayerNorm(dd)
        if cfg.target == "teacher":
            self.head = nn.Linear(dd, d)
        else:
            p2 = cfg.patch_size**2
            self.pixel_heads = nn.ModuleDict({m: nn.Linear(dd, p2 * c) for m, c in cfg.modalities.items()})
        self.modality_head = nn.Sequential(
            LayerNorm(d), nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, len(cfg.modalities))
        )
        self.apply(_init_weights)
        for p in (self.encoder.cls_token, self.fusion_token, *self.mask_tokens.values()):
            trunc_normal_(p, std=0.02)
        self.teacher: Encoder | None = None
        if cfg.target == "teacher":
            self.teacher = copy.deepcopy(self.encoder)  # initialised from the student
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    # -- pieces ------------------------------------------------------------------------
    def fuse(self, encoded: Mapping[str, Tensor], masks: Mapping[str, Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Fusion decoder.

        Args:
            encoded: ``{m: (B, 1+n, D)}`` encoder outputs (cls first).
            masks: ``{m: (B, N)}``.
        Returns:
            fused ``(B, L, Dd)`` query outputs and ``(B, L)`` bool padding (True = padding).
        """
        first = next(iter(encoded.values()))
        pos = self.decoder_pos(grid, first.device, first.dtype)  # (N, Dd)
        parts = []
        for m, x in encoded.items():
            y = self.encoder_to_decoder(x)  # (B, 1+n, Dd)
            idx = visible_indices(masks[m])  # (B, n)
            parts += [y[:, :1], y[:, 1:] + pos[idx]]
        visible_any = torch.stack([~masks[m] for m in encoded]).any(dim=0)  # (B, N)
        counts = visible_any.sum(dim=1)
        n_query = int(counts.max())
        query_idx = (~visible_any).to(torch.uint8).argsort(dim=1, stable=True)[:, :n_query]  # (B, L)
        padding = torch.arange(n_query, device=counts.device)[None, :] >= counts[:, None]  # (B, L)
        queries = self.fusion_token.to(first.dtype) + pos[query_idx]  # (B, L, Dd)
        context = torch.cat(parts, dim=1)
        seq = torch.cat([context, queries], dim=1)
        key_padding = torch.cat([torch.zeros(context.shape[:2], dtype=torch.bool, device=seq.device), padding], dim=1)
        seq = self.fusion_norm(run_blocks(self.fusion_blocks, seq, key_padding))
        return seq[:, context.shape[1] :], padding

    def reconstruct(self, fused: Tensor, padding: Tensor, modalities: list[str], grid: tuple[int, int]) -> dict[str, Tensor]:
        """Reconstruction decoder, all modalities in one pass stacked along the batch.

        Returns:
            ``{m: (B, N, Dd)}`` decoder outputs at every position.
        """
        b, n = fused.shape[0], grid[0] * grid[1]
        pos = self.decoder_pos(grid, fused.device, fused.dtype)
        m_count = len(modalities)
        mask_tok = torch.cat([self.mask_tokens[m].to(fused.dtype).expand(b, n, -1) for m in modalities], 0) + pos
        seq = torch.cat([fused.repeat(m_count, 1, 1), mask_tok], dim=1)  # (M·B, L+N, Dd)
        key_padding = torch.cat([padding, torch.zeros(b, n, dtype=torch.bool, device=padding.device)], 1)
        out = self.decoder_norm(run_blocks(self.decoder_blocks, seq, key_padding.repeat(m_count, 1)))
        return dict(zip(modalities, out[:, -n:].chunk(m_count, dim=0)))

    @torch.no_grad()
    def teacher_targets(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Teacher features of the full images: ``{m: (B, N, D)}``, cls dropped, layer-normalised."""
        assert self.teacher is not None
        out = self.teacher(images)
        return {m: F.layer_norm(x[:, 1:].float(), x.shape[-1:]) for m, x in out.items()}

    def pixel_targets(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Normalised images as patches ``{m: (B, N, p²·C_m)}`` (per-patch normalised if ``norm_pix``)."""
        out = {}
        for m, x in images.items():
            t = patchify(self.encoder.patch_embed.normalize(m, x.float()), self.cfg.patch_size)
            if self.cfg.norm_pix:
                mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
                t = (t - mean) / (var + 1e-6).sqrt()
            out[m] = t
        return out

    # -- forward -----------------------------------------------------------------------
    def forward(self, images: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> MSSDFOutput:
        """One pre-training forward pass (see the module docstring).

        Args:
            images: ``{m: (B, C_m, H, W)}`` raw values (any subset of the model's modalities).
            masks: ``{m: (B, N)}`` bool, True = masked, same keys as ``images``.
        """
        if set(images) != set(masks):
            raise KeyError(f"images have modalities {sorted(images)} but masks have {sorted(masks)}")
        keys = list(images)
        grid = self.encoder.grid(images[keys[0]])
        encoded = self.encoder(images, masks)  # {m: (B, 1+n, D)}
        fused, padding = self.fuse(encoded, masks, grid)
        decoded = self.reconstruct(fused, padding, keys, grid)
        if self.cfg.target == "teacher":
            pred = {m: self.head(z) for m, z in decoded.items()}
            target = self.teacher_targets(images)
        else:
            pred = {m: self.pixel_heads[m](z) for m, z in decoded.items()}
            target = self.pixel_targets(images)
        cls = torch.cat([encoded[m][:, 0] for m in keys], dim=0)  # (M·B, D)
        b = cls.shape[0] // len(keys)
        labels = torch.tensor([self.modality_index[m] for m in keys], device=cls.device).repeat_interleave(b)
        tokens = {m: encoded[m][:, 1:] for m in keys}
        positions = {m: visible_indices(masks[m]) for m in keys}
        return MSSDFOutput(pred, target, dict(masks), tokens, positions, self.modality_head(cls), labels)

    def train(self, mode: bool = True) -> "MSSDF":
        """Switch the student's mode; the teacher always stays in eval mode (deterministic targets)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def idle_parameters(self, modalities: Iterable[str]) -> list[nn.Parameter]:
        """The per-modality parameters a batch of ``modalities`` does not use: the patch
        embeddings, mask tokens and pixel heads of the model's other modalities."""
        present = set(modalities)
        out: list[nn.Parameter] = []
        for m in self.cfg.modalities:
            if m in present:
                continue
            out += list(self.encoder.patch_embed.proj[m].parameters()) + [self.mask_tokens[m]]
            if self.cfg.target == "pixels":
                out += list(self.pixel_heads[m].parameters())
        return out

    def student_parameters(self):
        """Trainable parameters (everything but the teacher)."""
        return (p for n, p in self.named_parameters() if not n.startswith("teacher."))


def patchify(x: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` → ``(B, N, p²·C)`` with (row, col, channel) order inside a patch."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PatchEmbed):
        w = module.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t ← m·t + (1−m)·s`` for every parameter; buffers are copied.

    ``teacher`` and ``student`` must have the same structure (e.g. ``model.teacher`` and
    ``model.encoder``; under DDP pass the unwrapped module's pieces).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
