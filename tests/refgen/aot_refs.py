# SPDX-License-Identifier: Apache-2.0
"""Reference data for the AOTInductor tests in tests/unit/test_model.cpp (files `aot_`).

Compiles two small random-weight backbones with `dinov2-export --aot`'s code path, one with
registers and one without (whose position embedding uses the +0.1 offset), each for one
non-square size, and records what the exported TorchScript file of the same weights computes:
the C++ library must give the same features from either file. Batch 4 exceeds the packages'
max_batch of 3, so the C++ side must split it.

Idempotent like the other generators (a stamp of this script, the exporter and torch).

Usage: python tests/refgen/aot_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path
from typing import Dict

import torch

import dinov2_export
from dinov2_export.aot import export_aot
from dinov2_export.export import export
from dinov2_export.weights import load_weights

# name: (variant, depth, seed, (H, W))
MODELS = {
    "aot_s2reg": ("dinov2_vits14_reg", 2, 5, (56, 70)),
    "aot_s2": ("dinov2_vits14", 2, 6, (70, 42)),
}
MAX_BATCH = 3
BATCHES = (1, 4)


def stamp_digest() -> str:
    d = hashlib.sha256()
    d.update(Path(__file__).read_bytes())
    for f in sorted(Path(dinov2_export.__file__).parent.glob("*.py")):
        d.update(f.name.encode())
        d.update(f.read_bytes())
    d.update(torch.__version__.encode())
    return d.hexdigest()


def aot_refs(out: Path, name: str) -> None:
    variant, depth, seed, (h, w) = MODELS[name]
    weights = load_weights("random", variant, seed=seed, depth=depth)
    export(weights, out / f"{name}.pt")
    export_aot(weights, out / f"{name}.pt2", (h, w), max_batch=MAX_BATCH)
    scripted = torch.jit.load(str(out / f"{name}.pt"), map_location="cpu")
    g = torch.Generator().manual_seed(2000 + seed)
    refs: Dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for b in BATCHES:
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
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "aot_refs.stamp"
    digest = stamp_digest()
    wanted = [f"{n}{ext}" for n in MODELS for ext in (".pt", ".pt2", "_refs.pt")]
    if (
        not args.force
        and stamp.exists()
        and stamp.read_text().strip() == digest
        and all((out / f).exists() for f in wanted)
    ):
        print(f"aot_refs: up to date in {out}")
        return 0
    stamp.unlink(missing_ok=True)
    warnings.filterwarnings("ignore")
    for name in MODELS:
        t0 = time.perf_counter()
        aot_refs(out, name)
        print(f"aot_refs: {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    stamp.write_text(digest + "\n")
    print(f"aot_refs: wrote {len(wanted)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
