"""AID aerial scene classification: 30 classes, 10,000 images of 600x600.

Layout: ``root/AID/<CamelCaseClass>/<lowerclass>_<n>.jpg`` (``root`` may also be the AID
folder itself). Protocols: 20% or 50% of each class for training (``train_ratio``), seeded.
"""

from __future__ import annotations

from mssdf.data.readers.scene import SceneFolders


class AID(SceneFolders):
    """AID (see :class:`~mssdf.data.readers.scene.SceneFolders` for the arguments)."""

    FOLDER = "AID"
    NUM_CLASSES = 30
    RATIOS = (0.2, 0.5)
    LAYOUT = "    AID/<CamelCaseClass>/<lowerclass>_<n>.jpg   (30 class folders, 600x600 RGB)"
