# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_pca.cpp, test_retrieval.cpp and test_probe.cpp (files
prefixed `analysis_`).

Everything is computed here in float64 with NumPy alone, from the float32 inputs saved next to
the results, by direct implementations of the documented formulas:

- PCA: covariance of the centred samples / (N - 1), `np.linalg.eigh`, the top k eigenvectors with
  the largest-magnitude entry made positive (the library's sign convention); colours scaled from
  `np.percentile(p)` to `np.percentile(100 - p)` per component and clipped; the foreground mask
  from the first component oriented so that border patches score lower, min-max scaled, > 0.5.
- retrieval: brute-force cosine similarity of every query with every gallery row, sorted.
- kNN: the k = 20 most similar rows, weights exp(sim / 0.07) summed per class.
- linear probe: the minimum of the documented objective (mean softmax cross-entropy on
  standardised features + weight_decay / 2 * |W|^2) found by Newton's method with exact Hessians,
  independent of the L-BFGS used by the library.

Deterministic (fixed seeds) and fast (well under a second), so it always rewrites its file.

Usage: python tests/refgen/analysis_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

GRIDS: List[Tuple[int, int]] = [(6, 8), (7, 7), (5, 9)]
DIM = 48


def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


# -- PCA ----------------------------------------------------------------------------------------


def pca_features(rng: np.random.Generator) -> List[np.ndarray]:
    """Patch maps with a clear foreground (an interior block along one direction) and a few
    further directions of distinct variance, plus isotropic noise; float32 like model outputs."""
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    maps = []
    for h, w in GRIDS:
        fg = np.zeros((h, w))
        fg[1 : h - 1 - (h > 5), 2 : w - 2] = 1.0  # never on the border
        x = 5.0 * fg[..., None] * q[:, 0]
        for j, s in enumerate([2.0, 1.4, 0.9, 0.5], start=1):
            x = x + s * rng.standard_normal((h, w, 1)) * q[:, j]
        x = x + 0.15 * rng.standard_normal((h, w, DIM)) + 0.3
        maps.append(x.astype(np.float32))
    return maps


def pca_fit(rows: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = rows.astype(np.float64)
    mean = rows.mean(0)
    c = rows - mean
    cov = c.T @ c / (rows.shape[0] - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    basis = vectors[:, ::-1][:, :k].T.copy()
    for i in range(k):
        if basis[i, np.argmax(np.abs(basis[i]))] < 0:
            basis[i] = -basis[i]
    return mean, basis, values[::-1][:k]


def colours(maps: List[np.ndarray], mean, basis, fit_rows: np.ndarray, clip: float, masks=None):
    values = (fit_rows - mean) @ basis.T
    out = []
    ranges = []
    for c in range(basis.shape[0]):
        lo, hi = np.percentile(values[:, c], [clip, 100.0 - clip])
        ranges.append((lo, hi))
    for i, m in enumerate(maps):
        p = (m.astype(np.float64) - mean) @ basis.T
        rgb = np.zeros(m.shape[:2] + (3,))
        for c, (lo, hi) in enumerate(ranges):
            rgb[..., c] = np.clip((p[..., c] - lo) / (hi - lo), 0.0, 1.0)
        if masks is not None:
            rgb = rgb * masks[i][..., None]
        out.append(rgb)
    return out, np.array(ranges)


def border(h: int, w: int) -> np.ndarray:
    b = np.zeros((h, w), bool)
    b[0, :] = b[-1, :] = b[:, 0] = b[:, -1] = True
    return b


def pca_refs(rng: np.random.Generator) -> Dict[str, torch.Tensor]:
    maps = pca_features(rng)
    rows = np.concatenate([m.reshape(-1, DIM) for m in maps]).astype(np.float64)
    mean, basis, variance = pca_fit(rows, 3)
    r: Dict[str, torch.Tensor] = {}
    for i, m in enumerate(maps):
        r[f"pca/features{i}"] = t(m)
    r["pca/mean"] = t(mean, torch.float64)
    r["pca/basis"] = t(basis, torch.float64)
    r["pca/variance"] = t(variance, torch.float64)
    for clip in (0, 1):
        cols, ranges = colours(maps, mean, basis, rows, float(clip))
        for i, c in enumerate(cols):
            r[f"pca/colors_clip{clip}_{i}"] = t(c, torch.float64)
        r[f"pca/ranges_clip{clip}"] = t(ranges, torch.float64)

    # Foreground mask, then the colour PCA on the foreground only (clip 1, the default).
    m1, b1, _ = pca_fit(rows, 1)
    scores = [((m.reshape(-1, DIM) - m1) @ b1.T)[:, 0].reshape(m.shape[:2]) for m in maps]
    bmean = np.concatenate([s[border(*s.shape)] for s in scores]).mean()
    imean = np.concatenate([s[~border(*s.shape)] for s in scores]).mean()
    sign = -1.0 if bmean > imean else 1.0
    allv = np.concatenate([s.ravel() for s in scores]) * sign
    lo, hi = allv.min(), allv.max()
    masks = [((s * sign - lo) / (hi - lo)) > 0.5 for s in scores]
    fg_rows = np.concatenate([m.reshape(-1, DIM)[k.ravel()] for m, k in zip(maps, masks)])
    fmean, fbasis, _ = pca_fit(fg_rows.astype(np.float64), 3)
    cols, _ = colours(maps, fmean, fbasis, fg_rows.astype(np.float64), 1.0, masks)
    r["pca/masked_basis"] = t(fbasis, torch.float64)
    for i, (c, k) in enumerate(zip(cols, masks)):
        r[f"pca/masked_colors{i}"] = t(c, torch.float64)
        r[f"pca/mask{i}"] = torch.from_numpy(k)
    return r


# -- retrieval and kNN --------------------------------------------------------------------------


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_refs(rng: np.random.Generator) -> Dict[str, torch.Tensor]:
    q = rng.standard_normal((7, 32)).astype(np.float32)
    g = (rng.standard_normal((1000, 32)) * rng.uniform(0.5, 3.0, (1000, 1))).astype(np.float32)
    sims = normalise(q.astype(np.float64)) @ normalise(g.astype(np.float64)).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    return {
        "retrieval/queries": t(q),
        "retrieval/gallery": t(g),
        "retrieval/indices": t(order, torch.int64),
        "retrieval/scores": t(np.take_along_axis(sims, order, 1), torch.float64),
        "retrieval/all_scores": t(sims, torch.float64),
    }


def knn_refs(rng: np.random.Generator) -> Dict[str, torch.Tensor]:
    classes, k, temp = 5, 20, 0.07
    centres = rng.standard_normal((classes, 16))
    labels = rng.integers(0, classes, 200)
    bank = (centres[labels] + 0.9 * rng.standard_normal((200, 16))).astype(np.float32)
    qlabels = rng.integers(0, classes, 50)
    queries = (centres[qlabels] + 0.9 * rng.standard_normal((50, 16))).astype(np.float32)
    sims = normalise(queries.astype(np.float64)) @ normalise(bank.astype(np.float64)).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, 1) / temp)
    scores = np.zeros((50, classes))
    for qi in range(50):
        for j in range(k):
            scores[qi, labels[top[qi, j]]] += weights[qi, j]
    return {
        "knn/bank": t(bank),
        "knn/labels": t(labels, torch.int64),
        "knn/queries": t(queries),
        "knn/query_labels": t(qlabels, torch.int64),
        "knn/scores": t(scores, torch.float64),
    }


# -- linear probe -------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def newton_logistic(x: np.ndarray, y: np.ndarray, classes: int, decay: float):
    """Minimises mean CE(softmax(x W^T + b), y) + decay / 2 |W|^2 by damped Newton steps."""
    n, f = x.shape
    onehot = np.eye(classes)[y]
    xa = np.hstack([x, np.ones((n, 1))])  # last column: bias
    theta = np.zeros((classes, f + 1))

    def objective(th):
        z = xa @ th.T
        zmax = z.max(1, keepdims=True)
        lse = (zmax + np.log(np.exp(z - zmax).sum(1, keepdims=True)))[:, 0]
        return (lse - (z * onehot).sum(1)).mean() + 0.5 * decay * (th[:, :f] ** 2).sum()

    reg = np.zeros((classes, f + 1))
    reg[:, :f] = decay
    for _ in range(100):
        p = softmax(xa @ theta.T)
        grad = (p - onehot).T @ xa / n + reg * theta
        # Hessian of the mean CE: sum_i (diag(p_i) - p_i p_i^T) kron (x_i x_i^T) / n.
        h = np.zeros((classes * (f + 1), classes * (f + 1)))
        for a in range(classes):
            for c in range(classes):
                wgt = p[:, a] * ((a == c) - p[:, c])
                h[a * (f + 1) : (a + 1) * (f + 1), c * (f + 1) : (c + 1) * (f + 1)] = (
                    (xa.T * wgt) @ xa / n
                )
        h += np.diag(reg.ravel())
        # The biases are free up to a common shift: the least-squares step ignores that direction.
        step = np.linalg.lstsq(h, grad.ravel(), rcond=None)[0].reshape(theta.shape)
        lr, f0 = 1.0, objective(theta)
        while objective(theta - lr * step) > f0 and lr > 1e-8:
            lr *= 0.5
        theta = theta - lr * step
        if np.abs(grad).max() < 1e-12:
            break
    return theta[:, :f], theta[:, f], objective(theta)


def probe_refs(rng: np.random.Generator) -> Dict[str, torch.Tensor]:
    r: Dict[str, torch.Tensor] = {}
    # Overlapping classes, so the optimum is well determined: the objective parity case.
    classes, f, n, decay = 3, 8, 300, 1e-2
    centres = rng.standard_normal((classes, f)) * 1.2
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.standard_normal((n, f)) * rng.uniform(0.5, 2.0, f) + 3.0).astype(
        np.float32
    )
    xd = x.astype(np.float64)
    mean, sd = xd.mean(0), xd.std(0)
    w, b, loss = newton_logistic((xd - mean) / sd, y, classes, decay)
    probs = softmax(((xd - mean) / sd) @ w.T + b)
    r.update(
        {
            "probe/x": t(x),
            "probe/y": t(y, torch.int64),
            "probe/weight_decay": torch.tensor(decay, dtype=torch.float64),
            "probe/loss": torch.tensor(loss, dtype=torch.float64),
            "probe/probs": t(probs, torch.float64),
        }
    )
    # Separable classes (centres about 5.7 apart, noise 0.25 per feature): ~100 % accuracy.
    classes, f = 4, 64
    centres = rng.standard_normal((classes, f))
    centres = 4.0 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    for split, count in (("train", 200), ("test", 400)):
        ys = rng.integers(0, classes, count)
        xs = centres[ys] + 0.25 * rng.standard_normal((count, f))
        r[f"probe/sep_{split}_x"] = t(xs.astype(np.float32))
        r[f"probe/sep_{split}_y"] = t(ys, torch.int64)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    out: Path = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)
    refs: Dict[str, torch.Tensor] = {}
    refs.update(pca_refs(rng))
    refs.update(retrieval_refs(rng))
    refs.update(knn_refs(rng))
    refs.update(probe_refs(rng))
    torch.save(refs, out / "analysis_refs.pt")


if __name__ == "__main__":
    main()
