"""Run a stage's notebook with papermill, passing it only its own ``params.yaml`` sections.

    python -m mssdf.reports.execute NOTEBOOK OUTPUT --sections pretrain pretrain_report

Each DVC stage's ``cmd`` is this command; its ``--sections`` are the stage's ``params``
(a test holds them equal). papermill injects each section as a dict named like it,
below the notebook's ``parameters`` cell, so a notebook never receives another stage's
parameters (papermill would warn "Passed unknown parameter" for each one), and a section
the notebook does not declare is refused before the kernel starts.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Mapping

from mssdf.config import ConfigError, yaml_load


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


def stage_parameters(params: Mapping[str, Any], sections: list[str], notebook: str | Path) -> dict[str, Any]:
    """The ``sections`` of ``params``, checked against the notebook's ``parameters`` cell.

    Raises:
        ConfigError: a section missing from params.yaml, or not declared by the notebook.
    """
    missing = [s for s in sections if s not in params]
    if missing:
        raise ConfigError(f"params.yaml has no section(s) {missing} (sections: {sorted(params)})")
    declared = parameter_names(notebook)
    undeclared = [s for s in sections if s not in declared]
    if undeclared:
        raise ConfigError(f"{notebook}: its parameters cell does not declare {undeclared} (it declares {sorted(declared)})")
    return {s: params[s] for s in sections}


def execute(notebook: str | Path, output: str | Path, sections: list[str], params_file: str | Path = "params.yaml",
            kernel: str = "python3") -> Path:
    """Execute ``notebook`` into ``output`` with the ``sections`` of ``params_file``."""
    import papermill

    params = yaml_load(Path(params_file).read_text()) or {}
    parameters = stage_parameters(params, sections, notebook)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel,
                               progress_bar=False, log_output=False)
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mssdf.reports.execute", description=__doc__.splitlines()[0])
    ap.add_argument("notebook", help="the source notebook (notebooks/NN_name.ipynb)")
    ap.add_argument("output", help="the executed copy (reports/NN_name.ipynb)")
    ap.add_argument("--sections", nargs="+", required=True, help="params.yaml sections this notebook receives")
    ap.add_argument("--params", default="params.yaml", help="the parameters file (default params.yaml)")
    ap.add_argument("--kernel", default="python3")
    args = ap.parse_args(argv)
    try:
        execute(args.notebook, args.output, args.sections, args.params, args.kernel)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
