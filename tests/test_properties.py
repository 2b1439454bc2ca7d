"""Property-based tests: arbitrary bytes either work or raise the project's own error type, for
every reader that takes outside input (manifest, signature, whole bundle folders, ONNX graphs'
external-data scan, .npy arrays, images, IDX files). A fuzz run with a fixed seed and a count:
hypothesis runs derandomized, VAE_EDGE_FUZZ_EXAMPLES examples per test (150 by default, about
20 s for the whole file here); raise it for a longer run."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.data import read_idx
from vae_edge.runtime.bundle import SCHEMA, SCHEMA_VERSION, BundleError, parse_manifest
from vae_edge.runtime.images import load_image, preprocess

FUZZ_EXAMPLES = int(os.environ.get("VAE_EDGE_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

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


# --- signatures, bundle folders, graphs, arrays --------------------------------------------------------

@SETTINGS
@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"mediaType": st.just("application/vnd.dev.sigstore.bundle.v0.3+json"),
                                        "dsseEnvelope": json_values, "verificationMaterial": json_values})
                 .map(lambda v: json.dumps(v).encode())))
def test_signature_from_arbitrary_bytes(raw):
    from vae_edge.runtime import trust

    try:
        _, payload, _ = trust.read_envelope(raw, "fuzz")
        trust.signed_digests(payload, "fuzz")
    except VaeEdgeError:
        return


@SETTINGS
@given(st.binary(max_size=600))
def test_external_data_scan_of_arbitrary_bytes(raw):
    from vae_edge.runtime.graphcheck import GraphError, external_data

    try:
        refs = external_data(raw)
    except GraphError:
        return
    assert isinstance(refs, list)


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory, bundles):
    from vae_edge.runtime.trust import keygen, sign_bundle

    root = tmp_path_factory.mktemp("fuzz-signed")
    priv, pub = keygen(root / "k.priv.pem", root / "k.pub.pem")
    b = root / "b"
    shutil.copytree(bundles["mlp"], b)
    sign_bundle(b, priv)
    return b, pub


@SETTINGS
@given(which=st.sampled_from(["manifest.json", "model.sig", "decoder.onnx", "encoder.onnx"]),
       at=st.integers(0, 10**7), byte=st.integers(0, 255), cut=st.booleans())
def test_damaged_signed_bundle_is_refused_or_loads_the_same(tmp_path_factory, signed_bundle, which, at, byte, cut):
    from vae_edge.runtime import VAERuntime

    src, pub = signed_bundle
    b = tmp_path_factory.mktemp("fz") / "b"
    shutil.copytree(src, b)
    data = bytearray((b / which).read_bytes())
    i = at % len(data)
    if cut:
        data = data[:i]
    else:
        data[i] = byte
    (b / which).write_bytes(bytes(data))
    changed = bytes(data) != (src / which).read_bytes()
    try:
        rt = VAERuntime.load(b, trusted_key=pub)
    except VaeEdgeError as e:
        assert "\n" not in str(e)
        return
    assert not changed, "a changed signed bundle loaded"
    assert rt.signature == "verified"


@SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda descr, shape, body: _npy(descr, shape) + body,
              st.sampled_from(["<f4", "<f8", "|u1", "<i8", "<c8", "<U5", "|O", "|b1", ">f4", "<V4", "<f2"]),
              st.lists(st.integers(0, 2**40), max_size=3).map(tuple), st.binary(max_size=200)),
))
def test_npy_from_arbitrary_bytes(raw):
    from vae_edge.runtime.images import load_npy

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "z.npy"
        p.write_bytes(raw)
        try:
            arr = load_npy(p)
        except VaeEdgeError:
            return
    assert isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf"


def _npy(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["x.npy", "y.npy", "../x.npy", "/abs/x.npy", "x", "a/x.npy"]),
                          st.one_of(st.binary(max_size=120),
                                    st.builds(lambda d, s, b: _npy(d, s) + b,
                                              st.sampled_from(["<f4", "|u1", "<c8", "|O", "<f8"]),
                                              st.lists(st.integers(0, 2**33), max_size=3).map(tuple),
                                              st.binary(max_size=200)))),
                min_size=0, max_size=4),
       st.booleans(), st.integers(0, 400), st.integers(0, 255))
def test_npz_from_arbitrary_members(members, deflate, at, byte):
    """An archive of arbitrary members (names that point outside too), possibly with one byte
    changed: images from the archive's own data, or one VaeEdgeError."""
    import warnings
    import zipfile

    from vae_edge.runtime.images import images_from_npz

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names
            with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
                for name, data in members:
                    z.writestr(name, data)
        raw = bytearray(p.read_bytes())
        if raw and byte:
            raw[at % len(raw)] ^= byte
        p.write_bytes(bytes(raw))
        try:
            x = images_from_npz(p)
        except VaeEdgeError:
            return
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 28, 28)


@pytest.fixture(scope="module")
def vaez_file() -> tuple[object, bytes]:
    from vae_edge.runtime import VAERuntime
    from vae_edge.runtime.compress import compress

    rt = VAERuntime.load("mlp-mnist")
    x = (np.random.default_rng(0).random((6, 1, 28, 28)) < 0.2).astype(np.float32)
    return rt, compress(rt, x)


@SETTINGS
@given(st.integers(0, 400), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4]), st.booleans())
def test_vaez_header_fuzz(vaez_file, at, value, width, fix_crc):
    """Any header field overwritten with any value (the CRC recomputed, as an attacker would):
    the original images, or one CompressError, quickly."""
    import time
    import zlib

    from vae_edge.runtime.compress import CompressError, decompress

    rt, data = vaez_file
    raw = bytearray(data)
    at = at % max(1, len(raw) - 4 - width)
    raw[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    if fix_crc:
        raw[-4:] = struct.pack("<I", zlib.crc32(bytes(raw[:-4])))
    t0 = time.perf_counter()
    try:
        x = decompress(rt, bytes(raw))
    except CompressError:
        assert time.perf_counter() - t0 < 10
        return
    assert x.shape == (6, 1, 28, 28)
