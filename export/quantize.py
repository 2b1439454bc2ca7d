"""Quantize a bundle's graphs: int8 dynamic, int8 static (QDQ, calibrated on real MNIST), fp16.

Each variant is added to the bundle with what was done and the accuracy it kept, measured on the
MNIST test set against the fp32 graphs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from vae_edge import VaeEdgeError
from vae_edge.data import binarize, load_split, resolve_data_dir, to_float
from vae_edge.export.targets import TARGETS, differs_from_x86, target_settings
from vae_edge.export.weights import fold_fp16_weights, has_fp16_weights, weights_as_fp16
from vae_edge.runtime import selfcheck
from vae_edge.runtime.bundle import (
    GRAPHS,
    load_manifest,
    variant_filename,
    variant_files,
    verify_files,
)
from vae_edge.runtime.bundle_writer import add_variant, fresh_name, remove_orphans
from vae_edge.runtime.files import fsync_dir, locked, sha256_file
from vae_edge.runtime.manifest import Manifest
from vae_edge.runtime.mathops import decoder_nll, kl_to_prior, psnr

logger = logging.getLogger(__name__)
MODES = ("auto", "dynamic", "static", "fp16")
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
QTYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# Accuracy budget a variant must keep, else the layer that costs most stays in float.
MAX_ELBO_DELTA = 0.5  # nats
MIN_PSNR = 30.0  # dB, decoder probabilities against fp32
PSNR_IDENTICAL = float(-20 * np.log10(np.finfo(np.float32).eps))  # 138.5 dB
SELECTION_SIZE = 2000  # last training images: held out to choose layers kept in float


@dataclass
class QuantizeConfig:
    mode: str = "auto"
    method: str = "minmax"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = False
    # 7-bit weights: onnxruntime's advice for x86 without VNNI, where u8 x s8 products saturate in
    # 16 bits (per-channel int8 graphs lost 0.9-8 nats to it here: benchmarks/results/levers.md)
    reduce_range: bool = False
    calibration_size: int = 512
    eval_size: int = 10000
    seed: int = 0
    exclude: dict = field(default_factory=dict)  # graph -> node names kept in float
    # Static mode: the graph's outputs (logits, probs, mu, logvar) never pass through 8 bits: the
    # last weight layer before each output and the ops after it stay float (output_tail). With 8-bit
    # logits and latents, conv-mnist's int8 variant lost 0.56 nats of -ELBO; without, 0.17.
    # Those layers' MatMul/Gemm still store 8-bit weights (dynamic quantization: the input quantized
    # at run time, the output float): in float they kept an MLP's static variant at 86-98% of fp32's
    # size. Their weights are uint8: with int8 ones onnxruntime on ARM CPUs with SME takes
    # KleidiAI's kernels, which computed other numbers under emulation (targets.py: arm64).
    float_outputs: bool = True
    target: str = "x86"  # whose settings apply (export/targets.py), recorded in the manifest

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise VaeEdgeError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise VaeEdgeError(f"unknown calibration method {self.method!r}: {', '.join(METHODS)}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QTYPES:
                raise VaeEdgeError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}: int8 or uint8")
        if self.calibration_size <= 0:
            raise VaeEdgeError(f"calibration size must be positive, got {self.calibration_size}")
        if self.eval_size <= 0:
            raise VaeEdgeError(f"eval size must be positive, got {self.eval_size}")
        if self.target not in TARGETS:
            raise VaeEdgeError(f"unknown target {self.target!r}: choose from {', '.join(TARGETS)}")

    def for_target(self, methods: set[str], explicit: set[str] = frozenset()) -> QuantizeConfig:
        """A copy with the target's settings applied, except those the user set explicitly."""
        settings = {k: v for k, v in target_settings(self.target, methods).items() if k not in explicit}
        return replace(self, **settings)


class ArrayReader(CalibrationDataReader):
    """Feeds calibration batches (dicts of input name -> array) to onnxruntime's calibrator."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


@contextlib.contextmanager
def _lean_calibration_sessions():
    """onnxruntime's calibrators run a copy of the graph with a ReduceMin and a ReduceMax added
    after every tensor, in a session of their own making: in its default execution order it runs
    the reductions late and holds every activation until then (3.8x the plain graph's peak on SD's
    VAE decoder: 20 GB calibrating at 256x256). Sessions made meanwhile run in priority-based order
    (each reduction right after its tensor: the plain graph's peak) without the memory arena."""
    import onnxruntime.quantization.calibrate as calibrate

    base = calibrate.onnxruntime.SessionOptions
    order = getattr(ort.ExecutionOrder, "PRIORITY_BASED", None)

    class Lean(base):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.enable_cpu_mem_arena = False
            if order is not None:
                self.execution_order = order

    calibrate.onnxruntime.SessionOptions = Lean
    try:
        yield
    finally:
        calibrate.onnxruntime.SessionOptions = base


def _session(path: Path) -> ort.InferenceSession:
    """A CPU session for quantize's own runs, without onnxruntime's memory arena: an arena keeps
    the largest activations it ever held until the session dies, and measuring a 256x256 Stable
    Diffusion VAE holds four sessions at once (that was 20 GB of RSS); without it, memory goes
    back after each run."""
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


BATCH_VALUES = 1000 * 784  # image values one calibration or evaluation run holds at most (1,000 MNIST digits)


def images_per_batch(image_values: int, cap: int) -> int:
    """Images per run for a model of images of `image_values` values: `cap` for small images,
    down to one for large ones (a 512x512 Stable Diffusion VAE), so that the graphs' activations
    stay within a laptop's memory: calibration and evaluation stream one batch at a time."""
    return max(1, min(cap, BATCH_VALUES // max(1, int(image_values))))


def _batched(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], bs: int = 1000,
             values: int = 784) -> list[np.ndarray]:
    """The graph run on `feeds` in batches (of at most bs images, fewer for large images)."""
    n = len(next(iter(feeds.values())))
    bs = images_per_batch(values, bs)
    parts = [sess.run(None, {k: v[i : i + bs] for k, v in feeds.items()}) for i in range(0, n, bs)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def calibration_batches(manifest: dict, fp32_encoder: Path, qc: QuantizeConfig, data_dir, batch: int = 64,
                        user: UserData | None = None) -> dict:
    """Training images (MNIST's, or the user's calibration part) for the encoder; for the
    decoder, their latents q(z|x) and prior draws."""
    conditional = manifest["model"]["conditional"]
    rng = np.random.default_rng(qc.seed)
    if user is not None:
        x = user.calibration[: qc.calibration_size]
        y = np.zeros(len(x), np.int64)
    else:
        directory = resolve_data_dir(manifest.get("dataset", "mnist"), data_dir, split="train")
        images, labels = load_split(directory, "train")
        pool = max(len(images) - SELECTION_SIZE, len(images) // 2)  # the tail is held out for layer selection
        idx = rng.choice(pool, size=min(qc.calibration_size, pool), replace=False)
        x, y = to_float(images[idx]), labels[idx].astype(np.int64)
        if _binarized(manifest):  # calibrate on what the model was trained on
            x = binarize(x, seed=qc.seed)
    enc_feeds = {"x": x, **({"y": y} if conditional else {})}
    mu, logvar = _posterior(_batched(_session(fp32_encoder), enc_feeds, values=x[0].size))
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(np.float32)
    half = len(z) // 2
    z[half:] = rng.standard_normal((len(z) - half, *z.shape[1:])).astype(np.float32)
    dec_feeds = {"z": z.astype(np.float32), **({"y": y} if conditional else {})}

    def cut(feeds):
        n, size = len(next(iter(feeds.values()))), images_per_batch(x[0].size, batch)  # (any-size models: theirs)
        return [{k: v[i : i + size] for k, v in feeds.items()} for i in range(0, n, size)]

    return {"encoder": cut(enc_feeds), "decoder": cut(dec_feeds)}


@dataclass(frozen=True)
class UserData:
    """The user's images (--calibration-data), split once with the seed: calibration (half),
    the held-out set that chooses the layers kept in float (a quarter) and the accuracy set (a
    quarter), so no image is both calibrated on and judged by."""
    calibration: np.ndarray
    selection: np.ndarray
    evaluation: np.ndarray
    described: str

    @classmethod
    def split(cls, x: np.ndarray, seed: int, described: str) -> UserData:
        if len(x) < 4:
            raise VaeEdgeError(f"--calibration-data holds {len(x)} image(s); give at least 4 (half calibrate, a "
                               "quarter chooses the float layers, a quarter measures the accuracy)")
        x = x[np.random.default_rng(seed).permutation(len(x))]
        q = len(x) // 4
        return cls(x[: len(x) - 2 * q], x[len(x) - 2 * q: len(x) - q], x[len(x) - q:], described)

    def as_set(self, part: str, n: int) -> dict:
        x = getattr(self, part)[:n]
        return {"x": x, "y": np.zeros(len(x), np.int64), "binarized": False}


def weight_nodes(path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in WEIGHT_OPS]


def output_tail(path: Path) -> list[str]:
    """The nodes between the graph's outputs and the last weight layer before each of them, that
    layer included (walking back through every input of the ops in between)."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    tail, todo = [], [o.name for o in model.graph.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in tail:
            continue
        tail.append(node.name)
        if node.op_type not in WEIGHT_OPS:
            todo.extend(i for i in node.input if i and i not in initializers)
    return sorted(tail)


NORM_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization")


def float_by_design(path: Path) -> list[str]:
    """Nodes static int8 keeps in float: normalizations (onnxruntime's QDQ rewrite of a
    GroupNorm's InstanceNormalization writes an invalid graph) and products of two activations
    (attention's QK^T and AV: no weights to gain from, and the ranges of their inputs move with
    the image)."""
    g = onnx.load(str(path)).graph
    weights = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    return sorted(n.name for n in g.node if n.op_type in NORM_OPS
                  or (n.op_type == "MatMul" and not any(i in weights for i in n.input)))


def has_conv(path: Path) -> bool:
    return any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(path)).graph.node)


def _static(src: Path, dst: Path, reader: ArrayReader, qc: QuantizeConfig, exclude: list[str],
            cache: Path | None = None) -> None:
    """Static int8 of src; cache: a file for the calibration's ranges, computed on the first call
    and read by the next (choosing the layers kept in float rebuilds a graph up to six times;
    calibrating SD's VAE at 512x512 on 64 images takes minutes each time)."""
    reader.rewind()
    # onnxruntime's histogram calibrators print their progress ("Percentile : (0.001, 99.999)"):
    # kept out of the user's terminal, logged at debug level instead
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), _lean_calibration_sessions():
        _quantize_static(src, dst, reader, qc, exclude, cache)
    for line in buf.getvalue().splitlines():
        logger.debug("onnxruntime calibration: %s", line)


def _quantize_static(src: Path, dst: Path, reader: ArrayReader, qc: QuantizeConfig, exclude: list[str],
                     cache: Path | None = None) -> None:
    quantize_static(
        str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=qc.per_channel,
        reduce_range=qc.reduce_range,
        activation_type=QTYPES[qc.activation_type], weight_type=QTYPES[qc.weight_type],
        calibrate_method=METHODS[qc.method], nodes_to_exclude=exclude or None,
        extra_options={"ActivationSymmetric": qc.activation_type == "int8"},
        calibration_cache_path=None if cache is None else str(cache),
    )


DYNAMIC_OPS = ("MatMul", "Gemm")  # ConvInteger (dynamic Conv) ran 4x slower than fp32 here


def _dynamic(src: Path, dst: Path, qc: QuantizeConfig, exclude: list[str], only: list[str] | None = None) -> list[str]:
    """Dynamic int8 of the graph's MatMul/Gemm nodes (`only` those named, when given) but those in
    `exclude`. onnxruntime splits each Gemm into <name>_MatMul + Add before it reads the node
    lists, so each Gemm is named both ways (by its own name alone it would be quantized anyway)."""
    def both(names):
        return [*names, *(f"{n}_MatMul" for n in names)]

    root = logging.getLogger()  # "Please check if the model is already quantized": on a QDQ graph, by design
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=qc.per_channel,
            reduce_range=qc.reduce_range, weight_type=QTYPES["int8" if qc.weight_type == "int8" else "uint8"],
            nodes_to_exclude=both(exclude) or None, nodes_to_quantize=both(only) if only else None,
        )
    finally:
        root.setLevel(level)
    return list(DYNAMIC_OPS)


def _output_matmuls(path: Path, tail: list[str]) -> list[str]:
    """The MatMul/Gemm nodes of an output tail: those whose weights can be int8 with a float output."""
    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    return [n for n in tail if ops.get(n) in DYNAMIC_OPS]


FP16_MAX = 65504.0
FP16_HEADROOM = 4.0  # a value seen within 4x of fp16's largest keeps its node in fp32 (inputs vary)


def activation_ranges(src: Path, reader: ArrayReader, scratch: Path) -> dict[str, float]:
    """The largest |value| of every float tensor of the graph over the calibration data, in fp32
    (onnxruntime's min-max calibrator: only the reduced extremes are kept, batch by batch)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    reader.rewind()
    scratch.mkdir(parents=True, exist_ok=True)
    with _lean_calibration_sessions():
        cal = create_calibrator(str(src), None, augmented_model_path=str(scratch / "ranges.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(reader)
    out = {}
    for name, r in cal.compute_data().items():
        lo, hi = (r.range_value if hasattr(r, "range_value") else r)
        out[name] = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
    return out


def overflow_nodes(src: Path, ranges: dict[str, float], limit: float = FP16_MAX / FP16_HEADROOM) -> list[str]:
    """Nodes that must stay in fp32 for fp16 not to overflow: those producing or consuming a
    tensor whose range comes within FP16_HEADROOM of fp16's largest value (SDXL's VAE decoder is
    the known case: its activations pass 65504 and fp16 gives inf, then NaN)."""
    big = {t for t, v in ranges.items() if not np.isfinite(v) or v >= limit}
    return sorted({n.name for n in onnx.load(str(src)).graph.node
                   if big & set(n.output) or big & set(n.input)})


def _fp16(src: Path, dst: Path, block: list[str] | None = None) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=block or None)
    _skip_fp16_round_trips(model.graph)
    _topological(model.graph)  # the converter appends its input casts last; ONNX wants producers first
    onnx.save_model(model, str(dst), save_as_external_data=False)


def _skip_fp16_round_trips(graph) -> None:
    """Between two nodes kept in fp32 the converter casts to fp16 and back, which is exactly the
    overflow the nodes were kept for: the fp32 reader takes the fp32 value directly instead."""
    to_fp16 = {n.output[0]: n.input[0] for n in graph.node
               if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)}
    alias = {}
    for n in graph.node:
        if (n.op_type == "Cast" and n.input[0] in to_fp16
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)):
            alias[n.output[0]] = to_fp16[n.input[0]]  # fp32 -> fp16 -> fp32: the first fp32 value
    if not alias:
        return
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name in alias:
                n.input[k] = alias[name]
    outputs = {o.name for o in graph.output}
    while True:  # drop what no longer feeds anything
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)


def _topological(graph) -> None:
    """Reorder a graph's nodes so every node comes after the producers of its inputs (stable)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes, ordered = list(graph.node), []
    while nodes:
        ready = [n for n in nodes if all(i in known for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as it was
            ordered += nodes
            break
        for n in ready:
            known.update(n.output)
        ordered += ready
        nodes = [n for n in nodes if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


FINITE_CHECK_BATCHES = 4


def check_finite(path: Path, batches: list[dict[str, np.ndarray]], g: str) -> None:
    """The graph at `path` gives finite outputs on calibration batches, or one line.

    The fp32 range pass has already bounded every activation over all the calibration data; this
    runs the written fp16 graph itself on up to FINITE_CHECK_BATCHES batches spread over the data
    (fp16 runs on a CPU are slow: all 64 images of 512x512 took longer than the quantization)."""
    sess = _session(path)
    picks = sorted({round(i * (len(batches) - 1) / max(FINITE_CHECK_BATCHES - 1, 1))
                    for i in range(min(FINITE_CHECK_BATCHES, len(batches)))})
    for feeds in (batches[i] for i in picks):
        for o, v in zip(sess.get_outputs(), sess.run(None, feeds), strict=True):
            if not np.all(np.isfinite(v)):
                raise VaeEdgeError(f"fp16 gives non-finite values in the {g}'s {o.name} on the calibration data even "
                                   "with its overflowing layers in fp32: keep fp32 for this model, or use "
                                   "--mode static (int8)")


# ---------------------------------------------------------------------------------------------
# Accuracy against fp32
# ---------------------------------------------------------------------------------------------


def fp32_source(path: Path, scratch: Path) -> Path:
    """The fp32 graph the quantizers start from: `path` itself, or where its weights are stored as
    fp16 (+ Cast), a copy at `scratch` with them back in fp32 beside their MatMul/Conv nodes."""
    model = onnx.load(str(path))
    if not has_fp16_weights(model):
        return path
    onnx.save_model(fold_fp16_weights(model), str(scratch))
    return scratch


def _binarized(manifest: dict) -> bool:
    return ((manifest.get("training") or {}).get("train_config") or {}).get("binarize") == "dynamic"


def eval_set(manifest: dict, data_dir, n: int, split: str = "test") -> dict[str, np.ndarray]:
    """The MNIST test images (binarized with a fixed seed for models trained binarized); with
    split="train", the last n training images (the held-out selection set)."""
    directory = resolve_data_dir(manifest.get("dataset", "mnist"), data_dir, split=split)
    images, labels = load_split(directory, split)
    sl = slice(None, n) if split == "test" else slice(max(len(images) - n, 0), None)
    x = to_float(images[sl])
    binarized = _binarized(manifest)
    if binarized:
        x = binarize(x, seed=0)
    return {"x": x, "y": labels[sl].astype(np.int64), "binarized": binarized}


def selection_set(manifest: dict, data_dir, n: int) -> dict[str, np.ndarray]:
    return eval_set(manifest, data_dir, n, split="train")


def _posterior(outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) of an encoder's outputs; a deterministic encoder's (mu alone) has logvar -inf."""
    return (outs[0], outs[1]) if len(outs) > 1 else (outs[0], np.full_like(outs[0], -np.inf))


def measure_accuracy(bundle: Path, manifest: dict, paths: dict[str, Path], data: dict, seed: int = 0) -> dict:
    """Encoder mu max diff, decoder probs max diff and PSNR, end-to-end test -ELBO delta (nats)."""
    cond = manifest["model"]["conditional"]
    ref = variant_files(manifest, "fp32")
    x, y = data["x"], data["y"]
    extra = {"y": y} if cond else {}
    values = x[0].size  # (a model of any image size: these images' size)
    deterministic = manifest["model"].get("posterior") == "deterministic"
    mu_f, lv_f = _posterior(_batched(_session(bundle / ref["encoder"]), {"x": x, **extra}, values=values))
    mu_q, lv_q = _posterior(_batched(_session(paths["encoder"]), {"x": x, **extra}, values=values))
    eps = np.random.default_rng(seed).standard_normal(mu_f.shape).astype(np.float32)
    dec_f, dec_q = _session(bundle / ref["decoder"]), _session(paths["decoder"])
    model = manifest["model"]

    def decoded(sess, z) -> dict[str, np.ndarray]:
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, _batched(sess, {"z": z, **extra}, values=values), strict=True))

    def neg_elbo(sess, mu, lv) -> float:
        out = decoded(sess, (mu + np.exp(0.5 * lv) * eps).astype(np.float32))
        nll = decoder_nll(out, x, model.get("likelihood", "bernoulli"), model.get("sigma"))
        if deterministic:  # no posterior: the reconstruction's -log p(x | z = mu) alone
            return float(np.mean(nll))
        return float(np.mean(nll + kl_to_prior(mu.reshape(len(mu), -1), lv.reshape(len(lv), -1))))

    # decoder alone, on the same (fp32) latents
    probs_f, probs_q = decoded(dec_f, mu_f)["probs"], decoded(dec_q, mu_f)["probs"]
    # end to end: each pipeline's own encoder and decoder, same noise
    elbo_f, elbo_q = neg_elbo(dec_f, mu_f, lv_f), neg_elbo(dec_q, mu_q, lv_q)
    return {
        "test_images": len(x),
        "binarized": bool(data["binarized"]),
        "encoder_mu_max_abs_diff": float(np.max(np.abs(mu_q - mu_f))),
        "decoder_probs_max_abs_diff": float(np.max(np.abs(probs_q - probs_f))),
        # identical outputs (every layer kept in float) give an infinite PSNR, which JSON cannot
        # hold: recorded as float32's resolution instead (one unit in the last place of 1.0)
        "decoder_psnr_db": round(min(float(psnr(probs_q, probs_f)), PSNR_IDENTICAL), 2),
        "neg_elbo_fp32": round(elbo_f, 4),
        "neg_elbo": round(elbo_q, 4),
        "neg_elbo_delta": round(elbo_q - elbo_f, 4),
    }


def within_budget(acc: dict) -> bool:
    return bool(abs(acc["neg_elbo_delta"]) <= MAX_ELBO_DELTA and acc["decoder_psnr_db"] >= MIN_PSNR)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def plan(manifest: dict, bundle: Path, qc: QuantizeConfig) -> dict[str, str]:
    """Per graph: static, dynamic or fp16. auto: convolutional graphs static with uint8
    activations (int8 activations and dynamic ConvInteger were both slower than fp32 on x86
    here), MatMul/Gemm-only graphs dynamic."""
    ref = variant_files(manifest, "fp32")
    if qc.mode == "fp16":
        return dict.fromkeys(GRAPHS, "fp16")
    if qc.mode in ("static", "dynamic"):
        return dict.fromkeys(GRAPHS, qc.mode)
    return {g: ("static" if has_conv(bundle / ref[g]) else "dynamic") for g in GRAPHS}


def variant_name(methods: dict[str, str], target: str = "x86") -> str:
    """int8-dynamic, int8-static, int8-mixed or fp16; with a target suffix (int8-dynamic-arm64)
    when that target's settings differ from x86's."""
    kinds = set(methods.values())
    if kinds == {"fp16"}:
        return "fp16"
    base = f"int8-{next(iter(kinds))}" if len(kinds) == 1 else "int8-mixed"
    return f"{base}-{target}" if differs_from_x86(target, kinds) else base


def quantize_bundle(bundle: str | os.PathLike, qc: QuantizeConfig, data_dir=None, log=None,
                    explicit: set[str] = frozenset(), calibration_data: np.ndarray | None = None,
                    calibration_label: str = "the user's images") -> tuple[str, dict]:
    """Add one quantized variant to a bundle; returns (variant name, its manifest entry).
    qc.target's settings apply to the fields not named in `explicit` (those the user set).
    calibration_data: the user's images [N, C, H, W] in [0, 1] (needed for a bundle that is not
    MNIST's: they calibrate, choose the float layers and measure the accuracy, each on its own part).
    The bundle is locked throughout: a second writer fails at once instead of losing an update."""
    user = None if calibration_data is None else UserData.split(calibration_data, qc.seed, calibration_label)
    with locked(bundle, "quantize"):
        return _quantize_bundle(Path(bundle), qc, data_dir, log or logger.info, explicit, user)


@dataclass
class _Job:
    """One quantization run, phase to phase (the way Optimum's ORTQuantizer goes fit ->
    compute ranges -> quantize): prepare, calibrate, build each graph, choose the layers kept in
    float, record."""
    bundle: Path
    manifest: dict
    qc: QuantizeConfig
    methods: dict[str, str]
    variant: str
    tmp: Path
    log: Callable[[str], None]
    ref: dict = field(default_factory=dict)  # graph -> fp32 file name
    src: dict = field(default_factory=dict)  # graph -> the fp32 graph quantizers start from
    pre: dict = field(default_factory=dict)  # graph -> pre-processed graph
    out: dict = field(default_factory=dict)  # graph -> the quantized graph
    calib: dict | None = None
    excluded: dict = field(default_factory=dict)  # graph -> layers in float, weights included
    tails: dict = field(default_factory=dict)  # graph -> output tail (static, float outputs)
    by_design: dict = field(default_factory=dict)  # graph -> nodes static int8 keeps in float (float_by_design)
    tail_matmuls: dict = field(default_factory=dict)  # graph -> its MatMul/Gemm (int8 weights, float output)
    details: dict = field(default_factory=dict)
    user: UserData | None = None  # --calibration-data, split; None: MNIST


def _quantize_bundle(bundle: Path, qc: QuantizeConfig, data_dir, log, explicit, user) -> tuple[str, dict]:
    manifest = load_manifest(bundle)
    model = Manifest.from_dict(manifest).model
    shape = model.image_shape
    if user is None and manifest.get("dataset", "mnist") not in ("mnist", "fashion-mnist"):
        raise VaeEdgeError(f"this bundle's model takes {list(shape)} images, not MNIST's: give --calibration-data "
                           "(images it was made for; they calibrate and measure the accuracy)")
    f = model.spatial_factor
    if f and user is not None:  # any size: the model's channels and multiples of its factor
        c, h, w = user.calibration.shape[1:]
        if c != shape[0] or h % f or w % f:
            raise VaeEdgeError(f"--calibration-data holds {[c, h, w]} images; this model takes {shape[0]} channels "
                               f"and sides that are multiples of {f}")
    elif user is not None and user.calibration.shape[1:] != tuple(shape):
        raise VaeEdgeError(f"--calibration-data holds {list(user.calibration.shape[1:])} images; this model takes "
                           f"{list(shape)}")
    remove_orphans(bundle, manifest, log)
    ref = variant_files(manifest, "fp32")
    verify_files(bundle, manifest, list(ref.values()))
    methods = plan(manifest, bundle, qc)
    qc = qc.for_target(set(methods.values()), explicit)
    tmp = Path(tempfile.mkdtemp(dir=bundle.parent, prefix=f".{bundle.name}.quantize-"))  # outside the bundle
    job = _Job(bundle, manifest, qc, methods, variant_name(methods, qc.target), tmp, log, ref=ref, user=user)
    try:
        _prepare(job)
        _calibrate(job, data_dir)
        _build_all(job)
        # Which layers stay in float is decided on held-out training images (never used for
        # calibration); the accuracy recorded is measured on the test set only at the end.
        if user is None:
            select = selection_set(manifest, data_dir, min(SELECTION_SIZE, qc.eval_size))
            judge = eval_set(manifest, data_dir, qc.eval_size)
        else:
            select = user.as_set("selection", min(SELECTION_SIZE, qc.eval_size))
            judge = user.as_set("evaluation", qc.eval_size)
        _choose_float_layers(job, select)
        acc = measure_accuracy(bundle, manifest, job.out, judge)
        entry = _record(job, acc, len(select["x"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return job.variant, entry


def _prepare(job: _Job) -> None:
    """Each graph's fp32 source and, for int8, onnxruntime's pre-processing of it."""
    for g in GRAPHS:
        job.src[g] = fp32_source(job.bundle / job.ref[g], job.tmp / f"{g}.fp32.onnx")
        if job.methods[g] == "fp16":  # fp16 converts the original graph
            continue
        job.pre[g] = job.tmp / f"{g}.pre.onnx"
        src = _without_value_info(job.src[g], job.tmp / f"{g}.novi.onnx")
        try:  # in the temp folder: a failing symbolic inference saves its model to the cwd
            with contextlib.chdir(job.tmp):
                quant_pre_process(str(src.resolve()), str(job.pre[g].resolve()), skip_symbolic_shape=False)
        except Exception:  # onnxruntime's symbolic shape inference gives up on some graphs
            # (the one-hot planes of --cond-planes): ONNX's own shape inference suffices
            quant_pre_process(str(src), str(job.pre[g]), skip_symbolic_shape=True)
    qc = job.qc
    job.excluded = {g: list(qc.exclude.get(g, [])) for g in GRAPHS}
    job.tails = {g: output_tail(job.pre[g]) if job.methods[g] == "static" and qc.float_outputs else []
                 for g in GRAPHS}
    job.tail_matmuls = {g: _output_matmuls(job.pre[g], t) if t else [] for g, t in job.tails.items()}
    job.by_design = {g: float_by_design(job.pre[g]) if job.methods[g] == "static" else [] for g in GRAPHS}


def _without_value_info(src: Path, dst: Path) -> Path:
    """The graph without its intermediate shape annotations. torch's exporter writes them for
    every value; the quantizer's rewrites (diffusers' GroupNorm, reshaped to [N, groups, -1] and
    back) leave some stale, and onnxruntime then fuses a QLinearConv against a wrong shape
    ("Attribute dilations has incorrect size"). Shape inference writes them again, correctly."""
    m = onnx.load(str(src))
    if not len(m.graph.value_info):
        return src
    del m.graph.value_info[:]
    onnx.save_model(m, str(dst), save_as_external_data=False)
    return dst


def _calibrate(job: _Job, data_dir) -> None:
    if {"static", "fp16"} & set(job.methods.values()):
        what = (f"{min(job.qc.calibration_size, len(job.user.calibration))} of {job.user.described}" if job.user
                else f"{job.qc.calibration_size} MNIST training images")
        how = job.qc.method if "static" in job.methods.values() else "activation ranges for fp16"
        job.log(f"calibrating on {what} ({how})")
        job.calib = calibration_batches(job.manifest, job.bundle / job.ref["encoder"], job.qc, data_dir,
                                        user=job.user)


class QuantizerFailed(VaeEdgeError):
    """onnxruntime's quantizer could not quantize a graph this way."""


def _build_all(job: _Job) -> None:
    """Every graph; in auto mode a graph static int8 fails on (onnxruntime's quantizer on the
    attention block of diffusers' AutoencoderKL, say) falls back to dynamic int8, with a note."""
    for g in GRAPHS:
        job.log(f"quantizing {g}: {job.methods[g]}")
        try:
            _build(job, g)
        except QuantizerFailed as e:
            if job.qc.mode != "auto" or job.methods[g] != "static":
                raise
            logger.warning("note: %s; falling back to dynamic int8 for the %s", str(e).split(": try")[0], g)
            job.methods[g] = "dynamic"
            _build(job, g)
    name = variant_name(job.methods, job.qc.target)
    if name != job.variant:  # a fallback changed what the variant is: its files are named after it
        job.variant = name
        for g in GRAPHS:
            _build(job, g)


def _build(job: _Job, g: str) -> None:
    """Quantize graph g with the current choice of float layers."""
    qc, method, pre = job.qc, job.methods[g], job.pre.get(g)
    out = job.out[g] = job.tmp / variant_filename(g, job.variant)
    excluded = job.excluded[g]
    if method == "static":
        try:  # onnxruntime's quantizer can fail on, or write an invalid graph from, some graphs
            _static(pre, out, ArrayReader(job.calib[g]), qc,
                    sorted(set(excluded) | set(job.tails[g]) | set(job.by_design[g])), job.tmp / f"{g}.ranges.json")
            _session(out)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QuantizerFailed(f"onnxruntime's static quantizer failed on the {g} ({first[:160]}): "
                                  "try --mode dynamic (MatMul/Gemm weights only)") from None
        hybrid = [n for n in job.tail_matmuls[g] if n not in excluded]
        if hybrid:  # uint8 weights: exact on every CPU (int8 ones take KleidiAI's SME path on ARM)
            _dynamic(out, out, replace(qc, weight_type="uint8", per_channel=False), [], only=hybrid)
        d = {"method": "static", "format": "QDQ", "float_output_int8_weights": hybrid}
    elif method == "dynamic":
        d = {"method": "dynamic", "op_types": _dynamic(pre, out, qc, excluded)}
    else:
        ranges = activation_ranges(_without_value_info(job.src[g], job.tmp / f"{g}.novi.onnx"),
                                   ArrayReader(job.calib[g]), job.tmp / f"{g}.ranges")
        block = overflow_nodes(job.src[g], ranges)
        _fp16(job.src[g], out, block)
        check_finite(out, job.calib[g], g)
        d = {"method": "fp16", "io_types": "float32",
             "overflow_guard": {"largest_activation": max(ranges.values(), default=0.0),
                                "limit": FP16_MAX / FP16_HEADROOM, "kept_in_fp32": block}}
    d["kept_in_float"] = sorted((set(excluded) | set(job.tails[g])) - set(d.get("float_output_int8_weights", [])))
    if job.by_design.get(g) and method == "static":
        d["float_by_design"] = job.by_design[g]
    if method != "fp16" and job.src[g] != job.bundle / job.ref[g]:
        # The fp32 graph stores fp16 values: the layers kept in float keep that storage
        # (lossless, and onnxruntime folds the Casts at load), else they would double in size.
        m = weights_as_fp16(onnx.load(str(out)))  # int8 weights, scales, int32 biases: untouched
        if has_fp16_weights(m):
            onnx.save_model(m, str(out), save_as_external_data=False)
            d["float_weights_storage"] = "float16"
    job.details[g] = d


def _choose_float_layers(job: _Job, select: dict) -> None:
    """Where the accuracy budget is missed, keep the most costly weight layer (last, then first)
    in float, graph by graph, each set of layers tried once."""
    acc = measure_accuracy(job.bundle, job.manifest, job.out, select)
    job.log(f"  -ELBO delta {acc['neg_elbo_delta']:+.3f}, PSNR {acc['decoder_psnr_db']:.1f} dB "
            f"on {len(select['x'])} held-out {'training images' if job.user is None else 'images of your data'}")
    if set(job.methods.values()) == {"fp16"} or within_budget(acc):
        return
    for g in ("decoder", "encoder"):
        if job.methods[g] == "fp16" or within_budget(acc):
            continue
        nodes = weight_nodes(job.pre[g])
        in_float = set(job.excluded[g]) | (set(job.tails[g]) - set(job.tail_matmuls[g]))
        tried = []
        for trial in ([nodes[-1]], [nodes[0]], [nodes[0], nodes[-1]]):
            saved = list(job.excluded[g])
            floats = in_float | set(saved) | set(trial)
            if floats == in_float | set(saved) or set(nodes) <= floats or floats in tried:
                continue  # already float (a conv output layer), nothing left in int8, or tried
            tried.append(floats)
            job.excluded[g] = sorted(set(saved) | set(trial))
            _build(job, g)
            trial_acc = measure_accuracy(job.bundle, job.manifest, job.out, select)
            job.log(f"  {g} with {job.excluded[g]} in float: -ELBO delta {trial_acc['neg_elbo_delta']:+.3f}, "
                    f"PSNR {trial_acc['decoder_psnr_db']:.1f} dB")
            if within_budget(trial_acc) or _better(trial_acc, acc):
                acc = trial_acc
                if within_budget(acc):
                    break
            else:
                job.excluded[g] = saved
                _build(job, g)


def _record(job: _Job, acc: dict, n_select: int) -> dict:
    """The variant's manifest entry; its files moved in beside the old ones (under fresh names
    when a variant is re-made) and the manifest written last, and only then are files no variant
    uses removed: a crash at any point leaves a bundle whose manifest matches its files."""
    bundle, qc, out = job.bundle, job.qc, job.out
    names = {g: fresh_name(bundle, out[g].name, sha256_file(out[g])) for g in GRAPHS}
    sizes = {g: out[g].stat().st_size for g in GRAPHS}
    fp32_sizes = {g: (bundle / job.ref[g]).stat().st_size for g in GRAPHS}
    entry = {
        "files": names,
        "dtype": "float16" if job.variant == "fp16" else "int8",
        "quantization": {
            "config": {k: v for k, v in asdict(qc).items() if k not in ("exclude", "eval_size")},
            "graphs": job.details,
            "preprocess": "onnxruntime quant_pre_process (symbolic shape inference + basic optimization)",
            "float_layer_selection": (f"on the last {n_select} training images (held out from calibration); "
                                      "accuracy below is on the test set") if job.user is None else
                                     (f"on {n_select} held-out images of {job.user.described}; accuracy below on "
                                      f"another {len(job.user.evaluation)} of them"),
            "calibration": None if job.calib is None else {
                "encoder": (f"{qc.calibration_size} MNIST training images" if job.user is None else
                            f"{min(qc.calibration_size, len(job.user.calibration))} images of {job.user.described}"),
                "decoder": "latents q(z|x) of those images (half) and draws from the N(0, I) prior (half)",
            },
        },
        "accuracy": acc,
        "within_budget": within_budget(acc),
        "size_bytes": sizes,
        "size_ratio_to_fp32": round(sum(sizes.values()) / sum(fp32_sizes.values()), 4),
    }
    entry["golden"] = selfcheck.record(job.manifest, entry, selfcheck.session_runner(dict(out)))
    entry["target"] = qc.target
    if job.variant != "fp16":  # fp16 is for GPUs: on a CPU it is no faster than fp32, never a CPU target's choice
        job.manifest.setdefault("targets", {})[qc.target] = {
            "variant": job.variant, "settings": target_settings(qc.target, set(job.methods.values())),
            "why": TARGETS[qc.target]["why"]}
    if note := portability_note(qc, entry):
        logger.warning(note)  # shown with -q too
    json.dumps(entry)  # fail before anything in the bundle changes
    for g in GRAPHS:
        os.replace(out[g], bundle / names[g])
    fsync_dir(bundle)
    add_variant(bundle, job.manifest, job.variant, entry, log=job.log)
    return entry


def portability_note(qc: QuantizeConfig, entry: dict) -> str | None:
    """A variant for every x86 CPU with 8-bit weights, made on a CPU with VNNI: CPUs without VNNI
    saturate its u8 x s8 products (their self-check then refuses it and `--variant auto` takes
    the next variant). Measured under emulation (tests/test_x86_avx2.py): the test MLP's mu moved
    by 0.14 on an AVX2 CPU."""
    from vae_edge.runtime.sysinfo import x86_family

    if qc.target != "x86" or entry["dtype"] != "int8" or qc.reduce_range or qc.weight_type != "int8":
        return None
    if x86_family() != "x86-vnni":
        return None
    return ("note: made on a CPU with VNNI with 8-bit weights: x86 CPUs without VNNI (AVX2 only) may compute it "
            "differently and refuse it at load; for those, also run quantize --target x86-avx2 (7-bit weights)")


def _better(a: dict, b: dict) -> bool:
    return abs(a["neg_elbo_delta"]) < abs(b["neg_elbo_delta"]) and a["decoder_psnr_db"] >= b["decoder_psnr_db"]
