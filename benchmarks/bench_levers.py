"""What each lever buys: the speed levers for vae-edge's int8 graphs, measured in one process run
(pinned to one core, one thread, every contender alternating in blocks), with LiteRT's int8 model
of the same checkpoint in the same run as the mark to beat.

Two kinds of lever, each measured on its own:
- the call path, on the shipped int8 graph: the runtime through onnxruntime's plain C++ run (the
  path before bound buffers), the runtime's bound buffers (runtime/calls.py; default, and
  copy=False), the bare C++ run, and the floor (an IOBinding with everything bound once);
- the graph, each timed through that floor so that only the graph differs: the shipped int8,
  per-channel weights, MatMulNBits (8- and 4-bit weights, block 32, accuracy_level 4: int8
  compute), the pre-optimized .ort format, the decoder without its logits output, and two session
  options (denormals as zero, no CPU arena).

Accuracy of each graph lever: -ELBO delta of its encoder + decoder against fp32 ONNX on the first
4,096 test digits (binarized, the same noise draws for all), and the PSNR of its decoder's
probabilities against fp32 (5,000 z ~ N(0, I)). Then onnxruntime's profiler on the shipped int8
graphs at batch 1: time per node (its timer counts whole microseconds, so the rows are coarse).

    $(python tools/peers_env.py) benchmarks/bench_levers.py --data-dir ../shared/data/mnist [--no-peers]

LiteRT needs the [peers] extra (or the environment tools/peers_env.py builds). Writes
benchmarks/results/levers.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_peers  # noqa: E402

from vae_edge.bench import run_blocks, stats  # noqa: E402
from vae_edge.data import binarize, load_slice  # noqa: E402
from vae_edge.export.quantize import fp32_source  # noqa: E402
from vae_edge.runtime import VAERuntime, shipped_bundles  # noqa: E402
from vae_edge.runtime.bundle import load_manifest  # noqa: E402
from vae_edge.runtime.calls import GraphCall, bare_call  # noqa: E402
from vae_edge.runtime.providers import session_options  # noqa: E402
from vae_edge.runtime.sysinfo import environment, int8_features_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
OUTPUTS = {"encoder": ["mu", "logvar"], "decoder": ["probs"]}
EVAL_BATCH = 256


# ---------------------------------------------------------------------------------------------
# Graph levers: each builds (encoder, decoder) files from the fp32 graphs
# ---------------------------------------------------------------------------------------------

def session(path, **options) -> ort.InferenceSession:
    so = session_options(1)
    for k, v in options.items():
        if k.startswith("config:"):
            so.add_session_config_entry(k[7:], v)
        else:
            setattr(so, k, v)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def gemm_as_matmul(src: Path, dst: Path) -> Path:
    """Gemm(x, W, b) -> MatMul + Add: MatMulNBits replaces MatMul nodes only."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or attrs.get("transA") or n.input[1] not in inits:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]]) * attrs.get("alpha", 1.0)
        if attrs.get("transB"):
            w = w.T
        wname = n.input[1] + "_kn"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), wname))
        mid = n.output[0] + "_mm"
        nodes.append(helper.make_node("MatMul", [n.input[0], wname], [mid], name=n.name + "_mm"))
        nodes.append(helper.make_node("Add", [mid, n.input[2]], [n.output[0]], name=n.name + "_bias"))
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def matmul_nbits(src: Path, dst: Path, bits: int) -> Path:
    import logging

    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    mm = gemm_as_matmul(src, dst.with_suffix(".mm.onnx"))
    q = mq.MatMulNBitsQuantizer(onnx.load(str(mm)), bits=bits, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    q.model.save_model_to_file(str(dst))
    return dst


def dynamic_per_channel(src: Path, dst: Path, reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return dst


def static_per_channel(src: Path, dst: Path, batches: list[dict], reduce_range: bool = False,
                       int8_activations: bool = False, per_channel: bool = True) -> Path:
    """QDQ, per-channel (or per-tensor) int8 weights, MinMax calibration: uint8 activations (optionally 7-bit
    weights: reduce_range, onnxruntime's advice for x86 without VNNI, whose u8 x s8 products
    saturate in 16 bits), or symmetric int8 activations."""
    import contextlib

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from vae_edge.export.quantize import ArrayReader

    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(str(src), str(dst), ArrayReader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QInt8 if int8_activations else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": int8_activations})
    return dst


def ort_format(src: Path, dst: Path) -> Path:
    so = session_options(1)
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def probs_only(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    keep = [o for o in model.graph.output if o.name == "probs"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(dst))
    return dst


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------

def neg_elbo(enc, dec, x: np.ndarray, eps: np.ndarray) -> float:
    """Mean -ELBO of two sessions, by bench_peers' formula (the same for every contender there)."""
    return float(bench_peers.neg_elbo(lambda xb: enc.run(["mu", "logvar"], {"x": xb}),
                                      lambda z: dec.run(["probs"], {"z": z})[0], x, eps).mean())


def psnr(dec, ref: np.ndarray, z: np.ndarray) -> float:
    p = np.concatenate([dec.run(["probs"], {"z": z[i : i + EVAL_BATCH]})[0] for i in range(0, len(z), EVAL_BATCH)])
    return bench_peers.psnr(p.reshape(ref.shape), ref)


# ---------------------------------------------------------------------------------------------
# Profile
# ---------------------------------------------------------------------------------------------

def profile(path: Path, graph: str, feeds: dict, calls: int = 3000) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(1)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            s.run(OUTPUTS[graph], feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    per = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[(e["name"][: -len("_kernel_time")], e["args"].get("op_name", ""))].append(e["dur"])
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            per[("whole run", "")].append(e["dur"])
    skip = calls // 5  # the first calls warm up
    return [{"node": k[0], "op": k[1], "median_us": float(np.median(v[skip:]))} for k, v in per.items()]


# ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-sizes", default="1,256")
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds of calls per contender and setting")
    ap.add_argument("--no-peers", action="store_true", help="leave LiteRT out (no [peers] extra needed)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    x_test, _ = load_slice("mnist:test[0:4096]", args.data_dir)
    xb = binarize(x_test, seed=0)
    report = {"environment": environment(), "pinned_core": core, "threads": 1, "batch_sizes": batches, "models": {}}
    tmp = Path(tempfile.mkdtemp(prefix="vae-edge-levers-"))
    for name, bundle in shipped_bundles().items():
        manifest = load_manifest(bundle)
        if manifest["model"]["conditional"]:
            continue
        mlp = manifest["model"]["arch"] == "mlp"
        int8 = "int8-dynamic" if mlp else "int8-static"
        files = manifest["variants"]
        # the levers start from fp32 weights beside their MatMul/Conv nodes (a shipped graph may
        # store them as fp16 + Cast: the quantizers would then find no weights to quantize)
        fp32 = {g: fp32_source(bundle / files["fp32"]["files"][g], tmp / f"{name}-{g}-fp32.onnx")
                for g in ("encoder", "decoder")}
        shipped = {g: bundle / files[int8]["files"][g] for g in ("encoder", "decoder")}
        d = int(manifest["model"]["latent_dim"])
        rng = np.random.default_rng(0)
        eps = rng.standard_normal((len(xb), d), dtype=np.float32)
        z_eval = rng.standard_normal((5000, d), dtype=np.float32)

        # graph levers: name -> {graph: (path, session options)}
        graphs = {f"shipped {int8}": {g: (shipped[g], {}) for g in shipped}}
        if mlp:
            graphs["int8 dynamic, per-channel weights"] = {
                g: (dynamic_per_channel(fp32[g], tmp / f"{name}-{g}-dynpc.onnx"), {}) for g in fp32}
            graphs["int8 dynamic, per-channel 7-bit weights (reduce_range)"] = {
                g: (dynamic_per_channel(fp32[g], tmp / f"{name}-{g}-dynpc7.onnx", True), {}) for g in fp32}
            for bits in (8, 4):
                graphs[f"MatMulNBits {bits}-bit, accuracy_level 4"] = {
                    g: (matmul_nbits(fp32[g], tmp / f"{name}-{g}-nb{bits}.onnx", bits), {}) for g in fp32}
        else:
            from vae_edge.export.quantize import QuantizeConfig, calibration_batches

            cal = calibration_batches(manifest, fp32["encoder"], QuantizeConfig(), args.data_dir)
            graphs["int8 static, per-channel weights"] = {
                g: (static_per_channel(fp32[g], tmp / f"{name}-{g}-stpc.onnx", cal[g]), {}) for g in fp32}
            graphs["int8 static, per-channel 7-bit weights (reduce_range)"] = {
                g: (static_per_channel(fp32[g], tmp / f"{name}-{g}-stpc7.onnx", cal[g], reduce_range=True), {})
                for g in fp32}
            graphs["int8 static, per-tensor 7-bit weights (reduce_range)"] = {
                g: (static_per_channel(fp32[g], tmp / f"{name}-{g}-st7.onnx", cal[g], reduce_range=True,
                                       per_channel=False), {}) for g in fp32}
            graphs["int8 static, per-channel weights, int8 activations"] = {
                g: (static_per_channel(fp32[g], tmp / f"{name}-{g}-stpcs8.onnx", cal[g], int8_activations=True), {})
                for g in fp32}
        graphs[f"shipped {int8}, .ort format"] = {g: (ort_format(shipped[g], tmp / f"{name}-{g}.ort"), {}) for g in shipped}
        graphs[f"shipped {int8}, decoder without logits output"] = {
            "encoder": (shipped["encoder"], {}), "decoder": (probs_only(shipped["decoder"], tmp / f"{name}-dec-p.onnx"), {})}
        graphs[f"shipped {int8}, denormals as zero"] = {
            g: (shipped[g], {"config:session.set_denormal_as_zero": "1"}) for g in shipped}
        graphs[f"shipped {int8}, no CPU arena"] = {g: (shipped[g], {"enable_cpu_mem_arena": False}) for g in shipped}
        sessions = {k: {g: session(p, **o) for g, (p, o) in v.items()} for k, v in graphs.items()}
        sessions["fp32"] = {g: session(fp32[g]) for g in fp32}

        ref_elbo = neg_elbo(sessions["fp32"]["encoder"], sessions["fp32"]["decoder"], xb, eps)
        ref_probs = np.concatenate([sessions["fp32"]["decoder"].run(["probs"], {"z": z_eval[i : i + EVAL_BATCH]})[0]
                                    for i in range(0, len(z_eval), EVAL_BATCH)]).astype(np.float64)
        accuracy = {k: {"neg_elbo_delta": neg_elbo(s["encoder"], s["decoder"], xb, eps) - ref_elbo,
                        "decoder_psnr_db": psnr(s["decoder"], ref_probs, z_eval),
                        "bytes": sum(graphs[k][g][0].stat().st_size for g in ("encoder", "decoder"))}
                    for k, s in sessions.items() if k != "fp32"}
        accuracy["fp32"] = {"neg_elbo_delta": 0.0, "decoder_psnr_db": float("inf"),
                            "bytes": sum(p.stat().st_size for p in fp32.values())}

        peers_rt: dict = {}
        if not args.no_peers:
            import peers
            import torch

            from vae_edge.train import load_checkpoint, model_from_checkpoint

            torch.set_num_threads(1)
            vae = model_from_checkpoint(load_checkpoint(bundle.parent / "model.pt")).eval()
            for g in ("encoder", "decoder"):
                for b in batches:
                    for prec in ("int8", "fp32"):
                        blob = peers.litert_model(peers.wrap(vae, g), peers.example(vae, g, b), prec == "int8")
                        peers_rt[(f"LiteRT {prec}", g, b)] = peers.litert_runner(blob)

        rt_default = VAERuntime.load(bundle, variant=int8, threads=1, warn=lambda s: None)
        rt_plain = VAERuntime.load(bundle, variant=int8, threads=1, warn=lambda s: None)
        rt_plain._enc_run, rt_plain._dec_run = GraphCall(rt_plain.encoder, 0), GraphCall(rt_plain.decoder, 0)
        rows = []
        for g in ("encoder", "decoder"):
            for b in batches:
                a = (rng.random((b, 1, 28, 28), dtype=np.float32) if g == "encoder"
                     else rng.standard_normal((b, d), dtype=np.float32))
                key = "x" if g == "encoder" else "z"
                def api(rt, copy=True, g=g, a=a):
                    return (lambda: rt.encode(a, copy=copy)) if g == "encoder" else (lambda: rt.decode(a, copy=copy))
                sess = getattr(rt_default, g)
                inner = sess._sess
                contenders = {
                    ("call", "runtime, plain C++ run (before)"): api(rt_plain),
                    ("call", "runtime, bound buffers (default)"): api(rt_default),
                    ("call", "runtime, bound buffers, copy=False"): api(rt_default, copy=False),
                    ("call", "bare C++ run"): (lambda inner=inner, a=a, g=g, key=key: inner.run(OUTPUTS[g], {key: a}, None)),
                    ("call", "bare IOBinding, bound once (floor)"): bare_call(sess, OUTPUTS[g], {key: a}),
                }
                for k, s in sessions.items():
                    names = OUTPUTS[g]
                    contenders[("graph", k)] = bare_call(s[g], names, {key: a})
                for (p, gg, bb), run in peers_rt.items():
                    if gg == g and bb == b:
                        contenders[("peer", p)] = (lambda run=run, a=a: run(a))
                times = run_blocks({f"{k[0]}|{k[1]}": f for k, f in contenders.items()}, warmup=30, min_time=args.min_time)
                for c, ts in times.items():
                    kind, label = c.split("|", 1)
                    rows.append({"kind": kind, "contender": label, "graph": g, "batch": b, **stats(ts)})
        prof = {}
        for g in ("encoder", "decoder"):
            feeds = ({"x": rng.random((1, 1, 28, 28), dtype=np.float32)} if g == "encoder"
                     else {"z": rng.standard_normal((1, d), dtype=np.float32)})
            prof[g] = profile(shipped[g], g, feeds)
        report["models"][name] = {"int8": int8, "rows": rows, "accuracy": accuracy, "profile": prof,
                                  "ref_neg_elbo": ref_elbo}
        print(f"{name}: done", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "levers.json").write_text(json.dumps(report, indent=1, default=float))
    md = markdown(report)
    (OUT / "levers.md").write_text(md)
    print(md)


def markdown(report: dict) -> str:
    env = report["environment"]
    bs = report["batch_sizes"]
    out = [f"One process pinned to core {report['pinned_core']}, one thread, {env['cpu']['model']} (int8 features: "
           f"{int8_features_text(env['cpu'])}); onnxruntime "
           f"{env['onnxruntime']}; p50 µs per call, every contender of a table alternating in blocks. Graph levers "
           "are timed through the floor call (IOBinding bound once), so only the graph differs; −ELBO delta and PSNR "
           "against fp32 ONNX.", ""]
    for name, m in report["models"].items():
        p50 = {(r["kind"], r["contender"], r["graph"], r["batch"]): r["p50_ms"] * 1e3 for r in m["rows"]}
        lite = {(g, b): p50.get(("peer", "LiteRT int8", g, b)) for g in ("encoder", "decoder") for b in bs}
        cols = [f"{g} b={b}" for g in ("encoder", "decoder") for b in bs]
        ratio_cols = [f"{g} b={b}" for g in ("encoder", "decoder") for b in bs]

        def line(kind, label, extra="", p50=p50, lite=lite):
            cells = [p50.get((kind, label, g, b)) for g in ("encoder", "decoder") for b in bs]
            ratios = []
            for g in ("encoder", "decoder"):
                for b in bs:
                    v, ref = p50.get((kind, label, g, b)), lite[(g, b)]
                    ratios.append("-" if v is None or not ref else f"{v / ref:.2f}x")
            return (f"| {label} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " | "
                    + " | ".join(ratios) + f" |{extra}")

        out += [f"#### {name} (shipped int8: {m['int8']})", "", "**Call path** (shipped int8 graph)", "",
                "| call | " + " | ".join(f"{c} µs" for c in cols) + " | " + " | ".join(f"vs LiteRT int8 {c}" for c in ratio_cols) + " |",
                "|---|" + "---:|" * (2 * len(cols))]
        calls = [r["contender"] for r in m["rows"] if r["kind"] == "call" and r["graph"] == "decoder" and r["batch"] == bs[0]]
        out += [line("call", c) for c in calls]
        out += ["", "**Graph** (timed through the floor call)", "",
                "| graph | " + " | ".join(f"{c} µs" for c in cols) + " | " + " | ".join(f"vs LiteRT int8 {c}" for c in ratio_cols)
                + " | −ELBO delta | decoder PSNR dB | MB (both graphs) |",
                "|---|" + "---:|" * (2 * len(cols) + 3)]
        for k, a in m["accuracy"].items():
            out.append(line("graph", k, f" {a['neg_elbo_delta']:+.3f} | {a['decoder_psnr_db']:.1f} | {a['bytes'] / 1e6:.2f} |"))
        peers_here = sorted({r["contender"] for r in m["rows"] if r["kind"] == "peer"})
        if peers_here:
            out += ["", "**Peer** (bare interpreter call, converted for each batch size)", "",
                    "| peer | " + " | ".join(f"{c} µs" for c in cols) + " | " + " | ".join(f"vs LiteRT int8 {c}" for c in ratio_cols) + " |",
                    "|---|" + "---:|" * (2 * len(cols))]
            out += [line("peer", p) for p in peers_here]
        out += ["", f"**onnxruntime profile of the shipped {m['int8']} graphs at batch 1** (median µs per node over "
                "3,000 runs; the profiler counts whole microseconds and adds its own cost to each node)", "",
                "| graph | node | op | µs |", "|---|---|---|---:|"]
        for g, nodes in m["profile"].items():
            out += [f"| {g} | {n['node']} | {n['op']} | {n['median_us']:.0f} |" for n in nodes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
