"""Run under `torchrun --nproc_per_node=2`: the pair-term gradients over all_gather_cat
equal the single-process gradients of the global batch (printed as JSON by rank 0)."""

import json

import torch
import torch.distributed as dist

from mssdf.losses import colocated_cka, info_nce
from mssdf.engine.distributed import all_gather_cat


def data():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    va, vb = torch.rand(4, 6, generator=g) > 0.3, torch.rand(4, 6, generator=g) > 0.3
    return a, b, va, vb


def loss(a, b, va, vb, gather=None, rank=0):
    return info_nce(a, b, va, vb, 0.07, gather, rank) + colocated_cka(a, b, va, vb, gather)


dist.init_process_group("gloo")
r = dist.get_rank()
a, b, va, vb = data()
rows = slice(2 * r, 2 * r + 2)
A, B = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
value = loss(A, B, va[rows], vb[rows], all_gather_cat, r)
value.backward()
out = [None, None]
dist.all_gather_object(out, (value.item(), A.grad, B.grad))
if r == 0:
    a.requires_grad_(), b.requires_grad_()
    single = loss(a, b, va, vb)
    single.backward()
    mean_loss = (out[0][0] + out[1][0]) / 2  # what DDP optimises: the mean of rank losses
    grad_a = torch.cat([out[0][1], out[1][1]]) / 2  # DDP averages gradients over ranks
    grad_b = torch.cat([out[0][2], out[1][2]]) / 2
    print(json.dumps({"loss_diff": abs(mean_loss - single.item()),
                      "grad_diff": max((grad_a - a.grad).abs().max().item(), (grad_b - b.grad).abs().max().item()),
                      "grad_scale": a.grad.abs().max().item()}))
dist.destroy_process_group()
