"""Task heads on a :class:`~mssdf.downstream.backbone.ViTBackbone`'s four maps.

* :class:`SegmentationModel`: backbone + UPerNet decoder (segmentation-models-pytorch's
  ``UPerNetDecoder``: a LayerNorm per level, PPM on the coarsest level, FPN lateral +
  top-down, fusion of all levels at the finest) + dropout + 1×1 classifier, and optionally
  the auxiliary FCN head of mmseg's UPerNet recipe (conv3×3-BN-ReLU, dropout, 1×1 on
  pyramid level 2). Logits are upsampled bilinearly to the input size.
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

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import mssdf  # noqa: F401  (timm/torchvision import shim, before smp imports them)
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

from mssdf.downstream.backbone import LayerNorm2d, ViTBackbone


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

    def forward(self, images: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{m: (B, C_m, H, W)}`` → ``{"out": (B, K, H, W)}`` logits, plus ``"aux"`` (same shape) with the aux head."""
        size = _input_size(images, self.backbone)
        maps = self.backbone(images)
        logits = self.classifier(self.dropout(self.decoder([None, None, *maps])))
        out = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None:
            out["aux"] = F.interpolate(self.aux_head(maps[2]), size=size, mode="bilinear", align_corners=False)
        return out


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


__all__ = ["SegmentationModel", "HeightModel", "FCNHead", "HeightDecoder", "build_segmentation_model", "build_height_model",
           "backbone_parameters", "head_parameters"]
