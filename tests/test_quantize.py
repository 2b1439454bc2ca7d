from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from vae_edge import VaeEdgeError
from vae_edge.export.quantize import QuantizeConfig, plan, quantize_bundle
from vae_edge.runtime.bundle import load_manifest, verify_files


def test_every_mode_recorded(quantized):
    m = load_manifest(quantized)
    verify_files(quantized, m)
    assert set(m["variants"]) == {"fp32", "int8-dynamic", "int8-static", "fp16"}
    for v in ("int8-dynamic", "int8-static", "fp16"):
        e = m["variants"][v]
        acc = e["accuracy"]
        assert set(acc) >= {"encoder_mu_max_abs_diff", "decoder_probs_max_abs_diff", "decoder_psnr_db", "neg_elbo_delta"}
        assert abs(acc["neg_elbo_delta"]) < 2.0 and acc["decoder_psnr_db"] > 25
        assert e["files"] == {"encoder": f"encoder.{v}.onnx", "decoder": f"decoder.{v}.onnx"}
    fp32_size = sum(m["files"][n]["size"] for n in m["variants"]["fp32"]["files"].values())
    for v in ("int8-dynamic", "int8-static"):
        e = m["variants"][v]
        size = sum(m["files"][n]["size"] for n in e["files"].values())
        assert e["size_ratio_to_fp32"] == pytest.approx(size / fp32_size, abs=1e-4)
        kept = 0  # weight layers kept in float (a Gemm as onnxruntime's MatMul + Add split)
        for g, d in e["quantization"]["graphs"].items():
            ops = {n.name: n.op_type for n in onnx.load(str(quantized / e["files"][g])).graph.node}
            kept += sum(ops.get(k, ops.get(f"{k}_MatMul")) in ("Gemm", "MatMul", "Conv") for k in d["kept_in_float"])
        # int8 weights, unless the budget kept a layer in float. The output layers' weights are int8
        # in the static variant too (dynamic int8, float output): in float they held most of an MLP
        assert e["size_ratio_to_fp32"] <= (0.3 if kept == 0 else 0.99), (v, kept, e["size_ratio_to_fp32"])
        assert "held out" in e["quantization"]["float_layer_selection"]
    static = m["variants"]["int8-static"]["quantization"]["graphs"]
    assert all(static[g]["float_output_int8_weights"] for g in static)
    assert m["variants"]["int8-static"]["quantization"]["calibration"]["encoder"].startswith("128 MNIST")


def test_static_is_qdq_and_fp16_keeps_float_io(quantized):
    ops = {n.op_type for n in onnx.load(str(quantized / "decoder.int8-static.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp16 = onnx.load(str(quantized / "decoder.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_auto_plan_per_graph(bundles):
    assert plan(load_manifest(bundles["conv"]), bundles["conv"], QuantizeConfig()) == {"encoder": "static", "decoder": "static"}
    assert plan(load_manifest(bundles["mlp"]), bundles["mlp"], QuantizeConfig()) == {"encoder": "dynamic", "decoder": "dynamic"}


@pytest.mark.slow
def test_conv_static_quantization(tmp_path, bundles, mnist_dir):
    b = tmp_path / "conv"
    shutil.copytree(bundles["conv"], b)
    v, e = quantize_bundle(b, QuantizeConfig(mode="auto", calibration_size=64, eval_size=300), data_dir=mnist_dir)
    assert v == "int8-static" and e["accuracy"]["binarized"] is True
    assert e["size_bytes"]["decoder"] < (b / "decoder.onnx").stat().st_size


def test_static_outputs_stay_float(tmp_path, bundles, mnist_dir):
    """Logits, probabilities, mu and logvar never pass through 8 bits: each graph output comes from
    a float op, not a DequantizeLinear (8-bit logits cost conv-mnist 0.39 nats of -ELBO)."""
    from vae_edge.export.quantize import output_tail

    def producers_of_outputs(path):
        g = onnx.load(str(path)).graph
        made_by = {o: n.op_type for n in g.node for o in n.output}
        return {o.name: made_by[o.name] for o in g.output}

    tail = output_tail(bundles["conv"] / "decoder.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(bundles["conv"] / "decoder.onnx")).graph.node}
    assert {ops[t] for t in tail} == {"Conv", "DepthToSpace", "Sigmoid"}  # the last conv and after
    for float_outputs in (True, False):
        b = tmp_path / f"conv-{float_outputs}"
        shutil.copytree(bundles["conv"], b)
        _, e = quantize_bundle(b, QuantizeConfig(mode="static", calibration_size=64, eval_size=200,
                                                 float_outputs=float_outputs), data_dir=mnist_dir)
        for g in ("encoder", "decoder"):
            made = producers_of_outputs(b / e["files"][g])
            quantized_out = [o for o, op in made.items() if op == "DequantizeLinear"]
            assert (quantized_out == []) is float_outputs, (g, made)
            assert e["quantization"]["config"]["float_outputs"] is float_outputs


def test_conditional_quantization(tmp_path, bundles, mnist_dir):
    b = tmp_path / "cond"
    shutil.copytree(bundles["mlp-cond"], b)
    v, e = quantize_bundle(b, QuantizeConfig(mode="static", calibration_size=64, eval_size=200), data_dir=mnist_dir)
    assert v == "int8-static" and abs(e["accuracy"]["neg_elbo_delta"]) < 2


def test_tampered_file_refused(bundle_copy, mnist_dir):
    before = (bundle_copy / "manifest.json").read_text()
    with open(bundle_copy / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(VaeEdgeError, match="sha256"):
        quantize_bundle(bundle_copy, QuantizeConfig(mode="dynamic", eval_size=50), data_dir=mnist_dir)
    assert (bundle_copy / "manifest.json").read_text() == before


def test_missing_file_refused(bundle_copy, mnist_dir):
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(VaeEdgeError, match="missing"):
        quantize_bundle(bundle_copy, QuantizeConfig(mode="dynamic", eval_size=50), data_dir=mnist_dir)


@pytest.mark.parametrize("bad", [dict(mode="int4"), dict(method="magic"), dict(calibration_size=0),
                                 dict(activation_type="int4")])
def test_bad_config(bad):
    with pytest.raises(VaeEdgeError):
        QuantizeConfig(**bad)


def test_requantizing_keeps_other_variants(bundle_copy, mnist_dir):
    quantize_bundle(bundle_copy, QuantizeConfig(mode="dynamic", eval_size=50), data_dir=mnist_dir)
    m = json.loads((bundle_copy / "manifest.json").read_text())
    assert {"fp32", "int8-static", "fp16", "int8-dynamic"} <= set(m["variants"])
    verify_files(bundle_copy, m)


def test_budget_miss_keeps_costly_layer_in_float(tmp_path, bundles, mnist_dir, monkeypatch):
    from vae_edge.export import quantize as q

    b = tmp_path / "b"
    shutil.copytree(bundles["mlp"], b)
    monkeypatch.setattr(q, "MIN_PSNR", 1e9)  # no variant can meet this: every fallback is tried
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    calibrations = []
    collect = MinMaxCalibrater.collect_data
    monkeypatch.setattr(MinMaxCalibrater, "collect_data", lambda self, r: (calibrations.append(1), collect(self, r))[1])
    lines = []
    v, e = quantize_bundle(b, QuantizeConfig(mode="static", calibration_size=64, eval_size=200), data_dir=mnist_dir,
                           log=lines.append)
    assert e["within_budget"] is False
    trials = [s for s in lines if " in float: " in s]
    assert trials and len(set(trials)) == len(trials), lines  # each set of float layers tried once
    assert len(calibrations) == 2  # one calibration per graph, however many times it is rebuilt
    kept = e["quantization"]["graphs"]["decoder"]["kept_in_float"]
    names = {n.name for n in onnx.load(str(b / "decoder.int8-static.onnx")).graph.node}
    # a node kept in float is still there, unquantized (a Gemm as onnxruntime's MatMul + Add split)
    assert all(k in names or f"{k}_MatMul" in names for k in kept), (kept, sorted(names))
    ops = {n.name: n.op_type for n in onnx.load(str(b / "decoder.int8-static.onnx")).graph.node}
    assert all(ops.get(k, ops.get(f"{k}_MatMul")) not in ("MatMulInteger", "QLinearMatMul") for k in kept)
    verify_files(b, load_manifest(b))


def test_calibration_uses_what_the_model_was_trained_on(bundles, mnist_dir):
    """A model trained on binarized images is calibrated on binarized images, from training images
    that are not in the held-out selection set."""
    from vae_edge.export.quantize import calibration_batches

    for name, binary in (("conv", True), ("mlp", False)):
        m = load_manifest(bundles[name])
        batches = calibration_batches(m, bundles[name] / "encoder.onnx", QuantizeConfig(calibration_size=64), mnist_dir)
        x = batches["encoder"][0]["x"]
        assert bool(np.all((x == 0) | (x == 1))) == binary


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_reduce_range_stores_7_bit_weights(tmp_path, bundles, mnist_dir, mode, monkeypatch):
    """--reduce-range: every int8 weight initializer within [-64, 63] (full range without it), and
    the choice recorded in the manifest."""
    from onnx import numpy_helper

    from vae_edge.export import quantize as q

    # the untrained test model misses the accuracy budget: keep every layer quantized regardless
    monkeypatch.setattr(q, "MIN_PSNR", -1e9)
    monkeypatch.setattr(q, "MAX_ELBO_DELTA", 1e9)

    def weight_range(path):
        lo = hi = 0
        for t in onnx.load(str(path)).graph.initializer:
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2:
                w = numpy_helper.to_array(t)
                lo, hi = min(lo, int(w.min())), max(hi, int(w.max()))
        return lo, hi

    for reduce_range in (False, True):
        b = tmp_path / f"mlp-{reduce_range}"
        shutil.copytree(bundles["mlp"], b)
        v, e = quantize_bundle(b, QuantizeConfig(mode=mode, reduce_range=reduce_range, calibration_size=64,
                                                 eval_size=200), data_dir=mnist_dir)
        lo, hi = weight_range(b / f"decoder.{v}.onnx")
        if reduce_range:
            assert lo >= -64 and hi <= 63
        else:
            assert lo < -64 or hi > 63
        assert load_manifest(b)["variants"][v]["quantization"]["config"]["reduce_range"] is reduce_range


def test_fp16_finiteness_check_reaches_the_last_batch(tmp_path):
    # The written fp16 graph is run on a few calibration batches spread over the data, the last one
    # included: a non-finite output there is refused in one line.
    from onnx import TensorProto, helper

    from vae_edge.export.quantize import FINITE_CHECK_BATCHES, check_finite

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "log.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    batches = [{"x": np.ones((1, 2), np.float32)} for _ in range(3 * FINITE_CHECK_BATCHES)]
    check_finite(path, batches, "decoder")
    batches[-1] = {"x": np.zeros((1, 2), np.float32)}
    with pytest.raises(VaeEdgeError, match="non-finite values in the decoder's y"):
        check_finite(path, batches, "decoder")
