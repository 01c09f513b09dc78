"""DIOR object detection with horizontal boxes (23,463 images of 800x800, 20 classes).

Layout under ``root``::

    JPEGImages-trainval/NNNNN.jpg          train and val images
    JPEGImages-test/NNNNN.jpg              test images
    Annotations/Horizontal Bounding Boxes/NNNNN.xml   (VOC XML; Annotations/NNNNN.xml accepted)
    Main/{train,val,test}.txt              image ids, one per line (ImageSets/Main/ accepted)

Class names in the XML are mixed-case (``Expressway-Service-area``, ``golffield``, ...);
they are normalised (lower case, no ``-``/``_``/spaces) and matched to :data:`CLASSES`.
Sample: ``rgb`` (3,H,W) float32, ``boxes`` (K,4) float32 ``x1,y1,x2,y2`` as written in
the XML (VOC pixel coordinates, not shifted), ``box_labels`` (K,) int64, ``difficult``
(K,) int64 (0 when the XML has no flag), ``meta``. Use
:func:`~mssdf.data.readers.base.detection_collate` to batch.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np

from mssdf.data.io import DataError
from mssdf.data.readers.base import ReaderDataset, Sample, check_choice, read_image, to_tensor

LAYOUT = __doc__.split("Layout under ``root``::")[1].split("Class names")[0].rstrip()
CLASSES: tuple[str, ...] = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "expresswayservicearea", "expresswaytollstation", "golffield", "groundtrackfield", "harbor",
    "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)  # fmt: skip
_INDEX = {c: i for i, c in enumerate(CLASSES)}


def normalise_name(name: str) -> str:
    """``"Expressway-Service-area"`` -> ``"expresswayservicearea"``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def parse_voc(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a VOC XML file into ``(boxes (K,4) float32, labels (K,) int64, difficult (K,) int64)``."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError as err:
        raise DataError(f"{path}: annotation file not found") from err
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid XML ({err})") from err
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        cls = _INDEX.get(normalise_name(name))
        if cls is None:
            raise DataError(f"{path}: object {k} has unknown class {name!r}; known: {', '.join(CLASSES)}")
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError) as err:
            raise DataError(f"{path}: object {k} ({name}) has a missing or non-numeric bndbox") from err
        if box[2] < box[0] or box[3] < box[1]:
            raise DataError(f"{path}: object {k} ({name}) has an inverted box {box}")
        boxes.append(box)
        labels.append(cls)
        difficult.append(int(obj.findtext("difficult") or 0))
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(difficult, np.int64),
    )


class DIOR(ReaderDataset):
    """DIOR horizontal-box detection (layout in the module docstring).

    Args:
        root: dataset folder.
        split: ``train``, ``val``, ``trainval`` (train + val lists, or ``trainval.txt``) or ``test``.
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT
    CLASSES = CLASSES

    def __init__(self, root: str | Path, split: str = "trainval", transform: Callable[[Sample], Sample] | None = None):
        super().__init__(root, split, transform)
        check_choice(split, ("train", "val", "trainval", "test"), "split")
        lists = next((self.root / d for d in ("Main", "ImageSets/Main") if (self.root / d).is_dir()), None)
        if lists is None:
            raise DataError(f"{self.root / 'Main'}: folder not found (nor ImageSets/Main); expected layout:\n{LAYOUT}")
        parts = ["train", "val"] if split == "trainval" and not (lists / "trainval.txt").is_file() else [split]
        ids: list[str] = []
        for part in parts:
            list_file = lists / f"{part}.txt"
            if not list_file.is_file():
                raise DataError(f"{list_file}: split list not found; expected layout:\n{LAYOUT}")
            ids += [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{lists}: empty split list(s) for {split!r}")
        image_dir = self.root / ("JPEGImages-test" if split == "test" else "JPEGImages-trainval")
        if not image_dir.is_dir() and (self.root / "JPEGImages").is_dir():
            image_dir = self.root / "JPEGImages"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: folder not found; expected layout:\n{LAYOUT}")
        ann_dir = self.root / "Annotations" / "Horizontal Bounding Boxes"
        if not ann_dir.is_dir():
            ann_dir = self.root / "Annotations"
        if not ann_dir.is_dir():
            raise DataError(f"{self.root / 'Annotations' / 'Horizontal Bounding Boxes'}: folder not found; "
                            f"expected layout:\n{LAYOUT}")  # fmt: skip
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        annotations = {p.stem for p in ann_dir.glob("*.xml")}
        self.samples: list[tuple[str, Path, Path]] = []
        for i in ids:
            if i not in images:
                raise DataError(f"{image_dir / (i + '.jpg')}: image of id {i} (listed in {lists}) not found")
            if i not in annotations:
                raise DataError(f"{ann_dir / (i + '.xml')}: file not found (partner of {images[i]})")
            self.samples.append((i, images[i], ann_dir / f"{i}.xml"))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        sid, image, ann = self.samples[index]
        boxes, labels, difficult = parse_voc(ann)
        return {
            "rgb": to_tensor(read_image(image, 3)),
            "boxes": to_tensor(boxes),
            "box_labels": to_tensor(labels),
            "difficult": to_tensor(difficult),
            "meta": {"id": sid},
        }


__all__ = ["DIOR", "CLASSES", "normalise_name", "parse_voc"]
