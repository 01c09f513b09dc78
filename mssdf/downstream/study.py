"""A downstream study: every initialisation × every seed × every dataset of one task.

The ``segmentation``, ``height``, ``classification`` and ``change`` sections of params.yaml
are :class:`StudyConfig`s: a
common ``run`` mapping (a :class:`~mssdf.downstream.config.FinetuneConfig` with its
``profile``), one override mapping per dataset (``datasets``), and the initialisations and
seeds to cross. :func:`run_study` runs each combination into
``<out_dir>/<dataset>/<init>/seed<k>`` (in this process, or under ``torchrun`` with
``nproc > 1``) and returns one row per run; :func:`study_table` is the table
initialisation × dataset with mean ± std over seeds; :func:`study_metrics` the stage's
metrics file (stable keys).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import yaml

from mssdf.config import ConfigError, deep_merge
from mssdf.downstream.config import PAPER_DATASETS, FinetuneConfig, build_finetune_config
from mssdf.paths import resolve


@dataclass(frozen=True)
class StudyConfig:
    """Initialisations × seeds × datasets of one task (see the module docstring)."""

    inits: tuple[str, ...] = ("random", "mae", "mssdf")  # random | a pipeline variant | a path
    seeds: tuple[int, ...] = (0, 1, 2)
    run: dict[str, Any] = field(default_factory=dict)  # the common FinetuneConfig mapping (profile + keys)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides of `run`
    out_dir: str = "scratch/study"  # <out_dir>/<dataset>/<init>/seed<k>: each run's metrics.json (and weights)
    report_dir: str = "scratch/study_report"  # the notebook's metrics file and figures
    keep_weights: Literal["all", "first_seed"] = "first_seed"  # selected weights kept (the figures use the first seed's)
    nproc: int = 1  # > 1: each run under torchrun --standalone --nproc_per_node=nproc

    def __post_init__(self) -> None:
        if not self.inits or not self.seeds or not self.datasets:
            raise ConfigError("inits, seeds and datasets: each needs at least one entry")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.inits)) != len(self.inits):
            raise ConfigError(f"inits / seeds repeat: {self.inits} / {self.seeds}")
        if self.nproc < 1:
            raise ConfigError(f"nproc: must be >= 1, got {self.nproc}")
        for name in self.datasets:  # every combination is valid before any of them runs
            for init in self.inits:
                self.run_config(name, init, self.seeds[0])

    def run_config(self, dataset: str, init: str, seed: int) -> FinetuneConfig:
        """The validated run of one combination (errors name ``datasets.<dataset>.<key>``)."""
        if dataset not in self.datasets:
            raise ConfigError(f"datasets: no dataset {dataset!r} (datasets: {sorted(self.datasets)})")
        entry = dict(self.datasets[dataset])
        preset = entry.pop("preset", None)
        base = dict(self.run)
        if preset is not None:
            if preset not in PAPER_DATASETS:
                raise ConfigError(f"datasets.{dataset}.preset: unknown {preset!r}; choose from {sorted(PAPER_DATASETS)}")
            base = deep_merge(base, PAPER_DATASETS[preset])
        merged = deep_merge(deep_merge(base, entry),
                            {"backbone": {"init": init}, "seed": seed, "out_dir": str(Path(self.out_dir) / dataset / init / f"seed{seed}")})
        return build_finetune_config(merged, f"datasets.{dataset}")


def run_study(cfg: StudyConfig, log: Callable[[str], Any] | None = print, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every combination; one row per run with stable keys ``dataset``, ``init``, ``seed``,
    ``split`` (val / test), the metrics of that split, ``best_step``, ``out_dir``, ``label_kind``."""
    from mssdf.downstream.engine import finetune

    preflight(cfg, root)
    rows: list[dict[str, Any]] = []
    for dataset in cfg.datasets:
        for init in cfg.inits:
            for seed in cfg.seeds:
                run = cfg.run_config(dataset, init, seed)
                if cfg.nproc == 1:
                    res = finetune(run, root=root, log=None)
                    summary = {"val": res.val, "test": res.test, "best_step": res.best_step,
                               "label_kind": res.info["label_kind"], "data": res.info["description"]}
                else:
                    summary = _torchrun(run, cfg.nproc)
                _tidy(resolve(run.out_dir), keep_weights=cfg.keep_weights == "all" or seed == cfg.seeds[0])
                for split in ("val", "test"):
                    rows.append({"dataset": dataset, "init": init, "seed": seed, "split": split, **_scalars(summary[split]),
                                 "best_step": summary["best_step"], "label_kind": summary["label_kind"],
                                 "out_dir": run.out_dir})
                if log is not None:
                    key = run.selection[0]
                    log(f"{dataset} · {init} · seed {seed}: val {key} {_fmt(summary['val'].get(key))}, "
                        f"test {key} {_fmt(summary['test'].get(key))} (best step {summary['best_step']})")
    return rows


def preflight(cfg: StudyConfig, root: str | Path | None = None) -> None:
    """Before the first run: every dataset's splits exist and hold at least one global batch
    of training samples (a problem in the last dataset must not surface after hours of the first).

    Raises:
        DataError: naming the dataset and what is missing.
    """
    from mssdf.data.io import DataError
    from mssdf.downstream.data import build_task_data

    for dataset in cfg.datasets:
        run = cfg.run_config(dataset, cfg.inits[0], cfg.seeds[0])
        try:
            data = build_task_data(run, {m: True for m in run.backbone.modalities}, root)
        except DataError as err:
            raise DataError(f"datasets.{dataset}: {err}") from None
        need = run.batch_size * cfg.nproc
        if len(data.train) < need:
            raise DataError(f"datasets.{dataset}: {len(data.train)} train samples, fewer than one global batch "
                            f"({run.batch_size} x {cfg.nproc} process(es)); set datasets.{dataset}.batch_size")


def _tidy(out_dir: Path, keep_weights: bool) -> None:
    """After a finished run: drop its resumable checkpoints (optimizer state included) and,
    unless kept, its selected weights — a study keeps metrics for every run, weights for few."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    if not keep_weights:
        shutil.rmtree(out_dir / "best", ignore_errors=True)


def _torchrun(run: FinetuneConfig, nproc: int) -> dict[str, Any]:
    out_dir = resolve(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "run_config.yaml"
    config.write_text(yaml.safe_dump({"finetune": run.to_dict()}, sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mssdf.downstream", "--config", str(config), "--section", "finetune"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=resolve("."), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    m = json.loads((out_dir / "metrics.json").read_text())
    return {"val": m["val"], "test": m["test"], "best_step": m["best_step"], "label_kind": m["label_kind"], "data": m["data"]}


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics (per-class dicts flattened as ``<metric>/<class>``; the confusion matrix and
    curves dropped)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out.update({f"{k}/{c}": (float("nan") if x is None else float(x)) for c, x in v.items()
                        if x is None or isinstance(x, (int, float))})
        elif isinstance(v, (int, float)) or v is None:
            out[k] = float("nan") if v is None else float(v)
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def study_table(rows: list[dict[str, Any]], metric: str, split: str = "test") -> "Any":
    """Initialisation × dataset: ``mean ± std`` of ``metric`` over seeds (``split`` rows)."""
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if r["split"] == split])
    grouped = frame.groupby(["dataset", "init"], sort=False)[metric]
    stats = grouped.agg(["mean", "std", "count"])
    stats["mean ± std"] = [f"{m:.4f} ± {s:.4f}" if np.isfinite(s) else f"{m:.4f}" for m, s in zip(stats["mean"], stats["std"])]
    return stats["mean ± std"].unstack("init")


def study_metrics(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """``{<dataset>: {<init>: {<metric>: {"mean", "std", "seeds": [...]}}}}`` over the test rows
    (6 digits; NaN → None), the stage's metrics file."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["split"] != "test":
            continue
        node = out.setdefault(r["dataset"], {}).setdefault(r["init"], {})
        for m in metrics:
            node.setdefault(m, {"seeds": []})["seeds"].append(_num(r.get(m)))
    for per_init in out.values():
        for per_metric in per_init.values():
            for m, v in per_metric.items():
                vals = np.array([x for x in v["seeds"] if x is not None], dtype=float)
                v["mean"] = _num(vals.mean()) if len(vals) else None
                v["std"] = _num(vals.std(ddof=1)) if len(vals) > 1 else None
    return out


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return round(f, 6) if np.isfinite(f) else None


__all__ = ["StudyConfig", "preflight", "run_study", "study_table", "study_metrics"]
