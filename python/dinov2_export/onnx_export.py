# SPDX-License-Identifier: Apache-2.0
"""Write a backbone as an ONNX graph for the library's OpenVINO backend (docs/FORMAT.md).

ONNX cannot express the position-embedding interpolation of every variant (antialiased bicubic
has no ONNX operator), so the graph starts after it: its inputs are the pixels and the
interpolated position embedding, which the library computes with the same LibTorch operators as
the TorchScript file. The trained table travels inside the graph as the constant output
`pos_embed_table`, which the library reads and removes before compiling; the metadata JSON of
the TorchScript file (with `backend.kind` "openvino") is the ONNX metadata entry `dinov2`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .export import metadata
from .model import DinoV2
from .variants import PATCH_SIZE
from .weights import LoadedWeights, build_model

OPSET = 17
METADATA_KEY = "dinov2"
INPUTS = ["pixels", "pos_embed"]
OUTPUTS = ["cls", "registers", "patches", "prenorm", "pos_embed_table"]
# protobuf's limit for one message; larger models keep their weights in OUTPUT.data.
PROTOBUF_LIMIT = 2**31 - 1


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise ValueError(
            "writing an ONNX graph needs the onnx package: pip install 'dinov2-export[onnx]'"
        ) from e
    return onnx


class _Graph(nn.Module):
    """DinoV2.forward from the patch embedding on, the position embedding given as an input."""

    def __init__(self, model: DinoV2) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        b = x.size(0)
        # The same operations, in the same order, as DinoV2.prepare_tokens.
        tokens = torch.cat([m.cls_token.expand(b, -1, -1), m.patch_embed(x)], dim=1) + pos
        r = m.num_register_tokens
        if r > 0:
            tokens = torch.cat(
                [tokens[:, :1], m.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1
            )
        for blk in m.blocks:
            tokens = blk(tokens)
        normed = m.norm(tokens)
        return normed[:, 0], normed[:, 1 : 1 + r], normed[:, 1 + r :], tokens, m.pos_embed


def export_onnx(
    w: LoadedWeights, output: Path, external_data_above: int = PROTOBUF_LIMIT
) -> dict[str, Any]:
    """Write the ONNX graph of `w` to `output` (.onnx); returns its metadata.

    Weights go to `output` + ".data" beside it when the graph would exceed
    `external_data_above` bytes (protobuf's 2 GB limit: ViT-g/14 in float32).
    """
    onnx = _onnx()
    if output.suffix != ".onnx":
        raise ValueError(f"{output}: an ONNX export must end in .onnx")
    model = build_model(w).float().eval()
    meta = metadata(model, w, "float32")
    meta["backend"] = {"kind": "openvino", "opset": OPSET}
    side = 2 * PATCH_SIZE
    example = torch.zeros(2, 3, side, side)
    with torch.no_grad():
        pos = model.interpolate_pos_encoding(2, 2, torch.float32)
    dynamic = {
        "pixels": {0: "batch", 2: "height", 3: "width"},
        "pos_embed": {1: "tokens"},
        "cls": {0: "batch"},
        "registers": {0: "batch"},
        "patches": {0: "batch", 1: "patch_tokens"},
        "prenorm": {0: "batch", 1: "all_tokens"},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=output.name + ".") as tmp:
        raw = os.path.join(tmp, "graph.onnx")
        with torch.no_grad():
            torch.onnx.export(
                _Graph(model),
                (example, pos),
                raw,
                input_names=INPUTS,
                output_names=OUTPUTS,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(raw)
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, indent=2))
        proto.producer_name = "dinov2-export"
        external = proto.ByteSize() > external_data_above
        # Written under a temporary name in the same folder: never a half-written file.
        part = os.path.join(tmp, output.name)
        data = output.name + ".data"
        if external:
            onnx.save(
                proto, part, save_as_external_data=True, all_tensors_to_one_file=True, location=data
            )
            shutil.copymode(part, os.path.join(tmp, data))  # onnx writes it owner-only
            os.replace(os.path.join(tmp, data), output.with_name(data))
        else:
            onnx.save(proto, part)
        os.replace(part, output)
    return meta


def timed_export_onnx(
    w: LoadedWeights, output: Path, **kwargs: Any
) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    meta = export_onnx(w, output, **kwargs)
    return meta, time.perf_counter() - t0


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    onnx = _onnx()
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} has no '{METADATA_KEY}' metadata entry; not a dinov2-export graph")
