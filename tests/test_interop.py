"""Authors'-layout checkpoints in, timm VisionTransformer out, our safetensors round trip."""

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from conftest import batch, micro_config
from mssdf.weights import export_timm, load_pretrained, save_pretrained
from mssdf.weights import CheckpointError, load_authors_checkpoint, to_timm, to_timm_state_dict
from mssdf.weights.authors import AuthorsCheckpointWarning, authors_config, load_authors_checkpoint_with_report
from mssdf.model import MSSDF

D, DD, DEPTH, HEADS, PATCH, SIZE = 32, 16, 2, 2, 8, 32
IMNET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMNET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _block(sd, prefix, dim, g):
    r = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    sd.update({
        f"{prefix}norm1.weight": 1 + r(dim), f"{prefix}norm1.bias": r(dim),
        f"{prefix}attn.qkv.weight": r(3 * dim, dim), f"{prefix}attn.q_bias": r(dim), f"{prefix}attn.v_bias": r(dim),
        f"{prefix}attn.proj.weight": r(dim, dim), f"{prefix}attn.proj.bias": r(dim),
        f"{prefix}norm2.weight": 1 + r(dim), f"{prefix}norm2.bias": r(dim),
        f"{prefix}mlp.fc1.weight": r(4 * dim, dim), f"{prefix}mlp.fc1.bias": r(4 * dim),
        f"{prefix}mlp.fc2.weight": r(dim, 4 * dim), f"{prefix}mlp.fc2.bias": r(dim),
    })  # fmt: skip


def authors_state_dict(seed=0):
    """A random checkpoint in exactly the authors' layout (method.md §2 table), small widths."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    sd = {}
    for enc in ("encoder.", "ema_teacher."):
        sd.update({
            f"{enc}cls_token": r(1, 1, D), f"{enc}cls_embed.weight": r(1, D),
            f"{enc}patch_embed.proj.weight": r(D, 3, PATCH, PATCH), f"{enc}patch_embed.proj.bias": r(D),
            f"{enc}norm.weight": 1 + r(D), f"{enc}norm.bias": r(D),
        })  # fmt: skip
        for i in range(DEPTH):
            _block(sd, f"{enc}blocks.{i}.", D, g)
    sd.update({"encoder_to_decoder.weight": r(DD, D), "fusion_token": r(1, DD), "mask1_token": r(1, 1, DD), "mask2_token": r(1, 1, DD)})
    for dec, depth in (("fusion_decoder.", 1), ("decoder.", 2)):
        for i in range(depth):
            _block(sd, f"{dec}blocks.{i}.", DD, g)
        sd.update({f"{dec}norm.weight": 1 + r(DD), f"{dec}norm.bias": r(DD)})
    sd.update({"decoder.head.weight": r(D, DD), "decoder.head.bias": r(D)})
    sd.update({"cls_head.0.weight": 1 + r(D), "cls_head.0.bias": r(D), "cls_head.1.weight": r(D // 2, D),
               "cls_head.1.bias": r(D // 2), "cls_head.3.weight": r(2, D // 2), "cls_head.3.bias": r(2)})  # fmt: skip
    return sd


def authors_position_table(n, dim):
    """The authors' 1-D table, written independently of mssdf.pos_embed."""
    table = torch.zeros(n, dim, dtype=torch.float64)
    for pos in range(n):
        for j in range(dim):
            angle = pos / math.pow(10000, 2 * (j // 2) / dim)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table.float()


def authors_encoder(sd, prefix, image01):
    """Functional forward of the authors' encoder on an ImageNet-normalised 3-band image."""
    x = (image01 - IMNET_MEAN) / IMNET_STD
    tok = F.conv2d(x, sd[prefix + "patch_embed.proj.weight"], sd[prefix + "patch_embed.proj.bias"], stride=PATCH)
    tok = tok.flatten(2).transpose(1, 2)
    tok = tok + authors_position_table(tok.shape[1], D)
    cls = (sd[prefix + "cls_token"] + sd[prefix + "cls_embed.weight"]).expand(tok.shape[0], 1, D)
    x = torch.cat([cls, tok], 1)
    for i in range(DEPTH):
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(D), sd[p + "attn.v_bias"]])
        qkv = (h @ sd[p + "attn.qkv.weight"].T + bias).view(x.shape[0], x.shape[1], 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + o @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return F.layer_norm(x, (D,), sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def authors():
    sd = authors_state_dict()
    model = load_authors_checkpoint({"model": sd}, img_size=SIZE, num_heads=HEADS, decoder_heads=HEADS).eval()
    return sd, model


def test_authors_checkpoint_reproduces_their_encoder_on_rgb(authors):
    sd, model = authors
    rgb = torch.randint(0, 256, (2, 3, SIZE, SIZE)).float()
    with torch.no_grad():
        ours = model.encoder.forward_features(rgb, "rgb")
        theirs = authors_encoder(sd, "encoder.", rgb / 255)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.teacher.forward_features(rgb, "rgb"), authors_encoder(sd, "ema_teacher.", rgb / 255), rtol=1e-4, atol=1e-4)


def test_authors_checkpoint_dsm_path_equals_their_grey_three_channel_input(authors):
    sd, model = authors
    grey = torch.randint(0, 256, (2, 1, SIZE, SIZE)).float()
    with torch.no_grad():
        ours = model.encoder.forward_features(grey, "dsm")
        theirs = authors_encoder(sd, "encoder.", grey.expand(-1, 3, -1, -1) / 255)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_authors_checkpoint_fills_every_tensor_and_reads_from_a_file(authors, tmp_path):
    sd, model = authors
    assert model.cfg.depth == DEPTH and model.cfg.fusion_depth == 1 and model.cfg.decoder_depth == 2
    assert model.cfg.pos_embed == "1d"
    torch.testing.assert_close(model.mask_tokens["dsm"], sd["mask2_token"])
    torch.testing.assert_close(model.head.weight, sd["decoder.head.weight"])
    torch.testing.assert_close(model.modality_head[3].weight, sd["cls_head.3.weight"])
    path = tmp_path / "vit_tiny_500.pth"
    torch.save({"model": sd, "epoch": 499}, path)
    again = load_authors_checkpoint(path, img_size=SIZE, num_heads=HEADS, decoder_heads=HEADS)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_authors_checkpoint_errors_are_clear(tmp_path):
    sd = authors_state_dict()
    with pytest.raises(CheckpointError, match="theirs unused.*encoder.pos_embed"):
        load_authors_checkpoint({**sd, "encoder.pos_embed": torch.zeros(1, 17, D)}, img_size=SIZE, num_heads=HEADS, decoder_heads=HEADS)
    with pytest.raises(CheckpointError, match="not an MSSDF checkpoint"):
        load_authors_checkpoint({"model": {"foo": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="file not found"):
        load_authors_checkpoint(tmp_path / "missing.pth")


class PickledThing:
    """A class of ours that a checkpoint must not be allowed to instantiate."""

    def __init__(self, value=1):
        self.value = value


HEADS_KW = dict(img_size=SIZE, num_heads=HEADS, decoder_heads=HEADS)


def training_checkpoint(sd, **extra):
    """A checkpoint as the authors' training script writes it: model, argparse args, optimizer state, epoch."""
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    params[0].sum().backward()
    params[1].sum().backward()
    opt.step()  # per-parameter state (step, exp_avg, exp_avg_sq) as in a real file
    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=320, mask_ratio=0.75, batch_size=32, epochs=500,
                              blr=1.5e-4, min_lr=1e-5, data_path="/data/hrpairs", output_dir=None, dist_on_itp=False)  # fmt: skip
    return {"model": sd, "args": args, "optimizer": opt.state_dict(), "epoch": 499, **extra}


def test_authors_training_checkpoint_loads_safely_with_its_argparse_args(authors, tmp_path):
    sd, model = authors
    path = tmp_path / "checkpoint-499.pth"
    ckpt = training_checkpoint(sd)
    torch.save(ckpt, path)
    with pytest.raises(Exception):  # the plain safe loader refuses it: the Namespace is what needs allowing
        torch.load(path, weights_only=True)
    again = load_authors_checkpoint(path, **HEADS_KW)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for that load only
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "extra",
    [
        {"thing": PickledThing(3)},  # another class at the top level
        {"args": argparse.Namespace(output_dir=Path("/out"))},  # another class inside the allowed Namespace
    ],
    ids=["class", "class-inside-namespace"],
)
def test_checkpoint_holding_another_python_object_is_refused_naming_the_file(tmp_path, extra):
    path = tmp_path / "odd.pth"
    torch.save(training_checkpoint(authors_state_dict(), **extra), path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*refused by the safe loader.*(PickledThing|Path)"):
        load_authors_checkpoint(path, **HEADS_KW)


MISSING_KEYS = [
    "encoder.patch_embed.proj.weight",  # student patch embedding (its shape is read off the teacher's twin)
    "encoder.patch_embed.proj.bias",
    "encoder.cls_embed.weight",
    f"ema_teacher.blocks.{DEPTH - 1}.attn.qkv.weight",  # a teacher block tensor
    "ema_teacher.norm.bias",
    "mask1_token",
    "mask2_token",
    "fusion_token",
    "fusion_decoder.blocks.0.mlp.fc2.bias",
    "cls_head.0.weight",  # modality head
    "cls_head.3.bias",
    "decoder.head.weight",  # decoder head
    "decoder.norm.weight",
]


@pytest.mark.parametrize("key", MISSING_KEYS)
def test_every_missing_tensor_is_an_error_naming_the_file_and_its_key(tmp_path, key):
    sd = authors_state_dict()
    del sd[key]
    path = tmp_path / "vit_base_500.pth"
    torch.save(training_checkpoint(sd), path)
    with pytest.raises(CheckpointError) as err:
        load_authors_checkpoint(path, **HEADS_KW)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "missing" in msg
    assert re.search(r"(^|[\s:(,])" + re.escape(key) + r"($|[\s,;)])", msg), msg  # the file's spelling, exactly


@pytest.mark.parametrize("key", ["encoder_to_decoder.weight", "encoder.blocks.0.mlp.fc1.weight"])
def test_tensors_that_fix_the_model_shape_are_required_even_non_strict(tmp_path, key):
    sd = authors_state_dict()
    del sd[key]
    if key.startswith("encoder."):
        del sd[key.replace("encoder.", "ema_teacher.", 1)]
    path = tmp_path / "shape.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + re.escape(key)):
        load_authors_checkpoint(path, strict=False, **HEADS_KW)


@pytest.mark.parametrize(
    "deleted, kept",
    [
        (["decoder.head.weight"], ["head.weight"]),
        (["decoder.head.weight", "decoder.head.bias"], ["head.bias", "head.weight"]),
        (["cls_head.3.weight"], ["modality_head.3.weight"]),
        (["encoder.cls_embed.weight"], ["encoder.cls_token"]),
        (["encoder.patch_embed.proj.bias"], ["encoder.patch_embed.proj.dsm.proj.bias", "encoder.patch_embed.proj.rgb.proj.bias"]),
    ],
)
def test_non_strict_load_reports_which_of_our_tensors_kept_their_initial_values(tmp_path, deleted, kept):
    sd = authors_state_dict()
    for k in deleted:
        del sd[k]
    path = tmp_path / "partial.pth"
    torch.save(training_checkpoint(sd), path)
    torch.manual_seed(123)
    with pytest.warns(AuthorsCheckpointWarning, match=re.escape(str(path)) + ".*kept their initial values") as rec:
        model = load_authors_checkpoint(path, strict=False, **HEADS_KW)
    msg = str(rec[0].message)
    assert all(k in msg for k in kept) and all(k in msg for k in deleted)
    _, report = load_authors_checkpoint_with_report(path, strict=False, **HEADS_KW)
    assert report.kept_init == tuple(kept) and report.missing == tuple(sorted(deleted)) and report.unused == ()
    assert report.source == str(path) and not report.complete
    torch.manual_seed(123)
    fresh = MSSDF(authors_config(sd, **HEADS_KW)).state_dict()  # same seed: the initial values
    loaded = model.state_dict()
    for k in kept:
        assert torch.equal(loaded[k], fresh[k]), k
    full = load_authors_checkpoint(authors_state_dict(), **HEADS_KW).state_dict()
    for k, v in loaded.items():  # everything else is the file's
        if k not in kept:
            assert torch.equal(v, full[k]), k


def test_strict_complete_load_reports_nothing_and_does_not_warn(tmp_path):
    import warnings

    path = tmp_path / "ok.pth"
    torch.save(training_checkpoint(authors_state_dict()), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, report = load_authors_checkpoint_with_report(path, **HEADS_KW)
        load_authors_checkpoint(path, strict=False, **HEADS_KW)
    assert report.complete and not report.teacher_from_student and isinstance(model, MSSDF)


def test_without_any_teacher_tensor_the_teacher_starts_from_the_student(tmp_path):
    sd = {k: v for k, v in authors_state_dict().items() if not k.startswith("ema_teacher.")}
    model, report = load_authors_checkpoint_with_report(sd, **HEADS_KW)
    assert report.teacher_from_student and report.complete
    student, teacher = model.encoder.state_dict(), model.teacher.state_dict()
    for k, v in student.items():
        assert torch.equal(v, teacher[k]), k
    del sd["encoder.norm.weight"]  # a student tensor missing: reported once, under the file's name
    with pytest.raises(CheckpointError, match=r"missing tensors \(as the file names them\): encoder\.norm\.weight$"):
        load_authors_checkpoint(sd, **HEADS_KW)


@pytest.mark.parametrize("pos", ["2d", "1d"])
def test_timm_export_loads_strict_and_reproduces_features(pos):
    torch.manual_seed(0)
    model = MSSDF(micro_config(pos_embed=pos)).eval()
    x = batch(b=2)
    for m, image in x.items():
        vit = to_timm(model.encoder, m)  # loads with strict=True inside
        assert isinstance(vit, VisionTransformer)
        with torch.no_grad():
            torch.testing.assert_close(vit.forward_features(image), model.encoder.forward_features(image, m), rtol=1e-4, atol=1e-4)
            assert vit(image).shape == (2, 32)  # pooled cls token, no classifier
    missing, unexpected = VisionTransformer(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, num_classes=0).load_state_dict(
        to_timm_state_dict(model.encoder, "rgb"), strict=False)
    assert missing == [] and unexpected == []


def test_safetensors_checkpoint_round_trip_and_timm_files(tmp_path):
    torch.manual_seed(0)
    model = MSSDF(micro_config()).eval()
    save_pretrained(model, tmp_path)
    export_timm(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.safetensors", "timm_dsm.json", "timm_dsm.safetensors",
        "timm_ms.json", "timm_ms.safetensors", "timm_rgb.json", "timm_rgb.safetensors",
    ]  # fmt: skip
    again = load_pretrained(tmp_path).eval()
    assert again.cfg == model.cfg
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    vit = VisionTransformer(**json.loads((tmp_path / "timm_ms.json").read_text()))
    vit.load_state_dict(load_file(tmp_path / "timm_ms.safetensors"), strict=True)
    x = batch(b=1)["ms"]
    with torch.no_grad():
        torch.testing.assert_close(vit.eval().forward_features(x), model.encoder.forward_features(x, "ms"), rtol=1e-4, atol=1e-4)
