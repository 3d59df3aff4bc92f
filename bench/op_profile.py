# SPDX-License-Identifier: Apache-2.0
"""Where a forward pass spends its time, for the library and for OpenVINO, on one model row.

OpenVINO: its own per-node counters (PERF_COUNT) over the timed runs, summed by node type, on
the ONNX graph bench/peers.py prepares. The library: each operation kind of the exported graph
timed alone with LibTorch at the shapes of that row and the kernels of the default plan
(oneDNN linear with a prepacked weight, the first MLP layer with its GELU; SDPA; LayerNorm;
residual adds; LayerScale multiplies), multiplied by its count per forward pass: a bottom-up
profile, since LibTorch's profiler adds more than the short operations take. Prints one JSON
object per runtime.

    op_profile.py --model F.pt --size S --batch B --work DIR [--threads T] [--iters N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DIMS = {"dinov2_vits14": (384, 6, 12), "dinov2_vitb14": (768, 12, 12)}


def library(a) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    variant = Path(a.model).stem.rsplit("_", 1)[0]
    d, heads, depth = DIMS[variant]
    n = 1 + (a.size // 14) ** 2
    b = a.batch

    def timed(f) -> float:
        for _ in range(3):
            f()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            f()
        return (time.perf_counter() - t0) / a.iters

    x = torch.randn(b, n, d)
    parts: dict[str, float] = {}
    with torch.inference_mode():
        for name, (k, m, attr) in {
            "linear qkv": (d, 3 * d, "none"),
            "linear proj": (d, d, "none"),
            "linear fc1 + GELU": (d, 4 * d, "gelu"),
            "linear fc2": (4 * d, d, "none"),
        }.items():
            w = torch.ops.mkldnn._reorder_linear_weight(torch.randn(m, k), None)
            bias = torch.randn(m)
            inp = torch.randn(b, n, k)
            algo = "none" if attr == "gelu" else ""
            parts[name] = depth * timed(
                lambda inp=inp, w=w, bias=bias, attr=attr, algo=algo: (
                    torch.ops.mkldnn._linear_pointwise(inp, w, bias, attr, [], algo)
                )
            )
        q = torch.randn(b, heads, n, d // heads)
        parts["attention (SDPA)"] = depth * timed(lambda: F.scaled_dot_product_attention(q, q, q))
        qkv = torch.randn(b, n, 3 * d)

        def split_merge():
            t = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            return t[0].transpose(1, 2).reshape(b, n, d).contiguous()

        parts["qkv split, head merge"] = depth * timed(split_merge)
        ln = torch.nn.LayerNorm(d)
        parts["LayerNorm"] = (2 * depth + 1) * timed(lambda: ln(x))
        parts["residual add"] = 2 * depth * timed(lambda: x + x)
        g = torch.randn(d)
        parts["LayerScale multiply"] = 2 * depth * timed(lambda: x * g)
    total = sum(parts.values())
    return {
        "runtime": "library (bottom-up)",
        "total_ms": 1e3 * total,
        "parts_ms": {k: round(1e3 * v, 2) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
    }


def openvino(a) -> dict:
    import openvino as ov

    stem = Path(a.work) / f"{Path(a.model).stem}_{a.size}_b{a.batch}"
    core = ov.Core()
    compiled = core.compile_model(
        str(stem.with_suffix(".onnx")),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": a.threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "PERF_COUNT": True,
        },
    )
    request = compiled.create_infer_request()
    x = np.load(str(stem) + "_x.npy")
    for _ in range(3):
        request.infer({0: x})
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(a.iters):
        request.infer({0: x})
        for info in request.profiling_info:
            key = f"{info.node_type} ({info.exec_type})"
            parts[key] = parts.get(key, 0.0) + info.real_time.total_seconds() / a.iters
    wall = (time.perf_counter() - t0) / a.iters
    runtime_ops = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        kind = op.get_rt_info()["layerType"].astype(str)
        runtime_ops[kind] = runtime_ops.get(kind, 0) + 1
    top = sorted(parts.items(), key=lambda kv: -kv[1])
    return {
        "runtime": f"OpenVINO {ov.__version__}",
        "wall_ms": 1e3 * wall,
        "total_ms": 1e3 * sum(parts.values()),
        "parts_ms": {k: round(1e3 * v, 2) for k, v in top if v > 1e-4},
        "runtime_graph_ops": dict(sorted(runtime_ops.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--work", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    print(json.dumps(library(a)))
    print(json.dumps(openvino(a)))


if __name__ == "__main__":
    main()
