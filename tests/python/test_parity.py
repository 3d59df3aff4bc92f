# SPDX-License-Identifier: Apache-2.0
"""The exported file against independent implementations built from the same random weights.

References: transformers (in process), timm (reference venv), and the official repository's
code when DINOV2_OFFICIAL_SRC points at a checkout of it. Register models are compared at
several sizes; non-register models only at 518x518, since transformers and timm interpolate
their position embedding differently from the official model elsewhere (DINOV2.md 3.1).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import (
    TOL,
    ErrorLog,
    export_and_load,
    hf_model,
    hf_outputs,
    max_err,
    random_weights,
    timm_outputs,
)

REG_SIZES = [(224, 224), (518, 518), (280, 462), (630, 350)]
NONREG_SIZES = [(518, 518)]
DEPTH = 4  # enough blocks to exercise every layer type; full depth is covered in test_variants


def compare_all(scripted, x, ref, registers, depth, label):
    with torch.inference_mode():
        cls, regs, patches, prenorm = scripted(x)
        normed_p, normed_c = scripted.intermediate_layers(x, list(range(depth)), True)
        raw_p, _ = scripted.intermediate_layers(x, list(range(depth)), False)
    errs = {
        "cls": max_err(cls, ref["cls"]),
        "registers": max_err(regs, ref["registers"]),
        "patches": max_err(patches, ref["patches"]),
    }
    if "prenorm" in ref:
        errs["prenorm"] = max_err(prenorm, ref["prenorm"])
    for i in range(depth):
        errs[f"block{i}/patches"] = max_err(normed_p[i], ref[f"block{i}/patches"])
        errs[f"block{i}/cls"] = max_err(normed_c[i], ref[f"block{i}/cls"])
        if f"block{i}/raw_patches" in ref:
            errs[f"block{i}/raw"] = max_err(raw_p[i], ref[f"block{i}/raw_patches"])
    worst = max(errs.values())
    ErrorLog.add(label, worst)
    assert worst <= TOL, f"{label}: {errs}"
    # The outputs must not be trivially equal: a real model gives features of order 1.
    assert cls.abs().mean() > 0.1


@pytest.mark.parametrize("model", ["dinov2_vits14_reg", "dinov2_vits14"])
def test_matches_transformers(model, tmp_path):
    w = random_weights(model, depth=DEPTH, seed=3)
    scripted = export_and_load(w, tmp_path / "m.pt")
    ref_model = hf_model(w, tmp_path / "hf")
    sizes = REG_SIZES if w.variant.has_registers else NONREG_SIZES
    g = torch.Generator().manual_seed(0)
    for h, wd in sizes:
        x = torch.randn(2, 3, h, wd, generator=g)
        ref = hf_outputs(ref_model, x, w.variant.num_register_tokens)
        compare_all(
            scripted, x, ref, w.variant.num_register_tokens, DEPTH, f"transformers {model} {h}x{wd}"
        )


@pytest.mark.parametrize("model", ["dinov2_vits14_reg", "dinov2_vits14"])
def test_matches_timm(model, tmp_path):
    w = random_weights(model, depth=DEPTH, seed=4)
    scripted = export_and_load(w, tmp_path / "m.pt")
    sizes = REG_SIZES if w.variant.has_registers else NONREG_SIZES
    ref = timm_outputs(w, tmp_path, sizes)
    for h, wd in sizes:
        key = f"{h}x{wd}"
        sub = {k[len(key) + 1 :]: v for k, v in ref.items() if k.startswith(key + "/")}
        compare_all(
            scripted, sub["input"], sub, w.variant.num_register_tokens, DEPTH, f"timm {model} {key}"
        )


def official_model(w):
    src = os.environ.get("DINOV2_OFFICIAL_SRC")
    if not src:
        pytest.skip(
            "DINOV2_OFFICIAL_SRC is not set (path to a checkout of the official repository)"
        )
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, src)
    from functools import partial

    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    v = w.variant
    model = DinoVisionTransformer(
        img_size=518,
        patch_size=14,
        embed_dim=v.embed_dim,
        depth=w.depth,
        num_heads=v.num_heads,
        mlp_ratio=4,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        ffn_layer="swiglufused" if v.ffn == "swiglu" else "mlp",
        init_values=1.0,
        block_chunks=0,
        num_register_tokens=v.num_register_tokens,
        interpolate_antialias=v.interpolate_antialias,
        interpolate_offset=v.interpolate_offset,
    )
    model.load_state_dict(w.state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("model", ["dinov2_vits14_reg", "dinov2_vits14", "dinov2_vitg14"])
def test_matches_official_code_at_every_size(model, tmp_path):
    w = random_weights(model, depth=2, seed=5)
    ref_model = official_model(w)
    scripted = export_and_load(w, tmp_path / "m.pt")
    g = torch.Generator().manual_seed(0)
    r = w.variant.num_register_tokens
    for h, wd in REG_SIZES + [(126, 350), (14, 28)]:
        x = torch.randn(2, 3, h, wd, generator=g)
        with torch.inference_mode():
            o = ref_model.forward_features(x)
            inter = ref_model.get_intermediate_layers(
                x, n=[0, 1], return_class_token=True, norm=True
            )
        ref = {
            "cls": o["x_norm_clstoken"],
            "registers": o["x_norm_regtokens"],
            "patches": o["x_norm_patchtokens"],
            "prenorm": o["x_prenorm"],
        }
        for i, (p, c) in enumerate(inter):
            ref[f"block{i}/patches"], ref[f"block{i}/cls"] = p, c
        compare_all(scripted, x, ref, r, 2, f"official {model} {h}x{wd}")
