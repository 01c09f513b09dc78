"""NWPU-RESISC45 scene classification: 45 classes x 700 images of 256x256.

Layout: ``root/NWPU-RESISC45/<class>/<class>_{001..700}.jpg`` (``root`` may also be that
folder itself). Exactly 45 class folders are required (the authors' config had 30).
Protocols: 10% or 20% of each class for training (``train_ratio``), seeded.
"""

from __future__ import annotations

from mssdf.data.readers.scene import SceneFolders


class NWPU_RESISC45(SceneFolders):  # noqa: N801 - the dataset's name
    """NWPU-RESISC45 (see :class:`~mssdf.data.readers.scene.SceneFolders` for the arguments)."""

    FOLDER = "NWPU-RESISC45"
    NUM_CLASSES = 45
    RATIOS = (0.1, 0.2)
    LAYOUT = "    NWPU-RESISC45/<class>/<class>_{001..700}.jpg   (45 class folders, 256x256 RGB)"
