# SPDX-License-Identifier: Apache-2.0
"""All eight hub variants against transformers: S and B at full depth, L and g at their real
width and heads with fewer blocks (full depth with `-m full_depth`)."""

from __future__ import annotations

import pytest
import torch

from conftest import TOL, ErrorLog, export_and_load, hf_model, hf_outputs, max_err, random_weights
from dinov2_export.variants import VARIANTS, get_variant

REDUCED = {"dinov2_vitl14": 2, "dinov2_vitg14": 2}


def depth_for(name: str, full: bool) -> int:
    base = name.removesuffix("_reg")
    return get_variant(name).depth if full or base not in REDUCED else REDUCED[base]


def check_variant(name: str, depth: int, tmp_path) -> None:
    w = random_weights(name, depth=depth, seed=7)
    scripted = export_and_load(w, tmp_path / "m.pt")
    ref_model = hf_model(w, tmp_path / "hf")
    r = w.variant.num_register_tokens
    sizes = [(518, 518), (126, 182)] if r else [(518, 518)]
    g = torch.Generator().manual_seed(0)
    for h, wd in sizes:
        x = torch.randn(1, 3, h, wd, generator=g)
        ref = hf_outputs(ref_model, x, r)
        with torch.inference_mode():
            cls, regs, patches, prenorm = scripted(x)
        assert cls.shape == (1, w.variant.embed_dim)
        assert regs.shape == (1, r, w.variant.embed_dim)
        assert patches.shape == (1, (h // 14) * (wd // 14), w.variant.embed_dim)
        err = max(
            max_err(cls, ref["cls"]),
            max_err(regs, ref["registers"]),
            max_err(patches, ref["patches"]),
        )
        ErrorLog.add(f"variant {name} depth {depth} {h}x{wd}", err)
        assert err <= TOL


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_transformers(name, tmp_path):
    check_variant(name, depth_for(name, full=False), tmp_path)


@pytest.mark.full_depth
@pytest.mark.parametrize("name", [n for n in sorted(VARIANTS) if n.removesuffix("_reg") in REDUCED])
def test_large_variant_at_full_depth(name, tmp_path):
    check_variant(name, depth_for(name, full=True), tmp_path)


def test_giant_uses_swiglu_with_hidden_4096():
    v = get_variant("dinov2_vitg14")
    assert v.ffn == "swiglu" and v.ffn_hidden == 4096
    w = random_weights("dinov2_vitg14", depth=1)
    assert w.state_dict["blocks.0.mlp.w12.weight"].shape == (8192, 1536)
    assert w.state_dict["blocks.0.mlp.w3.weight"].shape == (1536, 4096)


@pytest.mark.parametrize(
    "name,keys",
    [
        ("dinov2_vits14", 175),
        ("dinov2_vitb14_reg", 176),
        ("dinov2_vitl14", 343),
        ("dinov2_vitg14_reg", 568),
    ],
)
def test_state_dict_has_the_official_key_count(name, keys):
    from dinov2_export.model import DinoV2

    assert len(DinoV2(get_variant(name)).state_dict()) == keys
