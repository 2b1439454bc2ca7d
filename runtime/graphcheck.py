"""What a graph must be before it runs: self-contained, and with the inputs and outputs the
manifest describes. numpy-free, torch-free, onnx-free (the ONNX protobuf is walked by hand).

External data: an ONNX graph may keep tensors in separate files, which onnxruntime then opens by
a path relative to the current directory, outside the bundle's hashes and its signature. vae-edge
refuses such graphs at load, at sign and at export time: every graph of a bundle keeps its
weights inside itself (bundles stay small enough for that: the shipped graphs are at most 3 MB).
"""

from __future__ import annotations

from vae_edge import VaeEdgeError
from vae_edge.runtime.mathops import EIGHT_BIT

# Field numbers of onnx.proto3 (ModelProto and the messages that can hold a TensorProto).
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _TENSOR_NAME = 13, 14, 8
_SCHEMA = {"model": _MODEL, "training": _TRAINING, "function": _FUNCTION, "graph": _GRAPH, "node": _NODE,
           "attribute": _ATTRIBUTE, "sparse": _SPARSE}
_MAX_DEPTH = 64


class GraphError(VaeEdgeError):
    pass


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise GraphError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value): ints for varints, memoryviews for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise GraphError("truncated field")
            value, i = buf[i : i + length], i + length
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise GraphError(f"unsupported wire type {wire}")
        if i > n:
            raise GraphError("truncated field")
        yield field, wire, value


def _tensor_external(buf: memoryview) -> str | None:
    name, location, external = "", 0, None
    for field, wire, value in _fields(buf):
        if field == _TENSOR_DATA_LOCATION and wire == 0:
            location = value
        elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
            for f, w, v in _fields(value):
                if f == 2 and w == 2 and external is None:  # StringStringEntryProto.value of "location"
                    external = bytes(v).decode("utf-8", "replace")
        elif field == _TENSOR_NAME and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
    if location == 1 or external is not None:
        return f"{name or '?'} -> {external or '?'}"
    return None


def _walk(buf: memoryview, kind: str, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise GraphError("graphs nested too deeply")
    schema = _SCHEMA[kind]
    for field, wire, value in _fields(buf):
        sub = schema.get(field)
        if sub is None or wire != 2:
            continue
        if sub == "tensor":
            ref = _tensor_external(value)
            if ref is not None:
                out.append(ref)
        else:
            _walk(value, sub, out, depth + 1)


def external_data(model: bytes) -> list[str]:
    """The tensors of an ONNX model that live outside it ('name -> file'); [] for a
    self-contained graph. Raises GraphError if the bytes are not a protobuf at all."""
    out: list[str] = []
    _walk(memoryview(model), "model", out, 0)
    return out


def refuse_external_data(model: bytes, where: object) -> None:
    try:
        refs = external_data(model)
    except GraphError as e:
        raise GraphError(f"{where} is not an ONNX graph ({e})") from None
    if refs:
        raise GraphError(
            f"{where} keeps {len(refs)} tensor(s) in external data files ({refs[0]}), outside the bundle's "
            "checksums and signature: refused; save the graph with its weights inside "
            "(onnx.save_model(m, path, save_as_external_data=False))")


# ---------------------------------------------------------------------------------------------
# Inputs and outputs against the manifest
# ---------------------------------------------------------------------------------------------

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(bool)": "bool"}


REQUIRED = {"encoder": {"inputs": {"x"}, "outputs": {"mu", "logvar"}},
            "decoder": {"inputs": {"z"}, "outputs": {"logits", "probs"}}}  # a Gaussian decoder: probs (its mean)


def check_io(sess, spec: dict, where: object, graph: str = "", likelihood: str = "bernoulli",
             deterministic: bool = False) -> None:
    """The session's inputs and outputs have the names, dtypes and shapes that the manifest's
    graph description gives (symbolic dimensions such as 'batch' match any size)."""
    if not isinstance(spec, dict) or not spec.get("inputs") or not spec.get("outputs"):
        raise GraphError(f"{where}: the manifest does not describe this graph's inputs and outputs (refused)")
    for kind, got in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
        want = {t.get("name"): t for t in spec[kind] if isinstance(t, dict)}
        have = {t.name: t for t in got}
        if set(want) != set(have):
            raise GraphError(f"{where}: its {kind} are {sorted(have)}, but the manifest describes {sorted(want)}; "
                             "the graph does not belong to this manifest (refused)")
        needed = REQUIRED.get(graph, {}).get(kind, set())
        if likelihood != "bernoulli":
            needed = needed - {"logits"}
        if likelihood in EIGHT_BIT and graph == "decoder" and kind == "outputs":
            needed = needed | {"log_scale"}  # the discretized logistic's mean (probs) and log-scale
        if likelihood == "logistic-ar" and graph == "decoder" and kind == "outputs":
            needed = needed | {"context"}  # and the weights of each value's neighbours
        if deterministic:  # an encoder that gives the latents alone (the manifest says so)
            needed = needed - {"logvar"}
        if not needed <= set(have):
            raise GraphError(f"{where}: a vae-edge {graph} needs the {kind} {sorted(needed)}, this one has "
                             f"{sorted(have)} (refused)")
        for name, t in have.items():
            dtype = _ORT_TYPES.get(t.type, t.type)
            if dtype != want[name]["dtype"]:
                raise GraphError(f"{where}: {kind[:-1]} {name} is {dtype}, the manifest says {want[name]['dtype']} "
                                 "(refused)")
            shape, wshape = list(t.shape), list(want[name]["shape"])
            fixed = [(a, b) for a, b in zip(shape, wshape, strict=False) if isinstance(a, int) and isinstance(b, int)]
            if len(shape) != len(wshape) or any(a != b for a, b in fixed):
                raise GraphError(f"{where}: {kind[:-1]} {name} has shape {shape}, the manifest says {wshape} (refused)")
