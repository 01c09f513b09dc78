"""The figures stage: results rows recomputed from the metrics files, the paper's numbers only
beside the paper's datasets, tables and the README block generated from them, reproducible
figure files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mssdf.config import ConfigError  # noqa: E402
from mssdf.reports import figures as F  # noqa: E402
from mssdf.reports import paper, readme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _entry(seeds):
    arr = np.asarray([s for s in seeds if s is not None], dtype=float)
    return {"seeds": list(seeds), "mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size > 1 else None}


def _study(datasets: dict[str, dict[str, dict[str, list[float]]]], **extra) -> dict:
    """A study metrics file: datasets[name][init][metric] = per-seed values."""
    inits = list(next(iter(datasets.values())))
    return {"inits": inits, "seeds": [0, 1, 2], **extra,
            "datasets": {d: {i: {m: _entry(v) for m, v in per.items()} for i, per in by_init.items()}
                         for d, by_init in datasets.items()}}


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_summarise_seeds_is_mean_and_sample_std_of_the_finite_values():
    s = paper.summarise_seeds([0.5, None, 0.7, float("nan"), 0.9])
    assert s.n == 3 and s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2)
    one = paper.summarise_seeds([0.4])
    assert one.std is None and paper.format_value(one.as_dict()) == "0.400 (n=1)"  # no spread claimed from one seed
    assert paper.summarise_seeds([None, None]) == paper.Summary(None, None, 0)


def test_rows_are_recomputed_from_the_seeds_and_sample_datasets_are_not_comparable(tmp_path):
    seg = _study({"buildings": {"random": {"miou": [0.4, 0.5, 0.6], "f1": [0.1, 0.2, 0.3]},
                                "mssdf": {"miou": [0.7, 0.8, 0.9], "f1": [0.3, 0.3, 0.3]}}})
    results = paper.collect_results({"segmentation": _write(tmp_path, "seg.json", seg)})
    rows = {(r["dataset"], r["metric"]): r for r in results["rows"]}
    assert set(rows) == {("buildings", "miou"), ("buildings", "f1")}
    r = rows["buildings", "miou"]
    assert r["values"]["mssdf"]["mean"] == pytest.approx(0.8) and r["values"]["mssdf"]["std"] == pytest.approx(0.1)
    assert r["values"]["random"]["n"] == 3 and r["labels"] == "real"
    assert r["paper"] is None and not r["comparable"] and r["note"] == paper.NOT_COMPARABLE
    assert "Potsdam 78.30" in r["paper_dataset"]  # what the paper reports for the family, for the reader
    table = paper.family_table(results, "segmentation")
    assert list(table["mssdf"]) == ["0.800 ± 0.100", "0.300 ± 0.000"]
    assert all(paper.NOT_COMPARABLE in v for v in table["paper (MSSDF)"])


def test_a_paper_dataset_gets_the_papers_number_in_our_unit(tmp_path):
    seg = _study({"potsdam": {"mssdf": {"miou": [0.70, 0.72, 0.74]}},
                  "my_vaihingen": {"mssdf": {"miou": [0.6, 0.6, 0.6]}}})
    height = _study({"us3d": {"mssdf": {"rmse_m": [3.0, 3.0, 3.0], "rmse_norm": [0.2, 0.2, 0.2],
                                        "rmse_norm_no_ground": [0.19, 0.2, 0.21]}}})
    results = paper.collect_results({"segmentation": _write(tmp_path, "s.json", seg),
                                     "height": _write(tmp_path, "h.json", height)},
                                    paper_datasets={"my_vaihingen": "vaihingen"})
    rows = {(r["dataset"], r["metric"]): r for r in results["rows"]}
    assert rows["potsdam", "miou"]["paper"] == pytest.approx(0.7830) and rows["potsdam", "miou"]["comparable"]
    assert rows["my_vaihingen", "miou"]["paper"] == pytest.approx(0.7650)
    # the paper's US3D RMSE: 8-bit unit, pixels whose 8-bit target is neither 0 nor 255
    assert rows["us3d", "rmse_norm_no_ground"]["paper"] == pytest.approx(0.182)
    assert rows["us3d", "rmse_m"]["paper"] is None and rows["us3d", "rmse_norm"]["paper"] is None
    md = paper.results_markdown(results)
    # the README table shows the paper's metric on a paper dataset, not the family's headline one
    assert "78.30 mIoU" in md and "76.50 mIoU" in md and "0.182 RMSE" in md
    assert "| us3d | RMSE (8-bit unit, no 0/255) ↓ |" in md and "RMSE (m)" not in md


def test_synthetic_and_derived_labels_say_so_and_baselines_are_shown(tmp_path):
    change = _study({"atlanta": {"random": {"change_iou": [0.2, 0.3, 0.4], "miou": [0.5, 0.5, 0.5]}}},
                    label_kind="synthetic", baseline={"atlanta": {"change_iou": 0.25, "miou": 0.55}})
    results = paper.collect_results({"change": _write(tmp_path, "c.json", change)})
    assert {r["labels"] for r in results["rows"]} == {"SYNTHETIC"}
    md = paper.results_markdown(results)
    assert "SYNTHETIC" in md and "0.250 (pixel difference)" in md
    assert list(paper.family_table(results, "change")["pixel difference"]) == ["0.250", "0.550"]


def test_a_stored_mean_that_disagrees_with_its_seeds_is_an_error_naming_the_key(tmp_path):
    seg = _study({"roads": {"mae": {"miou": [0.4, 0.5, 0.6]}}})
    seg["datasets"]["roads"]["mae"]["miou"]["mean"] = 0.9
    with pytest.raises(ConfigError, match=r"datasets\.roads\.mae\.miou"):
        paper.collect_results({"segmentation": _write(tmp_path, "seg.json", seg)})
    with pytest.raises(ConfigError, match="no 'datasets' mapping"):
        paper.collect_results({"segmentation": _write(tmp_path, "bad.json", {"inits": ["mae"]})})
    with pytest.raises(ConfigError, match="missing.json: metrics file not found"):
        paper.collect_results({"segmentation": tmp_path / "missing.json"})
    (tmp_path / "corrupt.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt.json: not a readable JSON"):
        paper.collect_results({"segmentation": tmp_path / "corrupt.json"})


def test_metrics_a_dataset_cannot_have_are_left_out(tmp_path):
    det = _study({"obb": {"mae": {"map_50": [0.1, 0.2, 0.3], "map": [None, None, None]}}})
    results = paper.collect_results({"detection": _write(tmp_path, "d.json", det)})
    assert [r["metric"] for r in results["rows"]] == ["map_50"]


def test_best_init_follows_the_metric_direction_and_ties_get_no_bold():
    row = {"higher_is_better": False, "values": {"a": {"mean": 2.0}, "b": {"mean": 1.0}, "c": {"mean": None}}}
    assert paper.best_init(row) == "b"
    row["higher_is_better"] = True
    assert paper.best_init(row) == "a"
    tie = {"higher_is_better": True, "values": {"a": {"mean": 0.2963}, "b": {"mean": 0.29630001}}}
    assert paper.best_init(tie, digits=3) is None


def test_ablation_table_compares_each_ablation_with_mssdf():
    probe = [paper.ProbeRow("height_rmse_m", {"mssdf": paper.summarise_seeds([5.0, 5.0]),
                                              "no_hsic": paper.summarise_seeds([6.0, 6.0])}),
             paper.ProbeRow("seg_miou", {"mssdf": paper.summarise_seeds([0.5, 0.5]),
                                         "no_hsic": paper.summarise_seeds([0.6, 0.6])})]
    assert paper.ablation_table(probe, ["mssdf", "mae"]).empty
    table = paper.ablation_table(probe, ["mssdf", "mae", "no_hsic"])
    diff = list(table["no_hsic − mssdf (better > 0)"])
    assert diff == ["-1.000", "+0.100"]  # higher RMSE is worse, higher mIoU better


def test_the_readme_block_is_replaced_between_its_markers_only():
    text = f"intro\n{readme.BEGIN}\nold\n{readme.END}\nrest\n"
    new = readme.replace_block(text, "| a |\n")
    assert new == f"intro\n{readme.BEGIN}\n| a |\n{readme.END}\nrest\n"
    assert readme.current_block(new) == "| a |"
    with pytest.raises(ConfigError, match="expected one"):
        readme.replace_block("no markers", "x")
    with pytest.raises(ConfigError, match="expected one"):
        readme.replace_block(text + readme.BEGIN, "x")


def test_figure_files_are_reproducible(tmp_path):
    def draw():
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.bar([0, 1], [0.3, 0.5])
        return fig

    first = [p.read_bytes() for p in F.save_figure(draw(), tmp_path / "a", "bars")]
    second = [p.read_bytes() for p in F.save_figure(draw(), tmp_path / "b", "bars")]
    plt.close("all")
    assert first == second and first[0][:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in first[1]


# ---- the real pipeline's outputs (skipped until `dvc repro figures` has run) ----

RESULTS = ROOT / "reports" / "paper" / "results.json"


@pytest.mark.skipif(not RESULTS.is_file(), reason="reports/paper/results.json: run `dvc repro figures` first")
def test_the_segmentation_table_equals_a_recomputation_from_its_metrics_file():
    """The figures stage's segmentation rows, recomputed here from reports/segmentation/metrics.json."""
    results = json.loads(RESULTS.read_text())
    metrics = json.loads((ROOT / "reports" / "segmentation" / "metrics.json").read_text())
    rows = [r for r in results["rows"] if r["task"] == "segmentation"]
    assert rows, "no segmentation rows"
    assert {(r["dataset"], r["metric"]) for r in rows} == {(d, m) for d in metrics["datasets"] for m in ("miou", "f1")}
    for r in rows:
        for init in metrics["inits"]:
            seeds = np.asarray(metrics["datasets"][r["dataset"]][init][r["metric"]]["seeds"], dtype=float)
            got = r["values"][init]
            assert got["n"] == len(metrics["seeds"]) == seeds.size
            assert math.isclose(got["mean"], seeds.mean(), rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(got["std"], seeds.std(ddof=1), rel_tol=1e-9, abs_tol=1e-12)
            # and the study's own summary agrees at its stored precision
            assert abs(got["mean"] - metrics["datasets"][r["dataset"]][init][r["metric"]]["mean"]) < 1e-5


@pytest.mark.skipif(not RESULTS.is_file(), reason="reports/paper/results.json: run `dvc repro figures` first")
def test_the_readme_results_table_is_the_generated_one():
    table = (ROOT / "reports" / "paper" / "results.md").read_text()
    assert readme.current_block((ROOT / "README.md").read_text()) == table.strip(), (
        "README.md's results table is stale: run `python -m mssdf.reports.readme`")
    results = json.loads(RESULTS.read_text())
    assert table == paper.results_markdown(results)


def test_several_metrics_files_of_one_task_add_their_rows(tmp_path):
    sample = _study({"buildings": {"mssdf": {"miou": [0.4, 0.5, 0.6]}}})
    protocol = _study({"potsdam": {"mssdf": {"miou": [0.70, 0.72, 0.74]}}})
    results = paper.collect_results({"segmentation": [_write(tmp_path, "a.json", sample), _write(tmp_path, "b.json", protocol)]})
    assert [(r["dataset"], r["comparable"]) for r in results["rows"] if r["metric"] == "miou"] == [
        ("buildings", False), ("potsdam", True)]
    assert len(results["generated_from"]) == 2
    both = _study({"buildings": {"mssdf": {"miou": [0.7, 0.8, 0.9]}}})
    results = paper.collect_results({"segmentation": [_write(tmp_path, "a.json", sample), _write(tmp_path, "c.json", both)]})
    table = paper.family_table(results, "segmentation")
    assert list(table["source"]) == [str(tmp_path / "a.json"), str(tmp_path / "c.json")]
    fig = F.family_bars(results, "segmentation")  # same dataset name in two files: two bar groups, not one
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    plt.close(fig)
    assert heights == pytest.approx([0.5, 0.8])
