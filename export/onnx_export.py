"""Export the encoder and the decoder as two ONNX graphs, validate them against PyTorch, and
write them with manifest.json as a bundle.

Each graph is described once (GraphSpec: names, dtypes, dynamic axis, opset, tolerance); export
and validation both read that description (as Optimum's VaeEncoderOnnxConfig does).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vae_edge import VaeEdgeError, __version__
from vae_edge.data import load_split, resolve_data_dir, to_float
from vae_edge.model import VAE, split_logistic
from vae_edge.runtime import selfcheck
from vae_edge.runtime.bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, is_bundle, variant_filename
from vae_edge.runtime.bundle_writer import add_variant, replace_dir
from vae_edge.runtime.files import write_json_atomic
from vae_edge.runtime.mathops import CONTEXT, EIGHT_BIT
from vae_edge.train import fp16_weights, load_checkpoint, model_from_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the graphs use Split with num_outputs, which opset 18 introduced
VALIDATION_BATCH_SIZES = (1, 7, 256)
MAX_LATENT_SIDE = 4096  # latent cells a side of a spatial graph (32768 pixels for SD's factor of 8)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # "batch" marks the dynamic axis; "height"/"width" (images) and
                  # "latent_height"/"latent_width" (latents) the spatial ones of a graph of any size


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = DEFAULT_OPSET
    # |onnx - torch| <= atol + rtol * |torch|, elementwise (numpy.allclose's rule). The relative
    # term covers float32 summation order on large logits (a deep decoder's |logit| reaches
    # tens: 1e-4 absolute is then a few ulps); a wrong export misses by orders of magnitude more.
    atol: float = 1e-4
    rtol: float = 1e-5
    # > 0: height and width are dynamic too, the image's `spatial_factor` times the latent's
    spatial_factor: int = 0

    def to_dict(self) -> dict:
        def t(s: TensorSpec) -> dict:
            return {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)}
        return {"inputs": [t(s) for s in self.inputs], "outputs": [t(s) for s in self.outputs],
                "opset": self.opset, "atol": self.atol, "rtol": self.rtol,
                **({"spatial_factor": self.spatial_factor} if self.spatial_factor else {})}

    def dims(self, feeds: dict[str, np.ndarray]) -> dict[str, int]:
        """The sizes of the symbolic axes (batch, height, width, latent_height, ...) in these feeds."""
        out: dict[str, int] = {}
        for t in self.inputs:
            for s, n in zip(t.shape, feeds[t.name].shape, strict=False):
                if isinstance(s, str):
                    out[s] = int(n)
        f = self.spatial_factor
        for img, lat in (("height", "latent_height"), ("width", "latent_width")):
            if f and lat in out:
                out.setdefault(img, out[lat] * f)
            elif f and img in out:
                out.setdefault(lat, out[img] // f)
        return out

    def shape_of(self, t: TensorSpec, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(dims[s] if isinstance(s, str) else s for s in t.shape)


def graph_specs(model: VAE, opset: int = DEFAULT_OPSET) -> dict[str, GraphSpec]:
    d = model.cfg.latent_dim
    label = (TensorSpec("y", "int64", ("batch",)),) if model.cfg.conditional else ()
    image = ("batch", *model.cfg.image_shape)
    outputs = ((TensorSpec("logits", "float32", image), TensorSpec("probs", "float32", image))
               if model.cfg.likelihood == "bernoulli" else (TensorSpec("probs", "float32", image),))
    if model.cfg.likelihood in EIGHT_BIT:  # 8-bit values: the discretized logistic's mean and log-scale
        outputs = (TensorSpec("probs", "float32", image), TensorSpec("log_scale", "float32", image))
    if model.cfg.likelihood == "logistic-ar":  # and the weights of each value's neighbours
        c, h, w = model.cfg.image_shape
        outputs += (TensorSpec("context", "float32", ("batch", len(CONTEXT) * c, h, w)),)
    return {
        "encoder": GraphSpec(
            "encoder",
            (TensorSpec("x", "float32", image), *label),
            (TensorSpec("mu", "float32", ("batch", d)), TensorSpec("logvar", "float32", ("batch", d))),
            opset,
        ),
        "decoder": GraphSpec(
            "decoder",
            (TensorSpec("z", "float32", ("batch", d)), *label),
            outputs,
            opset,
        ),
    }


class EncoderGraph(nn.Module):
    """x [B,1,28,28] (, y [B]) -> mu, logvar: the distribution's parameters, never a sample."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        return self.model.encode(x, y)


class DecoderGraph(nn.Module):
    """z [B,D] (, y [B]) -> Bernoulli logits and probabilities [B,C,H,W]; a Gaussian model: its mean."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.model.decode(z, y)
        if self.model.cfg.likelihood in EIGHT_BIT:  # (mean in [0, 1], log-scale (, neighbours' weights))
            return split_logistic(logits, ar=self.model.cfg.likelihood == "logistic-ar")
        if self.model.cfg.likelihood == "gaussian":
            return (torch.sigmoid(logits),)
        return logits, torch.sigmoid(logits)


WRAPPERS = {"encoder": EncoderGraph, "decoder": DecoderGraph}


def _example(spec: GraphSpec, batch: int = 2, cells: int = 8) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: `batch` images or latents; a spatial graph's at `cells` latent cells a side."""
    f = spec.spatial_factor
    sizes = {"batch": batch, "latent_height": cells, "latent_width": cells, "height": cells * f, "width": cells * f}
    out = []
    for t in spec.inputs:
        shape = [sizes[s] if isinstance(s, str) else s for s in t.shape]
        out.append(torch.randint(0, 10, shape) if t.dtype == "int64" else torch.rand(shape))
    return tuple(out)


def export_graph(model: VAE, spec: GraphSpec, path: Path, model_name: str, fp16_weights: bool = False) -> None:
    """torch.onnx.export of one wrapper; one self-contained file with metadata_props.
    fp16_weights: store the weights as fp16 (+ Cast to fp32): lossless for a model whose weights
    are fp16 values (a checkpoint slimmed to fp16), half the file."""
    meta = {"model_name": model_name, "graph": spec.name, "arch": model.cfg.arch,
            "latent_dim": str(model.cfg.latent_dim), "conditional": str(model.cfg.conditional).lower()}
    save_graph(WRAPPERS[spec.name](model).eval(), spec, path, f"{model_name}: {spec.name} of a VAE (see manifest.json)",
               meta, fp16_weights)


def save_graph(wrapper: nn.Module, spec: GraphSpec, path: Path, doc: str, meta: dict[str, str],
               fp16_weights: bool = False) -> None:
    """torch.onnx.export (dynamo) of a module whose inputs and outputs are spec's, the batch axis
    dynamic and named "batch"; one self-contained file with doc and metadata_props."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    if spec.spatial_factor:  # height and width too: the latent's, and the image's as a multiple of them
        lh, lw = (torch.export.Dim(n, min=1, max=MAX_LATENT_SIDE) for n in ("latent_height", "latent_width"))
        f = spec.spatial_factor
        axis = {"batch": batch, "latent_height": lh, "latent_width": lw, "height": f * lh, "width": f * lw}
        dynamic_shapes = tuple({i: axis[s] for i, s in enumerate(t.shape) if isinstance(s, str)} for t in spec.inputs)
    else:
        dynamic_shapes = tuple({0: batch} for _ in spec.inputs)
    # The exporter is chatty (progress lines, warnings about its own internals): keep it quiet.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, _example(spec), input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_shapes=dynamic_shapes,
            opset_version=spec.opset, dynamo=True, external_data=False, verbose=False,
        )
    proto = program.model_proto
    for t in list(spec.inputs) + list(spec.outputs):  # name the dynamic axes as the spec does
        for vi in list(proto.graph.input) + list(proto.graph.output):
            if vi.name == t.name and vi.type.tensor_type.shape.dim:
                for d, s in zip(vi.type.tensor_type.shape.dim, t.shape, strict=False):
                    if isinstance(s, str):
                        d.dim_param = s
    proto.producer_name, proto.producer_version = "vae-edge", __version__
    proto.doc_string = doc
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    if fp16_weights:
        from vae_edge.export.weights import weights_as_fp16

        weights_as_fp16(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def validation_data(dataset: str, data_dir, n: int = 256, ckpt: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real images to validate the graphs on: the dataset's test split; for a model trained on the
    user's own images, those images where they still are (else uniform noise of their shape)."""
    if dataset == "custom":
        shape = tuple(ckpt["config"]["image_shape"])
        data = (ckpt.get("train_config") or {}).get("data") or []
        try:
            from vae_edge.runtime.images import load_inputs

            x = load_inputs(list(data), data_dir, shape=shape)[0][:n]
        except VaeEdgeError:
            x = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
        return np.ascontiguousarray(x, np.float32), np.zeros(len(x), np.int64)
    directory = resolve_data_dir(dataset, data_dir, split="test")
    images, labels = load_split(directory, "test")
    return to_float(images[:n]), labels[:n].astype(np.int64)


def within_tolerance(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[float, bool]:
    """(largest absolute difference, whether every element is within atol + rtol * |want|)."""
    err = np.abs(got - want)
    diff = float(np.max(err))
    return diff, bool(np.isfinite(diff) and np.all(err <= atol + rtol * np.abs(want)))


def validate_graph(path: Path, spec: GraphSpec, wrapper: nn.Module, feeds_at: dict[int, dict[str, np.ndarray]]) -> dict:
    """onnx.checker, I/O names, shapes at several batch sizes, values against the PyTorch module
    (the graph's wrapper) within the spec's tolerance."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise VaeEdgeError(f"{spec.name}: onnx.checker rejected the exported graph: {e}") from e
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_in, got_out = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if got_in != want_in or got_out != want_out:
        raise VaeEdgeError(f"{spec.name}: graph I/O {got_in}->{got_out}, expected {want_in}->{want_out}")
    wrapper = wrapper.eval()
    worst = dict.fromkeys(want_out, 0.0)
    for feeds in feeds_at.values():
        outs = sess.run(None, feeds)
        with torch.no_grad():
            ref = wrapper(*[torch.from_numpy(feeds[n]) for n in want_in])
        dims = spec.dims(feeds)
        at = f"batch {dims['batch']}" + (f" and {dims['height']}x{dims['width']}" if "height" in dims else "")
        for name, o, r, t in zip(want_out, outs, ref, spec.outputs, strict=True):
            shape = spec.shape_of(t, dims)
            if o.shape != shape:
                raise VaeEdgeError(f"{spec.name}: output {name} has shape {o.shape} at {at}, expected {shape}")
            diff, ok = within_tolerance(o, r.numpy(), spec.atol, spec.rtol)
            if not ok:
                raise VaeEdgeError(
                    f"{spec.name}: output {name} differs from PyTorch by {diff:.3g} at {at} "
                    f"(tolerance {spec.atol:g} + {spec.rtol:g} x |value|); the export is wrong"
                )
            worst[name] = max(worst[name], diff)
    return worst


def _feeds(model: VAE, x: np.ndarray, y: np.ndarray) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Real MNIST batches for the encoder; for the decoder, their latents and prior draws."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(x), torch.from_numpy(y) if model.cfg.conditional else None)
    enc, dec = {}, {}
    for bs in VALIDATION_BATCH_SIZES:
        half = (bs + 1) // 2
        z = torch.cat([mu[:half], torch.randn((bs - half, mu.shape[1]), generator=gen)]).numpy()
        enc[bs] = {"x": x[:bs]}
        dec[bs] = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if model.cfg.conditional:
            enc[bs]["y"] = y[:bs]
            dec[bs]["y"] = y[:bs]
    return {"encoder": enc, "decoder": dec}


PREPROCESSING = {
    "input": "float32 [batch, 1, 28, 28], values in [0, 1], white digit (1) on black (0)",
    "image_file": [
        "convert to 8-bit grey",
        "invert when the background (border pixels) is light",
        "crop to the bounding box of the digit",
        "scale the longer side to 20 px, keeping the aspect ratio",
        "paste into 28x28 so that the centre of mass is at the centre",
        "divide by 255",
    ],
}


def model_name(ckpt: dict, checkpoint: str | os.PathLike | None = None) -> str:
    """The bundle's name: after its checkpoint's run folder (runs/my-run/model.pt -> my-run), so a
    one-epoch experiment is not named like a shipped model; the architecture when there is none."""
    if checkpoint is not None:
        p = Path(checkpoint)
        run = (p if p.is_dir() else p.parent).name
        if run and run not in (".", ""):
            return run
    cfg = ckpt["config"]
    return f"vae-edge-{cfg['arch']}{'-cond' if cfg.get('conditional') else ''}-{ckpt.get('dataset', 'mnist')}"


def write_ort(path: Path, ort_path: Path) -> None:
    """Save an .ort file (onnxruntime's mobile and minimal builds) with basic optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _export_graphs(model, specs: dict, tmp: Path, name: str, half: bool, feeds: dict, opset: int, log):
    """Each graph exported into tmp and validated against PyTorch: (file names, max |diff|s)."""
    validation, files = {}, {}
    for g, spec in specs.items():
        fname = variant_filename(g, "fp32")
        log(f"exporting {g} (opset {opset})")
        export_graph(model, spec, tmp / fname, name, fp16_weights=half)
        validation[g] = validate_graph(tmp / fname, spec, WRAPPERS[g](model), feeds[g])
        log(f"  validated {g} against PyTorch at batch {', '.join(map(str, VALIDATION_BATCH_SIZES))}: "
            + ", ".join(f"{k} max|diff| {v:.1e}" for k, v in validation[g].items()))
        files[g] = fname
    return files, validation


def _new_manifest(ckpt: dict, name: str, release: int, dataset: str, specs: dict) -> dict:
    """A bundle's manifest before any variant is added (docs/bundle.md)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "release": int(release),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "producer": {"vae_edge": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "model": ckpt["config"],
        "dataset": dataset,
        "training": {"train_config": ckpt.get("train_config"), "epoch": ckpt.get("epoch"),
                     "step": ckpt.get("step"), "metrics": ckpt.get("metrics")},
        "evaluation": ckpt.get("evaluation"),
        "preprocessing": PREPROCESSING if dataset != "custom" else {
            "input": f"float32 [batch, {', '.join(map(str, ckpt['config']['image_shape']))}], values in [0, 1]",
            "image_files": "resized to HxW, converted to the model's channels"},
        "graphs": {g: s.to_dict() for g, s in specs.items()},
        "variants": {},
        "files": {},
    }


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    ort_format: bool = False,
    data_dir: str | os.PathLike | None = None,
    log=None,
    release: int = 1,
) -> Path:
    """Checkpoint -> validated bundle folder (encoder.onnx, decoder.onnx, manifest.json)."""
    log = log or logger.info
    if opset < MIN_OPSET:
        raise VaeEdgeError(f"opset {opset} is too old for these graphs (they use Split with num_outputs, "
                           f"opset {MIN_OPSET}'s): use {MIN_OPSET} or newer")
    out = Path(out)
    check_bundle_out(out, parent=False)  # the parent is checked after the checkpoint loads, as before
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    half = fp16_weights(ckpt)  # weights that are fp16 values are stored so in the graphs too
    name = model_name(ckpt, checkpoint)
    specs = graph_specs(model, opset)
    dataset = ckpt.get("dataset", "mnist")
    x, y = validation_data(dataset, data_dir, ckpt=ckpt)
    feeds = _feeds(model, x, y)

    check_bundle_out(out)
    with new_bundle(out) as tmp:
        files, validation = _export_graphs(model, specs, tmp, name, half, feeds, opset, log)
        manifest = _new_manifest(ckpt, name, release, dataset, specs)
        entry = {"files": files, "dtype": "float32", "quantization": None,
                 "weights_storage": "float16" if half else "float32",
                 "validation": {"against": "pytorch", "batch_sizes": list(VALIDATION_BATCH_SIZES),
                                "max_abs_diff": validation}}
        if ort_format:
            entry["ort_files"] = {}
            for g, fname in files.items():
                ort_name = variant_filename(g, "fp32", ".ort")
                write_ort(tmp / fname, tmp / ort_name)
                entry["ort_files"][g] = ort_name
        add_portable(tmp, model, manifest, log)
        record_fp32(tmp, manifest, entry)
    return out


def check_bundle_out(out: Path, parent: bool = True) -> None:
    """--out may be a new folder, an empty one, or a bundle (replaced, the old one going only once
    the new one is complete); any other file or non-empty folder is never deleted."""
    if out.exists() and not (out.is_dir() and (is_bundle(out) or not any(out.iterdir()))):
        raise VaeEdgeError(f"{out} exists and is not a vae-edge bundle: it is left alone; choose another --out "
                           "or remove it yourself")
    if parent and not out.parent.is_dir():
        raise VaeEdgeError(f"the folder of --out {out} does not exist (only the last level is created)")


@contextlib.contextmanager
def new_bundle(out: Path):
    """A fresh folder beside `out` to build a bundle in, which replaces `out` once the body is done;
    removed if anything fails (a half-made bundle is never left)."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(0o755)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


PORTABLE_FILE = "portable.npz"


def add_portable(tmp: Path, model: VAE, manifest: dict, log=print) -> None:
    """The compressor's integer network (export/portable.py), for the models that can be coded:
    unconditional MLP and conv models with a Bernoulli or (8-bit) logistic likelihood."""
    from vae_edge.export.portable import build, eligible
    from vae_edge.runtime.bundle_writer import file_entry

    if eligible(model) is not None:
        return
    data, report = build(model)
    (tmp / PORTABLE_FILE).write_bytes(data)
    manifest.setdefault("files", {})[PORTABLE_FILE] = file_entry(tmp / PORTABLE_FILE)
    manifest["portable"] = {"file": PORTABLE_FILE, "format": 1, "weights": "int16, a power-of-two scale per "
                            "output channel", "activations": "int16, a power-of-two scale per tensor",
                            "sums": "float64, every partial sum an integer below 2^53 (exact on every device)",
                            **report}
    worst = max(report["max_abs_diff"].values())
    log(f"  portable network (integer, for compression on any device): {len(data) / 2**20:.1f} MB, largest "
        f"output difference from PyTorch {worst:.1e}")


def record_fp32(tmp: Path, manifest: dict, entry: dict) -> None:
    """The fp32 variant of a bundle being made in tmp, its graphs already there: golden vectors
    (what they compute here, for devices to check themselves against), the manifest, the variant."""
    entry["golden"] = selfcheck.record(manifest, entry, selfcheck.session_runner(
        {g: tmp / fname for g, fname in entry["files"].items()}))
    write_json_atomic(tmp / MANIFEST, manifest)
    add_variant(tmp, manifest, "fp32", entry)
