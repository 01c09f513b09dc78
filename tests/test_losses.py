"""Loss terms behave as specified on known inputs."""

import pytest
import torch

from mssdf.losses import (
    LossConfig,
    colocated_cka,
    dense_tokens,
    info_nce,
    linear_cka,
    linear_hsic,
    masked_mse,
    modality_cross_entropy,
    mssdf_loss,
)
from mssdf.model import MSSDFOutput


def test_reconstruction_is_zero_when_prediction_equals_target():
    t = torch.randn(2, 5, 4)
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    assert masked_mse(t.clone(), t, mask) == 0


def test_reconstruction_counts_only_masked_positions():
    target = torch.zeros(1, 4, 2)
    pred = torch.zeros(1, 4, 2)
    pred[0, 1] = 100.0  # a visible position: ignored
    pred[0, 2] = 2.0  # masked: per-token MSE 4
    mask = torch.tensor([[True, False, True, False]])
    assert masked_mse(pred, target, mask).item() == pytest.approx(2.0)  # (0 + 4) / 2 masked tokens


def test_info_nce_low_for_aligned_high_for_shuffled():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 10, 32, generator=g)  # 16 images, 10 positions
    aligned = info_nce(a, a + 0.01 * torch.randn(a.shape, generator=g))
    shuffled = info_nce(a, a[torch.randperm(16, generator=g)])  # other images' tokens as partners
    chance = torch.log(torch.tensor(16.0))
    assert aligned < 0.05
    assert shuffled > chance  # worse than uniform guessing: positives are now dissimilar


def test_info_nce_cannot_be_solved_by_position_alone():
    """Candidates share the position: features that only encode position give chance level."""
    position_only = torch.randn(1, 10, 32).expand(8, -1, -1)  # the same for every image
    assert info_nce(position_only, position_only).item() == pytest.approx(float(torch.log(torch.tensor(8.0))), rel=1e-4)


def test_info_nce_scores_only_positions_visible_in_both():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 6, 8, generator=g)
    b = torch.randn(4, 6, 8, generator=g)
    va = torch.zeros(4, 6, dtype=torch.bool)
    va[:, :3] = True
    vb = torch.zeros(4, 6, dtype=torch.bool)
    vb[:, 2:5] = True
    ref = info_nce(a, b, va, vb)
    b2 = b.clone()
    b2[:, :2] = 100 * torch.randn(4, 2, 8, generator=g)  # invisible in b: ignored
    a2 = a.clone()
    a2[:, 3:] = 100 * torch.randn(4, 3, 8, generator=g)  # invisible in a: ignored
    torch.testing.assert_close(info_nce(a2, b2, va, vb), ref)
    none = torch.zeros(4, 6, dtype=torch.bool)
    assert info_nce(a, b, va, none) == 0


def test_info_nce_is_symmetric():
    a, b = torch.randn(5, 10, 8), torch.randn(5, 10, 8)
    assert info_nce(a, b).item() == pytest.approx(info_nce(b, a).item(), rel=1e-6)


def test_dense_tokens_and_colocated_cka():
    tokens = torch.tensor([[[1.0], [2.0]]])
    dense, visible = dense_tokens(tokens, torch.tensor([[1, 3]]), 4)
    assert dense.flatten().tolist() == [0.0, 1.0, 0.0, 2.0] and visible.tolist() == [[False, True, False, True]]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 50, 6, generator=g)
    vis = torch.rand(8, 50, generator=g) > 0.3
    assert colocated_cka(a, 2 * a, vis, vis).item() == pytest.approx(1.0, rel=1e-5)
    assert colocated_cka(a, torch.randn(8, 50, 6, generator=g), vis, vis) < 0.1
    garbage = a.clone()
    garbage[~vis] = 1e3  # values at positions not visible in both never enter
    assert colocated_cka(garbage, 2 * a, vis, vis).item() == pytest.approx(1.0, rel=1e-5)


def test_hsic_near_zero_for_independent_and_positive_for_dependent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=g)
    y = torch.randn(4000, 8, generator=g)
    dependent = x @ torch.randn(8, 8, generator=g) + 0.1 * y
    indep = linear_hsic(x, y)
    dep = linear_hsic(x, dependent)
    assert indep < 0.03  # E ~ d1*d2/n = 0.016
    assert dep > 2.0
    assert linear_cka(x, y) < 0.01 and linear_cka(x, dependent) > 0.5
    assert linear_cka(x, 5 * x).item() == pytest.approx(1.0, rel=1e-5)  # scale invariant


def test_hsic_matches_its_definition():
    x, y = torch.randn(50, 3), torch.randn(50, 2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    h = torch.ones(50, 50) / -50 + torch.eye(50)  # centring matrix
    kernel_form = torch.trace(x @ x.T @ h @ y @ y.T @ h) / 49**2
    torch.testing.assert_close(linear_hsic(x, y), kernel_form, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(linear_hsic(x, y), (xc.T @ yc).pow(2).sum() / 49**2)


def test_modality_cross_entropy_low_when_right():
    labels = torch.tensor([0, 0, 1, 1])
    right = torch.tensor([[9.0, 0], [9, 0], [0, 9], [0, 9]])
    assert modality_cross_entropy(right, labels) < 1e-3
    assert modality_cross_entropy(-right, labels) > 8


def fake_output(keys=("rgb", "dsm"), agree=False, seed=0):
    """An MSSDFOutput with 6 patches, 3 visible per modality; visible positions overlap in 2.

    ``agree``: the tokens of every modality are identical at co-located positions.
    """
    g = torch.Generator().manual_seed(seed)
    b, n = 2, 6
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    visible = {"rgb": [0, 2, 4], "dsm": [0, 2, 5], "ms": [1, 2, 4]}
    masks = {k: torch.ones(b, n, dtype=torch.bool).index_fill_(1, torch.tensor(visible[k]), False) for k in keys}
    positions = {k: torch.tensor(visible[k]).expand(b, -1) for k in keys}
    per_position = t(b, n, 8)  # a token for every patch position
    tokens = {k: (per_position if agree else t(b, n, 8)).gather(1, positions[k].unsqueeze(-1).expand(-1, -1, 8)) for k in keys}
    return MSSDFOutput(
        pred={k: t(b, n, 4) for k in keys},
        target={k: t(b, n, 4) for k in keys},
        masks=masks,
        tokens=tokens,
        positions=positions,
        modality_logits=t(b * len(keys), 2),
        modality_labels=torch.arange(len(keys)).repeat_interleave(b),
    )


def test_pair_terms_respond_to_cross_modal_agreement():
    _, agree = mssdf_loss(fake_output(agree=True))
    _, disagree = mssdf_loss(fake_output(agree=False))
    assert agree["contrast"] < disagree["contrast"]
    assert agree["hsic"] > 0.99 > disagree["hsic"]  # identical specific parts: fully dependent


def test_combiner_weights_and_switches():
    out = fake_output()
    total, terms = mssdf_loss(out)
    assert set(terms) == {"reconstruction", "contrast", "hsic", "modality"}
    expected = terms["reconstruction"] + 0.5 * terms["contrast"] + 0.2 * terms["hsic"] + 0.1 * terms["modality"]
    torch.testing.assert_close(total, expected)
    for name in terms:
        cfg = LossConfig(**{name: 0.0})
        total_off, terms_off = mssdf_loss(out, cfg)
        assert name not in terms_off
        torch.testing.assert_close(total_off, total - getattr(LossConfig(), name) * terms[name])


def test_pair_terms_skipped_with_one_modality_and_all_off_raises():
    out = fake_output(keys=("rgb",))
    out.modality_logits = out.modality_logits[:, :1]
    _, terms = mssdf_loss(out)
    assert set(terms) == {"reconstruction"}
    with pytest.raises(ValueError, match="switched off"):
        mssdf_loss(out, LossConfig(reconstruction=0))
    with pytest.raises(ValueError, match="contrast"):
        LossConfig(contrast=-1)
