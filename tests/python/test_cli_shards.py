# SPDX-License-Identifier: Apache-2.0
"""`dinov2 extract` on WebDataset tar shards, `dinov2 merge` and `dinov2 verify`.

The references are the tool's own runs on the same images as plain files (a tar member must give
exactly the row its file gives) and one unsharded run over every shard (shard outputs merged must
equal it tensor for tensor, with the same paths, keys and failures). The shards are written here
with Python's tarfile, as img2dataset writes them: per sample KEY.jpg or KEY.png, KEY.json and
KEY.txt.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_extract import TOOL, load_output, run

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"the dinov2 tool is not built: {TOOL}")

CORRUPT = b"\xff\xd8\xff\xe0 this JPEG stops here"


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_bytes(rng: np.random.Generator, fmt: str, size: tuple[int, int]) -> bytes:
    w, h = size
    # Smooth content (a gradient plus noise), so that JPEG keeps it recognisable.
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, fmt)
    return out.getvalue()


def write_shards(
    folder: Path, count: int, per_shard: int, corrupt: dict[tuple[int, int], bytes], seed: int = 0
) -> list[Path]:
    """`count` shards of `per_shard` samples with varied sizes (so the aligned recipe gives
    several grids); (shard, sample) in `corrupt` gets those bytes instead of an image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(count):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for k in range(per_shard):
                key = f"{s:05d}{k:04d}"
                fmt, ext = ("JPEG", "jpg") if k % 2 == 0 else ("PNG", "png")
                size = (56 + 14 * ((s + k) % 3), 42 + 14 * (k % 2))
                data = corrupt.get((s, k), None) or image_bytes(rng, fmt, size)
                add(tar, f"{key}.{ext}", data)
                add(tar, f"{key}.json", json.dumps({"caption": f"sample {key}"}).encode())
                add(tar, f"{key}.txt", f"sample {key}".encode())
        paths.append(path)
    return paths


def members_as_files(shards: list[Path], folder: Path) -> dict[str, Path]:
    """Every image member written as a file: member path in the tar -> file."""
    out = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith((".jpg", ".png")):
                    target = folder / shard.stem / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(m).read())
                    out[f"{shard}/{m.name}"] = target
    return out


def meta_json(meta: dict[str, str], key: str):
    return json.loads(meta[key])


def assert_same_output(a: Path, b: Path) -> None:
    """Equal tensors (torch.equal) and equal row metadata."""
    ta, ma = load_output(a)
    tb, mb = load_output(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    for key in ("paths", "keys", "image_sizes", "grids", "rows", "grid", "patch_layout"):
        assert ma[key] == mb[key], key
    assert ma.get("side") == mb.get("side")
    fa = [(f["path"], f["reason"]) for f in meta_json(ma, "failed")]
    fb = [(f["path"], f["reason"]) for f in meta_json(mb, "failed")]
    assert fa == fb


def extract_each(model: Path, shards: list[Path], out: Path, *options: str) -> Path:
    """One `dinov2 extract` per shard into OUT/<shard stem>.safetensors; returns OUT."""
    out.mkdir()
    for shard in shards:
        r = run("extract", "-m", model, "-o", out / f"{shard.stem}.safetensors", *options, shard)
        assert r.returncode in (0, 3), r.stderr
    return out


@pytest.fixture(scope="module")
def model(s2_model: Path) -> Path:
    """conftest's 2-block ViT-S/14 export."""
    return s2_model


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shards")
    paths = write_shards(folder, 4, 5, {(1, 2): CORRUPT})
    # The last shard cut inside its fourth image: three samples stay, the rest is lost.
    data = paths[3].read_bytes()
    with tarfile.open(paths[3]) as tar:
        fourth = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".png"))][3]
    paths[3].write_bytes(data[: fourth.offset_data + fourth.size // 2])
    return paths


def test_tar_members_give_the_rows_of_the_same_files(tmp_path, model, shards):
    files = members_as_files(shards[:3], tmp_path / "files")
    out_tar, out_files = tmp_path / "tar.safetensors", tmp_path / "files.safetensors"
    r = run("extract", "-m", model, "-o", out_tar, "--recipe", "eval224", *shards[:3])
    assert r.returncode == 3, r.stderr  # one corrupt member
    r = run("extract", "-m", model, "-o", out_files, "--recipe", "eval224", tmp_path / "files")
    assert r.returncode == 3, r.stderr
    t, meta = load_output(out_tar)
    tf, meta_f = load_output(out_files)
    paths = meta_json(meta, "paths")
    assert len(paths) == 14 and paths[0] == f"{shards[0]}/000000000.jpg"
    row_of_file = {p: i for i, p in enumerate(meta_json(meta_f, "paths"))}
    for i, p in enumerate(paths):
        j = row_of_file[str(files[p])]
        assert torch.equal(t["cls"][i], tf["cls"][j]), p
        assert torch.equal(t["patch"][i], tf["patch"][j]), p
    keys = meta_json(meta, "keys")
    assert keys[0] == "00000.tar/000000000"
    side = meta_json(meta, "side")
    assert json.loads(side[0]["json"]) == {"caption": "sample 000000000"}
    assert side[0]["txt"] == "sample 000000000"
    failed = meta_json(meta, "failed")
    assert [f["path"] for f in failed] == [f"{shards[1]}/000010002.jpg"]
    assert failed[0]["key"] == "00001.tar/000010002"
    assert "JPEG" in failed[0]["reason"], failed[0]["reason"]


def test_a_cut_short_shard_keeps_what_precedes_the_damage_and_says_so(tmp_path, model, shards):
    out = tmp_path / "cut.safetensors"
    r = run("extract", "-m", model, "-o", out, "--recipe", "eval224", shards[3])
    assert r.returncode == 3, r.stderr
    assert "the members after it are lost" in r.stderr
    _, meta = load_output(out)
    assert [Path(p).name for p in meta_json(meta, "paths")] == [
        "000030000.jpg",
        "000030001.png",
        "000030002.jpg",
    ]
    failed = {f["path"]: f["reason"] for f in meta_json(meta, "failed")}
    assert (
        "cut short" in failed[f"{shards[3]}/000030003.png"]
        or "runcated" in failed[f"{shards[3]}/000030003.png"]
    )
    assert "the members after it are lost" in failed[str(shards[3])]


def test_not_a_tar_is_a_failed_input_and_the_run_goes_on(tmp_path, model, shards):
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"x" * 4000)
    out = tmp_path / "o.safetensors"
    r = run("extract", "-m", model, "-o", out, "--recipe", "eval224", bogus, shards[0])
    assert r.returncode == 3, r.stderr
    _, meta = load_output(out)
    assert len(meta_json(meta, "paths")) == 5
    failed = meta_json(meta, "failed")
    assert failed[0]["path"] == str(bogus) and "Unrecognized archive format" in failed[0]["reason"]


@pytest.mark.parametrize("recipe", ["eval224", "aligned"])
def test_merged_shard_outputs_equal_one_run_over_every_shard(tmp_path, model, shards, recipe):
    single = tmp_path / "single.safetensors"
    r = run("extract", "-m", model, "-o", single, "--recipe", recipe, *shards)
    assert r.returncode == 3, r.stderr
    out = extract_each(model, shards, tmp_path / "out", "--recipe", recipe)
    merged = tmp_path / "merged.safetensors"
    r = run("merge", "-o", merged, out)
    assert r.returncode == 0, r.stderr
    assert_same_output(merged, single)
    _, meta = load_output(merged)
    if recipe == "aligned":
        assert meta["patch_layout"] == "by_grid"
    assert [m["rows"] for m in meta_json(meta, "merged_from")] == [5, 4, 5, 3]

    # --shard I/N outputs of one list merge back into the order of the unsharded run.
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"part{i}.safetensors")
        r = run(
            "extract",
            "-m",
            model,
            "-o",
            parts[-1],
            "--recipe",
            recipe,
            "--shard",
            f"{i}/3",
            *shards,
        )
        assert r.returncode in (0, 3), r.stderr
    merged_parts = tmp_path / "merged_parts.safetensors"
    r = run("merge", "-o", merged_parts, *reversed(parts))
    assert r.returncode == 0, r.stderr
    assert "shards of one list" in r.stderr
    assert_same_output(merged_parts, single)
    _, meta_p = load_output(merged_parts)
    _, meta_s = load_output(single)
    assert meta_p["input_indices"] == meta_s["input_indices"]


def test_merge_refuses_duplicates_other_models_and_npy_and_writes_an_index(tmp_path, model, shards):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("extract", "-m", model, "-o", a, "--recipe", "eval224", shards[0]).returncode == 0
    assert run("extract", "-m", model, "-o", b, "--recipe", "eval224", shards[2]).returncode == 0
    r = run("merge", "-o", tmp_path / "m.safetensors", a, a)
    assert r.returncode == 2 and "is in more than one input" in r.stderr
    other = tmp_path / "other.safetensors"
    r = run("extract", "-m", model, "-o", other, "--recipe", "square518", shards[2])
    assert r.returncode == 0, r.stderr
    r = run("merge", "-o", tmp_path / "m.safetensors", a, other)
    assert r.returncode == 2 and '"recipe"' in r.stderr
    r = run("merge", "-o", a, a, b)
    assert r.returncode == 2 and "also an input" in r.stderr
    npy = tmp_path / "npy"
    r = run("extract", "-m", model, "-o", npy, "--format", "npy", "--recipe", "eval224", shards[0])
    assert r.returncode == 0, r.stderr
    r = run("merge", "-o", tmp_path / "m.safetensors", npy)
    assert r.returncode == 2 and "npy folder" in r.stderr

    index = tmp_path / "index.json"
    r = run("merge", "--index", "-o", index, a, b)
    assert r.returncode == 0, r.stderr
    doc = json.loads(index.read_text())
    assert doc["format"] == "dinov2-features-index" and doc["rows"] == 10
    assert [(f["path"], f["rows"], f["first_row"]) for f in doc["files"]] == [
        ("a.safetensors", 5, 0),
        ("b.safetensors", 5, 5),
    ]


def test_verify_finds_missing_duplicated_and_failed_inputs(tmp_path, model, shards):
    out = extract_each(model, shards, tmp_path / "out", "--recipe", "eval224", "--no-patches")
    report = tmp_path / "report.json"
    r = run("verify", "--features", out, "--report", report, *shards)
    assert r.returncode == 3, r.stderr  # complete, with failed inputs
    assert "complete, with failed inputs" in r.stderr
    doc = json.loads(report.read_text())
    assert doc["complete"] and doc["rows"] == 17 and doc["inputs"] == 20
    assert {f["path"] for f in doc["failed"]} == {
        f"{shards[1]}/000010002.jpg",
        f"{shards[3]}/000030003.png",
        str(shards[3]),
    }

    (out / "00002.safetensors").rename(tmp_path / "00002.safetensors")
    r = run("verify", "--features", out, "--report", report, *shards)
    assert r.returncode == 4 and "INCOMPLETE" in r.stderr
    assert f"missing: {shards[2]}/000020000.jpg" in r.stderr
    assert len(json.loads(report.read_text())["missing"]) == 5

    (tmp_path / "00002.safetensors").rename(out / "00002.safetensors")
    copy = out / "copy.safetensors"
    copy.write_bytes((out / "00000.safetensors").read_bytes())
    r = run("verify", "-f", out, *shards)
    assert r.returncode == 4 and "duplicated: " in r.stderr and "copy.safetensors" in r.stderr
    copy.unlink()
    r = run("verify", "-f", out, *shards[:2])
    assert r.returncode == 4 and "not an input" in r.stderr

    (out / "00004.safetensors.parts").mkdir()
    r = run("verify", "-f", out, *shards)
    assert r.returncode == 3 and "unfinished run" in r.stderr
    r = run("verify", "-f", tmp_path / "nothing_here", *shards)
    assert r.returncode == 2 and "no such file" in r.stderr
