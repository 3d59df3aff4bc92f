# SPDX-License-Identifier: Apache-2.0
"""Every weight source gives the same exported model; the metadata describes it."""

from __future__ import annotations

import hashlib

import torch

from conftest import random_weights, write_hf_folder
from dinov2_export.export import export, read_metadata
from dinov2_export.weights import load_weights


def outputs(path, x):
    m = torch.jit.load(str(path))
    with torch.inference_mode():
        return m(x)


def test_official_pth_and_huggingface_give_identical_outputs(tmp_path):
    w = random_weights("dinov2_vits14_reg", depth=3, seed=21)
    pth = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(w.state_dict, pth)
    hf = write_hf_folder(w, tmp_path / "hf")

    # training-style checkpoint: teacher dict, "backbone." prefix, blocks in chunks of 2
    chunked = {}
    for k, v in w.state_dict.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{i}." + k.split(".", 2)[2]
        chunked["backbone." + k] = v
    chunked["dino_head.mlp.0.weight"] = torch.zeros(2, 2)
    training = tmp_path / "training.pth"
    torch.save({"teacher": chunked}, training)

    sources = {
        "official": str(pth),
        "hf_folder": str(hf),
        "hf_file": str(hf / "model.safetensors"),
        "training": str(training),
    }
    x = torch.randn(2, 3, 98, 140)
    results = {}
    for name, src in sources.items():
        loaded = load_weights(src, depth=3)
        assert loaded.variant.name == "dinov2_vits14_reg"  # inferred from shapes
        export(loaded, tmp_path / f"{name}.pt")
        results[name] = outputs(tmp_path / f"{name}.pt", x)
    for name, res in results.items():
        for a, b in zip(res, results["official"]):
            assert torch.equal(a, b), name


def test_metadata_describes_the_export(tmp_path):
    w = random_weights("dinov2_vitb14", depth=1, seed=2)
    pth = tmp_path / "b.pth"
    torch.save(w.state_dict, pth)
    export(load_weights(str(pth), "dinov2_vitb14", depth=1), tmp_path / "b.pt")
    meta = read_metadata(tmp_path / "b.pt")
    assert meta["format"] == "dinov2-backbone" and meta["format_version"] == 1
    assert (meta["variant"], meta["embed_dim"], meta["depth"], meta["num_heads"]) == (
        "dinov2_vitb14",
        768,
        1,
        12,
    )
    assert (meta["patch_size"], meta["num_register_tokens"], meta["pos_grid"]) == (14, 0, [37, 37])
    assert meta["interpolation"] == {"mode": "bicubic", "antialias": False, "offset": 0.1}
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["default_resolution"] == 518 and meta["dtype"] == "float32"
    assert meta["torch_version"] == torch.__version__
    assert meta["weights"]["source"] == "official"
    assert meta["weights"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()


def test_random_weights_are_seeded_and_every_parameter_matters(tmp_path):
    a = random_weights("dinov2_vits14", depth=2, seed=5).state_dict
    b = random_weights("dinov2_vits14", depth=2, seed=5).state_dict
    c = random_weights("dinov2_vits14", depth=2, seed=6).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cls_token"], c["cls_token"])
    # LayerScale is far from the 1e-5 of a fresh model, so the blocks change the output.
    assert a["blocks.0.ls1.gamma"].min() > 0.2


def test_bfloat16_export_is_close_to_float32(tmp_path):
    w = random_weights("dinov2_vits14_reg", depth=4, seed=8)
    export(w, tmp_path / "f32.pt")
    export(w, tmp_path / "bf16.pt", dtype="bfloat16")
    x = torch.randn(2, 3, 224, 224)
    f32 = outputs(tmp_path / "f32.pt", x)[0]
    bf16 = outputs(tmp_path / "bf16.pt", x)[0]
    assert bf16.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(f32, bf16.float(), dim=-1)
    assert cos.min().item() >= 0.99
    assert read_metadata(tmp_path / "bf16.pt")["dtype"] == "bfloat16"
