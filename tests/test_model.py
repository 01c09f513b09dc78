"""Properties of the MSSDF model: gradients, teacher, EMA, shapes, errors."""

import pytest
import torch

from conftest import batch, micro_config
from mssdf.config import ConfigError
from mssdf.losses import LossConfig, mssdf_loss
from mssdf.masking import MaskingConfig, generate_masks, num_masked
from mssdf.model import MSSDF, PRESETS, ema_update, model_config, patchify


def step_output(model, x, seed=0, epoch=30):
    masks = generate_masks(x, model.cfg.patch_size, MaskingConfig(), epoch=epoch, generator=torch.Generator().manual_seed(seed))
    return model(x, masks)


def test_every_trainable_parameter_gets_a_gradient_and_the_teacher_none(micro_model):
    out = step_output(micro_model, batch())
    total, terms = mssdf_loss(out)
    assert set(terms) == {"reconstruction", "contrast", "hsic", "modality"}
    total.backward()
    no_grad = [n for n, p in micro_model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    teacher = list(micro_model.teacher.parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)
    assert not out.target["rgb"].requires_grad


def test_teacher_starts_as_a_copy_of_the_student(micro_model):
    for (n, s), (_, t) in zip(micro_model.encoder.named_parameters(), micro_model.teacher.named_parameters()):
        assert torch.equal(s, t), n
        assert s.data_ptr() != t.data_ptr()


def test_one_ema_step_moves_the_teacher_by_the_expected_amount(micro_model):
    with torch.no_grad():
        for p in micro_model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in micro_model.teacher.parameters()]
    student = [p.clone() for p in micro_model.encoder.parameters()]
    ema_update(micro_model.teacher, micro_model.encoder, 0.9)
    for t0, s, t1 in zip(before, student, micro_model.teacher.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
        # it moved towards the student: distance shrinks by exactly the momentum
        torch.testing.assert_close((t1 - s).norm(), 0.9 * (t0 - s).norm())
    ema_update(micro_model.teacher, micro_model.encoder, 1.0)  # momentum 1: frozen
    for t1, t2 in zip([p.clone() for p in micro_model.teacher.parameters()], micro_model.teacher.parameters()):
        assert torch.equal(t1, t2)


def test_teacher_targets_see_the_full_image_regardless_of_masks(micro_model):
    x = batch()
    a = step_output(micro_model, x, seed=0).target
    b = step_output(micro_model, x, seed=1).target
    for m in x:
        assert torch.equal(a[m], b[m])
        assert a[m].shape == (3, 16, 32)  # N patches (cls dropped), encoder width
        torch.testing.assert_close(a[m].mean(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)  # layer-normalised


def test_output_shapes_and_modality_labels(micro_model):
    x = batch(b=2)
    out = step_output(micro_model, x)
    for m in x:
        assert out.pred[m].shape == (2, 16, 32)
        assert out.tokens[m].shape == (2, 4, 32)  # visible tokens, encoder width
        assert torch.equal(out.positions[m], (~out.masks[m]).nonzero()[:, 1].view(2, 4))
        assert out.masks[m].sum(1).tolist() == [num_masked(16, 0.75)] * 2
    assert out.modality_logits.shape == (6, 3)
    assert out.modality_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_any_subset_of_modalities(micro_model):
    x = batch(modalities={"dsm": 1, "rgb": 3})
    out = step_output(micro_model, x)
    assert out.modality_labels.tolist() == [2] * 3 + [0] * 3
    total, terms = mssdf_loss(out)
    assert torch.isfinite(total)


def test_encoder_output_does_not_depend_on_masked_pixels(micro_model):
    """The student sees only visible patches: changing masked pixels changes nothing."""
    micro_model.eval()
    x = batch(b=2, modalities={"rgb": 3})
    masks = generate_masks(x, 8, MaskingConfig(mode="random"), generator=torch.Generator().manual_seed(0))
    y = {"rgb": x["rgb"].clone()}
    pixel_mask = masks["rgb"].view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 8, 4, 8).reshape(2, 3, 32, 32)
    y["rgb"][pixel_mask] = 0.0
    a = micro_model.encoder(x, masks)["rgb"]
    b = micro_model.encoder(y, masks)["rgb"]
    torch.testing.assert_close(a, b)


def test_pixel_target_baseline_is_a_switch():
    torch.manual_seed(0)
    model = MSSDF(micro_config(modalities={"rgb": 3}, normalization={}, target="pixels"))
    assert model.teacher is None
    out = step_output(model, batch(modalities={"rgb": 3}))
    assert out.pred["rgb"].shape == out.target["rgb"].shape == (3, 16, 8 * 8 * 3)
    torch.testing.assert_close(out.target["rgb"].mean(-1), torch.zeros(3, 16), atol=1e-4, rtol=0)
    total, terms = mssdf_loss(out, LossConfig(contrast=0, hsic=0, modality=0))
    assert set(terms) == {"reconstruction"}
    total.backward()
    # with one modality the modality head has nothing to classify; everything else learns
    assert [n for n, p in model.named_parameters() if p.grad is None] == [
        n for n, _ in model.named_parameters() if n.startswith("modality_head.")
    ]


def test_patchify_order():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3; inside: (row, col, channel)
    assert p[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_presets_have_the_authors_shapes():
    base = MSSDF(model_config("base"))
    n_enc = sum(p.numel() for n, p in base.encoder.named_parameters() if "patch_embed.proj.dsm" not in n)
    assert 85.5e6 < n_enc < 86.5e6  # ViT-B/16 (86M) with its cls token
    assert PRESETS["large"]["depth"] == 24 and PRESETS["large"]["embed_dim"] == 768
    assert base.cfg.num_patches == 400


def test_wrong_channel_count_and_unknown_modality_raise(micro_model):
    x = batch()
    x["dsm"] = torch.rand(3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"modality 'dsm': expected \(B, 1, H, W\)"):
        micro_model.encoder(x)
    with pytest.raises(KeyError, match="'sar' is not one of the model's modalities"):
        micro_model.encoder({"sar": torch.rand(1, 1, 32, 32)})


def test_unknown_or_mistyped_config_keys_raise():
    with pytest.raises(ConfigError, match="unknown key.*model.embed_dims"):
        model_config("tiny", embed_dims=64)
    with pytest.raises(ConfigError, match="model.depth: expected an integer"):
        model_config("tiny", depth="12")
    with pytest.raises(ConfigError, match="unknown preset"):
        model_config("huge")
    with pytest.raises(ConfigError, match="normalization.dsm.*4 bands"):
        micro_config(normalization={"dsm": {"mean": [0, 0, 0, 0], "std": [1, 1, 1, 1]}})


def test_forward_is_deterministic_in_eval(micro_model):
    micro_model.eval()
    x = batch()
    a = step_output(micro_model, x).pred["ms"]
    b = step_output(micro_model, x).pred["ms"]
    assert torch.equal(a, b)


def test_teacher_stays_in_eval_mode_so_targets_are_deterministic():
    torch.manual_seed(0)
    model = MSSDF(micro_config(drop_path=0.5)).train()
    assert model.encoder.training and not model.teacher.training
    x = batch()
    torch.testing.assert_close(model.teacher_targets(x)["rgb"], model.teacher_targets(x)["rgb"], rtol=0, atol=0)
    a = model.encoder.forward_features(x["rgb"], "rgb")
    b = model.encoder.forward_features(x["rgb"], "rgb")
    assert not torch.equal(a, b)  # the student does use drop path in training


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(micro_model):
    """Fusion queries are padded to the batch maximum; padding must not leak into results."""
    micro_model.eval()
    x = batch(b=4)
    masks = generate_masks(x, 8, MaskingConfig(), epoch=50, generator=torch.Generator().manual_seed(3))
    union = torch.stack([~m for m in masks.values()]).any(0).sum(1)
    assert len(set(union.tolist())) > 1  # the samples really have different query counts
    full = micro_model(x, masks)
    for i in range(4):
        one = micro_model({m: v[i : i + 1] for m, v in x.items()}, {m: v[i : i + 1] for m, v in masks.items()})
        for m in x:
            torch.testing.assert_close(one.pred[m][0], full.pred[m][i], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_backward_with_fp32_losses(micro_model):
    x = batch()
    masks = generate_masks(x, 8, MaskingConfig(), generator=torch.Generator().manual_seed(0))
    _, ref_terms = mssdf_loss(micro_model(x, masks))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = micro_model(x, masks)
        total, terms = mssdf_loss(out)
    assert out.pred["rgb"].dtype == torch.bfloat16 and out.target["rgb"].dtype == torch.float32
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    for k in terms:  # bf16 activations, fp32 losses: close to the fp32 run
        assert abs(terms[k] - ref_terms[k]) < 0.05 * max(1.0, abs(ref_terms[k])), k
    total.backward()
