# SPDX-License-Identifier: Apache-2.0
"""Script a DINOv2 backbone and write it with its metadata (docs/FORMAT.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from . import FORMAT_VERSION, __version__
from .model import DinoV2
from .variants import DEFAULT_RESOLUTION, IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE, Variant
from .weights import LoadedWeights, build_model

METADATA_FILE = "dinov2/metadata.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def metadata(model: DinoV2, w: LoadedWeights, dtype: str) -> Dict[str, Any]:
    weights: Dict[str, Any] = {"source": w.source, "sha256": w.sha256}
    weights.update(w.extra)
    return variant_metadata(model, w.variant, dtype, weights)


def variant_metadata(
    model: DinoV2, v: Variant, dtype: str, weights: Dict[str, Any]
) -> Dict[str, Any]:
    """The metadata of `model` (a `v` with its own depth and position grid)."""
    return {
        "format": "dinov2-backbone",
        "format_version": FORMAT_VERSION,
        "exporter_version": __version__,
        "torch_version": torch.__version__,
        "variant": v.name,
        "embed_dim": v.embed_dim,
        "depth": model.depth,
        "num_heads": v.num_heads,
        "ffn": v.ffn,
        "ffn_hidden": v.ffn_hidden,
        "patch_size": PATCH_SIZE,
        "num_register_tokens": v.num_register_tokens,
        "pos_grid": [model.pos_grid, model.pos_grid],
        "interpolation": {
            "mode": "bicubic",
            "antialias": v.interpolate_antialias,
            "offset": v.interpolate_offset,
        },
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "default_resolution": DEFAULT_RESOLUTION,
        "dtype": dtype,
        "weights": weights,
    }


def script(model: DinoV2, dtype: str = "float32") -> torch.jit.ScriptModule:
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    model = model.to(DTYPES[dtype]).eval()
    with torch.no_grad():
        return torch.jit.script(model)


def export(w: LoadedWeights, output: Path, dtype: str = "float32") -> Dict[str, Any]:
    """Write the TorchScript file for `w`; returns its metadata."""
    model = build_model(w)
    meta = metadata(model, w, dtype)
    scripted = script(model, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    scripted.save(str(tmp), _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    tmp.replace(output)  # never leave a half-written file under the final name
    return meta


def read_metadata(path: Path) -> Dict[str, Any]:
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path}: not a dinov2 export (no {METADATA_FILE} inside)")
    return json.loads(extra[METADATA_FILE])


def check(path: Path, weights: Optional[LoadedWeights] = None, seed: int = 0) -> Dict[str, float]:
    """Compare an exported file with the eager model on random inputs; max abs error per output.

    Without `weights`, the eager model is rebuilt from the file's own parameters, which checks
    the scripted graph against this package's eager code.
    """
    meta = read_metadata(path)
    scripted = torch.jit.load(str(path), map_location="cpu")
    if weights is None:
        from .variants import get_variant

        variant = get_variant(meta["variant"])
        eager = DinoV2(variant, depth=meta["depth"], pos_grid=meta["pos_grid"][0])
        wanted = eager.state_dict().keys()  # a scripted module also lists non-persistent buffers
        eager.load_state_dict({k: v for k, v in scripted.state_dict().items() if k in wanted})
    else:
        eager = build_model(weights)
    eager = eager.to(DTYPES[meta["dtype"]]).eval()
    g = torch.Generator().manual_seed(seed)
    errors: Dict[str, float] = {}
    with torch.inference_mode():
        for h, wd in ((224, 224), (280, 462)):
            x = torch.randn(2, 3, h, wd, generator=g)
            for name, a, b in zip(
                ("cls", "registers", "patches", "prenorm"), scripted(x), eager(x)
            ):
                err = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
                errors[f"{name}@{h}x{wd}"] = err
    return errors


def timed_export(w: LoadedWeights, output: Path, dtype: str) -> tuple[Dict[str, Any], float]:
    t0 = time.perf_counter()
    meta = export(w, output, dtype)
    return meta, time.perf_counter() - t0
