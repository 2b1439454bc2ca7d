"""Make the portable (integer) network of a vae-edge MLP or conv VAE (runtime/portable.py runs it).

Weights: each output channel's to 16-bit integers with a power-of-two scale; biases to integers
at the accumulator's scale. Activations: each requantized tensor's power-of-two scale from its
largest value on calibration data (with a margin), as 16-bit integers. The calibration data is
the model's own: latents drawn from the prior, decoded, their means rounded to 8 bits and encoded
(no dataset needed), plus blank and full images. Every layer is checked to keep its partial sums
below 2^53 (so float64 sums are exact on every device), and the network's outputs are compared
with the torch model's.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from vae_edge import VaeEdgeError
from vae_edge.model import VAE
from vae_edge.runtime.portable import ACT_MAX, EXACT, TANH_EXP, W_MAX, Z_BITS, PortableVAE

MARGIN = 2.0  # activation ranges: twice the largest value seen
LIKELIHOODS = ("bernoulli", "logistic", "logistic-ar")


def eligible(model: VAE) -> str | None:
    """None if the model has a portable network, else why not (one line)."""
    c = model.cfg
    if c.conditional:
        return "a conditional model"
    if c.likelihood not in LIKELIHOODS:
        return f"its {c.likelihood} likelihood (compression needs bernoulli, logistic or logistic-ar)"
    if c.arch == "mlp" and c.activation not in ("relu", "tanh"):
        return f"an MLP with {c.activation} activations (relu or tanh only)"
    if c.arch == "conv" and c.upsample not in ("resize-subpixel", "resize"):
        return f"a conv decoder with {c.upsample} upsampling"
    return None


def _layers(model: VAE) -> dict[str, torch.nn.Module]:
    """Name -> Linear/Conv2d module, in the runtime's naming and running order (each layer's input
    exponent is the one before's output)."""
    c, out = model.cfg, {}
    if c.arch == "mlp":
        out.update({f"enc.{i}": model.enc[2 * i] for i in range(c.depth)})
        out["enc_out"] = model.enc_out
        out.update({f"dec.{i}": model.dec[2 * i] for i in range(c.depth)})
        out["dec_out"] = model.dec[2 * c.depth]
        return out
    out["enc.0"], out["enc.1"] = model.enc[0], model.enc[2]
    for r in range(c.res_blocks):
        out[f"enc.res{r}.0"], out[f"enc.res{r}.1"] = model.enc[4 + r].body[1], model.enc[4 + r].body[3]
    out["enc_out"], out["dec_in"] = model.enc_out, model.dec_in[0]
    for r in range(c.res_blocks):
        out[f"dec.res{r}.0"], out[f"dec.res{r}.1"] = model.dec_res[r].body[1], model.dec_res[r].body[3]
    out["dec.up1"] = model.dec[1]
    out["dec.up2"] = model.dec[4] if c.upsample == "resize" else model.dec[3]
    return out


def _ranges(model: VAE, x: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
    """The largest |activation| of each requantized tensor: a layer's ReLU output, or a residual
    block's sum (keyed by its second conv)."""
    layers, peak, hooks = _layers(model), {}, []

    def keep(name):
        def hook(_m, _i, out):
            peak[name] = max(peak.get(name, 0.0), float(out.detach().abs().max()))
        return hook

    for name, m in layers.items():
        if name.endswith(".1") and ".res" in name:
            continue  # the block's sum, below
        hooks.append(m.register_forward_hook(keep(name)))
    blocks = ([(f"enc.res{r}.1", model.enc[4 + r]) for r in range(model.cfg.res_blocks)]
              + [(f"dec.res{r}.1", model.dec_res[r]) for r in range(model.cfg.res_blocks)]
              if model.cfg.arch == "conv" else [])
    hooks += [m.register_forward_hook(keep(name)) for name, m in blocks]
    try:
        with torch.no_grad():
            model.encode(x)
            model.decode(z)
    finally:
        for h in hooks:
            h.remove()
    return peak


def _exponent(peak: float, limit: int) -> int:
    return -40 if peak <= 0 else math.ceil(math.log2(peak * MARGIN / limit))


def build(model: VAE, n: int = 256, seed: int = 0) -> tuple[bytes, dict]:
    """(the portable network's npz bytes, a report: the largest output differences from torch)."""
    why = eligible(model)
    if why:
        raise VaeEdgeError(f"no portable network for {why}")
    model = model.eval().cpu().float()
    g = torch.Generator().manual_seed(seed)
    c0, h0, w0 = model.cfg.image_shape
    z = torch.randn(n, model.cfg.latent_dim, generator=g)
    with torch.no_grad():
        out = model.decode(z)
        mean = torch.sigmoid(out[:, :c0])
    x = torch.cat([torch.round(mean * 255) / 255, torch.zeros(1, c0, h0, w0), torch.ones(1, c0, h0, w0)])
    z = torch.cat([z, 4 * torch.randn(8, model.cfg.latent_dim, generator=g)])  # the prior's far buckets too
    peak = _ranges(model, x, z)
    layers = _layers(model)
    arrays: dict[str, np.ndarray] = {}
    e, bound = 0, 255.0  # the encoder's input: the 8-bit value k, exponent 0
    for name in layers:  # in running order
        if name in ("dec_in", "dec.0") and (name == "dec_in" or model.cfg.arch == "mlp"):
            e, bound = -Z_BITS, 2.0 ** Z_BITS * 8  # the decoder's input: z in units of 2^-Z_BITS, |z| < 8
        if name in ("enc_out", "dec_out", "dec.up2"):
            eo = None
        elif model.cfg.arch == "mlp" and model.cfg.activation == "tanh":
            eo = TANH_EXP  # the activation's range is [-1, 1] whatever the sums
        else:
            eo = _exponent(peak[name], ACT_MAX)
        arrays.update(_quantize(name, layers[name], e, eo, first=name == "enc.0"))
        _check_exact(name, arrays, bound)
        if eo is not None:
            e, bound = eo, float(ACT_MAX)
    data = io.BytesIO()
    np.savez_compressed(data, **arrays)
    net = PortableVAE(model.cfg.to_dict(), arrays)
    report = compare(model, net, x[:64], z[:64])
    return data.getvalue(), report


def _quantize(name: str, m: torch.nn.Module, e_in: int, eo: int | None, first: bool) -> dict[str, np.ndarray]:
    w = m.weight.detach().double().numpy()
    if first:
        w = w / 255.0  # the encoder's first layer takes k, not k/255
    b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
    peak = np.abs(w.reshape(w.shape[0], -1)).max(1)
    ew = np.array([_exponent(p / MARGIN, W_MAX) for p in peak], np.int64)  # no margin on weights
    shape = (-1,) + (1,) * (w.ndim - 1)
    wq = np.rint(np.ldexp(w, (-ew).reshape(shape).astype(np.int32)))
    if np.abs(wq).max() > W_MAX:
        raise VaeEdgeError(f"portable network: layer {name}'s weights do not fit 16 bits")
    bq = np.rint(np.ldexp(b, (-(ew + e_in)).astype(np.int32)))
    out = {f"{name}.w": wq.astype(np.int16), f"{name}.b": bq.astype(np.int64), f"{name}.ew": ew.astype(np.int16)}
    if eo is not None:
        out[f"{name}.eo"] = np.array(eo, np.int16)
    return out


def _check_exact(name: str, arrays: dict, in_max: float) -> None:
    """Every partial sum of the layer below 2^53: sum |w| * max|input| + |b|, per output channel."""
    w = np.abs(arrays[f"{name}.w"].astype(np.float64)).reshape(len(arrays[f"{name}.w"]), -1).sum(1)
    bound = w * in_max + np.abs(arrays[f"{name}.b"].astype(np.float64))
    if bound.max() >= EXACT:
        raise VaeEdgeError(f"portable network: layer {name}'s sums could reach {bound.max():.3g}, past 2^53 "
                           "(not exact in float64)")


def compare(model: VAE, net: PortableVAE, x: torch.Tensor, z: torch.Tensor) -> dict:
    """The largest differences between the portable network's outputs and the torch model's."""
    from vae_edge.model import split_logistic

    with torch.no_grad():
        mu, logvar = model.encode(x)
        out = model.decode(z)
    pmu, plogvar = net.encode(x.numpy())
    dec = net.decode(z.numpy())
    lk = model.cfg.likelihood
    if lk == "bernoulli":
        ref = {"logits": out, "probs": torch.sigmoid(out)}
    else:
        parts = split_logistic(out, ar=lk == "logistic-ar")
        ref = dict(zip(["probs", "log_scale", "context"], parts, strict=False))
    diff = {"mu": float(np.abs(pmu - mu.numpy()).max()), "logvar": float(np.abs(plogvar - logvar.numpy()).max())}
    diff.update({k: float(np.abs(dec[k] - v.double().numpy()).max()) for k, v in ref.items()})
    return {"max_abs_diff": diff}
