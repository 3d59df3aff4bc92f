# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of `dinov2 extract` (and `--help` of every subcommand of the tool).

The tool is not built here: it is looked up as `$DINOV2_BUILD_DIR/bin/dinov2` (DINOV2_BUILD_DIR
defaults to `<repo>/build`), and every test is skipped, saying so, when it is absent.

Reference: the exported TorchScript file run by PyTorch on pixels preprocessed with Pillow
(resize with Image.BICUBIC, /255, ImageNet mean/std). The library resizes 8-bit images with
Pillow's integer arithmetic and decodes with the same libjpeg-turbo defaults as Pillow, so the
pixels agree exactly; what is left is float32 summation order in LibTorch, which may depend on
the batch size. TOL = 1e-4 allows that (the features of the random-weight model are O(1) after
the final LayerNorm, so a decoding or resizing difference of even one grey level anywhere would
show up far above it).
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DINOV2_BUILD_DIR", REPO / "build"))
TOOL = BUILD / "bin" / "dinov2"
SAMPLES = REPO / "examples" / "data"
TOL = 1e-4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

pytestmark = pytest.mark.skipif(
    not TOOL.exists(),
    reason=f"the dinov2 tool is not built: {TOOL} is missing (build the project, or set "
    "DINOV2_BUILD_DIR to the build folder)",
)


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [str(TOOL), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def load_output(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def pil_pixels(path: Path, size: Tuple[int, int]) -> torch.Tensor:
    """[1, 3, H, W] normalised pixels of `path` resized to size = (width, height) by Pillow."""
    image = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    return ((x - MEAN) / STD)[None]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return 0.0 if a.numel() == 0 else (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 2-block ViT-S/14 with registers and random weights: real shapes, fast."""
    from dinov2_export.export import export
    from dinov2_export.weights import load_weights

    path = tmp_path_factory.mktemp("model") / "s2reg.pt"
    export(load_weights("random", "dinov2_vits14_reg", seed=0, depth=2), path)
    return path


@pytest.fixture(scope="module")
def scripted(model: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(model), map_location="cpu").eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The sample photographs (examples/data), or generated ones when they are absent."""
    if SAMPLES.exists() and len(photo_paths(SAMPLES)) >= 3:
        return SAMPLES
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(512, 512), (451, 300), (600, 400), (640, 427)]):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"generated{i}.png")
    return folder


def photo_paths(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.fixture(scope="module")
def many(tmp_path_factory, photos: Path) -> Path:
    """24 distinct images (crops and flips of the photos) in nested folders, PNG and JPEG."""
    folder = tmp_path_factory.mktemp("many")
    sources = [Image.open(p).convert("RGB") for p in photo_paths(photos)]
    for i in range(24):
        image = sources[i % len(sources)]
        w, h = image.size
        box = (i % 5 * 7, i % 3 * 11, w - i % 4 * 13, h - i % 2 * 17)
        image = image.crop(box)
        if i % 2:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        sub = folder / f"group{i % 3}"
        sub.mkdir(exist_ok=True)
        if i % 4 == 0:
            image.save(sub / f"img{i:02d}.jpg", quality=90)
        else:
            image.save(sub / f"img{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, photos: Path) -> Path:
    """Two good photos and four bad files, plus a non-image file that must be ignored."""
    folder = tmp_path_factory.mktemp("bad")
    good = photo_paths(photos)
    shutil.copy(good[0], folder / f"good_a{good[0].suffix}")
    (folder / "nested").mkdir()
    shutil.copy(good[1], folder / "nested" / f"GOOD_B{good[1].suffix.upper()}")
    # A JPEG whose header segments are overwritten with garbage after the start-of-image marker.
    buf = folder / "tmp.jpg"
    Image.open(good[0]).convert("RGB").save(buf, quality=90)
    jpeg = bytearray(buf.read_bytes())
    buf.unlink()
    jpeg[2:300] = bytes((i * 37 + 11) % 251 for i in range(298))
    (folder / "corrupt.jpg").write_bytes(bytes(jpeg))
    png = folder / "tmp.png"
    Image.open(good[0]).convert("RGB").save(png)
    data = png.read_bytes()
    png.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("these are my notes, not a picture\n")
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "readme.txt").write_text("not an image extension: never listed\n")
    return folder


BAD_REASONS = {
    "corrupt.jpg": "corrupt JPEG",
    "truncated.png": "truncated PNG",
    "notes.jpg": "not an image",
    "empty.jpeg": "empty file",
}


# ---------------------------------------------------------------------------------------------
# Tests


def test_help_of_every_subcommand_exits_0():
    top = run("--help")
    assert top.returncode == 0, top.stderr
    assert "extract" in top.stdout
    section = re.split(r"^subcommands:", top.stdout, maxsplit=1, flags=re.M | re.I)[1]
    names = re.findall(r"^\s{2}(\w+)\s", section, flags=re.M)
    assert "extract" in names
    for name in names:
        sub = run(name, "--help")
        assert sub.returncode == 0, f"{name} --help: {sub.stderr}"
        assert "--help" in sub.stdout and name in sub.stdout
    assert run("--version").returncode == 0


def test_extract_equals_the_scripted_model_on_pillow_pixels(tmp_path, model, scripted, photos):
    out = tmp_path / "feats.safetensors"
    r = run("extract", "--model", model, "--output", out, "--batch", 3, photos)
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stderr  # the one-line summary (stderr is not a terminal)
    tensors, meta = load_output(out)
    paths = photo_paths(photos)
    n = len(paths)
    assert set(tensors) == {"cls", "registers", "patch"}
    assert tensors["cls"].shape == (n, 384) and tensors["cls"].dtype == torch.float32
    assert tensors["registers"].shape == (n, 4, 384) and tensors["registers"].dtype == torch.float32
    assert tensors["patch"].shape == (n, 37, 37, 384) and tensors["patch"].dtype == torch.float32
    assert json.loads(meta["paths"]) == [str(p) for p in paths]
    assert meta["format"] == "dinov2-features" and meta["recipe"] == "square(518)"
    assert json.loads(meta["grid"]) == [37, 37] and meta["patch_layout"] == "single"
    assert json.loads(meta["failed"]) == []
    assert json.loads(meta["model"])["variant"] == "dinov2_vits14_reg"
    for i, p in enumerate(paths):
        with torch.no_grad():
            cls, registers, patches, _ = scripted(pil_pixels(p, (518, 518)))
        assert max_err(tensors["cls"][i], cls[0]) <= TOL, p
        assert max_err(tensors["registers"][i], registers[0]) <= TOL, p
        assert max_err(tensors["patch"][i], patches[0].reshape(37, 37, 384)) <= TOL, p


# oneDNN's ISA levels from AVX512_CORE_BF16 up: where bfloat16 arithmetic is in hardware.
BF16_LEVELS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16"}
BF16_LEVELS |= {"AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT"}


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware and no ISA limit forbids it: PyTorch's
    cpuinfo flags, independent of the tool's own detection."""
    caps = torch._C._cpu._get_cpu_capability()
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL"))
    hardware = caps.get("avx512_bf16", False) or caps.get("amx_bf16", False)
    return bool(hardware) and limit.upper() in BF16_LEVELS


def test_version_names_the_machine():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dinov2 ") and "LibTorch" in lines[0]
    cpu = lines[1]
    assert cpu.startswith("CPU: ") and f"ATen {torch.backends.cpu.get_cpu_capability()}" in cpu
    assert ("bfloat16 native" if native_bfloat16() else "bfloat16 emulated") in cpu


@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])
def test_bfloat16_and_auto_run_on_any_cpu_and_keep_the_features(tmp_path, model, photos, dtype):
    ref = tmp_path / "f32.safetensors"
    r = run("extract", "-m", model, "-o", ref, "--recipe", "eval224", photos)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"{dtype}.safetensors"
    r = run("extract", "-m", model, "-o", out, "--recipe", "eval224", "--dtype", dtype, photos)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("dinov2 extract: CPU "), r.stderr  # the machine comes first
    native = native_bfloat16()
    expected = "bfloat16" if dtype == "bfloat16" or native else "float32"
    t32, _ = load_output(ref)
    t, meta = load_output(out)
    assert meta["compute_dtype"] == expected and meta["requested_dtype"] == dtype
    cpu = json.loads(meta["cpu"])
    assert cpu["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["native_bfloat16"] == native
    assert int(meta["fused_layers"]) >= 0 and meta["fusion"]
    cosine = torch.nn.functional.cosine_similarity(t["cls"], t32["cls"], dim=1).min().item()
    assert cosine >= 0.999, cosine
    slow = "dinov2: warning: this CPU" in r.stderr
    assert slow == (expected == "bfloat16" and not native), r.stderr
    if slow:
        assert re.search(r"ran \d+\.\dx slower in bfloat16", r.stderr), r.stderr


def test_bad_images_are_reported_skipped_and_nothing_good_is_lost(tmp_path, model, bad_folder):
    out = tmp_path / "feats.safetensors"
    r = run("extract", "--model", model, "--output", out, "--recipe", "eval224", bad_folder)
    assert r.returncode == 3, r.stderr
    for name, reason in BAD_REASONS.items():
        skipped = [l for l in r.stderr.splitlines() if l.startswith("dinov2: skipped")]
        line = next((l for l in skipped if name in l), None)
        assert line is not None and reason in line, f"{name}: {r.stderr}"
    assert "readme.txt" not in r.stderr
    tensors, meta = load_output(out)
    paths = json.loads(meta["paths"])
    assert [Path(p).name.lower()[:6] for p in paths] == ["good_a", "good_b"]
    assert len(paths) == 2 and tensors["cls"].shape == (2, 384)
    failed = {Path(f["path"]).name: f["reason"] for f in json.loads(meta["failed"])}
    assert set(failed) == set(BAD_REASONS)
    for name, reason in BAD_REASONS.items():
        assert reason in failed[name]

    # The good rows are exactly what a run on the good files alone gives.
    alone = tmp_path / "alone.safetensors"
    r2 = run("extract", "--model", model, "--output", alone, "--recipe", "eval224", *paths)
    assert r2.returncode == 0, r2.stderr
    t2, _ = load_output(alone)
    for key in ("cls", "registers", "patch"):
        assert torch.equal(tensors[key], t2[key]), key


def test_npy_format_and_float16_patches(tmp_path, model, photos):
    ref = tmp_path / "ref.safetensors"
    assert run("extract", "-m", model, "-o", ref, "--recipe", "eval224", photos).returncode == 0
    t, meta = load_output(ref)
    out = tmp_path / "feats"
    r = run("extract", "-m", model, "-o", out, "--recipe", "eval224", "--format", "npy",
            "--patch-dtype", "float16", photos)  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cls.npy", "metadata.json", "patch.npy", "registers.npy"]
    cls, registers, patch = (np.load(out / f"{k}.npy") for k in ("cls", "registers", "patch"))
    n = len(photo_paths(photos))
    assert cls.dtype == np.float32 and cls.shape == (n, 384)
    assert registers.dtype == np.float32 and registers.shape == (n, 4, 384)
    assert patch.dtype == np.float16 and patch.shape == (n, 16, 16, 384)
    assert np.array_equal(cls, t["cls"].numpy())
    assert np.array_equal(registers, t["registers"].numpy())
    assert np.array_equal(patch, t["patch"].half().numpy())
    m = json.loads((out / "metadata.json").read_text())
    assert m["paths"] == json.loads(meta["paths"])
    assert m["grid"] == [16, 16] and m["patch_dtype"] == "float16"
    assert not Path(str(out) + ".parts").exists()


def test_no_patches_and_bfloat16_npy_refused(tmp_path, model, photos):
    out = tmp_path / "cls_only.safetensors"
    r = run("extract", "-m", model, "-o", out, "--recipe", "eval224", "--no-patches", photos)
    assert r.returncode == 0, r.stderr
    t, meta = load_output(out)
    assert set(t) == {"cls", "registers"} and meta["patch_layout"] == "none"
    npy = ["--format", "npy", "--patch-dtype", "bfloat16"]
    r = run("extract", "-m", model, "-o", tmp_path / "x", *npy, photos)
    assert r.returncode == 2 and "dinov2:" in r.stderr and "bfloat16" in r.stderr


def test_aligned_recipe_stores_patches_per_grid(tmp_path, model, scripted, photos):
    out = tmp_path / "aligned.safetensors"
    r = run("extract", "-m", model, "-o", out, "--recipe", "aligned", photos)
    assert r.returncode == 0, r.stderr
    t, meta = load_output(out)
    paths = json.loads(meta["paths"])
    grids = [tuple(g) for g in json.loads(meta["grids"])]
    sizes = json.loads(meta["image_sizes"])
    distinct = sorted(set(grids))
    assert len(distinct) > 1, "the sample photos have several aspect ratios"
    assert meta["patch_layout"] == "by_grid" and json.loads(meta["grid"]) is None
    assert "patch" not in t
    for h, w in distinct:
        rows = t[f"patch_rows/{h}x{w}"]
        assert rows.dtype == torch.int64
        assert rows.tolist() == [i for i, g in enumerate(grids) if g == (h, w)]
        assert t[f"patch/{h}x{w}"].shape == (len(rows), h, w, 384)
    for i, path in enumerate(paths):
        h, w = grids[i]
        H, W = sizes[i]
        # Aspect kept: the longer side is about 518 pixels, each side a multiple of 14.
        assert abs(max(h, w) * 14 - 518) <= 14 and abs(h / w - H / W) < 0.1
        with torch.no_grad():
            cls, _, patches, _ = scripted(pil_pixels(Path(path), (w * 14, h * 14)))
        k = t[f"patch_rows/{h}x{w}"].tolist().index(i)
        assert max_err(t["cls"][i], cls[0]) <= TOL, path
        assert max_err(t[f"patch/{h}x{w}"][k], patches[0].reshape(h, w, 384)) <= TOL, path


def test_list_file_input_equals_folder_input(tmp_path, model, photos):
    paths = photo_paths(photos)
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\n\n" + "\n".join(str(p) for p in reversed(paths)) + "\n")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["extract", "-m", model, "--recipe", "eval224", "--no-patches"]
    assert run(*common, "-o", a, photos).returncode == 0
    assert run(*common, "-o", b, f"@{listing}").returncode == 0
    ta, ma = load_output(a)
    tb, mb = load_output(b)
    assert json.loads(ma["paths"]) == json.loads(mb["paths"]) == [str(p) for p in paths]
    assert torch.equal(ta["cls"], tb["cls"])


def test_resume_after_sigkill_gives_the_same_file(tmp_path, model, many):
    args = ["extract", "-m", str(model), "--batch", "2", str(many)]
    ref = tmp_path / "ref.safetensors"
    r = run(*args, "-o", ref)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed.safetensors"
    parts = Path(str(out) + ".parts")
    proc = subprocess.Popen([str(TOOL), *args, "-o", str(out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(parts.glob("part-*.safetensors")):
        assert proc.poll() is None, "the run ended before writing a part"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed; give it more images"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done_before = len(list(parts.glob("part-*.safetensors")))
    assert 1 <= done_before < 12

    again = run(*args, "-o", out)  # without --resume: refused, parts kept
    assert again.returncode == 2 and "--resume" in again.stderr
    other = run("extract", "-m", str(model), "--batch", "3", str(many), "-o", out, "--resume")
    assert other.returncode == 2 and "batch was 2, now 3" in other.stderr

    resumed = run(*args, "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "done by an earlier run" in resumed.stderr
    assert not parts.exists()
    assert out.read_bytes() == ref.read_bytes()


def test_union_of_shards_equals_the_unsharded_run(tmp_path, model, many):
    base = ["extract", "-m", str(model), "--recipe", "eval224", "--batch", "4", str(many)]
    full = tmp_path / "full.safetensors"
    assert run(*base, "-o", full).returncode == 0
    t_full, m_full = load_output(full)
    paths_full = json.loads(m_full["paths"])
    rows: Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    indices: List[int] = []
    for i in range(3):
        out = tmp_path / f"shard{i}.safetensors"
        r = run(*base, "--shard", f"{i}/3", "-o", out)
        assert r.returncode == 0, r.stderr
        t, m = load_output(out)
        assert m["shard"] == f"{i}/3"
        shard_indices = json.loads(m["input_indices"])
        assert all(k % 3 == i for k in shard_indices)
        indices += shard_indices
        for j, p in enumerate(json.loads(m["paths"])):
            assert p not in rows
            rows[p] = (t["cls"][j], t["registers"][j], t["patch"][j])
    assert sorted(indices) == list(range(len(paths_full)))
    assert sorted(rows) == paths_full
    for j, p in enumerate(paths_full):
        cls, registers, patch = rows[p]
        assert torch.equal(cls, t_full["cls"][j]), p
        assert torch.equal(registers, t_full["registers"][j]), p
        assert torch.equal(patch, t_full["patch"][j]), p


def test_progress_bar_on_a_terminal(tmp_path, model, photos):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            str(TOOL),
            "extract",
            "-m",
            str(model),
            "-o",
            str(tmp_path / "x.safetensors"),
            "--recipe",
            "eval224",
            "--batch",
            "1",
            str(photos),
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait() == 0
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "images/s" in text and "ETA" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "-o", "x.safetensors", "img.jpg"], "--model"),
        (["extract", "-m", "absent.pt", "-o", "x.safetensors", "IMAGES"], "absent.pt"),
        (["extract", "-m", "MODEL", "-o", "x.safetensors", "--shard", "3/3", "IMAGES"], "--shard"),
        (["extract", "-m", "MODEL", "-o", "x.safetensors", "--recipe", "sq500", "IMAGES"], "sq500"),
        (["extract", "-m", "MODEL", "-o", "x.safetensors", "EMPTY"], "no images found"),
        (["extract", "-m", "MODEL", "-o", "x.safetensors", "--device", "tpu", "IMAGES"], "tpu"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path, model, photos, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    subst = {"MODEL": str(model), "IMAGES": str(photos), "EMPTY": str(empty)}
    subst["x.safetensors"] = str(tmp_path / "x.st")
    r = run(*[subst.get(a, a) for a in args])
    assert r.returncode == 2, r.stderr
    assert "dinov2:" in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "x.st").exists()
