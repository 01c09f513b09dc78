"""Sliding-window inference over tiles larger (or smaller) than the model's input.

:func:`sliding_window` runs a model on square windows laid on a regular grid
(:func:`window_grid`), a few windows at a time, and averages the overlapping outputs
with per-pixel weights into one ``(B, num_outputs, H, W)`` map (averaged logits for
segmentation, averaged values for regression).

Design:

* Grid: stride ``window - overlap_px``; offsets ``0, stride, 2 * stride, ...`` and a
  last window flush with the bottom / right border, so every pixel is covered even when
  the tile size is not a multiple of the stride.
* A side shorter than the window is padded at the bottom / right up to the window by
  *reflection* (``pad_mode="reflect"``; mirrored without repeating the edge pixel,
  repeated as often as needed for very small tiles; a 1-pixel side is replicated) or
  with zeros (``pad_mode="constant"``), and the output is cropped back. Tiles at least
  as large as the window are never padded (nor copied).
* Memory: only ``batch_size`` windows exist at a time (sliced and stacked per call);
  the accumulator is one float32 ``(B, num_outputs, H', W')`` map plus one ``(H', W')``
  weight sum, on ``out_device`` (e.g. the CPU while the model runs on a GPU).
* Weights: ``"uniform"`` (plain mean of the overlapping windows) or ``"gaussian"``
  (centre-weighted, sigma = window / 8 as in nnU-Net, floored at a tiny positive value
  so that every pixel has weight > 0): pixels near a window border, where the model sees
  less context, count less.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sliding_window", "window_grid", "window_weights", "overlap_pixels"]

#: Smallest gaussian weight (relative to the centre's 1), so no pixel has weight 0.
_MIN_GAUSSIAN_WEIGHT = 1e-6


def _offsets(size: int, window: int, stride: int) -> list[int]:
    """Window starts along one side of length ``size`` (padded to ``window`` if shorter)."""
    last = max(size - window, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_grid(h: int, w: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(top, left)`` of the windows covering an ``h x w`` image.

    Rows ``0, stride, 2 * stride, ...`` then one flush with the bottom (``top = h -
    window``) unless already there; the same for columns; row-major order. A side
    shorter than ``window`` gets the single start 0: the image must then be padded to
    ``window`` on that side (:func:`sliding_window` does), i.e. every window lies inside
    the ``max(h, window) x max(w, window)`` padded image.
    """
    for name, v in (("h", h), ("w", w), ("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave pixels uncovered")
    return [(top, left) for top in _offsets(h, window, stride) for left in _offsets(w, window, stride)]


def overlap_pixels(window: int, overlap: float | int) -> int:
    """Overlap in pixels: an ``int`` is pixels in ``[0, window)``, a ``float`` a fraction
    of the window in ``[0, 1)`` (floored to whole pixels)."""
    if isinstance(overlap, bool):
        raise ValueError(f"overlap must be an int (pixels) or a float (fraction), got {overlap!r}")
    if isinstance(overlap, int):
        if not 0 <= overlap < window:
            raise ValueError(f"overlap of {overlap} pixels must be in [0, window={window})")
        return overlap
    if isinstance(overlap, float):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap fraction {overlap} must be in [0, 1)")
        return int(math.floor(overlap * window))
    raise ValueError(f"overlap must be an int (pixels) or a float (fraction), got {type(overlap).__name__}")


def window_weights(window: int, kind: Literal["uniform", "gaussian"] = "uniform", device=None) -> Tensor:
    """``(window, window)`` float32 per-pixel weights of one window's output (max 1, all > 0)."""
    if kind == "uniform":
        return torch.ones(window, window, device=device)
    if kind == "gaussian":
        sigma = window / 8.0
        x = torch.arange(window, dtype=torch.float64, device=device) - (window - 1) / 2.0
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        w2 = torch.outer(g, g)
        return (w2 / w2.max()).clamp(min=_MIN_GAUSSIAN_WEIGHT).to(torch.float32)
    raise ValueError(f"weight must be 'uniform' or 'gaussian', got {kind!r}")


def _pad_bottom_right(x: Tensor, ph: int, pw: int, mode: str) -> Tensor:
    """Pad ``(B, C, H, W)`` by ``ph`` rows at the bottom and ``pw`` columns at the right."""
    if mode == "constant":
        return F.pad(x, (0, pw, 0, ph))
    # Reflection of at most size - 1 pixels per F.pad call, repeated for larger pads;
    # a side of 1 pixel has nothing to mirror and is replicated.
    for dim, pad in ((2, ph), (3, pw)):
        while pad > 0:
            size = x.shape[dim]
            step = pad if size == 1 else min(pad, size - 1)
            args = (0, 0, 0, step) if dim == 2 else (0, step, 0, 0)
            x = F.pad(x, args, mode="replicate" if size == 1 else "reflect")
            pad -= step
    return x


@torch.no_grad()
def sliding_window(
    model_fn: Callable[[dict[str, Tensor]], Tensor],
    images: Mapping[str, Tensor],
    window: int,
    overlap: float | int,
    num_outputs: int,
    batch_size: int = 4,
    weight: Literal["uniform", "gaussian"] = "uniform",
    out_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    pad_mode: Literal["reflect", "constant"] = "reflect",
) -> Tensor:
    """Weighted average of ``model_fn`` over overlapping windows of a (multi-modal) tile.

    Args:
        model_fn: ``{m: (b, C_m, window, window)} -> (b, num_outputs, window, window)``
            (logits or values; any float dtype), ``b <= batch_size``. Called under
            ``torch.no_grad()``.
        images: ``{m: (1 or B, C_m, H, W)}``, one entry per modality, all with the same
            ``H, W``; a batch of 1 is shared by every batch element.
        window: side of the square window the model takes.
        overlap: between neighbouring windows; int = pixels in ``[0, window)``, float =
            fraction in ``[0, 1)`` (see :func:`overlap_pixels`). Stride = window - overlap.
        num_outputs: channels of the model's output.
        batch_size: windows per ``model_fn`` call (the memory bound).
        weight: ``"uniform"`` or ``"gaussian"`` per-pixel window weights.
        out_device: where the float32 accumulator lives (default: the images' device).
        device: where the windows are sent before ``model_fn`` (default: the images').
        pad_mode: ``"reflect"`` or ``"constant"`` (zeros), for sides shorter than the window.

    Returns:
        ``(B, num_outputs, H, W)`` float32 on ``out_device``: per pixel, the sum of the
        covering windows' outputs times their weights divided by the sum of the weights.

    Raises:
        ValueError: no modality, a modality not 4-D, disagreeing sizes or batches, bad
            window / overlap / batch_size / weight / pad_mode, or a model output of the
            wrong shape.
    """
    if not images:
        raise ValueError("images is empty: give at least one modality")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    for m, x in images.items():
        if x.ndim != 4:
            raise ValueError(f"images[{m!r}] must be (B, C, H, W), got shape {tuple(x.shape)}")
    sizes = {m: tuple(x.shape[-2:]) for m, x in images.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"modalities differ in size (H, W): {sizes}")
    batches = {m: x.shape[0] for m, x in images.items()}
    B = max(batches.values())
    if any(b not in (1, B) for b in batches.values()):
        raise ValueError(f"modality batch sizes must be 1 or a common B: {batches}")
    H, W = next(iter(sizes.values()))
    stride = window - overlap_pixels(window, overlap)
    grid = window_grid(H, W, window, stride)
    wts = window_weights(window, weight)  # validates ``weight``

    first = next(iter(images.values()))
    out_device = torch.device(out_device) if out_device is not None else first.device
    device = torch.device(device) if device is not None else first.device
    Hp, Wp = max(H, window), max(W, window)
    padded = {m: _pad_bottom_right(x, Hp - H, Wp - W, pad_mode) if (Hp, Wp) != (H, W) else x for m, x in images.items()}

    wts = wts.to(out_device)
    acc = torch.zeros(B, num_outputs, Hp, Wp, dtype=torch.float32, device=out_device)
    wsum = torch.zeros(Hp, Wp, dtype=torch.float32, device=out_device)
    for top, left in grid:
        wsum[top : top + window, left : left + window] += wts

    jobs = [(b, top, left) for b in range(B) for top, left in grid]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch = {
            m: torch.stack(
                [x[b if x.shape[0] > 1 else 0, :, top : top + window, left : left + window] for b, top, left in chunk]
            ).to(device)
            for m, x in padded.items()
        }
        pred = model_fn(batch)
        expected = (len(chunk), num_outputs, window, window)
        if not isinstance(pred, Tensor) or tuple(pred.shape) != expected:
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"model_fn returned {got}, expected {expected} (b, num_outputs, window, window)")
        pred = pred.to(out_device, torch.float32)
        for i, (b, top, left) in enumerate(chunk):
            region = acc[b, :, top : top + window, left : left + window]
            region += pred[i] if weight == "uniform" else pred[i] * wts  # uniform: weights are 1
        del batch, pred
    acc /= wsum
    return acc[:, :, :H, :W].contiguous() if (Hp, Wp) != (H, W) else acc
