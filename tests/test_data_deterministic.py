"""Preparation is deterministic: the same inputs give byte-identical outputs (DVC hashes them)."""

import hashlib

import pytest

from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sources import SourceSettings
from mssdf.paths import repo_root

RAW = repo_root(__file__) / "data" / "raw"


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.skipif(not (RAW / "laspy" / "autzen_trim.laz").exists(), reason="data/raw not fetched (make setup fetches it)")
def test_two_preparations_are_byte_identical(tmp_path):
    digests = []
    for name in ("a", "b"):  # the same out_dir each time (it is recorded in summary.json)
        cfg = PrepareConfig(raw_dir=str(RAW), out_dir=str(tmp_path / "out"), sources={"autzen": SourceSettings(), "ign": SourceSettings()})
        prepare(cfg, root=repo_root(__file__), log=None)
        digests.append(_digest(tmp_path / "out"))
        (tmp_path / "out").rename(tmp_path / name)
    assert digests[0] == digests[1]
