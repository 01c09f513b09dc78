"""Shared by the benchmark scripts: timing a call on CPU or CUDA, writing the figures to JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


def save_figures(out: dict[str, Any], path: str | None) -> None:
    """Write ``out`` as JSON to ``path`` (nothing when ``path`` is None or empty)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"\nfigures written to {path}")


def time_cpu(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_cuda(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn()`` measured with CUDA events (each synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out
