"""Runtime latency suite: every shipped model and variant, encoder and decoder, one thread, batch
1 to 1024, through the runtime, through the fastest bare call from Python (an onnxruntime IOBinding
with inputs and outputs bound once: the floor for the runtime's overhead) and PyTorch eager on the same weights; contenders alternate in blocks.
The whole suite runs --repeats times and each figure is the median over the repeats (a figure that
looks like an outlier in one pass does not make the table); fp32 GFLOP/s are set against this
machine's single-core peak measured in the same run. Writes benchmarks/results/runtime-<model>/
(the last pass's full report) and benchmarks/results/runtime_summary.md.

    python benchmarks/bench_runtime.py [--min-time 0.3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vae_edge.bench import BenchConfig, benchmark, write_report
from vae_edge.runtime import shipped_bundles

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(v, suffix="x"):
    return "-" if v is None else f"{v:.2f}{suffix}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,8,64,256,1024")
    args = ap.parse_args()
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    keys = ("p50_ms", "speedup_vs_torch", "runtime_overhead")
    tables = {k: [] for k in keys}
    eff_lines, spread, peaks, how = [], [], [], "?"
    for name, bundle in shipped_bundles().items():
        reps = []
        for _ in range(args.repeats):
            reps.append(benchmark(bundle, BenchConfig(batch_sizes=batches, min_time=args.min_time)))
        write_report(reps[-1], RESULTS / f"runtime-{name}")
        groups: dict = {}
        for rep in reps:
            for r in rep["ratios"]:
                groups.setdefault((r["graph"], r["variant"], r["batch"]), []).append(r)
        for graph in ("encoder", "decoder"):
            for v in reps[0]["config"]["variants"]:
                cells = {k: [] for k in keys}
                for b in batches:
                    rs = groups.get((graph, v, b), [])
                    for k in keys:
                        vals = [r[k] for r in rs if r[k] is not None]
                        cells[k].append(float(np.median(vals)) if vals else None)
                    p50s = [r["p50_ms"] for r in rs]
                    if len(p50s) > 1:
                        spread.append(max(p50s) / min(p50s))
                tables["p50_ms"].append(f"| {name} | {graph} | {v} | " + " | ".join(fmt(c, "") if c is None else f"{c:.4f}" for c in cells["p50_ms"]) + " |")
                tables["speedup_vs_torch"].append(f"| {name} | {graph} | {v} | " + " | ".join(fmt(c) for c in cells["speedup_vs_torch"]) + " |")
                tables["runtime_overhead"].append(f"| {name} | {graph} | {v} | " + " | ".join(fmt(c) for c in cells["runtime_overhead"]) + " |")
        peaks += [rep["peak"]["gflops"] for rep in reps if "gflops" in rep.get("peak", {})]
        how = next((rep["peak"]["how"] for rep in reps if "how" in rep.get("peak", {})), how)
        effs: dict = {}
        for rep in reps:
            for e in rep.get("efficiency", []):
                effs.setdefault((e["graph"], e["batch"]), []).append(e)
        for graph in ("encoder", "decoder"):
            row = []
            for b in batches:
                es = effs.get((graph, b), [])
                row.append("-" if not es else f"{np.median([e['gflops'] for e in es]):.1f} ({np.median([e['fraction_of_peak'] for e in es]):.0%})")
            eff_lines.append(f"| {name} | {graph} | " + " | ".join(row) + " |")
    peak = float(np.median(peaks)) if peaks else float("nan")
    env = reps[-1]["environment"]
    head = "| model | graph | variant | " + " | ".join(f"batch {b}" for b in batches) + " |"
    rule = "|---|---|---|" + "---:|" * len(batches)
    md = [f"Medians over {args.repeats} passes of the whole suite (each pass: contenders alternating in blocks), "
          f"one thread, {env['cpu']['model']}, onnxruntime {env['onnxruntime']}, torch {env.get('torch', '-')}. "
          f"Largest pass-to-pass spread of a p50: {max(spread):.2f}x." if spread else "", "",
          "**Latency through the runtime (p50 ms per call)**", "", head, rule, *tables["p50_ms"], "",
          "**Speed-up over PyTorch eager** (same weights, same thread count; int8 rows mix quantization with "
          "runtime speed: compare them with the fp32 rows, or with a peer at the same precision)", "", head, rule,
          *tables["speedup_vs_torch"], "",
          "**Runtime overhead** (runtime call / the fastest bare call on the same session, an IOBinding with "
          "inputs and outputs bound once: input checks, label feeds, copies in and out, output allocation)", "", head, rule, *tables["runtime_overhead"], "",
          f"**fp32 GFLOP/s and fraction of this machine's measured single-core peak** (median {peak:.1f} GFLOP/s "
          f"over {len(peaks)} measurements, each in the same pass as the row it divides: {how}; FLOPs are the "
          "graph's Gemm/MatMul/Conv multiply-adds, bias and activations excluded)", "",
          "| model | graph | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|---|" + "---:|" * len(batches),
          *eff_lines]
    (RESULTS / "runtime_summary.md").write_text("\n".join(md) + "\n")
    (RESULTS / "runtime_summary.json").write_text(json.dumps({"repeats": args.repeats, "peak_gflops": peak,
                                                              "max_spread": max(spread) if spread else None}))
    print("\n".join(md))


if __name__ == "__main__":
    main()
