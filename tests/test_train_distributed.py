"""Two gloo processes under torchrun reach the same weights as one process with the same global batch.

What makes them match: the sampler gives every global batch the same composition and
order for any world size; masks are drawn per mask group of the global batch (group 2
here), not per rank; the model has no batch statistics and every loss term used here is a
mean of per-sample values with equal weights, so DDP's mean of per-rank mean gradients is
the global mean. The batch-coupled pair terms (InfoNCE with other images as negatives,
HSIC/CKA over all co-located pairs) all-gather the tokens of every rank with a
differentiable gather, so every loss term is on, with cross-modal masking.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from _train_common import REPO, final_weights, micro_run, subprocess_env, write_yaml
from mssdf.pretrain import build_config, pretrain


def test_two_processes_equal_one_process(tmp_path):
    common = dict(mask_group=2, epochs=3)
    cfg = write_yaml(tmp_path / "ddp.yaml", micro_run(tmp_path / "ddp", batch_size=2, **common))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mssdf.pretrain",
           "--config", str(cfg), "--no-live", "--no-progress"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the single-process reference runs meanwhile
        single = pretrain(build_config(micro_run(tmp_path / "one", batch_size=4, **common)), live=False, progress=False, log=None)
    finally:
        torch.set_num_threads(before)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "2 process(es)" in out and "global batch 4" in out
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "ddp")
    assert single.global_step == 12 and a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print("max abs weight difference", worst)
    assert worst < 1e-5, worst
    assert single.history[-1]["loss"] < single.history[0]["loss"]
