"""Adapters: VAEs people already have, made to follow the protocol of `export_vae`
(`encode(x) -> (mu, logvar)`, `decode(z)`, x in [0, 1]).

- `diffusers`: diffusers' `AutoencoderKL` (the VAE of Stable Diffusion and most latent diffusion
  models): its images are in [-1, 1], its posterior is `encode(x).latent_dist` (mean, logvar), its
  decoder's `decode(z).sample` is an image in [-1, 1]: mapped to a Gaussian mean in [0, 1].
- `attributes`: a module with `encoder` and `decoder` submodules, where `encoder(x)` returns
  `(mu, logvar)` or one tensor with both stacked along dimension 1 (mu first), and `decoder(z)` the
  output.

Another adapter is a small `nn.Module` with the two methods around the user's model (docs/byo.md).
"""

from __future__ import annotations

import torch
from torch import nn

from vae_edge import VaeEdgeError


class DiffusersVAE(nn.Module):
    """diffusers.AutoencoderKL -> the protocol: x in [0, 1] -> (mean, logvar) of its latent_dist;
    z -> the decoded image mapped from [-1, 1] to [0, 1] (a Gaussian mean)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor):
        dist = self.vae.encode(2 * x - 1).latent_dist
        return dist.mean, dist.logvar

    def decode(self, z: torch.Tensor):
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1)


class AttributesVAE(nn.Module):
    """A module with `encoder` and `decoder` submodules -> the protocol."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encode(self, x: torch.Tensor):
        out = self.model.encoder(x)
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0], out[1]
        if out.shape[1] % 2:
            raise VaeEdgeError(f"encoder(x) gave {out.shape[1]} channels: (mu, logvar) stacked needs an even number")
        return out.chunk(2, dim=1)

    def decode(self, z: torch.Tensor):
        return self.model.decoder(z)


ADAPTERS = {"diffusers": DiffusersVAE, "attributes": AttributesVAE}


def adapt(model: nn.Module, adapter: str | None) -> nn.Module:
    """`model` wrapped by the named adapter (None: as it is)."""
    if adapter is None:
        return model
    if adapter not in ADAPTERS:
        raise VaeEdgeError(f"unknown adapter {adapter!r}: {', '.join(ADAPTERS)}")
    if adapter == "diffusers" and not callable(getattr(model, "encode", None)):
        raise VaeEdgeError("--adapter diffusers needs a diffusers AutoencoderKL (it has no encode())")
    if adapter == "attributes" and not all(isinstance(getattr(model, a, None), nn.Module) for a in ("encoder", "decoder")):
        raise VaeEdgeError("--adapter attributes needs a module with encoder and decoder submodules")
    return ADAPTERS[adapter](model)
