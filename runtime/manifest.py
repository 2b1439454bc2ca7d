"""The manifest, typed: frozen dataclasses made once from the JSON the bundle reader has checked
(`vae_edge.runtime.bundle.parse_manifest`: schema and version, file names, sizes, sha256s). The
readers (the runtime, the variant chooser, `info`, the benchmark, the web page) use these; the
writers (export, quantize, bundle_writer) build the JSON itself. The format for readers in other
languages: docs/bundle.md and its JSON Schema, docs/bundle.schema.json.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vae_edge import VaeEdgeError

GRAPHS = ("encoder", "decoder")


class ManifestError(VaeEdgeError):
    """A manifest field has the wrong type (the bundle reader checked the rest)."""


def _frozen(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Variant:
    """One variant: its two graph files, what it is, what it was made for, what it kept."""
    name: str
    files: Mapping[str, str]  # graph -> file name
    dtype: str = "float32"  # float32 | int8 | float16
    target: str | None = None  # the device family it was made for (None: every device)
    accuracy: Mapping = field(default_factory=lambda: _frozen(None))  # against fp32, on the test set
    golden: Mapping | None = None  # the self-check's inputs, outputs and tolerance
    quantization: Mapping | None = None
    ort_files: Mapping[str, str] = field(default_factory=lambda: _frozen(None))

    @property
    def is_fp16(self) -> bool:
        return self.dtype == "float16"

    @property
    def neg_elbo_delta(self) -> float | None:
        """-ELBO against fp32 in nats (0 for fp32 itself; None when never measured)."""
        if self.name == "fp32":
            return 0.0
        value = self.accuracy.get("neg_elbo_delta")
        return None if value is None else float(value)


@dataclass(frozen=True)
class TargetRecord:
    """What `quantize --target T` recorded: the variant for T and the settings it used."""
    variant: str | None
    settings: Mapping = field(default_factory=lambda: _frozen(None))
    why: str = ""


MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ModelInfo:
    arch: str  # mlp | conv (vae-edge's own) | custom (a user's module: export_vae)
    latent_dim: int  # elements of one latent (the product of latent_shape)
    conditional: bool
    config: Mapping  # the whole model config (the checkpoint's)
    image_shape: tuple[int, int, int] = MNIST_SHAPE  # [C, H, W] of one image, values in [0, 1]
    latent_shape: tuple[int, ...] = ()  # a vector (latent_dim,) or spatial, such as (4, 8, 8)
    likelihood: str = "bernoulli"  # bernoulli (the decoder gives logits) | gaussian (its mean) |
                                   # logistic (8-bit values: its mean and log_scale)
    sigma: float | None = None  # the Gaussian likelihood's fixed per-pixel standard deviation
    learned_sigma: bool = False  # Gaussian: the decoder also gives log_sigma per value (sigma is None)
    # A diffusers VAE's latents are the diffusion model's: raw = z / latent_scale + latent_shift
    latent_scale: float = 1.0
    latent_shift: float = 0.0
    deterministic: bool = False  # the encoder gives the latents alone (diffusers' AutoencoderTiny): no variance
    # > 0: the graphs take any height and width, multiples of this (a latent cell's pixels a side);
    # image_shape and latent_shape are then the model's own size (what sample makes)
    spatial_factor: int = 0
    # the largest activation of each graph in bytes per image pixel (the runtime's memory estimate)
    activation_bytes_per_pixel: Mapping = field(default_factory=lambda: _frozen(None))

    @property
    def mnist_like(self) -> bool:
        """One 28x28 grey channel and a Bernoulli likelihood: what the digit tools (the drawing
        pad, digit framing of image files, denoising's noise models) are made for."""
        return self.image_shape == MNIST_SHAPE and self.likelihood == "bernoulli"


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str | None
    release: int
    dataset: str
    model: ModelInfo
    graphs: Mapping[str, Mapping]  # graph -> its inputs and outputs (runtime.graphcheck reads them)
    files: Mapping[str, FileEntry]
    variants: Mapping[str, Variant]
    targets: Mapping[str, TargetRecord]
    evaluation: Mapping | None
    preprocessing: Mapping | None
    raw: Mapping = field(repr=False)  # the JSON as read (top level read-only)

    def variant(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise ManifestError(f"this bundle has no variant {name!r} (it has: {', '.join(self.variants)})") from None

    def to_dict(self) -> dict:
        """A deep copy of the JSON, for a writer to change and write back."""
        return copy.deepcopy(dict(self.raw))

    @classmethod
    def from_dict(cls, d: Mapping, where: object = "manifest") -> Manifest:
        try:
            return cls._from_dict(d)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            raise ManifestError(f"{where}: a manifest field has the wrong type or is missing ({e})") from None

    @classmethod
    def _from_dict(cls, d: Mapping) -> Manifest:
        model = d["model"]
        variants = {name: Variant(
            name=name, files=_frozen({g: str(e["files"][g]) for g in GRAPHS}), dtype=str(e.get("dtype") or "float32"),
            target=None if e.get("target") is None else str(e["target"]), accuracy=_frozen(e.get("accuracy")),
            golden=e.get("golden"), quantization=e.get("quantization"), ort_files=_frozen(e.get("ort_files")))
            for name, e in d["variants"].items()}
        targets = {}
        for t, rec in (d.get("targets") or {}).items():
            if isinstance(rec, Mapping):  # a malformed record is ignored, as before: auto falls back
                v = rec.get("variant")
                targets[t] = TargetRecord(variant=v if isinstance(v, str) else None,
                                          settings=_frozen(rec.get("settings") if isinstance(rec.get("settings"), Mapping)
                                                           else None), why=str(rec.get("why", "")))
        return cls(
            schema_version=int(d["schema_version"]), name=d.get("name"), release=int(d.get("release", 0)),
            dataset=str(d.get("dataset") or "mnist"),
            model=_model_info(model),
            graphs=_frozen({g: s for g, s in (d.get("graphs") or {}).items() if isinstance(s, Mapping)}),
            files=_frozen({n: FileEntry(str(e["sha256"]), int(e["size"])) for n, e in d["files"].items()}),
            variants=_frozen(variants), targets=_frozen(targets),
            evaluation=d.get("evaluation"), preprocessing=d.get("preprocessing"), raw=_frozen(d),
        )


MAX_IMAGE_VALUES = 1 << 28  # values of one image or latent (1 GiB as float32), at most
MAX_LATENT_AXES = 8


def _model_info(model: Mapping) -> ModelInfo:
    d = int(model["latent_dim"])
    latent = tuple(int(n) for n in (model.get("latent_shape") or (d,)))
    image = tuple(int(n) for n in (model.get("image_shape") or MNIST_SHAPE))
    if (len(image) != 3 or min(image) < 1 or min(latent, default=0) < 1 or _prod(latent) != d
            or len(latent) > MAX_LATENT_AXES):
        raise ValueError(f"image shape {list(image)[:8]} / latent shape {list(latent)[:8]} of {d} elements")
    if _prod(image) > MAX_IMAGE_VALUES or d > MAX_IMAGE_VALUES:  # before anything is allocated for them
        raise ValueError(f"image shape {list(image)} / latent of {d:,} values: over the {MAX_IMAGE_VALUES:,} values "
                         "an image or latent may hold")
    likelihood = str(model.get("likelihood") or "bernoulli")
    if likelihood not in ("bernoulli", "gaussian", "logistic", "logistic-ar"):
        raise ValueError(f"likelihood {likelihood!r}")
    sigma = model.get("sigma")
    learned = bool(model.get("learned_sigma"))
    if likelihood == "gaussian" and not learned and not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError("a gaussian likelihood needs a positive sigma (or a decoder that gives log_sigma)")
    scaling = model.get("latent_scaling") or {}
    scale, shift = float(scaling.get("scaling_factor", 1.0)), float(scaling.get("shift_factor", 0.0))
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(shift)):
        raise ValueError(f"latent scaling {scale!r}, shift {shift!r}")
    spatial = model.get("spatial") or {}
    factor = int(spatial.get("factor", 0))
    per_pixel = {g: int(spatial.get("activation_bytes_per_pixel", {}).get(g, 0)) for g in GRAPHS} if factor else {}
    if factor and (not 1 <= factor <= 64 or len(latent) != 3 or image[1] != latent[1] * factor
                   or image[2] != latent[2] * factor or any(not 0 <= b <= 1 << 20 for b in per_pixel.values())):
        raise ValueError(f"spatial factor {factor} for images {list(image)} and latents {list(latent)}")
    return ModelInfo(arch=str(model["arch"]), latent_dim=d, conditional=bool(model.get("conditional", False)),
                     config=_frozen(model), image_shape=image, latent_shape=latent, likelihood=likelihood,
                     sigma=None if sigma is None else float(sigma), learned_sigma=learned,
                     latent_scale=scale, latent_shift=shift, deterministic=model.get("posterior") == "deterministic",
                     spatial_factor=factor, activation_bytes_per_pixel=_frozen(per_pixel))


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out
