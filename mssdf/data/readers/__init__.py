"""Readers for the paper datasets in their official on-disk layouts (docs/data.md section B).

Every reader is a ``torch.utils.data.Dataset`` returning a dict: modality tensors under
``rgb`` / ``ms`` / ``dsm`` ((C,H,W) float32, raw values), targets (``label``, ``height``,
``boxes`` + ``box_labels``) and ``meta``. Files, band counts and partner sizes are checked
from headers at construction; any problem raises :class:`~mssdf.data.io.DataError` naming
the file(s). Build one by name with :func:`get_dataset`.

================  ===========================================  ==========================
name              class                                        sample keys
================  ===========================================  ==========================
potsdam           :class:`~.potsdam.Potsdam`                   rgb, ms, dsm, label
vaihingen         :class:`~.vaihingen.Vaihingen`               ms (IR,R,G), dsm, label
us3d              :class:`~.us3d.US3D`                         rgb, ms, height, label
second            :class:`~.second.SECOND`                     t1/t2 {rgb}, label, label_t1/t2
aid               :class:`~.aid.AID`                           rgb, label (scalar)
nwpu_resisc45     :class:`~.nwpu.NWPU_RESISC45`                rgb, label (scalar)
dior              :class:`~.dior.DIOR`                         rgb, boxes (K,4), box_labels
dota              :class:`~.dota.DOTA`                         rgb, boxes (K,8), box_labels
hr_pairs          :class:`~.hrpairs.HRPairs`                   rgb, dsm
================  ===========================================  ==========================
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mssdf.config import ConfigError
from mssdf.data.readers.aid import AID
from mssdf.data.io import IGNORE_INDEX
from mssdf.data.readers.base import ReaderDataset, detection_collate
from mssdf.data.readers.dior import DIOR
from mssdf.data.readers.dota import DOTA
from mssdf.data.readers.hrpairs import HRPairs
from mssdf.data.readers.nwpu import NWPU_RESISC45
from mssdf.data.readers.potsdam import Potsdam
from mssdf.data.readers.second import SECOND
from mssdf.data.readers.us3d import US3D
from mssdf.data.readers.vaihingen import Vaihingen

DATASETS: dict[str, type[ReaderDataset]] = {
    "potsdam": Potsdam,
    "vaihingen": Vaihingen,
    "us3d": US3D,
    "second": SECOND,
    "aid": AID,
    "nwpu_resisc45": NWPU_RESISC45,
    "dior": DIOR,
    "dota": DOTA,
    "hr_pairs": HRPairs,
}
ALIASES = {"nwpu": "nwpu_resisc45", "dfc2019": "us3d", "hrpairs": "hr_pairs"}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (aliases: {', '.join(ALIASES)})"
        )
    return key


def dataset_params(name: str) -> dict[str, Any]:
    """Keyword parameters (besides ``root`` and ``split``) of a dataset and their defaults."""
    sig = inspect.signature(DATASETS[_canonical(name)].__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("self", "root", "split") and p.kind is not p.VAR_KEYWORD
    }


def get_dataset(name: str, root: str | Path, split: str, **kwargs: Any) -> ReaderDataset:
    """Build the reader ``name`` (case-insensitive; ``-`` = ``_``) on ``root`` for ``split``.

    Raises:
        ConfigError: unknown name, unknown keyword argument or invalid parameter value.
        DataError: missing or inconsistent files (named in the message).
    """
    key = _canonical(name)
    valid = dataset_params(key)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for dataset {key!r}; valid: {', '.join(valid)}"
        )
    return DATASETS[key](root, split, **kwargs)


__all__ = [
    "AID", "DIOR", "DOTA", "HRPairs", "NWPU_RESISC45", "Potsdam", "SECOND", "US3D", "Vaihingen",
    "DATASETS", "IGNORE_INDEX", "ReaderDataset", "dataset_params", "detection_collate", "get_dataset",
]  # fmt: skip
