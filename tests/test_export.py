from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vae_edge import VaeEdgeError
from vae_edge.export import export_bundle, onnx_export
from vae_edge.runtime.bundle import load_manifest, verify_files


@pytest.mark.parametrize("name", ["mlp", "conv", "mlp-cond"])
def test_bundle_layout_and_validation(bundles, name):
    b = bundles[name]
    m = load_manifest(b)
    verify_files(b, m)
    # models that compress (unconditional, Bernoulli) also carry the integer network of the coder
    portable = [] if name == "mlp-cond" else ["portable.npz"]
    assert sorted(p.name for p in b.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json", *portable]
    val = m["variants"]["fp32"]["validation"]
    assert val["batch_sizes"] == [1, 7, 256]
    assert max(val["max_abs_diff"]["decoder"].values()) <= 1e-4
    assert max(val["max_abs_diff"]["encoder"].values()) <= 1e-4
    enc = onnx.load(str(b / "encoder.onnx"))
    assert enc.opset_import[0].version >= 17
    assert {p.key: p.value for p in enc.metadata_props}["graph"] == "encoder"
    ins = [i.name for i in enc.graph.input]
    assert ins == (["x", "y"] if name == "mlp-cond" else ["x"])
    assert [o.name for o in enc.graph.output] == ["mu", "logvar"]
    dec = onnx.load(str(b / "decoder.onnx"))
    assert [o.name for o in dec.graph.output] == ["logits", "probs"]
    assert "sha256" in m["files"]["encoder.onnx"] and m["preprocessing"]["input"].startswith("float32")


def test_no_sampling_in_encoder_graph(bundles):
    ops = {n.op_type for n in onnx.load(str(bundles["conv"] / "encoder.onnx")).graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}


def test_conv_decoder_uses_resize_and_subpixel_not_convtranspose(bundles):
    ops = [n.op_type for n in onnx.load(str(bundles["conv"] / "decoder.onnx")).graph.node]
    assert "Resize" in ops and "DepthToSpace" in ops and "ConvTranspose" not in ops


def test_dynamic_batch_is_really_dynamic(bundles):
    sess = ort.InferenceSession(str(bundles["conv"] / "decoder.onnx"), providers=["CPUExecutionProvider"])
    for bs in (1, 300):
        logits, probs = sess.run(None, {"z": np.zeros((bs, 8), np.float32)})
        assert logits.shape == probs.shape == (bs, 1, 28, 28)
        assert np.allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_ort_format(tmp_path, ckpts, mnist_dir):
    b = export_bundle(ckpts["mlp"], tmp_path / "b", ort_format=True, data_dir=mnist_dir)
    m = load_manifest(b)
    assert m["variants"]["fp32"]["ort_files"] == {"encoder": "encoder.ort", "decoder": "decoder.ort"}
    sess = ort.InferenceSession(str(b / "decoder.ort"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"z": np.zeros((2, 8), np.float32)})[0].shape == (2, 1, 28, 28)


def test_refuses_non_bundle_out(tmp_path, ckpts, mnist_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(VaeEdgeError, match="not a vae-edge bundle: it is left alone"):
        export_bundle(ckpts["mlp"], out, data_dir=mnist_dir)
    with pytest.raises(VaeEdgeError, match="left alone"):  # force never deletes a folder that is not a bundle
        export_bundle(ckpts["mlp"], out, data_dir=mnist_dir)
    assert (out / "precious.txt").read_text() == "keep me"


def test_validation_failure_is_loud_and_leaves_nothing(tmp_path, ckpts, mnist_dir, monkeypatch):
    """A graph that computes something else than the PyTorch model must stop the export."""
    real = onnx_export.export_graph

    def export_then_perturb(model, spec, path, name, **kw):
        real(model, spec, path, name, **kw)
        m = onnx.load(str(path))
        init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight
        w = onnx.numpy_helper.to_array(init).copy()
        w.flat[0] += 0.05
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
        onnx.save(m, str(path))

    monkeypatch.setattr(onnx_export, "export_graph", export_then_perturb)
    out = tmp_path / "b"
    with pytest.raises(VaeEdgeError, match="differs from PyTorch by"):
        export_bundle(ckpts["mlp"], out, data_dir=mnist_dir)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_tolerance_is_relative_on_large_values_only():
    """Large logits may differ by a few float32 ulps (summation order); small ones may not."""
    want = np.array([-40.0, 0.5], dtype=np.float32)
    assert onnx_export.within_tolerance(want + np.float32([3e-4, 0]), want, 1e-4, 1e-5)[1]  # 7.5e-6 relative
    assert not onnx_export.within_tolerance(want + np.float32([0, 3e-4]), want, 1e-4, 1e-5)[1]
    assert not onnx_export.within_tolerance(want + np.float32([1e-2, 0]), want, 1e-4, 1e-5)[1]
    assert not onnx_export.within_tolerance(want * np.nan, want, 1e-4, 1e-5)[1]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_text("no")
    with pytest.raises(VaeEdgeError, match="not a vae-edge checkpoint"):
        export_bundle(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_old_opset_refused(tmp_path, ckpts):
    with pytest.raises(VaeEdgeError, match="opset"):
        export_bundle(ckpts["mlp"], tmp_path / "b", opset=13)


def test_manifest_is_json_with_schema(bundles):
    m = json.loads((bundles["mlp"] / "manifest.json").read_text())
    assert m["schema"] == "vae-edge-bundle" and m["schema_version"] == 1
    assert m["graphs"]["decoder"]["inputs"][0] == {"name": "z", "dtype": "float32", "shape": ["batch", 8]}


@pytest.mark.slow
def test_cond_planes_model_exports_and_quantizes(tmp_path, mnist_dir):
    """A conditional conv model with one-hot planes: exported and validated against PyTorch, then
    quantized statically (onnxruntime's symbolic shape inference gives up on its graph; the
    quantizer falls back to ONNX's), and the int8 variant runs with digit labels."""
    from conftest import _train

    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.runtime import VAERuntime

    ckpt = _train(tmp_path / "run", mnist_dir, arch="conv", channels=(8, 16), latent_dim=4, conditional=True,
                  cond_planes=True, binarize="dynamic")
    out = tmp_path / "b"
    export_bundle(ckpt, out, data_dir=mnist_dir)
    v, _ = quantize_bundle(out, QuantizeConfig(mode="static", calibration_size=64, eval_size=200), data_dir=mnist_dir)
    rt = VAERuntime.load(out, variant=v, threads=1)
    x = rt.sample(6, seed=0, digit=3)
    assert x.shape == (6, 1, 28, 28) and np.isfinite(x).all()
    # onnxruntime's failed symbolic inference saves its model to the working folder: not here
    assert not list(Path.cwd().glob("sym_shape_infer_temp.onnx")) and not list(Path.cwd().glob("*.data"))


def test_fp16_weights_halve_the_fp32_graphs_losslessly(tmp_path, ckpts, mnist_dir):
    """A checkpoint slimmed to fp16 exports fp32 graphs that store their weights as fp16 (+ Cast):
    half the bytes, the same outputs as fp32 storage of the same values, and quantization still
    finds its weights (the int8 graphs equal those quantized from fp32 storage)."""

    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.export.weights import CAST_PREFIX
    from vae_edge.train import atomic_torch_save, load_checkpoint, slim_checkpoint

    half = slim_checkpoint(load_checkpoint(ckpts["mlp"]), "float16")
    same = {**half, "model": {k: v.float() for k, v in half["model"].items()}}  # the same values, fp32
    atomic_torch_save(half, tmp_path / "half.pt")
    atomic_torch_save(same, tmp_path / "same.pt")
    b16 = export_bundle(tmp_path / "half.pt", tmp_path / "b16", data_dir=mnist_dir)
    b32 = export_bundle(tmp_path / "same.pt", tmp_path / "b32", data_dir=mnist_dir)
    assert load_manifest(b16)["variants"]["fp32"]["weights_storage"] == "float16"
    assert load_manifest(b32)["variants"]["fp32"]["weights_storage"] == "float32"
    for g in ("encoder", "decoder"):
        m = onnx.load(str(b16 / f"{g}.onnx"))
        casts = [n for n in m.graph.node if n.op_type == "Cast" and n.name.startswith(CAST_PREFIX)]
        assert casts and all(i.data_type != onnx.TensorProto.FLOAT for i in m.graph.initializer if np.prod(i.dims) >= 1024)
        assert (b16 / f"{g}.onnx").stat().st_size < 0.55 * (b32 / f"{g}.onnx").stat().st_size
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)

    def decode(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"z": z})[0]

    assert np.array_equal(decode(b16 / "decoder.onnx"), decode(b32 / "decoder.onnx"))
    for b in (b16, b32):
        quantize_bundle(b, QuantizeConfig(mode="dynamic", eval_size=200), data_dir=mnist_dir)
    def int8_matmuls(b):  # the quantizer found the weights (none hidden behind a Cast)
        return sum(n.op_type == "MatMulInteger" for g in ("encoder", "decoder")
                   for n in onnx.load(str(b / f"{g}.int8-dynamic.onnx")).graph.node)

    assert int8_matmuls(b32) > 0 and int8_matmuls(b16) == int8_matmuls(b32)
    assert np.array_equal(decode(b16 / "decoder.int8-dynamic.onnx"), decode(b32 / "decoder.int8-dynamic.onnx"))
    # A layer kept in float keeps the fp16 storage in the int8 graph: smaller, the same outputs.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vae_edge.export.quantize import weight_nodes

    quant_pre_process(str(b32 / "decoder.onnx"), str(tmp_path / "pre.onnx"))  # the names the quantizer sees
    first = weight_nodes(tmp_path / "pre.onnx")[0]
    files = {}
    for b in (b16, b32):
        _, entry = quantize_bundle(b, QuantizeConfig(mode="dynamic", eval_size=200, exclude={"decoder": [first]}),
                                   data_dir=mnist_dir)
        assert entry["quantization"]["graphs"]["decoder"]["kept_in_float"] == [first]
        files[b] = b / entry["files"]["decoder"]
    q16 = onnx.load(str(files[b16]))
    assert [n for n in q16.graph.node if n.op_type == "Cast" and n.name.startswith(CAST_PREFIX)]
    assert load_manifest(b16)["variants"]["int8-dynamic"]["quantization"]["graphs"]["decoder"]["float_weights_storage"] == "float16"
    assert files[b16].stat().st_size < files[b32].stat().st_size - 2 * 8 * 64  # that layer's weights at half size
    assert np.array_equal(decode(files[b16]), decode(files[b32]))


@pytest.mark.slow
def test_res_block_conv_exports_and_quantizes(tmp_path, mnist_dir, runner):
    from vae_edge.cli import cli
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle

    d = ["--data-dir", str(mnist_dir)]
    r = runner.invoke(cli, ["train", "--arch", "conv", "--channels", "8,16", "--res-blocks", "2", "--latent-dim", "4",
                            "--binarize", "dynamic", "--max-steps", "30", "--out", str(tmp_path / "run"), *d])
    assert r.exit_code == 0, r.output
    b = export_bundle(tmp_path / "run" / "model.pt", tmp_path / "b", data_dir=mnist_dir)
    m = load_manifest(b)
    assert m["model"]["res_blocks"] == 2 and m["model"]["channels"] == [8, 16]
    assert max(m["variants"]["fp32"]["validation"]["max_abs_diff"]["decoder"].values()) <= 1e-4
    convs = [n for n in onnx.load(str(b / "decoder.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 * 2 + 2  # two per block, then the two upsampling convs
    variant, entry = quantize_bundle(b, QuantizeConfig(mode="static", calibration_size=64, eval_size=200), data_dir=mnist_dir)
    assert variant == "int8-static" and abs(entry["accuracy"]["neg_elbo_delta"]) < 5
    r = runner.invoke(cli, ["train", "--channels", "8", "--out", str(tmp_path / "bad"), *d])
    assert r.exit_code != 0 and "channels" in r.output
