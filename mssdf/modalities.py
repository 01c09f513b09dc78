"""The modality catalogue: one owner for what a modality is.

Modalities are dict keys end to end (``{"rgb": (B, 3, H, W), "dsm": (B, 1, H, W)}``).
This module says which keys exist, their default band counts, and from which prepared
file a height modality is read.

    rgb    3 bands, 8-bit colour (0-255)
    ms     multi-spectral, raw sensor units (4 bands by default: B, G, R, NIR)
    pan    1 band, panchromatic, raw sensor units
    dsm    1 band, surface height in metres (or, with ``dsm_source: ndsm``, above-ground)
    ndsm   1 band, normalised DSM (height above ground, metres)
"""

from __future__ import annotations

from typing import Iterable, Literal, get_args

#: Default band counts (data with other counts pass theirs explicitly).
CHANNELS: dict[str, int] = {"rgb": 3, "ms": 4, "pan": 1, "dsm": 1, "ndsm": 1}

#: A typical upper end of each modality's raw values (synthetic data are drawn in
#: [0, this]; rgb 8-bit, ms/pan digital numbers, heights in metres).
TYPICAL_MAX: dict[str, float] = {"rgb": 255.0, "ms": 600.0, "pan": 1000.0, "dsm": 30.0, "ndsm": 30.0}

DsmSource = Literal["dsm", "ndsm"]
#: Which prepared file the ``dsm`` modality is read from: the surface (``dsm``) or the
#: height above ground (``ndsm``).
DSM_SOURCES: tuple[str, ...] = get_args(DsmSource)


def channels(names: Iterable[str]) -> dict[str, int]:
    """Default ``{modality: bands}`` of ``names`` (a ``KeyError`` names an unknown key)."""
    out = {}
    for m in names:
        if m not in CHANNELS:
            raise KeyError(f"unknown modality {m!r}; choose from {sorted(CHANNELS)}")
        out[m] = CHANNELS[m]
    return out


def file_key(modality: str, dsm_source: str = "dsm") -> str:
    """The prepared file (and statistics key) a modality is read from: ``dsm`` comes from
    the ``ndsm`` file when ``dsm_source="ndsm"``; every other key from its own file."""
    if dsm_source not in DSM_SOURCES:
        raise ValueError(f"dsm_source={dsm_source!r}: expected one of {list(DSM_SOURCES)}")
    return dsm_source if modality == "dsm" else modality


__all__ = ["CHANNELS", "TYPICAL_MAX", "DSM_SOURCES", "DsmSource", "channels", "file_key"]
