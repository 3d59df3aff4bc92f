# SPDX-License-Identifier: Apache-2.0
"""The Python side of the benchmark: what a user would otherwise run.

Model: transformers' Dinov2Model / Dinov2WithRegistersModel (SDPA attention) in eager PyTorch
under torch.inference_mode, with the weights of the exported file, on the same torch build and
thread count as the C++ side. Preprocessing: PIL resize (bicubic, antialiased) + to-tensor +
normalise, which is what torchvision's Resize/ToTensor/Normalize do on PIL images (torchvision
itself does not import beside the CPU torch wheel, so those three steps are written out with
numpy). Each mode prints one JSON object; times in seconds.

With --device cuda (model mode) the model and its SDPA attention run on the GPU; the batch starts
on the CPU as in the C++ harness and is copied in each timed call (`x.to(device, dtype)`; with
--input pinned a non-blocking copy from page-locked memory; with --input cuda the batch is on the
GPU before the clock starts, the model alone), and the clock is read after
torch.cuda.synchronize(). The JSON then also holds the GPU's name and the peak GPU memory
(torch.cuda.max_memory_allocated).

    reference.py model      --model F --size S --batch B [--iters N] [--warmup W] [--threads T] [--dtype D]
                            [--device cpu|cuda] [--input cpu|pinned|cuda]
    reference.py preprocess --images DIR [--size S] [--iters N]
    reference.py e2e        --model F --images DIR [--size S] [--batch B] [--threads T] [--workers K]
                            [--hf-folder DIR] [--save F.safetensors]
    reference.py hf-folder  --model F --hf-folder DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def peak_rss_mb(children: bool = False) -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if children:
        own += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return own


def hf_model_from_export(path: str, dtype: torch.dtype):
    """transformers' model holding exactly the parameters of an exported file, loaded by
    transformers itself from a folder in the Hugging Face layout (nothing is downloaded)."""
    import tempfile

    from conftest import hf_config  # the same config the parity tests use
    from safetensors.torch import save_file
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    from dinov2_export.export import read_metadata
    from dinov2_export.variants import get_variant
    from dinov2_export.weights import to_huggingface

    meta = read_metadata(Path(path))
    variant = get_variant(meta["variant"])
    scripted = torch.jit.load(path, map_location="cpu")
    sd = {k: v for k, v in scripted.state_dict().items() if k != "register_tokens" or v.numel()}
    cls = Dinov2WithRegistersModel if variant.has_registers else Dinov2Model
    with tempfile.TemporaryDirectory() as tmp:
        hf_config(variant, meta["depth"]).to_json_file(f"{tmp}/config.json")
        save_file(
            {k: v.float().contiguous() for k, v in to_huggingface(sd).items()},
            f"{tmp}/model.safetensors",
        )
        model = cls.from_pretrained(tmp, attn_implementation="sdpa")
    return model.eval().to(dtype)


def run_model(a) -> dict:
    if a.device == "cuda":
        return run_model_cuda(a)
    torch.set_num_threads(a.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    t0 = time.perf_counter()
    model = hf_model_from_export(a.model, dtype)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)  # the same input as the C++ side, for the checksum
    x = torch.randn(a.batch, 3, a.size, a.size).to(dtype)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            t = time.perf_counter()
            out = model(pixel_values=x).pooler_output
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "mode": "model",
        "load_s": load_s,
        "median_s": med,
        "times": times,
        "images_per_s": a.batch / med,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "checksum": float(out.float().sum()),
    }


def run_model_cuda(a) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit(f"reference.py: --device cuda, but torch {torch.__version__} sees no GPU")
    torch.set_num_threads(a.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    device = torch.device("cuda", torch.cuda.current_device())
    t0 = time.perf_counter()
    model = hf_model_from_export(a.model, dtype).to(device)
    torch.cuda.synchronize(device)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)  # the same input as the C++ side, for the checksum
    x = torch.randn(a.batch, 3, a.size, a.size)  # float32 on the CPU, like a preprocessed batch
    if a.input == "pinned":
        x = x.pin_memory()
    elif a.input == "cuda":
        x = x.to(device)
    pinned = a.input == "pinned"
    times = []
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            t = time.perf_counter()
            out = model(pixel_values=x.to(device, dtype, non_blocking=pinned)).pooler_output
            torch.cuda.synchronize(device)
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "mode": "model",
        "device": "cuda",
        "input": a.input,
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "attention": getattr(model.config, "_attn_implementation", None),
        "load_s": load_s,
        "median_s": med,
        "times": times,
        "images_per_s": a.batch / med,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "threads": torch.get_num_threads(),
        "checksum": float(out.float().sum()),
    }


def list_images(folder: str) -> list[str]:
    files = sorted(
        str(p) for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not files:
        raise SystemExit(f"no images in {folder}")
    return files


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(((arr - MEAN) / STD).transpose(2, 0, 1).copy())


def square(img: Image.Image, size: int) -> torch.Tensor:
    return to_normalised_tensor(img.resize((size, size), Image.BICUBIC))


def eval_crop(img: Image.Image, size: int) -> torch.Tensor:
    short = size * 256 // 224
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return to_normalised_tensor(img.crop((left, top, left + size, top + size)))


def run_preprocess(a) -> dict:
    images = [Image.open(f).convert("RGB") for f in list_images(a.images)]
    for im in images:
        im.load()
    per_image = []
    for it in range(a.iters + 1):
        for im in images:
            t = time.perf_counter()
            square(im, a.size)
            if it > 0:
                per_image.append(time.perf_counter() - t)
    return {
        "mode": "preprocess",
        "median_s": statistics.median(per_image),
        "images": len(images),
        "peak_rss_mb": peak_rss_mb(),
    }


class Files(torch.utils.data.Dataset):
    def __init__(self, files, size):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return eval_crop(im.convert("RGB"), self.size)


def write_hf_folder(path: str, folder: str) -> None:
    """The exported file's weights as a Hugging Face model folder (config.json +
    model.safetensors), what a Python user loads with from_pretrained."""
    hf_model_from_export(path, torch.float32).save_pretrained(folder)


def run_hf_folder(a) -> dict:
    write_hf_folder(a.model, a.hf_folder)
    return {"mode": "hf-folder", "folder": a.hf_folder}


def run_e2e(a) -> dict:
    torch.set_num_threads(a.threads)
    if a.hf_folder:
        # What a user's script does: load the model folder, then the DataLoader loop.
        from transformers import AutoModel

        model = AutoModel.from_pretrained(a.hf_folder, attn_implementation="sdpa").eval()
    else:
        model = hf_model_from_export(a.model, torch.float32)
    files = list_images(a.images)
    loader = torch.utils.data.DataLoader(
        Files(files, a.size), batch_size=a.batch, num_workers=a.workers
    )
    t0 = time.perf_counter()
    checksum = 0.0
    outputs = []
    with torch.inference_mode():
        for x in loader:
            cls = model(pixel_values=x).pooler_output
            checksum += float(cls.sum())
            outputs.append(cls)
    if a.save:
        from safetensors.torch import save_file

        save_file({"cls": torch.cat(outputs)}, a.save, metadata={"paths": json.dumps(files)})
    total = time.perf_counter() - t0
    return {
        "mode": "e2e",
        "total_s": total,
        "images": len(files),
        "images_per_s": len(files) / total,
        "peak_rss_mb": peak_rss_mb(children=True),
        "threads": torch.get_num_threads(),
        "checksum": checksum,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["model", "preprocess", "e2e", "hf-folder"])
    p.add_argument("--hf-folder", help="e2e: load this model folder; hf-folder: write it")
    p.add_argument("--save", help="e2e: write the CLS features to this safetensors file")
    p.add_argument("--model")
    p.add_argument("--images")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="model mode only")
    p.add_argument(
        "--input",
        choices=["cpu", "pinned", "cuda"],
        default="cpu",
        help="--device cuda: where the batch is (cpu: pageable memory, copied in each call)",
    )
    a = p.parse_args()
    modes = {"model": run_model, "preprocess": run_preprocess, "e2e": run_e2e}
    result = {**modes, "hf-folder": run_hf_folder}[a.mode](a)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
