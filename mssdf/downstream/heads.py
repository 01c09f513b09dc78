"""Task heads on a :class:`~mssdf.downstream.backbone.ViTBackbone`'s four maps.

* :class:`SegmentationModel`: backbone + UPerNet decoder (segmentation-models-pytorch's
  ``UPerNetDecoder``: a LayerNorm per level, PPM on the coarsest level, FPN lateral +
  top-down, fusion of all levels at the finest) + dropout + 1×1 classifier, and optionally
  the auxiliary FCN head of mmseg's UPerNet recipe (conv3×3-BN-ReLU, dropout, 1×1 on
  pyramid level 2). Logits are upsampled bilinearly to the input size.
* :class:`ChangeModel`: one backbone on both dates (a siamese encoder: the same module is
  called on the two images stacked along the batch, so the branches share every weight by
  construction), per-level fusion of the two dates' token maps — ``absdiff`` ``|f1 − f2|``
  (symmetric in the dates: swapping them gives the same output) or ``concat`` ``[f1, f2]``
  followed by a 1×1 convolution back to ``D`` — then the segmentation model's pyramid,
  UPerNet decoder and classifier (binary change: 2 classes).
* :class:`ClassificationModel`: the backbone's pooled embedding (cls token, or the mean of
  the patch tokens, after the final norm; fused over modalities) + dropout + a linear
  classifier (MAE's fine-tuning head, initialised with std 2e-5); ``probe=True`` puts
  BatchNorm without affine parameters before it (MAE's linear-probe head).
* :class:`HeightModel`: backbone + a light FPN decoder (LayerNorm and 1×1 lateral per
  level, top-down sum, 3×3 conv-BN-ReLU on the finest map) + a 3×3 conv to one channel,
  upsampled bilinearly to the input size: the height in metres (or whatever unit the loss
  trains it in; no output activation, so negative values — DSM below the datum — are possible).

smp's ``UPerNetDecoder`` takes a list of encoder maps ``[1, 1/2, 1/4, 1/8, 1/16, ...]`` and
uses those from index 2 on, each with its own channel count, so our four maps are passed
behind two placeholders (channels listed as 0); any channel list works. Its PPM pools the
coarsest map to 1×1 and applies BatchNorm: training needs at least 2 samples per process
(as the mmseg recipe). smp's DPT is built around its own ViT encoder and is not used.

Parameter groups (engine): :func:`backbone_parameters` are the encoder's (pre-trained,
layer-decayed, frozen in linear mode); :func:`head_parameters` everything else — the neck,
the decoder and the classifiers, new weights trained at the full learning rate. Use
``model.backbone.layer_id(name)`` with the model's parameter names for layer decay.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import mssdf  # noqa: F401  (timm/torchvision import shim, before smp imports them)
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

from mssdf.downstream.backbone import LayerNorm2d, ViTBackbone
from mssdf.downstream.config import SECOND_DATE


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _input_size(images: Mapping[str, Tensor], backbone: ViTBackbone) -> tuple[int, int]:
    return tuple(images[backbone.modalities[0]].shape[-2:])


class FCNHead(nn.Module):
    """mmseg's auxiliary FCN head (``num_convs=1``): conv3×3-BN-ReLU, dropout, 1×1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = _conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class SegmentationModel(nn.Module):
    """Backbone + UPerNet + classifier (+ auxiliary FCN head on pyramid level 2)."""

    def __init__(self, backbone: ViTBackbone, num_classes: int, aux: bool = True, channels: int = 64, dropout: float = 0.1):
        super().__init__()
        if num_classes < 1 or channels < 1:
            raise ValueError(f"num_classes and channels must be >= 1, got {num_classes}, {channels}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.decoder = UPerNetDecoder(
            encoder_channels=[0, 0, *backbone.out_channels], encoder_depth=5, decoder_channels=channels, use_norm="batchnorm"
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_head = FCNHead(backbone.out_channels[2], channels, num_classes, dropout) if aux else None

    def pyramid(self, images: Mapping[str, Tensor]) -> list[Tensor]:
        """The four maps the decoder reads (the backbone's pyramid)."""
        return self.backbone(images)

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: (B, C_m, H, W)}`` → ``{"out": (B, K, H, W)}`` logits, plus ``"aux"`` (same shape) with the aux head."""
        size = _input_size(images, self.backbone)
        maps = self.pyramid(images)
        logits = self.classifier(self.dropout(self.decoder([None, None, *maps])))
        out = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None:
            out["aux"] = F.interpolate(self.aux_head(maps[2]), size=size, mode="bilinear", align_corners=False)
        return out


def split_dates(images: Mapping[str, Tensor], modalities: tuple[str, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``{m: t1, m_t2: t2}`` → ``({m: t1}, {m: t2})`` for the backbone's ``modalities``.

    Raises:
        KeyError: a date of a modality is missing. ValueError: the dates differ in shape.
    """
    t1, t2 = {}, {}
    for m in modalities:
        if m not in images or m + SECOND_DATE not in images:
            raise KeyError(f"change input needs {m!r} and {m + SECOND_DATE!r} (has {sorted(images)})")
        a, b = images[m], images[m + SECOND_DATE]
        if a.shape != b.shape:
            raise ValueError(f"the two dates of {m!r} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        t1[m], t2[m] = a, b
    return t1, t2


class ChangeModel(SegmentationModel):
    """Siamese backbone on two dates, per-level fusion, pyramid + UPerNet (module doc).

    Input ``{m: (B, C_m, H, W), m_t2: (B, C_m, H, W)}`` for each backbone modality ``m``;
    output as :class:`SegmentationModel` (``num_classes`` 2: unchanged / changed).
    """

    def __init__(self, backbone: ViTBackbone, num_classes: int = 2, fusion: str = "absdiff", aux: bool = True,
                 channels: int = 64, dropout: float = 0.1):
        super().__init__(backbone, num_classes, aux=aux, channels=channels, dropout=dropout)
        if fusion not in ("absdiff", "concat"):
            raise ValueError(f"fusion must be 'absdiff' or 'concat', got {fusion!r}")
        self.fusion = fusion
        d = backbone.embed_dim
        self.merge = nn.ModuleList(nn.Conv2d(2 * d, d, 1) for _ in range(4)) if fusion == "concat" else None

    def pyramid(self, images: Mapping[str, Tensor]) -> list[Tensor]:
        t1, t2 = split_dates(images, self.backbone.modalities)
        b = next(iter(t1.values())).shape[0]
        both = {m: torch.cat([t1[m], t2[m]], dim=0) for m in t1}  # one pass, shared weights: (2B, C, H, W)
        fused = []
        for level, f in enumerate(self.backbone.features(both)):  # (2B, D, h, w)
            f1, f2 = f[:b], f[b:]
            fused.append((f1 - f2).abs() if self.merge is None else self.merge[level](torch.cat([f1, f2], dim=1)))
        return self.backbone.neck(fused)


class ClassificationModel(nn.Module):
    """Backbone embedding (``pool``) → [BatchNorm1d without affine] → dropout → linear classifier."""

    def __init__(self, backbone: ViTBackbone, num_classes: int, pool: str = "cls", probe: bool = False, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone, self.pool, self.num_classes = backbone, pool, num_classes
        d = backbone.embed_dim
        self.head = LinearHead(d, num_classes, probe=probe, dropout=dropout)

    def embed(self, images: Mapping[str, Tensor]) -> Tensor:
        """``{m: (B, C_m, H, W)}`` → ``(B, D)`` (the features kNN and the linear probe read)."""
        return self.backbone.pooled(images, self.pool)

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: (B, C_m, H, W)}`` → ``{"out": (B, K)}`` logits."""
        return {"out": self.head(self.embed(images))}


class LinearHead(nn.Module):
    """``(B, D)`` → ``(B, K)``: [BatchNorm1d(affine=False) when ``probe``] → dropout → linear.

    MAE's heads: fine-tuning initialises the weights with std 2e-5, the linear probe with
    0.01; biases zero.
    """

    def __init__(self, dim: int, num_classes: int, probe: bool = False, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if probe else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01 if probe else 2e-5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(self.dropout(self.norm(z)))


class HeightDecoder(nn.Module):
    """FPN top-down fusion of four maps → one ``channels``-wide map at the finest level."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in in_channels)  # levels are raw block outputs
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = _conv_bn_relu(channels, channels)

    def forward(self, maps: list[Tensor]) -> Tensor:
        lat = [conv(norm(x)) for conv, norm, x in zip(self.lateral, self.norms, maps)]
        y = lat[-1]
        for x in reversed(lat[:-1]):
            y = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(y)


class HeightModel(nn.Module):
    """Backbone + light FPN decoder + 3×3 conv to one channel (height), at the input size."""

    def __init__(self, backbone: ViTBackbone, channels: int = 64):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.backbone = backbone
        self.decoder = HeightDecoder(list(backbone.out_channels), channels)
        self.regressor = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: (B, C_m, H, W)}`` → ``{"out": (B, 1, H, W)}``."""
        size = _input_size(images, self.backbone)
        y = self.regressor(self.decoder(self.backbone(images)))
        return {"out": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}


def build_segmentation_model(backbone: ViTBackbone, num_classes: int, aux: bool = True, channels: int = 64) -> SegmentationModel:
    """:class:`SegmentationModel` (``channels``: decoder width; 512 in the mmseg recipe, 64 for the tiny CPU runs)."""
    return SegmentationModel(backbone, num_classes, aux=aux, channels=channels)


def build_change_model(backbone: ViTBackbone, fusion: str = "absdiff", aux: bool = True, channels: int = 64) -> ChangeModel:
    """:class:`ChangeModel` (binary change: 2 classes)."""
    return ChangeModel(backbone, 2, fusion=fusion, aux=aux, channels=channels)


def build_classification_model(backbone: ViTBackbone, num_classes: int, pool: str = "cls", probe: bool = False) -> ClassificationModel:
    """:class:`ClassificationModel` (``probe``: MAE's linear-probe head)."""
    return ClassificationModel(backbone, num_classes, pool=pool, probe=probe)


def build_height_model(backbone: ViTBackbone, channels: int = 64) -> HeightModel:
    """:class:`HeightModel` (``channels``: decoder width)."""
    return HeightModel(backbone, channels=channels)


def backbone_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the pre-trained encoder (``backbone.encoder.*``): what
    linear mode freezes and layer decay scales. The neck is new: see :func:`head_parameters`."""
    for name, p in model.named_parameters():
        if name.startswith("backbone.encoder."):
            yield name, p


def head_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of everything but the encoder: neck, decoder, classifiers."""
    for name, p in model.named_parameters():
        if not name.startswith("backbone.encoder."):
            yield name, p


__all__ = ["SegmentationModel", "ChangeModel", "ClassificationModel", "LinearHead", "HeightModel", "FCNHead", "HeightDecoder",
           "SECOND_DATE", "split_dates", "build_segmentation_model", "build_change_model", "build_classification_model",
           "build_height_model",
           "backbone_parameters", "head_parameters"]
