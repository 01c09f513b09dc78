"""prepare() never replaces a folder it did not write: raw data, the checkout, foreign folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_fakes import SMALL, make_raw, small_sources

from mssdf.config import from_dict
from mssdf.data.io import DataError
from mssdf.data.index import read_index
from mssdf.data.prepare import MARKER, PrepareConfig, check_out_dir, prepare, remove_leftovers, work_dir


def _cfg(raw, out, **kw):
    return from_dict(PrepareConfig, {"raw_dir": str(raw), "out_dir": str(out), **SMALL, "sources": small_sources("lasvegas"), **kw})


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

    prepare(_cfg(raw, out, sources=small_sources("atlanta")), log=None, before_swap=hook)
    assert seen["folder"] != out and not seen["folder"].exists()
    assert list(seen["summary"]["config"]["sources"]) == ["atlanta"]
    assert sorted(seen["figs"]) == sorted(preview.PREVIEW_FILES)
    for name in preview.PREVIEW_FILES:
        assert (out / "previews" / f"{name}.png").stat().st_size > 0
    assert read_index(out)


# ----------------------------------------------------------------------------- crash leftovers
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftovers(folder, name="out"):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.tmp-") or p.name.startswith(f".{name}.old-"))


def test_work_folders_name_host_and_pid(tmp_path):
    out = tmp_path / "prepared"
    tmp = work_dir(out, "tmp")
    assert tmp.parent == tmp_path and tmp.name.startswith(".prepared.tmp-") and tmp.name.endswith(f"-{os.getpid()}")
    assert work_dir(out, "old", host="h-1.lan", pid=7).name == ".prepared.old-h-1.lan-7"


def test_stale_work_folders_removed_live_and_foreign_kept(raw, tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale = [work_dir(out, "tmp", pid=dead), work_dir(out, "old", pid=dead)]
        kept = [
            work_dir(out, "tmp", pid=sleeper.pid),  # a live run on this host
            work_dir(out, "old", pid=os.getppid()),
            work_dir(out, "tmp", host="another-host", pid=dead),  # another host's run: its pids mean nothing here
            work_dir(out, "old", host="another-host", pid=dead),
            work_dir(tmp_path / "outer", "tmp", pid=dead),  # another output's folder
            tmp_path / ".out.tmp-nopid", tmp_path / ".out.tmp-", tmp_path / ".out.backup", tmp_path / ".cache",
            tmp_path / f"out.tmp-{work_dir(out, 'tmp', pid=dead).name.split('.tmp-')[1]}",  # no leading dot
        ]
        for p in stale + kept:
            p.mkdir()
            (p / "file").write_text("x")
        prepare(_cfg(raw, out), log=None)
        assert [p.name for p in stale if p.exists()] == []
        assert all((p / "file").is_file() for p in kept)
        assert (out / MARKER).is_file() and read_index(out)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_legacy_work_folders_without_host_follow_the_pid_rule(tmp_path):
    """Folders named the older way (``.<out>.tmp-<pid>``, no host) count as this host's."""
    out = tmp_path / "out"
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale = [tmp_path / f".out.tmp-{dead}", tmp_path / f".out.old-{dead}"]
        kept = [tmp_path / f".out.tmp-{sleeper.pid}", tmp_path / f".out.old-{os.getppid()}",  # live runs
                tmp_path / f".outer.tmp-{dead}", tmp_path / f".out.tmp-{dead}x"]
        for p in stale + kept:
            p.mkdir()
            (p / "file").write_text("x")
        assert sorted(remove_leftovers(out)) == sorted(stale)
        assert [p.name for p in stale if p.exists()] == []
        assert all((p / "file").is_file() for p in kept)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_legacy_old_folder_put_back(raw, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(raw, out), log=None)
    before = (out / "index.csv").read_bytes()
    old = tmp_path / f".out.old-{_dead_pid()}"
    os.replace(out, old)  # a pre-host run killed between its two renames
    assert remove_leftovers(out) == [old]
    assert (out / "index.csv").read_bytes() == before and not old.exists()


def test_pid_of_another_user_counts_as_alive(tmp_path, monkeypatch):
    out = tmp_path / "out"
    folder = work_dir(out, "tmp", pid=_dead_pid())
    folder.mkdir()

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert remove_leftovers(out) == [] and folder.is_dir()


def test_run_killed_between_renames_gets_previous_output_back(raw, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(raw, out), log=None)
    before = (out / "index.csv").read_bytes()
    dead = _dead_pid()
    old, tmp = work_dir(out, "old", pid=dead), work_dir(out, "tmp", pid=dead)
    os.replace(out, old)  # the state after the first of the swap's two renames
    tmp.mkdir()
    remove_leftovers(out)
    assert (out / "index.csv").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_sigkilled_run_leaves_nothing_for_the_next(raw, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(raw, out), log=None)
    before = (out / "index.csv").read_bytes()
    # a run that hangs once its temporary folder is complete (before the swap), then gets SIGKILL
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from data_fakes import SMALL, small_sources\n"
        "from mssdf.config import from_dict\n"
        "from mssdf.data.prepare import PrepareConfig, prepare\n"
        f"cfg = from_dict(PrepareConfig, {{**SMALL, 'raw_dir': {str(raw)!r}, 'out_dir': {str(out)!r}, "
        "'sources': small_sources('lasvegas'), 'seed': 1})\n"
        "prepare(cfg, log=None, before_swap=lambda folder: time.sleep(600))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not any((p / MARKER).is_file() for p in tmp_path.glob(".out.tmp-*")):
            assert proc.poll() is None, "the preparation ended before it was killed"
            assert time.monotonic() < deadline, "no temporary folder appeared"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _leftovers(tmp_path) == [work_dir(out, "tmp", pid=proc.pid).name]  # left behind for good
    assert (out / "index.csv").read_bytes() == before  # the previous output is untouched

    summary = prepare(_cfg(raw, out, seed=1), log=None)
    assert _leftovers(tmp_path) == []
    assert json.loads((out / MARKER).read_text()) == summary and summary["config"]["seed"] == 1
    rows = read_index(out)
    assert rows and all((out / rel).is_file() for r in rows for rel in r["files"].values())
