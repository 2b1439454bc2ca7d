"""VAERuntime: encode, decode, sample, reconstruct, interpolate, denoise and score with the two
ONNX graphs of a bundle. numpy + onnxruntime only; sampling happens here, with a user seed."""

from __future__ import annotations

import logging
import math
import os
from importlib import resources
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime import denoise as dn
from vae_edge.runtime import providers as prov
from vae_edge.runtime import selfcheck, trust
from vae_edge.runtime.bundle import VARIANTS, Bundle, BundleError, open_bundle
from vae_edge.runtime.calls import GraphCall
from vae_edge.runtime.choice import auto_candidates
from vae_edge.runtime.denoise import noise_loglik, parse_noise  # noqa: F401  (re-exported)
from vae_edge.runtime.graphcheck import GraphError, check_io
from vae_edge.runtime.manifest import MAX_IMAGE_VALUES, Manifest
from vae_edge.runtime.mathops import (  # noqa: F401
    EIGHT_BIT,
    bce_with_logits,
    decoder_nll,
    decoder_outputs,
    gaussian_nll,
    kl_to_prior,
    log_ndtr,
    log_normal,
    logsumexp,
)
from vae_edge.runtime.tiles import tiled

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mlp-mnist"
MAX_BATCH = 100_000  # a larger n is refused (memory)
MAX_IW_SAMPLES = 100_000  # per image: K=5000 is the literature's figure; 10^5 takes minutes per image
MAX_ELBO_SAMPLES = 10_000
ELBO_SAMPLES = 16  # the -ELBO's default draws, as on the browser page
# Latents per decoder call in the IW estimate: past ~512, a conv decoder's activations fall out
# of cache and each image costs more (0.28 vs 0.25 ms at 4096 vs 512 here); the noise stream, and
# so the estimate, does not depend on it (numpy draws the same values in any chunking).
IW_BATCH = 512
_ONE_BITS = np.float32(1.0).view(np.uint32)
# A graph of any size (a diffusers VAE): a call whose estimated memory exceeds max_memory runs one
# image at a time, or in tiles. The estimate: the graph's weights, the arrays in and out, and
# PEAK_TENSORS times its largest activation (an SD decoder at 512x512 peaked at 3.8 of them
# without onnxruntime's arena, 4.9 with it: benchmarks/bench_diffusers.py).
DEFAULT_MAX_MEMORY = 2 << 30  # a phone app's share
PEAK_TENSORS = 5
# What a process holds before a call's activations: Python, numpy and onnxruntime, and the loaded
# graphs at LOAD_FACTOR times their files (onnxruntime's initializers, prepacked weights and the
# parse). Measured on SD's VAE (AMD EPYC, onnxruntime 1.32): fp32 graphs of 335 MB -> 1.22 GB
# resident after loading, int8 ones of 85 MB -> 0.28 GB; a 512x512 decode then peaked 5.1 KiB
# (fp32) and 3.1 KiB (int8) a pixel above that, against PEAK_TENSORS x 1 KiB estimated. With a
# factor of 3, fp32 decodes "within 2G" peaked at 2.12 GiB (1024x1024) and 2.10 GiB (2048x2048): 4
# covers the 3.6x measured for fp32 (3.3x for int8).
BASE_BYTES = 150 << 20
LOAD_FACTOR = 4
# Held back from max_memory for what the estimate misses (allocator slack, the per-pixel peak's
# spread): with none, fp32 1024x1024 decodes "within 2G" peaked at 2.01 GiB.
MEMORY_RESERVE = 0.05
MIN_TILE_CELLS = 8  # latent cells a side of the smallest tile (64 pixels for SD): smaller ones show seams


def shipped_bundles() -> dict[str, Path]:
    root = Path(str(resources.files("vae_edge") / "pretrained"))
    if not root.is_dir():
        return {}
    return {p.name: p / "bundle" for p in sorted(root.iterdir()) if (p / "bundle" / "manifest.json").is_file()}


def default_bundle(name: str = DEFAULT_MODEL) -> Path:
    bundles = shipped_bundles()
    if name not in bundles:
        raise VaeEdgeError(f"no shipped model {name!r} (shipped: {', '.join(bundles) or 'none'}); pass --bundle")
    return bundles[name]


def is_shipped(path: Path) -> bool:
    try:
        return any(path.resolve() == b.resolve() for b in shipped_bundles().values())
    except OSError:
        return False


def resolve_bundle(bundle: str | os.PathLike | None) -> Path:
    """None -> the shipped default; a shipped model's name -> its bundle; else a folder."""
    if bundle is None:
        return default_bundle()
    if str(bundle) in shipped_bundles() and not Path(bundle).exists():
        return default_bundle(str(bundle))
    return Path(bundle)


def _named_variant(variant: str, info: Manifest, path: Path, shipped: bool) -> str:
    """The variant asked for by name, or one line on what to do instead."""
    if variant not in VARIANTS and variant not in info.variants:
        raise VaeEdgeError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}, or auto")
    if variant not in info.variants and shipped:
        name = path.parent.name
        raise VaeEdgeError(
            f"the shipped {name} has no {variant!r} variant (it has: {', '.join(info.variants)}); shipped "
            f"bundles are read-only: copy it (cp -r {path} my-{name}) and run `vae-edge quantize my-{name} "
            f"--mode {variant.split('-')[-1] if variant.startswith('int8') else variant}` "
            "(needs pip install 'vae-edge[export]')")
    return variant


class VAERuntime:
    """The two graphs of a bundle in onnxruntime sessions, with the VAE's operations around them."""

    def __init__(self, bundle: Bundle, variant: str, sessions: dict, providers: list, threads):
        self.bundle, self.manifest, self.variant = bundle.path, bundle.manifest, variant
        self._opened = bundle  # reads further files checked against the manifest (and signature)
        self.info: Manifest = bundle.info  # the manifest, typed
        self.signature, self.signed_by = bundle.signature, bundle.key
        self.self_check_diffs: dict[str, float] | None = None
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]
        self.providers_asked = providers
        self.threads = threads
        model = self.info.model
        self.latent_dim: int = model.latent_dim
        self.latent_shape: tuple[int, ...] = model.latent_shape  # (latent_dim,) or spatial
        self.image_shape: tuple[int, int, int] = model.image_shape  # [C, H, W]
        self.likelihood, self.sigma, self.learned_sigma = model.likelihood, model.sigma, model.learned_sigma
        self._vector = len(self.latent_shape) == 1  # the decoder's fast path takes [B, latent_dim]
        self.conditional: bool = model.conditional
        # Outputs are called by name: load checked them against the manifest (graphcheck.check_io).
        self._probs, self._logits = ["probs"], ["logits"]
        self.deterministic: bool = model.deterministic  # no logvar output: encode gives logvar = -inf
        self._enc_out = ["mu"] if self.deterministic else ["mu", "logvar"]
        self._nll_outputs = decoder_outputs(self.likelihood, self.learned_sigma)
        # Inputs are checked here first, so the calls skip the Python wrapper's own checks; small
        # batches run through buffers bound once (runtime/calls.py).
        self._enc_run = GraphCall(self.encoder)
        self._dec_run = GraphCall(self.decoder)
        self.spatial: int = model.spatial_factor  # > 0: the graphs take any multiple of it
        self.max_memory: int = DEFAULT_MAX_MEMORY  # bytes a call may use before it is split (spatial graphs)
        self.tile: int | None = None  # pixels a side of the tiles, when asked for (spatial graphs)
        self._weight_bytes = BASE_BYTES + LOAD_FACTOR * sum(
            self.info.files[f].size for f in self.info.variant(variant).files.values())  # held before a call
        self._portable = None

    @property
    def portable(self):
        """The bundle's portable (integer) network (runtime/portable.py), or None if it has none:
        what the compressor runs, the same bits on every device. Its file is checked against the
        manifest's sha256 (and a verified signature) when first read."""
        entry = self.manifest.get("portable")
        if not entry:
            return None
        if self._portable is None:
            from vae_edge.runtime.portable import PortableVAE

            config = {**self.manifest["model"], "image_shape": list(self.info.model.image_shape)}  # older: 28x28
            self._portable = PortableVAE.from_bytes(config, self._opened.read(str(entry["file"])))
        return self._portable

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike | None = None,
        variant: str = "fp32",
        providers: list[str] | tuple[str, ...] | None = None,
        threads: int | None = None,
        provider_options: dict[str, str] | None = None,
        strict: bool = False,
        opt_level: str = "all",
        warn=None,
        trusted_key: str | os.PathLike | None = None,
        self_check: bool = True,
        expect: str | None = None,
    ) -> VAERuntime:
        """Load a bundle (None: the shipped default). The graph files it needs are read once,
        checked against their sha256 in the manifest, and those same bytes go to onnxruntime.

        variant: fp32 | int8-dynamic | int8-static | fp16 | int8-mixed | auto (what `vae-edge tune`
        chose and recorded in the manifest; fp32 when nothing was tuned).
        trusted_key: a PEM public key; the bundle must then carry a valid signature by it (also
        set by $VAE_EDGE_TRUSTED_KEY; shipped bundles are checked against the project key
        whenever model-signing is installed).
        self_check: run the variant's golden vectors first and refuse it if this device computes
        other numbers (with variant="auto": fall back to the next variant that passes, and say so).
        expect: NAME or NAME@RELEASE: refuse any bundle but that model at that release or newer
        (needs a verified signature; a signed older release is a rollback).
        """
        warn = warn or logger.warning
        path = resolve_bundle(bundle)
        shipped = is_shipped(path)
        key, label = trust.resolve_key(trusted_key, shipped=shipped)
        # A shipped bundle is as trusted as the package it came in: no note when it goes unchecked.
        opened = open_bundle(path, key, warn=None if shipped else warn, key_label=label, expect=expect)
        auto = variant == "auto"
        if auto:
            candidates, providers, threads = auto_candidates(opened.info, providers, threads, warn, path)
        else:
            candidates = [_named_variant(variant, opened.info, path, shipped)]
        plist = prov.resolve(providers, provider_options, strict=strict, warn=warn)
        so = prov.session_options(threads, opt_level)
        if opened.info.model.spatial_factor:
            # graphs of any size: no arena, which grows in powers of two and keeps what it took, so a
            # call's memory is its own (SD's decoder, 2048x2048 in 576-pixel tiles: 4.6 GB with it)
            so.enable_cpu_mem_arena = False
        failures = []
        for v in candidates:
            try:
                rt = cls._open_variant(opened, v, plist, so, strict, warn, list(providers or ["cpu"]), threads)
                if self_check:
                    rt.self_check_diffs = rt.self_check()
            except (selfcheck.SelfCheckFailed, BundleError, GraphError) as e:
                if not auto:
                    raise
                failures.append(str(e))
                continue
            if failures:
                warn(f"note: --variant auto: {'; '.join(failures)}; using {v}, which passes")
            return rt
        raise VaeEdgeError("no variant of this bundle can run correctly here: " + "; ".join(failures))

    @classmethod
    def _open_variant(cls, opened, v: str, plist, so, strict: bool, warn, providers: list[str], threads) -> VAERuntime:
        """Sessions on the verified bytes of variant v's graphs, their inputs and outputs checked
        against the manifest."""
        info, path = opened.info, opened.path
        graphs = opened.variant_bytes(v)  # first: a clear error for a variant the bundle lacks
        files = info.variant(v).files
        sessions = {g: prov.make_session(data, plist, so, strict, warn, name=str(path / files[g]))
                    for g, data in graphs.items()}
        for g, sess in sessions.items():
            check_io(sess, info.graphs.get(g), path / files[g], g, info.model.likelihood, info.model.deterministic)
        return cls(opened, v, sessions, providers, threads)

    def self_check(self) -> dict[str, float] | None:
        """Run the variant's golden vectors (one small batch per graph); raise SelfCheckFailed if
        this device computes other numbers than where the variant was made. None: none recorded."""
        golden = self.info.variant(self.variant).golden
        if not golden:
            return None

        def run(graph: str, feeds: dict) -> np.ndarray:
            if graph == "encoder":
                return self._enc_run.plain(["mu"], feeds)[0]
            return self._dec_run.plain(["probs"], feeds)[0]
        ref = selfcheck.reference_outputs(self.info.raw["variants"], self.variant)
        return selfcheck.check(self.variant, golden, run, ref)

    def close(self) -> None:
        """Release the onnxruntime sessions (also on leaving a `with` block)."""
        self.encoder = self.decoder = None
        self._enc_run = self._dec_run = _closed

    def __enter__(self) -> VAERuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def providers_used(self) -> list[str]:
        return self.decoder.get_providers()

    # -- checks ----------------------------------------------------------------------------
    def _images(self, x) -> np.ndarray:
        # The fast path: one reduction instead of min and max. As unsigned integers, the float32s
        # in [+0, 1] are exactly those up to 1.0's bit pattern (negatives, -0.0 included, NaN and
        # inf lie above it; -0.0 then passes the exact check below).
        shape = self.image_shape
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == shape
                and x.shape[0] and x.flags.c_contiguous and x.view(np.uint32).max() <= _ONE_BITS):
            return x
        x = np.asarray(x, dtype=np.float32)
        if self.spatial:  # any size: the model's channels, sides multiples of its factor
            shape = self._spatial_shape(x, shape, "images", self.spatial)
        if shape[0] == 1 and x.ndim == 2 and x.shape == shape[1:]:
            x = x[None, None]
        elif (shape[0] == 1 and x.ndim == 3 and x.shape[1:] == shape[1:]) or (x.ndim == 3 and x.shape == shape):
            x = x[:, None] if shape[0] == 1 and x.shape != shape else x[None]
        if x.ndim != 4 or x.shape[1:] != shape:
            raise VaeEdgeError(f"images must have shape [batch, {', '.join(map(str, shape))}], got {list(x.shape)}")
        if len(x) == 0:
            raise VaeEdgeError("no images given (batch of 0)")
        if not np.all(np.isfinite(x)):
            raise VaeEdgeError("images contain NaN or inf")
        if x.min() < 0 or x.max() > 1:
            raise VaeEdgeError(f"image values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
        return np.ascontiguousarray(x)

    def _latents(self, z) -> np.ndarray:
        """[B, *latent_shape] float32; also [B, latent_dim] flattened, or one latent alone."""
        z = np.asarray(z, dtype=np.float32)
        shape = self.latent_shape
        if self.spatial:
            shape = self._spatial_shape(z, shape, "latents", 1)
        if z.shape == shape or (z.ndim == 1 and z.size == self.latent_dim):
            z = z.reshape(1, *shape)
        elif z.ndim == 2 and z.shape[1] == self.latent_dim and len(shape) > 1:
            z = z.reshape(len(z), *shape)
        if z.shape[1:] != shape:
            raise VaeEdgeError(f"latents must have shape [batch, {', '.join(map(str, shape))}], got {list(z.shape)}")
        if len(z) == 0:
            raise VaeEdgeError("no latents given (batch of 0)")
        if not np.all(np.isfinite(z)):
            raise VaeEdgeError("latents contain NaN or inf")
        return np.ascontiguousarray(z)

    def _labels(self, y, n: int) -> dict:
        if not self.conditional:
            if y is not None:
                raise VaeEdgeError("this model is not conditional: it takes no digit")
            return {}
        if y is None:
            raise VaeEdgeError("this model is conditional: give the digit (0-9) of each image")
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        if y.size == 1 and n > 1:
            y = np.full(n, int(y[0]), np.int64)
        if y.shape != (n,):
            raise VaeEdgeError(f"need {n} digit labels, got {y.size}")
        if y.min() < 0 or y.max() > 9:
            raise VaeEdgeError("digits must lie in 0-9")
        return {"y": y}

    # -- the graphs ------------------------------------------------------------------------
    def encode(self, x, y=None, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """x [B, C, H, W] in [0, 1] (the bundle's image shape) -> (mu, logvar), each [B, *latent_shape].

        copy=False: for batches of at most 16, return the runtime's own output buffers, which the
        next call with the same batch size overwrites (saves a copy per call; for loops that use
        each result before the next call)."""
        if self._larger(x, self.image_shape):  # an image larger than the graph's: in overlapping tiles
            f = self._tile_factor("image", np.shape(x))
            return tiled(lambda t: self.encode(t, y), np.asarray(x, np.float32), self.latent_shape[1:], f, 1)
        x = self._images(x)
        if self.spatial and not self.conditional:  # within max_memory: per image, or in tiles
            split = self._split("encoder", x, lambda t: self._posterior({"x": np.ascontiguousarray(t)}), self.spatial, 1)
            if split is not None:
                return split
        feeds = {"x": x} if y is None and not self.conditional else {"x": x, **self._labels(y, len(x))}
        return self._posterior(feeds, copy)

    def _posterior(self, feeds: dict, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of the encoder on checked feeds."""
        if self.deterministic:  # a point mass at mu: log-variance -inf, said, not invented
            mu = self._enc_run(self._enc_out, feeds, None, True)[0]
            return mu, np.full_like(mu, -np.inf)
        mu, logvar = self._enc_run(self._enc_out, feeds, None, copy)
        return mu, logvar

    # -- tiles: larger images and latents than the graphs' own -----------------------------
    def _spatial_shape(self, a: np.ndarray, shape: tuple[int, ...], what: str, f: int) -> tuple[int, ...]:
        """The [C, H, W] that array `a` of a graph of any size stands for (its own sides), after
        checking its channels, that its sides are multiples of f and its size is bounded."""
        if a.ndim not in (3, 4) or (a.ndim == 3 and a.shape[0] != shape[0]) or (a.ndim == 4 and a.shape[1] != shape[0]):
            raise VaeEdgeError(f"{what} must have shape [batch, {shape[0]}, height, width] for this model, "
                               f"got {list(a.shape)}")
        h, w = a.shape[-2:]
        if h < f or w < f or h % f or w % f:
            raise VaeEdgeError(f"{what} of {h}x{w}: this model takes sides that are multiples of {f} (pad or crop them)")
        if shape[0] * h * w > MAX_IMAGE_VALUES:
            raise VaeEdgeError(f"{what} of {h}x{w} are over the {MAX_IMAGE_VALUES:,} values one image may hold")
        decoded = self.image_shape[0] * h * w * self.spatial ** 2
        if what == "latents" and decoded > MAX_IMAGE_VALUES:  # the same bound as the images they decode to
            raise VaeEdgeError(f"latents of {h}x{w} would give images of {h * self.spatial}x{w * self.spatial} "
                               f"({decoded:,} values), over the {MAX_IMAGE_VALUES:,} of one image")
        return (shape[0], h, w)

    def _plan(self, graph: str, n: int, cells: tuple[int, int]) -> tuple[int, int] | None:
        """For a graph of any size: None to run the batch as it is, (0, 0) one image at a time, or
        the tile (in latent cells a side) that fits max_memory, or the --tile asked for."""
        f = self.spatial
        if self.tile:
            if self.tile % f:
                raise VaeEdgeError(f"--tile {self.tile}: tiles must be a multiple of {f} pixels for this model")
            t = self.tile // f
            return None if t >= max(cells) else (min(t, cells[0]), min(t, cells[1]))
        per_pixel = PEAK_TENSORS * int(self.info.model.activation_bytes_per_pixel.get(graph, 0))
        if not per_pixel:
            return None
        pixels = cells[0] * cells[1] * f * f
        io = n * pixels * 4 * (self.image_shape[0] + self.latent_shape[0] / f / f)
        budget = (1 - MEMORY_RESERVE) * self.max_memory - self._weight_bytes - 2 * io  # for the activations
        if n * pixels * per_pixel <= budget:
            return None
        if pixels * per_pixel <= budget:
            return (0, 0)
        t = max(cells)
        while t > MIN_TILE_CELLS and (min(t, cells[0]) * min(t, cells[1]) * f * f * per_pixel) > budget:
            t -= 1
        need = self._weight_bytes + 2 * io + MIN_TILE_CELLS ** 2 * f * f * per_pixel
        if t <= MIN_TILE_CELLS and need > self.max_memory:
            raise VaeEdgeError(f"{n} image(s) of {cells[0] * f}x{cells[1] * f} need about {_mib(need)} even in the "
                               f"smallest tiles ({MIN_TILE_CELLS * f} pixels): raise --max-memory (now "
                               f"{_mib(self.max_memory)})")
        return (min(t, cells[0]), min(t, cells[1]))

    def _split(self, graph: str, a: np.ndarray, run, f_in: int, f_out: int):
        """run(a) as planned for a graph of any size: whole, one image at a time, or in tiles."""
        cells = (a.shape[2] // f_in, a.shape[3] // f_in)
        plan = self._plan(graph, len(a), cells)
        if plan is None:
            return None
        if plan == (0, 0):
            outs = [run(a[i:i + 1]) for i in range(len(a))]
            return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))
        return tiled(run, a, plan, f_in, f_out)

    def _larger(self, a, shape: tuple[int, ...]) -> bool:
        """a is a batch of spatial arrays with shape's channels and more rows or columns than it."""
        s = np.shape(a)
        return (not self.spatial and len(self.latent_shape) == 3 and len(s) == 4 and s[1] == shape[0] and s[2:] != tuple(shape[1:])
                and s[2] >= shape[1] and s[3] >= shape[2])

    def _tile_factor(self, what: str, s: tuple[int, ...]) -> int:
        """Pixels per latent cell, when the graphs tile (spatial latents, the same factor both ways)."""
        (_, h_img, w_img), (_, h, w) = self.image_shape, self.latent_shape
        if h_img % h or w_img % w or h_img // h != w_img // w:
            raise VaeEdgeError(f"{what}s of {list(s[1:])} are larger than this bundle's graphs take, and its "
                               "latents are not a fixed scale of its images: they cannot be tiled")
        f = h_img // h
        per = s[2] * s[3] * (s[1] if what == "image" else self.image_shape[0] * f * f)
        if per > MAX_IMAGE_VALUES:
            raise VaeEdgeError(f"{what}s of {list(s[1:])} would give images of {per:,} values, over the "
                               f"{MAX_IMAGE_VALUES:,} of one image")
        if what == "image" and (s[2] % f or s[3] % f):
            raise VaeEdgeError(f"images of {s[2]}x{s[3]}: sides must be multiples of {f} for this model")
        return f

    def to_raw(self, z: np.ndarray, logvar: np.ndarray | None = None):
        """The model's latents (a diffusers VAE's: the diffusion model's, scaled) -> the raw ones
        its decoder network takes: z / scaling_factor + shift_factor (identity for other models);
        with logvar, (z, logvar) both."""
        m = self.info.model
        raw = (np.asarray(z, np.float32) / np.float32(m.latent_scale) + np.float32(m.latent_shift)).astype(np.float32)
        if logvar is None:
            return raw
        return raw, (np.asarray(logvar, np.float32) - np.float32(2 * math.log(m.latent_scale))).astype(np.float32)

    def from_raw(self, z: np.ndarray) -> np.ndarray:
        """The inverse of to_raw: raw latents -> the model's ((raw - shift) * scale)."""
        m = self.info.model
        return ((np.asarray(z, np.float32) - np.float32(m.latent_shift)) * np.float32(m.latent_scale)).astype(np.float32)

    def decode(self, z, y=None, logits: bool = False, copy: bool = True) -> np.ndarray:
        """z [B, *latent_shape] -> probabilities (the Gaussian mean) [B, C, H, W], or Bernoulli logits.

        copy=False: as for encode, the runtime's own buffer at batches of at most 16."""
        if self._larger(z, self.latent_shape):  # larger latents than the graph's: in overlapping tiles
            f = self._tile_factor("latent", np.shape(z))
            return tiled(lambda t: (self.decode(t, y, logits=logits),), np.asarray(z, np.float32),
                         self.latent_shape[1:], 1, f)[0]
        # Fast path for a well-formed float32 batch: attribute checks and one dot product
        # (non-finite if any element is NaN/inf; the exact check runs only then).
        if not (type(z) is np.ndarray and z.dtype == np.float32 and z.ndim == 2 and z.shape[0]
                and z.shape[1] == self.latent_dim and self._vector and z.flags.c_contiguous
                and math.isfinite(z.ravel().dot(z.ravel()))):
            z = self._latents(z)
        if logits and self.likelihood != "bernoulli":
            raise VaeEdgeError(f"this model's likelihood is {self.likelihood}: its decoder gives a mean, not logits")
        if self.spatial and not self.conditional:  # within max_memory: per image, or in tiles
            out = self._logits if logits else self._probs
            split = self._split("decoder", z, lambda t: (self._dec_run(out, {"z": np.ascontiguousarray(t)}, None,
                                                                          True)[0],), 1, self.spatial)
            if split is not None:
                return split[0]
        feeds = {"z": z} if y is None and not self.conditional else {"z": z, **self._labels(y, len(z))}
        return self._dec_run(self._logits if logits else self._probs, feeds, None, copy)[0]

    # -- operations ------------------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None, digit: int | None = None) -> np.ndarray:
        """n new images: z ~ N(0, I) drawn with numpy, decoded."""
        if not isinstance(n, (int, np.integer)) or n <= 0 or n > MAX_BATCH:
            raise VaeEdgeError(f"n must be between 1 and {MAX_BATCH}, got {n}")
        if digit is not None and not 0 <= int(digit) <= 9:
            raise VaeEdgeError(f"digit must lie in 0-9, got {digit}")
        if digit is not None and not self.conditional:
            raise VaeEdgeError("--digit needs a conditional model; this one is not")
        z = _rng(seed).standard_normal((int(n), *self.latent_shape), dtype=np.float32)
        y = None if not self.conditional else (digit if digit is not None else np.arange(n) % 10)
        return self.decode(z, y)

    def reconstruct(self, x, y=None) -> np.ndarray:
        """Decode the posterior mean of each image."""
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def interpolate(self, a, b, steps: int = 10, method: str = "lerp", y=None) -> np.ndarray:
        """Decode `steps` latents on the path from the code of image a to that of image b."""
        if steps < 2 or steps > 1000:
            raise VaeEdgeError(f"steps must be between 2 and 1000, got {steps}")
        if method not in ("lerp", "slerp"):
            raise VaeEdgeError(f"unknown interpolation {method!r}: lerp or slerp")
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        shape = self.image_shape
        if self.spatial:  # any size, the same for both
            a, b = (v[0] if v.ndim == 4 and len(v) == 1 else v for v in (a, b))
            if a.shape != b.shape:
                raise VaeEdgeError(f"the two images differ in size ({list(a.shape)} and {list(b.shape)})")
            shape = a.shape
        za, _ = self.encode(a.reshape(1, *shape), None if y is None else y[:1])
        zb, _ = self.encode(b.reshape(1, *shape), None if y is None else y[1:2])
        t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
        a_, b_ = za[0].reshape(-1), zb[0].reshape(-1)  # spatial latents: along the flattened vector
        z = lerp(a_, b_, t) if method == "lerp" else slerp(a_, b_, t)
        yy = None if y is None else np.where(t[:, 0] < 0.5, y[0], y[1])
        return self.decode(z.astype(np.float32).reshape(steps, *za.shape[1:]), yy)

    def denoise(self, x, noise: str | None = None, mask=None, samples: int = 512, rounds: int = 2,
                seed: int = 0, y=None, info: dict | None = None) -> np.ndarray:
        """Restore corrupted images: the posterior mean of the clean image given the corrupted one,
        E[E[x | y, z] | y], where the corruption's own likelihood is exact (`noise`: gaussian:SIGMA,
        clipped to [0, 1] as `corrupt` does; saltpepper:FRACTION; or a `mask` of known pixels,
        1 = known, for inpainting, where known pixels follow the model's Bernoulli likelihood and
        are kept). Estimated by sequential Monte Carlo (runtime/denoise.py): `samples` particles,
        `rounds` Metropolis moves per temperature. `info`, if given, receives the diagnostics: the
        effective sample size of the final weights per image, the number of temperatures, and
        the Metropolis acceptance rate."""
        if self.likelihood != "bernoulli":
            raise VaeEdgeError("denoising needs a model with a Bernoulli likelihood (its noise models are "
                               f"made for binary-ish images); this one's is {self.likelihood}")
        x = self._images(x)
        labels = self._labels(y, len(x)).get("y")
        n, pixels = len(x), int(np.prod(x.shape[1:]))
        # the particles' logits, their proposals and the blends of both (float32), latents
        check_memory(n * samples * (pixels * 16 + self.latent_dim * 64) + samples * pixels * 24,
                     f"denoising {n} image(s) with {samples:,} particles", "use fewer --samples or fewer images per call")

        def decode_logits(z, lab):
            return self.decode(z, lab, logits=True)

        def encode(start, lab):
            return self.encode(start, lab)

        rng = _rng(seed)
        if mask is not None:
            mask = np.broadcast_to(np.asarray(mask, np.float32), x.shape).astype(np.float32)
            est = dn.posterior_mean(decode_logits, encode, x, dn.masked_loglik(mask), None, labels, samples, rounds,
                                    rng, x * mask, self.latent_dim, info)
            return np.where(mask > 0, x, est).astype(np.float32)
        model = dn.noise_model(noise or "gaussian:0.2", self.info.dataset)
        return dn.posterior_mean(decode_logits, encode, x, model.loglik, model.clean_mean, labels, samples, rounds,
                                 rng, x, self.latent_dim, info)

    def complexity_score(self, x, y=None, iw_samples: int = 0, seed: int = 0,
                         elbo_samples: int = ELBO_SAMPLES) -> np.ndarray:
        """Anomaly score corrected for input complexity (Serra et al. 2020): -log p(x) of the
        binarized image minus its compressed length, both in nats. Likelihood alone rates simple
        inputs (blank pages, a lone stroke) as the most normal of all; this score does not."""
        if self.likelihood != "bernoulli":
            raise VaeEdgeError("the complexity correction scores binarized images: it needs a model with a "
                               f"Bernoulli likelihood; this one's is {self.likelihood} (use score)")
        xb = (self._images(x) > 0.5).astype(np.float32)
        return self.score(xb, y, iw_samples=iw_samples, seed=seed, elbo_samples=elbo_samples) - compressed_nats(xb)

    def _nll(self, z: np.ndarray, x: np.ndarray, labels: dict) -> np.ndarray:
        """-log p(x | z) per image in nats, the model's own likelihood: Bernoulli on the decoder's
        logits, or Gaussian around its mean with the bundle's sigma (or the decoder's log_sigma)."""
        out = self._dec_run.plain(self._nll_outputs, {"z": z, **labels})
        if self.likelihood in EIGHT_BIT:  # the probability of 8-bit values: x on their grid
            x = np.round(np.asarray(x, np.float64) * 255) / 255
        return decoder_nll(dict(zip(self._nll_outputs, out, strict=True)), x, self.likelihood, self.sigma)

    def bits_per_dim_8bit(self, nats: np.ndarray) -> np.ndarray:
        """Scores of a Gaussian model (nats of the density of images in [0, 1]) as the literature
        reports 8-bit images: bits per dimension of the data in [0, 256), i.e. (nats + D ln 256) / (D ln 2)."""
        d = int(np.prod(self.image_shape))
        if self.likelihood in EIGHT_BIT:  # already the probability of the 8-bit values
            return np.asarray(nats, np.float64) / (d * math.log(2))
        return (np.asarray(nats, np.float64) + d * math.log(256)) / (d * math.log(2))

    def compress(self, x, portable: bool = True) -> bytes:
        """Binary images [N, C, H, W] (every pixel 0 or 1; 8-bit ones for a logistic model) -> a
        lossless file's bytes: bits-back coding with this model (runtime/compress.py); about the
        -ELBO in bits per image. With the bundle's portable network when it has one (files that
        open on every device), unless portable=False (the float graphs: faster, same device only)."""
        from vae_edge.runtime import compress

        return compress.compress(self, x, portable=portable)

    def decompress(self, data: bytes, where: object = "file") -> np.ndarray:
        """A file from compress -> exactly the images it was given (float32 0/1); refuses, in one
        line, a file made with another model, variant or device numerics, or a damaged one."""
        from vae_edge.runtime import compress

        return compress.decompress(self, data, where)

    def score(self, x, y=None, iw_samples: int = 0, seed: int = 0, elbo_samples: int = ELBO_SAMPLES) -> np.ndarray:
        """Anomaly score per image in nats: -ELBO (the mean over elbo_samples draws), or with
        iw_samples=K the importance-weighted estimate of -log p(x). Higher means more unusual.

        One image gets one score, whatever else is in the batch: the -ELBO uses the same
        elbo_samples standard-normal draws for every image (those of numpy's default_rng(seed),
        which the browser page uses too), and the IW estimate draws each image's noise from a
        stream seeded by the seed and the image itself."""
        if self.deterministic:
            raise VaeEdgeError("this model's encoder is deterministic (no posterior variance, as TAESD's): it has "
                               "no ELBO to score images with; use a VAE with a Gaussian posterior (AutoencoderKL)")
        if not 0 <= iw_samples <= MAX_IW_SAMPLES:
            raise VaeEdgeError(f"iw samples must lie between 0 and {MAX_IW_SAMPLES:,}, got {iw_samples}")
        if not 1 <= elbo_samples <= MAX_ELBO_SAMPLES:
            raise VaeEdgeError(f"elbo samples must lie between 1 and {MAX_ELBO_SAMPLES:,}, got {elbo_samples}")
        x = self._images(x)
        extra = self._labels(y, len(x))
        rng = _rng(seed)
        mu, logvar = self._enc_run.plain(self._enc_out, {"x": x, **extra})
        n, shape = len(x), self.latent_shape
        mu, logvar = mu.reshape(n, -1), logvar.reshape(n, -1)  # the math on flat latents
        std = np.exp(0.5 * logvar)
        if iw_samples == 0:
            total = np.zeros(len(x))
            for eps in rng.standard_normal((elbo_samples, self.latent_dim), dtype=np.float32):
                z = (mu + std * eps).astype(np.float32)
                total += self._nll(z.reshape(n, *shape), x, extra) + kl_to_prior(mu, logvar)
            return total / elbo_samples
        out = np.empty(len(x))
        for i in range(len(x)):
            xi, logw = x[i : i + 1], []
            rng = image_rng(seed, xi)
            for j in range(0, iw_samples, IW_BATCH):
                k = min(IW_BATCH, iw_samples - j)
                eps = rng.standard_normal((k, self.latent_dim), dtype=np.float32)
                z = (mu[i] + std[i] * eps).astype(np.float32)
                labels = {name: np.full(k, v[i]) for name, v in extra.items()}
                logw.append(-self._nll(z.reshape(k, *shape), xi, labels) + log_normal(z) - log_normal(z, mu[i], logvar[i]))
            logw = np.concatenate(logw)
            out[i] = -(logsumexp(logw) - np.log(iw_samples))
        return out


def image_rng(seed: int, x: np.ndarray) -> np.random.Generator:
    """A noise stream of its own for one image: seeded by the seed and the image's bytes."""
    import hashlib

    _rng(seed)
    words = np.frombuffer(hashlib.blake2b(np.ascontiguousarray(x, np.float32).tobytes(), digest_size=16).digest(),
                          np.uint32)
    return np.random.default_rng([int(seed), *map(int, words)])


def _rng(seed) -> np.random.Generator:
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
        raise VaeEdgeError(f"seed must be a whole number >= 0, got {seed!r}")
    return np.random.default_rng(seed)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse work whose arrays would not fit in the memory this machine has free (80% of it)."""
    have = available_memory()
    if have and nbytes > 0.8 * have:
        raise VaeEdgeError(f"{what} needs about {nbytes / 2**30:.1f} GiB, and this machine has "
                           f"{have / 2**30:.1f} GiB free: {fix}")


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (1 - t) * a + t * b


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation of latents a, b [D] at t [T, 1] -> [T, D]. Falls back to lerp when
    either latent is ~0 or both point the same way; for opposite latents, where the great circle
    is not unique, it goes through a fixed direction orthogonal to a."""
    a64, b64, t64 = a.astype(np.float64), b.astype(np.float64), t.astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na < 1e-8 or nb < 1e-8:
        return lerp(a64, b64, t64)
    u, w = a64 / na, b64 / nb
    cos = float(np.clip(u @ w, -1.0, 1.0))
    omega = math.acos(cos)
    if omega < 1e-6:
        return lerp(a64, b64, t64)
    if math.pi - omega < 1e-4:  # opposite: sin(omega) ~ 0
        e = np.zeros_like(u)
        e[np.argmin(np.abs(u))] = 1.0
        v = e - (e @ u) * u
        v /= np.linalg.norm(v)
        direction = np.cos(np.pi * t64) * u + np.sin(np.pi * t64) * v
        return ((1 - t64) * na + t64 * nb) * direction
    return (np.sin((1 - t64) * omega) * a64 + np.sin(t64 * omega) * b64) / math.sin(omega)


def _closed(*args, **kwargs):
    raise VaeEdgeError("this runtime was closed: load the bundle again")


def compressed_nats(x: np.ndarray) -> np.ndarray:
    """Per image: the length of its binarized pixels (threshold 0.5) compressed by zlib, in nats:
    a generic estimate of the image's complexity (Serra et al., ICLR 2020)."""
    import zlib

    bits = np.asarray(x).reshape(len(x), -1) > 0.5
    return np.array([len(zlib.compress(np.packbits(b).tobytes(), 9)) for b in bits], np.float64) * 8 * math.log(2)


def corrupt(x: np.ndarray, spec: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply a corruption (gaussian:SIGMA, saltpepper:FRACTION, mask:rect|top|bottom|left|right);
    returns (corrupted images, mask of known pixels or None)."""
    return dn.corrupt(x, spec, _rng(seed))
