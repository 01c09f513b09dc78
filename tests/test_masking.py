"""Properties of random, information-aware and cross-modal masking."""

import numpy as np
import pytest
import torch

from mssdf import reference
from mssdf.masking import (
    MaskingConfig,
    SubstitutionSchedule,
    cross_modal_masks,
    generate_masks,
    information_aware_mask,
    information_scores,
    num_masked,
    random_mask,
    score_weights,
    visible_indices,
    weighted_mask,
)


def images(b=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, 3, size, size, generator=g) * 255
    dsm = torch.rand(b, 1, size, size, generator=g) * 20
    return {"rgb": rgb, "dsm": dsm}


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("mode", ["random", "information"])
def test_masked_count_is_exact_for_every_sample_and_modality(ratio, mode):
    x = images(b=5, size=48)  # N = 9 patches of 16: int(9*ratio) exercises the rounding
    cfg = MaskingConfig(mode=mode, ratio=ratio)
    masks = generate_masks(x, 16, cfg, epoch=70, generator=torch.Generator().manual_seed(1))
    assert set(masks) == {"rgb", "dsm"}
    for m in masks.values():
        assert m.dtype == torch.bool and m.shape == (5, 9)
        assert (m.sum(1) == num_masked(9, ratio)).all()


def test_same_seed_same_masks_other_seed_other_masks():
    x = images()
    a = generate_masks(x, 16, epoch=30, generator=torch.Generator().manual_seed(7))
    b = generate_masks(x, 16, epoch=30, generator=torch.Generator().manual_seed(7))
    c = generate_masks(x, 16, epoch=30, generator=torch.Generator().manual_seed(8))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("variance_of", ["bands", "grey"])
def test_scores_equal_the_per_patch_reference(variance_of):
    x = images(b=3, size=64)
    x["ms"] = torch.rand(3, 4, 64, 64, generator=torch.Generator().manual_seed(5)) * 1000  # 4 bands, band-mean grey
    ours = information_scores(x, 16, normalize=False, variance_of=variance_of).double().numpy()
    ref = np.stack(
        [reference.sample_scores({k: v[i].numpy() for k, v in x.items()}, 16, False, variance_of) for i in range(3)]
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)
    ours_n = information_scores(x, 16, normalize=True, variance_of=variance_of).double().numpy()
    ref_n = np.stack(
        [reference.sample_scores({k: v[i].numpy() for k, v in x.items()}, 16, True, variance_of) for i in range(3)]
    )
    np.testing.assert_allclose(ours_n, ref_n, rtol=1e-5)


def test_default_variance_is_the_authors_band_rule_and_the_reference_default():
    assert MaskingConfig().variance_of == "bands"
    x = images(b=2, size=32)
    default = information_scores(x, 16, normalize=False)
    assert torch.equal(default, information_scores(x, 16, normalize=False, variance_of="bands"))
    ref = np.stack([reference.sample_scores({k: v[i].numpy() for k, v in x.items()}, 16) for i in range(2)])
    np.testing.assert_allclose(default.double().numpy(), ref, rtol=1e-5, atol=1e-3)


def colour_images(b=4, size=128, seed=0):
    """Colour images with real colour structure: per-patch random hues with some flat patches."""
    g = torch.Generator().manual_seed(seed)
    n = size // 16
    hue = torch.rand(b, 3, n, n, generator=g) * 255  # one colour per patch ...
    rgb = hue.repeat_interleave(16, 2).repeat_interleave(16, 3)
    strength = torch.rand(b, 1, n, n, generator=g).repeat_interleave(16, 2).repeat_interleave(16, 3)
    texture = torch.rand(b, 1, size, size, generator=g) * strength
    return (rgb + 40 * texture).clamp(0, 255)  # ... plus grey texture of per-patch strength


def test_flat_pure_red_patch_has_the_authors_band_variance():
    p = 16
    red = torch.zeros(1, 3, p, p)
    red[:, 0] = 255.0
    # bands rule: variance of p² values 255 and 2p² values 0 (flat: no Sobel gradient)
    values = np.array([255.0] * (p * p) + [0.0] * (2 * p * p))
    expected = float(((values - values.mean()) ** 2).mean())  # mean 85: (170² + 2·85²)/3 = 14450
    assert expected == pytest.approx(14450.0)
    bands = information_scores({"rgb": red}, p, normalize=False, variance_of="bands")[0, 0]
    assert float(bands) == pytest.approx(expected, rel=1e-6)
    assert reference.sample_scores({"rgb": red[0].numpy()}, p, variance_of="bands")[0] == pytest.approx(expected)
    # grey rule: a flat patch has a constant grey value, so ~0 (float32 one-pass rounding)
    grey = information_scores({"rgb": red}, p, normalize=False, variance_of="grey")[0, 0]
    assert abs(float(grey)) < 1e-2
    assert reference.sample_scores({"rgb": red[0].numpy()}, p, variance_of="grey")[0] == pytest.approx(0.0, abs=1e-9)


def test_variance_rules_agree_on_one_band_modalities():
    # the band rule's own code path (all C·p·p values) equals the grey-patch path when C = 1
    from mssdf.masking import _band_variance, _grey_variance

    x = images(b=2, size=32)["dsm"]
    patches = x[:, 0].reshape(2, 2, 16, 2, 16).transpose(2, 3).reshape(8, 16, 16)
    torch.testing.assert_close(_band_variance(x, 16).reshape(-1), _grey_variance(patches), rtol=1e-5, atol=1e-5)
    assert torch.equal(
        information_scores({"dsm": x}, 16, normalize=False, variance_of="bands"),
        information_scores({"dsm": x}, 16, normalize=False, variance_of="grey"),
    )


@pytest.mark.parametrize("height", [130.0, 1500.0])
def test_dsm_scores_keep_float32_precision_at_real_elevations(height):
    # absolute DSMs sit hundreds of metres up; a one-pass E[x²] − E[x]² variance loses the
    # (small) score there in float32. Flat ground + 5 cm noise: score ≈ 0.2 at any height.
    g = torch.Generator().manual_seed(0)
    x = height + 0.05 * torch.randn(2, 1, 32, 32, generator=g)
    ours = information_scores({"dsm": x}, 16, normalize=False).numpy()
    ref = np.stack([reference.sample_scores({"dsm": x[i].double().numpy()}, 16, False) for i in range(2)])
    np.testing.assert_allclose(ours, ref, rtol=1e-3)


def test_default_scores_on_random_colour_images_equal_the_reference_band_rule():
    rgb = colour_images(b=3, size=64, seed=3)
    ours = information_scores({"rgb": rgb}, 16, normalize=False).double().numpy()
    ref = np.stack([reference.sample_scores({"rgb": rgb[i].numpy()}, 16, variance_of="bands") for i in range(3)])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)
    grey = np.stack([reference.sample_scores({"rgb": rgb[i].numpy()}, 16, variance_of="grey") for i in range(3)])
    assert not np.allclose(ours, grey, rtol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_band_and_grey_variance_rank_colour_patches_differently(seed):
    """On colour patches the option matters: rankings and quantile bands differ between the rules."""
    def band_of(scores, quantiles):  # 0 low, 1 middle, 2 high: the weights double as band labels
        return score_weights(scores, (0.0, 1.0, 2.0), quantiles).round().long()

    rgb = colour_images(b=4, size=128, seed=seed)
    bands = information_scores({"rgb": rgb}, 16, normalize=False, variance_of="bands")
    grey = information_scores({"rgb": rgb}, 16, normalize=False, variance_of="grey")
    for i in range(4):
        assert not torch.equal(bands[i].argsort(), grey[i].argsort())
    changed = (band_of(bands, (0.2, 0.8)) != band_of(grey, (0.2, 0.8))).float().mean()
    assert changed > 0.05


def test_band_variance_is_the_grey_variance_plus_the_mean_spread_across_bands():
    """Law of total variance for a band-mean grey (any non-rgb modality): over all C·p·p values,
    var = var(band-mean image) + mean over pixels of the variance across bands."""
    ms = colour_images(b=2, size=64, seed=2)
    bands = information_scores({"ms": ms}, 16, normalize=False, variance_of="bands")
    grey = information_scores({"ms": ms}, 16, normalize=False, variance_of="grey")
    across = ms.var(dim=1, unbiased=False).reshape(2, 4, 16, 4, 16).mean(dim=(2, 4)).reshape(2, 16)
    torch.testing.assert_close(bands, grey + across, rtol=1e-4, atol=1e-2)


def test_variance_rule_is_validated_and_read_from_params():
    from mssdf.config import from_dict

    assert from_dict(MaskingConfig, {"variance_of": "grey"}, "masking").variance_of == "grey"
    with pytest.raises((ValueError, TypeError)):
        from_dict(MaskingConfig, {"variance_of": "colour"}, "masking")
    with pytest.raises(ValueError, match="variance_of"):
        information_scores(images(b=1, size=32), 16, variance_of="colour")


def test_generate_masks_uses_the_configured_variance_rule():
    rgb = colour_images(b=2, size=64, seed=1)
    cfg_b, cfg_g = MaskingConfig(variance_of="bands"), MaskingConfig(variance_of="grey")
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = generate_masks({"rgb": rgb}, 16, cfg_b, generator=seed())["rgb"]
    b = generate_masks({"rgb": rgb}, 16, cfg_g, generator=seed())["rgb"]
    d = generate_masks({"rgb": rgb}, 16, MaskingConfig(), generator=seed())["rgb"]
    assert torch.equal(a, d) and not torch.equal(a, b)


def test_scores_rank_flat_patches_below_detailed_ones():
    img = torch.full((1, 1, 32, 32), 5.0)
    img[..., 16:, 16:] = torch.rand(16, 16) * 50  # one textured patch
    img[..., :16, 16:] = torch.linspace(0, 30, 16)  # one smooth ramp
    s = information_scores({"dsm": img}, 16, normalize=False)[0]
    assert s[0] == 0 and s[2] == 0  # constant patches: no gradient, no variance
    assert s[3] > s[1] > 0


def test_weights_follow_score_quantiles():
    scores = torch.arange(10.0).unsqueeze(0)
    w = score_weights(scores, (0.8, 0.5, 0.3), (0.2, 0.8))
    # quantiles 1.8 and 7.2: 0,1 low; 8,9 high
    assert torch.allclose(w, torch.tensor([[0.8, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3]]))


def test_single_draw_frequencies_are_proportional_to_weights():
    """With k = 1 the inclusion probability is exactly w_i / sum(w)."""
    weights = torch.tensor([[0.8] * 20 + [0.5] * 60 + [0.3] * 20]).repeat(20000, 1)
    mask = weighted_mask(weights, 1, torch.Generator().manual_seed(0))
    freq = mask.float().mean(0)
    groups = [freq[:20].sum(), freq[20:80].sum(), freq[80:].sum()]
    expected = torch.tensor([16.0, 30.0, 6.0]) / 52.0
    # binomial standard error with 20000 trials is < 0.0036: 4 sigma
    assert torch.allclose(torch.stack(groups), expected, atol=0.015)


def test_information_masking_hides_low_score_patches_more_as_the_weights_imply():
    """At ratio 0.75, Gumbel top-k must match successive weighted draws (numpy.choice)."""
    n, trials, ratio = 40, 4000, 0.75
    scores = torch.arange(float(n)).unsqueeze(0).repeat(trials, 1)
    ours = information_aware_mask(scores, ratio, generator=torch.Generator().manual_seed(0)).float().mean(0)
    rng = np.random.default_rng(0)
    ref = np.mean([reference.sample_mask(scores[0].numpy(), ratio, rng) for _ in range(trials)], axis=0)
    low, high = slice(0, 8), slice(33, 40)  # below the 20% / above the 80% quantile
    assert ours[low].mean() > ours[8:32].mean() > ours[high].mean()
    np.testing.assert_allclose(ours[low].mean(), ref[low].mean(), atol=0.02)
    np.testing.assert_allclose(ours[high].mean(), ref[high].mean(), atol=0.02)
    np.testing.assert_allclose(ours.numpy(), ref, atol=0.05)  # per position, ~3 sigma


def test_random_mask_is_uniform():
    m = random_mask(20000, 8, 0.5, generator=torch.Generator().manual_seed(0)).float().mean(0)
    assert torch.allclose(m, torch.full((8,), 0.5), atol=0.02)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_cross_modal_swaps_keep_counts_and_swap_the_expected_share(p):
    b, n, ratio = 4000, 40, 0.75
    ref = random_mask(b, n, ratio, generator=torch.Generator().manual_seed(0))
    masks = cross_modal_masks(ref, ["rgb", "ms", "dsm"], "rgb", p, torch.Generator().manual_seed(1))
    assert torch.equal(masks["rgb"], ref)
    n_vis = n - num_masked(n, ratio)
    for key in ("ms", "dsm"):
        m = masks[key]
        assert (m.sum(1) == ref.sum(1)).all()
        hidden_here_visible_in_ref = (m & ~ref).sum(1)  # swapped positions
        revealed_here_masked_in_ref = (~m & ref).sum(1)
        assert torch.equal(hidden_here_visible_in_ref, revealed_here_masked_in_ref)
        share = hidden_here_visible_in_ref.float().mean() / n_vis
        assert abs(share - p) < 0.01
    if p == 0.0:
        assert torch.equal(masks["ms"], ref)
    if p == 1.0:  # what the reference shows, the others hide entirely
        assert not (~masks["ms"] & ~ref).any()
    assert p == 0.0 or not torch.equal(masks["ms"], masks["dsm"])  # independent draws


def test_cross_modal_off_gives_identical_masks():
    masks = generate_masks(images(), 16, MaskingConfig(cross_modal=False), epoch=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks["rgb"], masks["dsm"])


def test_substitution_schedule_matches_the_authors():
    s = SubstitutionSchedule()
    assert [round(s(e), 6) for e in (0, 9, 10, 25, 59, 60, 400)] == [0.1, 0.1, 0.2, 0.3, 0.6, 0.7, 0.7]


def test_visible_indices_are_the_unmasked_positions_ascending():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    assert visible_indices(mask).tolist() == [[1, 3], [0, 1]]
    with pytest.raises(ValueError, match="visible counts differ"):
        visible_indices(torch.tensor([[True, False], [False, False]]))


def test_bad_inputs_raise_clear_errors():
    x = images()
    with pytest.raises(ValueError, match="'dsm' has batch/size"):
        generate_masks({"rgb": x["rgb"], "dsm": x["dsm"][:, :, :32]}, 16)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        generate_masks({"rgb": x["rgb"][..., :40]}, 16)
    with pytest.raises(KeyError, match="reference"):
        generate_masks(x, 16, MaskingConfig(reference="ms"))
    with pytest.raises(ValueError, match="ratio"):
        MaskingConfig(ratio=1.0)
