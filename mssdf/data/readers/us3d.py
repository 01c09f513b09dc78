"""US3D / IEEE GRSS DFC2019 track 1 (WorldView-3, Jacksonville and Omaha).

Layout: files ``{JAX|OMA}_{tile:03d}_{img:03d}_{RGB|MSI|AGL|CLS}.tif`` anywhere under
``root`` (the release spreads them over ``Track1-RGB/``, ``Track1-MSI-*/``, ``Track1-Truth/``;
any folder structure is accepted, a name found twice is an error)::

    *_RGB.tif   3 bands uint8 (1024 x 1024)
    *_MSI.tif   8 bands uint16 (some release files must be re-written to be GDAL-readable)
    *_AGL.tif   1 band float32, metres above ground, NaN = no data
    *_CLS.tif   1 band uint8 LAS codes: 2 ground, 5 trees, 6 building, 9 water, 17 bridge,
                65 unlabelled

Sample: ``rgb`` (3,H,W), ``ms`` (8,H,W) raw, ``height`` (H,W) float32 with NaN (also the
header's nodata value) = no data and ``meta["height_nan"]`` = its pixel count, ``label``
(H,W) int64 with :data:`CLASSES` indices (LAS 65 -> 255), ``meta``.

Splits (no official one is given to us): ``all``, or ``train``/``val``/``test`` as a seeded
split by geographic tile (``{city}_{tile}``, so views of one tile never span two parts)
with ``fractions`` (default 0.8/0.1/0.1). MSI smaller than RGB (coarser grid) is an error
unless ``resample_ms=True`` (bilinear up-sampling to the RGB grid; the MSI must still
share the RGB's CRS and bounds, within half an MSI pixel, when both are georeferenced).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mssdf.data.io import DataError, IGNORE_INDEX, RasterInfo, check_aligned, check_same_extent, nodata_to_nan
from mssdf.data.readers.base import (
    ReaderDataset,
    Sample,
    check_choice,
    check_same_size,
    check_subset,
    header,
    read_image,
    to_tensor,
)
from mssdf.data.readers.splits import group_split

LAYOUT = __doc__.split("Layout: ")[1].split("Sample:")[0].rstrip()
PATTERN = re.compile(r"^(JAX|OMA)_(\d{3})_(\d{3})_(RGB|MSI|AGL|CLS)\.tiff?$", re.IGNORECASE)
CLASSES = ("ground", "trees", "building", "water", "bridge")
LAS_CODES = (2, 5, 6, 9, 17)
LAS_IGNORE = (65,)
KINDS = {"rgb": "RGB", "ms": "MSI", "height": "AGL", "label": "CLS"}
BANDS = {"RGB": (3,), "MSI": (8,), "AGL": (1,), "CLS": (1,)}


def las_lookup() -> np.ndarray:
    """(256,) int64 table LAS code -> class index (255 for 65); unknown codes -> -1."""
    lut = np.full(256, -1, np.int64)
    lut[list(LAS_CODES)] = np.arange(len(LAS_CODES))
    lut[list(LAS_IGNORE)] = IGNORE_INDEX
    return lut


class US3D(ReaderDataset):
    """US3D samples (layout in the module docstring).

    Args:
        root: folder searched recursively for the ``*_{RGB,MSI,AGL,CLS}.tif`` files.
        split: ``all``, ``train``, ``val`` or ``test`` (seeded tile-grouped split).
        modalities: subset of ``rgb``, ``ms``.
        targets: subset of ``height``, ``label`` (may be empty).
        cities: subset of ``JAX``, ``OMA``.
        fractions: train/val/test fractions of the tiles; seed: split seed.
        resample_ms: up-sample a coarser MSI grid to the RGB grid instead of raising.
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT
    CLASSES = CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        modalities: Sequence[str] = ("rgb",),
        targets: Sequence[str] = ("height",),
        cities: Sequence[str] = ("JAX", "OMA"),
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        resample_ms: bool = False,
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(split, ("all", "train", "val", "test"), "split")
        self.modalities = check_subset(modalities, ("rgb", "ms"), "modalities")
        self.targets = check_subset(targets, ("height", "label"), "targets") if targets else ()
        cities = check_subset(cities, ("JAX", "OMA"), "cities")
        self.resample_ms = resample_ms
        self._lut = las_lookup()

        found: dict[tuple[str, str, str], dict[str, Path]] = {}
        for path in sorted(self.root.rglob("*")):
            m = PATTERN.match(path.name)
            if not m or not path.is_file():
                continue
            city, tile, img, kind = m.group(1).upper(), m.group(2), m.group(3), m.group(4).upper()
            if city not in cities:
                continue
            slot = found.setdefault((city, tile, img), {})
            if kind in slot:
                raise DataError(f"{path}: duplicate of {slot[kind]} (one file per name expected)")
            slot[kind] = path
        if not found:
            raise DataError(f"{self.root}: no US3D files ({'/'.join(cities)}_ttt_iii_RGB.tif, ...) found; "
                            f"expected layout: {LAYOUT}")  # fmt: skip
        needed = [KINDS[k] for k in (*self.modalities, *self.targets)]
        keys = sorted(found)
        for key in keys:
            files = found[key]
            present = [k for k in needed if k in files]
            if len(present) != len(needed):
                have = files[present[0]] if present else next(iter(files.values()))
                kind = next(k for k in needed if k not in files)
                raise DataError(f"{'_'.join(key)}_{kind}.tif: not found anywhere under {self.root} "
                                f"(partner of {have}); expected layout: {LAYOUT}")  # fmt: skip
        if split != "all":
            parts = group_split([k[:2] for k in keys], dict(zip(("train", "val", "test"), fractions)), seed)
            keys = [keys[i] for i in parts[split]]
        self.samples: list[tuple[str, dict[str, Path], dict[str, RasterInfo]]] = []
        for key in keys:
            paths = {k: found[key][k] for k in needed}
            infos = self._check(paths)
            self.samples.append(("_".join(key), paths, infos))

    def _check(self, paths: dict[str, Path]) -> dict[str, RasterInfo]:
        """Headers: band counts, sizes (MSI may be coarser with resample_ms), georeferencing."""
        first = next(iter(paths.values()))
        infos: dict[str, RasterInfo] = {}
        for kind, path in paths.items():
            try:
                infos[kind] = header(path, BANDS[kind], partner=None if path == first else first)
            except DataError as err:
                if kind == "MSI" and "not a readable raster" in str(err):
                    raise DataError(f"{err}; some DFC2019 MSI files must be re-written (e.g. read with "
                                    f"tifffile, write with rasterio) before GDAL can read them") from err  # fmt: skip
                raise
        ref = infos[next(k for k in paths if k != "MSI")] if any(k != "MSI" for k in paths) else infos["MSI"]
        for kind, info in infos.items():
            if info is ref:
                continue
            if kind == "MSI" and self.resample_ms and (info.height, info.width) != (ref.height, ref.width):
                check_same_extent(ref, info)  # another grid, but the same CRS and area
                continue
            check_same_size(ref, info)
            check_aligned([ref, info])
        return infos

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        sid, paths, infos = self.samples[index]
        out: Sample = {}
        meta: dict = {"id": sid}
        ref_hw: tuple[int, int] | None = None
        for kind, path in paths.items():
            info = infos[kind]
            if kind == "RGB":
                out["rgb"] = to_tensor(read_image(path, 3))
                ref_hw = (info.height, info.width)
            elif kind == "MSI":
                out["ms"] = to_tensor(self._read_msi(path))
            elif kind == "AGL":
                h = nodata_to_nan(read_image(path, 1)[0], info.nodata)
                meta["height_nan"] = int(np.isnan(h).sum())
                out["height"] = to_tensor(h)
                ref_hw = ref_hw or (info.height, info.width)
            else:
                codes = read_image(path, 1, dtype=np.uint8)[0]
                label = self._lut[codes]
                if (label < 0).any():
                    bad = np.unique(codes[label < 0]).tolist()
                    raise DataError(f"{path}: LAS class code(s) {bad} not in {list(LAS_CODES + LAS_IGNORE)}")
                out["label"] = to_tensor(label)
                ref_hw = ref_hw or (info.height, info.width)
            meta[f"{kind.lower()}_file"] = path.name
        if "ms" in out and ref_hw is not None and tuple(out["ms"].shape[-2:]) != ref_hw:
            out["ms"] = torch.nn.functional.interpolate(
                out["ms"][None], size=ref_hw, mode="bilinear", align_corners=False
            )[0]
        out["meta"] = meta
        return out

    @staticmethod
    def _read_msi(path: Path) -> np.ndarray:
        try:
            return read_image(path, 8)
        except DataError as err:
            raise DataError(f"{err}; some DFC2019 MSI files must be re-written before GDAL can read them") from err
