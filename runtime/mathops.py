"""numpy versions of the VAE's likelihood terms (the runtime's twin of vae_edge.model's)."""

from __future__ import annotations

import numpy as np

LOG_2PI = float(np.log(2 * np.pi))


def bce_with_logits(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """-log Bernoulli(target; sigmoid(logits)) per image, summed over pixels: [..., B]."""
    per_pixel = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    return per_pixel.reshape(*per_pixel.shape[: per_pixel.ndim - 3], -1).sum(-1)


def kl_to_prior(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), axis=-1)


def log_normal(z: np.ndarray, mu: np.ndarray | float = 0.0, logvar: np.ndarray | float = 0.0) -> np.ndarray:
    return -0.5 * np.sum((z - mu) ** 2 * np.exp(-logvar) + logvar + LOG_2PI, axis=-1)


def logsumexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)
