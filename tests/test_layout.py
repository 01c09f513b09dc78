"""The package's layering: each part of ``mssdf`` imports only the parts below it.

    shared (config, modalities, paths, atomic)  <-  the method, data  <-  weights, engine
    <-  pretrain, downstream  <-  reports

Every import statement counts, function-level ones included (see test_pipeline).
"""

from __future__ import annotations

from pathlib import Path

from test_pipeline import ROOT, imported_modules

METHOD = {"masking", "pos_embed", "model", "losses", "reference"}
SHARED = {"config", "modalities", "paths", "atomic", "_torchvision_compat"}
BASE = {"shared", "init"}
ALLOWED = {
    "shared": BASE,
    "method": BASE,
    "data": BASE,
    "weights": BASE | {"method"},
    "engine": BASE | {"data"},
    "pretrain": BASE | {"method", "data", "weights", "engine"},
    "downstream": BASE | {"method", "data", "weights", "engine"},
    "reports": BASE | {"method", "data", "weights", "engine", "pretrain", "downstream"},
}


def part(module: str) -> str:
    """The part of the package a dotted module name belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "init"
    name = parts[1]
    return "method" if name in METHOD else "shared" if name in SHARED else name


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / "mssdf").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts), path))
    return out


def test_every_module_belongs_to_a_known_part():
    unknown = sorted({part(name) for name, _ in _modules()} - set(ALLOWED) - {"init"})
    assert not unknown, f"parts without a layering rule: {unknown} (add them to ALLOWED)"


def test_imports_follow_the_layers():
    bad = []
    for name, path in _modules():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        src = part(name)
        for target in imported_modules(path.read_text(), package):
            dst = part(target)
            if dst != src and src != "init" and dst not in ALLOWED[src]:
                bad.append(f"{name} ({src}) imports {target} ({dst})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_layering_check_sees_a_violation():
    assert part("mssdf.reports.plots") not in ALLOWED["engine"]
    assert "mssdf.reports.plots" in imported_modules("def f():\n    from mssdf.reports import plots\n")


def test_every_module_imports():
    # a name dropped from one module while another still imports it fails here, not in a stage
    import importlib

    failed = []
    for name, _ in _modules():
        if name.endswith("__main__"):
            continue
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - reported by name
            failed.append(f"{name}: {type(err).__name__}: {err}")
    assert not failed, "\n".join(failed)
