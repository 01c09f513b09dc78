"""What the pre-training notebook (``notebooks/02_pretrain.ipynb``) runs and measures.

The notebook calls these functions, once per variant: it launches the run (in the
kernel, or through ``torchrun`` for several processes), then shows what the run saw and
learnt — the statistics each source is standardised with, the loss of each term for each
modality set, masks on every source, predictions against targets. The frozen-feature
health check of all variants against random initialisation is the next notebook's
(:mod:`mssdf.reports.health`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml

from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sources import SourceSettings
from mssdf.model import MSSDF
from mssdf.paths import resolve
from mssdf.pretrain.config import PretrainConfig
from mssdf.pretrain.mixture import MixtureDataset


@dataclass(frozen=True)
class PretrainReportConfig:
    """Notebook options (the ``pretrain_report`` section of params.yaml)."""

    nproc: int = 1  # >1: launch `torchrun --standalone --nproc_per_node=nproc`
    prepare_if_missing: bool = False  # smoke runs: prepare the sample into data.root first
    prepare_sources: tuple[str, ...] = ("autzen", "ign", "rotterdam", "atlanta", "lasvegas", "neon")  # prepare_if_missing: these, default settings
    out_dir: str = "scratch/pretrain_report"  # metrics (JSON) and figures
    examples_per_source: int = 2  # tiles per source in the mask figures

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")
        if self.examples_per_source < 1:
            raise ValueError(f"examples_per_source must be >= 1, got {self.examples_per_source}")


def ensure_prepared(root: str | Path, sources: Sequence[str], raw_dir: str = "data/raw") -> Path:
    """Prepare ``sources`` (default settings) into ``root`` unless it already holds a prepared index."""
    path = resolve(root)
    if not (path / "index.csv").exists():
        prepare(PrepareConfig(raw_dir=raw_dir, out_dir=str(root), sources={s: SourceSettings() for s in sources}), log=None)
    return path


def run_pretraining(cfg: PretrainConfig, nproc: int = 1) -> tuple[list[dict], Path]:
    """Run pre-training as configured.

    One process: :func:`mssdf.pretrain.pretrain` in this interpreter. Several: the
    resolved config is written to ``<out_dir>/run_config.yaml`` and ``torchrun
    --standalone --nproc_per_node=nproc -m mssdf.pretrain`` runs it (gloo on CPU, nccl on GPUs).

    Returns:
        the logged history (one record per logged step) and the ``final/`` folder.
    """
    from mssdf.pretrain import pretrain

    if nproc == 1:
        result = pretrain(cfg, live=True, progress=False, log=None)
        return result.history, result.final_dir
    out_dir = resolve(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "run_config.yaml"
    config_path.write_text(yaml.safe_dump({"pretrain": cfg.to_dict()}, sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mssdf.pretrain", "--config", str(config_path), "--section", "pretrain", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=resolve("."), env=env, capture_output=True, text=True)  # where relative paths resolve
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    history = json.loads((out_dir / "history.json").read_text())
    return history, out_dir / "final"


@torch.no_grad()
def masked_prediction_quality(model: MSSDF, images: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean cosine similarity between predictions and teacher targets at masked positions, per modality."""
    model.eval()
    out = model(images, masks)
    result = {}
    for k in images:
        cos = torch.nn.functional.cosine_similarity(out.pred[k].float(), out.target[k].float(), dim=-1)  # (B, N)
        result[k] = float(cos[out.masks[k]].mean())
    return result


def source_statistics(root: str | Path, cfg: PretrainConfig) -> "Any":
    """The train statistics each component is standardised with: one row per (component,
    modality, band) with the source's ``mean``, ``std`` and pixel count (``stats.json``)."""
    import pandas as pd

    from mssdf.data.sample import load_stats
    from mssdf.modalities import file_key

    rows = []
    for name, comp in cfg.data.components.items():
        stats = load_stats(resolve(root), comp.task)
        for m in comp.modality_names:
            st = stats[file_key(m, cfg.data.dsm_source)]
            for band, (mean, std) in enumerate(zip(st["mean"], st["std"])):
                rows.append({"component": name, "modality": m, "band": band, "mean": mean, "std": std, "pixels": st.get("pixels")})
    return pd.DataFrame(rows)


def group_losses(history: list[dict], groups: Sequence[str], terms: Sequence[str]) -> "Any":
    """Long table of the logged loss terms per modality set: columns ``step``, ``group``
    (name), ``term``, ``value`` (records without a ``group`` belong to the only group)."""
    import pandas as pd

    rows = []
    for h in history:
        g = groups[int(h.get("group", 0))]
        rows += [{"step": h["step"], "group": g, "term": t, "value": float(h[t])} for t in ("loss", *terms) if t in h]
    return pd.DataFrame(rows, columns=["step", "group", "term", "value"])


def example_batches(dataset: MixtureDataset, per_source: int) -> dict[str, dict[str, torch.Tensor]]:
    """``{component: {m: (k, C_m, S, S)}}``: the first ``per_source`` train crops of each component
    (epoch 0, as training reads them: standardised)."""
    out = {}
    for name, start, part in zip(dataset.names, dataset.offsets, dataset.parts):
        samples = [dataset.get(start + i, 0) for i in range(min(per_source, len(part)))]
        out[name] = {m: torch.stack([s[m] for s in samples]) for m in part.modalities}
    return out


def report_metrics(history: list[dict], groups: Sequence[str], quality: Mapping[str, Mapping[str, float]],
                   patch: int) -> dict[str, Any]:
    """The stage's metrics file (stable keys, for ``dvc metrics`` and the figures stage).

    * ``steps``; ``final_loss``: mean total loss of the last 20 % of logged steps;
    * ``loss_by_group/<group>/<term>``: each term's mean over that group's steps in the last 20 %;
    * ``images_per_s/<group>``: median throughput of the group's steps (after the first 10 %);
    * ``tokens_per_image/<group>``: patches per image of each modality;
    * ``masked_cosine/<group>/<modality>``: cosine between prediction and target at masked patches.
    """
    n = len(history)
    tail = history[n - max(1, n // 5):] if n else []
    late = history[n // 10:] if n else []
    by_group: dict[str, dict[str, list[float]]] = {}
    for h in tail:
        g = groups[int(h.get("group", 0))]
        for t in ("loss", "reconstruction", "contrast", "hsic", "modality"):
            if t in h:
                by_group.setdefault(g, {}).setdefault(t, []).append(float(h[t]))
    speed: dict[str, list[float]] = {}
    for h in late:
        speed.setdefault(groups[int(h.get("group", 0))], []).append(float(h["images_per_s"]))
    mean = lambda v: round(sum(v) / len(v), 6)  # noqa: E731
    return {
        "steps": int(history[-1]["step"]) if history else 0,
        "final_loss": mean([float(h["loss"]) for h in tail]) if tail else None,
        "loss_by_group": {g: {t: mean(v) for t, v in terms.items()} for g, terms in by_group.items()},
        "images_per_s": {g: round(float(sorted(v)[len(v) // 2]), 2) for g, v in speed.items()},
        "tokens_per_image": {g: (int(g.rsplit("@", 1)[1]) // patch) ** 2 for g in groups},
        "masked_cosine": {g: {m: round(float(v), 6) for m, v in q.items()} for g, q in quality.items()},
    }


def history_frame(history: list[dict]) -> "Any":
    """The run's history as a pandas DataFrame indexed by step."""
    import pandas as pd

    return pd.DataFrame(history).set_index("step")
