"""The stage runner passes a notebook exactly its own params sections (``--set``
overrides merged in, lists passed as lists), refusing what it cannot pass, and the
pre-training report's metrics keep stable keys."""

from __future__ import annotations

import json

import nbformat
import pytest

from mssdf.config import ConfigError
from mssdf.reports.execute import main, parameter_names, section_overrides, stage_parameters
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


@pytest.fixture
def papermill_calls(monkeypatch):
    """papermill.execute_notebook replaced by a recorder: the parameters a run would inject."""
    import papermill

    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda nb, out, parameters, **kw: calls.append(parameters))
    return calls


def test_set_overrides_reach_the_parameters_merged_key_by_key(tmp_path, papermill_calls):
    nb = _notebook(tmp_path / "n.ipynb")
    params = tmp_path / "params.yaml"
    params.write_text("a: {lr: 1e-3, sub: {k: 1, keep: x}, keep: 2}\nb: {y: 2}\nother: {z: 3}\n")
    argv = [str(nb), str(tmp_path / "out.ipynb"), "--sections", "a", "b", "--params", str(params),
            "--set", "a.lr=2e-4", "a.sub.k=[1, 2]", "--set", "b.new=true"]
    assert main(argv) == 0
    assert papermill_calls == [{"a": {"lr": 2e-4, "sub": {"k": [1, 2], "keep": "x"}, "keep": 2}, "b": {"y": 2, "new": True}}]
    assert isinstance(papermill_calls[0]["a"]["lr"], float)
    assert params.read_text().startswith("a: {lr: 1e-3,")  # params.yaml itself is never rewritten


def test_set_override_reaches_the_running_notebook(tmp_path):
    seen = tmp_path / "seen.json"
    nb = _notebook(tmp_path / "n.ipynb", "a = {}")
    nb_obj = nbformat.read(str(nb), as_version=4)
    nb_obj.cells[-1].source = f"import json; json.dump(a, open({str(seen)!r}, 'w'))"
    nb_obj.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb_obj, str(nb))
    (tmp_path / "params.yaml").write_text("a: {variant: mssdf, out_dir: models/x, n: 1}\n")
    argv = [str(nb), str(tmp_path / "out.ipynb"), "--sections", "a", "--params", str(tmp_path / "params.yaml"),
            "--set", "a.variant=mae", "a.out_dir=models/x/mae"]
    assert main(argv) == 0
    assert json.loads(seen.read_text()) == {"variant": "mae", "out_dir": "models/x/mae", "n": 1}


def test_an_override_of_another_section_is_refused_before_a_kernel_starts(tmp_path, papermill_calls, capsys):
    nb = _notebook(tmp_path / "n.ipynb")
    (tmp_path / "params.yaml").write_text("a: {x: 1}\nb: {y: 2}\n")
    out = tmp_path / "out.ipynb"
    argv = [str(nb), str(out), "--sections", "a", "--params", str(tmp_path / "params.yaml"), "--set", "a.x=2", "b.y=3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set 'b.y=3': 'b' is not one of --sections ['a']") and err.count("\n") == 1
    assert papermill_calls == [] and not out.exists()
    with pytest.raises(ConfigError, match=r"--set 'b.y=3': 'b' is not one of --sections \['a'\]"):
        stage_parameters({"a": {}, "b": {}}, ["a"], nb, ["b.y=3"])
    with pytest.raises(ConfigError, match=r"--set 'a.x': expected key=value"):
        section_overrides(["a.x"], ["a"])
    with pytest.raises(ConfigError, match=r"--set 'a..x=1': empty key component"):
        section_overrides(["a..x=1"], ["a"])


def test_a_list_section_passes_as_a_list(tmp_path, papermill_calls):
    nb = _notebook(tmp_path / "n.ipynb", "variants = []\na = {}")
    params = {"variants": ["mssdf", "mae"], "a": {"x": 1}}
    assert stage_parameters(params, ["variants", "a"], nb) == {"variants": ["mssdf", "mae"], "a": {"x": 1}}
    assert stage_parameters(params, ["variants", "a"], nb, ["a.x=2"])["variants"] == ["mssdf", "mae"]
    assert stage_parameters(params, ["variants"], nb, ["variants=[mae]"]) == {"variants": ["mae"]}  # set whole
    with pytest.raises(ConfigError, match=r"--set 'variants.x=1': section 'variants' is a list, not a mapping"):
        stage_parameters(params, ["variants"], nb, ["variants.x=1"])
    (tmp_path / "params.yaml").write_text("variants: [mssdf, mae]  # a top-level list\na: {x: 1}\n")
    argv = [str(nb), str(tmp_path / "o.ipynb"), "--sections", "variants", "a", "--params", str(tmp_path / "params.yaml")]
    assert main(argv) == 0
    assert papermill_calls == [{"variants": ["mssdf", "mae"], "a": {"x": 1}}]
    assert type(papermill_calls[0]["variants"]) is list


def test_pretrain_report_metrics_keys_are_stable_per_modality_set():
    groups = ["pan@64", "rgb+dsm@64"]
    history = [{"step": s, "group": float(s % 2), "loss": float(s), "reconstruction": 1.0, "images_per_s": 10.0 + s % 2,
                **({"contrast": 0.5} if s % 2 else {})} for s in range(1, 101)]
    m = report_metrics(history, groups, {"rgb+dsm@64": {"rgb": 0.2, "dsm": 0.3}}, patch=8)
    assert m["steps"] == 100 and m["final_loss"] == pytest.approx(sum(range(81, 101)) / 20)  # last 20 % of the records
    assert m["loss_by_group"]["pan@64"] == {"loss": pytest.approx(sum(range(82, 101, 2)) / 10), "reconstruction": 1.0}
    assert m["loss_by_group"]["rgb+dsm@64"]["contrast"] == 0.5  # pair terms only where the set has pairs
    assert m["images_per_s"] == {"rgb+dsm@64": 11.0, "pan@64": 10.0}
    assert m["tokens_per_image"] == {"pan@64": 64, "rgb+dsm@64": 64}
    assert m["masked_cosine"] == {"rgb+dsm@64": {"rgb": 0.2, "dsm": 0.3}}
    json.dumps(m, allow_nan=False)  # serialisable as written
    assert report_metrics([], groups, {}, patch=8)["steps"] == 0
