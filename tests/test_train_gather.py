"""The differentiable all-gather of the pair terms gives global-batch gradients on 2 processes."""

import json
import subprocess
import sys

from _train_common import REPO, subprocess_env


def test_pair_term_gradients_over_two_processes_equal_one_process():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "_train_gather_worker.py")]  # fmt: skip
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["grad_scale"] > 1e-3  # the check is not vacuous
    assert result["loss_diff"] < 1e-5 and result["grad_diff"] < 1e-5, result
