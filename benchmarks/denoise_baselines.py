"""Baselines for `denoise`, kept out of the runtime: the classical filters a user would try first
(3x3 median, total variation, non-local means, BM3D) and the best single importance sample (what
plain importance sampling around the encoder collapses to). Used by bench_denoise.py and the tests.

Filters take and return [N, 1, H, W] float32 in [0, 1]. TV and NLM come from scikit-image, BM3D
from the `bm3d` package (pip install scikit-image bm3d); the median filter is pillow's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from vae_edge.runtime.denoise import masked_loglik, noise_loglik
from vae_edge.runtime.mathops import log_normal


def median3(noisy: np.ndarray) -> np.ndarray:
    out = [np.asarray(Image.fromarray(np.round(im[0] * 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(3)),
                      np.float32) / 255 for im in noisy]
    return np.stack(out)[:, None]


def total_variation(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return np.stack([denoise_tv_chambolle(im[0], weight=weight) for im in noisy])[:, None].astype(np.float32)


def non_local_means(noisy: np.ndarray, h: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return np.stack([denoise_nl_means(im[0], h=h, sigma=sigma, patch_size=3, patch_distance=5)
                     for im in noisy])[:, None].astype(np.float32)


def bm3d_filter(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return np.clip(np.stack([bm3d.bm3d(im[0], sigma_psd=sigma) for im in noisy])[:, None], 0, 1).astype(np.float32)


# each filter's parameter grid: the best value is chosen on held-out training digits
GRIDS = {
    "median 3x3": (lambda x, _: median3(x), [None]),
    "total variation": (total_variation, [0.05, 0.1, 0.15, 0.2, 0.3]),
    "non-local means": (lambda x, h: non_local_means(x, h, 0.3), [0.05, 0.1, 0.15, 0.2, 0.3]),
    "BM3D": (bm3d_filter, [0.15, 0.2, 0.3, 0.4]),
}


def tuned(name: str, noisy_train: np.ndarray, clean_train: np.ndarray):
    """(parameter, filter function) with the parameter that gives the lowest MSE on the
    training digits given."""
    fn, grid = GRIDS[name]
    mses = [(float(np.mean((fn(noisy_train, g) - clean_train) ** 2)), i) for i, g in enumerate(grid)]
    best = grid[min(mses)[1]]
    return best, (lambda x: fn(x, best))


def best_single_sample(rt, noisy: np.ndarray, spec: str, mask, k: int = 512, seed: int = 1) -> np.ndarray:
    """The single best-weighted of k draws around the encoder per image (known pixels of a mask
    kept): what importance sampling collapses to when its weights degenerate."""
    loglik = masked_loglik(mask) if mask is not None else noise_loglik(spec, rt.manifest.get("dataset"))
    mu, logvar = rt.encode(noisy * mask if mask is not None else noisy)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(noisy)):
        z = (mu[i] + np.exp(0.5 * logvar[i]) * rng.standard_normal((k, rt.latent_dim))).astype(np.float32)
        logw = loglik(rt.decode(z, logits=True), noisy[i], i) + log_normal(z) - log_normal(z, mu[i], logvar[i])
        best = rt.decode(z[np.argmax(logw)][None])[0]
        out.append(np.where(mask[i] > 0, noisy[i], best) if mask is not None else best)
    return np.stack(out)
