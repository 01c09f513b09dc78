"""Split-level metrics: equal to a direct NumPy computation, perfect scores, edge cases."""

import math

import numpy as np
import pytest
import torch

from mssdf.data.io import IGNORE_INDEX
from mssdf.downstream.metrics import HeightMetrics, SegmentationMetrics, height_to_8bit


# --------------------------------------------------------------------------- segmentation


def numpy_seg_metrics(preds, targets, K, ignore=IGNORE_INDEX):
    """Per-class IoU/F1 straight from the masks (no confusion matrix), mmseg convention."""
    p = np.concatenate([x.ravel() for x in preds])
    t = np.concatenate([x.ravel() for x in targets])
    keep = t != ignore
    p, t = p[keep], t[keep]
    iou, f1 = np.full(K, np.nan), np.full(K, np.nan)
    for c in range(K):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        if union:
            iou[c] = inter / union
            f1[c] = 2 * inter / (np.sum(p == c) + np.sum(t == c))
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (t, p), 1)
    return {
        "miou": np.nanmean(iou),
        "f1": np.nanmean(f1),
        "iou": iou,
        "f1_per": f1,
        "overall_accuracy": np.mean(p == t),
        "confusion": confusion,
    }


def random_batches(K, n_batches=3, shape=(2, 17, 13), absent=(), seed=0):
    """Random targets with ignore pixels, predictions; classes in ``absent`` never occur."""
    rng = np.random.default_rng(seed)
    allowed = np.array([c for c in range(K) if c not in absent])
    preds, targets = [], []
    for _ in range(n_batches):
        t = rng.choice(allowed, size=shape)
        t[rng.random(shape) < 0.2] = IGNORE_INDEX
        p = np.where(rng.random(shape) < 0.6, t, rng.choice(allowed, size=shape))
        p[p == IGNORE_INDEX] = allowed[0]
        preds.append(p.astype(np.int64))
        targets.append(t.astype(np.int64))
    return preds, targets


def test_segmentation_equals_numpy_over_several_batches():
    K = 6
    preds, targets = random_batches(K, absent=(4,))
    m = SegmentationMetrics(K, class_names=[f"c{i}" for i in range(K)])
    for p, t in zip(preds, targets):
        m.update(torch.from_numpy(p), torch.from_numpy(t))
    got, ref = m.compute(), numpy_seg_metrics(preds, targets, K)
    assert set(got) == {"miou", "per_class_iou", "f1", "per_class_f1", "overall_accuracy", "confusion"}
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert got["f1"] == pytest.approx(ref["f1"], abs=1e-12)
    assert got["overall_accuracy"] == pytest.approx(ref["overall_accuracy"], abs=1e-12)
    np.testing.assert_allclose(list(got["per_class_iou"].values()), ref["iou"], atol=1e-12)
    np.testing.assert_allclose(list(got["per_class_f1"].values()), ref["f1_per"], atol=1e-12)
    assert list(got["per_class_iou"]) == [f"c{i}" for i in range(K)]
    assert got["confusion"].dtype == torch.int64
    np.testing.assert_array_equal(got["confusion"].numpy(), ref["confusion"])
    # Class 4 is neither in the truth nor predicted: NaN, and left out of the means.
    assert math.isnan(got["per_class_iou"]["c4"]) and math.isnan(got["per_class_f1"]["c4"])
    present = [v for k, v in got["per_class_iou"].items() if k != "c4"]
    assert got["miou"] == pytest.approx(sum(present) / len(present), abs=1e-12)


def test_logits_equal_class_ids_and_perfect_predictor():
    K = 4
    preds, targets = random_batches(K, n_batches=2, seed=1)
    g = torch.Generator().manual_seed(0)
    by_ids, by_logits, perfect = SegmentationMetrics(K), SegmentationMetrics(K), SegmentationMetrics(K)
    for p, t in zip(preds, targets):
        p, t = torch.from_numpy(p), torch.from_numpy(t)
        logits = torch.randn(p.shape[0], K, *p.shape[1:], generator=g)
        logits.scatter_(1, p.unsqueeze(1), 10.0)  # argmax = p
        by_ids.update(p, t)
        by_logits.update(logits, t)
        perfect.update(torch.where(t == IGNORE_INDEX, 0, t), t)
    a, b = by_ids.compute(), by_logits.compute()
    assert torch.equal(a["confusion"], b["confusion"]) and a["miou"] == b["miou"]
    best = perfect.compute()
    assert best["miou"] == best["f1"] == best["overall_accuracy"] == 1.0
    assert best["confusion"].sum() == sum(int((t != IGNORE_INDEX).sum()) for t in targets)


def test_merged_states_equal_one_pass_and_reset():
    """Two ranks' states summed (what torchmetrics' DDP sync does) = one metric over all."""
    K = 5
    preds, targets = random_batches(K, n_batches=4, seed=2)
    whole, rank0, rank1 = SegmentationMetrics(K), SegmentationMetrics(K), SegmentationMetrics(K)
    for i, (p, t) in enumerate(zip(preds, targets)):
        whole.update(torch.from_numpy(p), torch.from_numpy(t))
        (rank0 if i % 2 else rank1).update(torch.from_numpy(p), torch.from_numpy(t))
    rank0.merge_state(rank1)
    assert torch.equal(rank0.compute()["confusion"], whole.compute()["confusion"])
    whole.reset()
    whole.update(torch.from_numpy(preds[0]), torch.from_numpy(targets[0]))
    np.testing.assert_array_equal(whole.compute()["confusion"].numpy(), numpy_seg_metrics(preds[:1], targets[:1], K)["confusion"])


def test_out_of_range_labels_raise_naming_values():
    m = SegmentationMetrics(3)
    t = torch.tensor([[[0, 1, 7], [IGNORE_INDEX, 2, -1]]])
    with pytest.raises(ValueError, match=r"\[-1, 7\].*num_classes=3"):
        m.update(torch.zeros_like(t), t)
    t_ok = torch.tensor([[[0, 1, 2]]])
    with pytest.raises(ValueError, match=r"pred has class ids \[5\]"):
        m.update(torch.tensor([[[0, 5, 2]]]), t_ok)
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), t_ok)
    with pytest.raises(ValueError, match="channels"):
        m.update(torch.zeros(1, 4, 1, 3), t_ok)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMetrics(3, class_names=["a", "b"])
    # Nothing was accumulated by the failed updates.
    assert int(m.confmat.sum()) == 0


def test_empty_split_gives_nan():
    m = SegmentationMetrics(2)
    t = torch.full((1, 2, 2), IGNORE_INDEX)
    m.update(torch.zeros_like(t), t)
    out = m.compute()
    assert math.isnan(out["miou"]) and math.isnan(out["overall_accuracy"])
    assert all(math.isnan(v) for v in out["per_class_iou"].values())


# --------------------------------------------------------------------------- height


def numpy_height_metrics(preds, targets, scale_m):
    p = np.concatenate([x.ravel() for x in preds]).astype(np.float64)
    t = np.concatenate([x.ravel() for x in targets]).astype(np.float64)
    keep = np.isfinite(t)
    p, t = p[keep], t[keep]

    def to8(h):
        return np.clip(np.round(h / scale_m * 255), 0, 255)

    p8, t8 = to8(p), to8(t)
    ng = (t8 != 0) & (t8 != 255)
    out = {"n_pixels": int(keep.sum()), "n_pixels_no_ground": int(ng.sum())}
    for suffix, sel in (("", slice(None)), ("_no_ground", ng)):
        em, en = (p - t)[sel], ((p8 - t8) / 255)[sel]
        out[f"rmse_m{suffix}"] = np.sqrt(np.mean(em**2))
        out[f"mae_m{suffix}"] = np.mean(np.abs(em))
        out[f"rmse_norm{suffix}"] = np.sqrt(np.mean(en**2))
        out[f"mae_norm{suffix}"] = np.mean(np.abs(en))
    return out


HEIGHT_KEYS = {
    f"{k}{s}" for k in ("rmse_m", "mae_m", "rmse_norm", "mae_norm") for s in ("", "_no_ground")
} | {"n_pixels", "n_pixels_no_ground"}


def random_heights(n_batches=3, shape=(2, 15, 11), seed=0, scale_m=30.0):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_batches):
        t = rng.uniform(-2.0, scale_m * 1.2, size=shape).astype(np.float32)  # some below 0 / above scale
        t[rng.random(shape) < 0.15] = np.nan
        preds.append((t + rng.normal(0, 2.0, size=shape)).astype(np.float32))
        preds[-1][np.isnan(preds[-1])] = 1.0
        targets.append(t)
    return preds, targets


def test_height_equals_numpy_over_several_batches():
    scale = 30.0
    preds, targets = random_heights(scale_m=scale)
    m = HeightMetrics(scale_m=scale)
    for i, (p, t) in enumerate(zip(preds, targets)):
        pt = torch.from_numpy(p)
        m.update(pt.unsqueeze(1) if i == 1 else pt, torch.from_numpy(t))  # (B,1,H,W) accepted too
    got, ref = m.compute(), numpy_height_metrics(preds, targets, scale)
    assert set(got) == HEIGHT_KEYS
    for k in HEIGHT_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    # The subset is non-trivial in this example: both 0 and 255 targets occur.
    assert 0 < got["n_pixels_no_ground"] < got["n_pixels"]


def test_height_perfect_predictor_scores_zero():
    preds, targets = random_heights(n_batches=2, seed=3)
    m = HeightMetrics(scale_m=30.0)
    for t in targets:
        tt = torch.from_numpy(t)
        m.update(torch.nan_to_num(tt, nan=5.0), tt)
    out = m.compute()
    assert all(out[k] == 0.0 for k in HEIGHT_KEYS if not k.startswith("n_"))
    assert out["n_pixels"] == sum(int(np.isfinite(t).sum()) for t in targets)


def test_normalised_unit_hand_example_and_no_ground_subset():
    # scale 25.5 m at 255: 1 m is 10 in 8 bits, i.e. 10/255 in the normalised unit.
    assert height_to_8bit(torch.tensor([1.0, 0.0, 25.5, 40.0, -1.0]), 25.5).tolist() == [10, 0, 255, 255, 0]
    m = HeightMetrics(scale_m=25.5)
    target = torch.tensor([[[0.0, 25.5, 30.0, -0.5, 2.0, float("nan")]]])  # 8-bit: 0, 255, 255 (clip), 0 (clip), 20, -
    pred = torch.tensor([[[1.0, 25.5, 30.0, 0.5, 3.0, 9.0]]])  # 8-bit: 10, 255, 255, 5, 30
    m.update(pred, target)
    out = m.compute()
    assert out["n_pixels"] == 5 and out["n_pixels_no_ground"] == 1  # only the 2 m pixel is not 0/255
    assert out["mae_m"] == pytest.approx(3 / 5) and out["rmse_m"] == pytest.approx(math.sqrt(3 / 5))
    assert out["mae_norm"] == pytest.approx((10 + 0 + 0 + 5 + 10) / 255 / 5)
    assert out["rmse_norm"] == pytest.approx(math.sqrt((100 + 25 + 100) / 5) / 255)
    assert out["mae_m_no_ground"] == pytest.approx(1.0)
    assert out["mae_norm_no_ground"] == pytest.approx(10 / 255) and out["rmse_norm_no_ground"] == pytest.approx(10 / 255)


def test_height_bad_inputs_raise():
    m = HeightMetrics(scale_m=10.0)
    t = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match="1 non-finite"):
        p = torch.zeros(1, 4, 4)
        p[0, 1, 2] = float("nan")
        m.update(p, t)
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 4, 5), t)
    with pytest.raises(ValueError, match="scale_m"):
        HeightMetrics(scale_m=0.0)
    assert int(m.n_all) == 0  # failed updates added nothing
    empty = HeightMetrics(scale_m=10.0)
    empty.update(torch.zeros(1, 2, 2), torch.full((1, 2, 2), float("nan")))
    res = empty.compute()
    assert res["n_pixels"] == 0 and math.isnan(res["rmse_m"])
