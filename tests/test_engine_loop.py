"""The generic training loop (mssdf.engine.loop) on a task that is not pre-training: a
small regression, as a downstream fine-tuning would plug into it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from mssdf.engine.checkpointing import list_checkpoints
from mssdf.engine.distributed import DistEnv
from mssdf.engine.loop import LoopSpec, StepOutput, TrainState, optimizer_step, resume, run_loop
from mssdf.engine.optim import build_optimizer, build_scheduler
from mssdf.engine.sampler import GlobalBatchSampler, make_loader
from mssdf.engine.tracking import MetricSink


class Points(Dataset):
    """y = x·w* + noise, keyed by (epoch, index) like every engine dataset."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.arange(1.0, 6.0) + 0.01 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        _, i = key
        return self.x[i], self.y[i]


def _run(out_dir, end_step: int, *, total: int = 12, checkpoint_every: int = 0, keep: int = 2, resume_run: bool = False):
    env = DistEnv()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 1))  # dropout: RNG must resume too
    opt = build_optimizer(model, 0.05, 0.01, (0.9, 0.999))
    sched = build_scheduler(opt, peak_lr=0.05, min_lr=0.0, warmup_steps=2, total_steps=total)
    state = TrainState(model, opt, sched)
    resumed = resume(state, out_dir, env, seed=0) if resume_run else None
    data = Points()
    sampler = GlobalBatchSampler(len(data), 8, seed=0)
    loader = make_loader(data, sampler)
    spec = LoopSpec(end_step=end_step, steps_per_epoch=sampler.batches_per_epoch, global_batch=8, log_every=3,
                    checkpoint_every=checkpoint_every, keep_checkpoints=keep)

    def step_fn(batch, step):
        x, y = batch
        loss = nn.functional.mse_loss(model(x).squeeze(1), y)
        lr, _ = optimizer_step(state, loss)
        return StepOutput({"loss": loss}, {"lr": lr})

    sink = MetricSink(True, end_step, state.step, None, progress=False, log=None)
    run_loop(state, loader, sampler, step_fn, env=env, spec=spec, sink=sink, out_dir=out_dir, config={"task": "toy"})
    sink.close()
    return state, resumed


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    full, _ = _run(tmp_path / "a", 12)
    _run(tmp_path / "b", 7)  # stops after step 7 (not an epoch boundary: 5 batches per epoch)
    resumed, ckpt = _run(tmp_path / "b", 12, resume_run=True)
    assert ckpt is not None and ckpt.name == "step_00000007.pt"
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    # the interrupted run also logged its last step (7); every step both logged agrees exactly
    by_step = {h["step"]: h["loss"] for h in resumed.history}
    assert [h["step"] for h in resumed.history] == [3, 6, 7, 9, 12]
    assert all(by_step[h["step"]] == h["loss"] for h in full.history)
    assert full.optimizer.state_dict()["state"][0]["step"] == resumed.optimizer.state_dict()["state"][0]["step"]


def test_logging_cadence_and_records(tmp_path):
    state, _ = _run(tmp_path, 10)
    assert [h["step"] for h in state.history] == [3, 6, 9, 10]  # every 3 steps and the last
    rec = state.history[-1]
    assert list(rec)[:4] == ["step", "epoch", "loss", "lr"] and {"images_per_s", "memory_mb"} <= set(rec)
    assert rec["epoch"] == 10 / 5
    assert state.history[-1]["loss"] < state.history[0]["loss"]  # it learns


def test_checkpoint_cadence_and_pruning(tmp_path):
    _run(tmp_path, 11, checkpoint_every=2, keep=2)
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert steps == [10, 11]  # every 2 steps, the end state always, the 2 newest kept
    saved = torch.load(list_checkpoints(tmp_path)[-1][1], weights_only=True)
    assert saved["position"] == {"epoch": 2, "batch": 1, "global_step": 11} and saved["config"] == {"task": "toy"}


def test_resume_refuses_a_changed_run_naming_the_keys(tmp_path):
    import pytest

    from mssdf.config import ConfigError
    from mssdf.engine.loop import check_same_run

    saved = {"config": {"optim": {"lr": 1e-3}, "epochs": 10, "out_dir": "a"}, "global_batch": 8}
    check_same_run(tmp_path / "c.pt", saved, {"optim": {"lr": 1e-3}, "epochs": 10, "out_dir": "b"}, may_change=("out_dir",),
                   global_batch=8)  # only a free key changed
    with pytest.raises(ConfigError, match=r"c\.pt: cannot resume.*epochs: 10 -> 20; optim\.lr: 0\.001 -> 0\.01"):
        check_same_run(tmp_path / "c.pt", saved, {"optim": {"lr": 1e-2}, "epochs": 20, "out_dir": "a"})
    with pytest.raises(ConfigError, match=r"global batch .*: 8 -> 16"):
        check_same_run(tmp_path / "c.pt", saved, saved["config"], global_batch=16)
    with pytest.raises(ConfigError, match=r"new\.key: '<absent>' -> 1"):
        check_same_run(tmp_path / "c.pt", saved, {**saved["config"], "new": {"key": 1}})
