"""SECOND semantic change detection (512x512 aerial pairs, 2968 public pairs).

Layout under ``root`` (or under ``root/<split>/`` when such a folder exists)::

    im1/NNNNN.png      image at time 1 (RGB)
    im2/NNNNN.png      image at time 2
    label1/NNNNN.png   colour label at time 1
    label2/NNNNN.png   colour label at time 2

Label colours (:data:`~mssdf.data.readers.colors.SECOND`): unchanged (255,255,255),
water (0,0,255), ground (128,128,128), low vegetation (0,128,0), tree (0,255,0),
building (128,0,0), playground (255,0,0).

Sample (a pair, each time a modality dict so the encoder runs on ``t1`` and ``t2`` alike)::

    {"t1": {"rgb": (3,H,W) float32}, "t2": {"rgb": (3,H,W) float32},
     "label":    (H,W) int64 binary change, 1 where label1 or label2 is not "unchanged",
     "label_t1": (H,W) int64 semantic class at time 1, 0 = unchanged, 1..6 = water..playground,
     "label_t2": (H,W) int64 same at time 2,
     "meta": {"id": "NNNNN"}}

Splits: ``all``; or ``train``/``test`` from ``root/train``/``root/test`` folders when they
exist, else a seeded random split of the pairs under ``root`` (``test_fraction``, default
0.2, the common 4:1 protocol; which pairs the paper used is not published). ``val``: with
``val_fraction > 0``, that fraction of the train pairs (seeded; no longer in ``train``),
else empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np

from mssdf.data.io import IGNORE_INDEX, DataError
from mssdf.data.readers.base import (
    ReaderDataset,
    Sample,
    check_choice,
    check_fraction,
    image_header,
    list_files,
    read_image,
    require_dir,
    to_tensor,
)
from mssdf.data.readers.colors import SECOND as PALETTE
from mssdf.data.readers.colors import read_color_label
from mssdf.data.readers.splits import holdout_split

LAYOUT = __doc__.split("``root/<split>/`` when such a folder exists)::")[1].split("Label colours")[0].rstrip()
FOLDERS = ("im1", "im2", "label1", "label2")
SUFFIXES = (".png", ".jpg", ".tif")


class SECOND(ReaderDataset):
    """SECOND change-detection pairs (layout and sample structure in the module docstring).

    Args:
        root: dataset folder.
        split: ``all``, ``train``, ``val`` or ``test``.
        test_fraction, seed: seeded split when no split folders exist.
        val_fraction: fraction of the train pairs held out as ``val`` (seeded; 0: ``val`` is empty).
        check_headers: compare every partner's header (size, bands) at construction.
        unknown_colors: ``error`` or ``ignore`` (-> 255) for colours outside the palette.
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT
    CLASSES = PALETTE.classes

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        test_fraction: float = 0.2,
        seed: int = 0,
        val_fraction: float = 0.0,
        check_headers: bool = True,
        unknown_colors: Literal["error", "ignore"] = "error",
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(split, ("all", "train", "val", "test"), "split")
        check_choice(unknown_colors, ("error", "ignore"), "unknown_colors")
        self.unknown_colors = unknown_colors
        if val_fraction:
            check_fraction(val_fraction, "val_fraction", allow_one=False)
        own_val = split == "val" and (self.root / "val" / "im1").is_dir()  # an official val folder
        folder_split = "train" if split == "val" and not own_val else split
        base = self.root / folder_split if split != "all" and (self.root / folder_split / "im1").is_dir() else self.root
        self.base = base
        dirs = {f: require_dir(base / f, LAYOUT) for f in FOLDERS}
        names = {f: {p.stem: p for p in list_files(d, SUFFIXES)} for f, d in dirs.items()}
        ids = sorted(names["im1"])
        if not ids:
            raise DataError(f"{dirs['im1']}: no images found; expected layout:\n{LAYOUT}")
        for f in FOLDERS[1:]:
            lonely = sorted(set(names[f]) - set(ids))
            if lonely:
                raise DataError(f"{names[f][lonely[0]]}: no partner {dirs['im1'] / lonely[0]}.* in im1/")
            missing = [i for i in ids if i not in names[f]]
            if missing:
                raise DataError(
                    f"{dirs[f] / (missing[0] + '.png')}: file not found (partner of {names['im1'][missing[0]]})"
                    + (f"; {len(missing)} missing in {dirs[f]}" if len(missing) > 1 else "")
                )
        if split != "all" and base == self.root:
            train, test = holdout_split(len(ids), test_fraction, seed)
            ids = [ids[i] for i in (test if split == "test" else train)]
        if split in ("train", "val") and not own_val:
            keep, val = holdout_split(len(ids), val_fraction, seed + 1) if val_fraction else (list(range(len(ids))), [])
            ids = [ids[i] for i in (keep if split == "train" else val)]
        self.samples = [{f: names[f][i] for f in FOLDERS} for i in ids]
        self.ids = ids
        if check_headers:
            for files in self.samples:
                self._check(files)

    @staticmethod
    def _check(files: dict[str, Path]) -> None:
        ref = files["im1"]
        _, h, w = image_header(ref, 3)
        for f in FOLDERS[1:]:
            _, hh, ww = image_header(files[f], 3, partner=ref)
            if (hh, ww) != (h, w):
                raise DataError(f"{files[f]}: size {hh}x{ww} differs from its partner {ref} ({h}x{w})")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        files = self.samples[index]
        sem1 = read_color_label(files["label1"], PALETTE, unknown=self.unknown_colors)
        sem2 = read_color_label(files["label2"], PALETTE, unknown=self.unknown_colors)
        change = ((sem1 != 0) | (sem2 != 0)).astype(np.int64)
        change[(sem1 == IGNORE_INDEX) | (sem2 == IGNORE_INDEX)] = IGNORE_INDEX  # unknown_colors="ignore"
        return {
            "t1": {"rgb": to_tensor(read_image(files["im1"], 3))},
            "t2": {"rgb": to_tensor(read_image(files["im2"], 3))},
            "label": to_tensor(change),
            "label_t1": to_tensor(sem1),
            "label_t2": to_tensor(sem2),
            "meta": {"id": self.ids[index]},
        }
