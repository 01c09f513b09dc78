"""Base for large-tile segmentation datasets (ISPRS Potsdam and Vaihingen).

A tile is a set of aligned files (:class:`Source`: modality images, DSM, colour label).
At construction every header is read (band counts, sizes, georeferencing), then each tile
is cut into windows (whole tile, or ``crop_size`` crops every ``stride`` pixels with
border-aligned edge crops, computed from that tile's own size). A seeded ``train_fraction``
keeps a fraction of the tiles or of the crops (the paper's "50% of the train set").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from mssdf.config import ConfigError
from mssdf.data.io import DataError, IGNORE_INDEX, RasterInfo, check_aligned, nodata_to_nan
from mssdf.data.readers.base import (
    ReaderDataset,
    Sample,
    Window,
    check_choice,
    check_same_size,
    check_fraction,
    fill_heights,
    header,
    pad_to,
    read_grey,
    read_image,
    to_tensor,
)
from mssdf.data.readers.colors import ColorPalette, read_color_label
from mssdf.data.readers.splits import fraction_subset
from mssdf.data.readers.windows import grid_windows

SourceKind = Literal["image", "height", "grey", "color"]


@dataclass(frozen=True)
class Source:
    """One file of a tile.

    Attributes:
        key: sample key (``rgb``, ``ms``, ``dsm`` or ``label``).
        path: the file.
        kind: ``image`` (bands as float32), ``height`` (float DSM, nodata -> NaN -> filled),
            ``grey`` (8-bit nDSM image, 3 equal channels allowed), ``color`` (colour label).
        bands: 1-based bands to read (``image`` only; default all).
        expected: allowed band counts in the header.
        short_ok: columns this file may lack on the right (padded by edge replication).
    """

    key: str
    path: Path
    kind: SourceKind
    bands: tuple[int, ...] | None = None
    expected: tuple[int, ...] = ()
    short_ok: int = 0


@dataclass
class _Tile:
    tile_id: str
    sources: list[Source]
    infos: list[RasterInfo]
    height: int
    width: int


class TiledSegmentation(ReaderDataset):
    """Windows over aligned tiles -> ``{modality: (C,h,w) float32, "label": (h,w) int64, "meta"}``.

    Subclasses build ``tiles`` (id and sources, primary source first) and call
    ``super().__init__``.
    """

    palette: ColorPalette

    def __init__(
        self,
        root: str | Path,
        split: str,
        tiles: Sequence[tuple[str, list[Source]]],
        palette: ColorPalette,
        crop_size: int | None = None,
        stride: int | None = None,
        train_fraction: float = 1.0,
        fraction_of: Literal["samples", "tiles"] = "samples",
        seed: int = 0,
        unknown_colors: Literal["error", "ignore"] = "error",
        check_georef: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(fraction_of, ("samples", "tiles"), "fraction_of")
        check_choice(unknown_colors, ("error", "ignore"), "unknown_colors")
        check_fraction(train_fraction, "train_fraction")
        if crop_size is None and stride is not None:
            raise ConfigError("stride given without crop_size")
        for name, value in (("crop_size", crop_size), ("stride", stride)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        self.palette = palette
        self.crop_size = crop_size
        self.stride = stride if stride is not None else crop_size
        self.train_fraction = train_fraction
        self.seed = seed
        self.unknown_colors = unknown_colors
        self.tiles = [self._check_tile(tid, srcs, check_georef) for tid, srcs in tiles]
        if fraction_of == "tiles":
            self.tiles = [self.tiles[i] for i in fraction_subset(len(self.tiles), train_fraction, seed)]
        samples = [
            (t, win)
            for t, tile in enumerate(self.tiles)
            for win in (
                grid_windows(tile.height, tile.width, crop_size, self.stride)
                if crop_size
                else [(0, 0, tile.height, tile.width)]
            )
        ]
        if fraction_of == "samples":
            samples = [samples[i] for i in fraction_subset(len(samples), train_fraction, seed)]
        self.samples: list[tuple[int, Window]] = samples

    @staticmethod
    def _check_tile(tile_id: str, sources: list[Source], check_georef: bool) -> _Tile:
        primary = sources[0].path
        infos = [header(s.path, s.expected or None, partner=None if i == 0 else primary) for i, s in enumerate(sources)]
        # Reference size: the first source that must not be short (a short DSM pads to it).
        ref_i = next((i for i, s in enumerate(sources) if s.short_ok == 0), 0)
        ref = infos[ref_i]
        for src, info in zip(sources, infos):
            if info is ref:
                continue
            short = check_same_size(ref, info, src.short_ok)
            if check_georef and short == 0:
                try:
                    check_aligned([ref, info])
                except DataError as err:
                    raise DataError(f"{err} (pass check_georef=False to compare sizes only)") from err
        return _Tile(tile_id, list(sources), infos, ref.height, ref.width)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, src: Source, info: RasterInfo, window: Window) -> np.ndarray:
        r, c, h, w = window
        w_own = min(w, info.width - c)  # a short file (3_13's DSM) lacks its last column(s)
        own: Window = (r, c, h, w_own)
        if src.kind == "image":
            arr = read_image(src.path, src.expected or None, own, src.bands)
        elif src.kind == "height":
            arr = nodata_to_nan(read_image(src.path, (1,), own), info.nodata)
        elif src.kind == "grey":
            arr = read_grey(src.path, own)
        else:
            arr = read_color_label(src.path, self.palette, own, self.unknown_colors)
        if w_own < w:
            arr = pad_to(arr, h, w, 0, mode="edge")
        return arr

    def load(self, index: int) -> Sample:
        t, window = self.samples[index]
        tile = self.tiles[t]
        out: Sample = {}
        meta: dict = {"id": tile.tile_id, "window": list(window)}
        size = self.crop_size
        for src, info in zip(tile.sources, tile.infos):
            arr = self._read(src, info, window)
            if src.kind == "height":
                arr, filled = fill_heights(arr)
                meta["dsm_filled"] = filled
            if size and arr.shape[-2:] != (size, size):  # tile smaller than a crop
                pad_value = IGNORE_INDEX if src.kind == "color" else 0
                arr = pad_to(arr, size, size, pad_value)
            out[src.key] = to_tensor(arr if src.kind == "color" else arr.astype(np.float32, copy=False))
            meta[f"{src.key}_file"] = src.path.name
        out["meta"] = meta
        return out
