"""Downstream backbone: every initialisation, one contract; the pyramid; layer ids; errors."""

import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mssdf.config import ConfigError, from_dict
from mssdf.downstream.backbone import BackboneConfig, build_backbone, default_out_indices, describe_init
from mssdf.model import MSSDF, NormStats, model_config
from mssdf.weights import CheckpointError, export_timm, load_authors_checkpoint, save_pretrained
from test_interop import authors_state_dict, training_checkpoint

ARCH = dict(embed_dim=32, depth=4, num_heads=2, decoder_dim=16, decoder_heads=2, decoder_depth=1, fusion_depth=1,
            img_size=32, patch_size=8)  # fmt: skip
STATS = {"rgb": NormStats((120.0, 110.0, 100.0), (50.0, 45.0, 40.0)), "dsm": NormStats((10.0,), (6.0,))}
H, W = 32, 48  # non-square, multiples of the patch


def raw(b=2, h=H, w=W, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.rand(b, 3, h, w, generator=g) * 255, "dsm": torch.rand(b, 1, h, w, generator=g) * 25}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """``<tmp>/mssdf/final``: a small pre-trained model of ours (+ its timm exports)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = MSSDF(model_config("tiny", **ARCH, modalities={"rgb": 3, "dsm": 1}, normalization=STATS))
    with torch.no_grad():
        for blk in model.encoder.blocks:
            blk.attn.q_bias.normal_(0, 0.5)
            blk.attn.v_bias.normal_(0, 0.5)
    folder = root / "mssdf" / "final"
    save_pretrained(model, folder)
    export_timm(model, folder)
    return root


def build(init, seed=0, **kw):
    torch.manual_seed(seed)  # the caller seeds; the neck's initial values come from it
    return build_backbone(BackboneConfig(init=str(init), **kw)).eval()


def test_every_initialisation_honours_one_contract(models_dir):
    folder = models_dir / "mssdf" / "final"
    backbones = {
        "name": build("mssdf", models_dir=str(models_dir)),
        "folder": build(folder),
        "timm": build(folder / "timm_rgb.safetensors"),
    }
    x = raw()
    with torch.no_grad():
        ref = backbones["name"](x)
        for kind, bb in backbones.items():
            assert not bb.wants_normalized("rgb"), kind  # statistics held (or folded into the timm export)
            assert bb.out_indices == (0, 1, 2, 3) and bb.strides == [2, 4, 8, 16]
            for level, (a, b) in enumerate(zip(bb(x), ref)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"{kind} level {level}")
    assert "'mssdf'" in backbones["name"].init_description and "timm" in backbones["timm"].init_description


def test_authors_checkpoint_builds_and_runs(tmp_path):
    path = tmp_path / "vit_base_500.pth"
    torch.save(training_checkpoint(authors_state_dict()), path)
    bb = build(path, modalities=("rgb", "dsm"), arch={"num_heads": 2, "decoder_heads": 2})
    theirs = load_authors_checkpoint(path, num_heads=2, decoder_heads=2).encoder.state_dict()
    for k, v in bb.encoder.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    assert not bb.wants_normalized("rgb") and bb.wants_normalized("dsm")  # ImageNet statistics for rgb only
    with torch.no_grad():
        maps = bb(raw())
    assert [tuple(m.shape) for m in maps] == [(2, c, H // s, W // s) for c, s in zip((8, 16, 32, 32), (2, 4, 8, 16))]
    assert bb.out_channels == [8, 16, 32, 32]  # D/4, D/2, D, D
    assert all(torch.isfinite(m).all() for m in maps) and "authors'" in describe_init(
        BackboneConfig(init=str(path), modalities=("rgb",)))


def test_random_init_depends_on_the_seed_only():
    arch = {"preset": "tiny", **ARCH}
    a, b, c = (build("random", seed=s, arch=arch).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("encoder.blocks."))
    assert build("random", arch=arch).wants_normalized("rgb")  # no statistics: standardised inputs


@pytest.mark.parametrize("patch", [8, 16])
def test_pyramid_strides_on_non_square_inputs(patch):
    bb = build("random", arch={"preset": "tiny", **ARCH, "patch_size": patch, "img_size": 2 * patch},
               modalities=("rgb", "dsm"))
    assert bb.strides == [patch // 4, patch // 2, patch, 2 * patch]
    h, w = 4 * patch, 6 * patch
    with torch.no_grad():
        maps = bb(raw(h=h, w=w))
        odd = bb(raw(h=3 * patch, w=5 * patch))  # odd grid: level 3 keeps the last row/column (ceil)
    assert [tuple(m.shape) for m in maps] == [(2, c, h // s, w // s) for c, s in zip(bb.out_channels, bb.strides)]
    assert bb.out_channels == [8, 16, 32, 32]  # D/4, D/2, D, D (ViTDet's narrower upsampled levels)
    assert tuple(odd[3].shape[-2:]) == (2, 3) and tuple(odd[0].shape[-2:]) == (12, 20)


def _block_tokens(encoder, x, m, block):
    """Output tokens of ``block`` (cls dropped) and the final (normed) tokens, from Encoder.forward."""
    out = {}
    hook = encoder.blocks[block].register_forward_hook(lambda mod, inp, o: out.setdefault("t", o))
    try:
        final = encoder.forward_features(x, m)
    finally:
        hook.remove()
    return out["t"][:, 1:], final[:, 1:]


def _grid(tokens, h, w):
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def test_single_modality_levels_are_the_encoder_blocks_and_the_last_is_normed(models_dir):
    bb = build(models_dir / "mssdf" / "final", modalities=("dsm",))
    x = raw()
    with torch.no_grad():
        feats, maps = bb.features(x), bb(x)
        block2, final = _block_tokens(bb.encoder, x["dsm"], "dsm", bb.out_indices[2])
    assert torch.equal(maps[2], feats[2])  # level 2: the tokens as they are
    torch.testing.assert_close(maps[2], _grid(block2, H // 8, W // 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(feats[3], _grid(final, H // 8, W // 8), rtol=0, atol=1e-6)  # last block: + encoder.norm
    torch.testing.assert_close(maps[3], F.max_pool2d(feats[3], 2), rtol=0, atol=0)


def test_two_modalities_fuse_by_the_mean(models_dir):
    folder = models_dir / "mssdf" / "final"
    both, rgb, dsm = (build(folder, modalities=m) for m in (("rgb", "dsm"), ("rgb",), ("dsm",)))
    x = raw()
    with torch.no_grad():
        fb, fr, fd = both.features(x), rgb.features(x), dsm.features(x)
        assert fb[0].shape == (2, 32, H // 8, W // 8)
        for level in range(4):
            torch.testing.assert_close(fb[level], (fr[level] + fd[level]) / 2, rtol=0, atol=1e-5)
        torch.testing.assert_close(both(x)[2], (rgb(x)[2] + dsm(x)[2]) / 2, rtol=0, atol=1e-5)
    assert sorted(both.encoder.patch_embed.proj) == ["dsm", "rgb"] and list(rgb.encoder.patch_embed.proj) == ["rgb"]


def test_layer_ids_over_every_parameter():
    bb = build("random", arch={"preset": "tiny", **ARCH})
    depth = bb.depth
    seen = set()
    for name, _ in bb.named_parameters():
        lid = bb.layer_id(name)
        assert lid == bb.layer_id("backbone." + name)  # the same names inside a task model
        if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
            assert lid == 0, name
        elif name.startswith("encoder.blocks."):
            assert lid == int(name.split(".")[2]) + 1, name
        else:
            assert name.startswith(("encoder.norm.", "neck.")) and lid == depth + 1, name
        seen.add(lid)
    assert seen == set(range(depth + 2)) and bb.num_layers == depth + 1
    assert bb.layer_id("decoder.psp.blocks.0.0.weight") == depth + 1


def test_default_out_indices_end_with_the_last_block():
    assert default_out_indices(12) == (2, 5, 8, 11) and default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(6) == (1, 2, 4, 5) and default_out_indices(4) == (0, 1, 2, 3)


def test_errors_name_the_init_the_folder_and_the_file(models_dir, tmp_path):
    folder = models_dir / "mssdf" / "final"
    with pytest.raises(ConfigError, match=re.escape(f"init '{folder}' has adapters ['rgb', 'dsm']; requested ['ms']")):
        build(folder, modalities=("ms",))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "mae" / "final")) + r".*dvc repro pretrain@mae"):
        build("mae", models_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="timm ViT state dict, it holds one adapter"):
        build(folder / "timm_rgb.safetensors", modalities=("rgb", "dsm"))
    with pytest.raises(ConfigError, match="export of modality 'dsm'"):
        build(folder / "timm_dsm.safetensors", modalities=("rgb",))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) backbone\.inti"):
        from_dict(BackboneConfig, {"inti": "mae"}, "backbone")

    cut = tmp_path / "cut"  # a truncated weights file in a folder of ours
    shutil.copytree(folder, cut)
    (cut / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(str(cut / "model.safetensors"))):
        build(cut)
    pth = tmp_path / "cut.pth"
    torch.save(training_checkpoint(authors_state_dict()), pth)
    pth.write_bytes(pth.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=re.escape(str(pth))):
        build(pth)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match=re.escape(str(other)) + ": neither the authors'"):
        build(other)
    sd = load_file(folder / "timm_rgb.safetensors")  # another architecture: a wider MLP in one block
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)
    wrong = tmp_path / "wide.safetensors"
    save_file(sd, wrong)
    with pytest.raises(CheckpointError, match=re.escape(str(wrong)) + r": shape mismatch.*blocks\.1\.mlp\.fc1\.weight"):
        build(wrong, arch={"num_heads": 2})
