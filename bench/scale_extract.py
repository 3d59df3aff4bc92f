# SPDX-License-Identifier: Apache-2.0
"""Extraction at scale on this machine: the Ray runner against plain `dinov2 extract` processes,
for docs/SCALE.md.

    .venv/bin/python bench/scale_extract.py [--shards 16] [--per-shard 64] [--work DIR]

Writes `--shards` WebDataset shards of `--per-shard` JPEGs (random content, 320x240 to 640x480)
and a full-depth ViT-S/14 with random weights, then times, on the same shards, recipe eval224,
batch 8, one thread per process:

  direct, 1 process   `dinov2 extract` over every shard, one output per shard, one after the
                      other (the Ray runner's tasks, without Ray)
  direct, 2 processes the shards split in two halves, one process per core at once
  ray, 1 worker       scripts/distributed_extract.py --workers 1
  ray, 2 workers      scripts/distributed_extract.py --workers 2

Each Ray run starts its own local cluster (its start-up is in the wall clock, and reported
apart); outputs are removed between runs. Prints a Markdown table and a JSON line per run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "build" / "bin" / "dinov2"
EXTRA = ["--recipe", "eval224", "--batch", "8", "--no-patches"]


def make_shards(folder: Path, shards: int, per_shard: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        paths.append(path)
        if path.exists():
            continue
        with tarfile.open(path, "w") as tar:
            for k in range(per_shard):
                w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
                y, x = np.mgrid[0:h, 0:w]
                base = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1)
                pixels = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255)
                out = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)
                data = out.getvalue()
                info = tarfile.TarInfo(f"{s:05d}{k:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return paths


def model(work: Path) -> Path:
    from dinov2_export.export import export
    from dinov2_export.weights import load_weights

    path = work / "vits14.pt"
    if not path.exists():
        export(load_weights("random", "dinov2_vits14", seed=0), path)
    return path


def direct(m: Path, shards: list[Path], out: Path, processes: int) -> float:
    """One `dinov2 extract` per shard, `processes` chains of them at once."""
    chains = [shards[i::processes] for i in range(processes)]
    start = time.monotonic()
    procs = []
    for chain in chains:
        cmd = " && ".join(
            f"{{ {TOOL} extract -m {m} -o {out}/{s.stem}.safetensors --threads 1 "
            + " ".join(EXTRA)
            + f" {s} 2>/dev/null || [ $? = 3 ]; }}"
            for s in chain
        )
        procs.append(subprocess.Popen(["bash", "-c", cmd]))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("scale_extract: a direct run failed")
    return time.monotonic() - start


def ray(m: Path, shards: list[Path], out: Path, workers: int) -> tuple[float, str]:
    cmd = [sys.executable, str(REPO / "scripts" / "distributed_extract.py"), "--engine", "ray"]
    cmd += ["--inputs", f"{shards[0].parent}/*.tar", "--model", str(m), "--output", str(out)]
    cmd += ["--workers", str(workers), "--threads-per-task", "1", "--", *EXTRA]
    start = time.monotonic()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if r.returncode not in (0, 3):
        raise SystemExit(f"scale_extract: the Ray run failed:\n{r.stdout}\n{r.stderr}")
    return seconds, r.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench-scale")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(a.work / f"shards-{a.shards}x{a.per_shard}", a.shards, a.per_shard)
    m = model(a.work)
    rows = a.shards * a.per_shard
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        "?",
    )  # fmt: skip
    print(f"{cpu}, {os.cpu_count()} cores; {a.shards} shards x {a.per_shard} JPEGs; ViT-S/14 "
          f"(12 blocks, random weights), {' '.join(EXTRA)}, --threads 1 per process")  # fmt: skip
    results = []
    for name, run in [
        ("direct, 1 process", lambda out: (direct(m, shards, out, 1), "")),
        ("ray, 1 worker", lambda out: ray(m, shards, out, 1)),
        ("direct, 2 processes", lambda out: (direct(m, shards, out, 2), "")),
        ("ray, 2 workers", lambda out: ray(m, shards, out, 2)),
    ]:
        out = a.work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        seconds, log = run(out)
        done = re.search(r"shards in ([\d.]+) s", log)
        row = {"run": name, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 2)}
        if done:  # the script's own clock starts before the cluster; the difference is Python
            row["script_s"] = float(done.group(1))
        results.append(row)
        print(json.dumps(row), flush=True)
    base = {1: results[0]["seconds"], 2: results[2]["seconds"]}
    print("\n| run | wall clock (s) | rows/s | against direct, same processes |")
    print("|---|---|---|---|")
    for r in results:
        n = 2 if "2" in r["run"] else 1
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['rows_per_s']:.1f} | "
              f"{base[n] / r['seconds']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
