#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Synthetic datasets for the probe examples and tests (PIL + NumPy only, deterministic).

Writes, under --out:

  classification/<class>/<class>_NN.png   an ImageFolder dataset: --per-class images of each of
                                          4 visually separable classes (red discs on light noise,
                                          green stripes, a blue checkerboard, yellow triangles on
                                          dark noise), with random position, size, angle, period
                                          and colour jitter
  segmentation/images/NNN.png             --seg-images scenes of shapes on a textured background
  segmentation/masks/NNN.png              the class of every pixel (8-bit grey PNG: 0 background,
                                          1 disc, 2 square, 3 triangle); later shapes cover earlier
                                          ones, so the mask is exact
  segmentation/classes.txt                the class names in label order, one a line

The same --seed gives byte-identical files on every run.

Usage: python scripts/make_probe_data.py --out DIR [--seed 0] [--per-class 20] [--seg-images 24]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["red_discs", "green_stripes", "blue_checker", "yellow_triangles"]
SEG_CLASSES = ["background", "disc", "square", "triangle"]
RGB = Tuple[int, int, int]


def jitter(rng: np.random.Generator, base: RGB, amount: int = 30) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)  # type: ignore


def noise_background(
    rng: np.random.Generator, size: int, level: int, spread: int = 20
) -> Image.Image:
    a = rng.normal(level, spread, (size, size, 3)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def triangle(cx: float, cy: float, r: float, angle: float):
    return [
        (cx + r * np.cos(angle + k * 2 * np.pi / 3), cy + r * np.sin(angle + k * 2 * np.pi / 3))
        for k in range(3)
    ]


# -- classification -----------------------------------------------------------------------------


def red_discs(rng: np.random.Generator, size: int) -> Image.Image:
    img = noise_background(rng, size, 215)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.12, 0.3) * size
        cx, cy = rng.uniform(r, size - r, 2)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter(rng, (210, 40, 40)))
    return img


def green_stripes(rng: np.random.Generator, size: int) -> Image.Image:
    period = rng.uniform(0.08, 0.2) * size
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size]
    phase = (x * np.cos(angle) + y * np.sin(angle)) / period
    on = (np.floor(phase) % 2 == 0)[..., None]
    a, b = np.array(jitter(rng, (40, 170, 60))), np.array(jitter(rng, (180, 230, 170)))
    return Image.fromarray(np.where(on, a, b).astype(np.uint8), "RGB")


def blue_checker(rng: np.random.Generator, size: int) -> Image.Image:
    cell = rng.uniform(0.08, 0.2) * size
    ox, oy = rng.uniform(0, cell, 2)
    y, x = np.mgrid[0:size, 0:size]
    on = ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2 == 0)[..., None]
    a, b = np.array(jitter(rng, (40, 60, 200))), np.array(jitter(rng, (200, 210, 240)))
    return Image.fromarray(np.where(on, a, b).astype(np.uint8), "RGB")


def yellow_triangles(rng: np.random.Generator, size: int) -> Image.Image:
    img = noise_background(rng, size, 50)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.15, 0.35) * size
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        d.polygon(triangle(cx, cy, r, rng.uniform(0, 2 * np.pi)), fill=jitter(rng, (230, 210, 40)))
    return img


MAKERS: Dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "red_discs": red_discs,
    "green_stripes": green_stripes,
    "blue_checker": blue_checker,
    "yellow_triangles": yellow_triangles,
}


def make_classification(out: Path, rng: np.random.Generator, per_class: int, size: int) -> None:
    for name in CLASSES:
        folder = out / "classification" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            MAKERS[name](rng, size).save(folder / f"{name}_{i:02d}.png")


# -- segmentation -------------------------------------------------------------------------------


def make_segmentation(out: Path, rng: np.random.Generator, count: int, size: int) -> None:
    images, masks = out / "segmentation" / "images", out / "segmentation" / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    (out / "segmentation" / "classes.txt").write_text("\n".join(SEG_CLASSES) + "\n")
    colours = {1: (200, 50, 50), 2: (50, 170, 60), 3: (50, 70, 200)}
    for i in range(count):
        img = noise_background(rng, size, int(rng.integers(110, 160)), 25)
        mask = Image.new("L", (size, size), 0)
        di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        for _ in range(rng.integers(2, 5)):
            label = int(rng.integers(1, 4))
            r = rng.uniform(0.1, 0.22) * size
            cx, cy = rng.uniform(r, size - r, 2)
            fill = jitter(rng, colours[label], 25)
            if label == 1:
                box = [cx - r, cy - r, cx + r, cy + r]
                di.ellipse(box, fill=fill)
                dm.ellipse(box, fill=label)
            elif label == 2:
                box = [cx - r, cy - r, cx + r, cy + r]
                di.rectangle(box, fill=fill)
                dm.rectangle(box, fill=label)
            else:
                pts = triangle(cx, cy, r * 1.2, rng.uniform(0, 2 * np.pi))
                di.polygon(pts, fill=fill)
                dm.polygon(pts, fill=label)
        img.save(images / f"{i:03d}.png")
        mask.save(masks / f"{i:03d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument(
        "--per-class", type=int, default=20, help="classification images per class (default 20)"
    )
    ap.add_argument("--seg-images", type=int, default=24, help="segmentation scenes (default 24)")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    args = ap.parse_args()
    if args.per_class < 1 or args.seg_images < 0 or args.size < 28:
        ap.error("--per-class must be >= 1, --seg-images >= 0 and --size >= 28")
    make_classification(args.out, np.random.default_rng(args.seed), args.per_class, args.size)
    make_segmentation(args.out, np.random.default_rng(args.seed + 1), args.seg_images, args.size)
    print(
        f"wrote {len(CLASSES)} x {args.per_class} classification images and {args.seg_images} "
        f"segmentation scenes under {args.out}"
    )


if __name__ == "__main__":
    main()
