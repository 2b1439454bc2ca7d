"""Restoring corrupted images with a VAE: noise models, corruptions, and the sequential Monte
Carlo estimate of the clean image's posterior mean. numpy only (the decoder is called through the
runtime).

For an observed image y, the restoration is E[x | y] = E[ E[x | y, z] | y ]: the latents z are
weighted by how well their decoded image explains y under the corruption's exact likelihood, and
each pixel's clean value is then estimated from both the decoder and what that observed pixel
says about itself. (The decoder's mean alone, E[decoder(z) | y], throws the second part away: a
pixel that salt-and-pepper noise cannot have produced is certainly clean, and a Gaussian-noisy
pixel carries evidence of its own.)

Noise specs: gaussian:SIGMA (additive, then clipped to [0, 1]), saltpepper:FRACTION (each pixel
set to 0 or 1 with probability FRACTION/2 each), mask:rect|top|bottom|left|right (inpainting).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime.mathops import LOG_2PI, log_ndtr, sigmoid, softplus

_NOISE_RE = re.compile(r"^(gaussian|saltpepper|mask):(\d*\.?\d+|rect|top|bottom|left|right|random)$")

# Of the 8-bit pixels of a dataset's training images: the fraction of ink pixels (> 0.5) that are
# exactly 1.0 and of paper pixels (<= 0.5) that are exactly 0.0 (measured on the training sets
# shipped in ../shared/data/mnist and by Debian's dataset-fashion-mnist). Salt and pepper set pixels
# to exactly 1 and 0, so how often a clean pixel is exactly that tells noise from ink: in MNIST only
# 7% of ink pixels are 255, so a white pixel is far more often salt than the Bernoulli model's
# P(ink) would say. Unknown datasets: 1.0 each (every ink pixel saturated: the Bernoulli model).
SATURATION = {"mnist": (0.0700, 0.9321), "fashion-mnist": (0.0256, 0.7326)}


def parse_noise(spec: str) -> tuple[str, str]:
    """'gaussian:0.3' -> ('gaussian', '0.3'); a bad spec is a user error."""
    m = _NOISE_RE.match(spec)
    kind = spec.split(":", 1)[0]
    if not m and kind in ("gaussian", "saltpepper") and ":" in spec:
        what = "SIGMA, a positive number" if kind == "gaussian" else "FRACTION, a number between 0 and 1"
        raise VaeEdgeError(f"{spec!r}: {kind} noise takes {what}, e.g. {kind}:{0.3 if kind == 'gaussian' else 0.2}")
    if not m and kind == "mask":
        raise VaeEdgeError(f"{spec!r}: mask takes rect, top, bottom, left or right, e.g. mask:rect")
    if not m:
        raise VaeEdgeError(
            f"unknown noise {spec!r}: use gaussian:SIGMA, saltpepper:FRACTION, or mask:rect|top|bottom|left|right"
        )
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class NoiseModel:
    """loglik(logits [..., C, H, W], y [C, H, W], i) -> log p(y | z) summed per image [...];
    clean_mean(probs [..., C, H, W], y) -> E[clean pixel | y, z], same shape as probs."""

    loglik: Callable
    clean_mean: Callable


def noise_model(spec: str, dataset: str | None = None) -> NoiseModel:
    """The exact likelihood of what `corrupt` does, and the clean pixels' posterior mean."""
    kind, arg = parse_noise(spec)
    if kind == "gaussian":
        sigma = float(arg)
        if sigma <= 0:
            raise VaeEdgeError(f"gaussian noise needs a positive sigma, got {sigma}")
        return NoiseModel(_gaussian_loglik(sigma), _gaussian_clean_mean(sigma))
    if kind == "saltpepper":
        p = float(arg)
        if not 0 < p < 1:
            raise VaeEdgeError(f"salt-and-pepper fraction must lie in (0, 1), got {p}")
        s1, s0 = SATURATION.get(dataset or "", (1.0, 1.0))
        return NoiseModel(_saltpepper_loglik(p, s1, s0), _saltpepper_clean_mean(p, s1, s0))
    raise VaeEdgeError(f"{spec}: masks are passed as mask=, not as a noise model")


def noise_loglik(spec: str, dataset: str | None = None):
    return noise_model(spec, dataset).loglik


def _gaussian_loglik(sigma: float):
    # The clean image is the decoder's mean c; y = clip(c + noise): log N(y; c, sigma) inside, and
    # clipped at 0, log P(c + noise <= 0) = log Phi(-c / sigma); at 1, the same at 1 - c.
    # Tabulated over c in [0, 1] (interpolation error < 1e-8 / sigma^2 nats per pixel).
    grid = np.linspace(0.0, 1.0, 4097)
    table = log_ndtr(-grid / sigma)
    const = -np.log(sigma) - 0.5 * LOG_2PI

    def loglik(logits, xn, i):
        c = sigmoid(logits.reshape(*logits.shape[:-3], -1))
        xf = xn.reshape(-1)
        lo, hi = xf <= 0.0, xf >= 1.0
        mid = ~(lo | hi)
        out = np.sum(-0.5 * ((c[..., mid] - xf[mid]) / sigma) ** 2, -1) + const * mid.sum()
        out = out + np.sum(np.interp(c[..., lo], grid, table), -1)
        return out + np.sum(np.interp(1.0 - c[..., hi], grid, table), -1)
    return loglik


def _gaussian_clean_mean(sigma: float):
    """A clean pixel is ink (1) with probability c, else paper (0); the observed pixel's own
    (clipped) Gaussian likelihood under each decides between them: P(ink | y, z)."""
    at0, at1 = float(log_ndtr(np.array(0.0))), float(log_ndtr(np.array(-1.0 / sigma)))

    def clean_mean(probs, y):
        lo, hi = y <= 0.0, y >= 1.0
        l_ink = np.where(lo, at1, np.where(hi, at0, -0.5 * ((y - 1.0) / sigma) ** 2))
        l_paper = np.where(lo, at0, np.where(hi, at1, -0.5 * (y / sigma) ** 2))
        c = np.clip(probs, 1e-12, 1 - 1e-12)
        a, b = np.log(c) + l_ink, np.log1p(-c) + l_paper
        return np.exp(a - np.logaddexp(a, b))
    return clean_mean


def _saltpepper_loglik(p: float, s1: float, s0: float):
    log_keep, log_flip = np.log1p(-p), np.log(p / 2)
    log_s1, log_s0 = np.log(s1), np.log(s0)

    def loglik(logits, xn, i):
        # a pixel is pepper (0) or salt (1) with probability p/2 each, else the clean pixel: exactly 0
        # with probability s0 (1 - c), exactly 1 with probability s1 c, else a grey level, whose
        # likelihood is the model's own c^x (1 - c)^(1 - x)
        lf = logits.reshape(*logits.shape[:-3], -1)
        xf = xn.reshape(-1)
        zero, one = xf <= 0.0, xf >= 1.0
        mid = ~(zero | one)
        out = np.sum(np.logaddexp(log_keep + log_s0 - softplus(lf[..., zero]), log_flip), -1, dtype=np.float64)
        out = out + np.sum(np.logaddexp(log_keep + log_s1 - softplus(-lf[..., one]), log_flip), -1,
                           dtype=np.float64)
        lm, xm = lf[..., mid], xf[mid]
        return out + np.sum(log_keep - xm * softplus(-lm) - (1 - xm) * softplus(lm), -1, dtype=np.float64)
    return loglik


def _saltpepper_clean_mean(p: float, s1: float, s0: float):
    """A grey pixel cannot be noise: it is kept as it is. A white one is a clean saturated pixel
    or salt, a black one clean paper or pepper; under noise the clean value's mean is c."""
    keep, flip = 1.0 - p, p / 2

    def clean_mean(c, y):
        white = (keep * s1 * c + flip * c) / (keep * s1 * c + flip)
        black = (flip * c) / (keep * s0 * (1 - c) + flip)
        return np.where(y >= 1.0, white, np.where(y <= 0.0, black, y))
    return clean_mean


def masked_loglik(mask: np.ndarray):
    """Known pixels follow the model's Bernoulli likelihood; unknown ones say nothing."""
    def loglik(logits, xn, i):
        known = mask[i].reshape(-1) > 0
        lk = logits.reshape(*logits.shape[:-3], -1)[..., known]
        xk = xn.reshape(-1)[known]
        return -np.sum(xk * softplus(-lk) + (1 - xk) * softplus(lk), -1, dtype=np.float64)
    return loglik


# ---------------------------------------------------------------------------------------------
# Sequential Monte Carlo
# ---------------------------------------------------------------------------------------------

def _metropolis(state: tuple, beta: np.ndarray, rounds: int, evaluate, log_q, rng) -> tuple[tuple, int]:
    """`rounds` random-walk Metropolis moves of every particle at temperature beta (per image),
    the step scaled to the particles' spread; returns the new (z, log target, log proposal,
    logits) and how many moves were accepted."""
    z, lp, lq, logits = state
    n, k, d = z.shape
    extra = [1] * (logits.ndim - 2)
    step = 2.38 / np.sqrt(d) * np.maximum(z.std(1, keepdims=True), 1e-3)
    accepted = 0
    for _ in range(rounds):
        z_new = z + step * rng.standard_normal(z.shape)
        lp_new, logits_new = evaluate(z_new)
        lq_new = log_q(z_new)
        b = beta[:, None]
        log_ratio = ((1 - b) * lq_new + b * lp_new) - ((1 - b) * lq + b * lp)
        ok = np.log(rng.random((n, k))) < log_ratio
        z = np.where(ok[..., None], z_new, z)
        lp, lq = np.where(ok, lp_new, lp), np.where(ok, lq_new, lq)
        logits = np.where(ok.reshape(n, k, *extra), logits_new, logits)
        accepted += int(ok.sum())
    return (z, lp, lq, logits), accepted


def _weighted_mean(w: np.ndarray, logits: np.ndarray, x: np.ndarray, clean_mean) -> np.ndarray:
    """sum_k w_k E[clean | y, z_k] per image (the decoder's mean where clean_mean is None)."""
    est = np.zeros(x.shape, np.float64)
    for i in range(len(x)):  # one image at a time: [k, C, H, W] float64 temporaries, not [n, k, ...]
        pix = sigmoid(logits[i].astype(np.float64))
        if clean_mean is not None:
            pix = clean_mean(pix, x[i].astype(np.float64))
        est[i] = np.tensordot(w[i], pix, axes=1)
    return est


def posterior_mean(decode_logits: Callable, encode: Callable, x: np.ndarray, loglik, clean_mean, labels,
                   samples: int, rounds: int, rng: np.random.Generator, start: np.ndarray, latent_dim: int,
                   info: dict | None) -> np.ndarray:
    """E[clean image | corrupted x] by tempered SMC: `samples` particles start from the encoder's
    posterior for `start`, the likelihood is switched on through adaptively chosen temperatures
    (each keeping half the effective sample size), with systematic resampling and `rounds`
    Metropolis moves per step. clean_mean None: the decoder's mean (inpainting)."""
    if samples < 2 or rounds < 1:
        raise VaeEdgeError("denoising needs at least 2 samples and 1 round")
    n, k, d = len(x), samples, latent_dim
    shape = x.shape[1:]
    mu, logvar = encode(np.ascontiguousarray(start, dtype=np.float32), labels)
    mu, sd = mu.astype(np.float64), np.exp(0.5 * logvar.astype(np.float64))
    lab = None if labels is None else np.repeat(labels, k)

    def log_q(z):  # the fixed proposal, per image: [n, k]
        return -0.5 * np.sum(((z - mu[:, None]) / sd[:, None]) ** 2, -1) - np.sum(np.log(sd), -1)[:, None]

    def evaluate(z):  # log prior + log likelihood, and the decoded logits: [n, k], [n, k, C, H, W]
        logits = decode_logits(z.reshape(n * k, d).astype(np.float32), lab).reshape(n, k, *shape)
        ll = np.stack([loglik(logits[i], x[i], i) for i in range(n)])
        return -0.5 * np.sum(z**2, -1) + ll, logits

    z = mu[:, None] + sd[:, None] * rng.standard_normal((n, k, d))
    lp, logits = evaluate(z)
    lq = log_q(z)
    beta = np.zeros(n)
    logw = np.zeros((n, k))
    steps, accepted, proposed = np.zeros(n, int), 0, 0
    while np.any(beta < 1):
        g = lp - lq  # log target - log proposal; the weight increment is (b' - b) * g
        new = np.array([_next_beta(beta[i], g[i], logw[i]) for i in range(n)])
        steps += new > beta
        logw = logw + (new - beta)[:, None] * g
        beta = new
        w = _normalized(logw)
        if np.all(beta >= 1):
            break
        idx = np.stack([_systematic(w[i], rng) for i in range(n)])
        z, lp, lq, logits = (_take(a, idx) for a in (z, lp, lq, logits))
        logw = np.zeros((n, k))
        (z, lp, lq, logits), ok = _metropolis((z, lp, lq, logits), beta, rounds, evaluate, log_q, rng)
        accepted, proposed = accepted + ok, proposed + rounds * n * k
    w = _normalized(logw)
    est = _weighted_mean(w, logits, x, clean_mean)
    if info is not None:
        info.update({
            "ess": (1.0 / np.sum(w**2, 1)).tolist(), "particles": k,
            "temperatures": steps.tolist(), "moves_per_temperature": rounds,
            "acceptance": accepted / proposed if proposed else None,
        })
    return est.astype(np.float32)


def _normalized(logw: np.ndarray) -> np.ndarray:
    w = np.exp(logw - logw.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def _ess(logw: np.ndarray) -> float:
    w = _normalized(logw)
    return float(1.0 / np.sum(w**2))


def _next_beta(beta: float, g: np.ndarray, logw: np.ndarray) -> float:
    """The largest next temperature whose weights keep half the effective sample size."""
    if beta >= 1.0:
        return 1.0
    target = 0.5 * _ess(logw)
    if _ess(logw + (1.0 - beta) * g) >= target:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _ess(logw + (mid - beta) * g) >= target:
            lo = mid
        else:
            hi = mid
    return max(lo, beta + 1e-12)


def _systematic(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    positions = (rng.random() + np.arange(len(w))) / len(w)
    return np.minimum(np.searchsorted(np.cumsum(w), positions), len(w) - 1)


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a [n, k, ...] indexed along its particle axis by idx [n, k]."""
    return np.take_along_axis(a, idx.reshape(*idx.shape, *([1] * (a.ndim - 2))), 1)


# ---------------------------------------------------------------------------------------------
# Corruptions (the demo, and the benchmarks)
# ---------------------------------------------------------------------------------------------

def corrupt(x: np.ndarray, spec: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply a corruption; returns (corrupted images, mask of known pixels or None)."""
    kind, arg = parse_noise(spec)
    x = np.asarray(x, np.float32)
    if kind == "gaussian":
        return np.clip(x + float(arg) * rng.standard_normal(x.shape, dtype=np.float32), 0, 1), None
    if kind == "saltpepper":
        p = float(arg)
        if not 0 <= p <= 1:
            raise VaeEdgeError(f"salt-and-pepper fraction must lie in [0, 1], got {p}")
        u = rng.random(x.shape, dtype=np.float32)
        out = x.copy()
        out[u < p / 2] = 0.0
        out[(u >= p / 2) & (u < p)] = 1.0
        return out, None
    mask = np.ones_like(x)
    h, w = x.shape[-2:]
    if arg in ("rect", "random"):  # a square of 12/28 of the side, at a random place
        side, lo, hi = max(1, round(12 * min(h, w) / 28)), max(1, min(h, w) // 7), max(2, min(h, w) // 2)
        for i in range(len(x)):
            r, c = rng.integers(lo, hi, size=2)
            mask[i, ..., r : r + side, c : c + side] = 0
    elif arg in ("top", "bottom", "left", "right"):
        sl = {"top": np.s_[..., : h // 2, :], "bottom": np.s_[..., h // 2 :, :],
              "left": np.s_[..., :, : w // 2], "right": np.s_[..., :, w // 2 :]}[arg]
        mask[sl] = 0
    else:
        raise VaeEdgeError(f"unknown mask {arg!r}: rect, top, bottom, left or right")
    return x * mask, mask
