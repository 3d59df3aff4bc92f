# SPDX-License-Identifier: Apache-2.0
"""ONNX graphs for the library's OpenVINO backend (`dinov2-export --output NAME.onnx`).

Reference: the eager model of the same weights (official numerics), whose position embedding the
graph takes as an input. OpenVINO's CPU plugin runs its own matrix kernels, so the tolerance is
1e-5, as for the AOTInductor packages. The C++ side (tests/unit/test_model.cpp, `[openvino]`)
checks the library's own interpolation against the TorchScript file.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ErrorLog, max_err, random_weights
from dinov2_export.cli import main as cli_main
from dinov2_export.export import export
from dinov2_export.weights import build_model

onnx = pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")
from dinov2_export.onnx_export import OUTPUTS, export_onnx, read_onnx_metadata

TOL = 1e-5


def run_graph(path, x: torch.Tensor, pos: torch.Tensor):
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled.create_infer_request().infer(
        {"pixels": x.numpy(), "pos_embed": pos.detach().numpy()}
    )
    return {name: torch.from_numpy(out[compiled.output(name)].copy()) for name in OUTPUTS}


@pytest.mark.parametrize("variant,seed", [("dinov2_vits14_reg", 21), ("dinov2_vits14", 22)])
def test_graph_matches_the_eager_model_at_any_size(tmp_path, variant, seed):
    w = random_weights(variant, depth=2, seed=seed)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = export_onnx(w, path)
    assert meta["backend"] == {"kind": "openvino", "opset": 17}
    assert read_onnx_metadata(path) == meta
    eager = build_model(w)
    for h, wd, b in ((126, 350, 3), (518, 518, 1), (70, 42, 2)):
        x = torch.randn(b, 3, h, wd, generator=torch.Generator().manual_seed(h + wd))
        with torch.inference_mode():
            want = eager(x)
            pos = eager.interpolate_pos_encoding(h // 14, wd // 14, torch.float32)
        got = run_graph(path, x, pos)
        for name, ref in zip(OUTPUTS[:4], want):
            err = max_err(got[name], ref)
            ErrorLog.add(f"ONNX graph on OpenVINO {variant} {h}x{wd} b{b} {name}", err)
            assert err <= TOL, f"{name} at {h}x{wd}: {err}"
        # The trained table travels unchanged, whatever the input.
        assert torch.equal(got["pos_embed_table"], eager.pos_embed.detach())


def test_large_graphs_keep_their_weights_beside_them(tmp_path):
    w = random_weights("dinov2_vits14", depth=1, seed=23)
    small = tmp_path / "small.onnx"
    big = tmp_path / "big.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(w, small)
        export_onnx(w, big, external_data_above=0)  # as if over protobuf's 2 GB
    data = tmp_path / "big.onnx.data"
    assert data.exists() and not (tmp_path / "small.onnx.data").exists()
    assert big.stat().st_size < 100_000 < data.stat().st_size
    assert data.stat().st_mode & 0o777 == small.stat().st_mode & 0o777
    assert read_onnx_metadata(big)["variant"] == "dinov2_vits14"
    x = torch.randn(1, 3, 28, 42)
    pos = build_model(w).interpolate_pos_encoding(2, 3, torch.float32).detach()
    a, b = run_graph(small, x, pos), run_graph(big, x, pos)
    assert all(torch.equal(a[k], b[k]) for k in OUTPUTS)
    # Nothing but the two outputs is left in the folder (no temporary files).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]


def test_cli_writes_onnx_and_refuses_what_it_cannot(tmp_path, capsys):
    base = ["--model", "dinov2_vits14", "--weights", "random", "--depth", "1"]
    out = tmp_path / "m.onnx"
    assert cli_main([*base, "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = read_onnx_metadata(out)
    assert meta["depth"] == 1 and meta["dtype"] == "float32"
    assert json.loads(json.dumps(meta)) == meta
    assert cli_main([*base, "--dtype", "bfloat16", "--output", str(tmp_path / "b.onnx")]) == 2
    assert "ONNX graphs are exported in float32" in capsys.readouterr().err
    assert cli_main([*base, "--aot", "224", "--output", str(tmp_path / "a.onnx")]) == 2
    assert "--aot writes a .pt2 package" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(random_weights("dinov2_vits14", depth=1), tmp_path / "m.pt")
    not_ours = tmp_path / "plain.onnx"
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(not_ours))
    with pytest.raises(ValueError, match="no 'dinov2' metadata entry"):
        read_onnx_metadata(not_ours)


def test_the_tool_extracts_the_same_features_from_the_onnx_export(tmp_path):
    """`dinov2 extract --model NAME.onnx` against the TorchScript file of the same weights, image
    file to features (the tool decodes and resizes; only the backbone differs)."""
    repo = Path(__file__).resolve().parents[2]
    tool = Path(os.environ.get("DINOV2_BUILD_DIR", repo / "build")) / "bin" / "dinov2"
    if not tool.exists():
        pytest.skip(f"the dinov2 tool is not built: {tool} is missing")
    from safetensors.torch import load_file

    w = random_weights("dinov2_vits14_reg", depth=2, seed=24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(w, tmp_path / "m.pt")
        export_onnx(w, tmp_path / "m.onnx")
    out = {}
    for kind in ("pt", "onnx"):
        cmd = [str(tool), "extract", "--model", str(tmp_path / f"m.{kind}")]
        cmd += [str(repo / "examples" / "data"), "-o", str(tmp_path / f"{kind}.safetensors")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if kind == "onnx" and "no OpenVINO backend" in r.stderr:
            pytest.skip("the tool was built without the OpenVINO backend")
        assert r.returncode == 0, r.stderr
        out[kind] = load_file(str(tmp_path / f"{kind}.safetensors"))
    assert "OpenVINO" in r.stderr  # the tool says what runs the model
    for key in ("cls", "registers", "patch"):
        err = max_err(out["onnx"][key], out["pt"][key])
        ErrorLog.add(f"dinov2 extract, ONNX export against TorchScript, {key}", err)
        assert err <= TOL, f"{key}: {err}"
