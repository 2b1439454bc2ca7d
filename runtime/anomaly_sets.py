"""Simple images that likelihood-based anomaly scores get wrong (blank, near-blank, noise,
non-digit shapes): shared by the tests and benchmarks/bench_anomaly.py. numpy only."""

from __future__ import annotations

import numpy as np


def simple_images(n_each: int = 25, seed: int = 0) -> dict[str, np.ndarray]:
    """{kind: float32 [n, 1, 28, 28]} for kind in blank, near-blank, noise, shapes."""
    rng = np.random.default_rng(seed)
    blank = np.stack([np.zeros((28, 28)), np.ones((28, 28)), np.full((28, 28), 0.5)])
    near = np.zeros((n_each, 28, 28))
    for a in near:
        for _ in range(rng.integers(1, 4)):
            a[rng.integers(0, 28), rng.integers(0, 28)] = 1.0
    noise = np.concatenate([rng.random((n_each - n_each // 2, 28, 28)),
                            (rng.random((n_each // 2, 28, 28)) < 0.3).astype(float)])
    shapes = np.zeros((n_each, 28, 28))
    yy, xx = np.mgrid[0:28, 0:28]
    for i, a in enumerate(shapes):
        kind = i % 4
        cy, cx, r = rng.integers(9, 19), rng.integers(9, 19), rng.integers(4, 9)
        if kind == 0:
            a[cy - r: cy + r, cx - r: cx + r] = 1.0  # square
        elif kind == 1:
            a[np.hypot(yy - cy, xx - cx) < r] = 1.0  # filled disk (a ring would be a zero)
        elif kind == 2:
            a[:, ::4] = 1.0  # stripes
        else:
            a[((yy // 4) + (xx // 4)) % 2 == 0] = 1.0  # checkerboard
    out = {"blank": blank, "near-blank": near, "noise": noise, "shapes": shapes}
    return {k: v[:, None].astype(np.float32) for k, v in out.items()}


def auroc(anomalous: np.ndarray, normal: np.ndarray) -> float:
    """P(score of an anomalous input > score of a normal one), ties counted half (Mann-Whitney)."""
    a, n = np.asarray(anomalous, np.float64), np.asarray(normal, np.float64)
    allv = np.concatenate([a, n])
    sorter = np.argsort(allv, kind="mergesort")
    _, inverse, counts = np.unique(allv[sorter], return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2  # the average rank of each run of ties
    ranks = np.empty(len(allv))
    ranks[sorter] = average[inverse]
    return float((ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(n)))
