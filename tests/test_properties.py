"""Property-based tests: arbitrary bytes either work or raise the project's own error type, for
the three readers that take outside input (manifest, images, IDX files)."""

from __future__ import annotations

import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.data import read_idx
from vae_edge.runtime.bundle import SCHEMA, SCHEMA_VERSION, BundleError, parse_manifest
from vae_edge.runtime.images import load_image, preprocess

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
names = st.sampled_from(["encoder.onnx", "decoder.onnx", "../x.onnx", "/etc/passwd", "a/b", "", "..", "ok.onnx"])


@SETTINGS
@given(st.binary(max_size=400))
def test_manifest_from_arbitrary_bytes(raw):
    try:
        m = parse_manifest(raw, "fuzz")
    except BundleError:
        return
    assert isinstance(m, dict) and m["schema"] == SCHEMA


@SETTINGS
@given(files=st.dictionaries(names, json_values | st.fixed_dictionaries(
           {"sha256": st.text(max_size=64), "size": st.integers()}), max_size=3),
       variants=st.dictionaries(st.text(max_size=12), json_values | st.fixed_dictionaries(
           {"files": st.dictionaries(st.sampled_from(["encoder", "decoder", "x"]), names, max_size=3)}), max_size=3),
       model=json_values)
def test_manifest_structure_fuzz(files, variants, model):
    raw = json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "files": files,
                      "variants": variants, "model": model}).encode()
    try:
        m = parse_manifest(raw, "fuzz")
    except BundleError:
        return
    # whatever passes names only plain, listed files
    for v in m["variants"].values():
        for name in v["files"].values():
            assert name in m["files"] and "/" not in name and name not in ("", ".", "..")


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


@SETTINGS
@given(st.one_of(
    st.binary(max_size=600),
    st.builds(lambda a: _png_bytes(a, "L"), st.integers(1, 40).flatmap(
        lambda h: st.integers(1, 40).flatmap(lambda w: st.binary(min_size=h * w, max_size=h * w).map(
            lambda b: np.frombuffer(b, np.uint8).reshape(h, w))))),
    st.builds(lambda b, cut: b[:cut], st.just(_png_bytes(np.full((30, 30), 200, np.uint8), "L")), st.integers(0, 200)),
))
def test_image_from_arbitrary_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "in.png"
        p.write_bytes(raw)
        try:
            x = load_image(p)
        except VaeEdgeError:
            return
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1


@SETTINGS
@given(st.sampled_from(["L", "RGB", "RGBA", "I", "F", "1", "P", "LA"]), st.integers(1, 64), st.integers(1, 64),
       st.integers(0, 2**32 - 1))
def test_preprocess_any_mode_and_size(mode, h, w, seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    x = preprocess(img)
    assert x.shape == (1, 28, 28) and np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1


@SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda code, dims, body: bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body,
              st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
              st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=4),
              st.binary(max_size=200)),
))
@example(b"\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(200)))  # as a gzip body: zlib.error, once uncaught
def test_idx_from_arbitrary_bytes(raw):
    import gzip

    with tempfile.TemporaryDirectory() as d:
        for data, name in ((raw, "x.idx"), (gzip.compress(raw), "x.idx.gz"), (b"\x1f\x8b" + raw, "bad.gz")):
            p = Path(d) / name
            p.write_bytes(data)
            try:
                arr = read_idx(p)
            except VaeEdgeError:
                continue
            assert isinstance(arr, np.ndarray) and arr.ndim == raw[3]
