"""ISPRS Vaihingen (9 cm, IR-R-G true orthophotos) in its official layout.

Layout under ``root``::

    top/top_mosaic_09cm_area{N}.tif           3 bands (IR, R, G), uint8
    dsm/dsm_09cm_matching_area{N}.tif         1 band, float metres (same grid as top)
    ndsm/ndsm_09cm_matching_area{N}.bmp       optional 8-bit nDSM
    labels, one of (searched in this order unless labels_dir is given):
      gts_for_participants/top_mosaic_09cm_area{N}.tif            (train areas only)
      <COMPLETE folder>/top_mosaic_09cm_area{N}.tif                (all areas)
      <eroded COMPLETE folder>/top_mosaic_09cm_area{N}_noBoundary.tif
    where <COMPLETE folder> is ground_truth_COMPLETE,
    ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE, or the root itself, and the
    eroded one ground_truth_eroded_COMPLETE,
    ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE, gts_eroded_for_participants
    or the root itself.

Sample: the IR-R-G orthophoto under ``ms`` (3 bands in file order **IR, R, G**; it is not
an RGB image) unless ``irrg_key="rgb"`` (for RGB-pretrained encoders, band order unchanged);
``dsm`` (1,H,W) metres or raw 0-255 nDSM (``dsm_source="ndsm"``); ``label`` (H,W) int64 in
ISPRS order, black (eroded boundaries) = 255; ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

from mssdf.data.io import DataError
from mssdf.data.readers.base import Sample, check_choice, check_subset, require_dir
from mssdf.data.readers.colors import ISPRS
from mssdf.modalities import DSM_SOURCES, DsmSource
from mssdf.data.readers.tiles import Source, TiledSegmentation

TRAIN_AREAS: tuple[int, ...] = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
TEST_AREAS: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
SPLITS = {"train": TRAIN_AREAS, "test": TEST_AREAS, "all": tuple(sorted(TRAIN_AREAS + TEST_AREAS))}
MODALITIES = ("irrg", "dsm")
LABEL_DIRS = {
    "full": ("gts_for_participants", "ground_truth_COMPLETE", "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE", "."),
    "noBoundary": (
        "ground_truth_eroded_COMPLETE",
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
        "gts_eroded_for_participants",
        ".",
    ),
}  # fmt: skip
LAYOUT = __doc__.split("Layout under ``root``::")[1].split("Sample:")[0].rstrip()


def label_name(area: int, variant: str) -> str:
    """File name of an area's label in the ``full`` or ``noBoundary`` variant."""
    return f"top_mosaic_09cm_area{area}" + ("_noBoundary" if variant == "noBoundary" else "") + ".tif"


class Vaihingen(TiledSegmentation):
    """ISPRS Vaihingen segmentation areas or crops (layout in the module docstring).

    Args:
        root: folder holding ``top/``, ``dsm/`` and a label folder.
        split: ``train`` (16 areas), ``test`` (17 areas) or ``all``.
        modalities: subset of ``irrg`` (the orthophoto, returned under ``irrg_key``) and ``dsm``.
        irrg_key: sample key of the IR-R-G orthophoto: ``ms`` (default) or ``rgb``.
        dsm_source: ``dsm`` (float metres) or ``ndsm`` (8-bit BMP).
        labels: ``full``, ``noBoundary`` or None.
        labels_dir: label folder relative to root (default: first candidate holding all areas).
        areas: explicit area numbers overriding the split's list.
        crop_size, stride, train_fraction, fraction_of, seed, unknown_colors, check_georef,
        transform: as for :class:`~mssdf.data.readers.potsdam.Potsdam`.
    """

    LAYOUT = LAYOUT
    CLASSES = ISPRS.classes

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        modalities: Sequence[str] = ("irrg", "dsm"),
        irrg_key: Literal["ms", "rgb"] = "ms",
        dsm_source: DsmSource = "dsm",
        labels: Literal["full", "noBoundary"] | None = "full",
        labels_dir: str | None = None,
        areas: Sequence[int] | None = None,
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
        check_choice(irrg_key, ("ms", "rgb"), "irrg_key")
        check_choice(dsm_source, DSM_SOURCES, "dsm_source")
        check_choice(labels, ("full", "noBoundary", None), "labels")
        area_ids = tuple(int(a) for a in areas) if areas is not None else SPLITS[split]

        per_area: dict[int, list[Source]] = {a: [] for a in area_ids}
        if "irrg" in self.modalities:
            d = require_dir(root / "top", LAYOUT)
            for a in area_ids:
                per_area[a].append(Source(irrg_key, d / f"top_mosaic_09cm_area{a}.tif", "image", None, (3,)))
        if "dsm" in self.modalities:
            if dsm_source == "dsm":
                d = require_dir(root / "dsm", LAYOUT)
                for a in area_ids:
                    per_area[a].append(Source("dsm", d / f"dsm_09cm_matching_area{a}.tif", "height", None, (1,)))
            else:
                d = require_dir(root / "ndsm", LAYOUT)
                for a in area_ids:
                    per_area[a].append(Source("dsm", d / f"ndsm_09cm_matching_area{a}.bmp", "grey", None, (1, 3)))
        self.labels_dir: Path | None = None
        if labels is not None:
            self.labels_dir = self._find_labels(root, labels, labels_dir, area_ids)
            for a in area_ids:
                per_area[a].append(Source("label", self.labels_dir / label_name(a, labels), "color", None, (1, 3, 4)))

        super().__init__(
            root, split, [(f"area{a}", per_area[a]) for a in area_ids], ISPRS, crop_size, stride,
            train_fraction, fraction_of, seed, unknown_colors, check_georef, transform,
        )  # fmt: skip

    @staticmethod
    def _find_labels(root: Path, variant: str, labels_dir: str | None, areas: Sequence[int]) -> Path:
        """The label folder: ``labels_dir`` if given, else the first candidate holding every area."""
        if labels_dir is not None:
            return require_dir(root / labels_dir, LAYOUT)
        candidates = [root / c for c in LABEL_DIRS[variant]]
        for cand in candidates:
            if cand.is_dir() and all((cand / label_name(a, variant)).is_file() for a in areas):
                return cand
        raise DataError(
            f"{root}: no label folder holds the {variant!r} labels ({label_name(areas[0], variant)}, ...) of "
            f"areas {list(areas)}; looked in: {', '.join(str(c) for c in candidates)} "
            f"(gts_for_participants has the train areas only); expected layout:\n{LAYOUT}"
        )
