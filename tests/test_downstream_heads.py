"""Segmentation (UPerNet + aux FCN) and height heads on the downstream backbone."""

import pytest
import torch
import torch.nn.functional as F

from mssdf.downstream.backbone import BackboneConfig, build_backbone
from mssdf.downstream.heads import (
    HeightModel, SegmentationModel, backbone_parameters, build_height_model, build_segmentation_model, head_parameters,
)  # fmt: skip

ARCH = {"preset": "tiny", "embed_dim": 32, "depth": 4, "num_heads": 2, "decoder_dim": 16, "decoder_heads": 2,
        "img_size": 32, "patch_size": 8}  # fmt: skip
H, W = 32, 48


def backbone(modalities=("rgb", "dsm"), seed=0):
    torch.manual_seed(seed)
    return build_backbone(BackboneConfig(modalities=modalities, arch=ARCH))


def images(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, 3, H, W, generator=g), "dsm": torch.randn(b, 1, H, W, generator=g)}


@pytest.mark.parametrize("aux", [True, False])
def test_segmentation_outputs_have_the_input_size_and_aux_only_when_asked(aux):
    model = build_segmentation_model(backbone(), num_classes=5, aux=aux, channels=16)
    assert isinstance(model, SegmentationModel)
    out = model(images())
    assert sorted(out) == (["aux", "out"] if aux else ["out"])
    assert all(v.shape == (2, 5, H, W) for v in out.values())
    model.eval()
    with torch.no_grad():
        one = model({k: v[:1] for k, v in images().items()})["out"]
        torch.testing.assert_close(one, model(images())["out"][:1], rtol=0, atol=1e-5)  # eval: per-sample


def test_height_output_is_one_channel_at_the_input_size():
    model = build_height_model(backbone(("dsm",)), channels=16)
    assert isinstance(model, HeightModel)
    x = {"dsm": torch.randn(3, 1, 40, 24)}  # another non-square size, multiple of the patch
    assert sorted(model(x)) == ["out"] and model(x)["out"].shape == (3, 1, 40, 24)


@pytest.mark.parametrize("task", ["segmentation", "height"])
def test_gradients_reach_every_parameter_of_backbone_and_head(task):
    bb = backbone()
    model = build_segmentation_model(bb, 4, channels=16) if task == "segmentation" else build_height_model(bb, channels=16)
    out = model(images())
    if task == "segmentation":
        target = torch.randint(0, 4, (2, H, W))
        loss = F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)
    else:
        loss = F.l1_loss(out["out"], torch.randn(2, 1, H, W))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    names = {n for n, _ in model.named_parameters()}
    enc = {n for n, _ in backbone_parameters(model)}
    head = {n for n, _ in head_parameters(model)}
    assert enc | head == names and not enc & head
    assert enc == {"backbone." + n for n, _ in bb.encoder.named_parameters(prefix="encoder")}
    assert any(n.startswith("backbone.neck.") for n in head) and any(n.startswith("decoder.") for n in head)


def test_a_frozen_encoder_is_untouched_by_training_the_head():
    bb = backbone(("rgb",))
    model = build_segmentation_model(bb, 3, channels=16)
    x = {"rgb": images()["rgb"]}
    with torch.no_grad():
        probe_before = bb.encoder.forward_features(x["rgb"], "rgb")  # what a linear probe of the encoder sees
    encoder_before = {k: v.clone() for k, v in bb.encoder.state_dict().items()}
    head_before = {n: p.detach().clone() for n, p in head_parameters(model)}
    for _, p in backbone_parameters(model):
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for _, p in head_parameters(model)], lr=0.1)
    F.cross_entropy(model(x)["out"], torch.randint(0, 3, (2, H, W))).backward()
    opt.step()
    assert all(torch.equal(v, encoder_before[k]) for k, v in bb.encoder.state_dict().items())
    assert any(not torch.equal(p, head_before[n]) for n, p in head_parameters(model))
    with torch.no_grad():
        assert torch.equal(bb.encoder.forward_features(x["rgb"], "rgb"), probe_before)
