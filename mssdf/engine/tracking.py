"""Rank-0 metric sinks of a run: history list, tqdm bar, dvclive (optional), resource use."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any, Callable

import torch

try:  # the text bar (tqdm.auto's notebook widget needs ipywidgets, absent here); pinned dependency
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None  # type: ignore[assignment]


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA max allocated on GPU, process max RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class MetricSink:
    """Collects records; on the main process also drives a progress bar and dvclive.

    Args:
        enabled: this is the main process (others only keep the history).
        total, initial: progress-bar extent and start (global steps).
        live_dir: dvclive folder, or None for no dvclive; ``resume`` appends to it.
        progress: show a tqdm bar.
        log: printer for text lines (None: silent).
        desc: the progress bar's label.
    """

    def __init__(
        self,
        enabled: bool,
        total: int,
        initial: int = 0,
        live_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], Any] | None = print,
        desc: str = "train",
    ) -> None:
        self.enabled, self.log = enabled, log
        self.bar = None
        self.live = None
        if not enabled:
            return
        if progress and tqdm is not None:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        if live_dir is not None:
            from dvclive import Live  # optional: only imported when asked for

            self.live = Live(str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=False)

    def say(self, text: str) -> None:
        if self.enabled and self.log is not None:
            (self.bar.write if self.bar is not None else self.log)(text)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def record(self, rec: dict[str, float]) -> None:
        """Send one logged record (``step`` key = global steps done) to the bar and dvclive."""
        if not self.enabled:
            return
        if self.bar is not None and "loss" in rec:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec.get('lr', float('nan')):.2e}",
                                 ips=f"{rec.get('images_per_s', float('nan')):.0f}")
        if self.live is not None:
            self.live.step = int(rec["step"])
            for k, v in rec.items():
                if k != "step":
                    self.live.log_metric(f"train/{k}", float(v))
            self.live.next_step()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            self.live.end()


__all__ = ["MetricSink", "memory_mb"]
