# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_weights.cpp (folder `weights/`).

For every variant, random weights in the formats people download, and what dinov2-export makes
of them:
- `hf/`: a Hugging Face folder written by transformers' own `save_pretrained`, after
  transformers loaded our checkpoint without a missing or unexpected key;
- `official.pth`: the official checkpoint format (torch.save of the backbone's state dict);
- `export_hf.pt`: `dinov2-export` of the folder, and `export_official.pt` of the `.pth` at full
  depth (the features of every format are compared with `export_hf.pt`, the same weights);
- `architecture.pt` for the reduced depths (the library has the official depths built in).
S and S_reg are at full depth, B and L at 2 blocks, g at 1 (a g/14 block is 26M parameters).

`refuse/` holds the files each refusal test needs, among them a `.pth` whose pickle calls
`os.system`: loading it must fail without running anything.

Idempotent: a stamp records a digest of this script, the exporter and the torch version.

Usage: python tests/refgen/weights_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import sys
import time
import zipfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from dinov2_export.architecture import architecture
from dinov2_export.export import export
from dinov2_export.model import DinoV2
from dinov2_export.variants import Variant, get_variant
from dinov2_export.weights import load_weights, random_state_dict, to_huggingface
from model_refs import stamp_digest as exporter_digest

# name: (variant, depth or None for the official depth, seed)
CASES = {
    "s": ("dinov2_vits14", None, 10),
    "s_reg": ("dinov2_vits14_reg", None, 11),
    "b": ("dinov2_vitb14", 2, 12),
    "b_reg": ("dinov2_vitb14_reg", 2, 13),
    "l": ("dinov2_vitl14", 2, 14),
    "l_reg": ("dinov2_vitl14_reg", 2, 15),
    "g": ("dinov2_vitg14", 1, 16),
    "g_reg": ("dinov2_vitg14_reg", 1, 17),
}
#: Where the callable in refuse/callable.pth would leave its mark if it ever ran.
MARKER = "callable_ran"


def stamp_digest() -> str:
    """model_refs' digest (the exporter's sources, torch's version) and this script."""
    return hashlib.sha256((exporter_digest() + Path(__file__).read_text()).encode()).hexdigest()


def hf_config(variant: Variant, depth: int):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    kw = {
        "hidden_size": variant.embed_dim,
        "num_hidden_layers": depth,
        "num_attention_heads": variant.num_heads,
        "mlp_ratio": 4,
        "image_size": 518,
        "patch_size": 14,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "use_swiglu_ffn": variant.ffn == "swiglu",
    }
    if variant.has_registers:
        return Dinov2WithRegistersConfig(num_register_tokens=variant.num_register_tokens, **kw)
    return Dinov2Config(**kw)


def save_pretrained(variant: Variant, depth: int, sd: dict, folder: Path) -> None:
    """transformers loads our Hugging Face-named weights, then writes the folder itself."""
    from safetensors.torch import save_file
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    hf_config(variant, depth).to_json_file(str(staging / "config.json"))
    save_file(to_huggingface(sd), str(staging / "model.safetensors"))
    cls = Dinov2WithRegistersModel if variant.has_registers else Dinov2Model
    model, info = cls.from_pretrained(str(staging), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys")}
    if bad:
        raise SystemExit(f"weights_refs: transformers did not load every weight: {bad}")
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(folder))
    shutil.rmtree(staging)


def official_pth(variant: Variant, depth: int, sd: dict, path: Path) -> None:
    """torch.save of the backbone's state dict (an OrderedDict with its _metadata)."""
    model = DinoV2(variant, depth=depth)
    model.load_state_dict(sd, strict=True)
    torch.save(model.state_dict(), path)


def make_case(out: Path, name: str) -> None:
    variant_name, depth, seed = CASES[name]
    variant = get_variant(variant_name)
    d = variant.depth if depth is None else depth
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    sd = random_state_dict(variant, d, seed)
    official_pth(variant, d, sd, folder / "official.pth")
    save_pretrained(variant, d, sd, folder / "hf")
    if depth is None:  # the metadata of an official source is compared at full depth only
        export(load_weights(str(folder / "official.pth"), depth=d), folder / "export_official.pt")
    export(load_weights(str(folder / "hf"), depth=d), folder / "export_hf.pt")
    if depth is not None:
        (folder / "architecture.pt").write_bytes(architecture(variant, d))


def refusal_files(out: Path) -> None:
    """Files that Model::load must refuse, each for one named reason; from a 2-block S/14."""
    r = out / "refuse"
    shutil.rmtree(r, ignore_errors=True)
    r.mkdir(parents=True)
    variant = get_variant("dinov2_vits14")
    sd = random_state_dict(variant, 2, 20)
    (r / "architecture.pt").write_bytes(architecture(variant, 2))
    official_pth(variant, 2, sd, r / "good.pth")

    torch.save({k: v for k, v in sd.items() if k != "blocks.1.norm1.weight"}, r / "missing_key.pth")
    torch.save({**sd, "blocks.1.extra.weight": torch.zeros(3)}, r / "unexpected_key.pth")
    torch.save({**sd, "norm.weight": torch.zeros(383)}, r / "wrong_shape.pth")
    torch.save({**sd, "cls_token": "not a tensor"}, r / "not_a_tensor.pth")

    save_pretrained(variant, 2, sd, r / "hf")
    conflicting = r / "hf_conflicting_config"
    shutil.copytree(r / "hf", conflicting)
    cfg = json.loads((conflicting / "config.json").read_text())
    cfg["num_hidden_layers"] = 12
    (conflicting / "config.json").write_text(json.dumps(cfg, indent=2))

    data = (r / "hf" / "model.safetensors").read_bytes()
    (r / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    from safetensors.torch import save_file

    hf = to_huggingface(sd)
    save_file(
        {**hf, "encoder.layer.0.attention.bogus.weight": torch.zeros(2)},
        r / "wrong_key.safetensors",
    )
    hf_bad = dict(hf)
    hf_bad["encoder.layer.1.mlp.fc1.weight"] = torch.zeros(1536, 380)
    save_file(hf_bad, r / "wrong_shape.safetensors")
    # A training checkpoint whose state dicts come after 300 memoised strings, so the pickle
    # names the OrderedDict class by a four-byte memo index (LONG_BINPUT, LONG_BINGET); the
    # student's weights differ, so picking or reading the wrong dict shows.
    model = DinoV2(variant, depth=2)
    model.load_state_dict(sd, strict=True)
    student = {k: torch.zeros_like(v) for k, v in sd.items()}
    notes = [f"note {i}" for i in range(300)]
    nested = {"notes": notes, "student": model.state_dict(), "teacher": model.state_dict()}
    nested["student"].update(student)
    torch.save(nested, r / "nested_long_memo.pth")
    pth = (r / "good.pth").read_bytes()
    (r / "truncated.pth").write_bytes(pth[: len(pth) // 2])
    torch.save(sd, r / "legacy.pth", _use_new_zipfile_serialization=False)

    # A checkpoint whose pickle calls os.system when Python's unrestricted pickle reads it.
    class Callable:
        def __reduce__(self):
            return (os.system, (f"touch {out / MARKER}",))

    with zipfile.ZipFile(r / "good.pth") as zin, zipfile.ZipFile(r / "callable.pth", "w") as zout:
        for item in zin.infolist():
            body = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                body = pickle.dumps({"cls_token": Callable()}, protocol=2)
            zout.writestr(item, body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="test data folder")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = p.parse_args()
    out: Path = args.out / "weights"
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "weights_refs.stamp"
    digest = stamp_digest()
    if not args.force and stamp.exists() and stamp.read_text().strip() == digest:
        print(f"weights_refs: up to date in {out}")
        return 0
    stamp.unlink(missing_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    for name in CASES:
        t0 = time.perf_counter()
        make_case(out, name)
        print(f"weights_refs: {name} in {time.perf_counter() - t0:.1f} s")
    refusal_files(out)
    stamp.write_text(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
