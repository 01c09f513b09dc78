"""A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (CPU, one process)."""

from __future__ import annotations

import signal
import subprocess
import time

import torch

from _train_common import REPO, final_weights, micro_run, run_training, subprocess_env, train_command, write_yaml
from mssdf.engine.checkpointing import list_checkpoints, load_checkpoint


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    run = dict(epochs=60, checkpoint_every=20, log_every=5, data={"synthetic_samples": 16})  # 240 steps
    ref_cfg = write_yaml(tmp_path / "ref.yaml", micro_run(tmp_path / "ref", **run))
    cut_cfg = write_yaml(tmp_path / "cut.yaml", micro_run(tmp_path / "cut", **run))
    ref = subprocess.Popen(train_command(ref_cfg), env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(train_command(cut_cfg), env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list_checkpoints(tmp_path / "cut") and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if victim.poll() is None:
            victim.kill()
    found = list_checkpoints(tmp_path / "cut")
    assert found and not (tmp_path / "cut" / "final").exists()
    step, path = found[-1]
    assert 0 < step < 240 and load_checkpoint(path)["position"]["global_step"] == step  # complete file

    res = run_training(cut_cfg, "--set", "resume=true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert ref.wait(timeout=120) == 0, ref.stderr.read()[-3000:]
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cut" / "checkpoints").iterdir())
