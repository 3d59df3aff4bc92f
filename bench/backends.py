# SPDX-License-Identifier: Apache-2.0
"""The library's backends against the runtimes people pick instead, per ISA, in one run.

For each float32 row (ViT-S/14 and B/14 at 224 and 518, batch 1 and 8) and each ISA run (the
machine as it is, then limited to AVX2 under bench/run.py's AVX2_ENV): Python eager
(bench/reference.py), the library on the TorchScript file (.pt, its default kernel plan), the
library's OpenVINO backend on the ONNX export (.onnx) of the same weights, and the peers of
bench/peers.py (ONNX Runtime in the native run only: its kernels have no ISA limit). Same
random weights, input and threads; each measurement in its own process. Prints the table and
appends it, with the machine and the command, to docs/BENCHMARKS.md.

This is the part of `bench/run.sh` that decides issue-level speed claims, without the lever
columns, the dtype table and the end-to-end rows (about 25 minutes on 2 cores instead of 60).

    .venv/bin/python bench/backends.py [--build build] [--threads N] [--quick] [--no-record]

It needs the build and the peer runtimes that `bench/run.sh` sets up (run that once first, or
`.venv/bin/pip install onnxruntime==1.32.0 openvino==2026.4.1 onnx==1.23.2`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

from run import (
    AVX2_ENV,
    AVX2_PEERS,
    PEER_RUNTIMES,
    PEERS,
    PY,
    REFERENCE,
    ROOT,
    export,
    export_onnx,
    fmt,
    library_cpu,
    machine,
    run_json,
    table_head,
)

ISAS = {"native": ({}, PEER_RUNTIMES), "AVX2-limited": (AVX2_ENV, AVX2_PEERS)}


def measure(bench_bin: Path, work: Path, variant: str, size: int, batch: int, a) -> list[dict]:
    """One row per ISA run for variant x size x batch."""
    iters = 2 if a.quick else {(224, 1): 20, (224, 8): 8, (518, 1): 8}.get((size, batch), 3)
    pt, onnx = export(variant, work), export_onnx(variant, work)
    t = str(a.threads)
    timing = ["--size", str(size), "--batch", str(batch), "--threads", t]
    timing += ["--iters", str(iters), "--warmup", "2"]
    shape = ["--model", str(pt), "--size", str(size), "--batch", str(batch)]
    shape += ["--work", str(work), "--threads", t]
    run_json([PY, str(PEERS), "prepare", *shape])
    rows = []
    for isa, (env, peers) in ISAS.items():
        if a.isa == "native" and isa != "native":
            continue
        py = run_json([PY, str(REFERENCE), "model", "--model", str(pt), *timing], env)
        ts = run_json([str(bench_bin), "model", "--model", str(pt), *timing], env)
        ov = run_json([str(bench_bin), "model", "--model", str(onnx), *timing], env)
        got = {
            r: run_json([PY, str(PEERS), "run", "--runtime", r, *shape, *timing[6:]], env)
            for r in peers
        }
        fastest = max([py["images_per_s"], *(v["images_per_s"] for v in got.values())])
        row = {
            "isa": isa,
            "what": f"{variant.removeprefix('dinov2_vit')[0].upper()}/14 {size} b{batch}",
            "python": py["images_per_s"],
            "library": ts["images_per_s"],
            "openvino_backend": ov["images_per_s"],
            "peers": {r: v["images_per_s"] for r, v in got.items()},
            "fastest_other": fastest,
            "rss": (ts["peak_rss_mb"], ov["peak_rss_mb"]),
            # The two backends of the library compute the same features (CLS checksums).
            "same": abs(ov["checksum"] - ts["checksum"]) <= 1e-3 * max(1.0, abs(ts["checksum"])),
            "plans": (ts.get("fusion", ""), ov.get("fusion", "")),
        }
        rows.append(row)
        print(
            f"{isa} {row['what']}: python {fmt(row['python'])}, library {fmt(row['library'])}, "
            f"OpenVINO backend {fmt(row['openvino_backend'])}, "
            + ", ".join(f"{PEER_RUNTIMES[r]} {fmt(v)}" for r, v in row["peers"].items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def render(rows: list[dict]) -> str:
    names = list(PEER_RUNTIMES.values())
    header = ["ISA", "row", "Python eager", "library (.pt)", "library, OpenVINO backend (.onnx)"]
    header += [*names, "library / fastest other", "OpenVINO backend / fastest other"]
    header += ["peak RSS .pt / .onnx (MB)", "same CLS"]
    lines = table_head(
        "float32 images/s (median); fastest other = the fastest of Python eager and the peers "
        "measured in that ISA run (ONNX Runtime in the native run only).",
        header,
    )
    for r in rows:
        peers = [fmt(r["peers"].get(k)) for k in PEER_RUNTIMES]
        lines.append(
            f"| {r['isa']} | {r['what']} | {fmt(r['python'])} | {fmt(r['library'])} | "
            f"{fmt(r['openvino_backend'])} | "
            + " | ".join(peers)
            + f" | {r['library'] / r['fastest_other']:.2f}x | "
            f"{r['openvino_backend'] / r['fastest_other']:.2f}x | "
            f"{r['rss'][0]:.0f} / {r['rss'][1]:.0f} | {'yes' if r['same'] else 'NO'} |"
        )
    plans = sorted({(r["isa"], *r["plans"]) for r in rows})
    lines += [
        "",
        *(f"- {isa}: library plan: {ts}; OpenVINO backend: {ov}" for isa, ts, ov in plans),
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="S/224 batch 1 only, 2 timed runs")
    p.add_argument("--isa", choices=["both", "native"], default="both")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    a = p.parse_args()
    bench_bin = a.build / "bench" / "dinov2_bench"
    work = a.build / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    variants = ["dinov2_vits14"] if a.quick else ["dinov2_vits14", "dinov2_vitb14"]
    cells = [(224, 1)] if a.quick else [(224, 1), (224, 8), (518, 1), (518, 8)]
    rows = []
    for variant in variants:
        for size, batch in cells:
            rows += measure(bench_bin, work, variant, size, batch, a)
    rows.sort(key=lambda r: r["isa"] != "native")
    table = render(rows)
    print(table)
    if not a.no_record:
        command = "bench/backends.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cpu = library_cpu(a.build / "bin" / "dinov2")
        with (ROOT / "docs" / "BENCHMARKS.md").open("a") as f:
            f.write(
                f"\n## {stamp}, backends (bench/backends.py)\n\nMachine: {machine()}\n\n"
                f"CPU as the library sees it: {cpu}\n\nCommand: `{command.strip()}`\n\n{table}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
