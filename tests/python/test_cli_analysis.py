# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of the analysis subcommands of the `dinov2` tool (pca, search, probe,
classify, depth, segment) and of the example programs.

The tool is looked up as `$DINOV2_BUILD_DIR/bin/dinov2` and the examples as
`$DINOV2_BUILD_DIR/examples/NAME` (DINOV2_BUILD_DIR defaults to `<repo>/build`); tests are skipped,
saying so, when they are absent.

Models: a 2-block ViT-S/14 with random weights for everything that reads the last block (fast),
and the full 12-block one where the official dense heads need their block index 11. Random
weights are enough: the probes must separate visually distinct synthetic classes, which random
features of colour and texture do. Data: scripts/make_probe_data.py (deterministic).

References: the features the tool itself writes with `dinov2 extract` on the same recipe, run
through NumPy implementations of the documented formulas (PCA colours, cosine scores, the linear
head's logits). Features agree to float32 summation order (~1e-6), hence TOL = 1e-4 for scores and
probabilities, and +-1 grey level for colours rounded to 8 bits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DINOV2_BUILD_DIR", REPO / "build"))
TOOL = BUILD / "bin" / "dinov2"
EXAMPLES = BUILD / "examples"
SAMPLES = REPO / "examples" / "data"
TOL = 1e-4
# The segmentation_probe example on the generated masks (24 scenes, 16 train / 8 test) with the
# 2-block random model measured mIoU 0.868; a probe that learnt nothing scores about 0.2.
SEG_MIOU_MIN = 0.75

pytestmark = pytest.mark.skipif(
    not TOOL.exists(),
    reason=f"the dinov2 tool is not built: {TOOL} is missing (build the project, or set DINOV2_BUILD_DIR "
    "to the build folder)",
)


def run(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def example(name: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = EXAMPLES / name
    if not exe.exists():
        pytest.skip(f"the example {name} is not built: {exe} is missing (DINOV2_BUILD_EXAMPLES=ON)")
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def photos() -> List[Path]:
    return sorted(p for p in SAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".png"))


def load_features(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def model(s2_model) -> Path:
    """A 2-block ViT-S/14 with random weights (conftest.py)."""
    return s2_model


@pytest.fixture(scope="module")
def full_model(tmp_path_factory) -> Path:
    """The full 12-block ViT-S/14 with random weights (the dense heads read block 11)."""
    from dinov2_export.export import export
    from dinov2_export.weights import load_weights

    path = tmp_path_factory.mktemp("model") / "s12.pt"
    export(load_weights("random", "dinov2_vits14", seed=1), path)
    return path


def export_head(folder: Path, kind: str, seed: int) -> Path:
    from dinov2_export import heads as H

    path = folder / f"{kind}.pt"
    H.export_head(H.load_head_weights("random", kind, "dinov2_vits14", None, seed), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe_data")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_probe_data.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, model) -> Path:
    out = tmp_path_factory.mktemp("gallery") / "gallery.safetensors"
    r = run("extract", "--model", model, "--output", out, "--recipe", "eval224", *photos())
    assert r.returncode == 0, r.stderr
    return out


# ---------------------------------------------------------------------------------------------
# pca


def numpy_pca_colours(patches: np.ndarray, clip: float = 1.0) -> np.ndarray:
    """[N, h, w, D] -> [N, h, w, 3] in [0, 1] by the documented rules (joint fit, sign of the
    largest loading positive, percentile scaling)."""
    rows = patches.reshape(-1, patches.shape[-1]).astype(np.float64)
    mean = rows.mean(0)
    values, vectors = np.linalg.eigh(np.cov(rows - mean, rowvar=False))
    basis = vectors[:, ::-1][:, :3].T
    basis = basis * np.sign(basis[np.arange(3), np.abs(basis).argmax(1)])[:, None]
    proj = (rows - mean) @ basis.T
    lo, hi = np.percentile(proj, clip, axis=0), np.percentile(proj, 100 - clip, axis=0)
    return np.clip((proj - lo) / (hi - lo), 0, 1).reshape(patches.shape[:3] + (3,))


def test_pca_pictures_match_numpy_on_the_extracted_patches(tmp_path, model):
    images = photos()[:3]
    feats = tmp_path / "f.safetensors"
    assert (
        run(
            "extract", "--model", model, "--output", feats, "--recipe", "square(224)", *images
        ).returncode
        == 0
    )
    out = tmp_path / "pca"
    r = run("pca", "--model", model, "--output", out, "--recipe", "square(224)", *images)
    assert r.returncode == 0, r.stderr
    assert (out / "sheet.png").exists()
    expected = numpy_pca_colours(load_features(feats)[0]["patch"].numpy())
    for i, path in enumerate(images):
        picture = Image.open(out / f"{path.stem}_pca.png")
        original = Image.open(path)
        assert picture.size == original.size and picture.mode == "RGB"
        # Nearest upsampling: the pixel at the centre of patch (i, j) has that patch's colour.
        a = np.asarray(picture).astype(int)
        h, w = a.shape[:2]
        ys = ((np.arange(16) + 0.5) * h / 16).astype(int)
        xs = ((np.arange(16) + 0.5) * w / 16).astype(int)
        sampled = a[ys][:, xs]
        assert np.abs(sampled - np.round(expected[i] * 255)).max() <= 1


def test_pca_mask_and_failures(tmp_path, model):
    images = photos()[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "pca"
    r = run(
        "pca",
        "--model",
        model,
        "--output",
        out,
        "--recipe",
        "square(224)",
        "--mask",
        "--components",
        "1",
        *images,
        bad,
    )
    assert r.returncode == 3, r.stderr  # the good images are done, the bad one reported
    assert "broken.png" in r.stderr and r.stderr.startswith("dinov2:")
    for path in images:
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(path).convert("L")).shape
        assert set(np.unique(mask)) <= {0, 255} and 0 < (mask == 255).mean() < 1
        picture = np.asarray(Image.open(out / f"{path.stem}_pca.png"))
        assert (picture[mask == 0] == 0).all()  # the background is black
        assert (picture[..., 0] == picture[..., 2]).all()  # one component: grey
    sheet = Image.open(out / "sheet.png")
    assert sheet.height == 2 * 256 + 4  # two rows of the default height and a gap


def test_pca_refuses_a_missing_model(tmp_path):
    r = run("pca", "--model", tmp_path / "nope.pt", "--output", tmp_path / "o", *photos()[:1])
    assert r.returncode == 2 and r.stderr.startswith("dinov2:")


# ---------------------------------------------------------------------------------------------
# search


def test_search_finds_each_query_itself_with_numpy_cosines(model, gallery):
    tensors, meta = load_features(gallery)
    paths = json.loads(meta["paths"])
    cls = tensors["cls"].double()
    cls = cls / cls.norm(dim=1, keepdim=True)
    queries = [Path(paths[1]), Path(paths[3])]
    r = run("search", "--gallery", gallery, "--model", model, "--k", 3, "--json", *queries)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [q["query"] for q in report] == [str(q) for q in queries]
    for q, row in zip(report, (1, 3)):
        hits = q["results"]
        assert len(hits) == 3
        assert hits[0]["path"] == paths[row] and abs(hits[0]["score"] - 1.0) < TOL
        sims = (cls @ cls[row]).numpy()
        order = np.argsort(-sims)[:3]
        assert [h["row"] for h in hits] == order.tolist()
        assert np.abs(np.array([h["score"] for h in hits]) - sims[order]).max() < TOL
        assert [h["path"] for h in hits] == [paths[i] for i in order]


def test_search_text_output_and_k_beyond_the_gallery(model, gallery):
    r = run("search", "--gallery", gallery, "--model", model, "-k", 50, photos()[0])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == f"query: {photos()[0]}"
    assert len(lines) == 1 + len(photos())  # every gallery row, once
    rank, score, path = lines[1].split(maxsplit=2)
    assert rank == "1" and abs(float(score) - 1.0) < TOL and path == str(photos()[0])


def test_search_with_a_faiss_index_or_a_clear_refusal(tmp_path, model, gallery):
    index = tmp_path / "gallery.faiss"
    query = photos()[2]
    r = run(
        "search",
        "--gallery",
        gallery,
        "--model",
        model,
        "--k",
        4,
        "--json",
        "--index",
        index,
        query,
    )
    if r.returncode == 2 and "no FAISS support" in r.stderr:
        assert r.stderr.startswith("dinov2:") and "DINOV2_WITH_FAISS" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert index.exists()
    exact = json.loads(
        run("search", "--gallery", gallery, "--model", model, "--k", 4, "--json", query).stdout
    )
    again = run(
        "search",
        "--gallery",
        gallery,
        "--model",
        model,
        "--k",
        4,
        "--json",
        "--index",
        index,
        query,
    )
    assert again.returncode == 0, again.stderr
    for result in (json.loads(r.stdout), json.loads(again.stdout)):
        assert [h["row"] for h in result[0]["results"]] == [h["row"] for h in exact[0]["results"]]
        for a, b in zip(result[0]["results"], exact[0]["results"]):
            assert abs(a["score"] - b["score"]) < TOL


def test_search_refuses_a_file_without_cls(tmp_path, model):
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2, 3)}, str(bad))
    r = run("search", "--gallery", bad, "--model", model, photos()[0])
    assert r.returncode == 2 and "cls" in r.stderr and r.stderr.startswith("dinov2:")


# ---------------------------------------------------------------------------------------------
# probe


def parse_top1(text: str, what: str) -> float:
    m = re.search(rf"^{re.escape(what)}: top-1 ([\d.]+) %", text, flags=re.M)
    assert m, f"no '{what}: top-1' line in:\n{text}"
    return float(m.group(1))


def test_probe_train_separates_the_generated_classes(tmp_path, model, data):
    head = tmp_path / "probe.safetensors"
    r = run(
        "probe",
        "train",
        "--model",
        model,
        "--data",
        data / "classification",
        "--output",
        head,
        "--val-split",
        0.25,
        "--seed",
        3,
        "--knn",
    )
    assert r.returncode == 0, r.stderr
    val = parse_top1(r.stdout, "validation")
    knn = parse_top1(r.stdout, "kNN (k = 20, T = 0.07) validation")
    print(f"\nprobe train: validation top-1 {val} %, kNN top-1 {knn} %")
    assert val >= 95.0
    assert "rows: true class, columns: predicted class" in r.stdout

    from safetensors import safe_open

    with safe_open(str(head), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("weight").shape == (4, 2 * 384) and f.get_tensor("bias").shape == (4,)
    assert meta["format"] == "dinov2-linear-probe"
    assert json.loads(meta["class_names"]) == sorted(
        p.name for p in (data / "classification").iterdir()
    )
    assert abs(float(meta["val_top1"]) * 100 - val) < 0.01
    assert meta["val_images"] == "20" and meta["train_images"] == "60"  # 5 of 20 per class

    # Evaluating the saved head on the whole dataset, and classifying one image with it.
    e = run("probe", "eval", "--model", model, "--head", head, "--data", data / "classification")
    assert e.returncode == 0, e.stderr
    assert parse_top1(e.stdout, str(data / "classification")) >= 95.0
    image = data / "classification" / "green_stripes" / "green_stripes_07.png"
    c = run("classify", "--model", model, "--head", head, "--k", 2, image)
    assert c.returncode == 0, c.stderr
    assert re.search(r"^\s+1\s+[\d.]+\s+green_stripes \(1\)$", c.stdout, flags=re.M), c.stdout


def test_probe_split_is_reproducible_and_the_seed_matters(tmp_path, model, data):
    from safetensors.torch import load_file

    outs = []
    for i, seed in enumerate((5, 5, 6)):
        head = tmp_path / f"p{i}.safetensors"
        r = run(
            "probe",
            "train",
            "--model",
            model,
            "--data",
            data / "classification",
            "--output",
            head,
            "--seed",
            seed,
            "--features",
            "cls",
        )
        assert r.returncode == 0, r.stderr
        outs.append(load_file(str(head))["weight"])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    assert outs[0].shape == (4, 384)


def test_probe_errors(tmp_path, model, data):
    r = run(
        "probe",
        "train",
        "--model",
        model,
        "--data",
        tmp_path / "missing",
        "--output",
        tmp_path / "h",
    )
    assert r.returncode == 2 and "not a folder" in r.stderr and r.stderr.startswith("dinov2:")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(one / "only" / "a.png")
    r = run("probe", "train", "--model", model, "--data", one, "--output", tmp_path / "h")
    assert r.returncode == 2 and "at least 2" in r.stderr
    r = run("probe", "eval", "--model", model, "--head", model, "--data", data / "classification")
    assert r.returncode == 2 and r.stderr.startswith("dinov2:")
    assert run("probe").returncode == 2  # a subcommand is required
    for sub in ("train", "eval"):
        h = run("probe", sub, "--help")
        assert h.returncode == 0 and "--data" in h.stdout


# ---------------------------------------------------------------------------------------------
# classify, depth, segment


def test_classify_matches_the_head_maths_on_extracted_features(tmp_path, model, gallery):
    from dinov2_export import heads as H

    head = export_head(tmp_path, "linear", seed=4)
    sd = H.load_head_weights("random", "linear", "dinov2_vits14", None, 4).state_dict
    names = H.class_names("imagenet")
    tensors, meta = load_features(gallery)
    paths = json.loads(meta["paths"])
    r = run("classify", "--model", model, "--head", head, "--k", 5, *paths[:2])
    assert r.returncode == 0, r.stderr
    blocks = re.split(r"^(?=\S)", r.stdout, flags=re.M)
    blocks = [b for b in blocks if b.strip()]
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        lines = block.strip().splitlines()
        assert lines[0] == paths[i]
        x = torch.cat([tensors["cls"][i], tensors["patch"][i].mean((0, 1))]).double()
        probs = torch.softmax(sd["weight"].double() @ x + sd["bias"].double(), 0)
        top = torch.topk(probs, 5)
        for rank, line in enumerate(lines[1:]):
            m = re.match(r"^\s+(\d)\s+([\d.]+)\s+(.*) \((\d+)\)$", line)
            assert m, line
            index = int(m.group(4))
            assert int(m.group(1)) == rank + 1 and index == top.indices[rank].item()
            assert abs(float(m.group(2)) - top.values[rank].item()) < TOL
            assert m.group(3) == names[index]


def test_classify_refuses_a_head_of_another_kind(tmp_path, full_model):
    head = export_head(tmp_path, "depth_linear", seed=1)
    r = run("classify", "--model", full_model, "--head", head, photos()[0])
    assert r.returncode == 2 and r.stderr.startswith("dinov2:")


def test_depth_writes_colour_and_millimetre_pngs(tmp_path, full_model):
    head = export_head(tmp_path, "depth_linear", seed=2)
    images = photos()[:2]
    out = tmp_path / "depth"
    r = run(
        "depth",
        "--model",
        full_model,
        "--head",
        head,
        "--output",
        out,
        "--recipe",
        "patch_aligned(224)",
        "--raw",
        *images,
    )
    assert r.returncode == 0, r.stderr
    for path in images:
        colour = Image.open(out / f"{path.stem}_depth.png")
        assert colour.size == Image.open(path).size and colour.mode == "RGB"
        mm = np.asarray(Image.open(out / f"{path.stem}_depth16.png")).astype(np.int64)
        assert mm.shape == (colour.size[1], colour.size[0])
        m = re.search(
            rf"^{re.escape(str(path))} -> .*: depth ([\d.]+) \.\. ([\d.]+) m", r.stdout, flags=re.M
        )
        assert m, r.stdout
        lo, hi = float(m.group(1)), float(m.group(2))
        assert 0.001 <= lo <= hi <= 10.0  # the NYU range of the head
        # Millimetres, resized bilinearly within the range the tool printed.
        assert lo * 1000 - 1 <= mm.min() and mm.max() <= hi * 1000 + 1


def test_segment_paints_the_palette(tmp_path, full_model):
    from dinov2_export import heads as H

    head = export_head(tmp_path, "seg_linear", seed=3)
    palette = {tuple(c) for c in H.palette("ade20k")}
    images = photos()[:2]
    out = tmp_path / "seg"
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    r = run(
        "segment",
        "--model",
        full_model,
        "--head",
        head,
        "--output",
        out,
        "--recipe",
        "square(224)",
        "--overlay",
        *images,
        bad,
    )
    assert r.returncode == 3, r.stderr
    assert "empty.jpg" in r.stderr
    for path in images:
        seg = np.asarray(Image.open(out / f"{path.stem}_seg.png").convert("RGB"))
        assert seg.shape[:2] == np.asarray(Image.open(path)).shape[:2]
        colours = {tuple(c) for c in np.unique(seg.reshape(-1, 3), axis=0)}
        assert colours <= palette
        assert (out / f"{path.stem}_overlay.png").exists()


# ---------------------------------------------------------------------------------------------
# examples


def test_segmentation_probe_example_reaches_the_stated_miou(model, data):
    r = example("segmentation_probe", model, data / "segmentation")
    assert r.returncode == 0, r.stderr
    miou = float(re.search(r"^mIoU: ([\d.]+)", r.stdout, flags=re.M).group(1))
    print(f"\nsegmentation_probe mIoU {miou:.4f}")
    assert miou >= SEG_MIOU_MIN


def test_linear_probe_and_knn_examples(tmp_path, model, data):
    r = example("linear_probe", model, data / "classification", tmp_path / "p.safetensors")
    assert r.returncode == 0, r.stderr
    top1 = float(re.search(r"validation top-1 ([\d.]+) %", r.stdout).group(1))
    assert top1 >= 95.0 and (tmp_path / "p.safetensors").exists()
    k = example("knn_retrieval", model, data / "classification")
    assert k.returncode == 0, k.stderr
    assert float(re.search(r"leave-one-out top-1: ([\d.]+) %", k.stdout).group(1)) >= 90.0


def test_extract_pca_and_depth_examples(tmp_path, model, full_model):
    feats = tmp_path / "f.safetensors"
    r = example("extract_features", model, feats, *photos()[:3])
    assert r.returncode == 0, r.stderr
    tensors, _ = load_features(feats)
    assert tensors["cls"].shape == (3, 384) and tensors["patch"].shape == (3, 16, 16, 384)
    # A file that is not an image comes back from the Pipeline as a value: reported, skipped.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    r = example("extract_features", model, tmp_path / "g.safetensors", broken, photos()[0])
    assert r.returncode == 3, r.stderr
    assert f"skipped {broken}: not an image in a supported format" in r.stderr
    assert load_features(tmp_path / "g.safetensors")[0]["cls"].shape == (1, 384)
    p = example("pca_visualize", model, tmp_path / "pca", *photos()[:2])
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "pca" / "sheet.png").exists()
    head = export_head(tmp_path, "depth_linear", seed=5)
    d = example("depth_probe", full_model, head, photos()[0], tmp_path / "d.png")
    assert d.returncode == 0, d.stderr
    assert Image.open(tmp_path / "d.png").size == Image.open(photos()[0]).size
    bad = example("depth_probe", model, head, photos()[0], tmp_path / "e.png")
    assert bad.returncode == 1 and bad.stderr.startswith("dinov2:")  # 2 blocks: no block 11
