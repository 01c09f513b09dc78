"""Base for scene classification datasets stored as one folder per class (AID, NWPU-RESISC45).

Classes are the sub-folder names, sorted; the class index is the position in that list.
``train``/``test`` come from a seeded per-class split with ``train_ratio`` of each class
in train (the rest in test; ``train_ratio`` in (0, 1], 1: every image in train and an
empty test); ``all`` returns every image. A class that the split leaves without an image
(a class folder with a single image, or a very small ratio) is an error naming the folder.
Sample: ``rgb`` (3,H,W) float32 raw 0-255, ``label`` int64 scalar tensor, ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mssdf.data.io import DataError
from mssdf.data.readers.base import ReaderDataset, Sample, check_choice, check_fraction, list_files, read_image, to_tensor
from mssdf.data.readers.splits import stratified_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class SceneFolders(ReaderDataset):
    """Images in ``<folder>/<class>/*`` with a seeded stratified train/test split.

    Subclasses set ``FOLDER`` (the dataset folder name, looked up under ``root`` or taken
    as ``root`` itself), ``NUM_CLASSES``, ``RATIOS`` (the protocol's training ratios) and
    ``LAYOUT``.
    """

    FOLDER: str = ""
    NUM_CLASSES: int = 0
    RATIOS: tuple[float, ...] = ()

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        train_ratio: float | None = None,
        seed: int = 0,
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(split, ("train", "test", "all"), "split")
        self.train_ratio = check_fraction(self.RATIOS[0] if train_ratio is None else train_ratio, "train_ratio")
        self.seed = seed
        folder = self.root / self.FOLDER if (self.root / self.FOLDER).is_dir() else self.root
        self.folder = folder
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = tuple(p.name for p in class_dirs)
        if len(self.classes) != self.NUM_CLASSES:
            raise DataError(
                f"{folder}: {len(self.classes)} class folder(s) found, expected {self.NUM_CLASSES} "
                f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}); "
                f"expected layout:\n{self.LAYOUT}"
            )
        files: list[Path] = []
        labels: list[int] = []
        for index, d in enumerate(class_dirs):
            images = list_files(d, IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"{d}: class folder without images; expected layout:\n{self.LAYOUT}")
            files += images
            labels += [index] * len(images)
        if split == "all":
            keep = list(range(len(files)))
        elif self.train_ratio == 1.0:
            keep = list(range(len(files))) if split == "train" else []
        else:
            train, test = stratified_split(labels, self.train_ratio, seed)
            keep = train if split == "train" else test
            counts = np.bincount(np.asarray(labels)[keep].astype(np.int64), minlength=len(class_dirs))
            empty = [class_dirs[k] for k in np.flatnonzero(counts == 0)]
            if empty:
                n = sum(1 for lab in labels if lab == self.classes.index(empty[0].name))
                raise DataError(f"{empty[0]}: class folder has no image in the {split!r} split ({n} image(s), "
                                f"train_ratio={self.train_ratio}, seed={seed})"
                                + (f"; {len(empty)} classes are missing from it" if len(empty) > 1 else ""))
        self.files = [files[i] for i in keep]
        self.labels = [labels[i] for i in keep]

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> np.ndarray:
        """Images per class in this split, shape ``(NUM_CLASSES,)``."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.NUM_CLASSES)

    def load(self, index: int) -> Sample:
        path = self.files[index]
        return {
            "rgb": to_tensor(read_image(path, (3, 4), bands=(1, 2, 3))),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "meta": {"id": path.stem, "file": f"{path.parent.name}/{path.name}"},
        }
