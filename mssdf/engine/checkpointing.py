"""Resumable training checkpoints (any task: pre-training, fine-tuning).

A checkpoint ``<out_dir>/checkpoints/step_<global step, 8 digits>.pt`` is written
atomically (temporary file in the same folder, then ``os.replace``: a killed run leaves
either the previous set or a complete new file, never a partial one). It holds only
tensors and plain types and is read back with ``torch.load(weights_only=True)``:

* ``model``: the full state dict (student, heads and teacher);
* ``optimizer``, ``scheduler``, ``scaler`` (None without fp16);
* ``rng``: per rank, the Python, NumPy, torch CPU and CUDA generator states (NumPy's
  key array stored as a tensor);
* ``position``: ``epoch``, ``batch`` (batches of that epoch already consumed),
  ``global_step``; the data order and the masks are functions of (seed, epoch) and
  (seed, step), so this position is all the sampler/mask state there is;
* ``config`` (the plain run config), ``history`` (logged records), ``world_size``.

(A task's final weights are its own business: pre-training writes them with
:func:`mssdf.pretrain.engine.save_final`.)
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mssdf.atomic import atomic_write

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint after ``step`` optimisation steps."""
    return Path(out_dir) / CHECKPOINTS / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of complete checkpoints in ``out_dir``, oldest first."""
    folder = Path(out_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``out_dir`` (None if there is none)."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def capture_rng() -> dict[str, Any]:
    """This process's generator states as tensors and plain types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code unpickled)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"{path}: cannot read checkpoint ({err})") from err


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for _, p in list_checkpoints(out_dir)[:-keep]:
        p.unlink(missing_ok=True)


def remove_partial(out_dir: str | Path) -> None:
    """Delete temporary files a killed run left behind (never complete checkpoints)."""
    folder = Path(out_dir) / CHECKPOINTS
    if folder.is_dir():
        for p in folder.glob(".step_*.tmp"):
            p.unlink(missing_ok=True)


__all__ = [
    "CHECKPOINTS", "checkpoint_path", "list_checkpoints", "latest_checkpoint", "capture_rng", "restore_rng",
    "save_checkpoint", "load_checkpoint", "prune_checkpoints", "remove_partial",
]
