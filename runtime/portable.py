"""The portable networks: vae-edge's own MLP and conv VAEs as integer networks, run in numpy so that
every device computes the same bits (what the compressor needs from both ends of a file).

The float graphs of a bundle give slightly different floats on different CPUs (onnxruntime's
kernels sum in other orders, with or without FMA, and approximate exp/tanh differently on AVX2,
AVX-512 and NEON), and bits-back coding needs the decoder's probabilities bit for bit. Here every
weight and activation is an integer (at most 16 bits, with a power-of-two scale per output
channel or per tensor), each layer's sum of integer products is computed in float64, where every
partial sum is an integer below 2^53 (checked when the network is made), so it is exact whatever
the order or the BLAS; requantization multiplies by a power of two (exact) and rounds half to even
(exact); the outputs' sigmoid and tanh are IEEE basic operations only (`det_sigmoid`). The
network's outputs are therefore the same bits on every IEEE-754 machine (Ballé, Johnston and
Minnen, ICLR 2019, "Integer networks for data compression with latent-variable models", make the
same argument for integer arithmetic).

The file (`portable.npz` in a bundle, `manifest["portable"]` describing it) holds, per layer
NAME: NAME.w (int16 weights; conv [out, in, kh, kw], linear [out, in]), NAME.b (int64 biases at the
accumulator's scale), NAME.ew (int16: each output channel's weight exponent, w = w_int 2^ew), and
NAME.eo (the exponent of the layer's output activations, or absent for the last layer). The
encoder's input is the 8-bit value k itself (the first layer's weights absorb 1/255); the
decoder's, z in units of 2^-Z_BITS.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime.compress import det_sigmoid  # IEEE basic operations only
from vae_edge.runtime.mathops import LOG_SCALE_MIN

FORMAT = 1
ACT_MAX = 32767  # activations are integers in [-ACT_MAX, ACT_MAX] (16 bits)
W_MAX = 32767  # and weights
Z_BITS = 10  # the decoder's input: z rounded to units of 2^-10
EXACT = float(2**53)  # every partial sum of a layer must stay below this (float64 integers)
TANH_EXP = -15  # an MLP's tanh activations: integers in units of 2^-15 (|tanh| <= 1)


def det_tanh(x: np.ndarray) -> np.ndarray:
    return 2.0 * det_sigmoid(2.0 * np.asarray(x, np.float64)) - 1.0


class PortableError(VaeEdgeError):
    """A portable network that cannot be built or read."""


@dataclass
class Layer:
    w: np.ndarray  # float64 holding integers: conv [out, in*kh*kw] or linear [out, in]
    b: np.ndarray  # float64 integers [out]
    ew: np.ndarray  # int [out]
    eo: int | None  # output exponent (None: the last layer, its value given exactly)
    kernel: tuple[int, int] = (1, 1)


def _conv(a: np.ndarray, layer: Layer, stride: int, pad: int) -> np.ndarray:
    """Sums of a conv layer: a [N, C, H, W] float64 integers -> [N, out, Ho, Wo] (exact)."""
    kh, kw = layer.kernel
    if pad:
        a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(a, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, ho, wo = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    out = cols @ layer.w.T + layer.b
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


def _linear(a: np.ndarray, layer: Layer) -> np.ndarray:
    return a @ layer.w.T + layer.b


def _requant(acc: np.ndarray, e_acc: np.ndarray, eo: int, relu: bool, axis: int) -> np.ndarray:
    """Integers at exponent eo from sums at per-channel exponents e_acc: a power-of-two scaling
    (exact), rounding half to even, clipping to 16 bits (and at 0 after a ReLU)."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    out = np.rint(np.ldexp(acc, (e_acc - eo).astype(np.int32).reshape(shape)))
    return np.clip(out, 0 if relu else -ACT_MAX, ACT_MAX)


def _exact(acc: np.ndarray, e_acc: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    return np.ldexp(acc, e_acc.astype(np.int32).reshape(shape))


class PortableVAE:
    """encode(uint8-valued images) -> (mu, logvar); decode(z) -> the decoder's outputs by name, as
    float64 values identical on every device."""

    def __init__(self, config: dict, arrays: dict[str, np.ndarray]):
        self.cfg = config
        self.layers: dict[str, Layer] = {}
        names = sorted({k.rsplit(".", 1)[0] for k in arrays})
        for name in names:
            w = np.asarray(arrays[f"{name}.w"])
            kernel = tuple(w.shape[2:]) if w.ndim == 4 else (1, 1)
            eo = arrays.get(f"{name}.eo")
            self.layers[name] = Layer(w=w.reshape(w.shape[0], -1).astype(np.float64),
                                      b=np.asarray(arrays[f"{name}.b"]).astype(np.float64),
                                      ew=np.asarray(arrays[f"{name}.ew"]).astype(np.int64),
                                      eo=None if eo is None else int(eo), kernel=kernel)

    @classmethod
    def from_bytes(cls, config: dict, data: bytes) -> PortableVAE:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise PortableError(f"the portable network does not load ({type(e).__name__})") from None
        return cls(config, arrays)

    # -- one layer ----------------------------------------------------------------------------
    def _run(self, name: str, a: np.ndarray, e_in: int, relu: bool, conv: tuple[int, int] | None = None):
        """(next activations, their exponent); the last layer: (exact values, None)."""
        layer = self.layers.get(name)
        if layer is None:
            raise PortableError(f"the portable network has no layer {name}")
        acc = _conv(a, layer, *conv) if conv else _linear(a, layer)
        axis = 1
        e_acc = layer.ew + e_in
        if layer.eo is None:
            return _exact(acc, e_acc, axis), None
        out = _requant(acc, e_acc, layer.eo, relu, axis)
        return out, layer.eo

    def _hidden(self, name: str, a: np.ndarray, e_in: int) -> tuple[np.ndarray, int]:
        """An MLP's hidden layer and its activation: ReLU on the integers, or tanh (det_tanh of the
        exact sum, rounded to units of 2^TANH_EXP)."""
        if self.cfg.get("activation", "relu") == "relu":
            return self._run(name, a, e_in, relu=True)
        layer = self.layers[name]
        v = _exact(_linear(a, layer), layer.ew + e_in, 1)
        return np.clip(np.rint(np.ldexp(det_tanh(v), -layer.eo)), -ACT_MAX, ACT_MAX), layer.eo

    def _res(self, prefix: str, h: np.ndarray, e: int) -> tuple[np.ndarray, int]:
        """x + Conv(ReLU(Conv(ReLU(x)))), the sum requantized to the block's output exponent."""
        y, e1 = self._run(f"{prefix}.0", np.maximum(h, 0), e, relu=True, conv=(1, 1))
        layer = self.layers[f"{prefix}.1"]
        acc = _conv(y, layer, 1, 1)
        eo = layer.eo
        y2 = _requant(acc, layer.ew + e1, eo, relu=False, axis=1)
        skip = np.rint(np.ldexp(h, int(e - eo)))
        return np.clip(y2 + skip, -ACT_MAX, ACT_MAX), eo

    # -- the graphs ---------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images [N, C, H, W] (values k/255) -> (mu, logvar) [N, D] float64."""
        a = np.rint(np.asarray(x, np.float64) * 255)
        n, cfg = len(a), self.cfg
        if cfg["arch"] == "mlp":
            a, e = a.reshape(n, -1), 0
            for i in range(int(cfg["depth"])):
                a, e = self._hidden(f"enc.{i}", a, e)
        else:
            a, e = self._run("enc.0", a, 0, relu=True, conv=(2, 1))
            a, e = self._run("enc.1", a, e, relu=True, conv=(2, 1))
            for r in range(int(cfg["res_blocks"])):
                a, e = self._res(f"enc.res{r}", a, e)
            a = a.reshape(n, -1)
        out, _ = self._run("enc_out", a, e, relu=False)
        d = out.shape[1] // 2
        return out[:, :d], out[:, d:]

    def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Latents [N, D] -> the decoder's outputs (logits and probs; probs, log_scale and, for
        logistic-ar, context), float64."""
        cfg = self.cfg
        a = np.rint(np.ldexp(np.asarray(z, np.float64).reshape(len(z), -1), Z_BITS))
        e = -Z_BITS
        c0, h0, w0 = cfg["image_shape"]
        if cfg["arch"] == "mlp":
            for i in range(int(cfg["depth"])):
                a, e = self._hidden(f"dec.{i}", a, e)
            out, _ = self._run("dec_out", a, e, relu=False)
            out = out.reshape(len(a), -1, h0, w0)
        else:
            c2 = int(cfg["channels"][1])
            a, e = self._run("dec_in", a, e, relu=True)
            a = a.reshape(len(a), c2, h0 // 4, w0 // 4)
            for r in range(int(cfg["res_blocks"])):
                a, e = self._res(f"dec.res{r}", a, e)
            a = a.repeat(2, axis=2).repeat(2, axis=3)
            a, e = self._run("dec.up1", a, e, relu=True, conv=(1, 1))
            if cfg["upsample"] == "resize":
                a = a.repeat(2, axis=2).repeat(2, axis=3)
                out, _ = self._run("dec.up2", a, e, relu=False, conv=(1, 1))
            else:  # resize-subpixel: 4C channels at half size, then DepthToSpace
                out, _ = self._run("dec.up2", a, e, relu=False, conv=(1, 1))
                n, c4, h, w = out.shape
                out = out.reshape(n, c4 // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)
        return outputs(out, cfg["likelihood"], c0)


def outputs(v: np.ndarray, likelihood: str, c: int) -> dict[str, np.ndarray]:
    """The decoder's outputs by name from its last layer's exact values [N, k C, H, W]."""
    if likelihood == "bernoulli":
        return {"logits": v, "probs": det_sigmoid(v)}
    res = {"probs": det_sigmoid(v[:, :c]), "log_scale": np.maximum(v[:, c:2 * c], LOG_SCALE_MIN)}
    if likelihood == "logistic-ar":
        res["context"] = det_tanh(v[:, 2 * c:])
    return res
