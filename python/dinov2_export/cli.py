# SPDX-License-Identifier: Apache-2.0
"""`dinov2-export`: official or Hugging Face DINOv2 weights to a TorchScript file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .export import DTYPES, check, timed_export
from .variants import VARIANTS
from .weights import WeightsError, load_weights


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dinov2-export",
        description="Export a DINOv2 backbone to a TorchScript file with dynamic batch and "
        "resolution, or check an exported file (--check).",
    )
    p.add_argument(
        "--model", choices=sorted(VARIANTS), help="variant; inferred from the weights if omitted"
    )
    p.add_argument(
        "--weights",
        help="official .pth, Hugging Face model.safetensors or model folder, or 'random'",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="the file to write: TorchScript .pt, .pt2 with --aot, or an ONNX graph .onnx for "
        "the library's OpenVINO backend (float32)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--depth", type=int, help="block count of a reduced model (tests only)")
    p.add_argument(
        "--aot",
        metavar="RES",
        help="compile an AOTInductor package (.pt2) for one input size instead: N or HxW, e.g. "
        "518 or 280x462 (minutes; needs a C++ compiler)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="with --aot: the largest batch per call (the C++ library splits larger ones)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="with --aot: the device the package runs on (cuda needs a GPU here)",
    )
    p.add_argument("--check", type=Path, metavar="FILE", help="compare FILE with the eager model")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.check is not None:
            if not args.check.exists():
                raise WeightsError(f"{args.check} does not exist")
            errors = check(args.check)
            worst = max(errors.values())
            for name, err in errors.items():
                print(f"{name:>24}: max abs error {err:.3e}")
            print(f"max abs error {worst:.3e}")
            return 0 if worst <= 1e-4 else 1
        if args.weights is None or args.output is None:
            raise WeightsError("--weights and --output are required (or use --check FILE)")
        w = load_weights(args.weights, args.model, seed=args.seed, depth=args.depth)
        if w.source == "random":
            print(f"note: {w.variant.name} with RANDOM weights (seed {args.seed})", file=sys.stderr)
        if args.aot is not None:
            if args.output.suffix == ".onnx":
                raise ValueError(f"{args.output}: --aot writes a .pt2 package, not .onnx")
            from .aot import parse_resolution, timed_export_aot

            meta, seconds = timed_export_aot(
                w,
                args.output,
                resolution=parse_resolution(args.aot),
                max_batch=args.max_batch,
                dtype=args.dtype,
                device=args.device,
            )
        elif args.output.suffix == ".onnx":
            from .onnx_export import timed_export_onnx

            if args.dtype != "float32":
                raise ValueError(
                    f"{args.output}: ONNX graphs are exported in float32 (the OpenVINO backend "
                    f"runs float32); drop --dtype {args.dtype}"
                )
            meta, seconds = timed_export_onnx(w, args.output)
        else:
            if args.output.suffix == ".pt2":
                raise ValueError(f"{args.output}: .pt2 is for AOTInductor packages; add --aot RES")
            meta, seconds = timed_export(w, args.output, args.dtype)
        size = args.output.stat().st_size
        aot = meta.get("backend") if meta.get("backend", {}).get("kind") == "aotinductor" else None
        compiled = (
            f", AOTInductor {aot['resolution'][0]}x{aot['resolution'][1]} {aot['device']}, "
            f"batch <= {aot['max_batch']}"
            if aot
            else ""
        )
        print(
            f"wrote {args.output}: {meta['variant']} ({meta['depth']} blocks, {meta['dtype']}, "
            f"{w.source} weights{compiled}) {size / 1e6:.1f} MB in {seconds:.1f} s"
        )
        return 0
    except (WeightsError, ValueError, OSError) as e:
        print(f"dinov2-export: error: {e}", file=sys.stderr)
        return 2


# -- dinov2-export-head ----------------------------------------------------------------------


def head_parser() -> argparse.ArgumentParser:
    from .heads import DEPTH_RANGES, KINDS

    kinds = ", ".join(f"{k.name} ({'/'.join(k.datasets)})" for k in KINDS.values())
    p = argparse.ArgumentParser(
        prog="dinov2-export-head",
        description="Export an official DINOv2 linear head (or a seeded random one) to a "
        f"TorchScript head file for the dinov2 C++ library. Kinds and datasets: {kinds}.",
    )
    p.add_argument("--kind", required=True, choices=list(KINDS))
    p.add_argument(
        "--backbone",
        required=True,
        choices=sorted(VARIANTS),
        help="the backbone the head was trained on",
    )
    p.add_argument("--dataset", help="training set of the head; default: the kind's first")
    p.add_argument("--weights", required=True, help="official head .pth, or 'random'")
    p.add_argument("--output", required=True, type=Path, help="the head file to write")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    ranges = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in DEPTH_RANGES.items())
    p.add_argument("--min-depth", type=float, help=f"depth heads: first bin in metres ({ranges})")
    p.add_argument(
        "--max-depth",
        type=float,
        help="depth heads: last bin in metres "
        "(the official hub constructor uses 80 for every dataset)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def head_main(argv: Optional[List[str]] = None) -> int:
    from .heads import HeadError, export_head, load_head_weights

    args = head_parser().parse_args(argv)
    try:
        hw = load_head_weights(args.weights, args.kind, args.backbone, args.dataset, args.seed)
        if hw.source == "random":
            print(f"note: {args.kind} head with RANDOM weights (seed {args.seed})", file=sys.stderr)
        meta = export_head(hw, args.output, args.min_depth, args.max_depth)
        print(
            f"wrote {args.output}: {meta['head']} head ({meta['kind']}) for {meta['variant']} on "
            f"{meta['dataset']}, blocks {meta['blocks']}, {hw.source} weights"
        )
        return 0
    except (HeadError, ValueError, OSError) as e:
        print(f"dinov2-export-head: error: {e}", file=sys.stderr)
        return 2
