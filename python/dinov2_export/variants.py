# SPDX-License-Identifier: Apache-2.0
"""The eight official DINOv2 backbones and the facts that distinguish them."""

from __future__ import annotations

from dataclasses import dataclass

#: ImageNet normalisation used by every DINOv2 recipe (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14
DEFAULT_RESOLUTION = 518


@dataclass(frozen=True)
class Variant:
    """Architecture of one hub model; `depth` is the official block count."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" or "swiglu"
    num_register_tokens: int

    @property
    def ffn_hidden(self) -> int:
        hidden = 4 * self.embed_dim
        if self.ffn == "swiglu":
            # Rounded as the official SwiGLU layer does: 2/3 of 4*D, up to a multiple of 8.
            return (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @property
    def has_registers(self) -> bool:
        return self.num_register_tokens > 0

    @property
    def interpolate_antialias(self) -> bool:
        # Register models were released with antialiased, size-based interpolation.
        return self.has_registers

    @property
    def interpolate_offset(self) -> float:
        # Non-register models keep the historical +0.1 on the scale factor.
        return 0.0 if self.has_registers else 0.1


_BASE = {
    "dinov2_vits14": (384, 12, 6, "mlp"),
    "dinov2_vitb14": (768, 12, 12, "mlp"),
    "dinov2_vitl14": (1024, 24, 16, "mlp"),
    "dinov2_vitg14": (1536, 40, 24, "swiglu"),
}

VARIANTS: dict[str, Variant] = {}
for _name, (_dim, _depth, _heads, _ffn) in _BASE.items():
    VARIANTS[_name] = Variant(_name, _dim, _depth, _heads, _ffn, 0)
    VARIANTS[_name + "_reg"] = Variant(_name + "_reg", _dim, _depth, _heads, _ffn, 4)


def get_variant(name: str) -> Variant:
    """Return the variant called `name`, or raise ValueError listing the valid names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; expected one of {', '.join(sorted(VARIANTS))}"
        ) from None


def variant_for(embed_dim: int, num_register_tokens: int) -> Variant:
    """Infer the variant from the width and register count found in a checkpoint."""
    for v in VARIANTS.values():
        if v.embed_dim == embed_dim and v.num_register_tokens == num_register_tokens:
            return v
    raise ValueError(
        f"no DINOv2 variant has width {embed_dim} with {num_register_tokens} register tokens; "
        "widths are 384 (S), 768 (B), 1024 (L), 1536 (g) with 0 or 4 registers"
    )
