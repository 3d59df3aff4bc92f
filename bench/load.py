# SPDX-License-Identifier: Apache-2.0
"""Load time and memory of Model::load: weights (Hugging Face folder, official .pth) against the
dinov2-export file of the same weights, each in a fresh process, alternated, medians.

    .venv/bin/python bench/load.py [--models S,B,L] [--repeat 5] [--work DIR]

Writes random full-depth weights in the three formats with the exporter and transformers (once,
into --work), then runs `build/bench/dinov2_bench load` on each. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "refgen"))
VARIANTS = {"S": "dinov2_vits14", "B": "dinov2_vitb14", "L": "dinov2_vitl14", "g": "dinov2_vitg14"}


def prepare(work: Path, letter: str) -> Path:
    from dinov2_export.export import export
    from dinov2_export.variants import get_variant
    from dinov2_export.weights import load_weights, random_state_dict
    from weights_refs import official_pth, save_pretrained

    folder = work / letter
    if (folder / "export.pt").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    variant = get_variant(VARIANTS[letter])
    sd = random_state_dict(variant, variant.depth, 0)
    official_pth(variant, variant.depth, sd, folder / "official.pth")
    save_pretrained(variant, variant.depth, sd, folder / "hf")
    export(load_weights(str(folder / "official.pth")), folder / "export.pt")
    return folder


def load_once(tool: Path, path: Path) -> dict:
    out = subprocess.run(
        [str(tool), "load", "--model", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="S,B,L")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench-load")
    p.add_argument("--tool", type=Path, default=REPO / "build" / "bench" / "dinov2_bench")
    a = p.parse_args()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(
        "| model | source | size on disk (MB) | load s (median) | RSS after load (MB) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for letter in a.models.split(","):
        folder = prepare(a.work, letter)
        sources = {
            "dinov2-export .pt": folder / "export.pt",
            "HF folder (safetensors)": folder / "hf",
            "official .pth": folder / "official.pth",
        }
        runs: dict[str, list[dict]] = {k: [] for k in sources}
        for _ in range(a.repeat):  # alternated, so that drift hits every source alike
            for name, path in sources.items():
                runs[name].append(load_once(a.tool, path))
        for name, path in sources.items():
            files = [path] if path.is_file() else list(path.iterdir())
            size = sum(f.stat().st_size for f in files) / 1e6
            r = runs[name]
            med = {
                k: statistics.median(x[k] for x in r)
                for k in ("load_s", "rss_after_mb", "peak_rss_mb")
            }
            print(
                f"| {letter}/14 | {name} | {size:.0f} | {med['load_s']:.2f} | "
                f"{med['rss_after_mb']:.0f} | {med['peak_rss_mb']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
