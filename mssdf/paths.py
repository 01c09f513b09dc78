"""Repository-relative paths.

Notebooks run with different working directories (papermill from the repository root,
nbval and JupyterLab from ``notebooks/``), so every path parameter in ``params.yaml`` and
in notebook parameter cells is written relative to the repository root and resolved
here.
"""

from __future__ import annotations

from pathlib import Path

_MARKERS = ("dvc.yaml", "pyproject.toml")


def repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding dvc.yaml and pyproject.toml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in _MARKERS):
            return folder
    raise FileNotFoundError(f"no mssdf repository (a folder with {' and '.join(_MARKERS)}) at or above {here}")


def resolve(path: str | Path, root: str | Path | None = None) -> Path:
    """Resolve a repository-relative ``path`` (absolute paths pass through).

    Outside a repository (a package installed elsewhere, a run folder of its own) a
    relative path is taken relative to ``root`` if given, else to the working directory.
    """
    path = Path(path)
    if path.is_absolute():
        return path
    try:
        return repo_root(root) / path
    except FileNotFoundError:
        return (Path(root) if root is not None else Path.cwd()).resolve() / path


SCRATCH = "scratch"  # git- and dvc-ignored folder for smoke runs (nbval, tests)
