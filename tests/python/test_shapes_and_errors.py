# SPDX-License-Identifier: Apache-2.0
"""One file serves many shapes; every refused input names the problem."""

from __future__ import annotations

import pytest
import torch

from conftest import export_and_load, random_weights
from dinov2_export.cli import main as cli_main
from dinov2_export.weights import WeightsError, build_model, load_weights

SIZES = [(14, 14), (224, 224), (518, 518), (280, 462), (630, 350), (126, 700)]


@pytest.fixture(scope="module")
def reg_model(tmp_path_factory):
    w = random_weights("dinov2_vits14_reg", depth=2, seed=9)
    return w, export_and_load(w, tmp_path_factory.mktemp("m") / "m.pt")


@pytest.mark.parametrize("batch", [1, 3])
def test_one_file_serves_every_batch_and_resolution(reg_model, batch):
    w, scripted = reg_model
    eager = build_model(w)
    for h, wd in SIZES:
        x = torch.randn(batch, 3, h, wd)
        with torch.inference_mode():
            got, want = scripted(x), eager(x)
        assert got[2].shape == (batch, (h // 14) * (wd // 14), 384)
        for a, b in zip(got, want):
            assert (a - b).abs().max().item() <= 1e-5
        patches, cls = scripted.intermediate_layers(x, [0, -1], True)
        assert patches[1].shape == got[2].shape and cls[0].shape == (batch, 384)
        attn = scripted.cls_attention(x)
        assert attn.shape == (batch, 6, (h // 14) * (wd // 14))
        assert (attn.sum(-1) <= 1.0 + 1e-5).all()


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 3, 225, 224), "225x224 (HxW) is not a positive multiple of the patch size 14"),
        ((1, 3, 224, 13), "224x13"),
        ((1, 4, 224, 224), "expected 3 channels"),
        ((3, 224, 224), "got a tensor with 3 dimensions"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(reg_model, shape, message):
    _, scripted = reg_model
    with pytest.raises((RuntimeError, torch.jit.Error), match="dinov2:") as info:
        scripted(torch.randn(*shape))
    assert message in str(info.value)


def test_block_index_out_of_range_is_refused(reg_model):
    _, scripted = reg_model
    with pytest.raises(
        (RuntimeError, torch.jit.Error),
        match="block index 5 is out of range for a model with 2 blocks",
    ):
        scripted.intermediate_layers(torch.randn(1, 3, 28, 28), [5], True)


def test_cls_attention_sums_to_one_over_all_tokens(reg_model):
    w, scripted = reg_model
    # Over patches only, the sum is below one by the share taken by CLS and registers.
    attn = scripted.cls_attention(torch.randn(2, 3, 56, 42))
    assert attn.min() >= 0 and (attn.sum(-1) < 1).all() and (attn.sum(-1) > 0).all()


def save(sd, path):
    torch.save(sd, path)
    return str(path)


def test_missing_key_is_named_with_its_shape(tmp_path):
    sd = random_weights("dinov2_vits14", depth=2).state_dict
    del sd["blocks.1.ls2.gamma"]
    with pytest.raises(
        WeightsError, match=r"missing key 'blocks.1.ls2.gamma' \(expected shape \(384,\)\)"
    ):
        load_weights(save(sd, tmp_path / "a.pth"), depth=2)


def test_unexpected_key_is_named(tmp_path):
    sd = random_weights("dinov2_vits14", depth=2).state_dict
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="unexpected key 'blocks.0.attn.extra'"):
        load_weights(save(sd, tmp_path / "a.pth"), depth=2)


def test_wrong_shape_is_named(tmp_path):
    sd = random_weights("dinov2_vits14", depth=2).state_dict
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(1000, 384)
    with pytest.raises(
        WeightsError,
        match=r"'blocks.0.mlp.fc1.weight' has shape \(1000, 384\), expected \(1536, 384\)",
    ):
        load_weights(save(sd, tmp_path / "a.pth"), depth=2)


def test_model_contradicting_the_weights_is_refused(tmp_path):
    sd = random_weights("dinov2_vits14", depth=2).state_dict
    with pytest.raises(
        WeightsError,
        match="--model dinov2_vitb14 contradicts the weights, which hold a dinov2_vits14",
    ):
        load_weights(save(sd, tmp_path / "a.pth"), "dinov2_vitb14", depth=2)
    with pytest.raises(WeightsError, match="--model dinov2_vits14_reg contradicts"):
        load_weights(str(tmp_path / "a.pth"), "dinov2_vits14_reg", depth=2)


def test_reduced_depth_needs_to_be_asked_for(tmp_path):
    sd = random_weights("dinov2_vits14", depth=2).state_dict
    with pytest.raises(WeightsError, match="the weights hold 2 blocks but dinov2_vits14 has 12"):
        load_weights(save(sd, tmp_path / "a.pth"))


def test_unknown_width_is_refused(tmp_path):
    sd = random_weights("dinov2_vits14", depth=1).state_dict
    sd["cls_token"] = torch.zeros(1, 1, 500)
    with pytest.raises(ValueError, match="no DINOv2 variant has width 500"):
        load_weights(save(sd, tmp_path / "a.pth"), depth=1)


def test_huggingface_wrong_key_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"encoder.layer.0.attention.bogus.weight": torch.zeros(2)}, str(tmp_path / "m.safetensors")
    )
    with pytest.raises(
        WeightsError, match="unexpected key 'encoder.layer.0.attention.bogus.weight'"
    ):
        load_weights(str(tmp_path / "m.safetensors"))


def test_cli_reports_errors_and_exit_codes(tmp_path, capsys):
    assert (
        cli_main(["--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o.pt")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    assert cli_main(["--weights", str(bad), "--output", str(tmp_path / "o.pt")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert cli_main(["--weights", "random", "--output", str(tmp_path / "o.pt")]) == 2
    assert "--model is required with --weights random" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_cli_exports_and_checks(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert (
        cli_main(
            [
                "--model",
                "dinov2_vits14",
                "--weights",
                "random",
                "--depth",
                "1",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "RANDOM weights" in capsys.readouterr().err
    assert cli_main(["--check", str(out)]) == 0
    assert "max abs error 0.000e+00" in capsys.readouterr().out
