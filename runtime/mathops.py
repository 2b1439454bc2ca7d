"""numpy versions of the VAE's likelihood terms (the runtime's twin of vae_edge.model's) and the
special functions they need (no scipy)."""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = float(np.log(2 * np.pi))


def bce_with_logits(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """-log Bernoulli(target; sigmoid(logits)) per image, summed over pixels: [..., B]."""
    per_pixel = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    return per_pixel.reshape(*per_pixel.shape[: per_pixel.ndim - 3], -1).sum(-1)


def gaussian_nll(mean: np.ndarray, target: np.ndarray, sigma: float | None = None,
                 log_sigma: np.ndarray | None = None) -> np.ndarray:
    """-log N(target; mean, sigma^2) per image, summed over its C x H x W values (nats of the
    continuous density): [..., B]. sigma: one fixed standard deviation; or log_sigma: the
    decoder's own, per value (a learned variance)."""
    if log_sigma is not None:
        per = 0.5 * (target - mean) ** 2 * np.exp(-2.0 * log_sigma) + log_sigma + 0.5 * LOG_2PI
    else:
        per = 0.5 * ((target - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * LOG_2PI
    return per.reshape(*per.shape[: per.ndim - 3], -1).sum(-1)


LOG_SCALE_MIN = -7.0  # the discretized logistic's log-scale floor (PixelCNN++'s): model, runtime, coder
EIGHT_BIT = ("logistic", "logistic-ar")  # the likelihoods of 8-bit images
# logistic-ar: each value's mean also follows its already-coded neighbours (raster order) in its
# own channel: mean = probs + sum_k w_k (x - probs) at the neighbour (dy, dx), 0 outside the image.
# The decoder gives the weights w_k (in [-1, 1]) per value; with x = probs everywhere the
# corrections vanish, so probs is also the model's point decode.
CONTEXT = ((0, -1), (-1, -1), (-1, 0), (-1, 1))  # (dy, dx): left, up-left, up, up-right


def neighbour(r: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """r at (i + dy, j + dx) for every (i, j) of the last two axes; 0 where that is outside."""
    h, w = r.shape[-2:]
    out = np.zeros_like(r)
    i0, i1, j0, j1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
    if i1 > i0 and j1 > j0:
        out[..., i0:i1, j0:j1] = r[..., i0 + dy:i1 + dy, j0 + dx:j1 + dx]
    return out


def context_mean(probs: np.ndarray, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A logistic-ar decoder's mean of every value given the values x ([B, C, H, W] each; weights
    [B, len(CONTEXT) * C, H, W], neighbour k's in channels k*C .. k*C + C - 1), in float64 and in
    this order of operations: the coder's per-value means are the same numbers."""
    probs, x = np.asarray(probs, np.float64), np.asarray(x, np.float64)
    w = np.asarray(weights, np.float64)
    c = probs.shape[-3]
    r = x - probs
    mean = probs
    for k, (dy, dx) in enumerate(CONTEXT):
        mean = mean + w[..., k * c:(k + 1) * c, :, :] * neighbour(r, dy, dx)
    return mean


def logistic_nll(mean: np.ndarray, log_scale: np.ndarray, target: np.ndarray) -> np.ndarray:
    """-log P(target) per image (nats), summed over its C x H x W values, for 8-bit values
    (k/255) under a discretized logistic per value (vae_edge.model.discretized_logistic_nll's
    arithmetic, in numpy): [..., B]."""
    mean, log_scale, target = (np.asarray(a, np.float64) for a in (mean, log_scale, target))
    log_scale = np.maximum(log_scale, LOG_SCALE_MIN)
    centered, inv_s = target - mean, np.exp(-log_scale)
    plus, minus = inv_s * (centered + 0.5 / 255), inv_s * (centered - 0.5 / 255)
    log_cdf_plus = plus - np.logaddexp(0, plus)
    log_one_minus_cdf_min = -np.logaddexp(0, minus)
    delta = _sigmoid64(plus) - _sigmoid64(minus)
    mid = inv_s * centered
    log_pdf_mid = mid - log_scale - 2 * np.logaddexp(0, mid) - math.log(255)
    with np.errstate(divide="ignore"):
        inner = np.where(delta > 1e-5, np.log(np.maximum(delta, 1e-12)), log_pdf_mid)
    log_p = np.where(target < 0.5 / 255, log_cdf_plus, np.where(target > 1 - 0.5 / 255, log_one_minus_cdf_min, inner))
    per = -log_p
    return per.reshape(*per.shape[: per.ndim - 3], -1).sum(-1)




def _sigmoid64(v: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -v))


def decoder_nll(out: dict[str, np.ndarray], target: np.ndarray, likelihood: str, sigma: float | None = None) -> np.ndarray:
    """-log p(target | z) per image (nats) from a decoder's outputs by name, the model's own
    likelihood: Bernoulli on `logits`; Gaussian around `probs` (the mean) with its own `log_sigma`
    when the decoder gives one, else the fixed sigma; logistic: the discretized logistic of mean
    `probs` and `log_scale` (8-bit values); logistic-ar: its mean follows the target's
    neighbours by the weights `context` (context_mean)."""
    if likelihood == "logistic":
        return logistic_nll(out["probs"], out["log_scale"], target)
    if likelihood == "logistic-ar":
        return logistic_nll(context_mean(out["probs"], out["context"], target), out["log_scale"], target)
    if likelihood != "gaussian":
        return bce_with_logits(out["logits"], target)
    if "log_sigma" in out:
        return gaussian_nll(out["probs"], target, log_sigma=out["log_sigma"])
    return gaussian_nll(out["probs"], target, sigma)


def decoder_outputs(likelihood: str, learned_sigma: bool) -> list[str]:
    """The decoder outputs decoder_nll needs."""
    if likelihood == "logistic":
        return ["probs", "log_scale"]
    if likelihood == "logistic-ar":
        return ["probs", "log_scale", "context"]
    if likelihood != "gaussian":
        return ["logits"]
    return ["probs", "log_sigma"] if learned_sigma else ["probs"]


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


def sigmoid(v: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-v), without overflow warnings for large |v|."""
    v = np.asarray(v)
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(v: np.ndarray) -> np.ndarray:
    """log(1 + e^v), stable: -log sigmoid(-v)."""
    return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))


def log_ndtr(t: np.ndarray) -> np.ndarray:
    """log of the standard normal CDF, stable far into the lower tail."""
    t = np.asarray(t, np.float64)
    out = np.empty_like(t)
    lo = t < -5.0
    tl = t[lo]  # asymptotic series: log(phi(t) / -t * (1 - 1/t^2 + 3/t^4))
    out[lo] = -0.5 * tl**2 - 0.5 * LOG_2PI - np.log(-tl) + np.log1p(-1 / tl**2 + 3 / tl**4)
    th = t[~lo]
    out[~lo] = np.log(np.maximum(0.5 * erfc(-th / np.sqrt(2.0)), 1e-300))
    return out


def erfc(v: np.ndarray) -> np.ndarray:
    """Complementary error function (Numerical Recipes' erfcc, relative error < 1.2e-7)."""
    a = np.abs(v)
    t = 1.0 / (1.0 + 0.5 * a)
    r = t * np.exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return np.where(v >= 0, r, 2.0 - r)
