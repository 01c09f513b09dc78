"""The fetch step on fake pinned archives: hash check, selective extraction, idempotence, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from mssdf.data import fetch as F
from mssdf.data.io import DataError


@pytest.fixture()
def fake_archives(tmp_path, monkeypatch):
    """Fake laspy sdist / solaris wheel with every member plus junk; ARCHIVES repinned to them."""
    src = tmp_path / "archives"
    src.mkdir()
    pinned = []
    for a in F.ARCHIVES:
        path = src / a.filename
        members = {m: f"content of {m}".encode() for m in a.members} | {"junk/other.bin": b"x" * 100}
        if a.filename.endswith(".tar.gz"):
            with tarfile.open(path, "w:gz") as tar:
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:
            with zipfile.ZipFile(path, "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        pinned.append(replace(a, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    monkeypatch.setattr(F, "ARCHIVES", tuple(pinned))
    return src


def test_fetch_extracts_only_needed_files(fake_archives, tmp_path):
    out = F.fetch(tmp_path / "raw", archives_dir=fake_archives, quiet=True)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == F.expected_files()
    assert (out / "laspy/autzen_trim.laz").read_bytes() == b"content of laspy-2.7.0/tests/data/autzen_trim.laz"
    assert "CC BY-SA 4.0" in (out / "LICENSE.md").read_text() and "Etalab" in (out / "LICENSE.md").read_text()
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == set(F.expected_files()) - {"MANIFEST.json"}


def test_fetch_is_idempotent_and_deterministic(fake_archives, tmp_path):
    out = F.fetch(tmp_path / "raw", archives_dir=fake_archives, quiet=True)
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    F.fetch(out, archives_dir=tmp_path / "nowhere", quiet=True)  # nothing to do: no archive needed
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == snapshot
    other = F.fetch(tmp_path / "raw2", archives_dir=fake_archives, quiet=True)
    for p, (data, _) in snapshot.items():
        assert (other / p.relative_to(out)).read_bytes() == data


def test_fetch_repairs_modified_file(fake_archives, tmp_path):
    out = F.fetch(tmp_path / "raw", archives_dir=fake_archives, quiet=True)
    (out / "solaris/sample_geotiff.tif").write_bytes(b"tampered")
    assert F.check_manifest(out) == ["solaris/sample_geotiff.tif"]
    F.fetch(out, archives_dir=fake_archives, quiet=True)
    assert F.check_manifest(out) == []


def test_hash_mismatch_fails_clearly(fake_archives, tmp_path, monkeypatch):
    bad = tuple(replace(a, sha256="0" * 64) if a.source == "solaris" else a for a in F.ARCHIVES)
    monkeypatch.setattr(F, "ARCHIVES", bad)
    with pytest.raises(DataError, match=r"solaris-0\.4\.0-py3-none-any\.whl: sha256 .* does not match the pinned 0{64}"):
        F.fetch(tmp_path / "raw", archives_dir=fake_archives, quiet=True)


def test_missing_member_fails(fake_archives, tmp_path, monkeypatch):
    a = F.ARCHIVES[0]
    monkeypatch.setattr(F, "ARCHIVES", (replace(a, members={**a.members, "nope.laz": "nope.laz"}),))
    with pytest.raises(DataError, match="member nope.laz missing"):
        F.fetch(tmp_path / "raw", archives_dir=fake_archives, quiet=True)


def test_pinned_hashes_match_docs():
    assert {a.filename: a.sha256 for a in F.ARCHIVES} == {
        "laspy-2.7.0.tar.gz": "f56feb5445e75d6ff12ee814aab6a35339290e75264ff277c6bf553f3025a3f5",
        "solaris-0.4.0-py3-none-any.whl": "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df",
        "deepforest-2.1.0-py3-none-any.whl": "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54",
    }
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert all(a.sha256 in docs for a in F.ARCHIVES)  # the data spec names every pinned hash
