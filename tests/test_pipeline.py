"""The DVC pipeline's declarations against the code it runs.

* every stage re-runs when any ``mssdf`` module it runs changes: the modules a stage's
  notebook imports, followed transitively through every ``import`` statement of the
  package (function-level imports included) and every parent package's ``__init__``,
  must each lie under one of the stage's ``deps``;
* each stage's command executes its notebook with exactly its ``params`` sections, which
  its notebook's ``parameters`` cell declares;
* every notebook in ``notebooks/`` is a jupytext pair: the percent-format ``.py`` and the
  ``.ipynb`` hold the same cells, and the ``.ipynb`` carries no outputs.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mssdf"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of ``mssdf.a.b`` (a module or a package ``__init__``), None if neither."""
    parts = name.split(".")
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(source: str, package: str = "") -> set[str]:
    """``mssdf`` modules named by the import statements of ``source`` (anywhere in it).

    ``from mssdf.x import y`` names ``mssdf.x`` and, where ``y`` is a submodule, ``mssdf.x.y``;
    relative imports are resolved against ``package``.
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mssdf")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.split(".")[0] != "mssdf":
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if module_file(f"{mod}.{a.name}") is not None)
    return found


def import_closure(roots: set[str]) -> set[Path]:
    """Files of every ``mssdf`` module reachable from ``roots`` (parents' ``__init__`` included)."""
    todo, seen, files = list(roots), set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        todo.extend(imported_modules(path.read_text(), package) - seen)
    return files


def notebook_source(stage: dict) -> Path:
    """The jupytext ``.py`` of the stage's notebook (its ``notebooks/*.ipynb`` dependency)."""
    notebooks = [d for d in stage["deps"] if str(d).startswith("notebooks/") and str(d).endswith(".ipynb")]
    assert len(notebooks) == 1, f"a stage depends on exactly one notebook, found {notebooks}"
    return (ROOT / notebooks[0]).with_suffix(".py")


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in map(str, deps))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_module_it_runs(name):
    stage = STAGES[name]
    source = notebook_source(stage)
    files = import_closure(imported_modules(source.read_text()))
    assert files, f"{source} imports nothing from mssdf"
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not covered(p, stage["deps"]))
    assert not missing, f"stage {name!r} runs these modules but does not depend on them: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_command_passes_exactly_its_params(name):
    from mssdf.reports.execute import parameter_names

    stage = STAGES[name]
    argv = shlex.split(stage["cmd"])
    assert argv[:3] == ["python", "-m", "mssdf.reports.execute"], stage["cmd"]
    notebook, output = argv[3], argv[4]
    sections = argv[argv.index("--sections") + 1 :]
    assert notebook in stage["deps"]
    assert any(output in (o if isinstance(o, str) else next(iter(o))) for o in stage["outs"])
    assert sections == stage["params"], f"stage {name!r}: --sections {sections} differ from params {stage['params']}"
    assert set(sections) <= parameter_names(ROOT / notebook)
    assert "mssdf/reports/execute.py" in stage["deps"] or covered(PACKAGE / "reports" / "execute.py", stage["deps"])


def test_import_closure_follows_function_level_imports(tmp_path):
    # mssdf.data.prepare imports mssdf.paths inside a function: the closure must see it
    files = {p.relative_to(ROOT).as_posix() for p in import_closure({"mssdf.data.prepare"})}
    assert "mssdf/paths.py" in files and "mssdf/__init__.py" in files and "mssdf/data/__init__.py" in files


def test_every_module_is_covered_by_deps_is_not_vacuous():
    # a stage without its package deps must fail the coverage check
    stage = dict(STAGES["pretrain"], deps=[d for d in STAGES["pretrain"]["deps"] if d != "mssdf/engine"])
    files = import_closure(imported_modules(notebook_source(stage).read_text()))
    assert any(not covered(p, stage["deps"]) for p in files)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_pair_in_sync(path):
    import jupytext

    script = path.with_suffix(".py")
    assert script.is_file(), f"{path.name} has no jupytext pair {script.name} (jupytext --set-formats ipynb,py:percent)"
    nb, py = jupytext.read(path), jupytext.read(script)
    assert _cells(nb) == _cells(py), (
        f"{path.name} and {script.name} differ: edit the .py and run `jupytext --sync {script.relative_to(ROOT)}`"
    )
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not outputs, f"{path.name}: cells {outputs} carry outputs (keep source notebooks clean)"


def test_pair_check_detects_a_change(tmp_path):
    import jupytext

    path = NOTEBOOKS[0]
    py = jupytext.read(path.with_suffix(".py"))
    py.cells[-1].source += "\n# edited"
    assert _cells(jupytext.read(path)) != _cells(py)
