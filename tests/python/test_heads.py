# SPDX-License-Identifier: Apache-2.0
"""Exported heads against the official head maths (dinov2_export.heads.official_*).

The exported modules fold the segmentation BatchNorm into the convolution and apply the depth
head's 1x1 convolution before its upsampling; the official functions do neither, so agreement
checks those rewrites as well as the parameter layout written to the file.

Tolerances (float32): classifier and segmentation logits of order 1, max abs error 1e-5 (a few
hundred ulps of the reductions over (1+L)*D inputs); depth in metres, max relative error 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dinov2_export import heads as H
from dinov2_export.cli import head_main
from dinov2_export.model import DinoV2
from dinov2_export.variants import get_variant
from dinov2_export.weights import random_state_dict, sha256_file

LOGIT_TOL = 1e-5
DEPTH_RTOL = 1e-5
ALL = [
    ("linear", "imagenet"),
    ("linear4", "imagenet"),
    ("depth_linear", "nyu"),
    ("depth_linear4", "kitti"),
    ("seg_linear", "ade20k"),
    ("seg_linear", "voc2012"),
]


def export(tmp_path, kind, dataset, backbone="dinov2_vits14", weights="random", seed=3, **kw):
    hw = H.load_head_weights(weights, kind, backbone, dataset, seed)
    path = tmp_path / f"{kind}_{dataset}.pt"
    meta = H.export_head(hw, path, **kw)
    return hw, torch.jit.load(str(path), map_location="cpu"), meta, path


def random_features(layers, b=2, h=5, w=7, d=384, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    patches = [scale * torch.randn(b, h * w, d, generator=g) for _ in range(layers)]
    cls = [scale * torch.randn(b, d, generator=g) for _ in range(layers)]
    return patches, cls


def to_map(p, h, w):
    return p.transpose(1, 2).reshape(p.shape[0], p.shape[2], h, w)


def run_head(kind, module, sd, meta, patches, cls, h, w):
    """(exported output, official output) on the same backbone outputs."""
    with torch.inference_mode():
        if kind.startswith("linear"):
            return module(cls, patches[-1]), H.official_classifier(sd, cls, patches[-1])
        if kind.startswith("depth"):
            ref = H.official_depth(
                sd,
                [to_map(p, h, w) for p in patches],
                cls,
                meta["min_depth"],
                meta["max_depth"],
                (14 * h, 14 * w),
            )
            return module(patches, cls, h, w), ref[:, 0]
        return module(patches[-1], h, w), H.official_segmentation(sd, to_map(patches[-1], h, w))


def check_close(kind, out, ref):
    assert out.shape == ref.shape
    if kind.startswith("depth"):
        err = ((out - ref).abs() / ref.abs()).max().item()
        assert err <= DEPTH_RTOL, f"{kind}: max relative error {err:.2e}"
    else:
        err = (out - ref).abs().max().item()
        assert err <= LOGIT_TOL, f"{kind}: max abs error {err:.2e}"
        assert ref.abs().mean() > 0.1  # not trivially small
    return err


@pytest.mark.parametrize("kind,dataset", ALL)
def test_exported_head_matches_official_maths(kind, dataset, tmp_path):
    hw, module, meta, _ = export(tmp_path, kind, dataset)
    layers = H.KINDS[kind].layers
    # Depth heads read un-normed block outputs, which are larger than normed ones.
    patches, cls = random_features(layers, scale=4.0 if kind.startswith("depth") else 1.0)
    out, ref = run_head(kind, module, hw.state_dict, meta, patches, cls, 5, 7)
    check_close(kind, out, ref)
    if kind.startswith("depth"):
        assert out.min() >= meta["min_depth"] and out.max() <= meta["max_depth"]
        assert out.std() > 1e-3 * meta["max_depth"]  # the head does not collapse to a constant


def test_heads_on_real_backbone_outputs(tmp_path):
    """Full-depth ViT-S/14 with random weights, non-square input, the blocks each head reads."""
    v = get_variant("dinov2_vits14")
    model = DinoV2(v)
    model.load_state_dict(random_state_dict(v, v.depth, seed=1))
    model.eval()
    x = torch.randn(2, 3, 70, 98, generator=torch.Generator().manual_seed(2))
    h, w = 5, 7
    for kind, dataset in ALL:
        hw, module, meta, _ = export(tmp_path, kind, dataset)
        with torch.inference_mode():
            patches, cls = model.intermediate_layers(x, meta["blocks"], meta["norm"])
        out, ref = run_head(kind, module, hw.state_dict, meta, patches, cls, h, w)
        check_close(kind, out, ref)


def test_segmentation_labels_are_argmax_of_upsampled_logits(tmp_path):
    hw, module, _, _ = export(tmp_path, "seg_linear", "ade20k")
    patches, _ = random_features(1)
    with torch.inference_mode():
        logits = module(patches[0], 5, 7)
        labels = module.labels(logits, 70, 98)
    up = F.interpolate(logits, size=[70, 98], mode="bilinear", align_corners=False)
    assert labels.shape == (2, 70, 98) and labels.dtype == torch.int64
    assert torch.equal(labels, up.argmax(1))
    assert labels.unique().numel() > 5


def test_batch_norm_fold_is_not_a_no_op(tmp_path):
    hw, module, _, _ = export(tmp_path, "seg_linear", "voc2012")
    sd = hw.state_dict
    conv_only = F.linear(
        torch.ones(1, 384),
        sd["decode_head.conv_seg.weight"].flatten(1),
        sd["decode_head.conv_seg.bias"],
    )
    folded = F.linear(torch.ones(1, 384), module.weight, module.bias)
    assert (conv_only - folded).abs().max() > 0.1


def test_official_checkpoint_round_trip(tmp_path):
    """Official-format files (plain for classifiers, mmcv-wrapped for dense heads) load strictly
    and give the same head as the weights they were written from."""
    for kind, dataset in ALL:
        k, v = H.KINDS[kind], get_variant("dinov2_vits14")
        sd = H.random_head_state_dict(k, v, dataset, seed=11)
        path = tmp_path / f"official_{kind}_{dataset}.pth"
        if k.family == "linear_classifier":
            torch.save(sd, path)
        else:
            torch.save({"meta": {"iter": 40000, "CLASSES": ["a", "b"]}, "state_dict": sd}, path)
        hw, module, meta, _ = export(tmp_path, kind, dataset, weights=str(path))
        assert meta["weights"] == {"source": "official", "sha256": sha256_file(path)}
        for key, value in sd.items():
            assert torch.equal(hw.state_dict[key], value)
        patches, cls = random_features(k.layers, seed=5)
        out, ref = run_head(kind, module, sd, meta, patches, cls, 5, 7)
        check_close(kind, out, ref)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda sd: sd.pop("decode_head.conv_depth.bias"),
            "missing key 'decode_head.conv_depth.bias' (expected shape (256,))",
        ),
        (
            lambda sd: sd.__setitem__("decode_head.conv_depth.weight", torch.zeros(256, 768, 1, 1)),
            "key 'decode_head.conv_depth.weight' has shape (256, 768, 1, 1), "
            "expected (256, 3072, 1, 1)",
        ),
        (
            lambda sd: sd.__setitem__("decode_head.extra.weight", torch.zeros(3)),
            "unexpected key 'decode_head.extra.weight'",
        ),
    ],
)
def test_strict_loading_names_the_key(mutate, message, tmp_path):
    k, v = H.KINDS["depth_linear4"], get_variant("dinov2_vits14")
    sd = H.random_head_state_dict(k, v, "nyu")
    mutate(sd)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(H.HeadError) as e:
        H.load_head_weights(str(path), "depth_linear4", "dinov2_vits14", "nyu")
    assert message in str(e.value)


def test_strict_loading_checks_width_and_classes(tmp_path):
    path = tmp_path / "b.pth"
    vitb = get_variant("dinov2_vitb14")
    torch.save(H.random_head_state_dict(H.KINDS["linear"], vitb, "imagenet"), path)
    wrong_width = r"'weight' has shape \(1000, 1536\), expected \(1000, 768\)"
    with pytest.raises(H.HeadError, match=wrong_width):
        H.load_head_weights(str(path), "linear", "dinov2_vits14")
    seg = H.random_head_state_dict(H.KINDS["seg_linear"], get_variant("dinov2_vits14"), "voc2012")
    torch.save({"state_dict": seg}, path)
    wrong_classes = r"conv_seg.weight' has shape \(21, 384, 1, 1\), expected \(150"
    with pytest.raises(H.HeadError, match=wrong_classes):
        H.load_head_weights(str(path), "seg_linear", "dinov2_vits14", "ade20k")


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(H.HeadError, match="unknown head kind 'dpt'"):
        H.load_head_weights("random", "dpt", "dinov2_vits14")
    with pytest.raises(H.HeadError, match="dataset 'ade20k' has no depth_linear head"):
        H.load_head_weights("random", "depth_linear", "dinov2_vits14", "ade20k")
    with pytest.raises(H.HeadError, match="does not exist"):
        H.load_head_weights(str(tmp_path / "nope.pth"), "linear", "dinov2_vits14")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(H.HeadError, match="not a readable PyTorch checkpoint"):
        H.load_head_weights(str(tmp_path / "junk.pth"), "linear", "dinov2_vits14")
    hw = H.load_head_weights("random", "depth_linear", "dinov2_vits14")
    with pytest.raises(H.HeadError, match="depth range"):
        H.export_head(hw, tmp_path / "d.pt", min_depth=5.0, max_depth=1.0)


def test_head_json_describes_the_head(tmp_path):
    _, _, meta, path = export(tmp_path, "linear4", "imagenet", backbone="dinov2_vitb14_reg")
    assert H.read_head_metadata(path) == meta
    assert meta["format"] == "dinov2-head" and meta["format_version"] == 1
    assert meta["kind"] == "linear_classifier" and meta["n_last_blocks"] == 4
    assert meta["variant"] == "dinov2_vitb14_reg" and meta["embed_dim"] == 768
    assert meta["blocks"] == [-4, -3, -2, -1] and meta["norm"] is True
    names = meta["class_names"]
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"

    _, _, meta, _ = export(tmp_path, "seg_linear", "ade20k", backbone="dinov2_vitl14")
    assert meta["blocks"] == [23] and meta["num_classes"] == 150 and meta["norm"] is True
    assert meta["class_names"][:3] == ["wall", "building", "sky"]
    assert meta["palette"][0] == [120, 120, 120] and len(meta["palette"]) == 150
    _, _, meta, _ = export(tmp_path, "seg_linear", "voc2012")
    assert meta["class_names"][0] == "background" and meta["class_names"][15] == "person"
    assert meta["palette"][1] == [128, 0, 0] and len(meta["palette"]) == 21

    _, module, meta, _ = export(tmp_path, "depth_linear4", "nyu", backbone="dinov2_vitg14")
    assert meta["blocks"] == [9, 19, 29, 39] and meta["norm"] is False
    assert (meta["min_depth"], meta["max_depth"], meta["bins"]) == (0.001, 10.0, 256)
    assert torch.equal(module.bins, torch.linspace(0.001, 10.0, 256))
    _, _, meta, _ = export(tmp_path, "depth_linear", "kitti", backbone="dinov2_vitl14")
    assert meta["blocks"] == [23] and meta["max_depth"] == 80.0
    _, _, meta, _ = export(tmp_path, "depth_linear", "nyu", max_depth=80.0)
    assert meta["max_depth"] == 80.0


def test_random_heads_are_seeded(tmp_path):
    a = H.load_head_weights("random", "linear", "dinov2_vits14", seed=4).state_dict
    b = H.load_head_weights("random", "linear", "dinov2_vits14", seed=4).state_dict
    c = H.load_head_weights("random", "linear", "dinov2_vits14", seed=5).state_dict
    assert torch.equal(a["weight"], b["weight"]) and not torch.equal(a["weight"], c["weight"])


def test_cli_exports_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "head.pt"
    rc = head_main(
        [
            "--kind",
            "depth_linear4",
            "--backbone",
            "dinov2_vits14",
            "--dataset",
            "kitti",
            "--weights",
            "random",
            "--seed",
            "2",
            "--output",
            str(out),
        ]
    )
    assert rc == 0 and out.exists()
    meta = H.read_head_metadata(out)
    assert meta["weights"]["seed"] == 2 and meta["dataset"] == "kitti"
    assert json.loads(json.dumps(meta)) == meta
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1000, 768)}, bad)
    rc = head_main(
        [
            "--kind",
            "linear",
            "--backbone",
            "dinov2_vits14",
            "--weights",
            str(bad),
            "--output",
            str(tmp_path / "x.pt"),
        ]
    )
    assert rc == 2
    assert "missing key 'bias' (expected shape (1000,))" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
