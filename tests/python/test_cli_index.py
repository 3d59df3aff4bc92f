# SPDX-License-Identifier: Apache-2.0
"""`dinov2 index build`, `dinov2 search --index` and `dinov2 dedup`.

Features files are written here in the tool's own format (docs/CLI.md) from clustered vectors
with planted near-duplicate pairs, so that the expected duplicate groups are known; and made by
`dinov2 extract` from the sample photos, so that a search through a built index can be compared
with the exact search of the same gallery.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_extract import SAMPLES, TOOL, run

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"the dinov2 tool is not built: {TOOL}")

DIM = 384


def write_features(path: Path, cls: torch.Tensor, keys: list[str]) -> None:
    """A features file as `dinov2 extract --no-patches` writes one, holding `cls`."""
    from safetensors.torch import save_file

    n = cls.shape[0]
    meta = {
        "format": "dinov2-features",
        "format_version": "1",
        "model": json.dumps({"variant": "dinov2_vits14", "embed_dim": DIM}),
        "recipe": "eval_center_crop(224)",
        "patch_dtype": "none",
        "rows": str(n),
        "grid": "[16, 16]",
        "patch_layout": "none",
        "paths": json.dumps([f"{k}.jpg" for k in keys]),
        "keys": json.dumps(keys),
        "input_indices": json.dumps(list(range(n))),
        "image_sizes": json.dumps([[224, 224]] * n),
        "grids": json.dumps([[16, 16]] * n),
        "failed": "[]",
    }
    tensors = {"cls": cls.float().contiguous(), "registers": torch.zeros(n, 0, DIM)}
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3000 clustered unit vectors in two files, with 20 planted near-duplicate pairs (cosine
    above 0.9999); returns the folder and the planted pairs as key pairs."""
    folder = tmp_path_factory.mktemp("features")
    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(30, DIM, generator=gen), dim=1)
    x = centres[torch.randint(0, 30, (2980,), generator=gen)]
    x = torch.nn.functional.normalize(x + 0.05 * torch.randn(2980, DIM, generator=gen), dim=1)
    twins = x[:20] + 1e-3 * torch.randn(20, DIM, generator=gen)
    x = torch.cat([x, torch.nn.functional.normalize(twins, dim=1)])
    keys = [f"img{i:05d}" for i in range(3000)]
    pairs = {(keys[i], keys[2980 + i]) for i in range(20)}
    write_features(folder / "a.safetensors", x[:1500], keys[:1500])
    write_features(folder / "b.safetensors", x[1500:], keys[1500:])
    return folder, pairs


def groups_of(report: Path) -> set[tuple[str, ...]]:
    doc = json.loads(report.read_text())
    return {tuple(g["keys"]) for g in doc["duplicate_groups"]}


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq", "hnsw"])
def test_each_index_kind_builds_and_finds_the_planted_duplicates(tmp_path, planted, kind):
    folder, pairs = planted
    index = tmp_path / f"{kind}.faiss"
    r = run("index", "build", "--kind", kind, "-o", index, folder)
    assert r.returncode == 0, r.stderr
    sidecar = json.loads((tmp_path / f"{kind}.faiss.json").read_text())
    assert sidecar["kind"] == kind and sidecar["rows"] == 3000 and sidecar["dim"] == DIM
    assert [(f["rows"], f["first_row"]) for f in sidecar["files"]] == [(1500, 0), (1500, 1500)]
    report = tmp_path / "dedup.json"
    # IVF-PQ scores from its lossy codes, so its threshold is looser; the twins' cosine is above
    # 0.9999 and any other pair's below 0.8, so either way the groups are exactly the twins.
    threshold = "0.95" if kind == "ivf-pq" else "0.999"
    r = run("dedup", "--index", index, "--threshold", threshold, "-o", report)
    assert r.returncode == 0, r.stderr
    doc = json.loads(report.read_text())
    assert doc["rows"] == 3000 and doc["index"] != "exact"
    assert groups_of(report) == pairs
    assert doc["duplicates"] == 20 and doc["kept"] == 2980


def test_exact_dedup_and_the_budget_choice(tmp_path, planted):
    folder, pairs = planted
    report = tmp_path / "exact.json"
    r = run("dedup", "--threshold", "0.999", "-o", report, folder / "a.safetensors",
            folder / "b.safetensors")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert groups_of(report) == pairs
    assert json.loads(report.read_text())["index"] == "exact"

    # 3000 rows: exact up to 20,000 rows when it fits; a 1 MiB budget leaves IVF-PQ.
    r = run("index", "build", "-o", tmp_path / "big.faiss", "--memory-budget", "1G", folder)
    assert r.returncode == 0 and "Flat over 3000 vectors" in r.stderr, r.stderr
    r = run("index", "build", "-o", tmp_path / "small.faiss", "--memory-budget", "1M", folder)
    assert r.returncode == 0, r.stderr
    assert "IVF64,PQ64 nprobe=8 over 3000 vectors" in r.stderr
    assert json.loads((tmp_path / "small.faiss.json").read_text())["kind"] == "ivf-pq"
    r = run("index", "build", "-o", tmp_path / "none.faiss", "--memory-budget", "100K", folder)
    assert r.returncode == 2 and "the smallest" in r.stderr, r.stderr
    r = run("index", "build", "-o", tmp_path / "small.faiss", folder)
    assert r.returncode == 2 and "exists" in r.stderr
    r = run("index", "build", "-o", tmp_path / "x.faiss", "--memory-budget", "lots", folder)
    assert r.returncode == 2 and "--memory-budget" in r.stderr


def test_search_through_a_built_index_equals_the_exact_search(tmp_path, s2_model):
    photos = sorted(p for p in SAMPLES.glob("*") if p.suffix in (".jpg", ".png"))
    assert len(photos) >= 4
    gallery = tmp_path / "gallery.safetensors"
    r = run("extract", "-m", s2_model, "-o", gallery, "--recipe", "eval224", "--no-patches",
            *photos)  # fmt: skip
    assert r.returncode == 0, r.stderr
    exact = run("search", "-m", s2_model, "--gallery", gallery, "-k", "3", "--json", photos[0])
    assert exact.returncode == 0, exact.stderr
    for kind in ("flat", "hnsw"):
        index = tmp_path / f"{kind}.faiss"
        r = run("index", "build", "--kind", kind, "-o", index, gallery)
        assert r.returncode == 0, r.stderr
        got = run("search", "-m", s2_model, "--index", index, "-k", "3", "--json", photos[0])
        assert got.returncode == 0, got.stderr
        assert "dinov2 search: FAISS index" in got.stderr
        a, b = json.loads(exact.stdout)[0]["results"], json.loads(got.stdout)[0]["results"]
        assert [h["path"] for h in a] == [h["path"] for h in b]
        assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
    # The index's files moved with it: INDEX.json names them relative to the index.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("gallery.safetensors", "hnsw.faiss", "hnsw.faiss.json"):
        shutil.move(tmp_path / name, moved / name)
    got = run("search", "-m", s2_model, "--index", moved / "hnsw.faiss", "-k", "3", photos[0])
    assert got.returncode == 0, got.stderr
    r = run("search", "-m", s2_model, "-k", "3", photos[0])
    assert r.returncode == 2 and "--gallery" in r.stderr
