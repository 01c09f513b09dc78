"""timm VisionTransformer state dicts → our Encoder (the inverse of timm_export)."""

import re

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from conftest import micro_config
from mssdf.model import MSSDF
from mssdf.pos_embed import position_table
from mssdf.weights import CheckpointError, export_timm, save_pretrained, timm_kwargs, to_timm_state_dict
from mssdf.weights.timm_import import from_timm_state_dict, load_timm_file

ATOL = 1e-5


def _model(**overrides):
    torch.manual_seed(0)
    model = MSSDF(micro_config(**overrides)).eval()
    with torch.no_grad():  # non-zero q/v biases (they start at zero)
        for blk in model.encoder.blocks:
            blk.attn.q_bias.normal_(0, 0.5)
            blk.attn.v_bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


def _raw(m, b=2, h=32, w=48):
    g = torch.Generator().manual_seed(1)
    scale = {"rgb": 255.0, "ms": 600.0, "dsm": 25.0}[m]
    return torch.rand(b, micro_config().modalities[m], h, w, generator=g) * scale


@pytest.mark.parametrize("pos", ["2d", "1d"])
def test_export_then_import_gives_the_same_features_on_raw_input(pos):
    model = _model(pos_embed=pos)
    for m in model.cfg.modalities:
        state = to_timm_state_dict(model.encoder, m)
        enc = from_timm_state_dict(state, m, kwargs=timm_kwargs(model.encoder, m), raw_input=True).eval()
        assert enc.cfg.pos_embed == pos and enc.cfg.depth == 2 and enc.cfg.embed_dim == 32 and enc.cfg.num_heads == 2
        assert list(enc.cfg.modalities) == [m] and m in enc.cfg.normalization  # folded statistics: takes raw values
        mean, std = getattr(enc.patch_embed, f"mean_{m}"), getattr(enc.patch_embed, f"std_{m}")
        assert not mean.any() and bool((std == 1).all())  # identity buffers: the statistics are in the weights
        x = _raw(m)  # non-square: positions generated for the grid
        with torch.no_grad():
            torch.testing.assert_close(enc.forward_features(x, m), model.encoder.forward_features(x, m), rtol=0, atol=ATOL)


def test_any_timm_vit_of_this_layout_imports_exactly_k_bias_and_layer_scale_included():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                            init_values=0.5).eval()
    sd = vit.state_dict()
    sd["pos_embed"] = torch.cat([torch.randn(1, 32), position_table("2d", 4, 4, 32)]).unsqueeze(0)  # cls slot non-zero
    for k in sd:
        if k.endswith(("qkv.bias", "ls1.gamma", "ls2.gamma")):
            sd[k] = torch.randn_like(sd[k])  # includes a non-zero k bias
    vit.load_state_dict(sd)
    enc = from_timm_state_dict(sd, "rgb", kwargs={"num_heads": 2}).eval()
    assert "rgb" not in enc.cfg.normalization  # provenance unknown: inputs come standardised
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x, "rgb"), vit.forward_features(x), rtol=0, atol=ATOL)


def test_a_learned_position_table_is_refused():
    sd = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=1, num_heads=2, num_classes=0).state_dict()
    with pytest.raises(CheckpointError, match=r"my\.pth: pos_embed is not a fixed sine-cosine table.*fixed positions"):
        from_timm_state_dict(sd, "rgb", kwargs={"num_heads": 2}, source="my.pth")


def test_mismatching_states_are_errors_naming_the_key(model):
    sd = to_timm_state_dict(model.encoder, "rgb")
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=r"^src: missing tensor\(s\) blocks\.1\.mlp\.fc2\.bias"):
        from_timm_state_dict(missing, "rgb", source="src")
    with pytest.raises(CheckpointError, match=r"src: kwargs depth=3 but the tensors hold 2 blocks"):
        from_timm_state_dict(sd, "rgb", kwargs={"depth": 3}, source="src")
    gap = {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) blocks\.0\.norm1\.weight"):
        from_timm_state_dict(gap, "rgb", source="src")
    extra = {**sd, "reg_token": torch.zeros(1, 4, 32)}
    with pytest.raises(CheckpointError, match=r"no place in this encoder: reg_token"):
        from_timm_state_dict(extra, "rgb", source="src")
    wrong = {**sd, "blocks.1.mlp.fc1.weight": torch.zeros(64, 32)}
    with pytest.raises(CheckpointError, match=r"shape mismatch.*blocks\.1\.mlp\.fc1\.weight \(64, 32\)"):
        from_timm_state_dict(wrong, "rgb", source="src")
    no_norm = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) norm\.weight, norm\.bias"):
        from_timm_state_dict(no_norm, "rgb", source="src")


def test_files_round_trip_with_their_json_and_config(tmp_path, model):
    save_pretrained(model, tmp_path)
    export_timm(model, tmp_path)
    x = _raw("ms")
    enc = load_timm_file(tmp_path / "timm_ms.safetensors", "ms").eval()  # num_heads from timm_ms.json
    assert "ms" in enc.cfg.normalization  # config.json beside it: ms was folded with statistics
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x, "ms"), model.encoder.forward_features(x, "ms"), rtol=0, atol=ATOL)
    torch.save({"model": to_timm_state_dict(model.encoder, "ms")}, tmp_path / "vit.pth")  # no json: heads from kwargs
    enc = load_timm_file(tmp_path / "vit.pth", "ms", kwargs={"num_heads": 2}).eval()
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x, "ms"), model.encoder.forward_features(x, "ms"), rtol=0, atol=ATOL)


def test_mixture_trained_export_wants_standardised_inputs(tmp_path):
    model = _model(normalization={})
    save_pretrained(model, tmp_path)
    export_timm(model, tmp_path, ["rgb"])
    assert load_timm_file(tmp_path / "timm_rgb.safetensors", "rgb").cfg.normalization == {}


def test_bad_files_are_errors_naming_the_file(tmp_path, model):
    sd = {k: v.contiguous() for k, v in to_timm_state_dict(model.encoder, "rgb").items()}
    path = tmp_path / "timm_rgb.safetensors"
    save_file(sd, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a readable safetensors file"):
        load_timm_file(path, "rgb")
    pth = tmp_path / "cut.pth"
    torch.save(sd, pth)
    pth.write_bytes(pth.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=re.escape(str(pth))):
        load_timm_file(pth, "rgb")
    del sd["blocks.0.attn.proj.weight"]
    good = tmp_path / "part.safetensors"
    save_file(sd, good)
    with pytest.raises(CheckpointError, match=re.escape(str(good)) + r": missing tensor\(s\) blocks\.0\.attn\.proj\.weight"):
        load_timm_file(good, "rgb", kwargs={"num_heads": 2})
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match=re.escape(str(other)) + ": not a timm VisionTransformer"):
        load_timm_file(other, "rgb")
