# SPDX-License-Identifier: Apache-2.0
"""Reference data for the OpenVINO backend tests in tests/unit/test_model.cpp (files `onnx_`).

Exports two small random-weight backbones as ONNX graphs with `dinov2-export`'s code path, one
with registers (antialiased, size-based position interpolation) and one without (the +0.1
offset), and records what the exported TorchScript file of the same weights computes at square,
non-square and the trained 518 x 518 sizes: the C++ library must give the same features from
either file. `onnx_s2_external.onnx` is the register-free graph again with its weights in a
separate `.data` file, the layout of graphs over protobuf's 2 GB (ViT-g/14).

Without the onnx package this writes nothing and says so; the C++ tests then skip where the
library was built without OpenVINO, and fail where it was built with it.

Idempotent like the other generators (a stamp of this script, the exporter and torch).

Usage: python tests/refgen/onnx_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import dinov2_export
import torch
from dinov2_export.export import export
from dinov2_export.weights import load_weights

# name: (variant, depth, seed)
MODELS = {
    "onnx_s2reg": ("dinov2_vits14_reg", 2, 7),
    "onnx_s2": ("dinov2_vits14", 2, 8),
}
# (H, W, batch): non-square both ways, the trained grid (no interpolation), a small square
SIZES = ((126, 350, 3), (518, 518, 1), (224, 224, 2), (70, 42, 1))


def stamp_digest() -> str:
    d = hashlib.sha256()
    d.update(Path(__file__).read_bytes())
    for f in sorted(Path(dinov2_export.__file__).parent.glob("*.py")):
        d.update(f.name.encode())
        d.update(f.read_bytes())
    d.update(torch.__version__.encode())
    return d.hexdigest()


def onnx_refs(out: Path, name: str) -> None:
    from dinov2_export.onnx_export import export_onnx

    variant, depth, seed = MODELS[name]
    weights = load_weights("random", variant, seed=seed, depth=depth)
    export(weights, out / f"{name}.pt")
    export_onnx(weights, out / f"{name}.onnx")
    if name == "onnx_s2":
        export_onnx(weights, out / "onnx_s2_external.onnx", external_data_above=0)
    scripted = torch.jit.load(str(out / f"{name}.pt"), map_location="cpu")
    g = torch.Generator().manual_seed(3000 + seed)
    refs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for h, w, b in SIZES:
            x = torch.randn(b, 3, h, w, generator=g)
            cls, regs, patches, prenorm = scripted(x)
            k = f"{h}x{w}_b{b}"
            refs.update(
                {
                    f"x_{k}": x,
                    f"cls_{k}": cls,
                    f"registers_{k}": regs,
                    f"patches_{k}": patches,
                    f"prenorm_{k}": prenorm,
                }
            )
    torch.save({k: v.contiguous() for k, v in refs.items()}, out / f"{name}_refs.pt")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="test data folder")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = p.parse_args()
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("onnx_refs: the onnx package is not installed; no ONNX test data written")
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "onnx_refs.stamp"
    digest = stamp_digest()
    wanted = [f"{n}{ext}" for n in MODELS for ext in (".pt", ".onnx", "_refs.pt")]
    wanted += ["onnx_s2_external.onnx", "onnx_s2_external.onnx.data"]
    if (
        not args.force
        and stamp.exists()
        and stamp.read_text().strip() == digest
        and all((out / f).exists() for f in wanted)
    ):
        print(f"onnx_refs: up to date in {out}")
        return 0
    stamp.unlink(missing_ok=True)
    warnings.filterwarnings("ignore")
    for name in MODELS:
        t0 = time.perf_counter()
        onnx_refs(out, name)
        print(f"onnx_refs: {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    stamp.write_text(digest + "\n")
    print(f"onnx_refs: wrote {len(wanted)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
