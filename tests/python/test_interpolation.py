# SPDX-License-Identifier: Apache-2.0
"""Position-embedding interpolation, checked against direct calls and an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import export_and_load, random_weights

SIZES = [(16, 16), (20, 33), (45, 25), (9, 50), (37, 40), (1, 2)]


def cubic(x: float, a: float) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def scale_factor_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Rows of weights for bicubic with A=-0.75, clamped taps, sampling set by `scale`."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        x0 = math.floor(src)
        t = src - x0
        for k in range(-1, 3):
            m[i, min(max(x0 + k, 0), n_in - 1)] += cubic(k - t, -0.75)
    return m


def antialias_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows of weights of the Pillow-style separable filter: A=-0.5, stretched when shrinking,
    windows truncated at the borders and renormalised."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = np.array([cubic((j - centre + 0.5) / max(scale, 1.0), -0.5) for j in range(lo, hi)])
        m[i, lo:hi] = w / w.sum()
    return m


def apply_separable(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    # grid [D, M, M] -> [D, h, w]
    return np.einsum("hm,dmn,wn->dhw", rows, grid, cols)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interp")
    out = {}
    for name in ("dinov2_vits14", "dinov2_vits14_reg"):
        w = random_weights(name, depth=1, seed=11)
        out[name] = (w, export_and_load(w, tmp / f"{name}.pt"))
    return out


@pytest.mark.parametrize("h0,w0", SIZES)
def test_non_register_interpolation_equals_direct_scale_factor_call(models, h0, w0):
    w, scripted = models["dinov2_vits14"]
    pos = w.state_dict["pos_embed"]
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    direct = F.interpolate(
        grid, scale_factor=((h0 + 0.1) / 37, (w0 + 0.1) / 37), mode="bicubic", antialias=False
    )
    ours = scripted.interpolate_pos_encoding(h0, w0, torch.float32).detach()
    expected = torch.cat([pos[:, :1], direct.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)
    assert ours.shape == (1, 1 + h0 * w0, 384)
    assert (ours - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("h0,w0", SIZES)
def test_non_register_interpolation_follows_the_offset_formula(models, h0, w0):
    w, scripted = models["dinov2_vits14"]
    grid = w.state_dict["pos_embed"][0, 1:].reshape(37, 37, -1).permute(2, 0, 1).double().numpy()
    rows = scale_factor_matrix(37, h0, (h0 + 0.1) / 37)
    cols = scale_factor_matrix(37, w0, (w0 + 0.1) / 37)
    ref = apply_separable(grid, rows, cols)
    ours = scripted.interpolate_pos_encoding(h0, w0, torch.float32)[0, 1:]
    ours = ours.detach().reshape(h0, w0, -1).permute(2, 0, 1).double().numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    # The +0.1 matters: plain size-based sampling is measurably different away from 37x37.
    if (h0, w0) != (37, 37):
        plain = apply_separable(
            grid, scale_factor_matrix(37, h0, h0 / 37), scale_factor_matrix(37, w0, w0 / 37)
        )
        assert np.abs(plain - ref).max() > 1e-3


@pytest.mark.parametrize("h0,w0", SIZES)
def test_register_interpolation_is_the_antialiased_filter(models, h0, w0):
    w, scripted = models["dinov2_vits14_reg"]
    grid = w.state_dict["pos_embed"][0, 1:].reshape(37, 37, -1).permute(2, 0, 1).double().numpy()
    ref = apply_separable(grid, antialias_matrix(37, h0), antialias_matrix(37, w0))
    ours = scripted.interpolate_pos_encoding(h0, w0, torch.float32)[0, 1:]
    ours = ours.detach().reshape(h0, w0, -1).permute(2, 0, 1).double().numpy()
    assert np.abs(ours - ref).max() <= 1e-5


def test_518_skips_interpolation(models):
    for w, scripted in models.values():
        assert torch.equal(
            scripted.interpolate_pos_encoding(37, 37, torch.float32), w.state_dict["pos_embed"]
        )
