"""Optimiser groups, schedules, data order and step masks of the pre-training engine."""

from __future__ import annotations


import pytest
import torch

from conftest import batch, micro_config
from mssdf.masking import MaskingConfig
from mssdf.model import MSSDF
from mssdf.engine.sampler import GlobalBatchSampler
from mssdf.pretrain.masks import step_masks
from mssdf.engine.optim import build_optimizer, build_scheduler, lr_at, momentum_at, param_groups


def test_no_weight_decay_on_norms_biases_and_tokens_and_no_teacher():
    torch.manual_seed(0)
    model = MSSDF(micro_config())
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names_nd, names_d = set(no_decay["names"]), set(decay["names"])
    params = dict(model.named_parameters())
    for name in ("encoder.cls_token", "fusion_token", "mask_tokens.rgb", "mask_tokens.dsm", "encoder.norm.weight",
                 "encoder.norm.bias", "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.mlp.fc1.bias", "decoder_norm.weight"):
        assert name in names_nd, name
    assert all(params[n].ndim >= 2 for n in names_d)
    assert "encoder.blocks.0.attn.qkv.weight" in names_d and "encoder.patch_embed.proj.rgb.proj.weight" in names_d
    assert not any(n.startswith("teacher.") for n in names_d | names_nd)
    trainable = {n for n, p in model.named_parameters() if not n.startswith("teacher.")}
    assert names_d | names_nd == trainable and not names_d & names_nd
    opt = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0] and opt.defaults["betas"] == (0.9, 0.95)


def test_warmup_then_cosine_at_known_steps():
    kw = dict(peak_lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(5e-4)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way through the cosine
    assert lr_at(110, **kw) == pytest.approx(1e-5) and lr_at(200, **kw) == pytest.approx(1e-5)
    assert lr_at(0, peak_lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)
    # the LambdaLR follows lr_at step by step
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, **kw)
    seen = []
    for _ in range(111):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **kw) for s in range(111)], rel=1e-12, abs=1e-15)


def test_ema_momentum_schedule_endpoints():
    assert momentum_at(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, 1.0) == 1.0 and momentum_at(150, 100, 0.996, 1.0) == 1.0
    vals = [momentum_at(s, 100) for s in range(101)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_global_batches_do_not_depend_on_world_size_and_resume_skips():
    one = GlobalBatchSampler(22, 4, 0, 1, seed=3)
    two = [GlobalBatchSampler(22, 2, r, 2, seed=3) for r in range(2)]
    for epoch in (0, 1):
        one.set_position(epoch)
        for s in two:
            s.set_position(epoch)
        b1 = list(one)
        b2 = [a + b for a, b in zip(*(list(s) for s in two))]
        assert b1 == b2 and len(b1) == 5  # 22 // 4, the incomplete last batch dropped
        assert sorted(i for b in b1 for _, i in b) == sorted(set(i for b in b1 for _, i in b))
    one.set_position(1)
    epoch1 = list(one)
    one.set_position(0)
    assert list(one) != epoch1
    one.set_position(1, 3)
    assert list(one) == epoch1[3:]


def test_step_masks_are_the_same_for_any_split_of_the_global_batch():
    images = batch(b=8, size=32, modalities={"rgb": 3, "dsm": 1})
    cfg = MaskingConfig(mode="information", cross_modal=True)
    full = step_masks(images, 8, cfg, epoch=35.0, seed=1, step=7, first_index=0, group=2)
    halves = [step_masks({m: x[r * 4:(r + 1) * 4] for m, x in images.items()}, 8, cfg, 35.0, seed=1, step=7,
                         first_index=4 * r, group=2) for r in range(2)]
    for m in images:
        assert torch.equal(full[m], torch.cat([h[m] for h in halves]))
        assert (full[m].sum(1) == 12).all()
    other = step_masks(images, 8, cfg, 35.0, seed=1, step=8, group=2)
    assert not torch.equal(other["rgb"], full["rgb"])
    assert not torch.equal(full["rgb"], full["dsm"])  # cross-modal substitution at epoch 35
    whole = step_masks(images, 8, cfg, 35.0, seed=1, step=7)
    assert torch.equal(whole["rgb"], step_masks(images, 8, cfg, 35.0, seed=1, step=7)["rgb"])
    with pytest.raises(ValueError, match="mask group"):
        step_masks(images, 8, cfg, 0.0, seed=1, step=0, group=3)
