# SPDX-License-Identifier: Apache-2.0
"""AOTInductor packages (.pt2): the backbone compiled ahead of time for one resolution.

A package holds machine code for one input size (H x W) and one device, with a dynamic batch
dimension up to `max_batch`, and the same metadata as a TorchScript export plus a `backend`
block (docs/FORMAT.md). The C++ `dinov2::Model` loads it like a TorchScript file; only
`extract_features` is compiled in (no intermediate layers, no attention maps).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .export import DTYPES, METADATA_FILE, metadata
from .variants import PATCH_SIZE
from .weights import LoadedWeights, build_model


def parse_resolution(text: str) -> Tuple[int, int]:
    """'518' or '280x462' (height x width) -> (h, w); both positive multiples of 14."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            h = w = int(parts[0])
        elif len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"resolution {text!r} is not N or HxW (e.g. 518 or 280x462)") from None
    for side in (h, w):
        if side < PATCH_SIZE or side % PATCH_SIZE:
            raise ValueError(
                f"resolution {text!r}: {side} is not a positive multiple of the patch size "
                f"{PATCH_SIZE}"
            )
    return h, w


def export_aot(
    w: LoadedWeights,
    output: Path,
    resolution: Tuple[int, int],
    max_batch: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
) -> Dict[str, Any]:
    """Compile the backbone for `resolution` and write an AOTInductor package to `output`."""
    if output.suffix != ".pt2":
        raise ValueError(f"{output}: an AOTInductor package must end in .pt2")
    if max_batch < 1:
        raise ValueError(f"max_batch is {max_batch}; it must be at least 1")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    h, wd = resolution
    model = build_model(w).to(device=device, dtype=DTYPES[dtype]).eval()
    meta = metadata(model, w, dtype)
    # The size is fixed, so the position embedding is too: compute it here with the exported
    # code path (the same numbers) and store it, instead of compiling the interpolation.
    with torch.no_grad():
        fixed = model.interpolate_pos_encoding(h // PATCH_SIZE, wd // PATCH_SIZE, DTYPES[dtype])
    model.register_buffer("pos_embed_fixed", fixed.clone(), persistent=False)
    model.interpolate_pos_encoding = lambda h0, w0, dt: model.pos_embed_fixed.to(dt)
    meta["backend"] = {
        "kind": "aotinductor",
        "resolution": [h, wd],
        "max_batch": max_batch,
        "device": device,
    }
    example = torch.zeros(min(2, max_batch), 3, h, wd, dtype=DTYPES[dtype], device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch) if max_batch > 1 else None
    shapes = {"x": {0: batch}} if batch is not None else None
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Compile into a temporary name in the same folder: never a half-written package.
    fd, tmp = tempfile.mkstemp(suffix=".pt2", prefix=output.name + ".", dir=output.parent)
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=tmp,
            inductor_configs={"aot_inductor.metadata": {METADATA_FILE: json.dumps(meta)}},
        )
        Path(tmp).replace(output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


def timed_export_aot(w: LoadedWeights, output: Path, **kwargs: Any) -> tuple[Dict[str, Any], float]:
    t0 = time.perf_counter()
    meta = export_aot(w, output, **kwargs)
    return meta, time.perf_counter() - t0


def read_aot_metadata(path: Path) -> Dict[str, Any]:
    from torch._inductor.package import load_package

    runner = load_package(str(path))
    text = runner.get_metadata().get(METADATA_FILE)
    if not text:
        raise ValueError(f"{path}: not a dinov2 AOTInductor package (no {METADATA_FILE} inside)")
    return json.loads(text)
