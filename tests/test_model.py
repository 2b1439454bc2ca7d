from __future__ import annotations

import pytest
import torch

from vae_edge import VaeEdgeError
from vae_edge.model import VAE, VAEConfig, elbo_terms


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("upsample", ["resize-subpixel", "resize", "convtranspose"])
def test_shapes(arch, conditional, upsample):
    m = VAE(VAEConfig(arch=arch, latent_dim=6, conditional=conditional, upsample=upsample))
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    mu, logvar = m.encode(x, y if conditional else None)
    assert mu.shape == logvar.shape == (5, 6)
    logits = m.decode(mu, y if conditional else None)
    assert logits.shape == (5, 1, 28, 28)


def test_forward_only_chains_encode_reparameterize_decode():
    torch.manual_seed(0)
    m = VAE(VAEConfig()).eval()
    x = torch.rand(3, 1, 28, 28)
    logits, mu, logvar = m(x, generator=torch.Generator().manual_seed(1))
    z = m.reparameterize(*m.encode(x), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits, m.decode(z)) and torch.equal(mu, m.encode(x)[0])


def test_mlp_default_is_pytorch_examples_shape():
    m = VAE(VAEConfig())
    assert m.enc[0].in_features == 784 and m.enc[0].out_features == 400 and m.cfg.latent_dim == 20


def test_elbo_terms_match_closed_form():
    x = torch.rand(2, 1, 28, 28)
    logits = torch.zeros(2, 1, 28, 28)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    rec, kl = elbo_terms(x, logits, mu, logvar)
    assert torch.allclose(rec, torch.full((2,), 784 * torch.log(torch.tensor(2.0)).item()))
    assert torch.allclose(kl, torch.zeros(2))
    _, kl2 = elbo_terms(x, logits, torch.ones(1, 3), torch.zeros(1, 3))
    assert torch.allclose(kl2, torch.tensor([1.5]))


@pytest.mark.parametrize("bad", [dict(arch="rnn"), dict(latent_dim=0), dict(latent_dim=-3), dict(hidden=0),
                                 dict(upsample="bilinear"), dict(likelihood="gaussian")])
def test_bad_config(bad):
    with pytest.raises(VaeEdgeError):
        VAEConfig(**bad)


def test_config_roundtrip():
    cfg = VAEConfig(arch="conv", channels=(4, 8), conditional=True)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("upsample", ["resize-subpixel", "resize", "convtranspose"])
def test_cond_planes_carry_the_digit_into_the_conv_stages(upsample):
    """With cond_planes the decoder's convolutions see the digit themselves: with the label's
    columns of the first Linear zeroed, the digit still changes the output (and does not without
    the planes)."""
    torch.manual_seed(0)
    z = torch.randn(2, 6)
    outs = {}
    for planes in (False, True):
        m = VAE(VAEConfig(arch="conv", latent_dim=6, conditional=True, cond_planes=planes, upsample=upsample)).eval()
        with torch.no_grad():
            m.dec_in[0].weight[:, 6:] = 0  # the flat path of the label, cut
            a, b = m.decode(z, torch.tensor([0, 0])), m.decode(z, torch.tensor([7, 7]))
            mu, _ = m.encode(torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
        assert a.shape == (2, 1, 28, 28) and mu.shape == (2, 6)
        outs[planes] = (a - b).abs().max().item()
    assert outs[False] == 0 and outs[True] > 1e-4


@pytest.mark.parametrize("cfg", [dict(arch="conv", cond_planes=True), dict(arch="mlp", conditional=True, cond_planes=True)])
def test_cond_planes_needs_a_conditional_conv_model(cfg):
    with pytest.raises(VaeEdgeError, match="cond_planes needs a conditional conv model"):
        VAEConfig(**cfg)


def test_res_blocks_are_residual_and_wired_into_both_graphs():
    """A block whose last conv is zero is the identity: the model then computes exactly what the
    same weights without blocks compute; with it non-zero, the encoder and the decoder both change."""
    torch.manual_seed(0)
    m1 = VAE(VAEConfig(arch="conv", channels=(8, 16), res_blocks=1, latent_dim=4)).eval()
    m0 = VAE(VAEConfig(arch="conv", channels=(8, 16), latent_dim=4)).eval()
    missing, unexpected = m0.load_state_dict(m1.state_dict(), strict=False)
    assert not missing and unexpected and all(".body." in k for k in unexpected)
    x, z = torch.rand(3, 1, 28, 28), torch.randn(3, 4)
    with torch.no_grad():
        before = m1.encode(x)[0], m1.decode(z)
        for block in (m1.enc[4], m1.dec_res[0]):
            block.body[3].weight.zero_()
            block.body[3].bias.zero_()
        assert torch.equal(m1.encode(x)[0], m0.encode(x)[0]) and torch.equal(m1.decode(z), m0.decode(z))
        assert not torch.allclose(before[0], m0.encode(x)[0]) and not torch.allclose(before[1], m0.decode(z))
    with pytest.raises(VaeEdgeError, match="res blocks"):
        VAEConfig(arch="mlp", res_blocks=1)
