"""The stage runner passes a notebook exactly its own params sections, refusing what it
cannot pass, and the pre-training report's metrics keep stable keys."""

from __future__ import annotations

import json

import nbformat
import pytest

from mssdf.config import ConfigError
from mssdf.reports.execute import main, parameter_names, stage_parameters
from mssdf.reports.pretrain import report_metrics


def _notebook(path, source="a = {}\nb: dict = {}\nc, d = 1, 2"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(a)")]
    nbformat.write(nb, str(path))
    return path


def test_parameter_names_are_the_names_the_parameters_cell_assigns(tmp_path):
    assert parameter_names(_notebook(tmp_path / "n.ipynb")) == {"a", "b"}  # tuple targets are not sections


def test_a_notebook_without_one_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1")]
    nbformat.write(nb, str(tmp_path / "n.ipynb"))
    with pytest.raises(ConfigError, match="n.ipynb: expected one cell tagged 'parameters', found 0"):
        parameter_names(tmp_path / "n.ipynb")


def test_only_the_requested_sections_are_passed(tmp_path):
    params = {"a": {"x": 1}, "b": {"y": 2}, "other": {"z": 3}}
    assert stage_parameters(params, ["a"], _notebook(tmp_path / "n.ipynb")) == {"a": {"x": 1}}


def test_missing_and_undeclared_sections_are_refused_naming_them(tmp_path):
    nb = _notebook(tmp_path / "n.ipynb")
    with pytest.raises(ConfigError, match=r"params.yaml has no section\(s\) \['nope'\]"):
        stage_parameters({"a": {}}, ["a", "nope"], nb)
    with pytest.raises(ConfigError, match=r"does not declare \['other'\]"):
        stage_parameters({"a": {}, "other": {}}, ["a", "other"], nb)


def test_cli_exits_2_with_one_error_line_before_starting_a_kernel(tmp_path, capsys):
    nb = _notebook(tmp_path / "n.ipynb")
    (tmp_path / "params.yaml").write_text("a: {lr: 1e-3}\n")
    out = tmp_path / "out.ipynb"
    assert main([str(nb), str(out), "--sections", "a", "missing", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "error: params.yaml has no section(s) ['missing']" in capsys.readouterr().err
    assert not out.exists()


def test_report_metrics_keys_are_stable_and_derived_from_row_keys():
    rows = [{"encoder": "pretrained", "task": "height", "metric": "rmse_m", "score": 6.25},
            {"encoder": "random_init", "task": "height", "metric": "rmse_m", "score": 6.5},
            {"encoder": "pretrained", "task": "seg_asprs", "metric": "miou", "score": float("nan"), "note": "no val tiles"}]
    history = [{"step": s, "loss": float(s)} for s in range(5, 101, 5)]
    m = report_metrics(rows, {"rgb": 0.2}, history)
    assert m["probe"] == {"height_rmse_m": {"pretrained": 6.25, "random_init": 6.5},
                          "seg_asprs_miou": {"pretrained": pytest.approx(float("nan"), nan_ok=True)}}
    assert m["masked_cosine"] == {"rgb": 0.2}
    assert m["steps"] == 100 and m["final_loss"] == pytest.approx(sum(range(55, 101, 5)) / 10)
    json.dumps(m)  # serialisable as written
    assert report_metrics([], {}, [])["steps"] == 0
