# SPDX-License-Identifier: Apache-2.0
"""AOTInductor packages (`dinov2-export --aot`): the compiled forward pass and its metadata.

Reference: the eager model of the same weights (official numerics). Inductor generates its own
kernels for the elementwise work and may sum in another order, so the tolerance is 1e-5, as for
the transformers comparisons. One package is compiled per module (about 10 s).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import ErrorLog, max_err, random_weights
from dinov2_export.aot import export_aot, parse_resolution, read_aot_metadata
from dinov2_export.cli import main as cli_main
from dinov2_export.weights import build_model

TOL = 1e-5


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    w = random_weights("dinov2_vits14", depth=2, seed=11)  # non-register: the +0.1 offset path
    path = tmp_path_factory.mktemp("aot") / "s2_42x98.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = export_aot(w, path, (42, 98), max_batch=4)
    return w, path, meta


def test_package_matches_the_eager_model(package):
    w, path, _ = package
    runner = torch._inductor.aoti_load_package(str(path))
    eager = build_model(w)
    for b in (1, 4):
        x = torch.randn(b, 3, 42, 98, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            got, want = runner(x), eager(x)
        for name, a, e in zip(("cls", "registers", "patches", "prenorm"), got, want):
            err = max_err(a, e)
            ErrorLog.add(f"AOTInductor S/14 2 blocks 42x98 batch {b} {name} vs eager", err)
            assert err <= TOL, name


def test_package_metadata_says_what_it_was_compiled_for(package):
    _, path, meta = package
    read = read_aot_metadata(path)
    assert read == meta
    assert read["format"] == "dinov2-backbone"
    assert read["backend"] == {
        "kind": "aotinductor",
        "resolution": [42, 98],
        "max_batch": 4,
        "device": "cpu",
    }
    assert not list(path.parent.glob("*.pt2.*")), "no temporary file is left behind"


@pytest.mark.parametrize(
    "text,want", [("518", (518, 518)), ("280x462", (280, 462)), ("14X28", (14, 28))]
)
def test_resolutions_parse(text, want):
    assert parse_resolution(text) == want


@pytest.mark.parametrize(
    "text,message",
    [
        ("500", "500 is not a positive multiple of the patch size 14"),
        ("224x0", "0 is not a positive multiple"),
        ("big", "is not N or HxW"),
        ("1x2x3", "is not N or HxW"),
    ],
)
def test_bad_resolutions_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_resolution(text)


def test_cli_refuses_bad_aot_requests(tmp_path, capsys):
    base = ["--model", "dinov2_vits14", "--weights", "random", "--depth", "1"]
    assert cli_main([*base, "--aot", "500", "--output", str(tmp_path / "m.pt2")]) == 2
    assert "not a positive multiple" in capsys.readouterr().err
    assert cli_main([*base, "--aot", "224", "--output", str(tmp_path / "m.pt")]) == 2
    assert "must end in .pt2" in capsys.readouterr().err
    assert cli_main([*base, "--output", str(tmp_path / "m.pt2")]) == 2
    assert "add --aot RES" in capsys.readouterr().err
    assert (
        cli_main([*base, "--aot", "224", "--max-batch", "0", "--output", str(tmp_path / "m.pt2")])
        == 2
    )
    assert "max_batch is 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
