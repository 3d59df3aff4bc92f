# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_model.cpp (files prefixed `model_`).

Exports small random-weight backbones with the exporter API and records, for fixed random
inputs, what PyTorch computes with the very same files (`torch.jit.load`) and with the eager
`dinov2_export.model.DinoV2`. Intermediate layers and the CLS attention are also recomputed
here by walking the eager blocks by hand, so the C++ side is checked against code that does not
share the exported methods. It also writes the broken files the error-path tests need.

Idempotent: a stamp records a digest of this script, the exporter sources and the torch version;
when it matches and every file exists, the script returns at once.

Usage: python tests/refgen/model_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickletools
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

import dinov2_export
from dinov2_export.export import METADATA_FILE, export
from dinov2_export.weights import LoadedWeights, build_model, load_weights, sha256_state_dict

Tensor = torch.Tensor

# name: (variant, depth or None for the full model, seed, [(H, W, B), ...])
MODELS: Dict[str, Tuple[str, int | None, int, List[Tuple[int, int, int]]]] = {
    "model_s4reg": (
        "dinov2_vits14_reg",
        4,
        0,
        [(h, w, b) for (h, w) in ((224, 224), (126, 350), (518, 518)) for b in (1, 4)],
    ),
    "model_s4": (
        "dinov2_vits14",
        4,
        1,
        [(h, w, b) for (h, w) in ((224, 224), (126, 350), (518, 518)) for b in (1, 4)],
    ),
    # The full-depth S/14, at two cheap sizes only: the depth the real weights have.
    "model_s12": ("dinov2_vits14", None, 2, [(224, 224, 1), (126, 350, 1)]),
}
# Intermediate-layer and attention references, on the non-square input of batch 4.
LAYER_SIZE = (126, 350, 4)
LAYER_QUERIES = {"norm": ([0, 2, -1], True), "raw": ([-3, 1], False)}
BROKEN = [
    "model_not_archive.txt",
    "model_state_dict.pt",
    "model_nometa.pt",
    "model_v99.pt",
    "model_wrong_format.pt",
    "model_bad_json.pt",
    "model_missing_field.pt",
    "model_no_methods.pt",
    "model_wrong_patch.pt",
    "model_bad_code.pt",
    "model_pickle_bomb.pt",
    "model_fp16_overflow.pt",
]


def key(h: int, w: int, b: int) -> str:
    return f"{h}x{w}_b{b}"


def stamp_digest() -> str:
    d = hashlib.sha256()
    d.update(Path(__file__).read_bytes())
    pkg = Path(dinov2_export.__file__).parent
    for f in sorted(pkg.glob("*.py")):
        d.update(f.name.encode())
        d.update(f.read_bytes())
    d.update(torch.__version__.encode())
    return d.hexdigest()


def manual_blocks(eager, x: Tensor) -> List[Tensor]:
    """Token sequence after each block, by walking the eager blocks one by one."""
    tokens = eager.prepare_tokens(x)
    outs = []
    for blk in eager.blocks:
        tokens = blk(tokens)
        outs.append(tokens)
    return outs


def manual_cls_attention(eager, x: Tensor) -> Tensor:
    """CLS-query softmax attention in the last block, written out from the weights."""
    tokens = eager.prepare_tokens(x)
    for blk in eager.blocks[:-1]:
        tokens = blk(tokens)
    last = eager.blocks[-1]
    y = last.norm1(tokens)
    b, n, d = y.shape
    heads = last.attn.num_heads
    qkv = F.linear(y, last.attn.qkv.weight, last.attn.qkv.bias).reshape(b, n, 3, heads, d // heads)
    q = qkv[:, 0, 0]  # [B, heads, hd]: the CLS query
    k = qkv[:, :, 1]  # [B, N, heads, hd]
    logits = torch.einsum("bhc,bnhc->bhn", q, k) / (d // heads) ** 0.5
    return logits.softmax(-1)[:, :, 1 + eager.num_register_tokens :]


def model_refs(out: Path, name: str) -> None:
    variant, depth, seed, sizes = MODELS[name]
    w = load_weights("random", variant, seed=seed, depth=depth)
    path = out / f"{name}.pt"
    export(w, path)
    scripted = torch.jit.load(str(path), map_location="cpu")
    eager = build_model(w)
    g = torch.Generator().manual_seed(1000 + seed)
    refs: Dict[str, Tensor] = {}
    with torch.inference_mode():
        for h, wd, b in sizes:
            k = key(h, wd, b)
            x = torch.randn(b, 3, h, wd, generator=g)
            cls, regs, patches, prenorm = scripted(x)
            refs.update(
                {
                    f"x_{k}": x,
                    f"cls_{k}": cls,
                    f"registers_{k}": regs,
                    f"patches_{k}": patches,
                    f"pooled_{k}": torch.cat([cls, patches.mean(1)], -1),
                    f"normcls_{k}": F.normalize(cls, dim=-1),
                }
            )
            if h != 518:  # the large tensors only where they are cheap
                refs[f"prenorm_{k}"] = prenorm
                refs[f"normpatches_{k}"] = F.normalize(patches, dim=-1)
            if b == 1:  # the eager model agrees bit for bit today; CLS is enough to keep it so
                refs[f"eager_cls_{k}"] = eager(x)[0]
        if name != "model_s12":
            h, wd, b = LAYER_SIZE
            x = refs[f"x_{key(h, wd, b)}"]
            per_block = manual_blocks(eager, x)
            r = eager.num_register_tokens
            for label, (indices, norm) in LAYER_QUERIES.items():
                refs[f"layers_{label}_indices"] = torch.tensor(indices)
                for pos, i in enumerate(indices):
                    t = per_block[i]
                    t = eager.norm(t) if norm else t
                    refs[f"layers_{label}_patches_{pos}"] = t[:, 1 + r :]
                    refs[f"layers_{label}_cls_{pos}"] = t[:, 0]
            refs["attention_jit"] = scripted.cls_attention(x)
            refs["attention_manual"] = manual_cls_attention(eager, x)
    torch.save({k: v.contiguous() for k, v in refs.items()}, out / f"{name}_refs.pt")


class Tiny(torch.nn.Module):
    """A TorchScript module that is not a backbone."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1


def broken_files(out: Path) -> None:
    (out / "model_not_archive.txt").write_text("this is a text file, not a model\n")
    torch.save({"cls_token": torch.zeros(1, 1, 384)}, out / "model_state_dict.pt")
    tiny = torch.jit.script(Tiny())
    tiny.save(str(out / "model_nometa.pt"))

    extra = {METADATA_FILE: ""}
    torch.jit.load(str(out / "model_s4reg.pt"), _extra_files=extra)
    good = json.loads(extra[METADATA_FILE])

    def with_meta(file: str, text: str) -> None:
        tiny.save(str(out / file), _extra_files={METADATA_FILE: text})

    with_meta(
        "model_v99.pt", json.dumps({**good, "format_version": 99, "exporter_version": "9.0.0"})
    )
    with_meta("model_wrong_format.pt", json.dumps({**good, "format": "dinov2-checkpoint"}))
    with_meta("model_bad_json.pt", '{"format": "dinov2-backbone", "format_version": 1,')
    with_meta(
        "model_missing_field.pt", json.dumps({k: v for k, v in good.items() if k != "embed_dim"})
    )
    with_meta("model_no_methods.pt", json.dumps(good))

    # A real export whose metadata lies about the graph, and one whose code does not compile.
    def rewrite(file: str, edit) -> None:
        src = out / "model_s4reg.pt"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out / file, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))

    def patch16(name: str, data: bytes) -> bytes:
        return (
            json.dumps({**good, "patch_size": 16}).encode()
            if name.endswith(METADATA_FILE)
            else data
        )

    def syntax_error(name: str, data: bytes) -> bytes:
        return data + b"\ndef (:\n" if name.endswith("dinov2_export/model.py") else data

    # Found by fuzz_model: a string in data.pkl claiming 3.4 GB made LibTorch's unpickler
    # allocate it before finding the record 2 KB long.
    def string_bomb(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        for op, _, pos in pickletools.genops(data):
            if op.name == "BINUNICODE":
                return data[: pos + 1] + struct.pack("<I", 0xCD000001) + data[pos + 5 :]
        raise AssertionError("data.pkl has no BINUNICODE opcode")

    rewrite("model_wrong_patch.pt", patch16)
    rewrite("model_bad_code.pt", syntax_error)
    rewrite("model_pickle_bomb.pt", string_bomb)

    # Activations above the float16 range (65504): fine in float32, Inf then NaN in float16.
    w = load_weights("random", "dinov2_vits14_reg", seed=3, depth=1)
    sd = dict(w.state_dict)
    sd["cls_token"] = torch.full_like(sd["cls_token"], 7.0e4)
    sd["register_tokens"] = torch.full_like(sd["register_tokens"], 7.0e4)
    big = LoadedWeights(
        sd, w.variant, w.depth, w.pos_grid, "random", sha256_state_dict(sd), w.extra
    )
    export(big, out / "model_fp16_overflow.pt")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="test data folder")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "model_refs.stamp"
    digest = stamp_digest()
    wanted = [f"{n}.pt" for n in MODELS] + [f"{n}_refs.pt" for n in MODELS] + BROKEN
    wanted.append("model_refs_machine.json")
    if (
        not args.force
        and stamp.exists()
        and stamp.read_text().strip() == digest
        and all((out / f).exists() for f in wanted)
    ):
        print(f"model_refs: up to date in {out}")
        return 0
    stamp.unlink(missing_ok=True)
    for name in MODELS:
        t0 = time.perf_counter()
        model_refs(out, name)
        print(f"model_refs: {name} in {time.perf_counter() - t0:.1f} s")
    broken_files(out)
    # The ISA the references were computed under: the C++ tests expect bit-identical results
    # only from a process that runs the same kernels (tests/unit/test_model.cpp, exactness()).
    machine = {
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_limit": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "onednn_limit": os.environ.get(
            "ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")
        ),
    }
    (out / "model_refs_machine.json").write_text(json.dumps(machine) + "\n")
    stamp.write_text(digest + "\n")
    print(f"model_refs: wrote {len(wanted)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
