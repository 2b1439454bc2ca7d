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

import math
from pathlib import Path

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


class DiffusionSpaceVAE(DiffusersVAE):
    """An AutoencoderKL whose latents are those the diffusion model works in:
    z = (mean - shift_factor) * scaling_factor, as diffusers' pipelines scale them, and decode(z)
    = vae.decode(z / scaling_factor + shift_factor). A diffusion pipeline's latents decode to the
    images diffusers' own `vae.decode` gives, and the N(0, I) prior is the diffusion model's."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float = 0.0):
        super().__init__(vae)
        self.scale, self.shift = float(scaling_factor), float(shift_factor)

    def encode(self, x: torch.Tensor):
        dist = self.vae.encode(2 * x - 1).latent_dist
        return (dist.mean - self.shift) * self.scale, dist.logvar + 2 * math.log(self.scale)

    def decode(self, z: torch.Tensor):
        return ((self.vae.decode(z / self.scale + self.shift).sample + 1) / 2).clamp(0, 1)


class TinyDiffusionVAE(DiffusionSpaceVAE):
    """diffusers.AutoencoderTiny (TAESD) -> the protocol: its encoder is deterministic, so
    encode(x) gives the latents alone (no invented variance: the bundle records the posterior as
    deterministic); its latents are already the diffusion model's (scaling_factor 1). Decoding
    is AutoencoderKL's."""

    def encode(self, x: torch.Tensor):
        return (self.vae.encode(2 * x - 1).latents - self.shift) * self.scale


DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
MAX_CONFIG_BYTES = 1 << 20


def diffusers_folder(folder, subfolder: str | None = None) -> tuple[Path, str | None, dict]:
    """(folder, subfolder, config) of a diffusers VAE saved with save_pretrained: the folder itself,
    or a pipeline folder's `vae/` (model_index.json beside it), or the subfolder named."""
    from vae_edge.runtime.files import loads_json, read_regular

    folder = Path(folder)
    if not folder.is_dir():
        raise VaeEdgeError(f"--diffusers {folder} is not a folder (a diffusers save_pretrained folder)")
    if subfolder is None and not (folder / "config.json").is_file() and (folder / "model_index.json").is_file():
        subfolder = "vae"  # a whole pipeline: its VAE
    where = folder / subfolder if subfolder else folder
    if not (where / "config.json").is_file():
        raise VaeEdgeError(f"{where} has no config.json: give a folder written by diffusers' save_pretrained "
                           "(or a pipeline folder, with --subfolder vae)")
    try:
        config = loads_json(read_regular(where / "config.json", "config", MAX_CONFIG_BYTES))
    except ValueError as e:
        raise VaeEdgeError(f"{where / 'config.json'} is not JSON ({e})") from None
    cls = config.get("_class_name") if isinstance(config, dict) else None
    if cls not in DIFFUSERS_CLASSES:
        raise VaeEdgeError(f"{where} holds a {cls or 'model of no _class_name'}; vae-edge exports diffusers' "
                           f"{', '.join(DIFFUSERS_CLASSES)}")
    if not any(where.glob("*.safetensors")) and not any(where.glob("*.bin")):
        raise VaeEdgeError(f"{where} has no weights (diffusion_pytorch_model.safetensors)")
    return folder, subfolder, config


def load_diffusers(folder, subfolder: str | None = None) -> tuple[nn.Module, dict]:
    """A diffusers VAE folder -> (the protocol's module in the diffusion model's latent space, the
    facts the manifest records). Read locally (no network), the way diffusers' from_pretrained reads it."""
    folder, subfolder, config = diffusers_folder(folder, subfolder)
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    try:
        vae = cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True,
                                  low_cpu_mem_usage=False).eval()  # (True needs accelerate, and says so)
    except Exception as e:  # diffusers' own errors: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise VaeEdgeError(f"diffusers could not load {folder}: {first}") from None
    cfg = vae.config
    scale = float(cfg.scaling_factor if cfg.get("scaling_factor") is not None else 1.0)
    shift = float(cfg.shift_factor if cfg.get("shift_factor") is not None else 0.0)
    size = cfg.get("sample_size") or 512  # AutoencoderTiny's config has none: SD's 512
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    tiny = config["_class_name"] == "AutoencoderTiny"
    factor = int(cfg.get("upsampling_scaling_factor", 2)) ** (len(cfg.block_out_channels) - 1)
    facts = {"class": config["_class_name"], "diffusers_version": config.get("_diffusers_version"),
             "latent_space": "diffusion", "scaling_factor": scale, "shift_factor": shift,
             "latent_channels": int(cfg.latent_channels), "in_channels": int(cfg.in_channels),
             "sample_size": size, "spatial_factor": factor, "force_upcast": bool(cfg.get("force_upcast", False)),
             "posterior": "deterministic" if tiny else "gaussian",
             "source": str(Path(folder) / subfolder) if subfolder else str(folder)}
    return (TinyDiffusionVAE if tiny else DiffusionSpaceVAE)(vae, scale, shift), facts


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
