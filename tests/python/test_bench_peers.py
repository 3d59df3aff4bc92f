# SPDX-License-Identifier: Apache-2.0
"""bench/peers.py: the ONNX export of the Python reference runs under ONNX Runtime (plain and
after its transformer optimizer) and OpenVINO and gives PyTorch's CLS. Skipped where those
runtimes are not installed (bench/run.sh installs them; the test setup does not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnx")

PEERS = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


def peers(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(PEERS), *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size,batch", [(224, 1), (70, 2)])
def test_peer_runtimes_give_pytorchs_cls(s2_model, tmp_path, size, batch):
    shape = ["--model", str(s2_model), "--size", str(size), "--batch", str(batch)]
    shape += ["--work", str(tmp_path), "--threads", "2"]
    prep = peers("prepare", *shape)
    # The transformer optimizer fuses at least the GELU and the residual LayerNorms of 2 blocks.
    assert prep["fused_operators"].get("SkipLayerNormalization", 0) >= 3
    for runtime in ("ort", "ort-transformer", "openvino"):
        r = peers("run", "--runtime", runtime, *shape, "--iters", "1", "--warmup", "0")
        assert r["cls_max_abs"] <= 1e-4, (runtime, r)
        assert r["cls_min_cosine"] >= 0.99999, (runtime, r)
        assert r["images_per_s"] > 0
