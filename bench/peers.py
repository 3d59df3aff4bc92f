# SPDX-License-Identifier: Apache-2.0
"""The runtimes people pick instead of the library, on the same weights, input and threads.

The model is the Python reference's (bench/reference.py: transformers' Dinov2Model holding the
parameters of the exported file), exported to a static-shape ONNX graph for one size and batch
(the TorchScript-based exporter, opset 17, constants folded) and cached beside the other bench
files. Runtimes:

- ``ort``: ONNX Runtime's CPU provider with graph optimisation ORT_ENABLE_ALL;
- ``ort-transformer``: the same after ONNX Runtime's transformer optimizer (model type ``vit``:
  attention, LayerNorm, GELU and bias fusions), then ORT_ENABLE_ALL;
- ``openvino``: OpenVINO's CPU plugin on the same ONNX graph, float32 inference precision (its
  default on a CPU with bfloat16 would be bfloat16), latency hint.

``prepare`` runs in its own process first: it writes the ONNX graphs, the input (the seed-0
normal batch of bench/reference.py and the C++ side) and PyTorch's CLS output for it. ``run``
then loads only NumPy and the runtime, so its peak RSS is the runtime's own, and prints one JSON
object: images/s (median of the timed runs), peak RSS, load time, and the numerical check
against PyTorch on the same input: the largest absolute difference of the CLS output (after
the final LayerNorm) and the smallest cosine between the two.

    peers.py prepare --model F --size S --batch B --work DIR [--threads T]
    peers.py run --runtime ort|ort-transformer|openvino --model F --size S --batch B --work DIR
                 [--iters N] [--warmup W] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stem(a) -> Path:
    """Where the files of one model, size and batch go."""
    return Path(a.work) / f"{Path(a.model).stem}_{a.size}_b{a.batch}"


def prepare(a) -> None:
    """Writes STEM.onnx, STEM_opt.onnx (transformer optimizer), STEM_x.npy and STEM_cls.npy."""
    import torch
    from reference import hf_model_from_export

    class Cls(torch.nn.Module):
        """The CLS token after the final LayerNorm, the output every runtime is checked on."""

        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).pooler_output

    torch.set_num_threads(a.threads)
    model = hf_model_from_export(a.model, torch.float32)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    with torch.inference_mode():
        expected = Cls(model)(x)
    base = stem(a)
    np.save(f"{base}_x.npy", x.numpy())
    np.save(f"{base}_cls.npy", expected.numpy())
    torch.onnx.export(
        Cls(model),
        (x,),
        f"{base}.tmp.onnx",
        input_names=["pixel_values"],
        output_names=["cls"],
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
    Path(f"{base}.tmp.onnx").replace(f"{base}.onnx")

    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        f"{base}.onnx",
        model_type="vit",
        num_heads=model.config.num_attention_heads,
        hidden_size=model.config.hidden_size,
        opt_level=0,  # the graph fusions only; the session applies its own level on load
    )
    opt.save_model_to_file(f"{base}_opt.onnx")
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    print(json.dumps({"mode": "prepare", "fused_operators": fused}))


def session(a, path: Path):
    """A callable running the graph at `path` under the chosen runtime, and its version."""
    if a.runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": a.threads,
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        request = compiled.create_infer_request()

        def infer(x: np.ndarray) -> np.ndarray:
            return request.infer({0: x})[compiled.output(0)]

        return infer, f"OpenVINO {ov.__version__}"
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def infer(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"pixel_values": x})[0]

    return infer, f"ONNX Runtime {ort.__version__}"


def run(a) -> None:
    base = stem(a)
    path = Path(f"{base}_opt.onnx" if a.runtime == "ort-transformer" else f"{base}.onnx")
    t0 = time.perf_counter()
    infer, version = session(a, path)
    load_s = time.perf_counter() - t0
    x = np.load(f"{base}_x.npy")
    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        out = infer(x)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    got = np.asarray(out, dtype=np.float64)
    want = np.load(f"{base}_cls.npy").astype(np.float64)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    print(
        json.dumps(
            {
                "mode": a.runtime,
                "runtime": version,
                "load_s": load_s,
                "median_s": med,
                "times": times,
                "images_per_s": a.batch / med,
                "peak_rss_mb": peak_rss_mb(),
                "cls_max_abs": float(np.abs(got - want).max()),
                "cls_min_cosine": float(cos.min()),
                "checksum": float(got.sum()),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["prepare", "run"])
    p.add_argument("--runtime", choices=["ort", "ort-transformer", "openvino"], default="ort")
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    if a.mode == "prepare":
        prepare(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
