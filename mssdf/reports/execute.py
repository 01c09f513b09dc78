"""Run a stage's notebook with papermill, passing it only its own ``params.yaml`` sections.

    python -m mssdf.reports.execute NOTEBOOK OUTPUT --sections pretrain pretrain_report \
        [--set pretrain.variant=mae pretrain.out_dir=models/pretrain/mae ...]

Each DVC stage's ``cmd`` is this command; its ``--sections`` are the stage's ``params``
(a test holds them equal). papermill injects each section as a variable named like it,
below the notebook's ``parameters`` cell, so a notebook never receives another stage's
parameters (papermill would warn "Passed unknown parameter" for each one), and a section
the notebook does not declare is refused before the kernel starts. A section is passed
as params.yaml holds it: a mapping as a dict, a top-level list (``pretrain_variants:
[mssdf, mae]``) as a list.

``--set key.sub=value ...`` overrides apply after params.yaml is read and before papermill
runs, merged into the sections key by key (:func:`mssdf.config.deep_merge`; values parsed
as YAML by :func:`mssdf.config.parse_sets`, so ``1e-3`` is a float and ``[a, b]`` a list).
A DVC ``foreach`` stage uses them to run one notebook per ``${item}`` with its own
variant and output folders while depending on the whole sections. The first component of
every override must be one of ``--sections`` (an override cannot smuggle in another
stage's parameters), and only a mapping section takes ``section.key=value`` overrides; a
bad override is refused before the kernel starts.

Errors (:class:`~mssdf.config.ConfigError`) print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Mapping

from mssdf.config import ConfigError, deep_merge, parse_sets, yaml_load


def parameter_names(notebook: str | Path) -> set[str]:
    """Names assigned in the cell tagged ``parameters`` of an ``.ipynb`` notebook."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    names = set()
    for node in ast.walk(ast.parse(cells[0].source)):
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def section_overrides(sets: list[str] | None, sections: list[str]) -> dict[str, Any]:
    """The ``--set`` items as a nested mapping ``{section: {...}}``, each checked to name one of ``sections``.

    Raises:
        ConfigError: a malformed item, or one whose first key component is not a section.
    """
    for item in sets or []:
        (section,) = parse_sets([item])
        if section not in sections:
            raise ConfigError(f"--set {item!r}: {section!r} is not one of --sections {sections}; "
                              "an override may only change the stage's own sections")
    return parse_sets(sets or [])


def stage_parameters(params: Mapping[str, Any], sections: list[str], notebook: str | Path,
                     sets: list[str] | None = None) -> dict[str, Any]:
    """The ``sections`` of ``params`` with the ``sets`` overrides merged in, checked against
    the notebook's ``parameters`` cell.

    Raises:
        ConfigError: a section missing from params.yaml or not declared by the notebook; an
            override naming no section of ``sections``, or a key of a section that is not a mapping.
    """
    overrides = section_overrides(sets, sections)
    missing = [s for s in sections if s not in params]
    if missing:
        raise ConfigError(f"params.yaml has no section(s) {missing} (sections: {sorted(params)})")
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        section = key.split(".")[0]
        value = params[section]
        if "." in key and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"--set {item!r}: section {section!r} is a {type(value).__name__}, not a mapping; "
                              f"set it whole (--set {section}=...)")
    declared = parameter_names(notebook)
    undeclared = [s for s in sections if s not in declared]
    if undeclared:
        raise ConfigError(f"{notebook}: its parameters cell does not declare {undeclared} (it declares {sorted(declared)})")
    return deep_merge({s: params[s] for s in sections}, overrides)


def execute(notebook: str | Path, output: str | Path, sections: list[str], params_file: str | Path = "params.yaml",
            kernel: str = "python3", sets: list[str] | None = None) -> Path:
    """Execute ``notebook`` into ``output`` with the ``sections`` of ``params_file``, ``sets`` overrides applied."""
    import papermill

    section_overrides(sets, sections)  # a command-line mistake fails before any file is read
    params = yaml_load(Path(params_file).read_text()) or {}
    parameters = stage_parameters(params, sections, notebook, sets)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel,
                               progress_bar=False, log_output=False)
    return Path(output)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_pipeline.py to parse each stage's ``cmd``)."""
    ap = argparse.ArgumentParser(prog="python -m mssdf.reports.execute", description=__doc__.splitlines()[0])
    ap.add_argument("notebook", help="the source notebook (notebooks/NN_name.ipynb)")
    ap.add_argument("output", help="the executed copy (reports/NN_name.ipynb)")
    ap.add_argument("--sections", nargs="+", required=True, help="params.yaml sections this notebook receives")
    ap.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key of one of --sections after params.yaml is read (value parsed as YAML)")
    ap.add_argument("--params", default="params.yaml", help="the parameters file (default params.yaml)")
    ap.add_argument("--kernel", default="python3")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        execute(args.notebook, args.output, args.sections, args.params, args.kernel, args.sets)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
