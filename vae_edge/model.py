"""The VAE: a config dataclass saved in every checkpoint, MLP and convolutional architectures."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from vae_edge import VaeEdgeError
from vae_edge.runtime.mathops import CONTEXT, LOG_SCALE_MIN  # shared with the runtime and coder

ARCHS = ("mlp", "conv")
UPSAMPLE = ("resize-subpixel", "resize", "convtranspose")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
LIKELIHOODS = ("bernoulli", "gaussian", "logistic", "logistic-ar")


@dataclass
class VAEConfig:
    arch: str = "mlp"
    latent_dim: int = 20
    hidden: int = 400  # mlp: width of the hidden layers (pytorch/examples: 784-400-20)
    depth: int = 1  # mlp: hidden layers in the encoder and in the decoder (IWAE paper: 2 of 500, tanh)
    # mlp: width of the decoder's hidden layers (0: the same as hidden). The decoder is what runs on
    # the device for sampling, so it can be narrower than the encoder: its batch-1 latency grows
    # with its weights (benchmarks/results/mlp_widths.md).
    dec_hidden: int = 0
    activation: str = "relu"  # mlp: relu | tanh
    channels: tuple[int, int] = (32, 64)  # conv: channels at 14x14 and 7x7
    # conv decoder upsampling, chosen by measurement (benchmarks/bench_decoder_ops.py):
    # "resize-subpixel": nearest Resize + Conv to 14x14, then a sub-pixel Conv (4 channels at
    #   14x14 + DepthToSpace) to 28x28: fastest in int8, and int8 ~1.9x faster than its fp32;
    # "resize": nearest Resize + Conv twice; "convtranspose": ConvTranspose2d twice.
    upsample: str = "resize-subpixel"
    # conv: residual blocks at 7x7 (c2 channels), after the encoder's convolutions and before the
    # decoder's upsampling: x + Conv3x3(ReLU(Conv3x3(ReLU(x)))). The 2M-parameter model
    # (channels 64,128, two blocks, latent 32) reached 82.4 nats on a GPU.
    res_blocks: int = 0
    conditional: bool = False
    # conv + conditional: the digit also enters as 10 one-hot planes beside the image (encoder) and
    # beside the 7x7 and 14x14 feature maps (decoder), not only beside the flat features: the
    # decoder then draws the asked-for digit from y rather than from z.
    cond_planes: bool = False
    # bernoulli (the decoder's logits) | gaussian (sigmoid(logits) is the mean, sigma fixed) |
    # logistic: 8-bit images, a discretized logistic per value (PixelCNN++'s, one component): the
    # decoder gives 2C channels, the mean's logits and the log-scale; logistic-ar: the mean also
    # follows each value's already-coded neighbours (runtime.mathops.CONTEXT) by weights the decoder
    # gives: (2 + len(CONTEXT))C channels
    likelihood: str = "bernoulli"
    sigma: float | None = None  # gaussian: the fixed per-pixel standard deviation
    # [C, H, W] of the images: MNIST's by default; conv models need H and W divisible by 4 (two
    # stride-2 stages), MLPs flatten any size.
    image_shape: tuple[int, int, int] = IMAGE_SHAPE

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.image_shape = tuple(int(n) for n in self.image_shape)
        if self.arch not in ARCHS:
            raise VaeEdgeError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if int(self.latent_dim) <= 0:
            raise VaeEdgeError(f"latent dim must be positive, got {self.latent_dim}")
        if int(self.hidden) <= 0 or any(c <= 0 for c in self.channels) or len(self.channels) != 2:
            raise VaeEdgeError(f"hidden width must be positive, and channels two positive counts (C1,C2), got {self.hidden} and {list(self.channels)}")
        if int(self.dec_hidden) < 0:
            raise VaeEdgeError(f"decoder hidden width must be positive (or 0: as hidden), got {self.dec_hidden}")
        if int(self.depth) <= 0:
            raise VaeEdgeError(f"depth must be positive, got {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise VaeEdgeError(f"unknown activation {self.activation!r}: {', '.join(ACTIVATIONS)}")
        if self.upsample not in UPSAMPLE:
            raise VaeEdgeError(f"unknown upsample {self.upsample!r}: {', '.join(UPSAMPLE)}")
        if int(self.res_blocks) < 0 or (self.res_blocks and self.arch != "conv"):
            raise VaeEdgeError(f"res blocks: a count >= 0, for conv models only (got {self.res_blocks} for {self.arch})")
        if self.cond_planes and not (self.conditional and self.arch == "conv"):
            raise VaeEdgeError("cond_planes needs a conditional conv model (--arch conv --conditional)")
        if self.likelihood not in LIKELIHOODS:
            raise VaeEdgeError(f"unknown likelihood {self.likelihood!r}: {', '.join(LIKELIHOODS)}")
        if self.likelihood == "gaussian" and not (self.sigma and self.sigma > 0):
            raise VaeEdgeError("a gaussian likelihood needs sigma, the per-pixel standard deviation (> 0)")
        if len(self.image_shape) != 3 or min(self.image_shape) <= 0:
            raise VaeEdgeError(f"image shape must be C,H,W (three positive sizes), got {list(self.image_shape)}")
        if self.arch == "conv" and (self.image_shape[1] % 4 or self.image_shape[2] % 4):
            raise VaeEdgeError(f"a conv model halves H and W twice: they must be multiples of 4, got "
                               f"{self.image_shape[1]}x{self.image_shape[2]} (pad or crop the images, or use --arch mlp)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["image_shape"] = list(self.image_shape)
        if self.sigma is None:  # MNIST models' configs as they always were
            d.pop("sigma")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ResBlock(nn.Module):
    """x + Conv3x3(ReLU(Conv3x3(ReLU(x)))), channels kept."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        d, cond = cfg.latent_dim, (NUM_CLASSES if cfg.conditional else 0)
        c0, h0, w0 = cfg.image_shape
        pixels, self.feat = c0 * h0 * w0, (h0 // 4, w0 // 4)  # the conv feature map at 1/4 size
        k = outputs_per_value(cfg.likelihood)
        self.out_shape = (k * c0, h0, w0)
        # One-hot rows picked by a Gather: exports to a plain ONNX Gather on the int64 label.
        self.register_buffer("onehot", torch.eye(NUM_CLASSES), persistent=False)
        if cfg.arch == "mlp":
            act, h, hd = ACTIVATIONS[cfg.activation], cfg.hidden, cfg.dec_hidden or cfg.hidden

            def stack(n_in: int, h: int) -> list[nn.Module]:
                layers: list[nn.Module] = [nn.Linear(n_in, h), act()]
                for _ in range(cfg.depth - 1):
                    layers += [nn.Linear(h, h), act()]
                return layers

            self.enc = nn.Sequential(*stack(pixels + cond, h))
            self.enc_out = nn.Linear(h, 2 * d)
            self.dec = nn.Sequential(*stack(d + cond, hd), nn.Linear(hd, k * pixels))
        else:
            c1, c2 = cfg.channels
            p = NUM_CLASSES if cfg.cond_planes else 0  # one-hot planes beside the feature maps
            fa = self.feat[0] * self.feat[1]  # 49 for 28x28
            self.enc = nn.Sequential(
                nn.Conv2d(c0 + p, c1, 4, stride=2, padding=1), nn.ReLU(),  # [B, c1, 14, 14]
                nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),  # [B, c2, 7, 7]
                *[ResBlock(c2) for _ in range(cfg.res_blocks)],
            )
            self.enc_out = nn.Linear(c2 * fa + cond, 2 * d)
            self.dec_in = nn.Sequential(nn.Linear(d + cond, c2 * fa), nn.ReLU())
            self.dec_res = nn.Sequential(*[ResBlock(c2) for _ in range(cfg.res_blocks)])  # empty: no op
            if cfg.upsample == "resize-subpixel":
                up1 = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2 + p, c1, 3, padding=1)]
                up2 = [nn.Conv2d(c1 + p, 4 * k * c0, 3, padding=1), nn.PixelShuffle(2)]  # ONNX DepthToSpace
            elif cfg.upsample == "resize":
                up1 = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2 + p, c1, 3, padding=1)]
                up2 = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c1 + p, k * c0, 3, padding=1)]
            else:
                up1 = [nn.ConvTranspose2d(c2 + p, c1, 4, stride=2, padding=1)]
                up2 = [nn.ConvTranspose2d(c1 + p, k * c0, 4, stride=2, padding=1)]
            if p:  # the planes go in before each stage, so the stages run one at a time
                self.dec_up1, self.dec_up2 = nn.Sequential(*up1, nn.ReLU()), nn.Sequential(*up2)
            else:
                self.dec = nn.Sequential(*up1, nn.ReLU(), *up2)

    def _cond(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.cfg.conditional:
            return h
        if y is None:
            raise ValueError("this model is conditional: pass the digit labels y")
        return torch.cat([h, self.onehot[y]], dim=1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] in [0, 1] (image_shape; MNIST's [B, 1, 28, 28]) -> (mu, logvar), each [B, latent_dim]."""
        if self.cfg.arch == "mlp":
            h = self.enc(self._cond(x.flatten(1), y))  # [B, hidden]
        else:
            if self.cfg.cond_planes:
                x = torch.cat([x, self._planes(y, *self.cfg.image_shape[1:])], dim=1)  # [B, 11, 28, 28]
            h = self._cond(self.enc(x).flatten(1), y)  # [B, c2*49 (+10)]
        mu, logvar = self.enc_out(h).chunk(2, dim=1)  # [B, D] each
        return mu, logvar

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, latent_dim] -> logits [B, C, H, W]: Bernoulli logits, or (gaussian) the mean's
        logits (sigmoid of them is the mean); logistic: [B, 2C, H, W], the mean's logits and the
        log-scale (split_logistic)."""
        h = self._cond(z, y)
        if self.cfg.arch == "mlp":
            return self.dec(h).view(-1, *self.out_shape)
        c2, (fh, fw) = self.cfg.channels[1], self.feat
        h = self.dec_res(self.dec_in(h).view(-1, c2, fh, fw))  # static trailing dims: shape inference can follow
        if not self.cfg.cond_planes:
            return self.dec(h)  # [B, C, H, W]
        h = self.dec_up1(torch.cat([h, self._planes(y, fh, fw)], dim=1))  # [B, c1, H/2, W/2]
        return self.dec_up2(torch.cat([h, self._planes(y, 2 * fh, 2 * fw)], dim=1))  # [B, C, H, W]

    def _planes(self, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """One-hot digit planes [B, 10, h, w]: a Gather and a Mul by constant ones in ONNX
        (no Shape/Expand, so every shape but the batch is static for quantization)."""
        oh = self.onehot[y]
        return oh[:, :, None, None] * torch.ones(1, 1, h, w, dtype=oh.dtype, device=oh.device)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """eps: the reparameterization noise, given (distributed training draws the global batch's
        noise on every rank and hands each its rows); else drawn from generator."""
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar, generator) if eps is None else mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, y), mu, logvar


def outputs_per_value(likelihood: str) -> int:
    """The decoder's output channels per image channel: the mean's logits (Bernoulli: the logits),
    and for 8-bit likelihoods the log-scale and, for logistic-ar, one weight per neighbour."""
    return {"logistic": 2, "logistic-ar": 2 + len(CONTEXT)}.get(likelihood, 1)


def split_logistic(out: torch.Tensor, ar: bool = False) -> tuple[torch.Tensor, ...]:
    """A logistic decoder's [B, 2C, H, W] -> (mean in [0, 1], log-scale >= LOG_SCALE_MIN), [B, C, H, W]
    each; a logistic-ar decoder's [B, (2 + K)C, H, W] -> those and the K neighbours' weights in
    [-1, 1], [B, K C, H, W] (neighbour k's in channels k C .. k C + C - 1)."""
    c = out.shape[1] // (2 + len(CONTEXT) if ar else 2)
    m, log_scale = out[:, :c], out[:, c:2 * c]
    if not ar:
        return torch.sigmoid(m), log_scale.clamp(min=LOG_SCALE_MIN)
    return torch.sigmoid(m), log_scale.clamp(min=LOG_SCALE_MIN), torch.tanh(out[:, 2 * c:])


def context_mean(probs: torch.Tensor, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A logistic-ar decoder's means given the values x (runtime.mathops.context_mean's arithmetic)."""
    c, (h, w) = probs.shape[1], probs.shape[2:]
    r = x - probs
    mean = probs
    for k, (dy, dx) in enumerate(CONTEXT):  # r at (i + dy, j + dx), zero outside: dy <= 0
        shifted = F.pad(r, (max(-dx, 0), max(dx, 0), -dy, 0))[:, :, :h, max(dx, 0):max(dx, 0) + w]
        mean = mean + weights[:, k * c:(k + 1) * c] * shifted
    return mean


def discretized_logistic_nll(mean: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log P(target) per value (nats) for 8-bit values (target k/255): the logistic's mass on the
    bin [k - 1/2, k + 1/2] / 255, the two end bins taking the tails (PixelCNN++, Salimans et al.
    2017, with values in [0, 1])."""
    centered = target - mean
    inv_s = torch.exp(-log_scale)
    plus, minus = inv_s * (centered + 0.5 / 255), inv_s * (centered - 0.5 / 255)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the bin of 0
    log_one_minus_cdf_min = -F.softplus(minus)  # log (1 - sigmoid(minus)): the bin of 255
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centered  # where delta underflows: the density at the centre times the bin width
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) - math.log(255)
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
    log_p = torch.where(target < 0.5 / 255, log_cdf_plus, torch.where(target > 1 - 0.5 / 255, log_one_minus_cdf_min, inner))
    return -log_p


def reconstruction_nll(logits: torch.Tensor, target: torch.Tensor, cfg: VAEConfig | None = None) -> torch.Tensor:
    """-log p(target | z) per value (nats): Bernoulli on the logits, Gaussian around sigmoid(logits),
    or (logistic) the discretized logistic's mass of the 8-bit value."""
    if cfg is not None and cfg.likelihood == "logistic":
        return discretized_logistic_nll(*split_logistic(logits), target)
    if cfg is not None and cfg.likelihood == "logistic-ar":
        probs, log_scale, weights = split_logistic(logits, ar=True)
        return discretized_logistic_nll(context_mean(probs, weights, target), log_scale, target)
    if cfg is not None and cfg.likelihood == "gaussian":
        d = (target - torch.sigmoid(logits)) / cfg.sigma
        return 0.5 * d * d + (math.log(cfg.sigma) + 0.5 * math.log(2 * math.pi))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def elbo_terms(
    target: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "none",
    cfg: VAEConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction NLL (the model's likelihood, nats) and KL(q(z|x) || N(0, I)): per image [B],
    or with reduction="sum" summed over the batch (one fused pass: what the training loop uses)."""
    if reduction == "sum":
        if cfg is None or cfg.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        else:
            rec = reconstruction_nll(logits, target, cfg).sum()
        return rec, -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    rec = reconstruction_nll(logits, target, cfg).flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return rec, kl


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
