from __future__ import annotations

import math

import pytest
import torch

from vae_edge.evaluate import evaluate, iw_log_likelihood, neg_elbo
from vae_edge.model import VAE, VAEConfig
from vae_edge.train import load_checkpoint, model_from_checkpoint


def _one_d_model(seed=0) -> VAE:
    """A model with a 1-D latent: p(x) is an integral over one variable, computable by quadrature."""
    torch.manual_seed(seed)
    m = VAE(VAEConfig(latent_dim=1, hidden=8)).eval()
    with torch.no_grad():
        for p in m.dec.parameters():
            p.mul_(3.0)
    return m


def _exact_log_px(m: VAE, x: torch.Tensor) -> torch.Tensor:
    z = torch.linspace(-9, 9, 20001).unsqueeze(1)  # [G, 1]
    with torch.no_grad():
        logits = m.decode(z).flatten(1)  # [G, 784]
    log_pz = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    dz = float(z[1] - z[0])
    out = []
    for xi in x.flatten(1):
        log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, xi.expand_as(logits), reduction="none").sum(1)
        out.append(torch.logsumexp(log_px_z + log_pz, 0) + math.log(dz))
    return torch.stack(out)


def test_iw_estimate_converges_to_exact_likelihood():
    m = _one_d_model()
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    exact = _exact_log_px(m, x)
    est = iw_log_likelihood(m, x, None, k=20000, seed=0)
    assert torch.allclose(est, exact, atol=0.05), (est, exact)


def test_iw_exact_when_q_is_prior_and_decoder_ignores_z():
    m = VAE(VAEConfig(latent_dim=3, hidden=4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.dec[-1].bias.fill_(0.3)
    x = (torch.rand(2, 1, 28, 28) < 0.5).float()
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(torch.full((2, 784), 0.3), x.flatten(1), reduction="none").sum(1)
    assert torch.allclose(iw_log_likelihood(m, x, None, k=7), exact, atol=1e-4)


def test_iw_bounds_elbo_and_tightens_with_k():
    m = _one_d_model(1)
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    elbo_nll = neg_elbo(m, x, None, samples=200).mean()
    nll = [float(-iw_log_likelihood(m, x, None, k=k, seed=s).mean()) for k in (1, 10, 1000) for s in (0,)]
    assert nll[0] == pytest.approx(float(elbo_nll), rel=0.05)  # K=1 is the ELBO
    assert nll[2] <= nll[1] <= nll[0] + 1e-3
    assert nll[2] < float(elbo_nll)


def test_evaluate_on_real_mnist(ckpts, mnist_dir):
    m = model_from_checkpoint(load_checkpoint(ckpts["mlp"]))
    res = evaluate(m, data_dir=mnist_dir, iw_samples=20, limit=50)
    assert res["images"] == 50 and res["iw_samples"] == 20
    assert 0 < res["iw_nll"] < res["neg_elbo_binarized"] + 1e-6
