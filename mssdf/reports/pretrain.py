"""What the pre-training notebook (``notebooks/02_pretrain.ipynb``) runs and measures.

The notebook calls these functions: it launches the run (in the kernel, or through
``torchrun`` for several processes), then evaluates the result with frozen-feature
probes on the real sample — the pre-trained encoder against the same architecture at
random initialisation.
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

from mssdf.weights.native import load_pretrained
from mssdf.data.prepare import PrepareConfig, prepare
from mssdf.data.sources import SourceSettings
from mssdf.data.sample import SampleTiles
from mssdf.model import MSSDF, Encoder
from mssdf.paths import resolve
from mssdf.pretrain.config import PretrainConfig
from mssdf.reports.probe import (
    linear_classification_probe,
    patch_features,
    patch_labels,
    patch_means,
    ridge_regression_probe,
)


@dataclass(frozen=True)
class PretrainReportConfig:
    """Notebook options (the ``pretrain_report`` section of params.yaml)."""

    nproc: int = 1  # >1: launch `torchrun --standalone --nproc_per_node=nproc`
    prepare_if_missing: bool = False  # smoke runs: prepare the sample into data.root first
    prepare_sources: tuple[str, ...] = ("autzen", "ign")  # prepare_if_missing: these sources, default settings
    out_dir: str = "scratch/pretrain_report"  # probe metrics (JSON) and figures
    probe_modality: str = "rgb"  # the probes see this modality only
    height_task: str = "height"  # RGB -> nDSM (Autzen)
    height_eval_split: str = "test"
    seg_task: str = "seg_asprs"  # RGB -> ASPRS classes (IGN)
    seg_eval_split: str = "val"  # the IGN strip is too small for a test split
    probe_l2: float = 1e-3
    ridge_l2: float = 10.0
    preview_tiles: int = 4

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc must be >= 1, got {self.nproc}")


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


#: Display names of the encoders :func:`load_encoders` returns (keys are the metric keys).
ENCODER_LABELS = {"pretrained": "pre-trained", "random_init": "random init"}


def load_encoders(final_dir: str | Path, seed: int = 0) -> dict[str, Encoder]:
    """``{"pretrained": ..., "random_init": ...}``: the pre-trained encoder and the same
    architecture at random initialisation."""
    trained = load_pretrained(final_dir).eval()
    torch.manual_seed(seed)
    random = MSSDF(trained.cfg).eval()
    return {"pretrained": trained.encoder, "random_init": random.encoder}


def _tiles(root: Path, task: str, split: str, modality: str, target: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    ds = SampleTiles(root, task, split, modalities=[modality])
    samples = [ds[i] for i in range(len(ds))]
    if not samples:
        return None, None
    x = torch.stack([torch.as_tensor(s[modality]) for s in samples]).float()
    y = torch.stack([torch.as_tensor(s[target]) for s in samples])
    return x, y


def probe_encoders(encoders: Mapping[str, Encoder], root: str | Path, cfg: PretrainReportConfig) -> list[dict[str, Any]]:
    """Frozen-feature probes of every encoder on the sample's height and segmentation tasks.

    Returns:
        one row per (encoder, task): stable keys ``encoder`` (the key of ``encoders``),
        ``task``, ``metric`` (``rmse_m``: lower is better; ``miou``: higher is better) and
        ``score``, with the probe's other figures and sample counts (a NaN score and a
        ``note`` where a split has no tiles).
    """
    from mssdf.data.tasks import TASKS

    root = resolve(root)
    m = cfg.probe_modality
    rows: list[dict[str, Any]] = []
    height_key = {"task": cfg.height_task, "metric": "rmse_m"}
    seg_key = {"task": cfg.seg_task, "metric": "miou"}
    height = _splits(root, cfg.height_task, ("train", cfg.height_eval_split), m, "height")
    seg = _splits(root, cfg.seg_task, ("train", cfg.seg_eval_split), m, "label")
    n_classes = len(TASKS[cfg.seg_task].classes)
    for name, enc in encoders.items():
        p = enc.cfg.patch_size
        if isinstance(height, str):
            rows.append({"encoder": name, **height_key, "score": float("nan"), "note": height})
        else:
            feats = {s: patch_features(enc, {m: x}) for s, (x, _) in height.items()}
            targets = {s: patch_means(y.squeeze(1) if y.dim() == 4 else y, p) for s, (_, y) in height.items()}
            r = ridge_regression_probe(
                feats["train"].flatten(0, 1), targets["train"].flatten(),
                feats[cfg.height_eval_split].flatten(0, 1), targets[cfg.height_eval_split].flatten(), cfg.ridge_l2,
            )  # fmt: skip
            rows.append({"encoder": name, **height_key, "score": r.rmse, "baseline (train mean)": r.rmse_mean_baseline,
                         "n_train": r.n_train, "n_eval": r.n_test})  # fmt: skip
        if isinstance(seg, str):
            rows.append({"encoder": name, **seg_key, "score": float("nan"), "note": seg})
        else:
            feats = {s: patch_features(enc, {m: x}) for s, (x, _) in seg.items()}
            labels = {s: patch_labels(y.long(), p, n_classes) for s, (_, y) in seg.items()}
            c = linear_classification_probe(
                feats["train"].flatten(0, 1), labels["train"].flatten(),
                feats[cfg.seg_eval_split].flatten(0, 1), labels[cfg.seg_eval_split].flatten(), n_classes, cfg.probe_l2,
            )  # fmt: skip
            rows.append({"encoder": name, **seg_key, "score": c.mean_iou, "accuracy": c.accuracy,
                         "n_train": c.n_train, "n_eval": c.n_test})  # fmt: skip
    return rows


def _splits(root: Path, task: str, splits: tuple[str, ...], modality: str, target: str) -> dict | str:
    """``{split: (inputs, targets)}``, or a note saying which split has no tiles."""
    out = {}
    for s in splits:
        x, y = _tiles(root, task, s, modality, target)
        if x is None:
            return f"no {s} tiles of {task} in {root}"
        out[s] = (x, y)
    return out


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


def report_metrics(probe_rows: list[dict[str, Any]], quality: Mapping[str, float], history: list[dict]) -> dict[str, Any]:
    """The stage's metrics file (stable keys, for ``dvc metrics`` and later stages).

    ``probe/<task>_<metric>/<encoder>`` from :func:`probe_encoders`' rows,
    ``masked_cosine/<modality>``, ``final_loss`` (mean of the last ten logged losses) and
    ``steps``.
    """
    probe: dict[str, dict[str, float]] = {}
    for r in probe_rows:
        probe.setdefault(f"{r['task']}_{r['metric']}", {})[r["encoder"]] = round(float(r["score"]), 6)
    losses = [float(h["loss"]) for h in history[-10:]]
    return {
        "probe": probe,
        "masked_cosine": {k: round(float(v), 6) for k, v in quality.items()},
        "final_loss": round(sum(losses) / max(len(losses), 1), 6),
        "steps": int(history[-1]["step"]) if history else 0,
    }


def history_frame(history: list[dict]) -> "Any":
    """The run's history as a pandas DataFrame indexed by step."""
    import pandas as pd

    return pd.DataFrame(history).set_index("step")
