"""Bring your own VAE: a PyTorch module of the user's to a bundle.

The protocol: `encode(x) -> (mu, logvar)` and `decode(z) -> tensor`, with `x` [N, C, H, W] float
in [0, 1], `mu`/`logvar` [N, *latent_shape] (a vector or a spatial latent such as [4, 8, 8]), and
`decode` returning Bernoulli logits (likelihood="bernoulli") or the Gaussian mean in [0, 1]
(likelihood="gaussian", with a fixed per-pixel standard deviation `sigma`). The bundle's graphs
are the same two as vae-edge's own (encoder: x -> mu, logvar; decoder: z -> [logits,] probs, where
probs is the Gaussian mean), validated against the user's module, with golden vectors.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vae_edge import VaeEdgeError, __version__
from vae_edge.export.onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    GraphSpec,
    TensorSpec,
    check_bundle_out,
    new_bundle,
    record_fp32,
    save_graph,
    validate_graph,
)
from vae_edge.runtime.bundle import SCHEMA, SCHEMA_VERSION, variant_filename

logger = logging.getLogger(__name__)
LIKELIHOODS = ("bernoulli", "gaussian")
BYO_BATCH_SIZES = (2, 5)  # validation batches (>= 2: a graph that fixed the batch at 1 fails)
LARGE_BATCH_SIZES = (1, 2)  # for large images (a 256x256 SD VAE): a fixed batch still fails one of them
LARGE_IMAGE = 64 * 64 * 3  # image values from which the large batches are used (memory: batch 5 at 256x256
                           # through SD's VAE and its onnxruntime session was the peak of export)


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model.encode(x)
        if isinstance(out, torch.Tensor):  # a deterministic encoder (TAESD): the latents alone
            return (out,)
        mu, logvar = out
        return mu, logvar


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module, likelihood: str):
        super().__init__()
        self.model, self.likelihood = model, likelihood

    def forward(self, z: torch.Tensor):
        out = self.model.decode(z)
        if isinstance(out, (tuple, list)):  # (mean, log_sigma): a Gaussian with its own variance
            return out[0], out[1]
        if self.likelihood == "bernoulli":
            return out, torch.sigmoid(out)
        return (out,)


class TorchBaseline(nn.Module):
    """The user's module as the benchmark's PyTorch contender: encode(x, y) and probs(z, y), the
    same outputs the bundle's graphs give (y ignored: the protocol has no labels)."""

    def __init__(self, model: nn.Module, likelihood: str):
        super().__init__()
        self.model, self.likelihood = model, likelihood

    def encode(self, x: torch.Tensor, y=None):
        return self.model.encode(x)

    def probs(self, z: torch.Tensor, y=None):
        out = self.model.decode(z)
        out = out[0] if isinstance(out, tuple) else out
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out


def load_module(spec: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """PATH.py:FACTORY -> FACTORY() (a torch module), with a state_dict loaded (weights_only=True)."""
    import importlib.util

    path, _, factory = spec.rpartition(":")
    if not path or not factory:
        raise VaeEdgeError(f"--module takes PATH.py:FACTORY, got {spec!r}")
    if not Path(path).is_file():
        raise VaeEdgeError(f"--module: {path} does not exist")
    loader = importlib.util.spec_from_file_location(f"vae_edge_user_{Path(path).stem}", path)
    mod = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(mod)
    except Exception as e:
        raise VaeEdgeError(f"--module: importing {path} failed: {type(e).__name__}: {e}") from None
    make = getattr(mod, factory, None)
    if not callable(make):
        raise VaeEdgeError(f"--module: {path} has no function {factory}()")
    model = make()
    if not isinstance(model, nn.Module):
        raise VaeEdgeError(f"--module: {factory}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VaeEdgeError(f"--weights {weights}: {first[:200]}") from None
    return model


def _check_protocol(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], bool, bool]:
    """(the latent shape, whether decode gives (mean, log_sigma), whether encode is deterministic:
    one tensor, no variance), from one call of each method; one line on what is wrong otherwise."""
    for name in ("encode", "decode"):
        if not callable(getattr(model, name, None)):
            raise VaeEdgeError(f"the model has no {name}() method: it must have encode(x) -> (mu, logvar) and "
                               "decode(z) (or use an adapter: docs/byo.md)")
    x = torch.rand(2, *input_shape)
    with torch.no_grad():
        out = _call(model.encode, x, "encode", input_shape)
        deterministic = isinstance(out, torch.Tensor)
        if deterministic:
            out = (out, out)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise VaeEdgeError("encode(x) must return (mu, logvar), or the latents alone for a deterministic encoder")
        mu, logvar = out
        if mu.shape != logvar.shape or mu.shape[0] != 2:
            raise VaeEdgeError(f"encode(x) gave mu {list(mu.shape)} and logvar {list(logvar.shape)}: they must "
                               "have the same shape [N, *latent_shape]")
        img = _call(model.decode, mu, "decode", input_shape)
    learned = isinstance(img, (tuple, list))
    if learned and not (len(img) == 2 and img[0].shape == img[1].shape):
        raise VaeEdgeError("decode(z) returned a tuple: it must be (mean, log_sigma), of the same shape")
    img = img[0] if learned else img
    if tuple(img.shape) != (2, *input_shape):
        raise VaeEdgeError(f"decode(z) gave {list(img.shape)}, not [N, {', '.join(map(str, input_shape))}]")
    return tuple(int(n) for n in mu.shape[1:]), learned, deterministic


def _call(fn, arg, what: str, input_shape):
    try:
        return fn(arg)
    except Exception as e:  # the user's code: say what failed, in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise VaeEdgeError(f"the model's {what}() failed on a batch of [2, {', '.join(map(str, input_shape))}] "
                           f"(is --input-shape right?): {type(e).__name__}: {first}") from None


def _specs(input_shape, latent_shape, likelihood: str, opset: int, learned: bool = False,
           deterministic: bool = False, spatial_factor: int = 0) -> dict[str, GraphSpec]:
    image, latent = ("batch", *input_shape), ("batch", *latent_shape)
    if spatial_factor:  # any height and width: the image's a multiple of the latent's
        image = ("batch", input_shape[0], "height", "width")
        latent = ("batch", latent_shape[0], "latent_height", "latent_width")
    outputs = ((TensorSpec("logits", "float32", image), TensorSpec("probs", "float32", image))
               if likelihood == "bernoulli" else (TensorSpec("probs", "float32", image),))
    if learned:
        outputs = (TensorSpec("probs", "float32", image), TensorSpec("log_sigma", "float32", image))
    posterior = ((TensorSpec("mu", "float32", latent),) if deterministic
                 else (TensorSpec("mu", "float32", latent), TensorSpec("logvar", "float32", latent)))
    return {"encoder": GraphSpec("encoder", (TensorSpec("x", "float32", image),), posterior, opset,
                                 spatial_factor=spatial_factor),
            "decoder": GraphSpec("decoder", (TensorSpec("z", "float32", latent),), outputs, opset,
                                 spatial_factor=spatial_factor)}


def export_vae(model: nn.Module, input_shape: tuple[int, int, int], out: str | os.PathLike,
               likelihood: str = "bernoulli", sigma: float | None = None, name: str | None = None,
               opset: int = DEFAULT_OPSET, release: int = 1, log=None, diffusers: dict | None = None,
               spatial_factor: int = 0) -> Path:
    """The user's VAE -> a bundle at `out`, each graph validated against the module (batches of 2
    and 5, vae-edge's tolerance) and golden vectors recorded. Sign it with `vae-edge sign`.

    spatial_factor > 0: a fully convolutional VAE whose latent is [C', H / f, W / f] for an image
    [C, H, W]: the graphs take any height and width (multiples of f), traced, validated and
    self-checked at small sizes; `input_shape` is then the model's own size (what sample makes)."""
    log = log or logger.info
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise VaeEdgeError(f"input shape must be C,H,W, got {list(input_shape)}")
    if opset < MIN_OPSET:
        raise VaeEdgeError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    out = Path(out)
    check_bundle_out(out)
    model = model.eval()
    f = int(spatial_factor)
    if f and (input_shape[1] % f or input_shape[2] % f):
        raise VaeEdgeError(f"input shape {list(input_shape)}: sides must be multiples of {f}")
    check_shape = (input_shape[0], SPATIAL_CHECK * f, SPATIAL_CHECK * f) if f else input_shape
    latent_shape, learned, deterministic = _check_protocol(model, check_shape)
    if f:
        if len(latent_shape) != 3 or latent_shape[1:] != (SPATIAL_CHECK, SPATIAL_CHECK):
            raise VaeEdgeError(f"encode(x) of a {check_shape[1]}x{check_shape[2]} image gave latents {list(latent_shape)}: "
                               f"not 1/{f} of its height and width, so the graphs cannot take any size")
        check_latent = latent_shape
        latent_shape = (latent_shape[0], input_shape[1] // f, input_shape[2] // f)
    if learned and (likelihood != "gaussian" or sigma is not None):
        raise VaeEdgeError("decode(z) returns (mean, log_sigma): a Gaussian with its own variance; export it with "
                           "--likelihood gaussian and no --sigma")
    if not learned:
        _check_likelihood(likelihood, sigma)
    name = name or type(model).__name__.lower()
    specs = _specs(input_shape, latent_shape, likelihood, opset, learned, deterministic, f)
    wrappers = {"encoder": _Encoder(model), "decoder": _Decoder(model, likelihood)}
    rng = np.random.default_rng(0)
    if f:  # two small sizes, neither the traced one, one not square; batches of 2 and 1
        sizes = ((2, SPATIAL_CHECK - 2, SPATIAL_CHECK + 2), (1, SPATIAL_CHECK // 2 + 1, SPATIAL_CHECK - 1))
        batches = [b for b, _, _ in sizes]
        feeds = {"encoder": {i: {"x": rng.random((b, input_shape[0], h * f, w * f), dtype=np.float32)}
                             for i, (b, h, w) in enumerate(sizes)},
                 "decoder": {i: {"z": rng.standard_normal((b, latent_shape[0], h, w), dtype=np.float32)}
                             for i, (b, h, w) in enumerate(sizes)}}
    else:
        batches = LARGE_BATCH_SIZES if int(np.prod(input_shape)) > LARGE_IMAGE else BYO_BATCH_SIZES
        feeds = {"encoder": {b: {"x": rng.random((b, *input_shape), dtype=np.float32)} for b in batches},
                 "decoder": {b: {"z": rng.standard_normal((b, *latent_shape), dtype=np.float32)} for b in batches}}
    with new_bundle(out) as tmp:
        files, validation = {}, {}
        for g, spec in specs.items():
            files[g] = variant_filename(g, "fp32")
            log(f"exporting {g} (opset {opset})")
            meta = {"model_name": name, "graph": g, "arch": "custom", "latent_shape": ",".join(map(str, latent_shape))}
            save_graph(wrappers[g], spec, tmp / files[g], f"{name}: {g} of a user's VAE (see manifest.json)", meta)
            validation[g] = validate_graph(tmp / files[g], spec, wrappers[g], feeds[g])
            at = (", ".join(f"{b}x{h * f}x{w * f}" for b, h, w in sizes) + " (batch x height x width)" if f
                  else f"batch {', '.join(map(str, batches))}")
            log(f"  validated {g} against the module at {at}: "
                + ", ".join(f"{k} max|diff| {v:.1e}" for k, v in validation[g].items()))
        manifest = _manifest(name, release, input_shape, latent_shape, likelihood, sigma, specs, learned)
        if f:  # any size: the golden vectors and the runtime's memory estimate at a small one
            manifest["model"]["spatial"] = {
                "factor": f, "check_image_shape": list(check_shape), "check_latent_shape": list(check_latent),
                "activation_bytes_per_pixel": {g: activation_bytes_per_pixel(tmp / files[g], specs[g], f)
                                               for g in files}}
        if deterministic:  # no variance is invented: what needs one (score, the ELBO) says so
            manifest["model"]["posterior"] = "deterministic"
        if diffusers:  # where the model came from, and its latent scaling (the runtime's --latent-space)
            manifest["model"]["diffusers"] = diffusers
            manifest["model"]["latent_scaling"] = {"space": diffusers["latent_space"],
                                                   "scaling_factor": diffusers["scaling_factor"],
                                                   "shift_factor": diffusers["shift_factor"]}
        entry = {"files": files, "dtype": "float32", "quantization": None, "weights_storage": "float32",
                 "validation": {"against": "pytorch (the user's module)", "batch_sizes": list(batches),
                                **({"image_sizes": [[h * f, w * f] for _, h, w in sizes]} if f else {}),
                                "max_abs_diff": validation}}
        record_fp32(tmp, manifest, entry)
    return out


SPATIAL_CHECK = 8  # latent cells a side at which a spatial VAE is traced, checked and self-checked


def activation_bytes_per_pixel(path: Path, spec: GraphSpec, f: int) -> int:
    """Bytes of the largest float tensor of a spatial graph, per pixel of its image (the encoder's
    input, the decoder's output), from onnx's shape inference at one size: the runtime estimates
    a call's memory from it (a few such tensors are alive at once) and tiles what would not fit."""
    import onnx

    proto = onnx.load(str(path))
    del proto.graph.value_info[:]
    cells = 16
    for vi in proto.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                n = {"batch": 1, "latent_height": cells, "latent_width": cells,
                     "height": cells * f, "width": cells * f}[d.dim_param]
                d.Clear()
                d.dim_value = n
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    largest = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or not t.shape.dim:
            continue
        if any(not d.HasField("dim_value") for d in t.shape.dim):
            continue
        n = int(np.prod([d.dim_value for d in t.shape.dim]))
        largest = max(largest, n * (2 if t.elem_type == onnx.TensorProto.FLOAT16 else 4))
    return int(np.ceil(largest / (cells * f) ** 2))


def _manifest(name: str, release: int, input_shape, latent_shape, likelihood: str, sigma, specs,
              learned: bool = False) -> dict:
    d = int(np.prod(latent_shape))
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": name, "release": int(release),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "producer": {"vae_edge": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "model": {"arch": "custom", "latent_dim": d, "latent_shape": list(latent_shape),
                  "image_shape": list(input_shape), "value_range": [0.0, 1.0], "conditional": False,
                  "likelihood": likelihood,
                  **({"learned_sigma": True} if learned else {"sigma": float(sigma)} if likelihood == "gaussian"
                     else {})},
        "dataset": "custom",
        "training": None, "evaluation": None,
        "preprocessing": {"input": f"float32 [batch, {', '.join(map(str, input_shape))}], values in [0, 1]",
                          "image_files": "resized to HxW, converted to the model's channels"},
        "graphs": {g: s.to_dict() for g, s in specs.items()},
        "variants": {}, "files": {},
    }


def wrap_onnx(encoder: str | os.PathLike, decoder: str | os.PathLike, out: str | os.PathLike,
              likelihood: str = "bernoulli", sigma: float | None = None, name: str | None = None,
              release: int = 1, log=None) -> Path:
    """Graphs exported elsewhere (an Optimum export, say) -> a bundle. They must use vae-edge's
    names (encoder: x -> mu, logvar; decoder: z -> probs, and logits for a Bernoulli model), a
    batch axis first and fixed sizes after it, and no external data. Checked: names and shapes,
    a round trip (decode(encode(x)) has the image's shape and finite values), golden vectors."""
    import onnxruntime as ort

    from vae_edge.runtime.graphcheck import refuse_external_data

    log = log or logger.info
    _check_likelihood(likelihood, sigma)
    out = Path(out)
    check_bundle_out(out)
    data = {}
    for g, path in (("encoder", encoder), ("decoder", decoder)):
        if not Path(path).is_file():
            raise VaeEdgeError(f"--{g}-onnx {path} does not exist")
        data[g] = Path(path).read_bytes()
        refuse_external_data(data[g], path)
    try:
        sess = {g: ort.InferenceSession(b, providers=["CPUExecutionProvider"]) for g, b in data.items()}
    except Exception as e:
        raise VaeEdgeError(f"onnxruntime cannot load the graphs: {str(e).strip().splitlines()[0][:200]}") from None
    image, latent = _foreign_shapes(sess, likelihood)
    rng = np.random.default_rng(0)
    x = rng.random((2, *image), dtype=np.float32)
    mu = sess["encoder"].run(["mu"], {"x": x})[0]
    probs = sess["decoder"].run(["probs"], {"z": mu.astype(np.float32)})[0]
    if tuple(mu.shape) != (2, *latent) or tuple(probs.shape) != (2, *image) or not np.all(np.isfinite(probs)):
        raise VaeEdgeError(f"the round trip decode(encode(x)) gave {list(probs.shape)} from latents {list(mu.shape)}: "
                           f"expected [2, {', '.join(map(str, image))}]")
    specs = _specs(image, latent, likelihood, DEFAULT_OPSET)
    name = name or Path(encoder).stem
    with new_bundle(out) as tmp:
        files = {g: variant_filename(g, "fp32") for g in data}
        for g, b in data.items():
            (tmp / files[g]).write_bytes(b)
        manifest = _manifest(name, release, image, latent, likelihood, sigma, specs)
        manifest["producer"]["graphs_from"] = {g: str(Path(p).name) for g, p in (("encoder", encoder), ("decoder", decoder))}
        entry = {"files": files, "dtype": "float32", "quantization": None, "weights_storage": "as given",
                 "validation": {"against": "a round trip: decode(encode(x)) of random images"}}
        record_fp32(tmp, manifest, entry)
    log(f"wrapped {encoder} and {decoder}: images {list(image)}, latents {list(latent)}")
    return out


def _foreign_shapes(sess: dict, likelihood: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(image shape, latent shape) from graphs with vae-edge's names; one line on what differs."""
    want = {"encoder": (["x"], {"mu", "logvar"}),
            "decoder": (["z"], {"probs", "logits"} if likelihood == "bernoulli" else {"probs"})}
    for g, (ins, outs) in want.items():
        have_in = [i.name for i in sess[g].get_inputs()]
        have_out = {o.name for o in sess[g].get_outputs()}
        if have_in != ins or not outs <= have_out:
            raise VaeEdgeError(f"the {g} graph takes {have_in} and gives {sorted(have_out)}; vae-edge needs "
                               f"{ins} -> {sorted(outs)} (rename them, e.g. with onnx.compose.add_prefix or "
                               "onnx.utils.Extractor)")

    def fixed(shape, what):
        rest = shape[1:]
        if not rest or not all(isinstance(n, int) and n > 0 for n in rest):
            raise VaeEdgeError(f"{what} has shape {shape}: a batch axis, then fixed sizes, are needed")
        return tuple(rest)

    image = fixed(sess["encoder"].get_inputs()[0].shape, "the encoder's x")
    latent = fixed(sess["decoder"].get_inputs()[0].shape, "the decoder's z")
    if len(image) != 3:
        raise VaeEdgeError(f"the encoder's x is [batch, {', '.join(map(str, image))}]: images must be [batch, C, H, W]")
    return image, latent


def _check_likelihood(likelihood: str, sigma) -> None:
    if likelihood not in LIKELIHOODS:
        raise VaeEdgeError(f"unknown likelihood {likelihood!r}: bernoulli or gaussian")
    if likelihood == "gaussian" and not (sigma and sigma > 0):
        raise VaeEdgeError("a gaussian likelihood needs --sigma, the per-pixel standard deviation (> 0)")
