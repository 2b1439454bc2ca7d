"""VAERuntime: encode, decode, sample, reconstruct, interpolate, denoise and score with the two
ONNX graphs of a bundle. numpy + onnxruntime only; sampling happens here, with a user seed."""

from __future__ import annotations

import math
import os
import re
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime import providers as prov
from vae_edge.runtime import trust
from vae_edge.runtime.bundle import VARIANTS, Bundle, open_bundle, tuning
from vae_edge.runtime.mathops import bce_with_logits, kl_to_prior, log_normal, logsumexp

DEFAULT_MODEL = "mlp-mnist"
MAX_BATCH = 100_000  # a larger n is refused (memory)


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


def _is_shipped(path: Path) -> bool:
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


class VAERuntime:
    """The two graphs of a bundle in onnxruntime sessions, with the VAE's operations around them."""

    def __init__(self, bundle: Bundle, variant: str, sessions: dict, providers: list, threads):
        self.bundle, self.manifest, self.variant = bundle.path, bundle.manifest, variant
        self.signature, self.signed_by = bundle.signature, bundle.key
        manifest = bundle.manifest
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]
        self.providers_asked = providers
        self.threads = threads
        cfg = manifest["model"]
        self.latent_dim: int = int(cfg["latent_dim"])
        self.conditional: bool = bool(cfg["conditional"])
        self._dec_out = [o.name for o in self.decoder.get_outputs()]
        self._probs, self._logits = [self._dec_out[1]], [self._dec_out[0]]
        self._enc_out = [o.name for o in self.encoder.get_outputs()]
        # The sessions' C++ run: inputs are checked here first, so the Python wrapper's own
        # name validation is skipped (public run() where the attribute is absent).
        self._enc_run = _fast_run(self.encoder)
        self._dec_run = _fast_run(self.decoder)

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
        warn=lambda s: print(s, file=sys.stderr),
        trusted_key: str | os.PathLike | None = None,
    ) -> VAERuntime:
        """Load a bundle (None: the shipped default). The graph files it needs are read once,
        checked against their sha256 in the manifest, and those same bytes go to onnxruntime.

        variant: fp32 | int8-dynamic | int8-static | fp16 | int8-mixed | auto (what `vae-edge tune`
        chose and recorded in the manifest; fp32 when nothing was tuned).
        trusted_key: a PEM public key; the bundle must then carry a valid signature by it (also
        set by $VAE_EDGE_TRUSTED_KEY; shipped bundles are checked against the project key
        whenever model-signing is installed).
        """
        path = resolve_bundle(bundle)
        key, label = trust.resolve_key(trusted_key, shipped=_is_shipped(path))
        opened = open_bundle(path, key, warn=warn, key_label=label)
        manifest = opened.manifest
        if variant == "auto":
            choice = tuning(manifest).get("choice") or {}
            variant = choice.get("variant", "fp32")
            if not choice:
                warn(f"note: --variant auto: {path.name if path.name != 'bundle' else path.parent.name} was "
                     "never tuned, so fp32 is used (run `vae-edge tune` to choose by speed and accuracy)")
            if providers is None and choice.get("provider") in prov.available():
                providers = [choice["provider"]]
            if threads is None and choice.get("threads"):
                threads = int(choice["threads"])
        elif variant not in VARIANTS and variant not in manifest.get("variants", {}):
            raise VaeEdgeError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}, or auto")
        graphs = opened.variant_bytes(variant)
        files = manifest["variants"][variant]["files"]
        plist = prov.resolve(providers, provider_options)
        so = prov.session_options(threads, opt_level)
        sessions = {g: prov.make_session(data, plist, so, strict, warn, name=str(path / files[g]))
                    for g, data in graphs.items()}
        return cls(opened, variant, sessions, list(providers or ["cpu"]), threads)

    @property
    def providers_used(self) -> list[str]:
        return self.decoder.get_providers()

    # -- checks ----------------------------------------------------------------------------
    def _images(self, x) -> np.ndarray:
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 28, 28)
                and x.shape[0] and x.flags.c_contiguous):
            lo, hi = x.min(), x.max()  # NaN propagates into both
            if lo >= 0.0 and hi <= 1.0:
                return x
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2 and x.shape == (28, 28):
            x = x[None, None]
        elif x.ndim == 3 and x.shape[1:] == (28, 28):
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise VaeEdgeError(f"images must have shape [batch, 1, 28, 28], got {list(x.shape)}")
        if len(x) == 0:
            raise VaeEdgeError("no images given (batch of 0)")
        if not np.all(np.isfinite(x)):
            raise VaeEdgeError("images contain NaN or inf")
        if x.min() < 0 or x.max() > 1:
            raise VaeEdgeError(f"image values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
        return np.ascontiguousarray(x)

    def _latents(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise VaeEdgeError(f"latents must have shape [batch, {self.latent_dim}], got {list(z.shape)}")
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
    def encode(self, x, y=None) -> tuple[np.ndarray, np.ndarray]:
        """x [B, 1, 28, 28] in [0, 1] -> (mu, logvar), each [B, latent_dim]."""
        x = self._images(x)
        feeds = {"x": x} if y is None and not self.conditional else {"x": x, **self._labels(y, len(x))}
        mu, logvar = self._enc_run(self._enc_out, feeds, None)
        return mu, logvar

    def decode(self, z, y=None, logits: bool = False) -> np.ndarray:
        """z [B, latent_dim] -> probabilities [B, 1, 28, 28] (or Bernoulli logits)."""
        # Fast path for a well-formed float32 batch: attribute checks and one dot product
        # (non-finite if any element is NaN/inf; the exact check runs only then).
        if not (type(z) is np.ndarray and z.dtype == np.float32 and z.ndim == 2 and z.shape[0]
                and z.shape[1] == self.latent_dim and z.flags.c_contiguous
                and math.isfinite(z.ravel().dot(z.ravel()))):
            z = self._latents(z)
        feeds = {"z": z} if y is None and not self.conditional else {"z": z, **self._labels(y, len(z))}
        return self._dec_run(self._logits if logits else self._probs, feeds, None)[0]

    # -- operations ------------------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None, digit: int | None = None) -> np.ndarray:
        """n new images: z ~ N(0, I) drawn with numpy, decoded."""
        if not isinstance(n, (int, np.integer)) or n <= 0 or n > MAX_BATCH:
            raise VaeEdgeError(f"n must be between 1 and {MAX_BATCH}, got {n}")
        if digit is not None and not 0 <= int(digit) <= 9:
            raise VaeEdgeError(f"digit must lie in 0-9, got {digit}")
        if digit is not None and not self.conditional:
            raise VaeEdgeError("--digit needs a conditional model; this one is not")
        z = np.random.default_rng(seed).standard_normal((int(n), self.latent_dim), dtype=np.float32)
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
        za, _ = self.encode(np.asarray(a, np.float32).reshape(1, 1, 28, 28), None if y is None else y[:1])
        zb, _ = self.encode(np.asarray(b, np.float32).reshape(1, 1, 28, 28), None if y is None else y[1:2])
        t = np.linspace(0, 1, steps, dtype=np.float32)[:, None]
        if method == "lerp":
            z = (1 - t) * za + t * zb
        else:
            na, nb = np.linalg.norm(za), np.linalg.norm(zb)
            omega = np.arccos(np.clip(np.dot(za[0] / na, zb[0] / nb), -1, 1))
            if omega < 1e-6:
                z = (1 - t) * za + t * zb
            else:
                z = (np.sin((1 - t) * omega) * za + np.sin(t * omega) * zb) / np.sin(omega)
        yy = None if y is None else np.where(t[:, 0] < 0.5, y[0], y[1])
        return self.decode(z.astype(np.float32), yy)

    def denoise(self, x, noise: str | None = None, mask=None, samples: int = 512, rounds: int = 2,
                seed: int = 0, y=None) -> np.ndarray:
        """Restore corrupted images: the posterior mean E[decoder(z) | corrupted x] under the
        corruption's own likelihood (`noise`: gaussian:SIGMA or saltpepper:FRACTION; or a `mask`
        of known pixels, 1 = known, for inpainting), estimated by importance sampling around the
        encoder's posterior; each round re-centres the proposal on the last estimate. Known
        pixels of a mask are kept as they are."""
        x = self._images(x)
        if mask is not None:
            mask = np.broadcast_to(np.asarray(mask, np.float32), x.shape)
            est = self._posterior_mean(x, _masked_loglik(mask), y, samples, rounds, seed, start=x * mask)
            return np.where(mask > 0, x, est).astype(np.float32)
        return self._posterior_mean(x, noise_loglik(noise or "gaussian:0.2"), y, samples, rounds, seed)

    def _posterior_mean(self, x, loglik, y, samples: int, rounds: int, seed: int, start=None) -> np.ndarray:
        if samples <= 0 or rounds <= 0:
            raise VaeEdgeError("samples and rounds must be positive")
        labels = self._labels(y, len(x)).get("y")
        rng = np.random.default_rng(seed)
        est = x if start is None else np.ascontiguousarray(start, dtype=np.float32)
        for _ in range(rounds):
            mu, logvar = self.encode(est, labels)
            sd = np.maximum(2.0 * np.exp(0.5 * logvar), 0.5)  # a broadened proposal
            out = np.empty_like(x)
            for i in range(len(x)):
                eps = rng.standard_normal((samples, self.latent_dim), dtype=np.float32)
                z = (mu[i] + sd[i] * eps).astype(np.float32)
                c = self.decode(z, None if labels is None else np.full(samples, labels[i]))
                log_q = -0.5 * np.sum(eps**2, 1) - np.sum(np.log(sd[i]))
                logw = loglik(c, x[i], i) + log_normal(z) - log_q
                w = np.exp(logw - logsumexp(logw))
                out[i] = np.tensordot(w, c, 1)
            est = out
        return est

    def score(self, x, y=None, iw_samples: int = 0, seed: int = 0, elbo_samples: int = 1) -> np.ndarray:
        """Anomaly score per image in nats: -ELBO, or with iw_samples=K the importance-weighted
        estimate of -log p(x). Higher means more unusual."""
        x = self._images(x)
        extra = self._labels(y, len(x))
        rng = np.random.default_rng(seed)
        mu, logvar = self.encoder.run(None, {"x": x, **extra})
        std = np.exp(0.5 * logvar)
        if iw_samples < 0:
            raise VaeEdgeError(f"iw samples must be 0 or positive, got {iw_samples}")
        if iw_samples == 0:
            total = np.zeros(len(x))
            for _ in range(elbo_samples):
                z = (mu + std * rng.standard_normal(mu.shape, dtype=np.float32)).astype(np.float32)
                logits = self.decoder.run([self._dec_out[0]], {"z": z, **extra})[0]
                total += bce_with_logits(logits, x) + kl_to_prior(mu, logvar)
            return total / elbo_samples
        out = np.empty(len(x))
        for i in range(len(x)):
            xi, logw = x[i : i + 1], []
            for j in range(0, iw_samples, 4096):
                k = min(4096, iw_samples - j)
                eps = rng.standard_normal((k, self.latent_dim), dtype=np.float32)
                z = (mu[i] + std[i] * eps).astype(np.float32)
                feeds = {"z": z, **{n: np.full(k, v[i]) for n, v in extra.items()}}
                logits = self.decoder.run([self._dec_out[0]], feeds)[0]
                logw.append(-bce_with_logits(logits, xi) + log_normal(z) - log_normal(z, mu[i], logvar[i]))
            logw = np.concatenate(logw)
            out[i] = -(logsumexp(logw) - np.log(iw_samples))
        return out


def _fast_run(sess):
    inner = getattr(sess, "_sess", None)
    if inner is not None and callable(getattr(inner, "run", None)):
        return inner.run
    return lambda names, feeds, opts=None: sess.run(names, feeds, opts)


# ---------------------------------------------------------------------------------------------
# Corruptions for the denoising demo: gaussian:0.3, saltpepper:0.2, mask:rect
# ---------------------------------------------------------------------------------------------

_NOISE_RE = re.compile(r"^(gaussian|saltpepper|mask):(\d*\.?\d+|rect|top|bottom|left|right|random)$")


def parse_noise(spec: str) -> tuple[str, str]:
    """'gaussian:0.3' -> ('gaussian', '0.3'); a bad spec is a user error."""
    m = _NOISE_RE.match(spec)
    if not m:
        raise VaeEdgeError(
            f"unknown noise {spec!r}: use gaussian:SIGMA, saltpepper:FRACTION, or mask:rect|top|bottom|left|right"
        )
    return m.group(1), m.group(2)


def noise_loglik(spec: str):
    """log p(corrupted pixel | clean value c), summed per image, for a corruption spec."""
    kind, arg = parse_noise(spec)
    if kind == "gaussian":
        sigma = max(float(arg), 1e-3)
        return lambda c, xn, i: -0.5 * np.sum((xn - c) ** 2, axis=(-1, -2, -3)) / sigma**2
    if kind == "saltpepper":
        p, s = min(max(float(arg), 1e-3), 0.999), 0.1

        def loglik(c, xn, i):
            def g(mean):
                return np.exp(-0.5 * ((xn - mean) / s) ** 2)
            mix = (1 - p) * g(c) + (p / 2) * (g(0.0) + g(1.0))
            return np.sum(np.log(mix + 1e-30), axis=(-1, -2, -3))
        return loglik
    raise VaeEdgeError(f"{spec}: masks are passed as mask=, not as a noise model")


def _masked_loglik(mask: np.ndarray, s: float = 0.1):
    return lambda c, xn, i: -0.5 * np.sum(mask[i] * (xn - c) ** 2, axis=(-1, -2, -3)) / s**2


def corrupt(x: np.ndarray, spec: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply a corruption; returns (corrupted images, mask of known pixels or None)."""
    kind, arg = parse_noise(spec)
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    if kind == "gaussian":
        return np.clip(x + float(arg) * rng.standard_normal(x.shape, dtype=np.float32), 0, 1), None
    if kind == "saltpepper":
        p = float(arg)
        if not 0 <= p <= 1:
            raise VaeEdgeError(f"salt-and-pepper fraction must lie in [0, 1], got {p}")
        u = rng.random(x.shape, dtype=np.float32)
        out = x.copy()
        out[u < p / 2] = 0.0
        out[(u >= p / 2) & (u < p)] = 1.0
        return out, None
    mask = np.ones_like(x)
    if arg in ("rect", "random"):
        for i in range(len(x)):
            r, c = rng.integers(4, 14, size=2)
            mask[i, :, r : r + 12, c : c + 12] = 0
    elif arg in ("top", "bottom", "left", "right"):
        sl = {"top": np.s_[:, :, :14, :], "bottom": np.s_[:, :, 14:, :],
              "left": np.s_[:, :, :, :14], "right": np.s_[:, :, :, 14:]}[arg]
        mask[sl] = 0
    else:
        raise VaeEdgeError(f"unknown mask {arg!r}: rect, top, bottom, left or right")
    return x * mask, mask
