from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.bench import (
    BenchConfig,
    benchmark,
    graph_flops,
    markdown,
    ratios,
    run_blocks,
    stats,
    tune,
    write_report,
)
from vae_edge.runtime.bundle import load_manifest


def test_stats_hand_computed():
    s = stats([0.001, 0.002, 0.003, 0.004, 0.010])  # ms: 1, 2, 3, 4, 10
    assert s["n"] == 5 and s["mean_ms"] == pytest.approx(4.0)
    assert s["std_ms"] == pytest.approx(np.sqrt(((1 - 4) ** 2 + 4 + 1 + 0 + 36) / 4))
    assert s["p50_ms"] == pytest.approx(3.0)
    assert s["p90_ms"] == pytest.approx(4 + 0.6 * 6)  # linear between the 4th and 5th values
    assert s["p99_ms"] == pytest.approx(4 + 0.96 * 6)
    with pytest.raises(ValueError):
        stats([])


def test_run_blocks_alternates_and_counts():
    order = []
    times = run_blocks({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=2, min_time=0.001, block=3)
    assert len(times["a"]) >= 3 and len(times["b"]) >= 3
    measured = order[4:]
    assert measured[:6] == ["a"] * 3 + ["b"] * 3  # blocks of calls, alternating


def test_ratios_per_pair():
    rows = [dict(provider="cpu", threads=1, graph="decoder", batch=1, variant=v, kind=k, p50_ms=ms)
            for v, k, ms in [("torch", "eager", 40.0), ("fp32", "ort", 20.0), ("fp32", "runtime", 21.0),
                             ("int8-static", "ort", 10.0), ("int8-static", "runtime", 10.5)]]
    r = {x["variant"]: x for x in ratios(rows)}
    assert r["int8-static"]["speedup_vs_torch"] == pytest.approx(40 / 10.5)
    assert r["int8-static"]["speedup_vs_fp32_onnx"] == pytest.approx(2.0)
    assert r["fp32"]["runtime_overhead"] == pytest.approx(1.05)


def test_flops_of_mlp_decoder(bundles):
    # 8 -> 128 -> 784, 2 FLOPs per multiply-add
    assert graph_flops(bundles["mlp"] / "decoder.onnx") == 2 * (8 * 128 + 128 * 784)


def test_benchmark_and_reports(tmp_path, quantized, ckpts):
    cfg = BenchConfig(batch_sizes=(1, 4), min_time=0.005, warmup=1, variants=("fp32", "int8-static"))
    rep = benchmark(quantized, cfg, checkpoint=ckpts["mlp"], warn=lambda s: None)
    assert {r["kind"] for r in rep["rows"]} == {"runtime", "ort", "eager"}
    assert len(rep["ratios"]) == 2 * 2 * 2  # graphs x batches x variants
    # each ratio is the eager row's median over the runtime row's median, for the same setting
    p50 = {(r["graph"], r["batch"], r["variant"], r["kind"]): r["p50_ms"] for r in rep["rows"]}
    for r in rep["ratios"]:
        torch_ms = p50[(r["graph"], r["batch"], "torch", "eager")]
        runtime_ms = p50[(r["graph"], r["batch"], r["variant"], "runtime")]
        assert r["speedup_vs_torch"] == pytest.approx(torch_ms / runtime_ms)
        assert r["runtime_overhead"] == pytest.approx(runtime_ms / p50[(r["graph"], r["batch"], r["variant"], "ort")])
    assert rep["environment"]["cpu"]["cores"] >= 1 and "onnxruntime" in rep["environment"]
    # fp32 efficiency: each bare fp32 row's GFLOP/s over the peak measured in the same run
    assert rep["peak"]["gflops"] > 1 and len(rep["efficiency"]) == 2 * 2
    # the peak is the fastest of several engines (numpy alone under-measured it: "105% of peak")
    engines = rep["peak"]["engines_gflops"]
    assert {k.split()[0] for k in engines} == {"numpy", "onnxruntime", "torch"}
    assert rep["peak"]["gflops"] == pytest.approx(max(engines.values()), abs=0.01)
    for e in rep["efficiency"]:
        row = next(r for r in rep["rows"] if r["graph"] == e["graph"] and r["batch"] == e["batch"]
                   and r["variant"] == "fp32" and r["kind"] == "ort")
        assert e["fraction_of_peak"] == pytest.approx(row["gflops"] / rep["peak"]["gflops"])
    assert rep["cold_start"][0]["cold_start_ms"] > 0 and rep["variants"]["int8-static"]["size_bytes"] > 0
    paths = write_report(rep, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "vae-edge-bench" and data["rows"]
    md = paths["markdown"].read_text()
    assert "| graph | batch |" in md and md.count("\n|") > 10
    for key in ("latency_decoder", "latency_encoder", "speedup"):
        with Image.open(paths[key]) as im:
            assert im.size[0] > 100
    assert "vae-edge benchmark" in markdown(rep)


def test_bench_bad_input(tmp_path, quantized, bundles):
    with pytest.raises(VaeEdgeError, match="unknown graph"):
        BenchConfig(graphs=("middle",))
    with pytest.raises(VaeEdgeError, match="positive"):
        BenchConfig(batch_sizes=(0,))
    with pytest.raises(VaeEdgeError, match="unknown provider"):
        BenchConfig(providers=("tpu",))
    with pytest.raises(VaeEdgeError, match="no 'fp16' variant"):
        benchmark(bundles["conv"], BenchConfig(variants=("fp16",), min_time=0.001))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(VaeEdgeError, match="is a file"):
        write_report({"config": {}}, f)


def test_unavailable_provider_is_skipped_with_a_line(quantized):
    if "cuda" in __import__("vae_edge.runtime.providers", fromlist=["x"]).available():
        pytest.skip("CUDA present")
    said = []
    rep = benchmark(quantized, BenchConfig(providers=("cpu", "cuda"), batch_sizes=(1,), graphs=("decoder",),
                                           variants=("fp32",), min_time=0.002, warmup=0, baseline_torch=False),
                    warn=said.append)
    assert any("skipping provider cuda" in s for s in said) and rep["config"]["providers"] == ["cpu"]


def test_tune_picks_fastest_within_budget(bundle_copy):
    m = load_manifest(bundle_copy)
    deltas = {v: (e.get("accuracy") or {}).get("neg_elbo_delta", 0.0) for v, e in m["variants"].items()}
    fake_ms = {"fp32": 5.0, "int8-dynamic": 2.0, "int8-static": 1.0, "fp16": 0.5}
    res = tune(bundle_copy, max_elbo_delta=10.0, measure=lambda v, p, t: fake_ms[v] + t * 0.01, threads=(1, 2))
    assert res["choice"] == {"variant": "fp16", "provider": "cpu", "threads": 1}
    # a tight budget rules out every variant whose delta exceeds it
    budget = sorted(abs(d) for d in deltas.values())[1] - 1e-9  # only fp32 and the most accurate survive
    res = tune(bundle_copy, max_elbo_delta=max(budget, 0.0), measure=lambda v, p, t: fake_ms[v], threads=(1,))
    allowed = [v for v, d in deltas.items() if abs(d) <= max(budget, 0.0)]
    assert res["choice"]["variant"] == min(allowed, key=fake_ms.get)
    assert load_manifest(bundle_copy)["tuning"]["choice"] == res["choice"]
    from vae_edge.runtime import VAERuntime

    assert VAERuntime.load(bundle_copy, variant="auto").variant == res["choice"]["variant"]


def test_tune_says_once_why_a_variant_is_skipped(bundle_copy):
    """A variant that fails its self-check here is skipped with one line (it was said twice: when
    loading it and again when its time was looked up), and the others are still timed."""
    m = json.loads((bundle_copy / "manifest.json").read_text())
    out = m["variants"]["int8-static"]["golden"]["outputs"]["decoder"]
    out["b64"] = base64.b64encode(np.full(out["shape"], 0.5, np.float32).tobytes()).decode()
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    notes = []
    res = tune(bundle_copy, max_elbo_delta=10.0, threads=(1,), min_time=0.02, warn=notes.append)
    skipped = [n for n in notes if n.startswith("skipping int8-static")]
    assert len(skipped) == 1 and "self-check" in skipped[0], notes
    assert {r["variant"] for r in res["table"]} >= {"fp32", "int8-dynamic"}
    assert "int8-static" not in {r["variant"] for r in res["table"]}
