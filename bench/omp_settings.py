# SPDX-License-Identifier: Apache-2.0
"""Thread count and affinity, measured: the library's forward pass under each OpenMP setting.

For each row (model, size, batch), alternated, `--reps` times:
- one process of 2 threads under each OpenMP setting below (LibTorch's OpenMP is GNU libgomp,
  which reads these variables once, at start-up: they are process-wide and belong to the user);
- two processes of 1 thread each, run at the same time, images/s summed, unpinned and pinned to
  one CPU each with taskset: the layout of docs/SCALE.md (one process per core).

    .venv/bin/python bench/omp_settings.py [--reps 2] [--work DIR]

Prints one line a measurement, then the medians. Needs build/bench/dinov2_bench (scripts/setup.sh)
and exports the models with random weights into --work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

from run import export_random  # bench/ is on sys.path: this script's folder

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "build" / "bench" / "dinov2_bench"

SETTINGS = {
    "default": {},
    "bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "active": {"OMP_WAIT_POLICY": "active"},
    "bind+active": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "OMP_WAIT_POLICY": "active"},
    "passive": {"OMP_WAIT_POLICY": "passive"},
}
# (variant, size, batch, timed passes)
ROWS = [
    ("dinov2_vits14", 224, 1, 30),
    ("dinov2_vits14", 518, 1, 6),
    ("dinov2_vitb14", 224, 8, 4),
    ("dinov2_vits14", 518, 8, 2),
]


def bench_cmd(model: Path, size: int, batch: int, iters: int, threads: int) -> list[str]:
    options = {"--model": model, "--size": size, "--batch": batch, "--iters": iters}
    options |= {"--warmup": 2, "--threads": threads}
    return [str(BENCH), "model", *(str(x) for pair in options.items() for x in pair)]


def images_per_s(stdout: str, batch: int) -> float:
    return batch / json.loads(stdout.strip().splitlines()[-1])["median_s"]


def one_process(cmd: list[str], batch: int, env: dict) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
    return images_per_s(out.stdout, batch)


def two_processes(cmd: list[str], batch: int, pinned: bool) -> float:
    procs = [
        subprocess.Popen(
            (["taskset", "-c", str(cpu)] if pinned else []) + cmd, stdout=subprocess.PIPE, text=True
        )
        for cpu in range(2)
    ]
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"omp_settings: {' '.join(cmd)} exited with {p.returncode}")
        total += images_per_s(out, batch)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-work" / "omp")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    results: dict[tuple, list[float]] = {}

    def note(key: tuple, rep: int, value: float) -> None:
        results.setdefault(key, []).append(value)
        print(*key, f"rep {rep}", f"{value:.3f} img/s", flush=True)

    for variant, size, batch, iters in ROWS:
        model = export_random(variant, a.work / f"{variant}.pt")
        for rep in range(a.reps):
            for name, env in SETTINGS.items():
                note(
                    (variant, size, batch, name),
                    rep,
                    one_process(bench_cmd(model, size, batch, iters, 2), batch, env),
                )
            cmd = bench_cmd(model, size, batch, iters, 1)
            note(
                (variant, size, batch, "2 processes x 1 thread"),
                rep,
                two_processes(cmd, batch, False),
            )
            note(
                (variant, size, batch, "2 processes x 1 thread, pinned"),
                rep,
                two_processes(cmd, batch, True),
            )
    print("medians (images/s):")
    for key, values in results.items():
        runs = " / ".join(f"{v:.3f}" for v in values)
        print(*key, runs, f"median {statistics.median(values):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
