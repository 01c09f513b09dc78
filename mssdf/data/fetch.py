"""Fetch the embedded real sample (docs/data.md section A) with pip alone.

Three pinned archives from the package registry are downloaded (never installed), checked
against their sha256, and only the needed files are extracted into ``<out>/<source>/``:

* ``laspy==2.7.0`` source archive -> ``laspy/autzen_trim.laz``, ``laspy/append-bug.laz``
* ``solaris==0.4.0`` wheel -> ``solaris/preproc_tutorial/{ms,pan}{1,2,3}.tif``, the
  Atlanta (SpaceNet 4) and Las Vegas (SpaceNet 3) samples;
* ``deepforest==2.1.0`` wheel -> ``deepforest/``: four NEON airborne RGB images (0.1 m)
  and their 951 tree-crown boxes (Pascal VOC XML; CSV for OSBS_029).

pip >= 24.1 refuses solaris 0.4.0's metadata, so the wheel is downloaded with a pip older
than 24.1: the running interpreter's own pip if it is old enough, else one installed into
a throw-away virtual environment in a temporary folder.

The output is deterministic (extracted bytes, plus ``LICENSE.md``, ``README.md`` and
``MANIFEST.json`` written from constants), so ``data.dvc`` stays valid. A second run
finds every file with its manifest hash and downloads nothing.

CLI: ``python -m mssdf.data.fetch --out data/raw [--archives DIR] [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mssdf.atomic import atomic_write
from mssdf.data.io import DataError


@dataclass(frozen=True)
class Archive:
    """A pinned archive on the package registry and the members we keep."""

    source: str  # folder under the output root
    filename: str
    sha256: str
    pip_args: tuple[str, ...]  # arguments after ``pip download --no-deps``
    members: dict[str, str]  # archive member -> path relative to ``<out>/<source>``
    needs_old_pip: bool = False


ARCHIVES: tuple[Archive, ...] = (
    Archive(
        source="laspy",
        filename="laspy-2.7.0.tar.gz",
        sha256="f56feb5445e75d6ff12ee814aab6a35339290e75264ff277c6bf553f3025a3f5",
        pip_args=("--no-binary", "laspy", "laspy==2.7.0"),
        members={
            "laspy-2.7.0/tests/data/autzen_trim.laz": "autzen_trim.laz",
            "laspy-2.7.0/tests/data/append-bug.laz": "append-bug.laz",
            "laspy-2.7.0/LICENSE.txt": "LICENSE-laspy.txt",
        },
    ),
    Archive(
        source="solaris",
        filename="solaris-0.4.0-py3-none-any.whl",
        sha256="09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df",
        pip_args=("--only-binary", ":all:", "solaris==0.4.0"),
        members={
            **{f"solaris/data/preproc_tutorial/{k}{i}.tif": f"preproc_tutorial/{k}{i}.tif" for k in ("ms", "pan") for i in (1, 2, 3)},
            **{
                f"solaris/data/{name}": name
                for name in (
                    "sample_geotiff.tif",
                    "geotiff_labels.geojson",
                    "sample_fp_mask.tif",
                    "road_mask_input.tif",
                    "sample_road_raster_mask.tif",
                    "sample_roads.geojson",
                )
            },
        },
        needs_old_pip=True,
    ),
    Archive(
        source="deepforest",
        filename="deepforest-2.1.0-py3-none-any.whl",
        sha256="8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54",
        pip_args=("--only-binary", ":all:", "deepforest==2.1.0"),
        members={
            **{f"deepforest/data/{name}": name for name in (
                "OSBS_029.tif", "OSBS_029.xml", "OSBS_029.csv",
                "2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_528000_4978000_image_crop2.xml",
                "2019_YELL_2_541000_4977000_image_crop.png", "2019_YELL_2_541000_4977000_image_crop.xml",
                "SOAP_061.png", "SOAP_061.xml",
            )},
            "deepforest-2.1.0.dist-info/licenses/LICENSE": "LICENSE-deepforest.txt",
        },
    ),
)

OLD_PIP_SPEC = "pip<24.1"

LICENSE_MD = """\
# Licences and attribution of the embedded real sample

These files were extracted, unmodified, from three archives on the Python package index
(see README.md). They keep their original licences; anything derived from them (the
prepared tiles in `data/prepared`) inherits the same terms, and CC BY-SA data stays
CC BY-SA when redistributed.

| files | origin | licence |
|---|---|---|
| `laspy/autzen_trim.laz` | Autzen Stadium, Eugene, Oregon: the standard PDAL/laspy airborne-lidar sample, shipped in the laspy 2.7.0 source archive (tests/data) | BSD-2-Clause (laspy; PDAL sample data); see `laspy/LICENSE-laspy.txt` |
| `laspy/append-bug.laz` | Lambert-93 (EPSG:2154) lidar with RGB + NIR and ASPRS classes, most likely an IGN LiDAR HD extract, shipped in the laspy 2.7.0 source archive | Licence Ouverte / Etalab Open Licence 2.0 (IGN) - attribution: "IGN - LiDAR HD" (provenance not certain: treat as Etalab 2.0 with IGN attribution); archive under BSD-2-Clause |
| `solaris/preproc_tutorial/ms{1,2,3}.tif`, `pan{1,2,3}.tif` | SpaceNet 6 (Rotterdam), from the solaris 0.4.0 wheel | CC BY-SA 4.0 - "SpaceNet 6: Multi-Sensor All Weather Mapping", SpaceNet LLC / Capella Space / Maxar |
| `solaris/sample_geotiff.tif`, `geotiff_labels.geojson`, `sample_fp_mask.tif` | SpaceNet 4 (Atlanta), from the solaris 0.4.0 wheel | CC BY-SA 4.0 (SpaceNet, Maxar imagery); building footprint attributes from OpenStreetMap, (c) OpenStreetMap contributors, ODbL 1.0 |
| `solaris/road_mask_input.tif`, `sample_road_raster_mask.tif`, `sample_roads.geojson` | SpaceNet 3 (Las Vegas), from the solaris 0.4.0 wheel | CC BY-SA 4.0 (SpaceNet, Maxar imagery) |
| `deepforest/OSBS_029.tif`, `2019_YELL_2_*.png`, `SOAP_061.png` | NEON Airborne Observation Platform RGB camera mosaics (0.1 m): Ordway-Swisher (OSBS, Florida), Yellowstone (YELL), Soaproot Saddle (SOAP, California); shipped in the deepforest 2.1.0 wheel | NEON data are released to the public domain under CC0 1.0 (NEON data usage policy); attribution to the National Ecological Observatory Network (NEON), no endorsement implied |
| `deepforest/*.xml`, `OSBS_029.csv` | tree-crown boxes (Tree; SOAP_061: Alive / Dead) annotated by the DeepForest authors (Weinstein et al., weecology), from the deepforest 2.1.0 wheel | MIT (the deepforest package; see `deepforest/LICENSE-deepforest.txt`) |

The solaris code itself is Apache-2.0; laspy is BSD-2-Clause; deepforest is MIT. Licence texts:
BSD-2-Clause https://opensource.org/license/bsd-2-clause,
Etalab 2.0 https://www.etalab.gouv.fr/licence-ouverte-open-licence,
CC BY-SA 4.0 https://creativecommons.org/licenses/by-sa/4.0/,
ODbL 1.0 https://opendatacommons.org/licenses/odbl/1-0/,
CC0 1.0 https://creativecommons.org/publicdomain/zero/1.0/ (NEON: https://www.neonscience.org/usage-policies),
MIT https://opensource.org/license/mit.
"""

README_MD = """\
# data/raw: the embedded real sample

Written by `python -m mssdf.data.fetch --out data/raw` (run by `make setup`); tracked by
DVC through `data.dvc`. Do not edit: re-run the fetch instead.

Sources (downloaded with `pip download --no-deps`, sha256-checked, never installed):

- `laspy==2.7.0` source archive `laspy-2.7.0.tar.gz`
  (sha256 f56feb5445e75d6ff12ee814aab6a35339290e75264ff277c6bf553f3025a3f5)
- `solaris==0.4.0` wheel `solaris-0.4.0-py3-none-any.whl`
  (sha256 09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df),
  downloaded with pip<24.1 (newer pip rejects its metadata).
- `deepforest==2.1.0` wheel `deepforest-2.1.0-py3-none-any.whl`
  (sha256 8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54).

Contents: Autzen lidar (RGB, heights in feet, ground class), an IGN-like Lambert-93
lidar extract (RGB, NIR, ASPRS classes), SpaceNet 6 Rotterdam multispectral (1 m) and
panchromatic (0.5 m) pairs, the SpaceNet 4 Atlanta panchromatic image with 43 building
footprints, the SpaceNet 3 Las Vegas panchromatic image with its road mask, and four NEON
airborne RGB images (0.1 m; OSBS_029 georeferenced, the PNGs not) with 951 tree-crown
boxes (SOAP_061: alive / dead).
`MANIFEST.json` lists every file's sha256. Licences: see LICENSE.md.

Change-detection and scene-classification labels do NOT exist in these sources: the
preparation step derives them (synthetic changes, derived scene classes) and marks them.
"""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pip_version(python: str | Path) -> tuple[int, ...] | None:
    """pip's version for the interpreter ``python`` (None if it has no pip)."""
    try:
        out = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    parts = out.split()[1].split(".")
    return tuple(int(p) for p in parts[:2] if p.isdigit())


def _old_pip_python(workdir: Path) -> str:
    """An interpreter whose pip is older than 24.1 (this one, or a throw-away venv's)."""
    version = _pip_version(sys.executable)
    if version is not None and version < (24, 1):
        return sys.executable
    env_dir = workdir / "oldpip-venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if (_pip_version(python) or (99,)) >= (24, 1):
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", OLD_PIP_SPEC], check=True)
    return str(python)


def download(archive: Archive, dest: Path, workdir: Path) -> Path:
    """``pip download --no-deps`` one archive into ``dest``; returns the file path."""
    python = _old_pip_python(workdir) if archive.needs_old_pip else sys.executable
    cmd = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d", str(dest), *archive.pip_args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / archive.filename
    if result.returncode != 0 or not path.exists():
        raise DataError(f"{archive.filename}: `{' '.join(cmd)}` failed (rc={result.returncode}):\n{result.stderr[-2000:]}")
    return path


def verify(path: Path, expected: str) -> None:
    """Raise DataError unless ``path`` has sha256 ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise DataError(f"{path}: sha256 {got} does not match the pinned {expected}; refusing to use this archive")


def extract(archive: Archive, path: Path, out: Path) -> list[Path]:
    """Extract the archive's ``members`` (only those) into ``out/<source>``."""
    written = []
    target_root = out / archive.source
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as tar:
            names = set(tar.getnames())
            for member, rel in archive.members.items():
                if member not in names:
                    raise DataError(f"{path}: member {member} missing from the archive")
                data = tar.extractfile(member).read()
                written.append(_write(target_root / rel, data))
    else:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for member, rel in archive.members.items():
                if member not in names:
                    raise DataError(f"{path}: member {member} missing from the archive")
                written.append(_write(target_root / rel, zf.read(member)))
    return written


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically (unique temporary name, then rename: :mod:`mssdf.atomic`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _text_files() -> dict[str, bytes]:
    return {"LICENSE.md": LICENSE_MD.encode(), "README.md": README_MD.encode()}


def expected_files() -> list[str]:
    """Every path (relative to the output root) that a complete fetch holds."""
    rels = [f"{a.source}/{rel}" for a in ARCHIVES for rel in a.members.values()]
    return sorted(rels + list(_text_files()) + ["MANIFEST.json"])


def check_manifest(out: Path) -> list[str]:
    """Relative paths that are missing or differ from ``out/MANIFEST.json`` (all if no manifest)."""
    manifest_path = out / "MANIFEST.json"
    if not manifest_path.exists():
        return expected_files()
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise DataError(f"{manifest_path}: unreadable manifest ({err}); delete it or run with --force") from err
    bad = [rel for rel in expected_files() if rel != "MANIFEST.json" and rel not in manifest]
    for rel, digest in manifest.items():
        path = out / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return sorted(set(bad))


def fetch(out: str | Path, archives_dir: str | Path | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Fetch, verify and extract the sample into ``out`` (idempotent).

    Args:
        out: output folder (e.g. ``data/raw``).
        archives_dir: a folder already holding the pinned archives (no download then);
            archives are still sha256-checked.
        force: re-extract even if the manifest matches.
        quiet: print nothing.

    Returns:
        ``out`` as a Path.

    Raises:
        DataError: a failed download, a hash mismatch, or a missing archive member.
    """
    out = Path(out)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if not force and not check_manifest(out):
        say(f"{out}: all {len(expected_files())} files present with their manifest hashes; nothing to do")
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mssdf-fetch-") as tmp:
        tmp = Path(tmp)
        written: list[Path] = []
        for archive in ARCHIVES:
            path = Path(archives_dir) / archive.filename if archives_dir else None
            if path is None or not path.exists():
                say(f"downloading {archive.filename} ...")
                path = download(archive, tmp / "dl", tmp)
            verify(path, archive.sha256)
            written += extract(archive, path, out)
        for name, data in _text_files().items():
            written.append(_write(out / name, data))
    files = {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted(written)}
    manifest = {"archives": {a.filename: a.sha256 for a in ARCHIVES}, "files": dict(sorted(files.items()))}
    _write(out / "MANIFEST.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    say(f"{out}: wrote {len(files)} files and MANIFEST.json")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/raw", help="output folder (default: data/raw)")
    parser.add_argument("--archives", default=None, help="folder with already-downloaded pinned archives")
    parser.add_argument("--force", action="store_true", help="re-extract even if the manifest matches")
    args = parser.parse_args(argv)
    try:
        fetch(args.out, args.archives, args.force)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
