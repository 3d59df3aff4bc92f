# SPDX-License-Identifier: Apache-2.0
"""Weight sources: official `.pth`, Hugging Face checkpoints and seeded random weights.

Every source is turned into a state dict with the official key names, then checked strictly
against the model built for the variant: a missing, unexpected or mis-shaped key is an error
that names the key and the expected shape.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .model import DinoV2
from .variants import Variant, get_variant, variant_for

StateDict = Dict[str, Tensor]


class WeightsError(ValueError):
    """A weight file that cannot be used, with the reason in the message."""


@dataclass
class LoadedWeights:
    state_dict: StateDict
    variant: Variant
    depth: int
    pos_grid: int
    source: str  # "official" | "huggingface" | "random"
    sha256: str
    extra: Dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_state_dict(sd: StateDict) -> str:
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in sorted(sd.items())}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


# -- official checkpoints ------------------------------------------------------------------

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")


def official_from_raw(raw: Dict[str, Any]) -> StateDict:
    """Normalise an official checkpoint: unwrap training dicts, flatten block chunks."""
    for wrapper in ("teacher", "model", "state_dict"):
        if wrapper in raw and isinstance(raw[wrapper], dict) and "cls_token" not in raw:
            raw = raw[wrapper]
    sd: StateDict = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise WeightsError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        if key.startswith("backbone."):
            key = key[len("backbone.") :]
        elif key.startswith(("dino_head.", "ibot_head.")):
            continue  # training heads of a full checkpoint, not part of the backbone
        m = _CHUNKED.match(key)
        if m:
            # Training checkpoints of L and g group blocks in chunks: blocks.{chunk}.{i}.*,
            # where i is already the global block index.
            key = f"blocks.{m.group(2)}.{m.group(3)}"
        sd[key] = value
    return sd


def load_official(path: Path) -> StateDict:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a state dict, found a {type(raw).__name__}")
    return official_from_raw(raw)


# -- Hugging Face checkpoints --------------------------------------------------------------

_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")
_HF_RENAME = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.w12.weight",
    "mlp.weights_in.bias": "mlp.w12.bias",
    "mlp.weights_out.weight": "mlp.w3.weight",
    "mlp.weights_out.bias": "mlp.w3.bias",
    # transformers >= 5 names in memory (its saved files keep the names above)
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "mlp.down_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.bias": "mlp.w3.bias",
}
# Pieces that are concatenated along the output dimension, in order.
_HF_SPLIT = {
    "qkv": (
        ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ),
    "w12": (("mlp.gate_proj", "mlp.up_proj"),),
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def official_from_hf(hf: StateDict) -> StateDict:
    """Rename Hugging Face Dinov2Model / Dinov2WithRegistersModel keys to official ones."""
    sd: StateDict = {}
    pieces: Dict[tuple, Dict[str, Tensor]] = {}
    for key, value in hf.items():
        for prefix in ("dinov2.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith("classifier."):
            continue  # the image-classification head of Dinov2ForImageClassification
        if key in _HF_TOP:
            sd[_HF_TOP[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            raise WeightsError(f"unexpected key {key!r} in the Hugging Face checkpoint")
        i, rest = int(m.group(1)), m.group(2)
        if rest in _HF_RENAME:
            sd[f"blocks.{i}.{_HF_RENAME[rest]}"] = value
            continue
        piece, _, kind = rest.rpartition(".")
        if kind in ("weight", "bias") and any(
            piece in names for g in _HF_SPLIT.values() for names in g
        ):
            pieces.setdefault((i, kind), {})[piece] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in the Hugging Face checkpoint")
    for (i, kind), found in sorted(pieces.items()):
        for target, groups in _HF_SPLIT.items():
            for names in groups:
                if not any(n in found for n in names):
                    continue
                missing = [n for n in names if n not in found]
                if missing:
                    raise WeightsError(
                        f"missing key 'encoder.layer.{i}.{missing[0]}.{kind}' "
                        "in the Hugging Face checkpoint"
                    )
                prefix = "attn" if target == "qkv" else "mlp"
                sd[f"blocks.{i}.{prefix}.{target}.{kind}"] = torch.cat([found[n] for n in names])
    return sd


def load_huggingface(path: Path) -> StateDict:
    from safetensors.torch import load_file

    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise WeightsError(f"{path}: no model.safetensors or pytorch_model.bin in the folder")
        path = found
    try:
        if path.suffix == ".safetensors":
            hf = load_file(str(path))
        else:
            hf = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: not a readable checkpoint ({e})") from e
    return official_from_hf(hf)


def hf_config_checks(folder: Path) -> Dict[str, Any]:
    """Read config.json of a Hugging Face model folder and refuse what we cannot reproduce."""
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        return {}
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("patch_size", 14) != 14:
        raise WeightsError(f"{cfg_path}: patch_size {cfg['patch_size']} is not 14")
    eps = cfg.get("layer_norm_eps", 1e-6)
    if abs(eps - 1e-6) > 1e-12:
        raise WeightsError(f"{cfg_path}: layer_norm_eps {eps} is not 1e-6")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise WeightsError(f"{cfg_path}: hidden_act {act!r} is not 'gelu'")
    return cfg


# -- random weights ------------------------------------------------------------------------


def random_state_dict(variant: Variant, depth: int, seed: int, pos_grid: int = 37) -> StateDict:
    """Seeded weights in which every parameter visibly changes the output.

    LayerScale is drawn around 0.5 rather than the 1e-5 of a fresh model (which would make the
    blocks almost invisible in parity tests), norms around 1, and the position embedding large
    enough that its interpolation matters.
    """
    g = torch.Generator().manual_seed(seed)
    model = DinoV2(variant, depth=depth, pos_grid=pos_grid)
    sd: StateDict = {}
    for name, p in model.state_dict().items():
        shape = p.shape

        def randn(*s: int) -> Tensor:
            return torch.randn(*s, generator=g)

        if name.endswith("gamma"):
            t = 0.3 + 0.4 * torch.rand(shape, generator=g)
        elif re.search(r"norm\d?\.weight$", name):
            t = 1.0 + 0.2 * randn(*shape)
        elif name.endswith("bias"):
            t = 0.05 * randn(*shape)
        elif name == "pos_embed":
            t = 0.5 * randn(*shape)
        elif name in ("cls_token", "register_tokens", "mask_token"):
            t = randn(*shape)
        else:
            fan_in = math.prod(shape[1:])
            t = randn(*shape) / math.sqrt(fan_in)
        sd[name] = t.contiguous()
    return sd


# -- shapes and strict checks --------------------------------------------------------------


def infer_architecture(sd: StateDict) -> tuple[Variant, int, int]:
    """(variant, depth, pos_grid) from the shapes in an official-named state dict."""
    if "cls_token" not in sd:
        raise WeightsError(
            "missing key 'cls_token' (expected shape (1, 1, D)); not a DINOv2 backbone"
        )
    dim = sd["cls_token"].shape[-1]
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    variant = variant_for(dim, regs)
    if "blocks.0.mlp.w12.weight" in sd and variant.ffn != "swiglu":
        raise WeightsError(f"width {dim} with a SwiGLU FFN matches no DINOv2 variant")
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r"^blocks\.(\d+)\.", k)] if m}
    depth = max(blocks) + 1 if blocks else 0
    if "pos_embed" not in sd:
        raise WeightsError(f"missing key 'pos_embed' (expected shape (1, 1370, {dim}))")
    n = sd["pos_embed"].shape[1] - 1
    grid = int(round(math.sqrt(n)))
    if grid * grid != n:
        raise WeightsError(f"pos_embed holds {n} patch positions, which is not a square grid")
    return variant, depth, grid


def check_strict(model: DinoV2, sd: StateDict) -> None:
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            raise WeightsError(f"missing key {key!r} (expected shape {tuple(ref.shape)})")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise WeightsError(
                f"key {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(ref.shape)}"
            )
    for key in sd:
        if key not in expected:
            raise WeightsError(f"unexpected key {key!r} for this model")


def load_weights(
    weights: str, model: Optional[str] = None, seed: int = 0, depth: Optional[int] = None
) -> LoadedWeights:
    """Resolve `--weights` (a path or 'random') and `--model` into checked weights.

    `depth` overrides the variant's block count; it exists for reduced test models and must
    agree with the weights when both are given.
    """
    if weights == "random":
        if model is None:
            raise WeightsError("--model is required with --weights random")
        variant = get_variant(model)
        d = variant.depth if depth is None else depth
        sd = random_state_dict(variant, d, seed)
        return LoadedWeights(sd, variant, d, 37, "random", sha256_state_dict(sd), {"seed": seed})

    path = Path(weights)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if path.is_dir() or path.suffix == ".safetensors":
        if path.is_dir():
            hf_config_checks(path)
        sd, source = load_huggingface(path), "huggingface"
        digest_path = path / "model.safetensors" if path.is_dir() else path
        if not digest_path.exists():
            digest_path = path / "pytorch_model.bin"
    else:
        sd, source, digest_path = load_official(path), "official", path

    variant, found_depth, grid = infer_architecture(sd)
    if model is not None:
        wanted = get_variant(model)
        if wanted != variant:
            raise WeightsError(
                f"--model {model} contradicts the weights, which hold a {variant.name} "
                f"(width {variant.embed_dim}, {variant.num_register_tokens} registers)"
            )
    d = variant.depth if depth is None else depth
    if found_depth != d:
        hint = "" if depth is not None else " (pass --depth for a reduced model)"
        raise WeightsError(
            f"the weights hold {found_depth} blocks but {variant.name} has {d}{hint}"
        )
    check_strict(DinoV2(variant, depth=d, pos_grid=grid), sd)
    return LoadedWeights(sd, variant, d, grid, source, sha256_file(digest_path))


def build_model(w: LoadedWeights) -> DinoV2:
    model = DinoV2(w.variant, depth=w.depth, pos_grid=w.pos_grid)
    check_strict(model, w.state_dict)
    model.load_state_dict(w.state_dict, strict=True)
    return model.eval()


def to_huggingface(sd: StateDict) -> StateDict:
    """Official names to Hugging Face names (used to write test checkpoints)."""
    inv_top = {v: k for k, v in _HF_TOP.items()}
    inv_layer: Dict[str, str] = {}
    for k, v in _HF_RENAME.items():
        inv_layer.setdefault(v, k)  # the first spelling is the one saved files use
    out: StateDict = {}
    for key, value in sd.items():
        if key in inv_top:
            out[inv_top[key]] = value
            continue
        m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
        assert m, key
        i, rest = m.group(1), m.group(2)
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"encoder.layer.{i}.attention.attention.{name}.{kind}"] = part.contiguous()
        else:
            out[f"encoder.layer.{i}.{inv_layer[rest]}"] = value
    return out
