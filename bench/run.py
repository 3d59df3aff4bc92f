# SPDX-License-Identifier: Apache-2.0
"""Benchmark harness: the C++ library against the Python reference and the runtimes people pick
instead (ONNX Runtime, OpenVINO: bench/peers.py), same machine, same weights, same run.

Run with `bench/run.sh` (sets up, builds, then runs this). Each measurement runs in its own
process so that peak memory is per measurement. Prints a table and appends it, with the machine
and the command, to docs/BENCHMARKS.md; draws docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
REFERENCE = ROOT / "bench" / "reference.py"
PEERS = ROOT / "bench" / "peers.py"
PEER_RUNTIMES = {
    "ort": "ONNX Runtime",
    "ort-transformer": "ORT + transformer opt.",
    "openvino": "OpenVINO",
}

# The AVX2-limited run: ATen's kernels, oneDNN (in the library, PyTorch and OpenVINO, which
# honours the same variable) and MKL limited to AVX2. ONNX Runtime's own kernels (MLAS) have no
# such switch, so it is left out of that run.
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
AVX2_PEERS = {"openvino": "OpenVINO"}

# Multiply-accumulates per image, from the architecture (D width, N tokens, L blocks):
# per block 12*N*D^2 (qkv, proj, 4x MLP) + 2*N^2*D (scores and weighted sum), plus the patch
# embedding h*w*D*3*14*14. At 518 this gives S 47 G, B 152 G: the published figures.
DIMS = {"dinov2_vits14": (384, 12), "dinov2_vitb14": (768, 12), "dinov2_vitl14": (1024, 24)}


def macs(variant: str, size: int) -> float:
    d, depth = DIMS[variant.removesuffix("_reg")]
    hw = (size // 14) ** 2
    n = 1 + hw + (4 if variant.endswith("_reg") else 0)
    return depth * (12 * n * d * d + 2 * n * n * d) + hw * d * 3 * 14 * 14


# The ISA runs of the dtype table: the machine as it is, and limited to AVX2 (most AMD servers
# before Zen 4 and most laptops) through the two limits ATen and oneDNN honour.
ISA_RUNS = {
    "native": {},
    "AVX2-limited": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def run_json(cmd: list[str], extra_env: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(extra_env or {}))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_random(variant: str, path: Path, *options: str) -> Path:
    """`dinov2-export` of `variant` with random weights (seed 0) to `path`, unless it exists."""
    if not path.exists():
        cmd = [str(ROOT / ".venv/bin/dinov2-export"), "--model", variant, "--weights", "random"]
        cmd += ["--seed", "0", *options, "--output", str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
    return path


def export(variant: str, folder: Path, dtype: str = "float32") -> Path:
    return export_random(variant, folder / f"{variant}_{dtype}.pt", "--dtype", dtype)


def export_aot(variant: str, folder: Path, size: int, max_batch: int = 8) -> Path:
    """An AOTInductor package of the same random weights, compiled for size x size."""
    path = folder / f"{variant}_float32_{size}.pt2"
    return export_random(variant, path, "--aot", str(size), "--max-batch", str(max_batch))


def export_onnx(variant: str, folder: Path) -> Path:
    """The ONNX graph of the same random weights, for the library's OpenVINO backend."""
    return export_random(variant, folder / f"{variant}_float32.onnx")


def make_images(folder: Path, count: int) -> Path:
    """`count` JPEG photographs of 1024x768 made from the bundled samples (crops and flips)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    sources = sorted(
        p
        for p in (ROOT / "examples" / "data").glob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not sources:
        raise SystemExit("bench: no sample photographs in examples/data")
    for i in range(count):
        im = Image.open(sources[i % len(sources)]).convert("RGB").resize((1024, 768), Image.BICUBIC)
        if (i // len(sources)) % 2:
            im = ImageOps.mirror(im)
        im.save(folder / f"img{i:03d}.jpg", quality=90)
    return folder


def library_cpu(cli_bin: Path, extra_env: dict | None = None) -> str:
    """The CPU as the library sees it (`dinov2 --version`, second line), under extra_env."""
    if not cli_bin.exists():
        return "unknown (the dinov2 tool is not built)"
    env = dict(os.environ, **(extra_env or {}))
    cmd = [str(cli_bin), "--version"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    return lines[1].removeprefix("CPU: ") if len(lines) > 1 else "unknown"


def dtype_table(bench_bin: Path, cli_bin: Path, work: Path, threads: str, quick: bool) -> str:
    """float32, bfloat16 and auto per row, under each of ISA_RUNS: what DType::kAuto buys."""
    cases = [("dinov2_vits14", 224, 8)]
    if not quick:
        cases += [("dinov2_vits14", 518, 1), ("dinov2_vitb14", 224, 8)]
    header = (
        "| ISA run | model, size, batch | float32 img/s | bfloat16 img/s | auto img/s (picks) "
        "| bfloat16/float32 | auto/float32 | bfloat16 min CLS cosine |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    cpus = []
    for isa, extra in ISA_RUNS.items():
        cpus.append(f"- {isa}: {library_cpu(cli_bin, extra)}")
        for variant, size, batch in cases:
            model = export(variant, work)
            iters = "2" if quick else ("3" if size == 518 else "4")
            got = {}
            for dtype in ("float32", "bfloat16", "auto"):
                cmd = [str(bench_bin), "model", "--model", str(model), "--size", str(size)]
                cmd += ["--batch", str(batch), "--iters", iters, "--warmup", "1"]
                cmd += ["--threads", threads, "--dtype", dtype]
                got[dtype] = run_json(cmd, extra)
            f32 = got["float32"]["images_per_s"]
            b16 = got["bfloat16"]["images_per_s"]
            auto = got["auto"]["images_per_s"]
            print(
                f"  {isa} {variant} {size} b{batch}: float32 {f32:.2f}, bfloat16 {b16:.2f}, "
                f"auto {auto:.2f} ({got['auto']['compute_dtype']})",
                file=sys.stderr,
                flush=True,
            )
            lines.append(
                f"| {isa} | {variant.removeprefix('dinov2_')} {size} b{batch} | {f32:.2f} "
                f"| {b16:.2f} | {auto:.2f} ({got['auto']['compute_dtype']}) | {b16 / f32:.2f}x "
                f"| {auto / f32:.2f}x | {fmt(got['bfloat16'].get('min_cls_cosine'), '.5f')} |"
            )
    return "CPU as the library sees it, per run:\n" + "\n".join(cpus) + "\n\n" + "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, torch {torch.__version__}"


def avx2_rows(bench_bin, work, variants, sizes, batches, t, quick, log) -> list[dict]:
    """The float32 model rows under AVX2_ENV: Python eager, the library with its defaults and
    with every linear layer on oneDNN (the AVX-512 default), and OpenVINO (its CLS checked
    against PyTorch as in the native run)."""
    rows = []
    for variant in variants:
        model = export(variant, work)
        for size in sizes:
            for batch in batches:
                iters = (
                    2 if quick else {(224, 1): 20, (224, 8): 8, (518, 1): 8}.get((size, batch), 3)
                )
                common = ["--model", str(model), "--size", str(size), "--batch", str(batch)]
                common += ["--iters", str(iters), "--warmup", "2", "--threads", t]
                log(f"AVX2-limited model-only {variant} {size} batch {batch} ...")
                py = run_json([PY, str(REFERENCE), "model", *common], AVX2_ENV)
                cc = run_json([str(bench_bin), "model", *common], AVX2_ENV)
                dnn = run_json([str(bench_bin), "model", *common, "--kernels", "onednn"], AVX2_ENV)
                ov_common = list(common)
                ov_common[1] = str(export_onnx(variant, work))
                ov = run_json([str(bench_bin), "model", *ov_common], AVX2_ENV)
                shape = ["--model", str(model), "--size", str(size), "--batch", str(batch)]
                shape += ["--work", str(work), "--threads", t]
                run_json([PY, str(PEERS), "prepare", *shape])
                timing = ["--iters", str(iters), "--warmup", "2"]
                peers = {
                    r: run_json([PY, str(PEERS), "run", "--runtime", r, *shape, *timing], AVX2_ENV)
                    for r in AVX2_PEERS
                }
                rows.append(
                    {
                        "kind": "model_avx2",
                        "what": f"{variant} {size}px batch {batch}",
                        "python": py["images_per_s"],
                        "cpp": cc["images_per_s"],
                        "onednn": dnn["images_per_s"],
                        "cpp_ov": ov["images_per_s"],
                        "fusion": cc.get("fusion", ""),
                        "rss_cpp": cc["peak_rss_mb"],
                        "peers": peers,
                    }
                )
                log(
                    f"  python {py['images_per_s']:.2f}, library {cc['images_per_s']:.2f}, all "
                    f"linears on oneDNN {dnn['images_per_s']:.2f}, OpenVINO backend "
                    f"{ov['images_per_s']:.2f}, "
                    + ", ".join(
                        f"{AVX2_PEERS[r]} {v['images_per_s']:.2f}" for r, v in peers.items()
                    )
                )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="fewer rows and iterations (smoke test)")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/BENCHMARKS.md")
    p.add_argument(
        "--no-peers", action="store_true", help="leave out the ONNX Runtime and OpenVINO rows"
    )
    p.add_argument(
        "--isa",
        choices=["both", "native"],
        default="both",
        help="both (default): the float32 model rows again under an AVX2 limit (AVX2_ENV)",
    )
    a = p.parse_args()

    bench_bin = a.build / "bench" / "dinov2_bench"
    cli_bin = a.build / "bin" / "dinov2"
    work = a.build / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    images = make_images(work / "images", 16 if a.quick else 48)
    t = str(a.threads)
    rows: list[dict] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    matmul = run_json([str(bench_bin), "matmul", "--threads", t])
    peak = matmul["gflops"]
    log(f"float32 matmul: {peak:.1f} GFLOP/s with {t} threads")

    variants = ["dinov2_vits14"] if a.quick else ["dinov2_vits14", "dinov2_vitb14"]
    sizes = [224] if a.quick else [224, 518]
    batches = [1] if a.quick else [1, 8]
    for variant in variants:
        model = export(variant, work)
        for size in sizes:
            for batch in batches:
                # Enough timed runs for a stable median on a shared 2-core machine, within
                # about a minute per measurement for ViT-B/14.
                iters = (
                    2 if a.quick else {(224, 1): 20, (224, 8): 8, (518, 1): 8}.get((size, batch), 3)
                )
                common = [
                    "--model",
                    str(model),
                    "--size",
                    str(size),
                    "--batch",
                    str(batch),
                    "--iters",
                    str(iters),
                    "--warmup",
                    "2",
                    "--threads",
                    t,
                ]
                log(f"model-only {variant} {size} batch {batch} ...")
                py = run_json([PY, str(REFERENCE), "model", *common])
                cc = run_json([str(bench_bin), "model", *common])
                # The levers, each against the same Python run: the file's graph as exported
                # (no fused kernels), and the AOTInductor package of the same weights.
                plain = run_json([str(bench_bin), "model", *common, "--fused", "0"])
                gelu = run_json([str(bench_bin), "model", *common, "--kernels", "fused-gelu"])
                aot_common = list(common)
                aot_common[1] = str(export_aot(variant, work, size))
                aot = run_json([str(bench_bin), "model", *aot_common])
                ov_common = list(common)
                ov_common[1] = str(export_onnx(variant, work))
                ov = run_json([str(bench_bin), "model", *ov_common])
                flops = 2 * macs(variant, size)
                rows.append(
                    {
                        "kind": "model",
                        "what": f"{variant} {size}px batch {batch}",
                        "python": py["images_per_s"],
                        "cpp": cc["images_per_s"],
                        "unit": "img/s",
                        "ratio": cc["images_per_s"] / py["images_per_s"],
                        "ratio_plain": plain["images_per_s"] / py["images_per_s"],
                        "ratio_gelu": gelu["images_per_s"] / py["images_per_s"],
                        "fusion": cc.get("fusion", ""),
                        "ratio_aot": aot["images_per_s"] / py["images_per_s"],
                        "rss_aot": aot["peak_rss_mb"],
                        "cpp_ov": ov["images_per_s"],
                        "rss_ov": ov["peak_rss_mb"],
                        "mfu_cpp": flops * cc["images_per_s"] / (peak * 1e9),
                        "mfu_py": flops * py["images_per_s"] / (peak * 1e9),
                        "rss_py": py["peak_rss_mb"],
                        "rss_cpp": cc["peak_rss_mb"],
                        "load_py": py["load_s"],
                        "load_cpp": cc["load_s"],
                        # transformers interpolates the position embedding of non-register models
                        # differently from the official model except at 518 (DINOV2.md 3.1).
                        "same_output": (
                            abs(py["checksum"] - cc["checksum"])
                            <= 1e-3 * max(1.0, abs(py["checksum"]))
                            if size == 518 or variant.endswith("_reg")
                            else True
                        )
                        and all(
                            abs(o["checksum"] - cc["checksum"])
                            <= 1e-3 * max(1.0, abs(cc["checksum"]))
                            for o in (plain, gelu, aot, ov)
                        ),
                    }
                )
                log(
                    f"  python {py['images_per_s']:.2f} img/s, C++ {cc['images_per_s']:.2f}, "
                    f"unfused {plain['images_per_s']:.2f}, fused GELU only "
                    f"{gelu['images_per_s']:.2f}, AOTInductor {aot['images_per_s']:.2f}, OpenVINO "
                    f"backend {ov['images_per_s']:.2f}"
                )
                if not a.no_peers:
                    # The same weights, input and threads through ONNX Runtime and OpenVINO.
                    shape = ["--model", str(model), "--size", str(size), "--batch", str(batch)]
                    shape += ["--work", str(work), "--threads", t]
                    prep = run_json([PY, str(PEERS), "prepare", *shape])
                    timing = ["--iters", str(iters), "--warmup", "2"]
                    peers = {
                        r: run_json([PY, str(PEERS), "run", "--runtime", r, *shape, *timing])
                        for r in PEER_RUNTIMES
                    }
                    rows[-1]["peers"] = peers
                    rows[-1]["fused_by_ort"] = prep["fused_operators"]
                    log(
                        "  "
                        + ", ".join(
                            f"{PEER_RUNTIMES[r]} {v['images_per_s']:.2f} "
                            f"(CLS max abs {v['cls_max_abs']:.1e})"
                            for r, v in peers.items()
                        )
                    )

    if a.isa == "both":
        rows += avx2_rows(bench_bin, work, variants, sizes, batches, t, a.quick, log)

    # Reduced precision in the library: bfloat16 against float32, same input.
    variant = variants[-1]
    size = 224
    bf16 = export(variant, work)
    common = [
        "--model",
        str(bf16),
        "--size",
        str(size),
        "--batch",
        "8",
        "--iters",
        "2" if a.quick else "4",
        "--warmup",
        "1",
        "--threads",
        t,
    ]
    f32 = run_json([str(bench_bin), "model", *common])
    b16 = run_json([str(bench_bin), "model", *common, "--dtype", "bfloat16"])
    rows.append(
        {
            "kind": "bf16",
            "what": f"{variant} {size}px batch 8, bfloat16 vs float32 (C++)",
            "python": f32["images_per_s"],
            "cpp": b16["images_per_s"],
            "unit": "img/s",
            "ratio": b16["images_per_s"] / f32["images_per_s"],
            "cosine": b16.get("min_cls_cosine"),
            "rss_py": f32["peak_rss_mb"],
            "rss_cpp": b16["peak_rss_mb"],
        }
    )

    # Preprocessing alone, per image at 518.
    py = run_json(
        [PY, str(REFERENCE), "preprocess", "--images", str(images), "--size", "518", "--iters", "2"]
    )
    cc = run_json(
        [
            str(bench_bin),
            "preprocess",
            "--images",
            str(images),
            "--size",
            "518",
            "--iters",
            "2",
            "--threads",
            t,
        ]
    )
    rows.append(
        {
            "kind": "preprocess",
            "what": "preprocess 1024x768 -> 518x518, per image",
            "python": 1 / py["median_s"],
            "cpp": 1 / cc["median_s"],
            "unit": "img/s",
            "ratio": py["median_s"] / cc["median_s"],
            "rss_py": py["peak_rss_mb"],
            "rss_cpp": cc["peak_rss_mb"],
        }
    )

    # End to end: JPEG files on disk to features in memory, ViT-S/14 at 224 (eval crop), batch 8.
    model = export("dinov2_vits14", work)
    common = [
        "--model",
        str(model),
        "--images",
        str(images),
        "--size",
        "224",
        "--batch",
        "8",
        "--threads",
        t,
    ]
    py = run_json([PY, str(REFERENCE), "e2e", *common, "--workers", "2"])
    cc = run_json([str(bench_bin), "e2e", *common, "--workers", "1"])
    rows.append(
        {
            "kind": "e2e",
            "what": "end to end JPEG -> features, ViT-S/14 224 batch 8 (library)",
            "python": py["images_per_s"],
            "cpp": cc["images_per_s"],
            "unit": "img/s",
            "ratio": cc["images_per_s"] / py["images_per_s"],
            "rss_py": py["peak_rss_mb"],
            "rss_cpp": cc["peak_rss_mb"],
        }
    )
    if cli_bin.exists():
        import time

        out = work / "extract.safetensors"
        cmd = [
            str(cli_bin),
            "extract",
            "--model",
            str(model),
            "--output",
            str(out),
            "--recipe",
            "eval224",
            "--batch",
            "8",
            "--threads",
            t,
            str(images),
        ]
        subprocess.run(["rm", "-rf", str(out), str(out) + ".parts"], check=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        n = len(list(images.glob("*.jpg")))
        # The tool's own count ("N images in X s") leaves out process start and model load,
        # which the Python loop does not time either.
        import re

        m = re.search(r"(\d+) images in ([0-9.]+) s", done.stderr)
        if m:
            loop = int(m.group(1)) / float(m.group(2))
            rows.append(
                {
                    "kind": "e2e",
                    "what": "end to end, `dinov2 extract` image loop (decode, model, write)",
                    "python": py["images_per_s"],
                    "cpp": loop,
                    "unit": "img/s",
                    "ratio": loop / py["images_per_s"],
                    "rss_py": py["peak_rss_mb"],
                    "rss_cpp": None,
                }
            )
        # Both sides from process start to features on disk: `dinov2 extract` against a Python
        # script that imports torch and transformers, loads the model folder with
        # from_pretrained, runs the DataLoader loop and saves the CLS features. Alternated,
        # three of each; medians.
        hf = work / "hf_dinov2_vits14"
        if not (hf / "config.json").exists():
            run_json(
                [PY, str(REFERENCE), "hf-folder", "--model", str(model), "--hf-folder", str(hf)]
            )
        py_cmd = [PY, str(REFERENCE), "e2e", *common, "--workers", "2", "--hf-folder", str(hf)]
        py_cmd += ["--save", str(work / "python_e2e.safetensors")]
        walls: dict[str, list[float]] = {"python": [], "cpp": []}
        for _ in range(1 if a.quick else 3):
            for side, argv in (("python", py_cmd), ("cpp", cmd)):
                subprocess.run(["rm", "-rf", str(out), str(out) + ".parts"], check=True)
                t0 = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True, text=True)
                walls[side].append(time.perf_counter() - t0)
        import statistics

        py_wall = statistics.median(walls["python"])
        cc_wall = statistics.median(walls["cpp"])
        rows.append(
            {
                "kind": "e2e",
                "what": (
                    f"end to end wall clock, both from process start to features on disk "
                    f"(Python {py_wall:.2f} s, `dinov2 extract` {cc_wall:.2f} s)"
                ),
                "python": n / py_wall,
                "cpp": n / cc_wall,
                "unit": "img/s",
                "ratio": py_wall / cc_wall,
                "rss_py": None,
                "rss_cpp": None,
            }
        )
        rows.append(
            {
                "kind": "e2e",
                "what": "end to end, `dinov2 extract` wall clock (incl. start, load, write)",
                "python": py["images_per_s"],
                "cpp": n / elapsed,
                "unit": "img/s",
                "ratio": n / elapsed / py["images_per_s"],
                "rss_py": py["peak_rss_mb"],
                "rss_cpp": None,
            }
        )

    log("dtype by ISA ...")
    table = render(rows, peak, a.threads)
    if any("peers" in r for r in rows if r["kind"] == "model"):
        native = next(r for r in rows if r["kind"] == "model")
        table += "\n\n" + render_peers(rows) + f"\n\nLibrary plan in this run: {native['fusion']}"
    if any(r["kind"] == "model_avx2" for r in rows):
        table += "\n\n" + render_avx2(rows)
    table += "\n\nCompute dtype by ISA (C++ library, `--dtype`):\n\n"
    table += dtype_table(bench_bin, cli_bin, work, t, a.quick)
    print(table)
    if not a.no_record:
        record(table, rows)
    return 0


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(rows: list[dict], peak: float, threads: int) -> str:
    lines = [
        f"float32 matmul rate (2048^3, {threads} threads): {peak:.1f} GFLOP/s",
        "",
        "| measurement | Python | C++ | C++/Python | unfused/Python | fused GELU only/Python | AOTInductor/Python | C++ FLOP util. | Python FLOP util. | peak RSS Python / C++ / AOTI (MB) | load s Python / C++ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "model_avx2":
            continue
        mfu_c = fmt(100 * r["mfu_cpp"], ".0f") + " %" if "mfu_cpp" in r else "-"
        mfu_p = fmt(100 * r["mfu_py"], ".0f") + " %" if "mfu_py" in r else "-"
        load = f"{fmt(r.get('load_py'))} / {fmt(r.get('load_cpp'))}" if "load_py" in r else "-"
        what = r["what"] + ("" if r.get("same_output", True) else " (outputs differ!)")
        if r["kind"] == "bf16":
            what += f", min CLS cosine {fmt(r.get('cosine'), '.5f')}"
        plain = fmt(r.get("ratio_plain")) + "x" if "ratio_plain" in r else "-"
        aot = fmt(r.get("ratio_aot")) + "x" if "ratio_aot" in r else "-"
        gelu = fmt(r.get("ratio_gelu")) + "x" if "ratio_gelu" in r else "-"
        rss = f"{fmt(r['rss_py'], '.0f')} / {fmt(r['rss_cpp'], '.0f')}"
        if "rss_aot" in r:
            rss += f" / {fmt(r['rss_aot'], '.0f')}"
        lines.append(
            f"| {what} | {fmt(r['python'])} {r['unit']} | {fmt(r['cpp'])} {r['unit']} | {r['ratio']:.2f}x "
            f"| {plain} | {gelu} | {aot} | {mfu_c} | {mfu_p} | {rss} | {load} |"
        )
    return "\n".join(lines)


def table_head(title: str, header: list[str]) -> list[str]:
    """A title line, then the header of a Markdown table."""
    return [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def render_peers(rows: list[dict]) -> str:
    """The float32 model rows against every runtime: img/s, the library's ratio to the fastest
    other, and each peer's CLS against PyTorch on the same input."""
    peer_rows = [r for r in rows if "peers" in r and r["kind"] == "model"]
    versions = sorted({v["runtime"].split("-")[0] for r in peer_rows for v in r["peers"].values()})
    names = list(PEER_RUNTIMES.values())
    header = ["model, size, batch", "Python eager", "library", "library, OpenVINO backend", *names]
    header += ["library / fastest other", "OpenVINO backend / fastest other"]
    header += ["CLS max abs (worst peer)", "CLS min cosine"]
    header += [f"peak RSS library / its OpenVINO backend / {' / '.join(names)} (MB)"]
    header += ["fused by ORT's optimizer"]
    lines = table_head(
        f"Peers, float32, images/s (median); {', '.join(versions)}. CLS check: largest "
        "absolute difference and smallest cosine of each peer's CLS against PyTorch on the "
        "same input.",
        header,
    )
    for r in peer_rows:
        peers = r["peers"].values()
        fastest = max([r["python"], *(v["images_per_s"] for v in peers)])
        fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fused_by_ort"].items())) or "-"
        lines.append(
            f"| {r['what']} | {fmt(r['python'])} | {fmt(r['cpp'])} | {fmt(r['cpp_ov'])} | "
            + " | ".join(fmt(v["images_per_s"]) for v in peers)
            + f" | {r['cpp'] / fastest:.2f}x | {r['cpp_ov'] / fastest:.2f}x | "
            f"{max(v['cls_max_abs'] for v in peers):.1e} | "
            f"{min(v['cls_min_cosine'] for v in peers):.7f} | {fmt(r['rss_cpp'], '.0f')} / "
            f"{fmt(r['rss_ov'], '.0f')} / "
            + " / ".join(fmt(v["peak_rss_mb"], ".0f") for v in peers)
            + f" | {fused} |"
        )
    return "\n".join(lines)


def render_avx2(rows: list[dict]) -> str:
    """The AVX2-limited float32 rows: Python eager, the library, and the peers that honour the
    limit."""
    avx2 = [r for r in rows if r["kind"] == "model_avx2"]
    names = list(AVX2_PEERS.values())
    header = ["model, size, batch", "Python eager", "library", "library, every linear on oneDNN"]
    header += ["library, OpenVINO backend", *names, "library / fastest other"]
    header += ["OpenVINO backend / fastest other", "CLS max abs (peers)", "CLS min cosine"]
    lines = table_head(
        "AVX2-limited, float32, images/s (median), same machine and run, under "
        + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
        + ". ONNX Runtime is left out: its kernels have no ISA limit.",
        header,
    )
    for r in avx2:
        peers = r["peers"].values()
        fastest = max([r["python"], *(v["images_per_s"] for v in peers)])
        lines.append(
            f"| {r['what']} | {fmt(r['python'])} | {fmt(r['cpp'])} | {fmt(r['onednn'])} | "
            f"{fmt(r['cpp_ov'])} | "
            + " | ".join(fmt(v["images_per_s"]) for v in peers)
            + f" | {r['cpp'] / fastest:.2f}x | {r['cpp_ov'] / fastest:.2f}x | "
            f"{max(v['cls_max_abs'] for v in peers):.1e} | "
            f"{min(v['cls_min_cosine'] for v in peers):.7f} |"
        )
    if avx2:
        lines += ["", f"Library plan in this run: {avx2[0]['fusion']}"]
    return "\n".join(lines)


def record(table: str, rows: list[dict]) -> None:
    doc = ROOT / "docs" / "BENCHMARKS.md"
    if not doc.exists():
        doc.write_text("# Benchmarks\n\nProduced by `bench/run.sh`; each run appends a section.\n")
    command = "bench/run.sh " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = library_cpu(ROOT / "build" / "bin" / "dinov2")
    with doc.open("a") as f:
        f.write(
            f"\n## {stamp}\n\nMachine: {machine()}\n\nCPU as the library sees it: {cpu}\n\n"
            f"Command: `{command.strip()}`\n\n{table}\n"
        )
    chart(rows, ROOT / "docs" / "benchmarks.png")
    if any("peers" in r for r in rows):
        chart_peers(rows, ROOT / "docs" / "benchmarks_peers.png")


def pyplot():
    """matplotlib.pyplot drawing to files, or None (with a word on stderr) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no chart drawn", file=sys.stderr)
        return None
    return plt


def chart(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in rows if "ratio" in r]
    labels = [r["what"].split(" (")[0] for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), ratios, color=["tab:green" if x >= 1 else "tab:red" for x in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of C++ over Python (bf16 row: bfloat16 over float32)")
    for i, x in enumerate(ratios):
        ax.text(x, i, f" {x:.2f}x", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def chart_peers(rows: list[dict], path: Path) -> None:
    """Images/s of every runtime on each float32 model row, as grouped bars."""
    plt = pyplot()
    if plt is None:
        return
    peer_rows = [r for r in rows if "peers" in r and r["kind"] == "model"]
    series = {"Python eager": [r["python"] for r in peer_rows]}
    series["library"] = [r["cpp"] for r in peer_rows]
    series["library, OpenVINO backend"] = [r["cpp_ov"] for r in peer_rows]
    for key, name in PEER_RUNTIMES.items():
        series[name] = [r["peers"][key]["images_per_s"] for r in peer_rows]
    fig, ax = plt.subplots(figsize=(9, 0.9 * len(peer_rows) + 1.5))
    height = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ys = [i + k * height for i in range(len(peer_rows))]
        ax.barh(ys, values, height=height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(peer_rows))])
    ax.set_yticklabels([r["what"] for r in peer_rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images/s, float32 (log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
