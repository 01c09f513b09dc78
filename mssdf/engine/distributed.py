"""Process-group set-up for single-process and ``torchrun`` runs.

Under ``torchrun`` the env vars ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` are set; :func:`init_distributed` then joins the group
(``nccl`` on CUDA, ``gloo`` on CPU). Without them (a notebook kernel, ``python -m``) it
returns a one-process :class:`DistEnv` and every collective below is a no-op.

The teacher and the EMA are always reached through :func:`unwrap` (the module inside
``DistributedDataParallel``), never through the wrapper.
"""

from __future__ import annotations

import inspect
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its device and backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local GPU) if available, else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if its env vars are present; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistEnv(rank, world, local_rank, dev, backend)


def cleanup(env: DistEnv) -> None:
    """Leave the process group (if this module joined one)."""
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model``.

    Buffers are not re-broadcast each step (the model's buffers are constant
    normalisation statistics); frozen teacher parameters take no part in the all-reduce.
    """
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.13 renames broadcast_buffers (deprecated) to forward_sync_buffers
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=ids, find_unused_parameters=find_unused_parameters, **no_sync)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (a list of one on a single process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Element-wise mean of a tensor over ranks (the tensor itself on one process)."""
    if not env.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / env.world_size


class _GatherCat(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient (all-reduce).

    (``torch.distributed.nn.functional.all_gather`` gave wrong gradients under gloo when
    the incoming gradient was not contiguous — e.g. after an einsum; measured on 2
    processes. This version makes the gradient contiguous before one all-reduce.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(B, ...)`` tensor along dim 0 (same shape on all ranks).

    Floating tensors are differentiable: the backward sums every rank's gradient into the
    local input, so with DDP's averaging the gradient is exactly that of the global-batch
    loss. Other dtypes (masks) are gathered without autograd.
    """
    if x.is_floating_point():
        return _GatherCat.apply(x)
    send = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()
    parts = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, send)
    return torch.cat(parts, dim=0).to(x.dtype)


def loss_gather(env: DistEnv):
    """``(gather, rank)`` for :func:`mssdf.losses.mssdf_loss`: None on a single process."""
    return (all_gather_cat, env.rank) if env.distributed and env.world_size > 1 else (None, 0)


__all__ = [
    "DistEnv", "pick_device", "init_distributed", "cleanup", "seed_everything", "unwrap", "wrap_ddp", "barrier",
    "all_gather_objects", "mean_across_ranks", "all_gather_cat", "loss_gather",
]
