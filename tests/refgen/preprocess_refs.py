# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_preprocess.cpp (files prefixed `preprocess_`).

The reference pipeline is the one the official DINOv2 evaluation and the Hugging Face processor
run: PIL's `Image.resize(size, Image.BICUBIC)` on an RGB image (alpha dropped with
`convert("RGB")`, gray replicated the same way), the recipe's crop with torchvision's offsets,
then ToTensor and Normalize. torchvision is not installed here, so ToTensor (`x / 255` in
float32, HWC -> CHW) and Normalize (`(x - mean) / std` in float32) are written with numpy; the
arithmetic is the same. The recipe geometry is written out below from the formulas in
docs/PREPROCESSING.md, independently of the C++ code.

Inputs: the sample photographs in examples/data (decoded with PIL; the decoded pixels are saved
so that the C++ side resizes exactly the same pixels) and synthetic images with sharp edges,
odd sizes, upscaling, gray and RGBA variants. Floating (and 16-bit) inputs are compared with
Pillow's mode "F" resize, channel by channel.

Output: `preprocess_refs.pt`, a `torch.save`d dict with the keys
  input/NAME              uint8 [H, W, C] (C = 1, 3 or 4, RGB(A) order), float32 [H, W, 3] in
                          [0, 1] for NAME starting with "float_", int32 [H, W, 3] holding uint16
                          values for NAME starting with "u16_"
  decoded/FILE            uint8 [H, W, 3]: PIL's RGB decoding of examples/data/FILE
  NAME@RECIPE/resized     uint8 [h, w, 3], or float32 for float/u16 inputs: before normalisation
  NAME@RECIPE/pixels      float32 [3, h, w], normalised (stored for a subset, to keep the file
                          small; see wants_pixels)
where RECIPE is the C++ Recipe::to_string() text, e.g. "eval_center_crop(256,224)".

Idempotent: a stamp records a digest of this script, the sample images and the Pillow and numpy
versions; when it matches and the output exists, the script returns at once.

Usage: python tests/refgen/preprocess_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import PIL
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "data"
PHOTO_FILES = ["astronaut.jpg", "coffee.jpg", "chelsea.png", "rocket.jpg", "camera.png"]
OUTPUT = "preprocess_refs.pt"
STAMP = "preprocess_refs.stamp"
PATCH = 14

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (top, left, height, width) of the crop in the resized image, or None for no crop.
Crop = Optional[Tuple[int, int, int, int]]
# A recipe maps (height, width) to ((resized height, resized width), crop).
Geometry = Callable[[int, int], Tuple[Tuple[int, int], Crop]]


def square(size: int) -> Tuple[str, Geometry]:
    return f"square({size})", lambda h, w: ((size, size), None)


def fixed(height: int, width: int) -> Tuple[str, Geometry]:
    return f"resize({height},{width})", lambda h, w: ((height, width), None)


def eval_center_crop(resize: int, crop: int) -> Tuple[str, Geometry]:
    def geometry(h: int, w: int) -> Tuple[Tuple[int, int], Crop]:
        # torchvision Resize(resize) on a PIL image: the shorter side becomes `resize`, the
        # longer int(resize * long / short).
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        # torchvision CenterCrop offsets (Python's round: half to even).
        top = int(round((new_h - crop) / 2.0))
        left = int(round((new_w - crop) / 2.0))
        return (new_h, new_w), (top, left, crop, crop)

    return f"eval_center_crop({resize},{crop})", geometry


def patch_aligned(max_side: int, max_tokens: int) -> Tuple[str, Geometry]:
    def geometry(h: int, w: int) -> Tuple[Tuple[int, int], Crop]:
        s = max_side / max(h, w)
        r, c = h * s / PATCH, w * s / PATCH
        rows, cols = max(1, math.floor(r + 0.5)), max(1, math.floor(c + 0.5))
        if rows * cols > max_tokens:
            g = math.sqrt(max_tokens / (r * c))
            rows, cols = max(1, math.floor(r * g)), max(1, math.floor(c * g))
            if rows * cols > max_tokens:
                if rows == 1:
                    cols = max_tokens
                else:
                    rows = max_tokens // cols
        return (rows * PATCH, cols * PATCH), None

    return f"patch_aligned({max_side},{max_tokens})", geometry


RECIPES: List[Tuple[str, Geometry]] = [
    square(518),
    square(224),
    eval_center_crop(256, 224),
    patch_aligned(518, 16384),
    patch_aligned(224, 64),
    fixed(224, 308),
]
# The recipes run on the floating and 16-bit inputs (fewer: the float path shares the geometry).
FLOAT_RECIPES = [RECIPES[0], RECIPES[2], RECIPES[3]]


def synthetic() -> Dict[str, np.ndarray]:
    """Images with sharp edges, odd sizes and the corner cases of the channel handling."""
    rng = np.random.default_rng(20240601)
    out: Dict[str, np.ndarray] = {}

    # Checkerboards: 1-pixel squares on the left (aliasing), 7-pixel squares on the right, in
    # saturated colours so that the bicubic overshoot is clipped at 0 and 255.
    h, w = 333, 517
    y, x = np.mgrid[0:h, 0:w]
    fine = ((y + x) % 2).astype(bool)
    coarse = ((y // 7 + x // 7) % 2).astype(bool)
    board = np.where(x < w // 2, fine, coarse)
    img = np.zeros((h, w, 3), np.uint8)
    img[board] = (255, 0, 255)
    img[~board] = (0, 255, 0)
    out["checker_333x517"] = img

    # Thin lines, tall and narrow: 1-pixel white lines every 9 rows and a vertical one.
    h, w = 1000, 37
    img = np.full((h, w, 3), 40, np.uint8)
    img[::9, :, :] = 255
    img[:, 18, :] = (255, 0, 0)
    img[500:510, :, 2] = 255
    out["lines_1000x37"] = img

    # A smooth gradient, small: every recipe upscales it.
    h, w = 100, 60
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1)
    out["gradient_100x60"] = img.astype(np.uint8)

    # Full-HD noise: the worst case for rounding agreement, and the timing size.
    out["noise_1080x1920"] = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    # The smallest image a patch can cover.
    out["tiny_14x14"] = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
    # Gray (1 channel) noise with odd sides.
    out["gray_257x255"] = rng.integers(0, 256, (257, 255, 1), dtype=np.uint8)
    # RGBA: random colour and alpha; alpha must be dropped, not composited.
    out["rgba_241x389"] = rng.integers(0, 256, (241, 389, 4), dtype=np.uint8)
    return out


def photos() -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for name in PHOTO_FILES:
        with Image.open(PHOTOS / name) as im:
            arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        out[Path(name).stem] = np.ascontiguousarray(arr)
    return out


def to_pil_rgb(arr: np.ndarray) -> Image.Image:
    """The image as the official pipeline sees it after `Image.open(...).convert("RGB")`."""
    # Image.fromarray infers L, RGB or RGBA from the shape.
    src = arr[:, :, 0] if arr.shape[2] == 1 else arr
    return Image.fromarray(np.ascontiguousarray(src)).convert("RGB")


def resize_and_crop(im: Image.Image, geometry: Geometry) -> Image.Image:
    (rh, rw), crop = geometry(im.height, im.width)
    out = im.resize((rw, rh), Image.BICUBIC)
    if crop is not None:
        top, left, ch, cw = crop
        out = out.crop((left, top, left + cw, top + ch))
    return out


def normalise(hwc: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize: float32 [3, H, W]."""
    x = hwc.astype(np.float32)
    if hwc.dtype == np.uint8:
        x = x / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_float(arr: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Pillow's mode "F" resize of each channel of a float32 [H, W, 3] image (fromarray infers
    mode "F" from float32)."""
    planes = [np.ascontiguousarray(arr[:, :, c]) for c in range(3)]
    channels = [resize_and_crop(Image.fromarray(p), geometry) for p in planes]
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels], -1)


def wants_pixels(name: str, recipe: str) -> bool:
    """Normalised references for the photographs and the gray, RGBA and floating inputs (the
    normalisation is per pixel, so the synthetic 8-bit colour images add nothing), and at 518
    only for one colour photograph, the gray one and the floating one, to keep the file small."""
    if name.startswith(("checker", "lines", "gradient", "noise", "tiny")):
        return False
    if recipe.startswith(("square(518)", "patch_aligned(518")):
        return name in ("astronaut", "camera", "float_coffee")
    return True


def digest() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for name in PHOTO_FILES:
        h.update((PHOTOS / name).read_bytes())
    h.update(PIL.__version__.encode())
    h.update(np.__version__.encode())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="test data folder")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = args.out / STAMP
    if (
        not args.force
        and (args.out / OUTPUT).exists()
        and stamp.exists()
        and stamp.read_text() == digest()
    ):
        print(f"{OUTPUT} is up to date")
        return 0

    start = time.time()
    tensors: Dict[str, torch.Tensor] = {}
    inputs = {**photos(), **synthetic()}
    for name in PHOTO_FILES:
        with Image.open(PHOTOS / name) as im:
            tensors[f"decoded/{name}"] = torch.from_numpy(np.array(im.convert("RGB")))

    for name, arr in inputs.items():
        tensors[f"input/{name}"] = torch.from_numpy(arr.copy())
        im = to_pil_rgb(arr)
        for recipe, geometry in RECIPES:
            resized = np.array(resize_and_crop(im, geometry))
            key = f"{name}@{recipe}"
            tensors[f"{key}/resized"] = torch.from_numpy(resized)
            if wants_pixels(name, recipe):
                tensors[f"{key}/pixels"] = torch.from_numpy(normalise(resized))

    # Floating inputs: a photograph plus a little noise (so that it is not 8-bit data in
    # disguise), and a 16-bit image; both resized in floating point as Pillow's mode "F".
    rng = np.random.default_rng(7)
    coffee = inputs["coffee"].astype(np.float32) / np.float32(255.0)
    noisy = np.clip(coffee + rng.normal(0, 0.01, coffee.shape).astype(np.float32), 0, 1)
    floats = {"float_coffee": noisy.astype(np.float32)}
    u16 = (inputs["chelsea"].astype(np.uint32) * 257).astype(np.uint16)
    u16 = (u16 ^ rng.integers(0, 256, u16.shape, dtype=np.uint16)).astype(np.uint16)
    floats["u16_chelsea"] = u16.astype(np.float32) / np.float32(65535.0)
    # Tall float noise: Pillow 13 resizes it vertically first.
    floats["float_tall"] = rng.random((700, 90, 3), dtype=np.float32)
    tensors["input/float_coffee"] = torch.from_numpy(floats["float_coffee"])
    tensors["input/float_tall"] = torch.from_numpy(floats["float_tall"])
    tensors["input/u16_chelsea"] = torch.from_numpy(u16.astype(np.int32))
    for name, arr in floats.items():
        for recipe, geometry in FLOAT_RECIPES:
            resized = resize_float(arr, geometry)
            key = f"{name}@{recipe}"
            tensors[f"{key}/resized"] = torch.from_numpy(resized)
            if wants_pixels(name, recipe):
                tensors[f"{key}/pixels"] = torch.from_numpy(normalise(resized))

    torch.save(tensors, args.out / OUTPUT)
    stamp.write_text(digest())
    size = (args.out / OUTPUT).stat().st_size / 2**20
    print(f"wrote {OUTPUT}: {len(tensors)} tensors, {size:.1f} MiB, in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
