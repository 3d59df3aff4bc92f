# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: exporting random models and building the reference implementations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from dinov2_export.export import export
from dinov2_export.variants import Variant
from dinov2_export.weights import LoadedWeights, load_weights, to_huggingface

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4  # float32 max abs error allowed against an independent implementation


def reference_python() -> str | None:
    """Interpreter of the reference venv (torch + torchvision + timm), if it exists."""
    env = os.environ.get("DINOV2_REF_PYTHON")
    if env:
        return env
    candidate = REPO / ".venv-ref" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def random_weights(model: str, depth: int | None = None, seed: int = 0) -> LoadedWeights:
    return load_weights("random", model, seed=seed, depth=depth)


@pytest.fixture(scope="session")
def s2_model(tmp_path_factory) -> Path:
    """A 2-block ViT-S/14 (no registers) with random weights (seed 0), exported: real shapes,
    fast. Shared by the tool's end-to-end tests."""
    path = tmp_path_factory.mktemp("model") / "s2.pt"
    export(random_weights("dinov2_vits14", depth=2), path)
    return path


def export_and_load(w: LoadedWeights, path: Path) -> torch.jit.ScriptModule:
    export(w, path)
    return torch.jit.load(str(path), map_location="cpu")


def hf_config(variant: Variant, depth: int) -> Dict:
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    kw = dict(
        hidden_size=variant.embed_dim,
        num_hidden_layers=depth,
        num_attention_heads=variant.num_heads,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        use_swiglu_ffn=variant.ffn == "swiglu",
    )
    if variant.has_registers:
        return Dinov2WithRegistersConfig(num_register_tokens=variant.num_register_tokens, **kw)
    return Dinov2Config(**kw)


def write_hf_folder(w: LoadedWeights, folder: Path) -> Path:
    """A Hugging Face model folder (config.json + model.safetensors) holding `w`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf_config(w.variant, w.depth).to_json_file(str(folder / "config.json"))
    save_file(to_huggingface(w.state_dict), str(folder / "model.safetensors"))
    return folder


def hf_model(w: LoadedWeights, folder: Path):
    """transformers' own model, loaded by transformers from a folder we wrote."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    write_hf_folder(w, folder)
    cls = Dinov2WithRegistersModel if w.variant.has_registers else Dinov2Model
    model = cls.from_pretrained(str(folder), attn_implementation="eager")
    return model.eval()


def hf_outputs(model, x: torch.Tensor, registers: int) -> Dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(pixel_values=x, output_hidden_states=True)
        last = out.last_hidden_state
        res = {
            "cls": last[:, 0],
            "registers": last[:, 1 : 1 + registers],
            "patches": last[:, 1 + registers :],
        }
        for i, hidden in enumerate(out.hidden_states[1:]):  # [0] is the embedding output
            normed = model.layernorm(hidden)
            res[f"block{i}/patches"] = normed[:, 1 + registers :]
            res[f"block{i}/cls"] = normed[:, 0]
            res[f"block{i}/raw_patches"] = hidden[:, 1 + registers :]
        res["prenorm"] = out.hidden_states[-1]
    return res


def timm_outputs(
    w: LoadedWeights, tmp: Path, sizes: List[Tuple[int, int]]
) -> Dict[str, torch.Tensor]:
    """timm's outputs on the same weights, computed in the reference venv."""
    python = reference_python()
    if python is None:
        pytest.skip(
            "timm reference venv missing: run scripts/setup.sh --reference (needs torchvision)"
        )
    ckpt, out = tmp / "official.pth", tmp / "timm_out.pt"
    torch.save(w.state_dict, ckpt)
    script = REPO / "tests" / "python" / "timm_reference.py"
    cmd = [python, str(script), str(ckpt), w.variant.name, str(w.depth), str(out)]
    cmd += [f"{h}x{wd}" for h, wd in sizes]
    subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=sys.stderr)
    return torch.load(out, weights_only=True)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return 0.0 if a.numel() == 0 else (a.float() - b.float()).abs().max().item()


class ErrorLog:
    """Collects measured errors so that the run prints a table (pytest -s or the summary)."""

    rows: List[str] = []

    @classmethod
    def add(cls, what: str, err: float) -> None:
        cls.rows.append(f"{what}: {err:.2e}")


def pytest_terminal_summary(terminalreporter):
    if ErrorLog.rows:
        terminalreporter.section("measured max abs errors")
        for row in ErrorLog.rows:
            terminalreporter.write_line(row)
