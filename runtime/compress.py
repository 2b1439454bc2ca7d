"""Lossless compression of binary and 8-bit images with the VAE: bits-back coding with ANS
(BB-ANS, Townsend, Bird and Barber, ICLR 2019), and the file that carries it.

To compress an image x on top of a message: pop a latent z from the posterior q(z|x) (taking
bits off the message), push x under the decoder's Bernoulli p(x|z), push z under the prior. The
net cost is -log p(x|z) - log p(z) + log q(z|x): on average the -ELBO. Binary images are coded
under a Bernoulli decoder; 8-bit ones (a logistic model's) under its discretized logistic per
value, quantised to 256 frequencies of a total 2^16. Decompressing runs the
same steps backwards and gets the popped bits back, exactly.

Latents are discretised as the paper does: each dimension into K buckets of equal prior mass
(so the prior is uniform on them), the posterior coded on the same buckets, the decoder run at
the buckets' centres. Everything that must agree bit for bit at both ends (the posterior's
quantised CDF, the pixels' quantised probabilities, the bucket tables) is computed here from the
graphs' outputs with IEEE basic operations only (+ - * /, floor, ldexp: no libm), so it is the
same on every CPU; what can differ between devices is the graphs' float output itself, and a
file records a fingerprint of it (see `fingerprint`).

Images are coded in chunks, one ANS lane per image of a chunk; the chunks grow from one image
(so the first pops draw few virtual bits, the start-up cost) to `lanes`.
"""

from __future__ import annotations

import hashlib
import platform
import struct
import zlib
from collections.abc import Iterator

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime.ans import ANSError, Message
from vae_edge.runtime.mathops import CONTEXT, EIGHT_BIT, LOG_SCALE_MIN, context_mean

MAGIC = b"VAEZ"
FORMAT_VERSION = 1
LATENT_BITS = 10  # K = 2^10 buckets of equal prior mass per latent dimension
POST_PREC = 24  # the posterior's quantised CDF: a total of 2^24
GAP = 4  # frequency reserved per bucket (covers det_ndtr's error: 2 * 6e-8 * 2^24 < GAP - 1)
PIX_PREC = 20  # each pixel's Bernoulli probability, in units of 2^-20
PIX8_PREC = 16  # an 8-bit value's quantised CDF: a total of 2^16 over the 256 values
GAP8 = 2  # frequency reserved per value (the sigmoid's rounding may not be monotone by one unit)
TABLE_ENTRIES = 1 << 21  # CDF entries decompression computes at once (16 MiB)
LANES = 128  # images coded side by side in a full chunk, at most
IMAGES_PER_LANE = 50  # fewer images: fewer lanes (each costs its 64-bit head in the file)
MAX_IMAGES = 1 << 24
MAX_VALUES = 1 << 30  # pixels of all images of one file (4 GiB decoded as float32), at most
MIN_BITS_PER_IMAGE = 1  # a file holds at least this many bits per image (so 8 images per byte, at most)


class CompressError(VaeEdgeError):
    """A file that cannot be decompressed here (damaged, or made with another model or device)."""


# -- deterministic numerics (IEEE + - * / only: the same bits on every CPU) ---------------------
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634


def det_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) in float64 by range reduction and a degree-13 Taylor polynomial (relative error ~1e-16)."""
    x = np.clip(np.asarray(x, np.float64), -700.0, 700.0)
    k = np.rint(x * _LOG2E)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.ones_like(r)
    for n in range(13, 0, -1):
        p = 1.0 + r * p / n
    return np.ldexp(p, k.astype(np.int32))


def det_sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float64 on det_exp (the same bits on every CPU)."""
    return 1.0 / (1.0 + det_exp(-np.asarray(x, np.float64)))


def det_ndtr(t: np.ndarray) -> np.ndarray:
    """The standard normal CDF (Numerical Recipes' erfcc, absolute error < 6e-8), on det_exp."""
    v = np.clip(np.asarray(t, np.float64), -40.0, 40.0) * -0.7071067811865476
    a = np.abs(v)
    s = 1.0 / (1.0 + 0.5 * a)
    r = s * det_exp(-a * a - 1.26551223 + s * (1.00002368 + s * (0.37409196 + s * (0.09678418 + s * (
        -0.18628806 + s * (0.27886807 + s * (-1.13520398 + s * (1.48851587 + s * (
            -0.82215223 + s * 0.17087277)))))))))
    return 0.5 * np.where(v >= 0, r, 2.0 - r)


def _ndtri(p: np.ndarray) -> np.ndarray:
    """The inverse of det_ndtr by bisection (deterministic: the same table on every CPU)."""
    lo, hi = np.full(p.shape, -40.0), np.full(p.shape, 40.0)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        below = det_ndtr(mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


_TABLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def buckets(bits: int = LATENT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(edges [K+1] float64 with -inf/+inf at the ends, centres [K] float32) of K = 2^bits
    buckets of equal mass under N(0, 1)."""
    if bits not in _TABLES:
        k = 1 << bits
        edges = np.concatenate([[-np.inf], _ndtri(np.arange(1, k) / k), [np.inf]])
        centres = _ndtri((np.arange(k) + 0.5) / k).astype(np.float32)
        _TABLES[bits] = (edges, centres)
    return _TABLES[bits]


class Posterior:
    """The quantised CDF of N(mu, sigma^2) on the buckets, one latent dimension for n lanes:
    C(0) = 0, C(K) = 2^prec, C(i) = floor(Phi(t_i) (2^prec - GAP K)) + GAP i between, so every
    bucket gets a frequency >= 1 even where Phi's approximation wiggles (by < (GAP - 1) / 2^prec)."""

    def __init__(self, mu: np.ndarray, logvar: np.ndarray, bits: int, prec: int):
        self.mu = np.asarray(mu, np.float64)
        self.inv_sigma = det_exp(-0.5 * np.clip(np.asarray(logvar, np.float64), -60.0, 60.0))
        self.k = 1 << bits
        self.edges = buckets(bits)[0]
        self.scale = float((1 << prec) - GAP * self.k)
        self.total = np.uint64(1 << prec)

    def cdf(self, i: np.ndarray) -> np.ndarray:
        t = (self.edges[i] - self.mu) * self.inv_sigma
        c = np.floor(np.clip(det_ndtr(t), 0.0, 1.0) * self.scale).astype(np.uint64)
        c += np.uint64(GAP) * i.astype(np.uint64)
        c[i <= 0] = 0
        c[i >= self.k] = self.total
        return c

    def find(self, cf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The bucket each lane's cf falls in: (index, start, freq), by bisection."""
        n = len(cf)
        lo, hi = np.zeros(n, np.int64), np.full(n, self.k, np.int64)
        clo, chi = np.zeros(n, np.uint64), np.full(n, self.total, np.uint64)
        while True:
            span = hi - lo
            if span.max() <= 1:
                break
            mid = lo + span // 2
            c = self.cdf(mid)
            left = c <= cf
            lo, clo = np.where(left, mid, lo), np.where(left, c, clo)
            hi, chi = np.where(left, hi, mid), np.where(left, chi, c)
        return lo, clo, chi - clo

    def interval(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = self.cdf(i)
        return start, self.cdf(i + 1) - start


def pixel_freqs(logits: np.ndarray, prec: int = PIX_PREC) -> np.ndarray:
    """The frequency of a 1 for each pixel, of a total 2^prec, in [1, 2^prec - 1]: uint64."""
    p1 = det_sigmoid(logits)
    return np.clip(np.floor(p1 * (1 << prec) + 0.5), 1, (1 << prec) - 1).astype(np.uint64)


def inv_scale(log_scale: np.ndarray) -> np.ndarray:
    """1 / s of the discretized logistic from its log-scale (floored at LOG_SCALE_MIN), deterministic."""
    return det_exp(-np.maximum(np.asarray(log_scale, np.float64), LOG_SCALE_MIN))


class ValueCDF:
    """The quantised CDF of the discretized logistic (mean, log_scale) of one 8-bit value, for n
    lanes: C(0) = 0, C(256) = 2^prec, C(k) = floor(sigmoid(((k - 1/2)/255 - mean) / s)
    (2^prec - GAP8 256)) + GAP8 k between: every value gets a frequency >= 1."""

    def __init__(self, mean: np.ndarray, log_scale: np.ndarray | None, prec: int = PIX8_PREC,
                 inv_s: np.ndarray | None = None):
        self.mean = np.asarray(mean, np.float64)
        self.inv_s = inv_s if inv_s is not None else inv_scale(log_scale)
        self.scale = float((1 << prec) - GAP8 * 256)
        self.total = np.uint64(1 << prec)

    def cdf(self, k: np.ndarray) -> np.ndarray:
        t = ((k - 0.5) / 255.0 - self.mean) * self.inv_s
        sig = det_sigmoid(t)
        c = np.floor(sig * self.scale).astype(np.uint64) + np.uint64(GAP8) * k.astype(np.uint64)
        c[k <= 0] = 0
        c[k >= 256] = self.total
        return c

    def interval(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = self.cdf(k)
        return start, self.cdf(k + 1) - start

    def table(self) -> np.ndarray:
        """C(0..256) of every value: [*mean.shape, 257] uint64 (the same numbers as cdf)."""
        k = np.broadcast_to(np.arange(257, dtype=np.int64), (*self.mean.shape, 257))
        self.mean, self.inv_s = self.mean[..., None], self.inv_s[..., None]
        try:
            return self.cdf(np.ascontiguousarray(k))
        finally:
            self.mean, self.inv_s = self.mean[..., 0], self.inv_s[..., 0]


# -- the chunks ---------------------------------------------------------------------------------
def schedule(n: int, lanes: int = LANES) -> list[int]:
    """Chunk sizes for n images: one lane until 8 images are coded, then a chunk of a quarter of
    the images coded so far (up to `lanes`). A chunk's posterior pops take a few times more bits
    than an image leaves behind; this growth keeps them drawing on coded bits, not virtual ones."""
    sizes, done = [], 0
    while done < n:
        sizes.append(min(max(1, min(lanes, done // 4)), n - done))
        done += sizes[-1]
    return sizes


def _chunks(n: int, lanes: int) -> Iterator[tuple[int, int]]:
    start = 0
    for size in schedule(n, lanes):
        yield start, start + size
        start += size


def _schedule_parts(n: int, lanes: int) -> tuple[list[int], int, int]:
    """schedule(n, lanes) in O(log lanes) time and memory, for any n a header may claim:
    (the growing chunks, how many full chunks of `lanes` follow, the last chunk's size or 0).
    Sizes never shrink but for the last chunk."""
    sizes, done = [], 0
    while done < n:
        size = min(max(1, min(lanes, done // 4)), n - done)
        if size == lanes:
            break
        sizes.append(size)
        done += size
    return sizes, (n - done) // lanes, (n - done) % lanes


def _chunks_reversed(n: int, lanes: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, lanes open before it) of each chunk, last chunk first, computed lazily."""
    grow, full, tail = _schedule_parts(n, lanes)
    end = n
    if tail:
        yield end - tail, end, lanes if full else (grow[-1] if grow else 0)
        end -= tail
    for j in range(full):
        yield end - lanes, end, lanes if j < full - 1 else (grow[-1] if grow else 0)
        end -= lanes
    for k in range(len(grow) - 1, -1, -1):
        yield end - grow[k], end, grow[k - 1] if k else 0
        end -= grow[k]


PORTABLE = "portable"  # the variant a file names when the bundle's portable network coded it


class Codec:
    """BB-ANS on one runtime (an unconditional Bernoulli or logistic model): compress and
    decompress chunks; with portable=True through the bundle's integer network (the same bits on
    every device) instead of its graphs."""

    def __init__(self, rt, bits: int = LATENT_BITS, portable: bool = False):
        check_model(rt)
        self.rt, self.bits = rt, bits
        self.net = rt.portable if portable else None
        self.centres = buckets(bits)[1]
        self.d = rt.latent_dim
        self.pixels = int(np.prod(rt.image_shape))
        self.eight_bit = rt.likelihood in EIGHT_BIT
        self.context = rt.likelihood == "logistic-ar"

    def _values(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """The decoder's (mean, log_scale) at the buckets' centres, [pixels, n] each; with
        context=True the raw outputs [n, ...] (mean, log_scale and the neighbours' weights)."""
        z = self.centres[idx].reshape(len(idx), *self.rt.latent_shape)
        out = decoder_values(self.rt, z, self.net)
        if self.context:
            return out
        mean, log_scale = out
        return mean.reshape(len(idx), -1).T.copy(), log_scale.reshape(len(idx), -1).T.copy()

    def _push_values(self, m: Message, x: np.ndarray, idx: np.ndarray) -> None:
        v = np.rint(x.reshape(len(x), -1).T * 255).astype(np.int64)  # [pixels, n]
        if self.context:  # each value's mean follows its neighbours' values: popped in raster order
            probs, log_scale, weights = self._values(idx)
            vals = v.T.reshape(x.shape)
            mean = context_mean(probs, weights, vals / 255.0).reshape(len(x), -1).T
            starts, freqs = ValueCDF(mean, log_scale.reshape(len(x), -1).T).interval(v)
            for j in range(self.pixels - 1, -1, -1):
                m.push(starts[j], freqs[j], PIX8_PREC)
            return
        mean, log_scale = self._values(idx)
        starts, freqs = ValueCDF(mean, log_scale).interval(v)  # every pixel's at once
        for j in range(self.pixels):
            m.push(starts[j], freqs[j], PIX8_PREC)

    def _pop_context(self, m: Message, idx: np.ndarray) -> np.ndarray:
        """A logistic-ar model's values, popped in raster order: each value's mean from its decoded
        neighbours (the same float64 operations, in the same order, as context_mean)."""
        n = len(idx)
        probs, log_scale, weights = (np.asarray(a, np.float64) for a in self._values(idx))
        inv_s = inv_scale(log_scale)  # every value's at once: the scale does not follow the context
        c_, h, w = self.rt.image_shape
        r = np.zeros((n, c_, h, w))  # decoded value / 255 - probs, filled as the values come
        v = np.empty((n, c_, h, w), np.int64)
        lanes = np.arange(n)
        zero = np.zeros(n)
        for c in range(c_):
            for i in range(h):
                for j in range(w):
                    p = probs[:, c, i, j]
                    mean = p
                    for k, (dy, dx) in enumerate(CONTEXT):
                        inside = 0 <= i + dy < h and 0 <= j + dx < w
                        mean = mean + weights[:, k * c_ + c, i, j] * (r[:, c, i + dy, j + dx] if inside else zero)
                    row = ValueCDF(mean[:, None], None, inv_s=inv_s[:, c, i, j, None]).table()[:, 0]  # [n, 257]
                    k_ = v[:, c, i, j] = _pop_value(m, row, lanes)
                    r[:, c, i, j] = k_ / 255.0 - p
        return (v / 255.0).astype(np.float32)

    def _pop_values(self, m: Message, idx: np.ndarray) -> np.ndarray:
        if self.context:
            return self._pop_context(m, idx)
        n = len(idx)
        mean, log_scale = self._values(idx)
        v = np.empty((self.pixels, n), np.int64)
        lanes = np.arange(n)
        block = max(1, TABLE_ENTRIES // (n * 257))  # pixels whose whole CDF tables are computed at once
        for hi in range(self.pixels, 0, -block):
            lo = max(0, hi - block)
            table = ValueCDF(mean[lo:hi], log_scale[lo:hi]).table()  # [pixels, n, 257]
            for j in range(hi - 1, lo - 1, -1):
                v[j] = _pop_value(m, table[j - lo], lanes)
        return (v.T.reshape(n, *self.rt.image_shape) / 255.0).astype(np.float32)

    def _posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.net.encode(x) if self.net is not None else self.rt.encode(x)
        return mu.reshape(len(x), -1), logvar.reshape(len(x), -1)

    def _freqs(self, idx: np.ndarray) -> np.ndarray:
        z = self.centres[idx].reshape(len(idx), *self.rt.latent_shape)
        logits = (self.net.decode(z)["logits"] if self.net is not None
                  else self.rt.decode(z, logits=True)).reshape(len(idx), -1)
        return pixel_freqs(logits).T.copy()  # [pixels, n]: one contiguous row per step

    def push_chunk(self, m: Message, x: np.ndarray) -> None:
        n = len(x)
        mu, logvar = self._posterior(x)
        idx = np.empty((n, self.d), np.int64)
        for k in range(self.d):  # bits back: z from q(z|x)
            post = Posterior(mu[:, k], logvar[:, k], self.bits, POST_PREC)
            cf = m.peek(n, POST_PREC)
            idx[:, k], start, freq = post.find(cf)
            m.pop(cf, start, freq, POST_PREC)
        one = np.ones(n, np.uint64)
        if self.eight_bit:
            self._push_values(m, x, idx)
            for k in range(self.d - 1, -1, -1):
                m.push(idx[:, k].astype(np.uint64), one, self.bits)
            return
        f1 = self._freqs(idx)
        f0 = np.uint64(1 << PIX_PREC) - f1
        ones = (x.reshape(n, -1) > 0.5).T
        starts, freqs = np.where(ones, f0, 0).astype(np.uint64), np.where(ones, f1, f0)
        for j in range(self.pixels):  # x under p(x|z)
            m.push(starts[j], freqs[j], PIX_PREC)
        for k in range(self.d - 1, -1, -1):  # z under the prior: uniform on the buckets
            m.push(idx[:, k].astype(np.uint64), one, self.bits)

    def pop_chunk(self, m: Message, n: int) -> np.ndarray:
        idx = np.empty((n, self.d), np.int64)
        one = np.ones(n, np.uint64)
        for k in range(self.d):
            cf = m.peek(n, self.bits)
            idx[:, k] = cf.astype(np.int64)
            m.pop(cf, cf, one, self.bits)
        x = self._pop_values(m, idx) if self.eight_bit else self._pop_bits(m, idx)
        mu, logvar = self._posterior(x)
        for k in range(self.d - 1, -1, -1):
            post = Posterior(mu[:, k], logvar[:, k], self.bits, POST_PREC)
            start, freq = post.interval(idx[:, k])
            m.push(start, freq, POST_PREC)
        return x


    def _pop_bits(self, m: Message, idx: np.ndarray) -> np.ndarray:
        n = len(idx)
        f1 = self._freqs(idx)
        f0 = np.uint64(1 << PIX_PREC) - f1
        bits = np.empty((self.pixels, n), np.bool_)
        for j in range(self.pixels - 1, -1, -1):
            cf = m.peek(n, PIX_PREC)
            ones = cf >= f0[j]
            bits[j] = ones
            m.pop(cf, np.where(ones, f0[j], 0).astype(np.uint64), np.where(ones, f1[j], f0[j]), PIX_PREC)
        return bits.T.reshape(n, *self.rt.image_shape).astype(np.float32)


def _pop_value(m: Message, row: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """Pop one 8-bit value per lane under its CDF table row [n, 257]: the values [n]."""
    cf = m.peek(len(lanes), PIX8_PREC)
    k = (row <= cf[:, None]).sum(1) - 1
    start = row[lanes, k]
    m.pop(cf, start, row[lanes, k + 1] - start, PIX8_PREC)
    return k


def decoder_values(rt, z: np.ndarray, net=None) -> tuple[np.ndarray, ...]:
    """A logistic decoder's (mean, log_scale) of latents z, its raw float32 outputs (or the
    portable network's float64 ones); a logistic-ar decoder's (mean, log_scale, context)."""
    names = ["probs", "log_scale"] + (["context"] if rt.likelihood == "logistic-ar" else [])
    if net is not None:
        out = net.decode(z)
        return tuple(out[k] for k in names)
    return tuple(rt._dec_run.plain(names, {"z": np.ascontiguousarray(z, np.float32)}))


def check_model(rt) -> None:
    if rt.likelihood not in ("bernoulli", *EIGHT_BIT):
        raise VaeEdgeError(f"compression codes binary images (a Bernoulli decoder) or 8-bit ones (a logistic "
                           f"decoder: train --likelihood logistic-ar or logistic); this model's likelihood is "
                           f"{rt.likelihood}")
    if rt.conditional:
        raise VaeEdgeError("compression takes an unconditional model (a conditional one would need each image's "
                           "digit stored too): use --bundle conv-mnist or mlp-mnist")


def check_8bit(x: np.ndarray) -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1] on the 1/255 grid -> exactly k/255; else one clear refusal."""
    if len(x) == 0:
        raise VaeEdgeError("no images given (batch of 0): nothing to compress")
    v = np.asarray(x, np.float64) * 255
    k = np.rint(v)
    if np.max(np.abs(v - k)) > 1e-3:
        raise VaeEdgeError("compress takes 8-bit images (uint8, or floats k/255) and these have values between "
                           "the 256 levels")
    return (k / 255).astype(np.float32)


def check_binary(x: np.ndarray) -> np.ndarray:
    """float32 [N, C, H, W] -> the same, if every pixel is 0 or 1; else one clear refusal."""
    if len(x) == 0:
        raise VaeEdgeError("no images given (batch of 0): nothing to compress")
    if not np.all((x == 0) | (x == 1)):
        raise VaeEdgeError("compress takes binary images (every pixel 0 or 1) and these have grey levels: binarize "
                           "them first, or pass --binarize threshold|stochastic")
    return x


# -- what both ends must agree on ---------------------------------------------------------------
def fingerprint(rt, bits: int = LATENT_BITS, net=None) -> bytes:
    """8 bytes of sha256 over the graphs' raw float outputs on a fixed probe (8 latents at
    bucket centres decoded, the images they give encoded): equal on two devices when they compute
    the graphs the same way, which the coder needs bit for bit. With the portable network, its
    float64 outputs (the same on every device)."""
    k = 1 << bits
    idx = (np.arange(8)[:, None] * 37 + np.arange(rt.latent_dim)[None] * 11) % k
    z = buckets(bits)[1][idx].reshape(8, *rt.latent_shape)
    encode = net.encode if net is not None else rt.encode
    if rt.likelihood in EIGHT_BIT:
        values = decoder_values(rt, z, net)
        mu, logvar = encode((np.rint(values[0] * 255) / 255).astype(np.float32))
        outs = (*values, mu, logvar)
    else:
        logits = net.decode(z)["logits"] if net is not None else rt.decode(z, logits=True)
        mu, logvar = encode((logits > 0).astype(np.float32))
        outs = (logits, mu, logvar)
    h = hashlib.sha256()
    for a in outs:
        h.update(np.ascontiguousarray(a, np.float64 if net is not None else np.float32).tobytes())
    return h.digest()[:8]


def graphs_digest(rt, portable: bool = False) -> bytes:
    info = rt.info
    if portable:  # the integer network's file
        name = rt.manifest["portable"]["file"]
        return hashlib.sha256(f"portable:{info.files[name].sha256}".encode()).digest()[:16]
    files = info.variant(rt.variant).files
    text = "|".join(f"{g}:{info.files[files[g]].sha256}" for g in sorted(files))
    return hashlib.sha256(text.encode()).digest()[:16]


def manifest_digest(rt) -> bytes:
    return hashlib.sha256((rt.bundle / "manifest.json").read_bytes()).digest()


def data_digest(x: np.ndarray, eight_bit: bool = False) -> bytes:
    values = np.rint(x * 255).astype(np.uint8) if eight_bit else np.packbits(x.astype(np.uint8))
    return hashlib.sha256(values.tobytes() + struct.pack("<4I", *x.shape)).digest()[:16]


def device_label() -> str:
    from vae_edge.runtime.sysinfo import current_targets

    return f"{platform.machine()} {current_targets()[0]}"[:60]


# -- the file -----------------------------------------------------------------------------------
_FIXED = struct.Struct("<32s16s8sI3HHBBBBI16sI")  # sizes after the variable-length strings


def _short(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def lanes_used(n: int, lanes: int) -> int:
    """How many lanes a file of n images opens (the heads it stores)."""
    if not n or not lanes:
        return 0
    grow, full, tail = _schedule_parts(n, lanes)
    return lanes if full else max(grow + [tail])


def lanes_for(n: int) -> int:
    return min(LANES, max(1, n // IMAGES_PER_LANE))


def compress(rt, x: np.ndarray, lanes: int | None = None, layout: int = 0, portable: bool = True) -> bytes:
    """Binary images [N, C, H, W] (the bundle's shape; 8-bit ones for a logistic model) -> the
    file's bytes. `layout` records how the caller's array looked (see LAYOUTS), for giving it back
    the same way. With the bundle's portable network when it has one (files for every device),
    unless portable=False: the variant's float graphs (faster; the file then opens only where the
    graphs compute the same floats)."""
    check_model(rt)
    eight_bit = rt.likelihood in EIGHT_BIT
    x = (check_8bit if eight_bit else check_binary)(rt._images(x))
    if len(x) > MAX_IMAGES or x.size > MAX_VALUES:
        raise VaeEdgeError(f"at most {MAX_IMAGES:,} images and {MAX_VALUES:,} pixels per file: compress "
                           f"{len(x):,} images of {x[0].size:,} pixels in parts")
    portable = portable and rt.portable is not None  # integers: files for every device
    codec = Codec(rt, portable=portable)
    lanes = lanes or lanes_for(len(x))
    if not lanes_for(len(x)) <= lanes <= LANES:  # what a reader accepts: bounded work per image decoded
        raise ValueError(f"lanes must be between {lanes_for(len(x))} and {LANES} for {len(x)} images")
    used = lanes_used(len(x), lanes)
    m = Message(used)
    for a, b in _chunks(len(x), lanes):
        m.open(b - a)
        codec.push_chunk(m, x[a:b])
    words = m.stored_words()
    net = codec.net
    body = (_short(rt.info.name or "") + _short(PORTABLE if portable else rt.variant) + _short(device_label())
            + _FIXED.pack(manifest_digest(rt), graphs_digest(rt, portable), fingerprint(rt, net=net), len(x), *rt.image_shape, lanes,
                          LATENT_BITS, POST_PREC, PIX8_PREC if eight_bit else PIX_PREC, layout, m.virtual_drawn(),
                          data_digest(x, eight_bit), len(words))
            + m.head[:used].astype("<u8").tobytes() + words.astype("<u4").tobytes())
    head = MAGIC + bytes([FORMAT_VERSION])
    data = head + body + struct.pack("<I", zlib.crc32(head + body))
    if 8 * len(data) < MIN_BITS_PER_IMAGE * len(x):  # what a reader refuses (a bomb's signature)
        raise VaeEdgeError(f"{len(x):,} images coded in {len(data):,} bytes, under {MIN_BITS_PER_IMAGE} bit each: "
                           "no vae-edge would open that file; store such images with a classical codec")
    return data


def compress_best(rt, x: np.ndarray, layout: int = 0, classical: tuple[str, ...] = ("png", "webp"),
                  portable: bool = True) -> tuple[bytes, dict]:
    """The smaller of the VAE file and a classical one (PNG, or WebP lossless) of the same images:
    (the file's bytes, a report: what was chosen, and each candidate's bits per value, the
    classical ones measured on the same images; WebP of more than FULL_WEBP_IMAGES images is first
    measured on that many and coded whole only if it could win)."""
    from vae_edge.runtime import classic

    eight_bit = rt.likelihood in EIGHT_BIT
    data = compress(rt, x, layout=layout, portable=portable)
    x = rt._images(x)
    values = np.rint(np.asarray(x, np.float64) * (255 if eight_bit else 1)).astype(np.uint8)
    digest = data_digest(x, eight_bit)
    rates = {"vae-edge": 8 * len(data) / x.size}
    best, best_codec = data, "vae-edge"
    codecs = [c for c in classical if c != "webp" or classic.webp_available()]
    for codec in codecs:
        n = len(values)
        if codec == "webp" and n > classic.FULL_WEBP_IMAGES:  # slow: a sample first
            k = classic.FULL_WEBP_IMAGES
            sample = sum(len(c) + 2 for c in classic.encode(values[:k], codec, not eight_bit))
            estimate = 8 * sample * n / k / x.size
            rates[codec + " (est.)"] = estimate
            if estimate * x.size / 8 >= 0.98 * len(best):
                continue
        coded = classic.encode(values, codec, not eight_bit)
        file = classic.pack(codec, coded, layout, tuple(rt.image_shape), n, not eight_bit, digest)
        rates.pop(codec + " (est.)", None)
        rates[codec] = 8 * len(file) / x.size
        if len(file) < len(best):
            best, best_codec = file, codec
    return best, {"chosen": best_codec, "bits_per_value": rates, "bytes": len(best)}


def decompress_classic(data: bytes, where: object = "file") -> tuple[dict, np.ndarray]:
    """A classical file (compress_best chose PNG or WebP) -> (its header, the images [N, C, H, W]
    float32), checked against the data digest it carries; no model needed."""
    from vae_edge.runtime import classic

    h, x = classic.read(data, where)
    if data_digest(x, not h["binary"])[:classic.DIGEST] != h["data"]:
        raise CompressError(f"{where} decoded to other images than it was made from (its data checksum differs)")
    return h, x


# How the caller's array looked: the dtype and value of a 1, and whether it had no channel axis.
LAYOUTS = {0: ("float32", 1), 1: ("uint8", 1), 2: ("uint8", 255), 3: ("bool", 1)}
NO_CHANNEL_AXIS = 4


def layout_of(a: np.ndarray, shape: tuple[int, ...], eight_bit: bool = False) -> tuple[np.ndarray, int]:
    """An array of binary images as given (float 0/1, uint8 0/1 or 0/255, bool; [N, C, H, W] or,
    for one channel, [N, H, W]) -> (float32 [N, C, H, W], layout code). 8-bit images: uint8 0-255
    or floats k/255."""
    code = 0
    if a.ndim == len(shape) and shape[0] == 1 and a.shape[1:] == tuple(shape[1:]):
        a, code = a[:, None], NO_CHANNEL_AXIS
    if a.dtype == np.bool_:
        return a.astype(np.float32), code | 3
    if a.dtype == np.uint8:
        top = 255 if eight_bit else int(a.max()) if a.size else 1
        return (a / (255.0 if top > 1 else 1.0)).astype(np.float32), code | (2 if top > 1 else 1)
    return a.astype(np.float32), code


def restore_layout(x: np.ndarray, code: int) -> np.ndarray:
    """The inverse of layout_of: float32 0/1 [N, C, H, W] -> the caller's dtype, values and axes."""
    dtype, one = LAYOUTS[code & 3]
    if dtype == "bool":
        out = x > 0.5
    else:
        out = np.rint(x * one).astype(dtype) if dtype == "uint8" else (x * one).astype(dtype)
    return out[:, 0] if code & NO_CHANNEL_AXIS else out


class Header(dict):
    """The parsed fields of a file (a dict: name, variant, device, images, shape, ...)."""


def read_header(data: bytes, where: object = "file") -> tuple[Header, np.ndarray, np.ndarray]:
    """Check a file's frame (magic, version, checksum) and parse it: (header, heads, words)."""
    if data[:4] != MAGIC:
        raise CompressError(f"{where} is not a vae-edge compressed file")
    if len(data) < 10 or data[4] != FORMAT_VERSION:
        raise CompressError(f"{where} has format version {data[4] if len(data) > 4 else '?'}; this vae-edge reads "
                            f"version {FORMAT_VERSION}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CompressError(f"{where} is damaged (its checksum does not match: truncated or changed bytes)")
    pos, strs = 5, []
    try:
        for _ in range(3):
            n = data[pos]
            strs.append(data[pos + 1: pos + 1 + n].decode())
            pos += 1 + n
        f = _FIXED.unpack_from(data, pos)
    except (IndexError, UnicodeDecodeError, struct.error):
        raise CompressError(f"{where} is damaged (its header does not parse)") from None
    pos += _FIXED.size
    if any(not s.isprintable() for s in strs):
        raise CompressError(f"{where} is damaged (its header's names hold control characters)")
    h = Header(name=strs[0], variant=strs[1], device=strs[2], manifest=f[0], graphs=f[1], fingerprint=f[2],
               images=f[3], shape=tuple(f[4:7]), lanes=f[7], latent_bits=f[8], post_prec=f[9], pix_prec=f[10],
               layout=f[11], virtual=f[12], data=f[13], words=f[14])
    # Everything the header claims is bounded by the file's own size before anything is built.
    n, values = h["images"], h["images"] * int(np.prod(h["shape"], dtype=np.int64))
    if (not n or n > MAX_IMAGES or values > MAX_VALUES or 8 * len(data) < MIN_BITS_PER_IMAGE * n
            or not lanes_for(n) <= h["lanes"] <= LANES):  # few lanes: many chunks, each costing a decoder call
        raise CompressError(f"{where} is damaged (its header claims {n:,} images of {list(h['shape'])} in "
                            f"{len(data):,} bytes and {h['lanes']} lanes: no file of ours does)")
    used = lanes_used(n, h["lanes"])
    if pos + 8 * used + 4 * h["words"] + 4 != len(data):
        raise CompressError(f"{where} is damaged (its length does not match its header)")
    heads = np.frombuffer(data, "<u8", used, pos).astype(np.uint64)
    words = np.frombuffer(data, "<u4", h["words"], pos + 8 * used).astype(np.uint32)
    return h, heads, words


def check_match(rt, h: Header, where: object = "file") -> None:
    """Refuse, in one line, a file made with another model, variant or coder setting, or on a
    device whose graphs compute other floats than this one's."""
    made = f"{h['name'] or 'an unnamed bundle'}"
    if h["shape"] != tuple(rt.image_shape):
        raise CompressError(f"{where} holds {list(h['shape'])} images made with {made}; this bundle's are "
                            f"{list(rt.image_shape)}: use the bundle it was made with")
    portable = h["variant"] == PORTABLE
    if portable and rt.portable is None:
        raise CompressError(f"{where} was coded by {made}'s portable network, which this bundle "
                            f"({rt.info.name or rt.bundle}) does not have: use the bundle it was made with")
    same_graphs = h["graphs"] == graphs_digest(rt, portable)
    if h["variant"] != rt.variant and not same_graphs and not portable:
        raise CompressError(f"{where} was made with variant {h['variant']} of {made}; this is {rt.variant}: "
                            f"pass --variant {h['variant']}")
    if not same_graphs:
        raise CompressError(f"{where} was made with {made} (variant {h['variant']}, manifest sha256 "
                            f"{h['manifest'].hex()[:12]}...), whose graphs differ from this bundle's "
                            f"({rt.info.name or rt.bundle}): use the bundle it was made with")
    pix = PIX8_PREC if rt.likelihood in EIGHT_BIT else PIX_PREC
    if (h["latent_bits"], h["post_prec"], h["pix_prec"]) != (LATENT_BITS, POST_PREC, pix):
        raise CompressError(f"{where} was coded with other settings than this vae-edge's: decompress it with the "
                            "version that made it")
    if h["fingerprint"] != fingerprint(rt, net=rt.portable if portable else None):
        if portable:  # cannot happen on an IEEE-754 machine: say so plainly
            raise CompressError(f"{where}: this device computes {made}'s portable network differently from "
                                f"the one that made the file ({h['device']}); please report it")
        raise CompressError(f"{where} was made on a device that computes {made}'s graphs differently from this one "
                            f"(made on {h['device']}; here {device_label()}): decompress it on that kind of device, "
                            "see docs/compression.md")


def decompress(rt, data: bytes, where: object = "file") -> np.ndarray:
    """A file's bytes -> the binary images [N, C, H, W] float32 it was made from, exactly."""
    h, heads, words = read_header(data, where)
    check_match(rt, h, where)
    codec = Codec(rt, h["latent_bits"], portable=h["variant"] == PORTABLE)
    m = Message(len(heads), words=words, heads=heads, strict=True)
    out = np.empty((h["images"], *h["shape"]), np.float32)  # bounded by read_header; pages taken as written
    try:
        for a, b, before in _chunks_reversed(h["images"], h["lanes"]):
            out[a:b] = codec.pop_chunk(m, b - a)
            m.close(before)
        m.check_start(h["virtual"])
    except (ANSError, ZeroDivisionError, FloatingPointError) as e:
        raise CompressError(f"{where} did not decode ({e}): its numbers differ from this device's") from None
    if data_digest(out, rt.likelihood in EIGHT_BIT) != h["data"]:
        raise CompressError(f"{where} decoded to other images than it was made from (its data checksum differs): "
                            f"made on {h['device']}, here {device_label()}")
    return out
