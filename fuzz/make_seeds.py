# SPDX-License-Identifier: Apache-2.0
"""Writes the seeds of the model and head fuzz targets: toy dinov2-export files (width 24, one
block, a 4x4 position grid) small enough to mutate quickly, made with the real exporter so that
they are what `Model::load` and the head loaders read. Generated, not kept in the repository.

    python fuzz/make_seeds.py OUT   # writes OUT/model/*.pt, OUT/head/*.pt, OUT/weights/*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from dinov2_export.export import METADATA_FILE, metadata, script
from dinov2_export.heads import (
    HEAD_FILE,
    HeadWeights,
    build_head,
    get_kind,
    random_head_state_dict,
    resolve_dataset,
)
from dinov2_export.model import DinoV2
from dinov2_export.variants import Variant
from dinov2_export.weights import LoadedWeights, sha256_state_dict


def toy(registers: int) -> Variant:
    return Variant(
        "dinov2_vits14_reg" if registers else "dinov2_vits14", 24, 1, 2, "mlp", registers
    )


def backbone(out: Path, registers: int) -> None:
    torch.manual_seed(registers)
    model = DinoV2(toy(registers), depth=1, pos_grid=4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    sd = model.state_dict()
    w = LoadedWeights(sd, toy(registers), 1, 4, "random", sha256_state_dict(sd), {"seed": 0})
    scripted = script(model)
    scripted.save(str(out), _extra_files={METADATA_FILE: json.dumps(metadata(model, w, "float32"))})


def head(out: Path, kind_name: str) -> None:
    kind = get_kind(kind_name)
    dataset = resolve_dataset(kind, None)
    sd = random_head_state_dict(kind, toy(0), dataset, 0)
    hw = HeadWeights(sd, kind, toy(0), dataset, "random", sha256_state_dict(sd), 0)
    module, meta = build_head(hw)
    torch.jit.script(module).save(str(out), _extra_files={HEAD_FILE: json.dumps(meta)})


def weights(out: Path) -> None:
    """Toy weight files for fuzz_weights: checkpoints as torch.save writes them (an OrderedDict
    with its _metadata, a training checkpoint's nesting) and a safetensors file with Hugging Face
    names. Their width matches no variant, so loading them fails late, after every reading step.
    """
    from collections import OrderedDict

    from dinov2_export.weights import to_huggingface
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = DinoV2(toy(4), depth=1, pos_grid=4)
    sd = model.state_dict()
    torch.save(sd, out / "state_dict.pth")
    torch.save(
        {"teacher": OrderedDict(("backbone." + k, v) for k, v in sd.items()), "iteration": 3},
        out / "training.pth",
    )
    save_file(
        {k: v.contiguous() for k, v in to_huggingface(dict(sd)).items()},
        str(out / "toy.safetensors"),
    )


def main() -> int:
    out = Path(sys.argv[1])
    (out / "weights").mkdir(parents=True, exist_ok=True)
    weights(out / "weights")
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "head").mkdir(parents=True, exist_ok=True)
    backbone(out / "model" / "toy.pt", 0)
    backbone(out / "model" / "toy_reg.pt", 4)
    for name in ("linear", "linear4", "depth_linear4", "seg_linear"):
        head(out / "head" / f"{name}.pt", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
