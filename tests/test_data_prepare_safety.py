"""prepare() never replaces a folder it did not write: raw data, the checkout, foreign folders."""

from __future__ import annotations

import json

import pytest
from data_fakes import SMALL, make_raw

from mssdf.config import from_dict
from mssdf.data.io import DataError
from mssdf.data.prepare import MARKER, PrepareConfig, check_out_dir, prepare, read_index


def _cfg(raw, out, **kw):
    return from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(out), **SMALL, "sources": "lasvegas", **kw})


@pytest.fixture()
def raw(tmp_path):
    return make_raw(tmp_path / "data" / "raw")


def _snapshot(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_out_dir_and_raw_overlap_refused(raw, where):
    out = {"same": raw, "inside": raw / "prepared", "contains": raw.parent}[where]
    before = _snapshot(raw)
    with pytest.raises(DataError, match="raw folder") as err:
        prepare(_cfg(raw, out), log=None)
    assert str(out.resolve()) in str(err.value) and str(raw.resolve()) in str(err.value)
    assert _snapshot(raw) == before
    assert not (raw / "prepared").exists()


@pytest.mark.parametrize("level", [0, 1])
def test_out_dir_at_or_above_repo_root_refused(raw, tmp_path, level):
    repo = tmp_path / "elsewhere" / "repo"
    repo.mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "pyproject.toml").write_text("[project]\nname='x'\n")
    (repo / MARKER).write_text("{}\n")  # even a marker does not make the checkout replaceable
    out = repo if level == 0 else repo.parent
    with pytest.raises(DataError, match="repository root") as err:
        prepare(_cfg(raw, out), root=repo, log=None)
    assert str(repo.resolve()) in str(err.value) and str(out.resolve()) in str(err.value)
    assert (repo / "dvc.yaml").is_file() and (repo / "pyproject.toml").is_file()


def test_this_checkout_refused(raw, tmp_path):
    from pathlib import Path

    import mssdf

    checkout = Path(mssdf.__file__).resolve().parents[1]
    with pytest.raises(DataError, match="repository root"):
        check_out_dir(checkout, raw, root=tmp_path)  # refused even when root points elsewhere


def test_foreign_folder_not_replaced(raw, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious\n")
    with pytest.raises(DataError, match=f"{out.name}.*no {MARKER}"):
        prepare(_cfg(raw, out), log=None)
    assert (out / "thesis.tex").read_text() == "precious\n"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        prepare(_cfg(raw, tmp_path / "afile"), log=None)


def test_prepared_and_empty_folders_are_replaced(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    prepare(_cfg(raw, out), log=None)
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("from an older run\n")
    prepare(_cfg(raw, out), log=None)  # holds the marker: replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "index.csv").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_before_swap_failure_leaves_previous_output(raw, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(raw, out), log=None)
    before = {p: (out / p).read_bytes() for p in _snapshot(out) if (out / p).is_file()}

    def broken(folder):
        (folder / "previews").mkdir()
        (folder / "previews" / "half.png").write_bytes(b"...")
        raise RuntimeError("plotting failed")

    with pytest.raises(RuntimeError, match="plotting failed"):
        prepare(_cfg(raw, out, seed=5), log=None, before_swap=broken)
    assert {p: (out / p).read_bytes() for p in _snapshot(out) if (out / p).is_file()} == before
    assert not (out / "previews").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_previews_written_before_swap(raw, tmp_path):
    from mssdf.reports import preview

    out = tmp_path / "out"
    seen = {}

    def hook(folder):
        seen["folder"] = folder
        seen["summary"] = json.loads((folder / MARKER).read_text())  # complete when the hook runs
        seen["figs"] = preview.write_previews(folder, ["atlanta"])

    prepare(_cfg(raw, out, sources="atlanta"), log=None, before_swap=hook)
    assert seen["folder"] != out and not seen["folder"].exists()
    assert seen["summary"]["config"]["sources"] == "atlanta"
    assert sorted(seen["figs"]) == sorted(preview.PREVIEW_FILES)
    for name in preview.PREVIEW_FILES:
        assert (out / "previews" / f"{name}.png").stat().st_size > 0
    assert read_index(out)
