"""Golden vectors and per-target quantization, on this (x86) machine. The emulated-ARM64 tests
(tests/test_arm64.py) run the same checks on a CPU whose int8 kernels really differ."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.files import write_json_atomic
from vae_edge.runtime.selfcheck import SelfCheckFailed, record_bundle


def _golden(m: dict, variant: str, graph: str) -> np.ndarray:
    g = m["variants"][variant]["golden"]["outputs"][graph]
    return np.frombuffer(base64.b64decode(g["b64"]), dtype=g["dtype"]).reshape(g["shape"]).copy()


def _set_golden(m: dict, variant: str, graph: str, a: np.ndarray) -> None:
    g = m["variants"][variant]["golden"]["outputs"][graph]
    g["b64"] = base64.b64encode(np.ascontiguousarray(a, dtype=g["dtype"]).tobytes()).decode()


def _corrupt_golden(bundle, variant: str, graph: str = "decoder", by: float = 0.5) -> None:
    """Shift one recorded output value, of this variant and of fp32 (the reference its accuracy is
    judged by): what a device with wrong kernels looks like from the inside."""
    m = json.loads((bundle / "manifest.json").read_text())
    for v in {variant, "fp32"}:
        a = _golden(m, v, graph)
        a.flat[a.size // 2] += by
        _set_golden(m, v, graph, a)
    write_json_atomic(bundle / "manifest.json", m)


def test_every_variant_carries_golden_vectors_that_pass_here(quantized):
    m = json.loads((quantized / "manifest.json").read_text())
    for v, entry in m["variants"].items():
        g = entry["golden"]
        assert set(g["outputs"]) == {"encoder", "decoder"} and set(g["inputs"]) >= {"x", "z"}
        tol = g["tolerance"]
        if v == "fp32":
            assert tol == {"encoder": 1e-4, "decoder": 1e-4}
        else:  # derived from the variant's own accuracy record, never below the floor
            assert tol["decoder"] >= 2e-3
            assert tol["decoder"] == pytest.approx(max(2e-3, 0.5 * entry["accuracy"]["decoder_probs_max_abs_diff"]))
        diffs = VAERuntime.load(quantized, variant=v).self_check_diffs
        assert diffs is not None and max(diffs.values()) <= min(tol.values())


def test_a_device_computing_other_numbers_is_refused(bundle_copy):
    _corrupt_golden(bundle_copy, "int8-static")
    with pytest.raises(SelfCheckFailed, match=r"variant int8-static fails its self-check.*decoder outputs differ by 0\.5"
                                              r".*less accurate here"):
        VAERuntime.load(bundle_copy, variant="int8-static")
    assert VAERuntime.load(bundle_copy, variant="int8-static", self_check=False).variant == "int8-static"
    assert VAERuntime.load(bundle_copy, variant="int8-dynamic").variant == "int8-dynamic"  # others unaffected


def test_other_kernels_as_accurate_as_the_makers_pass(bundle_copy):
    """Outputs that miss the maker's by more than the tolerance pass when the variant is as accurate
    here as there against fp32's golden outputs (another CPU's kernels, rounding a few activation
    steps the other way), and are refused when it is less accurate here."""
    from vae_edge.runtime.selfcheck import ACCURACY_RMS

    m = json.loads((bundle_copy / "manifest.json").read_text())
    ref = _golden(m, "fp32", "decoder").astype(np.float64)
    here = _golden(m, "int8-static", "decoder").astype(np.float64)  # what this machine computes
    tol = m["variants"]["int8-static"]["golden"]["tolerance"]["decoder"]
    mirrored = ref - (here - ref)  # a maker whose int8 erred the other way, as much
    assert np.max(np.abs(mirrored - here)) > tol  # the tolerance alone would refuse it
    _set_golden(m, "int8-static", "decoder", mirrored)
    write_json_atomic(bundle_copy / "manifest.json", m)
    diffs = VAERuntime.load(bundle_copy, variant="int8-static").self_check_diffs
    assert diffs["decoder"] > tol
    closer = ref - (here - ref) / (2 * ACCURACY_RMS)  # a maker more accurate than this device is
    assert np.max(np.abs(closer - here)) > tol
    _set_golden(m, "int8-static", "decoder", closer)
    write_json_atomic(bundle_copy / "manifest.json", m)
    with pytest.raises(SelfCheckFailed, match="less accurate here"):
        VAERuntime.load(bundle_copy, variant="int8-static")
    _set_golden(m, "int8-static", "decoder", np.full_like(here, 0.5))  # no yardstick: beyond its accuracy record
    write_json_atomic(bundle_copy / "manifest.json", m)
    with pytest.raises(SelfCheckFailed, match="decoder outputs differ.*beyond its accuracy record"):
        VAERuntime.load(bundle_copy, variant="int8-static")


def test_cli_refuses_and_no_self_check_overrides(runner, bundle_copy, tmp_path):
    _corrupt_golden(bundle_copy, "int8-static")
    out = tmp_path / "s.png"
    res = runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "--variant", "int8-static", "-o", str(out)])
    assert res.exit_code == 1 and "fails its self-check" in res.output and not out.exists()
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "--variant", "int8-static", "--no-self-check",
                              "-o", str(out)])
    assert res.exit_code == 0 and out.is_file()


def test_auto_falls_back_to_a_variant_that_passes(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["tuning"] = {"choice": {"variant": "int8-static", "provider": "cpu", "threads": 1}}
    write_json_atomic(bundle_copy / "manifest.json", m)
    _corrupt_golden(bundle_copy, "int8-static", "encoder", by=1.0)
    notes = []
    rt = VAERuntime.load(bundle_copy, variant="auto", warn=notes.append)
    assert rt.variant != "int8-static" and rt.self_check_diffs is not None
    assert any("int8-static fails its self-check" in n and f"using {rt.variant}" in n for n in notes)
    for v in list(m["variants"]):
        _corrupt_golden(bundle_copy, v, by=1.0)
    with pytest.raises(VaeEdgeError, match="no variant of this bundle can run correctly here"):
        VAERuntime.load(bundle_copy, variant="auto", warn=lambda s: None)


def test_verify_reports_each_variant_and_fails(runner, bundle_copy):
    res = runner.invoke(cli, ["verify", str(bundle_copy), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert {v: r["self_check"] for v, r in rep["variants"].items()} == dict.fromkeys(
        ["fp32", "int8-dynamic", "int8-static", "fp16"], "pass")
    _corrupt_golden(bundle_copy, "fp16")  # (and fp32's: the reference fp16's accuracy is judged by)
    res = runner.invoke(cli, ["verify", str(bundle_copy)])
    assert res.exit_code == 1
    assert "fp16                   self-check FAIL" in res.output and "int8-static            self-check pass" in res.output
    assert "Error: variant(s) fp32, fp16 cannot be trusted" in res.output


def test_record_for_bundles_without_golden_vectors(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    for entry in m["variants"].values():
        entry.pop("golden")
    write_json_atomic(bundle_copy / "manifest.json", m)
    assert VAERuntime.load(bundle_copy, variant="int8-static").self_check_diffs is None  # nothing to check
    assert sorted(record_bundle(bundle_copy)) == ["fp16", "fp32", "int8-dynamic", "int8-static"]
    assert record_bundle(bundle_copy) == []
    assert VAERuntime.load(bundle_copy, variant="int8-static").self_check_diffs == {"encoder": 0.0, "decoder": 0.0}


def test_quantize_for_arm64_target(bundle_copy, mnist_dir, monkeypatch):
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.runtime import sysinfo

    v, e = quantize_bundle(bundle_copy, QuantizeConfig(mode="dynamic", eval_size=200, target="arm64"),
                           data_dir=mnist_dir)
    assert v == "int8-dynamic-arm64" and e["quantization"]["config"]["weight_type"] == "uint8"
    m = json.loads((bundle_copy / "manifest.json").read_text())
    assert m["targets"]["arm64"]["variant"] == v and "SME" in m["targets"]["arm64"]["why"]
    assert m["variants"]["int8-dynamic"]["quantization"]["config"]["weight_type"] == "int8"  # x86's stays
    # the user's own choice wins over the target's
    v2, e2 = quantize_bundle(bundle_copy, QuantizeConfig(mode="dynamic", eval_size=200, target="arm64",
                                                         weight_type="int8"), data_dir=mnist_dir,
                             explicit={"weight_type"})
    assert e2["quantization"]["config"]["weight_type"] == "int8"
    # static graphs keep x86's settings on arm64 (exact under every CPU model): no separate variant
    v3, _ = quantize_bundle(bundle_copy, QuantizeConfig(mode="static", eval_size=200, calibration_size=64,
                                                        target="arm64"), data_dir=mnist_dir)
    assert v3 == "int8-static"
    # on an arm64 device, --variant auto takes the target's variant when nothing was tuned
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["targets"]["arm64"]["variant"] = "int8-dynamic-arm64"
    write_json_atomic(bundle_copy / "manifest.json", m)
    monkeypatch.setattr(sysinfo, "current_target", lambda: "arm64")
    assert VAERuntime.load(bundle_copy, variant="auto").variant == "int8-dynamic-arm64"


def test_arm_features_from_cpuinfo(monkeypatch):
    from vae_edge.runtime import sysinfo

    flags = {"fp", "asimd", "asimddp", "i8mm", "sve", "svei8mm", "bf16"}
    monkeypatch.setattr(sysinfo, "is_arm64", lambda: True)
    monkeypatch.setattr(sysinfo, "_cpuinfo", lambda: ("Neoverse-V1", flags))
    monkeypatch.setattr("ctypes.CDLL", lambda *a: (_ for _ in ()).throw(OSError("no libc here")))
    feats = sysinfo.cpu()["int8_features"]
    assert feats == {"neon": True, "dotprod": True, "sve": True, "sve2": False, "sve_i8mm": True, "i8mm": True,
                     "bf16": True, "sme": False, "sme2": False}
    assert sysinfo.cpu()["target"] == "arm64"
