"""Evaluation: test -ELBO (nats per image) and the importance-weighted estimate of -log p(x)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from vae_edge import VaeEdgeError
from vae_edge.data import binarize, load_split, resolve_data_dir, to_float
from vae_edge.model import VAE, elbo_terms, log_normal, reconstruction_nll

BINARIZE_SEED = 0  # the fixed draw of the binarized test set every reported IW-NLL uses


@torch.no_grad()
def neg_elbo(
    model: VAE, x: torch.Tensor, y: torch.Tensor | None, samples: int = 10, batch_size: int = 1000, seed: int = 0
) -> torch.Tensor:
    """-ELBO of each image, [N], its expectation over z estimated with `samples` draws per image
    (training uses one draw; more draws only lower the Monte Carlo noise of the figure)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        yb = y[i : i + batch_size] if y is not None else None
        mu, logvar = model.encode(xb, yb)
        total = torch.zeros(len(xb))
        for _ in range(samples):
            logits = model.decode(model.reparameterize(mu, logvar, gen), yb)
            rec, kl = elbo_terms(xb, logits, mu, logvar, cfg=model.cfg)
            total += rec + kl
        out.append(total / samples)
    return torch.cat(out)


@torch.no_grad()
def iw_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: int,
    seed: int = 0,
    max_decodes: int | None = None,
    progress=None,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) with K samples of q(z|x), [N] (Burda et al., 2015).

    log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K.
    Work is cut into chunks of at most max_decodes decoder rows, so memory stays bounded.
    """
    if k <= 0:
        raise VaeEdgeError(f"iw samples must be positive, got {k}")
    gen = torch.Generator().manual_seed(seed)
    if max_decodes is None:  # keep the decoder's activations around 100 MB
        max_decodes = 1 << 15 if model.cfg.arch == "mlp" else 1 << 10
    n = len(x)
    img_batch = max(1, min(n, max_decodes // min(k, max_decodes)))
    result = []
    for i in range(0, n, img_batch):
        xb = x[i : i + img_batch]
        yb = y[i : i + img_batch] if y is not None else None
        b = len(xb)
        mu, logvar = model.encode(xb, yb)  # [b, D]
        std = torch.exp(0.5 * logvar)
        k_chunk = max(1, max_decodes // b)
        logws = []
        for j in range(0, k, k_chunk):
            kc = min(k_chunk, k - j)
            eps = torch.randn((kc, b, mu.shape[1]), generator=gen)
            z = mu + eps * std  # [kc, b, D]
            ycond = yb.repeat(kc) if yb is not None else None
            logits = model.decode(z.reshape(kc * b, -1), ycond)  # [kc*b, C', H, W]
            target = xb.repeat(kc, *([1] * (xb.dim() - 1)))
            log_px_z = -reconstruction_nll(logits, target, model.cfg).flatten(1).sum(-1).view(kc, b)
            log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = log_normal(z, mu, logvar)
            logws.append(log_px_z + log_pz - log_qz)  # [kc, b]
        logw = torch.cat(logws, 0)
        result.append(torch.logsumexp(logw, 0) - math.log(k))
        if progress is not None:
            progress(min(i + img_batch, n), n)
    return torch.cat(result)


def load_test_set(dataset: str, data_dir: str | os.PathLike | None, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    directory = resolve_data_dir(dataset, data_dir, split="test")
    images, labels = load_split(directory, "test")
    if limit is not None:
        if limit <= 0:
            raise VaeEdgeError(f"--limit must be positive, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return to_float(images), labels.astype(np.int64)


def evaluate(
    model: VAE,
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    iw_samples: int = 5000,
    limit: int | None = None,
    seed: int = 0,
    progress=None,
) -> dict:
    """Test -ELBO on greyscale images and, with iw_samples > 0, IW-NLL on the fixed binarized set;
    an 8-bit (logistic) model: both on the 8-bit images, with bits per dimension."""
    model = model.eval().cpu()
    xg, labels = load_test_set(dataset, data_dir, limit)
    y = torch.from_numpy(labels) if model.cfg.conditional else None
    grey = torch.from_numpy(xg)
    if model.cfg.likelihood in ("logistic", "logistic-ar"):
        return _evaluate_8bit(model, dataset, grey, y, iw_samples, seed, progress)
    xb = torch.from_numpy(binarize(xg, BINARIZE_SEED))
    res = {
        "dataset": dataset,
        "images": len(xg),
        "neg_elbo": float(neg_elbo(model, grey, y, seed=seed).mean()),
        "neg_elbo_binarized": float(neg_elbo(model, xb, y, seed=seed).mean()),
        "elbo_samples": 10,
        "iw_samples": iw_samples,
        "iw_nll": None,
    }
    if iw_samples > 0:
        res["iw_nll"] = float(-iw_log_likelihood(model, xb, y, iw_samples, seed=seed, progress=progress).mean())
    return res


def _evaluate_8bit(model: VAE, dataset: str, x: torch.Tensor, y, iw_samples: int, seed: int, progress) -> dict:
    """-ELBO and IW-NLL of 8-bit images (nats per image, and bits per dimension: what a coder
    driven by the model would spend per pixel)."""
    per_bit = 1 / (x[0].numel() * math.log(2))
    nelbo = float(neg_elbo(model, x, y, seed=seed).mean())
    res = {"dataset": dataset, "images": len(x), "eight_bit": True, "neg_elbo": nelbo,
           "neg_elbo_bits_per_dim": nelbo * per_bit, "elbo_samples": 10, "iw_samples": iw_samples,
           "iw_nll": None, "iw_nll_bits_per_dim": None}
    if iw_samples > 0:
        res["iw_nll"] = float(-iw_log_likelihood(model, x, y, iw_samples, seed=seed, progress=progress).mean())
        res["iw_nll_bits_per_dim"] = res["iw_nll"] * per_bit
    return res
