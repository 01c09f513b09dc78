"""The DVC pipeline's declarations against the code it runs.

* ``foreach`` stages are expanded as DVC does (``pretrain`` over params.yaml's
  ``pretrain_variants`` → ``pretrain@mssdf``, ``pretrain@mae``, ..., ``${item}``
  substituted; a test holds the expansion equal to DVC's own), and every check below runs
  on every expanded stage;
* every stage re-runs when any ``mssdf`` module it runs changes: the modules a stage's
  notebook imports, followed transitively through every ``import`` statement of the
  package (function-level imports included) and every parent package's ``__init__``,
  must each lie under one of the stage's ``deps``;
* each stage's command executes its notebook with exactly its ``params`` sections, which
  its notebook's ``parameters`` cell declares, and its ``--set`` overrides change only
  those sections;
* no two stages share an output; each pre-training variant writes its own model folder
  and metrics, is a variant :data:`mssdf.pretrain.config.VARIANTS` knows, has its training
  plot, and comes before ``pretrain_probe``;
* every notebook in ``notebooks/`` is a jupytext pair: the percent-format ``.py`` and the
  ``.ipynb`` hold the same cells, and the ``.ipynb`` carries no outputs.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mssdf"
_INTERPOLATION = re.compile(r"\$\{\s*([^}]*?)\s*\}")


def _substitute(node: Any, item: Any) -> Any:
    """``node`` with ``${item}`` replaced by ``item`` in every string, mapping keys included."""
    if isinstance(node, str):
        return _INTERPOLATION.sub(lambda m: str(item) if m.group(1) == "item" else m.group(0), node)
    if isinstance(node, dict):
        return {_substitute(k, item): _substitute(v, item) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, item) for v in node]
    return node


def expand_stages(stages: dict[str, Any], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stages of a dvc.yaml with each ``foreach`` stage expanded as DVC does.

    ``foreach: ${key}`` (a top-level list of ``params``) or a literal list gives one stage
    ``name@item`` per element, its ``do`` body with ``${item}`` substituted. Any other
    interpolation is refused (this helper would not resolve it the way DVC does).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        items = stage["foreach"]
        if isinstance(items, str):
            m = _INTERPOLATION.fullmatch(items.strip())
            assert m and m.group(1) in params, f"stage {name!r}: foreach {items!r} names no top-level params.yaml key"
            items = params[m.group(1)]
        assert isinstance(items, list) and items, f"stage {name!r}: foreach needs a non-empty list, got {items!r}"
        assert len(set(map(str, items))) == len(items), f"stage {name!r}: foreach list {items} has duplicates"
        for item in items:
            out[f"{name}@{item}"] = _substitute(stage["do"], item)
    for name, stage in out.items():
        left = _INTERPOLATION.findall(yaml.safe_dump(stage))
        assert not left, f"stage {name!r}: unresolved interpolation(s) {left}"
    return out


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = expand_stages(DVC_YAML["stages"], PARAMS)
VARIANT_RUNS = [str(v) for v in PARAMS.get("pretrain_variants") or []]  # stages pretrain@<variant>
# stages that execute a notebook (all but `site`, which renders the executed notebooks to HTML)
NOTEBOOK_STAGES = {n: s for n, s in STAGES.items() if "mssdf.reports.execute" in s["cmd"]}


def paths(entries: list[Any]) -> list[str]:
    """The paths of ``deps`` / ``outs`` / ``metrics`` / ``plots`` entries (``path`` or ``{path: {options}}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def command(stage: dict[str, Any]):
    """The stage's ``cmd`` parsed by the runner's own command line (argv[3:] after ``python -m ...``)."""
    from mssdf.reports.execute import build_parser

    argv = shlex.split(stage["cmd"])
    assert argv[:3] == ["python", "-m", "mssdf.reports.execute"], stage["cmd"]
    return build_parser().parse_args(argv[3:])


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
    source = (ROOT / notebooks[0]).with_suffix(".py")
    assert source.is_file(), f"{notebooks[0]}: no such notebook source {source.relative_to(ROOT)}"
    return source


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in map(str, deps))


@pytest.mark.parametrize("name", sorted(NOTEBOOK_STAGES))
def test_stage_deps_cover_every_module_it_runs(name):
    stage = STAGES[name]
    source = notebook_source(stage)
    files = import_closure(imported_modules(source.read_text()))
    assert files, f"{source} imports nothing from mssdf"
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not covered(p, stage["deps"]))
    assert not missing, f"stage {name!r} runs these modules but does not depend on them: {missing}"


@pytest.mark.parametrize("name", sorted(NOTEBOOK_STAGES))
def test_stage_command_passes_exactly_its_params(name):
    from mssdf.reports.execute import parameter_names

    stage = STAGES[name]
    args = command(stage)
    assert args.notebook in stage["deps"]
    assert (ROOT / args.notebook).is_file(), f"stage {name!r}: no notebook {args.notebook}"
    assert args.output in paths(stage["outs"])
    assert args.sections == stage["params"], f"stage {name!r}: --sections {args.sections} differ from params {stage['params']}"
    assert set(args.sections) <= parameter_names(ROOT / args.notebook)
    assert "mssdf/reports/execute.py" in stage["deps"] or covered(PACKAGE / "reports" / "execute.py", stage["deps"])


@pytest.mark.parametrize("name", sorted(NOTEBOOK_STAGES))
def test_stage_overrides_change_only_its_own_sections(name):
    from mssdf.reports.execute import section_overrides

    args = command(STAGES[name])
    overrides = section_overrides(args.sets, args.sections)  # raises ConfigError naming a foreign section
    assert set(overrides) <= set(STAGES[name]["params"])
    if "@" in name:  # a foreach stage differs from its siblings through its overrides only
        item = name.split("@", 1)[1]
        assert any(item in s.split("=", 1)[1] for s in args.sets), f"stage {name!r}: no --set carries its item {item!r}"


def test_every_stage_but_the_site_is_a_notebook_stage():
    assert set(STAGES) - set(NOTEBOOK_STAGES) == {"site"}


def test_site_stage_depends_on_its_modules_and_every_executed_notebook():
    stage = STAGES["site"]
    argv = shlex.split(stage["cmd"])
    assert argv[:3] == ["python", "-m", "mssdf.reports.site"], stage["cmd"]
    files = import_closure({"mssdf.reports.site"})
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not covered(p, stage["deps"]))
    assert not missing, f"stage 'site' runs these modules but does not depend on them: {missing}"
    for name, other in NOTEBOOK_STAGES.items():
        report = ROOT / command(other).output
        # a pretrain@<variant> notebook is named after its variant: the stage stands for it by
        # that variant's reports/pretrain/<variant> folder, which the same stage writes
        stand_in = [ROOT / m for m in paths(other.get("metrics"))]
        assert covered(report, stage["deps"]) or any(covered(p, stage["deps"]) for p in stand_in), (
            f"stage 'site' renders {report.relative_to(ROOT)} (stage {name!r}) but does not depend on it")
    for path in paths(STAGES["figures"]["outs"]) + paths(STAGES["figures"].get("plots")):
        assert covered(ROOT / path, stage["deps"]), f"stage 'site' shows {path} but does not depend on it"


def test_figures_stage_reads_every_stages_metrics():
    deps = STAGES["figures"]["deps"]
    for name, stage in NOTEBOOK_STAGES.items():
        for metric in paths(stage.get("metrics")):
            assert covered(ROOT / metric, deps), f"stage 'figures' does not depend on {metric} (stage {name!r})"
    from mssdf.config import from_dict
    from mssdf.reports.figures import FiguresConfig

    cfg = from_dict(FiguresConfig, PARAMS["figures"], "figures")
    for path in [*cfg.metrics.values(), cfg.probe, cfg.method, cfg.prepare]:
        assert path in deps, f"figures reads {path} but does not depend on it"


def test_every_stage_declares_metrics_or_plots():
    """`dvc metrics show` / `dvc plots show` cover every stage (the site renders, it measures nothing)."""
    top = paths(DVC_YAML.get("plots"))
    for name, stage in NOTEBOOK_STAGES.items():
        own = paths(stage.get("metrics")) + paths(stage.get("plots"))
        outs = paths(stage.get("outs"))
        assert own or any(p.startswith(o.rstrip("/") + "/") for p in top for o in outs), f"stage {name!r} declares no metrics or plots"


def test_stages_reading_the_prepared_sample_depend_on_its_manifest():
    from mssdf.data.output import MANIFEST

    assert "data/prepared" in paths(STAGES["prepare"]["outs"])
    for name, stage in STAGES.items():
        deps = paths(stage["deps"])
        assert "data/prepared" not in deps, f"stage {name!r}: depend on data/prepared/{MANIFEST}, not the whole folder"
        if any(d.startswith("data/prepared/") for d in deps):
            assert deps.count(f"data/prepared/{MANIFEST}") == 1, name


def test_no_two_stages_share_an_output():
    owners: dict[str, str] = {}
    for name, stage in STAGES.items():
        for path in paths(stage.get("outs")) + paths(stage.get("metrics")) + paths(stage.get("plots")):
            path = path.rstrip("/")
            assert path not in owners, f"{path} is an output of both {owners[path]!r} and {name!r}"
            nested = [o for o in owners if o.startswith(path + "/") or path.startswith(o + "/")]
            assert not nested, f"output {path} of {name!r} overlaps {nested} of {[owners[o] for o in nested]}"
            owners[path] = name


def test_pretrain_variants_are_known_variants():
    from mssdf.pretrain.config import VARIANTS

    assert VARIANT_RUNS, "params.yaml has no top-level list pretrain_variants"
    unknown = [v for v in VARIANT_RUNS if v not in VARIANTS]
    assert not unknown, f"params.yaml pretrain_variants: unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}"
    assert "variant" not in (PARAMS.get("pretrain") or {}), (
        "params.yaml pretrain.variant: each pretrain@<variant> stage sets it; list variants in pretrain_variants")


@pytest.mark.parametrize("variant", VARIANT_RUNS)
def test_each_variant_writes_its_own_model_report_and_metrics(variant):
    from mssdf.config import parse_sets

    stage = STAGES[f"pretrain@{variant}"]
    sets = parse_sets(command(stage).sets)
    assert sets["pretrain"]["variant"] == variant
    assert sets["pretrain"]["out_dir"] == f"models/pretrain/{variant}"
    assert f"models/pretrain/{variant}" in paths(stage["outs"])
    assert sets["pretrain_report"]["out_dir"] == f"reports/pretrain/{variant}"
    assert f"reports/pretrain/{variant}/metrics.json" in paths(stage["metrics"])
    assert f"reports/02_pretrain_{variant}.ipynb" == command(stage).output
    # its dvclive curves are plotted, and the probe stage runs after it
    assert f"models/pretrain/{variant}/live/plots/metrics/train" in paths(DVC_YAML.get("plots"))
    assert any(covered(ROOT / "models" / "pretrain" / variant, [d]) for d in STAGES["pretrain_probe"]["deps"]), (
        f"stage pretrain_probe does not depend on models/pretrain/{variant}")


def test_top_level_plots_lie_in_stage_outputs():
    outs = [p for stage in STAGES.values() for p in paths(stage.get("outs"))]
    for plot in paths(DVC_YAML.get("plots")):
        assert any(plot == o or plot.startswith(o.rstrip("/") + "/") for o in outs), f"plot {plot} is no stage's output"


def test_expansion_matches_dvc():
    """This file's foreach expansion resolves dvc.yaml exactly as DVC does."""
    pytest.importorskip("dvc.repo")
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        resolved = {s.name: s for s in repo.index.stages if getattr(s, "name", None)}
        assert sorted(resolved) == sorted(STAGES)
        for name, stage in resolved.items():
            ours = STAGES[name]
            assert stage.cmd == ours["cmd"], name
            assert [d.def_path for d in stage.deps if not hasattr(d, "params")] == paths(ours["deps"]), name
            assert [p for d in stage.deps if hasattr(d, "params") for p in d.params] == ours["params"], name
            assert sorted(o.def_path for o in stage.outs) == sorted(paths(ours.get("outs")) + paths(ours.get("metrics"))
                                                                     + paths(ours.get("plots"))), name


def test_expand_stages_substitutes_item_everywhere():
    stages = {"a": {"cmd": "x"},
              "b": {"foreach": "${vs}", "do": {"cmd": "run --set s.v=${item}", "outs": [{"o/${item}": {"cache": False}}]}},
              "c": {"foreach": [1, 2], "do": {"cmd": "n ${ item }"}}}
    assert expand_stages(stages, {"vs": ["p", "q"]}) == {
        "a": {"cmd": "x"},
        "b@p": {"cmd": "run --set s.v=p", "outs": [{"o/p": {"cache": False}}]},
        "b@q": {"cmd": "run --set s.v=q", "outs": [{"o/q": {"cache": False}}]},
        "c@1": {"cmd": "n 1"}, "c@2": {"cmd": "n 2"}}
    with pytest.raises(AssertionError, match="unresolved interpolation"):
        expand_stages({"d": {"foreach": "${vs}", "do": {"cmd": "${other}"}}}, {"vs": ["p"]})
    with pytest.raises(AssertionError, match="names no top-level"):
        expand_stages({"d": {"foreach": "${nope}", "do": {"cmd": "x"}}}, {"vs": ["p"]})


def test_import_closure_follows_function_level_imports(tmp_path):
    # mssdf.data.prepare imports mssdf.paths inside a function: the closure must see it
    files = {p.relative_to(ROOT).as_posix() for p in import_closure({"mssdf.data.prepare"})}
    assert "mssdf/paths.py" in files and "mssdf/__init__.py" in files and "mssdf/data/__init__.py" in files


def test_every_module_is_covered_by_deps_is_not_vacuous():
    # a stage without its package deps must fail the coverage check
    pretrain = STAGES[f"pretrain@{VARIANT_RUNS[0]}"]
    stage = dict(pretrain, deps=[d for d in pretrain["deps"] if d != "mssdf/engine"])
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


def test_every_params_section_builds_its_typed_config():
    """A typo in params.yaml fails here, not minutes into `dvc repro`: each section the
    notebooks read becomes its typed config (the pretrain section once per variant, with
    the overrides its stage passes)."""
    from mssdf.config import deep_merge, from_dict
    from mssdf.data.prepare import PrepareConfig
    from mssdf.pretrain import build_config
    from mssdf.reports.health import ProbeStageConfig
    from mssdf.reports.method import MethodReportConfig
    from mssdf.reports.pretrain import PretrainReportConfig

    from_dict(MethodReportConfig, PARAMS["method"], "method")
    from_dict(PrepareConfig, PARAMS["prepare"], "prepare")
    from mssdf.reports.figures import FiguresConfig
    from mssdf.reports.preview import PrepareReportConfig

    from_dict(PrepareReportConfig, PARAMS["prepare_report"], "prepare_report")
    from_dict(FiguresConfig, PARAMS["figures"], "figures")
    from_dict(PretrainReportConfig, PARAMS["pretrain_report"], "pretrain_report")
    from_dict(ProbeStageConfig, PARAMS["pretrain_probe"], "pretrain_probe")
    for variant in PARAMS["pretrain_variants"]:
        cfg = build_config(deep_merge(PARAMS["pretrain"], {"variant": variant, "out_dir": f"models/pretrain/{variant}"}), "pretrain")
        assert cfg.data.kind == "mixture" and len(cfg.modality_sets) > 1
    from mssdf.downstream.study import StudyConfig

    for task in ("segmentation", "height", "classification", "change", "detection"):  # every init x dataset combination is validated
        study = from_dict(StudyConfig, PARAMS[task], task)
        assert study.run_config(next(iter(study.datasets)), study.inits[0], study.seeds[0]).task == task
        assert f"reports/{task}/metrics.json" in str(DVC_YAML["stages"][task]["metrics"])
