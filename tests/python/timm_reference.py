# SPDX-License-Identifier: Apache-2.0
"""Compute timm's DINOv2 outputs for an official-format checkpoint (run in the reference venv).

timm needs torchvision, which does not import beside the CPU torch of the main venv, so the
tests run this script with the interpreter of `.venv-ref` (scripts/setup.sh --reference) and
compare what it writes.

usage: timm_reference.py CHECKPOINT.pth VARIANT DEPTH OUT.pt HxW [HxW ...]
"""

import sys

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

TIMM_NAMES = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}


def main() -> None:
    ckpt, variant, depth, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sizes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[5:]]
    base = variant.removesuffix("_reg")
    name = (
        TIMM_NAMES[base].replace("_dinov2", "_reg4_dinov2")
        if variant.endswith("_reg")
        else TIMM_NAMES[base]
    )
    model = timm.create_model(
        name, pretrained=False, img_size=518, dynamic_img_size=True, depth=depth, num_classes=0
    ).eval()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    prefix = model.num_prefix_tokens
    g = torch.Generator().manual_seed(1234)
    results = {}
    with torch.inference_mode():
        for h, w in sizes:
            x = torch.randn(2, 3, h, w, generator=g)
            tokens = model.forward_features(x)
            key = f"{h}x{w}"
            results[f"{key}/input"] = x
            results[f"{key}/cls"] = tokens[:, 0]
            results[f"{key}/registers"] = tokens[:, 1:prefix]
            results[f"{key}/patches"] = tokens[:, prefix:]
            inter = model.forward_intermediates(
                x,
                indices=list(range(depth)),
                norm=True,
                output_fmt="NLC",
                return_prefix_tokens=True,
                intermediates_only=True,
            )
            for i, (patches, pre) in enumerate(inter):
                results[f"{key}/block{i}/patches"] = patches
                results[f"{key}/block{i}/cls"] = pre[:, 0]
    torch.save(results, out)


if __name__ == "__main__":
    main()
