"""The paper's results beside ours: every task's metrics file read into one results table.

The figures stage (``notebooks/09_paper_figures``) reads only the metrics files the other
stages declare (``reports/<task>/metrics.json``, ``reports/pretrain_probe/metrics.json``,
``reports/pretrain/<variant>/metrics.json``, ``reports/method/metrics.json``,
``reports/prepare/metrics.json``) and turns them into:

* one **row** per (task, dataset or protocol, metric): for every initialisation the mean,
  the sample standard deviation (``ddof=1``) and the count of the per-seed values, **recomputed
  from the seeds** and checked against the mean the study wrote (:func:`collect_results`);
* the **paper's number** beside a row only when the row's dataset is the paper's dataset
  (:data:`PAPER_RESULTS`, matched by the study's dataset name or ``paper_datasets``), and
  the explicit note ``not comparable: sample data`` otherwise;
* the label provenance of each row (``real``, ``SYNTHETIC``, ``DERIVED``), so synthetic or
  derived labels say so wherever a number appears.

Units: our segmentation / change scores are fractions (0-1); the paper's percentages are
stored as fractions too (78.30 mIoU -> 0.7830). The paper's US3D RMSE 0.182 is in the
normalised 8-bit height unit over the pixels whose 8-bit target is neither 0 nor 255, our
``rmse_norm_no_ground``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mssdf.config import ConfigError

NOT_COMPARABLE = "not comparable: sample data"


@dataclass(frozen=True)
class PaperResult:
    """One number the paper reports for MSSDF (docs/method.md, "Headline numbers")."""

    task: str  # our task name
    metric: str  # the key of our metrics file it compares with
    value: float  # in our unit (fractions for IoU)
    dataset: str  # the paper's dataset, for display
    protocol: str  # the paper's protocol, for display
    shown: str  # the number as the paper prints it
    note: str = ""


PAPER_RESULTS: dict[str, PaperResult] = {
    "potsdam": PaperResult("segmentation", "miou", 0.7830, "ISPRS Potsdam", "50 % of train", "78.30 mIoU"),
    "vaihingen": PaperResult("segmentation", "miou", 0.7650, "ISPRS Vaihingen", "50 % of train", "76.50 mIoU"),
    "us3d": PaperResult("height", "rmse_norm_no_ground", 0.182, "US3D", "-", "0.182 RMSE",
                        note="RMSE in the normalised 8-bit height unit over the pixels whose 8-bit "
                             "target is neither 0 nor 255 (the paper's 'ground pixels excluded')"),
    "second": PaperResult("change", "miou", 0.4751, "SECOND", "binary change", "47.51 mIoU",
                          note="the paper does not say which mIoU; compared with the two-class mIoU"),
}
"""The paper's headline numbers, keyed by our preset name (mssdf.downstream.config.PAPER_DATASETS)."""


@dataclass(frozen=True)
class MetricSpec:
    """A metric shown for a task: its key in the metrics file, its label, its direction."""

    key: str
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class FamilySpec:
    """A task family of the paper and how its stage's metrics file is laid out."""

    task: str  # stage / task name, reports/<task>/metrics.json
    family: str  # the paper's name of the task family
    metrics: tuple[MetricSpec, ...]  # the first is the headline metric (bar charts)
    container: str = "datasets"  # key holding {dataset|protocol: {init: {metric: {...}}}}
    baseline: str | None = None  # key holding {dataset: {metric: value}} of a no-learning baseline
    baseline_label: str = ""


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("segmentation", "semantic segmentation",
               (MetricSpec("miou", "mIoU"), MetricSpec("f1", "mean F1"))),
    FamilySpec("height", "height estimation",
               (MetricSpec("rmse_m", "RMSE (m)", False), MetricSpec("rmse_norm", "RMSE (8-bit unit)", False),
                MetricSpec("rmse_norm_no_ground", "RMSE (8-bit unit, no 0/255)", False))),
    FamilySpec("classification", "scene classification",
               (MetricSpec("f1", "macro F1"), MetricSpec("overall_accuracy", "overall accuracy")),
               container="protocols"),
    FamilySpec("change", "change detection",
               (MetricSpec("change_iou", "change IoU"), MetricSpec("miou", "mIoU")),
               baseline="baseline", baseline_label="pixel difference"),
    FamilySpec("detection", "object detection",
               (MetricSpec("map_50", "mAP@0.5"), MetricSpec("map", "mAP@[.5:.95]"))),
)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1; None from a single value) and count of the finite per-seed values."""

    mean: float | None
    std: float | None
    n: int
    seeds: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "seeds": list(self.seeds)}


def summarise_seeds(values: Sequence[Any]) -> Summary:
    """:class:`Summary` of per-seed values; ``None``/NaN values (a metric a run cannot have) are left out."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return Summary(None, None, 0)
    arr = np.asarray(finite, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None  # one seed: no spread to report
    return Summary(float(arr.mean()), std, int(arr.size), tuple(finite))


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics JSON file as a dict; a missing or unreadable file is an error naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: metrics file not found (run its stage first: dvc repro)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not a readable JSON metrics file ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object at the top level")
    return data


def _check_mean(stored: Any, summary: Summary, where: str, tol: float = 1e-5) -> None:
    if stored is None or summary.mean is None:
        return
    if abs(float(stored) - summary.mean) > tol * max(1.0, abs(summary.mean)):
        raise ConfigError(f"{where}: stored mean {stored} differs from the mean of its seeds {summary.mean}")


def paper_match(task: str, dataset: str, metric: str, paper_datasets: Mapping[str, str]) -> PaperResult | None:
    """The paper's number for ``task``/``dataset``/``metric`` when the dataset is the paper's, else None."""
    preset = paper_datasets.get(dataset, dataset)
    result = PAPER_RESULTS.get(preset)
    if result is None or result.task != task or result.metric != metric:
        return None
    return result


def family_paper_reference(task: str) -> str:
    """What the paper reports for a task family, for display next to sample rows ('' if nothing)."""
    shown = [f"{r.dataset} {r.shown}" for r in PAPER_RESULTS.values() if r.task == task]
    return "; ".join(shown) if shown else "not reported"


def label_kind_of(metrics: Mapping[str, Any]) -> str:
    """``real``, ``SYNTHETIC`` or ``DERIVED``: the provenance of a stage's labels as it wrote it."""
    kind = str(metrics.get("label_kind", "real")).lower()
    return kind if kind in ("real", "none") else kind.upper()


def collect_family(spec: FamilySpec, metrics: Mapping[str, Any], source: str,
                   paper_datasets: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The result rows of one task family from its metrics file (see the module docstring).

    Raises:
        ConfigError: the file lacks ``spec.container``, or a stored mean disagrees with its seeds.
    """
    paper_datasets = dict(paper_datasets or {})
    if spec.container not in metrics or not isinstance(metrics[spec.container], Mapping):
        raise ConfigError(f"{source}: no '{spec.container}' mapping (keys: {sorted(metrics)})")
    labels = label_kind_of(metrics)
    inits = list(metrics.get("inits") or [])
    rows = []
    for dataset, per_init in metrics[spec.container].items():
        for m in spec.metrics:
            values: dict[str, dict[str, Any]] = {}
            for init in inits or list(per_init):
                entry = per_init.get(init, {}).get(m.key)
                if entry is None:
                    continue
                s = summarise_seeds(entry.get("seeds", []))
                _check_mean(entry.get("mean"), s, f"{source}: {spec.container}.{dataset}.{init}.{m.key}")
                values[init] = s.as_dict()
            if not any(v["n"] for v in values.values()):
                continue  # a metric this dataset cannot have (e.g. COCO mAP of oriented boxes)
            paper = paper_match(spec.task, dataset, m.key, paper_datasets)
            baseline = None
            if spec.baseline and isinstance(metrics.get(spec.baseline), Mapping):
                b = metrics[spec.baseline].get(dataset, {}).get(m.key)
                baseline = None if b is None else float(b)
            rows.append({
                "family": spec.family, "task": spec.task, "dataset": dataset, "source": source, "metric": m.key,
                "metric_label": m.label, "higher_is_better": m.higher_is_better, "labels": labels,
                "paper": None if paper is None else paper.value,
                "paper_shown": None if paper is None else paper.shown,
                "paper_dataset": family_paper_reference(spec.task) if paper is None else f"{paper.dataset} ({paper.protocol})",
                "comparable": paper is not None,
                "note": (paper.note if paper is not None else NOT_COMPARABLE),
                "baseline": baseline, "baseline_label": spec.baseline_label if baseline is not None else "",
                "values": values,
            })
    return rows


def collect_results(metrics_files: Mapping[str, str | Path | Sequence[str | Path]],
                    paper_datasets: Mapping[str, str] | None = None,
                    families: Sequence[FamilySpec] = FAMILIES, root: str | Path | None = None) -> dict[str, Any]:
    """Every task family's rows from ``{task: metrics file or list of files}`` (a task without
    a file is skipped; several files of one task, e.g. the sample study and a paper protocol's,
    add their rows in order).

    Returns:
        ``{"generated_from": [files], "inits": [every init seen, in first-seen order],
        "rows": [row, ...]}`` (the rows of :func:`collect_family`).
    """
    rows, files, inits = [], [], []
    for spec in families:
        if spec.task not in metrics_files:
            continue
        given = metrics_files[spec.task]
        for path in map(Path, [given] if isinstance(given, (str, Path)) else given):
            data = read_metrics(path)
            shown = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
            files.append(shown.as_posix())
            for init in data.get("inits") or []:
                if init not in inits:
                    inits.append(init)
            rows.extend(collect_family(spec, data, shown.as_posix(), paper_datasets))
    return {"generated_from": files, "inits": inits, "rows": rows}


def row_digits(row: Mapping[str, Any], digits: int = 3) -> int:
    """Decimals for every value of a row: one more when all its means are below 0.01 (near-zero mAPs)."""
    means = [abs(v["mean"]) for v in row["values"].values() if v.get("mean") is not None]
    return digits + 1 if means and max(means) < 0.01 else digits


def format_value(summary: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.466 ± 0.009"`` with ``digits`` decimals; ``"0.466 (n=1)"`` from a single seed; ``"—"`` when missing."""
    if not summary or summary.get("mean") is None:
        return "—"
    if summary.get("std") is None:
        return f"{summary['mean']:.{digits}f} (n={summary.get('n', 1)})"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def family_table(results: Mapping[str, Any], task: str, digits: int = 3) -> "Any":
    """One family's table (pandas): rows dataset/protocol × metric, a column per initialisation,
    the baseline where the task has one, the label provenance and the paper's number or note."""
    import pandas as pd

    rows = [r for r in results["rows"] if r["task"] == task]
    inits = [i for i in results["inits"] if any(i in r["values"] for r in rows)]
    records = []
    for r in rows:
        d = row_digits(r, digits)
        rec: dict[str, Any] = {"dataset": r["dataset"], "metric": r["metric_label"] + (" ↑" if r["higher_is_better"] else " ↓")}
        if len({x.get("source") for x in rows}) > 1:  # several metrics files of the task: name each row's
            rec = {"source": r.get("source"), **rec}
        for init in inits:
            rec[init] = format_value(r["values"].get(init), d)
        if any(x["baseline"] is not None for x in rows):
            label = next(x["baseline_label"] for x in rows if x["baseline"] is not None)
            rec[label] = "—" if r["baseline"] is None else f"{r['baseline']:.{d}f}"
        rec["labels"] = r["labels"]
        rec["paper (MSSDF)"] = r["paper_shown"] if r["comparable"] else f"{NOT_COMPARABLE} (paper: {r['paper_dataset']})"
        records.append(rec)
    return pd.DataFrame.from_records(records)


def best_init(row: Mapping[str, Any], digits: int | None = None) -> str | None:
    """The initialisation with the best mean in a row (by the metric's direction); None when
    nothing was measured or when the best is tied (at ``digits`` decimals, if given)."""
    means = {k: v["mean"] for k, v in row["values"].items() if v.get("mean") is not None}
    if not means:
        return None
    if digits is not None:
        means = {k: round(m, digits) for k, m in means.items()}
    best = (max if row["higher_is_better"] else min)(means.values())
    winners = [k for k, m in means.items() if m == best]
    return winners[0] if len(winners) == 1 else None


def headline_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (source file, task, dataset): the family's headline metric, or on a paper
    dataset the metric the paper reports (so its number is shown beside ours)."""
    heads = {s.task: s.metrics[0].key for s in FAMILIES}
    comparable = {(r.get("source"), r["task"], r["dataset"]) for r in results["rows"] if r["comparable"]}
    out = []
    for r in results["rows"]:
        key = (r.get("source"), r["task"], r["dataset"])
        if (r["comparable"] if key in comparable else heads.get(r["task"]) == r["metric"]):
            out.append(r)
    return out


def results_markdown(results: Mapping[str, Any], inits: Sequence[str] | None = None, digits: int = 3) -> str:
    """The headline rows (:func:`headline_rows`) as one Markdown table: the best mean in bold
    (none when tied), the no-learning baseline where the task has one, the paper's number on
    the paper's datasets."""
    inits = list(inits or results["inits"])
    lines = ["| task | dataset / protocol | metric | labels | " + " | ".join(inits)
             + " | no-learning baseline | paper (MSSDF) |",
             "|---|---|---|---|" + "---|" * len(inits) + "---|---|"]
    for r in headline_rows(results):
        d = row_digits(r, digits)
        best = best_init(r, d)
        cells = []
        for init in inits:
            text = format_value(r["values"].get(init), d)
            cells.append(f"**{text}**" if init == best else text)
        baseline = "—" if r["baseline"] is None else f"{r['baseline']:.{d}f} ({r['baseline_label']})"
        paper = r["paper_shown"] if r["comparable"] else NOT_COMPARABLE
        arrow = "↑" if r["higher_is_better"] else "↓"
        lines.append(f"| {r['family']} | {r['dataset']} | {r['metric_label']} {arrow} | {r['labels']} | "
                     + " | ".join(cells) + f" | {baseline} | {paper} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ProbeRow:
    """One probe metric of the frozen-feature health check, per variant."""

    metric: str
    values: dict[str, Summary] = field(default_factory=dict)


PROBE_LOWER_IS_BETTER = ("rmse",)


def probe_results(metrics: Mapping[str, Any], source: str = "pretrain_probe") -> list[ProbeRow]:
    """The health check's rows (``probe.<metric>.<variant>``) recomputed from their seeds."""
    if not isinstance(metrics.get("probe"), Mapping):
        raise ConfigError(f"{source}: no 'probe' mapping")
    rows = []
    for metric, per_variant in metrics["probe"].items():
        values = {}
        for variant, entry in per_variant.items():
            s = summarise_seeds(entry.get("seeds", []))
            _check_mean(entry.get("mean"), s, f"{source}: probe.{metric}.{variant}")
            values[variant] = s
        rows.append(ProbeRow(metric, values))
    return rows


def ablation_variants(variants: Sequence[str]) -> list[str]:
    """The pre-training variants that are ablations of MSSDF (neither ``mssdf`` nor the ``mae`` baseline)."""
    return [v for v in variants if v not in ("mssdf", "mae")]


def ablation_table(probe: Sequence[ProbeRow], variants: Sequence[str], digits: int = 3) -> "Any":
    """Probe metrics of ``mssdf`` and each ablation, with each ablation's difference to ``mssdf``
    (positive = the ablation is better, whichever the metric's direction). Empty when no ablation ran."""
    import pandas as pd

    ablations = ablation_variants(variants)
    if not ablations:
        return pd.DataFrame()
    records = []
    for row in probe:
        base = row.values.get("mssdf")
        rec: dict[str, Any] = {"probe": row.metric, "mssdf": format_value(base.as_dict() if base else None, digits)}
        sign = -1.0 if any(t in row.metric for t in PROBE_LOWER_IS_BETTER) else 1.0
        for v in ablations:
            s = row.values.get(v)
            rec[v] = format_value(s.as_dict() if s else None, digits)
            if s is not None and base is not None and s.mean is not None and base.mean is not None:
                rec[f"{v} − mssdf (better > 0)"] = f"{sign * (s.mean - base.mean) + 0.0:+.{digits}f}"
        records.append(rec)
    return pd.DataFrame.from_records(records)


__all__ = [
    "NOT_COMPARABLE", "PaperResult", "PAPER_RESULTS", "MetricSpec", "FamilySpec", "FAMILIES", "Summary",
    "summarise_seeds", "read_metrics", "paper_match", "family_paper_reference", "label_kind_of",
    "collect_family", "collect_results", "row_digits", "format_value", "family_table", "best_init", "headline_rows",
    "results_markdown",
    "ProbeRow", "probe_results", "ablation_variants", "ablation_table",
]
