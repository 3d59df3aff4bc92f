# SPDX-License-Identifier: Apache-2.0
"""Hostile input and faults against the `dinov2` tool: each case gives a clear `dinov2:` message
and the documented exit code, never a crash, a hang, a memory bomb or lost user data.

Memory is measured as the tool's peak RSS (getrusage of the child). The bombs are small files
whose headers claim huge images: before the limits they took 1.4-6.1 GB; the bound asserted here,
MAX_RSS_MB, is what a 2-block ViT-S/14 run on small images needs with room to spare.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DINOV2_BUILD_DIR", REPO / "build"))
TOOL = BUILD / "bin" / "dinov2"
MAX_RSS_MB = 900

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"the dinov2 tool is not built: {TOOL}")


def run(*args, timeout: float = 120) -> tuple[subprocess.CompletedProcess, None]:
    """Runs the tool; a run that outlives `timeout` fails the test as a hang."""
    cmd = [str(TOOL), *map(str, args)]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        return done, None
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s: {cmd}")


def bomb_rss(*args) -> tuple[subprocess.CompletedProcess, float]:
    """Runs the tool under /usr/bin/time-like accounting: a Python child that reports its own
    child's peak RSS, so earlier runs in this process do not count."""
    code = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'err': p.stderr, 'rss': rss}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    d = json.loads(out.stdout)
    if log := os.environ.get("DINOV2_RSS_LOG"):  # the peak of each case, for docs/RELIABILITY.md
        with open(log, "a") as f:
            f.write(
                f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{d['rss']:.0f} MB\n"
            )
    return subprocess.CompletedProcess(args, d["rc"], "", d["err"]), d["rss"]


@pytest.fixture(scope="module")
def model(s2_model) -> Path:
    """A 2-block ViT-S/14 with random weights (conftest.py)."""
    return s2_model


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def rewrite_zip(src: Path, dst: Path, edit) -> Path:
    """Copies a TorchScript archive, passing each member's bytes through edit(name, data)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small, well-formed PNG whose header claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 16, 9)  # 16 rows of data, the rest missing
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows)
    path.write_bytes(data + png_chunk(b"IEND", b""))
    return path


def jpeg_claiming(path: Path, source: Path, width: int, height: int) -> Path:
    """`source` (a JPEG) with its frame header patched to claim width x height."""
    data = bytearray(source.read_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def err_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("dinov2:")]


# ---------------------------------------------------------------------------------------------
# Never destroy what the tool did not create


def test_npy_output_over_a_users_folder_is_refused_and_nothing_is_touched(tmp_path, model, photo):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for sibling in ("results.old", "results.tmp"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "keep.txt").write_text("mine too")
    r, _ = run("extract", "-m", model, "--format", "npy", "-o", mine, photo)
    assert r.returncode == 2, r.stderr
    assert "exists and was not written by dinov2 extract" in r.stderr and "--overwrite" in r.stderr
    assert "dinov2 extract: CPU" not in r.stderr  # refused before any work
    assert (mine / "thesis.tex").read_text() == "years of work"
    for sibling in ("results.old", "results.tmp"):
        assert (tmp_path / sibling / "keep.txt").read_text() == "mine too"
    assert not (tmp_path / "results.parts").exists()
    # --overwrite replaces it, and only it.
    r, _ = run("extract", "-m", model, "--format", "npy", "-o", mine, "--overwrite", photo)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in mine.iterdir()) == [
        "cls.npy",
        "metadata.json",
        "patch.npy",
        "registers.npy",
    ]
    for sibling in ("results.old", "results.tmp"):
        assert (tmp_path / sibling / "keep.txt").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "results",
        "results.old",
        "results.tmp",
    ]
    # A second run replaces its own output without --overwrite.
    r, _ = run("extract", "-m", model, "--format", "npy", "-o", mine, photo)
    assert r.returncode == 0, r.stderr


def test_npy_output_with_a_trailing_slash_works_and_leaves_nothing_behind(tmp_path, model, photo):
    r, _ = run("extract", "-m", model, "--format", "npy", "-o", f"{tmp_path / 'out'}/", photo)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "cls.npy").exists()


@pytest.mark.parametrize(
    "target, message",
    [
        ("", "--output is empty"),
        ("folder", "is an existing folder"),
        ("notes.safetensors", "exists and was not written by dinov2 extract"),
        ("new/", "ends with '/'"),
    ],
)
def test_unusable_outputs_are_refused_before_any_work(tmp_path, model, photo, target, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.safetensors").write_text("not features")
    out = str(tmp_path / target) if target not in ("",) else ""
    if target.endswith("/"):
        out += "/"
    r, _ = run("extract", "-m", model, "-o", out, photo)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "dinov2 extract: CPU" not in r.stderr
    assert (tmp_path / "notes.safetensors").read_text() == "not features"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.safetensors"]


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, model, photo):
    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file cannot be created by anyone.
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.safetensors"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out.safetensors"
    r, _ = run("extract", "-m", model, "-o", out, photo)
    assert r.returncode == 2, r.stderr
    assert "cannot be written" in r.stderr and "dinov2 extract: CPU" not in r.stderr


def test_a_finished_run_whose_parts_were_left_behind_reruns(tmp_path, model, photo):
    out = tmp_path / "f.safetensors"
    r, _ = run("extract", "-m", model, "-o", out, photo)
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        run_record = json.loads(f.metadata()["run"])
    # As if killed after the final rename, before the parts were deleted.
    parts = tmp_path / "f.safetensors.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps(run_record))
    r, _ = run("extract", "-m", model, "-o", out, photo)
    assert r.returncode == 0, r.stderr
    assert not parts.exists()
    # Parts of a run with other settings are still an unfinished run, kept for --resume.
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps(dict(run_record, batch=3)))
    r, _ = run("extract", "-m", model, "-o", out, photo)
    assert r.returncode == 2 and "unfinished run" in r.stderr


# ---------------------------------------------------------------------------------------------
# Resource limits


def test_a_jpeg_claiming_30000_squared_is_refused_from_its_header(tmp_path, model, photo):
    bomb = jpeg_claiming(tmp_path / "bomb.jpg", photo, 30000, 30000)
    assert bomb.stat().st_size < 50_000
    r, rss = bomb_rss("extract", "-m", model, "-o", tmp_path / "f.safetensors", bomb, photo)
    assert r.returncode == 3, r.stderr
    assert any("bomb.jpg" in line and "--max-pixels" in line for line in err_lines(r)), r.stderr
    assert rss < MAX_RSS_MB, rss
    # The limit is one flag away.
    r, _ = run(
        "extract", "-m", model, "-o", tmp_path / "g.safetensors", "--max-pixels", "100", photo
    )
    assert r.returncode == 3, r.stderr
    assert "over the limit of 100 (ImageLimits::max_pixels, --max-pixels)" in r.stderr


@pytest.mark.parametrize("side", [20000, 32768, 60000])
def test_pngs_claiming_huge_sizes_are_refused_from_their_header(tmp_path, model, photo, side):
    bomb = png_claiming(tmp_path / f"bomb{side}.png", side, side)
    r, rss = bomb_rss("extract", "-m", model, "-o", tmp_path / "f.safetensors", bomb, photo)
    assert r.returncode == 3, r.stderr
    assert f"the header says {side}x{side} pixels" in r.stderr
    assert rss < MAX_RSS_MB, rss


def test_a_file_over_the_size_limit_is_not_read(tmp_path, model, photo):
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(3 << 20)
    r, _ = run(
        "extract", "-m", model, "-o", tmp_path / "f.safetensors", "--max-file-size", 1, big, photo
    )
    assert r.returncode == 3, r.stderr
    assert "over the limit of 1 MiB (ImageLimits::max_file_bytes, --max-file-size)" in r.stderr


def test_pca_of_a_1x3000_strip_stays_small(tmp_path, model):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 3000, 3), 200, dtype=np.uint8)).save(strip)
    r, rss = bomb_rss("pca", "-m", model, "-o", tmp_path / "pca", strip)
    assert r.returncode == 0, r.stderr
    assert rss < MAX_RSS_MB, rss
    sheet = Image.open(tmp_path / "pca" / "sheet.png")
    assert sheet.height == 256 and sheet.width <= 3 * 8 * 256 + 2 * 8, sheet.size


@pytest.mark.parametrize("recipe", ["resize(14000,14000)", "square(1806)"])
def test_a_recipe_beyond_the_token_limit_is_refused_before_any_image(
    tmp_path, model, photo, recipe
):
    r, rss = bomb_rss(
        "extract", "-m", model, "-o", tmp_path / "f.safetensors", "--recipe", recipe, photo
    )
    assert r.returncode == 2, r.stderr
    assert "patch tokens, over the model's limit of 16384" in r.stderr
    assert rss < MAX_RSS_MB, rss
    assert not (tmp_path / "f.safetensors.parts").exists()


def test_a_gallery_recipe_beyond_the_token_limit_is_refused(tmp_path, model, photo):
    gallery = tmp_path / "g.safetensors"
    assert (
        run("extract", "-m", model, "-o", gallery, "--recipe", "eval224", photo)[0].returncode == 0
    )
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(gallery), "pt") as f:
        meta = dict(f.metadata())
    meta["recipe"] = "resize(14000,14000)"
    save_file(load_file(str(gallery)), str(gallery), metadata=meta)
    r, _ = run("search", "-m", model, "--gallery", gallery, photo)
    assert r.returncode == 2 and "patch tokens" in r.stderr, r.stderr


def test_threads_beyond_four_per_core_are_refused(tmp_path, model, photo):
    r, _ = run("extract", "-m", model, "-o", tmp_path / "f.safetensors", "--threads", 40000, photo)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("dinov2:") and "--threads" in r.stderr


# ---------------------------------------------------------------------------------------------
# Only regular files; each folder once


def test_a_fifo_and_a_device_are_refused_not_read(tmp_path, model, photo):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{fifo}\n/dev/zero\n{photo}\n")
    r, _ = run("extract", "-m", model, "-o", tmp_path / "f.safetensors", f"@{listing}", timeout=60)
    assert r.returncode == 3, r.stderr
    assert any(
        "pipe.jpg" in line and "not a regular file (a FIFO)" in line for line in err_lines(r)
    )
    assert any("/dev/zero" in line and "character device" in line for line in err_lines(r))
    # A FIFO given as the @list itself is refused too.
    r, _ = run("extract", "-m", model, "-o", tmp_path / "g.safetensors", f"@{fifo}", timeout=60)
    assert r.returncode == 2 and "is not a regular file" in r.stderr


def test_a_symlink_loop_in_a_folder_is_walked_once(tmp_path, model, photo):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photo, folder / "a.jpg")
    shutil.copy(photo, folder / "sub" / "b.jpg")
    (folder / "sub" / "loop").symlink_to(folder)
    out = tmp_path / "f.safetensors"
    r, _ = run("extract", "-m", model, "-o", out, "--no-patches", folder)
    assert r.returncode == 0, r.stderr
    assert "a folder already walked" in r.stderr
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert len(json.loads(f.metadata()["paths"])) == 2


# ---------------------------------------------------------------------------------------------
# Model files that lie, and numbers that are not numbers


def edit_metadata(src: Path, dst: Path, **changes) -> Path:
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("extra/dinov2/metadata.json"):
            meta = json.loads(data)
            meta.update(changes)
            return json.dumps(meta).encode()
        return data

    return rewrite_zip(src, dst, edit)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"patch_size": 16}, "disagree with the graph's patch embedding"),
        ({"depth": 3}, "disagrees with the graph's 2 blocks"),
        ({"embed_dim": 768}, "disagree with the graph's patch embedding"),
        ({"format_version": 2**32 + 1}, "'format_version' has the wrong type or is out of range"),
        ({"embed_dim": 2**40}, "are not a valid architecture"),
    ],
)
def test_model_metadata_that_disagrees_with_the_graph_is_refused(
    tmp_path, model, photo, changes, message
):
    bad = edit_metadata(model, tmp_path / "bad.pt", **changes)
    r, _ = run("extract", "-m", bad, "-o", tmp_path / "f.safetensors", photo)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "re-export" in r.stderr
    assert "Traceback" not in r.stderr and "unexpected error" not in r.stderr


def test_a_model_file_with_broken_code_is_a_clear_error(tmp_path, model, photo):
    def syntax_error(name: str, data: bytes) -> bytes:
        return data + b"\ndef (:\n" if name.endswith("dinov2_export/model.py") else data

    bad = rewrite_zip(model, tmp_path / "bad.pt", syntax_error)
    r, _ = run("extract", "-m", bad, "-o", tmp_path / "f.safetensors", photo)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("dinov2: ") and len(lines) <= 3, r.stderr
    assert "unexpected error" not in r.stderr


def test_nan_in_a_gallery_is_refused_with_its_row(tmp_path, model, photo):
    gallery = tmp_path / "g.safetensors"
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        shutil.copy(photo, photos / f"p{i}.jpg")
    assert run("extract", "-m", model, "-o", gallery, "--no-patches", photos)[0].returncode == 0
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(gallery), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(gallery))
    tensors["cls"][2, 5] = float("nan")
    save_file(tensors, str(gallery), metadata=meta)
    r, _ = run("search", "-m", model, "--gallery", gallery, photo)
    assert r.returncode == 2, r.stderr
    assert "NaN or Inf in row 2" in r.stderr


def test_a_probe_with_nan_weights_is_refused(tmp_path, model, photo):
    from safetensors.torch import save_file

    probe = tmp_path / "probe.safetensors"
    weight = torch.zeros(2, 384)
    weight[1, 0] = float("inf")
    meta = {"format": "dinov2-linear-probe", "format_version": "1", "num_classes": "2"}
    meta["features"] = "cls"
    save_file({"weight": weight, "bias": torch.zeros(2)}, str(probe), metadata=meta)
    r, _ = run("classify", "-m", model, "--head", probe, photo)
    assert r.returncode == 2, r.stderr
    assert "NaN or Inf in weight (class row 1)" in r.stderr


def test_a_palette_colour_outside_0_255_is_refused(tmp_path, photo):
    from dinov2_export import heads as H
    from dinov2_export.export import export
    from dinov2_export.weights import load_weights

    full = tmp_path / "s12.pt"
    export(load_weights("random", "dinov2_vits14", seed=1), full)
    head = tmp_path / "seg.pt"
    H.export_head(H.load_head_weights("random", "seg_linear", "dinov2_vits14", None, 3), head)

    def bad_palette(name: str, data: bytes) -> bytes:
        if name.endswith("extra/dinov2/head.json"):
            meta = json.loads(data)
            meta["palette"][1] = [300, -5, 1000]
            return json.dumps(meta).encode()
        return data

    bad = rewrite_zip(head, tmp_path / "bad_seg.pt", bad_palette)
    r, _ = run("segment", "-m", full, "--head", bad, "-o", tmp_path / "seg", photo)
    assert r.returncode == 2, r.stderr
    assert "palette entry [300, -5, 1000] has a value outside 0..255" in r.stderr
