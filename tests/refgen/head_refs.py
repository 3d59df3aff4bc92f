# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_heads.cpp (files prefixed `heads_`).

Exports a full-depth ViT-S/14 with random weights (12 blocks, so that the official depth-head
block indices 2, 5, 8, 11 exist) and seeded random heads of every kind, runs the backbone file
with PyTorch on a fixed non-square batch, and records the head outputs computed by the official
head maths (`dinov2_export.heads.official_*`, from the official-format state dicts, not from the
exported modules). The backbone outputs the heads read are saved too, so that the C++ heads can
be checked on exactly the same inputs as well as end to end. It also writes the mismatched and
broken head files the error-path tests need.

Idempotent: a stamp records a digest of this script, the exporter sources and the torch version;
when it matches and every file exists, the script returns at once.

Usage: python tests/refgen/head_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import pickletools
import struct
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Dict, List, Tuple

import torch

import dinov2_export
from dinov2_export import heads as H
from dinov2_export.export import export
from dinov2_export.variants import get_variant
from dinov2_export.weights import load_weights

Tensor = torch.Tensor

BACKBONE = "dinov2_vits14"
BACKBONE_SEED = 21
SIZE = (2, 70, 126)  # B, H, W: a 5 x 9 patch grid
# file stem: (exporter kind, dataset, seed)
HEADS: Dict[str, Tuple[str, str, int]] = {
    "heads_linear": ("linear", "imagenet", 1),
    "heads_linear4": ("linear4", "imagenet", 2),
    "heads_depth_nyu": ("depth_linear", "nyu", 3),
    "heads_depth4_kitti": ("depth_linear4", "kitti", 4),
    "heads_seg_ade20k": ("seg_linear", "ade20k", 5),
    "heads_seg_voc2012": ("seg_linear", "voc2012", 6),
}
OTHER = [
    "heads_backbone.pt",
    "heads_backbone_d2.pt",
    "heads_linear_vitb14.pt",
    "heads_linear_vits14_reg.pt",
    "heads_v99.pt",
    "heads_no_json.pt",
    "heads_not_archive.pth",
    "heads_bad_pickle.pt",
    "heads_memo_bomb.pt",
    "heads_bad_debug.pt",
    "heads_refs.pt",
]


def stamp_digest() -> str:
    d = hashlib.sha256()
    d.update(Path(__file__).read_bytes())
    pkg = Path(dinov2_export.__file__).parent
    for f in sorted(pkg.glob("*.py")) + sorted((pkg / "data").glob("*")):
        d.update(f.name.encode())
        d.update(f.read_bytes())
    d.update(torch.__version__.encode())
    return d.hexdigest()


def export_head(out: Path, stem: str, kind: str, dataset: str, seed: int, backbone: str = BACKBONE):
    hw = H.load_head_weights("random", kind, backbone, dataset, seed)
    meta = H.export_head(hw, out / f"{stem}.pt")
    return hw.state_dict, meta


def to_map(p: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, D] -> [B, D, h, w] (the official reshape=True layout)."""
    return p.transpose(1, 2).reshape(p.shape[0], p.shape[2], h, w)


def grid(p: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, D] -> [B, h, w, D] (the C++ Features layout)."""
    return p.reshape(p.shape[0], h, w, p.shape[2])


def refs(out: Path) -> None:
    w = load_weights("random", BACKBONE, seed=BACKBONE_SEED)
    export(w, out / "heads_backbone.pt")
    backbone = torch.jit.load(str(out / "heads_backbone.pt"), map_location="cpu")
    b, height, width = SIZE
    h, wd = height // 14, width // 14
    x = torch.randn(b, 3, height, width, generator=torch.Generator().manual_seed(77))
    r: Dict[str, Tensor] = {"pixels": x}
    with torch.inference_mode():
        cls, _, patches, _ = backbone(x)
        r["features/cls"] = cls
        r["features/patches"] = grid(patches, h, wd)
        for stem, (kind, dataset, seed) in HEADS.items():
            sd, meta = export_head(out, stem, kind, dataset, seed)
            blocks: List[int] = meta["blocks"]
            lp, lc = backbone.intermediate_layers(x, blocks, meta["norm"])
            for i in range(len(blocks)):
                r[f"{stem}/layers/patches{i}"] = grid(lp[i], h, wd)
                r[f"{stem}/layers/cls{i}"] = lc[i]
            if kind.startswith("linear"):
                logits = H.official_classifier(sd, lc, lp[-1])
                top = logits.softmax(1).topk(5, dim=1)
                r[f"{stem}/logits"] = logits
                r[f"{stem}/top5"] = top.indices
                r[f"{stem}/top5_prob"] = top.values
            elif kind.startswith("depth"):
                depth = H.official_depth(
                    sd,
                    [to_map(p, h, wd) for p in lp],
                    lc,
                    meta["min_depth"],
                    meta["max_depth"],
                    (height, width),
                )
                r[f"{stem}/depth"] = depth[:, 0]
            else:
                logits = H.official_segmentation(sd, to_map(lp[0], h, wd))
                up = torch.nn.functional.interpolate(
                    logits, size=[height, width], mode="bilinear", align_corners=False
                )
                top2 = up.topk(2, dim=1).values
                r[f"{stem}/logits"] = logits
                r[f"{stem}/labels"] = up.argmax(1)
                r[f"{stem}/margin"] = top2[:, 0] - top2[:, 1]
    torch.save({k: v.contiguous() for k, v in r.items()}, out / "heads_refs.pt")


class Tiny(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1


def error_files(out: Path) -> None:
    # A reduced backbone (2 blocks): the depth heads' block 11 does not exist there.
    reduced = load_weights("random", BACKBONE, seed=BACKBONE_SEED, depth=2)
    export(reduced, out / "heads_backbone_d2.pt")
    export_head(out, "heads_linear_vitb14", "linear", "imagenet", 1, backbone="dinov2_vitb14")
    export_head(
        out, "heads_linear_vits14_reg", "linear", "imagenet", 1, backbone="dinov2_vits14_reg"
    )
    meta = H.read_head_metadata(out / "heads_linear.pt")
    tiny = torch.jit.script(Tiny())
    newer = json.dumps({**meta, "format_version": 99})
    tiny.save(str(out / "heads_v99.pt"), _extra_files={H.HEAD_FILE: newer})
    tiny.save(str(out / "heads_no_json.pt"))
    k, v = H.KINDS["linear"], get_variant(BACKBONE)
    torch.save(H.random_head_state_dict(k, v, "imagenet"), out / "heads_not_archive.pth")

    def edit_pickle(
        dest: str,
        edit: Callable[[bytes], bytes],
        record: str = "/data.pkl",
        src: str = "heads_linear.pt",
    ) -> None:
        """`src` with each record whose name ends with `record` passed through `edit`."""
        with (
            zipfile.ZipFile(out / src) as zin,
            zipfile.ZipFile(out / dest, "w") as zout,
        ):
            for info in zin.infolist():
                data = zin.read(info.filename)
                zout.writestr(info.filename, edit(data) if info.filename.endswith(record) else data)

    def memo_bomb(data: bytes) -> bytes:
        put = next(p for op, _, p in pickletools.genops(data) if op.name == "BINPUT")
        return data[:put] + b"r" + struct.pack("<I", 1 << 30) + data[put + 2 :]

    # Found by fuzz/fuzz_head: a pickle naming a type TorchScript cannot parse made its compiler
    # throw torch::jit::ErrorReport, which is not a c10::Error, out of the head loaders.
    edit_pickle(
        "heads_bad_pickle.pt", lambda d: d.replace(b"_rebuild_tensor_v2", b"_rebu-ld_tensor_v2")
    )
    # Also found by fuzz_head: a memo index of 2^30 made the unpickler size its memo table to
    # 16 GB. The first BINPUT becomes a LONG_BINPUT far past the entries stored so far.
    edit_pickle("heads_memo_bomb.pt", memo_bomb)
    # The CI smoke run of fuzz_head found damaged source ranges in the debug pickles that made
    # ErrorReport::what() (noexcept) throw, terminating the process; that input was not kept. The
    # loaders now leave the debug pickles unread: with garbage in them (well-formed pickles of the
    # wrong structure) the file gives the same compile error as heads_bad_pickle.pt.
    edit_pickle(
        "heads_bad_debug.pt",
        lambda d: pickle.dumps((1, "not source ranges"), protocol=2),
        record=".debug_pkl",
        src="heads_bad_pickle.pt",
    )
    # Also found by fuzz_head: a memo index of 2^30 made the unpickler size its memo table to
    # 16 GB. The first BINPUT becomes a LONG_BINPUT far past the entries stored so far.
    with (
        zipfile.ZipFile(out / "heads_linear.pt") as zin,
        zipfile.ZipFile(out / "heads_memo_bomb.pt", "w") as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                put = next(p for op, _, p in pickletools.genops(data) if op.name == "BINPUT")
                data = data[:put] + b"r" + struct.pack("<I", 1 << 30) + data[put + 2 :]
            zout.writestr(info.filename, data)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="test data folder")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = p.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "heads_refs.stamp"
    digest = stamp_digest()
    wanted = [f"{stem}.pt" for stem in HEADS] + OTHER
    if (
        not args.force
        and stamp.exists()
        and stamp.read_text().strip() == digest
        and all((out / f).exists() for f in wanted)
    ):
        print(f"head_refs: up to date in {out}")
        return 0
    stamp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    refs(out)
    error_files(out)
    stamp.write_text(digest + "\n")
    print(f"head_refs: wrote {len(wanted)} files to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
