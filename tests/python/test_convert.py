# SPDX-License-Identifier: Apache-2.0
"""Architecture files and `dinov2 convert`: weights to a TorchScript file without Python.

The file `dinov2 convert` writes in C++ must be what `dinov2-export` writes for the same
weights: PyTorch loads it with torch.jit.load, its outputs equal the export's bit for bit, and its
metadata is the same JSON. The tool is looked up as in test_cli_extract.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import random_weights, write_hf_folder
from dinov2_export.architecture import ARCHITECTURE_FILE, architecture
from dinov2_export.export import export, read_metadata, variant_metadata
from dinov2_export.model import DinoV2
from dinov2_export.variants import VARIANTS
from dinov2_export.weights import load_weights
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOOL = Path(os.environ.get("DINOV2_BUILD_DIR", REPO / "build")) / "bin" / "dinov2"
needs_tool = pytest.mark.skipif(not TOOL.exists(), reason=f"the dinov2 tool is not built: {TOOL}")


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOOL), *map(str, args)], check=False, capture_output=True, text=True, timeout=300
    )


def outputs(path: Path, x: torch.Tensor):
    model = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return model(x), model.intermediate_layers(x, [0, -1], True), model.cls_attention(x)


def test_architecture_files_describe_the_exporters_model(tmp_path):
    for name in ("dinov2_vits14_reg", "dinov2_vitg14"):
        variant = VARIANTS[name]
        data = architecture(variant, 2)
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        extra = {ARCHITECTURE_FILE: ""}
        scripted = torch.jit.load(str(path), _extra_files=extra)
        spec = json.loads(extra[ARCHITECTURE_FILE])
        model = DinoV2(variant, depth=2)
        assert spec["parameters"] == {k: list(p.shape) for k, p in model.named_parameters()}
        assert spec["metadata"] == variant_metadata(model, variant, "float32", {})
        # Empty parameters: the file is the graph, a few hundred KB at most.
        assert all(p.numel() == 0 for p in scripted.parameters())
        assert len(data) < 300_000


@needs_tool
def test_convert_writes_what_dinov2_export_writes(tmp_path):
    w = random_weights("dinov2_vits14_reg", depth=2, seed=5)
    folder = write_hf_folder(w, tmp_path / "hf")
    arch = tmp_path / "arch.pt"
    arch.write_bytes(architecture(w.variant, 2))
    converted = tmp_path / "converted.pt"
    res = run_tool("convert", folder, "--architecture", arch, "-o", converted)
    assert res.returncode == 0, res.stderr
    assert "dinov2_vits14_reg" in res.stdout
    exported = tmp_path / "exported.pt"
    export(load_weights(str(folder), depth=2), exported)
    assert read_metadata(converted) == read_metadata(exported)
    x = torch.randn(2, 3, 126, 182, generator=torch.Generator().manual_seed(0))
    (got, got_layers, got_attn), (want, want_layers, want_attn) = (
        outputs(converted, x),
        outputs(exported, x),
    )
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for a, b in zip(got_layers[0] + got_layers[1], want_layers[0] + want_layers[1]):
        assert torch.equal(a, b)
    assert torch.equal(got_attn, want_attn)


@needs_tool
def test_convert_refuses_a_file_that_is_already_an_export(s2_model, tmp_path):
    res = run_tool("convert", s2_model, "-o", tmp_path / "x.pt")
    assert res.returncode == 2
    assert "already a dinov2-export file" in res.stderr
    assert not (tmp_path / "x.pt").exists()


@needs_tool
def test_every_subcommand_takes_weights_as_model(tmp_path):
    w = random_weights("dinov2_vits14", depth=2, seed=6)
    folder = write_hf_folder(w, tmp_path / "hf")
    arch = tmp_path / "arch.pt"
    arch.write_bytes(architecture(w.variant, 2))
    exported = tmp_path / "exported.pt"
    export(load_weights(str(folder), depth=2), exported)
    images = sorted(str(p) for p in (REPO / "examples" / "data").glob("*.jpg"))[:2]
    outs = {}
    for name, model in (
        ("weights", ["--model", folder, "--architecture", arch]),
        ("export", ["--model", exported]),
    ):
        out = tmp_path / f"{name}.safetensors"
        res = run_tool("extract", *model, "--recipe", "eval224", "-o", out, *images)
        assert res.returncode == 0, res.stderr
        outs[name] = load_file(str(out))
    assert outs["weights"].keys() == outs["export"].keys()
    for key in outs["export"]:
        assert torch.equal(outs["weights"][key], outs["export"][key]), key
