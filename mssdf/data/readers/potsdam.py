"""ISPRS Potsdam (5 cm, 6000x6000 tiles) in its official layout.

Layout under ``root``::

    2_Ortho_RGB/top_potsdam_{r}_{c}_RGB.tif                     3 bands (R, G, B), uint8
    3_Ortho_IRRG/top_potsdam_{r}_{c}_IRRG.tif                   3 bands (IR, R, G)
    4_Ortho_RGBIR/top_potsdam_{r}_{c}_RGBIR.tif                 4 bands (R, G, B, IR)
    1_DSM/dsm_potsdam_{rr}_{cc}.tif                             1 band, metres (zero-padded ids)
    1_DSM_normalisation/dsm_potsdam_{rr}_{cc}_normalized_lastools.jpg   8-bit nDSM
    5_Labels_all/top_potsdam_{r}_{c}_label.tif                  RGB colour labels
    5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif   eroded, boundaries black

Sample: ``rgb`` (3,H,W), ``ms`` (4 bands R,G,B,IR from RGBIR, or 3 bands IR,R,G from IRRG),
``dsm`` (1,H,W) metres (``dsm_source="dsm"``) or raw 0-255 nDSM values
(``dsm_source="ndsm"``), ``label`` (H,W) int64 in :data:`~mssdf.data.readers.colors.ISPRS`
order with black (boundaries) = 255, ``meta``.

Quirks handled: zero-padded DSM ids (an unpadded name is accepted too); tile 3_13's DSM and
nDSM are 5999 px wide (one missing column on the right, filled by repeating the last
column and counted in ``meta["dsm_padded_columns"]``, 0 for every other sample). That
tile only (:data:`SHORT_DSM_TILES`): any other size difference between a tile's image and
its DSM, nDSM or label is a ``DataError`` at construction naming both files and sizes.
The nDSM JPEG may decode as 3 equal channels (averaged); a 4th (alpha) band on
RGB files is ignored. A DSM nodata value (from the header) or NaN is filled with the
crop's lowest height and counted in ``meta["dsm_filled"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

from mssdf.data.io import DataError
from mssdf.data.readers.base import Sample, check_choice, check_subset, require_dir
from mssdf.data.readers.colors import ISPRS
from mssdf.modalities import DSM_SOURCES, DsmSource
from mssdf.data.readers.tiles import Source, TiledSegmentation

TRAIN_TILES: tuple[str, ...] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
)  # fmt: skip
TEST_TILES: tuple[str, ...] = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14", "6_15", "7_13",
)  # fmt: skip
SPLITS = {"train": TRAIN_TILES, "test": TEST_TILES, "all": TRAIN_TILES + TEST_TILES}
MODALITIES = ("rgb", "ms", "dsm")
# the documented quirk (docs/data.md): tiles whose DSM and nDSM lack columns on the right, and how many
SHORT_DSM_TILES: dict[str, int] = {"3_13": 1}

LAYOUT = __doc__.split("Layout under ``root``::")[1].split("Sample:")[0].rstrip()


def _padded(tile: str) -> str:
    r, c = tile.split("_")
    return f"{int(r):02d}_{int(c):02d}"


class Potsdam(TiledSegmentation):
    """ISPRS Potsdam segmentation tiles or crops (see the module docstring for the layout).

    Args:
        root: folder holding ``2_Ortho_RGB/`` etc.
        split: ``train`` (24 tiles), ``test`` (14 tiles) or ``all``.
        modalities: subset of ``rgb``, ``ms``, ``dsm``.
        ms_source: ``RGBIR`` (4 bands) or ``IRRG`` (3 bands) for ``ms``.
        dsm_source: ``dsm`` (float metres) or ``ndsm`` (8-bit normalised DSM JPEG).
        labels: ``full``, ``noBoundary`` or None (no ``label`` key).
        tiles: explicit tile ids (``"2_10"``), overriding the split's list.
        allow_missing_tiles: skip split tiles absent from disk instead of raising.
        crop_size, stride: crop windows (default: whole tiles; stride defaults to crop_size).
        train_fraction, fraction_of, seed: keep a seeded fraction of the samples or tiles
            (the paper's "50% of the train set": ``train_fraction=0.5``).
        unknown_colors: ``error`` (default) or ``ignore`` (-> 255) for colours outside the palette.
        check_georef: also compare CRS/transform of partners (sizes are always compared).
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT
    CLASSES = ISPRS.classes

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        modalities: Sequence[str] = ("rgb", "dsm"),
        ms_source: Literal["RGBIR", "IRRG"] = "RGBIR",
        dsm_source: DsmSource = "dsm",
        labels: Literal["full", "noBoundary"] | None = "full",
        tiles: Sequence[str] | None = None,
        allow_missing_tiles: bool = False,
        crop_size: int | None = None,
        stride: int | None = None,
        train_fraction: float = 1.0,
        fraction_of: Literal["samples", "tiles"] = "samples",
        seed: int = 0,
        unknown_colors: Literal["error", "ignore"] = "error",
        check_georef: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ):
        root = Path(root)
        require_dir(root, LAYOUT)
        check_choice(split, SPLITS, "split")
        self.modalities = check_subset(modalities, MODALITIES, "modalities")
        check_choice(ms_source, ("RGBIR", "IRRG"), "ms_source")
        check_choice(dsm_source, DSM_SOURCES, "dsm_source")
        check_choice(labels, ("full", "noBoundary", None), "labels")
        tile_ids = tuple(tiles) if tiles is not None else SPLITS[split]
        for t in tile_ids:
            if len(t.split("_")) != 2 or not all(p.isdigit() for p in t.split("_")):
                raise DataError(f"tile id {t!r} is not of the form 'r_c' (e.g. '2_10')")

        def folder(name: str) -> Path:
            return require_dir(root / name, LAYOUT)

        makers: dict[str, Callable[[str], Source]] = {}
        if "rgb" in self.modalities:
            d = folder("2_Ortho_RGB")
            makers["rgb"] = lambda t: Source("rgb", d / f"top_potsdam_{t}_RGB.tif", "image", (1, 2, 3), (3, 4))
        if "ms" in self.modalities:
            if ms_source == "RGBIR":
                d_ms = folder("4_Ortho_RGBIR")
                makers["ms"] = lambda t: Source("ms", d_ms / f"top_potsdam_{t}_RGBIR.tif", "image", None, (4,))
            else:
                d_ms = folder("3_Ortho_IRRG")
                makers["ms"] = lambda t: Source("ms", d_ms / f"top_potsdam_{t}_IRRG.tif", "image", None, (3,))
        if "dsm" in self.modalities:
            if dsm_source == "dsm":
                d_dsm = folder("1_DSM")
                makers["dsm"] = lambda t: Source(
                    "dsm", self._dsm_path(d_dsm, "dsm_potsdam_{}.tif", t), "height", None, (1,),
                    short_ok=SHORT_DSM_TILES.get(t, 0),
                )  # fmt: skip
            else:
                d_dsm = folder("1_DSM_normalisation")
                makers["dsm"] = lambda t: Source(
                    "dsm",
                    self._dsm_path(d_dsm, "dsm_potsdam_{}_normalized_lastools.jpg", t),
                    "grey",
                    None,
                    (1, 3),
                    short_ok=SHORT_DSM_TILES.get(t, 0),
                )
        if labels == "full":
            d_lab = folder("5_Labels_all")
            makers["label"] = lambda t: Source("label", d_lab / f"top_potsdam_{t}_label.tif", "color", None, (1, 3, 4))
        elif labels == "noBoundary":
            d_lab = folder("5_Labels_all_noBoundary")
            makers["label"] = lambda t: Source(
                "label", d_lab / f"top_potsdam_{t}_label_noBoundary.tif", "color", None, (1, 3, 4)
            )

        tile_sources = [(t, [make(t) for make in makers.values()]) for t in tile_ids]
        missing = [t for t, srcs in tile_sources if not srcs[0].path.is_file()]
        if missing and not allow_missing_tiles:
            first = next(s[0].path for t, s in tile_sources if t == missing[0])
            raise DataError(
                f"{first}: not found; {len(missing)} tile(s) of the Potsdam {split!r} split are missing "
                f"({', '.join(missing)}); pass allow_missing_tiles=True to use the tiles present"
            )
        tile_sources = [(t, s) for t, s in tile_sources if t not in missing]
        if not tile_sources:
            raise DataError(f"{root}: no Potsdam tiles of the {split!r} split found; expected layout:\n{LAYOUT}")
        super().__init__(
            root, split, tile_sources, ISPRS, crop_size, stride, train_fraction, fraction_of, seed,
            unknown_colors, check_georef, transform,
        )  # fmt: skip

    def load(self, index: int) -> Sample:
        """The sample, with ``meta["dsm_padded_columns"]``: DSM columns filled by edge
        replication in this window (tile 3_13's missing last column; 0 elsewhere)."""
        sample = super().load(index)
        t, (_, c, _, w) = self.samples[index]
        tile = self.tiles[t]
        for src, info in zip(tile.sources, tile.infos):
            if src.key == "dsm":
                sample["meta"]["dsm_padded_columns"] = max(0, c + w - max(info.width, c))
        return sample

    @staticmethod
    def _dsm_path(folder: Path, pattern: str, tile: str) -> Path:
        """The zero-padded DSM name (official); an unpadded one is accepted as a fallback."""
        padded = folder / pattern.format(_padded(tile))
        plain = folder / pattern.format(tile)
        return plain if not padded.exists() and plain.exists() else padded
